/**
 * HTTP/1.1 request heads and plain responses, as much as a WebSocket endpoint needs: no bodies are read, and
 * every connection closes after one answer that is not an upgrade. Pure: bytes in, values out.
 * @module
 */

/** A request head that cannot be parsed; answered with `status` and the connection closed. */
export class HttpError extends Error {
  override name = "HttpError";
  readonly status: number;
  constructor(status: number, message: string) {
    super(message);
    this.status = status;
  }
}

/** A parsed request head. */
export interface RequestHead {
  readonly method: string;
  /** The request target as sent (origin form, e.g. `/tcp-mux?token=x`). */
  readonly target: string;
  readonly headers: Headers;
  /** `HTTP/1.1` or `HTTP/1.0` (plain requests only: an upgrade needs 1.1). */
  readonly version: string;
}

const CRLF_CRLF = [13, 10, 13, 10] as const;
const latin1 = new TextDecoder("latin1");
const encoder = new TextEncoder();
/** RFC 9110 token characters, for methods and header names. */
const TOKEN = /^[!#$%&'*+\-.^_`|~0-9A-Za-z]+$/;
/** Visible ASCII, space and tab, and obs-text: what a header value may hold. */
const FIELD_VALUE = /^[\t\x20-\x7e\x80-\xff]*$/;

/**
 * Finds the end of a request head (`\r\n\r\n`) in `buffer`, searching from `from`; returns the offset just
 * after it, or -1.
 */
export function findHeadEnd(buffer: Uint8Array, from = 0): number {
  for (let i = Math.max(0, from - 3); i + 3 < buffer.byteLength; i++) {
    if (
      buffer[i] === CRLF_CRLF[0] && buffer[i + 1] === CRLF_CRLF[1] && buffer[i + 2] === CRLF_CRLF[2] &&
      buffer[i + 3] === CRLF_CRLF[3]
    ) {
      return i + 4;
    }
  }
  return -1;
}

/**
 * Parses a request head (everything up to and including the blank line). HTTP/1.0 is parsed too, for health
 * checkers that still send it; the upgrade itself requires HTTP/1.1.
 */
export function parseRequestHead(head: Uint8Array, maxTargetLength: number): RequestHead {
  const text = latin1.decode(head);
  const lines = text.split("\r\n");
  // The head ends with an empty line, then the split leaves one more empty string.
  lines.length -= 2;
  const requestLine = lines[0] ?? "";
  const parts = requestLine.split(" ");
  if (parts.length !== 3) throw new HttpError(400, "Bad Request: malformed request line");
  const [method = "", target = "", version = ""] = parts;
  if (!TOKEN.test(method)) throw new HttpError(400, "Bad Request: malformed method");
  if (version !== "HTTP/1.1" && version !== "HTTP/1.0") {
    throw new HttpError(505, "HTTP Version Not Supported: this endpoint speaks HTTP/1.1");
  }
  if (target.length > maxTargetLength) throw new HttpError(414, "URI Too Long");
  if (!target.startsWith("/") || /[^\x21-\x7e]/.test(target)) {
    throw new HttpError(400, "Bad Request: malformed request target");
  }
  const headers = new Headers();
  for (let i = 1; i < lines.length; i++) {
    const line = lines[i]!;
    const colon = line.indexOf(":");
    if (colon <= 0) throw new HttpError(400, "Bad Request: malformed header line");
    const name = line.slice(0, colon);
    // No whitespace before the colon (RFC 9112, 5.1), no obsolete line folding.
    if (!TOKEN.test(name)) throw new HttpError(400, "Bad Request: malformed header name");
    const value = line.slice(colon + 1).replace(/^[\t ]+|[\t ]+$/g, "");
    if (!FIELD_VALUE.test(value)) throw new HttpError(400, "Bad Request: malformed header value");
    headers.append(name, value);
  }
  return { method, target, headers, version };
}

const REASONS: Readonly<Record<number, string>> = {
  101: "Switching Protocols",
  200: "OK",
  204: "No Content",
  308: "Permanent Redirect",
  400: "Bad Request",
  401: "Unauthorized",
  403: "Forbidden",
  404: "Not Found",
  405: "Method Not Allowed",
  408: "Request Timeout",
  414: "URI Too Long",
  426: "Upgrade Required",
  429: "Too Many Requests",
  431: "Request Header Fields Too Large",
  500: "Internal Server Error",
  503: "Service Unavailable",
  505: "HTTP Version Not Supported",
};

/** The status line and headers of a response, ending with the blank line. */
export function encodeResponseHead(status: number, headers: Iterable<[string, string]>): Uint8Array {
  let head = `HTTP/1.1 ${status} ${REASONS[status] ?? "Unknown"}\r\n`;
  for (const [name, value] of headers) {
    // Header values come from our own code; a stray line break must still never split the head.
    head += `${name}: ${value.replace(/[\r\n]/g, " ")}\r\n`;
  }
  return encoder.encode(`${head}\r\n`);
}

/** A whole plain-text response that closes the connection: for answers given before any handler runs. */
export function plainResponse(
  status: number,
  body: string,
  headers: Record<string, string> = {},
): Uint8Array {
  const bytes = encoder.encode(`${body}\n`);
  const head = encodeResponseHead(status, [
    ["content-type", "text/plain; charset=utf-8"],
    ["content-length", String(bytes.byteLength)],
    ["connection", "close"],
    ...Object.entries(headers),
  ]);
  const out = new Uint8Array(head.byteLength + bytes.byteLength);
  out.set(head);
  out.set(bytes, head.byteLength);
  return out;
}
