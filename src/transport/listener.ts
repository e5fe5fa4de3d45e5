/**
 * The public listener: accepts TCP (or TLS) connections, reads one HTTP/1.1 request head under a deadline and
 * a size cap, hands it to the handler as a `Request`, and either writes the handler's plain response and closes,
 * or completes a WebSocket upgrade.
 *
 * Every connection is counted from accept on: against the socket budget shared with target connections, and
 * against the caps on connections that have not finished their request ("pending": nothing has been
 * authenticated yet), in total and per client IP. Accept errors (such as running out of descriptors) are
 * counted and retried with a backoff, never fatal.
 * @module
 */
import { createHash } from "node:crypto";
import { clearTimeout, setTimeout } from "node:timers";
import { type Counter, type SocketBudget, unlimitedSockets } from "../budget.ts";
import { encodeResponseHead, findHeadEnd, HttpError, parseRequestHead, plainResponse } from "./http.ts";
import { type WebSocketConnection, WebSocketConnection as Ws, type WebSocketOptions } from "./websocket.ts";

/** What the handler learns about the connection. */
export interface ConnInfo {
  readonly remoteAddr: Deno.NetAddr;
}

/** Answers one request; return the `response` of {@linkcode upgradeWebSocket} to accept an upgrade. */
export type Handler = (request: Request, info: ConnInfo) => Response | Promise<Response>;

/** Why the listener turned a connection away or dropped it; counted by the caller's hook. */
export type ConnectionRefusal =
  | "sockets"
  | "pending_total"
  | "pending_per_ip"
  | "header_timeout"
  | "header_too_large"
  | "bad_request";

/** Settings and hooks of a listener. */
export interface ListenOptions {
  readonly hostname: string;
  readonly port: number;
  readonly tls?: { readonly cert: string; readonly key: string };
  /**
   * Share the port with other processes (`SO_REUSEPORT`, Linux: the kernel spreads new connections over
   * them). Deno 2.9.6 accepts it only under `--unstable-net`. @default false
   */
  readonly reusePort?: boolean;
  readonly handler: Handler;
  /** Shared with target connections; one unit per accepted connection, until it closes. */
  readonly sockets?: SocketBudget;
  /** Connections still before or inside their request head, in total and per client IP. */
  readonly maxPending: number;
  readonly maxPendingPerIp: number;
  readonly headerTimeoutMs: number;
  readonly maxHeaderBytes: number;
  readonly maxUrlLength: number;
  /**
   * Largest request body read (sent with `Content-Length`; chunked bodies get 411). Over it: 413. Bodies count
   * against the header deadline too. Default 64 KiB (the relay's only bodies are DNS messages, at most 65,535 bytes).
   */
  readonly maxBodyBytes?: number;
  /** A connection was refused or dropped before its request was answered. */
  readonly onRefused?: (kind: ConnectionRefusal, ip: string) => void;
  /** `accept` failed (for example: out of descriptors); the loop retries after a backoff. */
  readonly onAcceptError?: (err: unknown, retryMs: number) => void;
  /** The handler threw: the client gets 500 and this is told. */
  readonly onHandlerError?: (err: unknown) => void;
}

/** A running listener. */
export interface Listener {
  readonly addr: Deno.NetAddr;
  /** Connections accepted and not yet closed, upgraded ones included. */
  readonly connections: number;
  /** Connections that have not finished their request. */
  readonly pending: number;
  /** Stops accepting and closes every connection that has not been upgraded; resolves when all are done. */
  close(): Promise<void>;
}

/** How long a refused connection is read and discarded after its answer, so the answer is not lost to a reset. */
const LINGER_MS = 500;
/** Backoff after a failed accept: doubles from the first to the last. */
const ACCEPT_RETRY_FIRST_MS = 5;
const ACCEPT_RETRY_MAX_MS = 1000;
const WEBSOCKET_GUID = "258EAFA5-E914-47DA-95CA-C5AB0DC85B11";
/** A key is the base64 form of 16 bytes. */
const KEY_PATTERN = /^[+/0-9A-Za-z]{21}[AQgw]==$/;

/** A request the listener built, with what an upgrade needs to know about it. */
interface RequestOrigin {
  readonly version: string;
  /** The method as sent (`Request` upper-cases the standard ones; methods are case-sensitive). */
  readonly method: string;
}
const origins = new WeakMap<Request, RequestOrigin>();
/** Responses made by {@linkcode upgradeWebSocket}, with their socket and 101 headers. */
const upgrades = new WeakMap<Response, { socket: Ws; headers: [string, string][] }>();

/** A handshake the request cannot complete; answered with `status` and `headers`. */
export class HandshakeError extends Error {
  override name = "HandshakeError";
  readonly status: number;
  readonly headers: Readonly<Record<string, string>>;
  constructor(status: number, message: string, headers: Record<string, string> = {}) {
    super(message);
    this.status = status;
    this.headers = headers;
  }
}

function hasToken(header: string | null, token: string): boolean {
  return header !== null && header.split(",").some((part) => part.trim().toLowerCase() === token);
}

/**
 * Checks a WebSocket handshake (RFC 6455, 4.2.1) and prepares its socket. Return `response` from the handler
 * to accept; the socket opens once the 101 has been written. Never negotiates an extension.
 * @throws {HandshakeError} when the request is not a valid upgrade
 */
export function upgradeWebSocket(
  request: Request,
  options: WebSocketOptions & { readonly protocol?: string },
): { socket: WebSocketConnection; response: Response } {
  const key = checkUpgrade(request);
  const accept = createHash("sha1").update(key + WEBSOCKET_GUID).digest("base64");
  const reply: [string, string][] = [
    ["upgrade", "websocket"],
    ["connection", "Upgrade"],
    ["sec-websocket-accept", accept],
  ];
  if (options.protocol !== undefined) reply.push(["sec-websocket-protocol", options.protocol]);
  const socket = new Ws(options, options.protocol ?? "");
  // Response cannot carry status 101; the listener recognises this object and writes the real head.
  const response = new Response(null, { status: 200 });
  upgrades.set(response, { socket, headers: reply });
  return { socket, response };
}

/**
 * The handshake checks of {@linkcode upgradeWebSocket} alone, for a handler that has costly work to do before
 * upgrading (and should not do it for a request that cannot be upgraded). Returns the client's key.
 * @throws {HandshakeError} when the request is not a valid upgrade
 */
export function checkUpgrade(request: Request): string {
  const origin = origins.get(request);
  if (origin === undefined) throw new TypeError("Cannot upgrade a request this listener did not receive");
  if (origin.method !== "GET") throw new HandshakeError(405, "Method Not Allowed", { allow: "GET" });
  if (origin.version !== "HTTP/1.1") throw new HandshakeError(400, "Bad Request: an upgrade needs HTTP/1.1");
  const headers = request.headers;
  if (!hasToken(headers.get("upgrade"), "websocket")) {
    throw new HandshakeError(426, "Upgrade Required: this endpoint speaks WebSocket", {
      upgrade: "websocket",
    });
  }
  if (!hasToken(headers.get("connection"), "upgrade")) {
    throw new HandshakeError(400, "Bad Request: the Connection header must include Upgrade");
  }
  if (headers.get("sec-websocket-version") !== "13") {
    throw new HandshakeError(426, "Upgrade Required: only WebSocket version 13 is supported", {
      "sec-websocket-version": "13",
    });
  }
  const key = headers.get("sec-websocket-key");
  if (key === null || !KEY_PATTERN.test(key)) {
    throw new HandshakeError(400, "Bad Request: Sec-WebSocket-Key must be 16 bytes in base64");
  }
  return key;
}

/** Writes `bytes` (a whole answer) and closes the connection without letting unread input reset it away. */
async function answerAndClose(conn: Deno.Conn, bytes: Uint8Array): Promise<void> {
  // One deadline for all of it: a write can wait forever too (a peer that does not read, or a TLS
  // handshake that never finishes).
  const deadline = setTimeout(() => {
    try {
      conn.close();
    } catch { /* closed below */ }
  }, LINGER_MS);
  try {
    for (let offset = 0; offset < bytes.byteLength;) offset += await conn.write(bytes.subarray(offset));
    conn.closeWrite();
    // Read and drop what the client still sends until it closes.
    const sink = new Uint8Array(4096);
    while ((await conn.read(sink)) !== null) { /* discard */ }
  } catch { /* the client went away, or the deadline closed the connection */ }
  clearTimeout(deadline);
  try {
    conn.close();
  } catch { /* already closed */ }
}

/** Connections past the socket budget that may be answered at once; beyond this they are just closed. */
const MAX_UNBUDGETED = 8;
const SOCKETS_SPENT = plainResponse(503, "Service Unavailable: the relay is at its socket limit", {
  "retry-after": "5",
});

/** Writes a short answer if the kernel takes it at once, and closes without waiting for anything. */
async function answerNow(conn: Deno.Conn, bytes: Uint8Array): Promise<void> {
  const timer = setTimeout(() => {
    try {
      conn.close();
    } catch { /* closed below */ }
  }, 100);
  try {
    await conn.write(bytes);
  } catch { /* best effort */ }
  clearTimeout(timer);
  try {
    conn.close();
  } catch { /* already closed */ }
}

/** Errors of one connection (reset or aborted before accept returned), as opposed to the listener's. */
function isConnectionError(err: unknown): boolean {
  return err instanceof Deno.errors.NotConnected || err instanceof Deno.errors.ConnectionReset ||
    err instanceof Deno.errors.ConnectionAborted;
}

function bump(map: Map<string, number>, key: string, delta: number): void {
  const next = (map.get(key) ?? 0) + delta;
  if (next > 0) map.set(key, next);
  else map.delete(key);
}

/** Starts listening. */
export function listen(options: ListenOptions): Listener {
  // `reusePort` is typed only in Deno's unstable declarations; passed only when asked for, so that a relay
  // without workers runs without --unstable-net.
  const shared = options.reusePort === true ? { reusePort: true } : {};
  const listener = options.tls === undefined
    ? Deno.listen({ hostname: options.hostname, port: options.port, transport: "tcp", ...shared })
    : Deno.listenTls({
      hostname: options.hostname,
      port: options.port,
      transport: "tcp",
      cert: options.tls.cert,
      key: options.tls.key,
      ...shared,
    });
  const sockets: SocketBudget = options.sockets ?? unlimitedSockets();
  const pendingPerIp = new Map<string, number>();
  /** Connections not (yet) upgraded: closed when the listener closes. */
  const open = new Set<Deno.Conn>();
  const tasks = new Set<Promise<void>>();
  let pending = 0;
  let connections = 0;
  /** Connections past the socket budget whose 503 is being written; the accept loop waits while there are many. */
  let unbudgeted = 0;
  let wakeAccept: (() => void) | undefined;
  let closing = false;
  let retryTimer: ReturnType<typeof setTimeout> | undefined;
  let wakeRetry: (() => void) | undefined;

  const track = (task: Promise<void>) => {
    tasks.add(task);
    void task.finally(() => tasks.delete(task));
  };

  const refuse = (conn: Deno.Conn, ip: string, kind: ConnectionRefusal, bytes: Uint8Array) => {
    options.onRefused?.(kind, ip);
    return answerAndClose(conn, bytes);
  };

  async function serveConnection(conn: Deno.Conn, held: Counter): Promise<void> {
    const remoteAddr = conn.remoteAddr as Deno.NetAddr;
    const ip = remoteAddr.hostname;
    if (pending >= options.maxPending) {
      await refuse(
        conn,
        ip,
        "pending_total",
        plainResponse(503, "Service Unavailable: too many connections"),
      );
      held.release();
      return;
    }
    if ((pendingPerIp.get(ip) ?? 0) >= options.maxPendingPerIp) {
      await refuse(
        conn,
        ip,
        "pending_per_ip",
        plainResponse(429, "Too Many Requests: too many connections from this address"),
      );
      held.release();
      return;
    }
    pending++;
    bump(pendingPerIp, ip, 1);
    open.add(conn);
    let stillPending = true;
    const leavePending = () => {
      if (!stillPending) return;
      stillPending = false;
      pending--;
      bump(pendingPerIp, ip, -1);
    };
    let timedOut = false;
    const timer = setTimeout(() => {
      timedOut = true;
      options.onRefused?.("header_timeout", ip);
      // A read is pending; closing the write side and answering would race it, so the answer is best effort.
      void answerAndClose(conn, plainResponse(408, "Request Timeout")).finally(() => open.delete(conn));
    }, options.headerTimeoutMs);
    let upgraded = false;
    try {
      const head = await readHead(conn, options.maxHeaderBytes);
      if (timedOut) return;
      // The deadline runs on through a body (cleared below); refusals of the head itself stop it now.
      if (head === "too_large" || head === null) clearTimeout(timer);
      if (head === "too_large") {
        await refuse(conn, ip, "header_too_large", plainResponse(431, "Request Header Fields Too Large"));
        return;
      }
      if (head === null) return;
      let parsed;
      try {
        parsed = parseRequestHead(head.head, options.maxUrlLength);
      } catch (err: unknown) {
        if (!(err instanceof HttpError)) throw err;
        if (err.status === 400) options.onRefused?.("bad_request", ip);
        await answerAndClose(conn, plainResponse(err.status, err.message));
        return;
      }
      // A body (POST /dns-query) is read whole, bounded, before the handler sees the request, within the same
      // deadline as the head.
      let body: Uint8Array<ArrayBuffer> | undefined;
      const declared = parsed.headers.get("content-length");
      if (parsed.headers.has("transfer-encoding")) {
        await answerAndClose(conn, plainResponse(411, "Length Required: send the body with Content-Length"));
        return;
      }
      if (declared !== null) {
        const length = /^\d{1,15}$/.test(declared.trim()) ? Number(declared.trim()) : NaN;
        if (!Number.isSafeInteger(length)) {
          options.onRefused?.("bad_request", ip);
          await answerAndClose(conn, plainResponse(400, "Bad Request: malformed Content-Length"));
          return;
        }
        if (length > (options.maxBodyBytes ?? DEFAULT_MAX_BODY_BYTES)) {
          await answerAndClose(conn, plainResponse(413, "Content Too Large"));
          return;
        }
        if (length > 0) {
          const read = await readBody(conn, head.rest, length);
          if (read === null || timedOut) return;
          body = read.body;
          head.rest = read.rest;
        }
      }
      clearTimeout(timer);
      const host = parsed.headers.get("host");
      const base = host !== null && /^[A-Za-z0-9.\-:[\]]+$/.test(host)
        ? `http://${host}`
        : "http://localhost";
      let request: Request;
      try {
        request = new Request(new URL(parsed.target, base), {
          method: parsed.method,
          headers: parsed.headers,
          ...(body === undefined || parsed.method === "GET" || parsed.method === "HEAD" ? {} : { body }),
        });
      } catch {
        options.onRefused?.("bad_request", ip);
        await answerAndClose(conn, plainResponse(400, "Bad Request: malformed request target"));
        return;
      }
      origins.set(request, { version: parsed.version, method: parsed.method });
      let response: Response;
      try {
        response = await options.handler(request, { remoteAddr });
      } catch (err: unknown) {
        if (err instanceof HandshakeError) {
          await answerAndClose(conn, plainResponse(err.status, err.message, { ...err.headers }));
          return;
        }
        options.onHandlerError?.(err);
        await answerAndClose(conn, plainResponse(500, "Internal Server Error"));
        return;
      }
      const upgrade = upgrades.get(response);
      if (upgrade !== undefined) {
        upgrades.delete(response);
        try {
          await writeAll(conn, encodeResponseHead(101, upgrade.headers));
        } catch (err: unknown) {
          // The client went away before its 101: whoever set the socket up must hear it closed.
          upgrade.socket.abandon();
          throw err;
        }
        leavePending();
        open.delete(conn);
        upgraded = true;
        upgrade.socket.attach(conn, head.rest, () => held.release());
        return;
      }
      await answerAndClose(conn, await encodeResponse(request.method, response));
    } catch {
      // The client reset the connection or the listener closed it: nothing more to do.
    } finally {
      clearTimeout(timer);
      leavePending();
      if (!upgraded) {
        open.delete(conn);
        try {
          conn.close();
        } catch { /* already closed */ }
        held.release();
      }
    }
  }

  async function acceptLoop(): Promise<void> {
    let retryMs = 0;
    while (!closing) {
      if (unbudgeted >= MAX_UNBUDGETED) {
        await new Promise<void>((resolve) => wakeAccept = resolve);
        continue;
      }
      let conn: Deno.Conn;
      try {
        conn = await listener.accept();
        retryMs = 0;
      } catch (err: unknown) {
        if (closing) return;
        // A connection that was reset before accept returned fails alone: the next one is fine at once.
        if (isConnectionError(err)) continue;
        retryMs = retryMs === 0 ? ACCEPT_RETRY_FIRST_MS : Math.min(ACCEPT_RETRY_MAX_MS, retryMs * 2);
        options.onAcceptError?.(err, retryMs);
        await new Promise<void>((resolve) => {
          wakeRetry = resolve;
          retryTimer = setTimeout(resolve, retryMs);
        });
        retryTimer = wakeRetry = undefined;
        continue;
      }
      if (closing) {
        conn.close();
        return;
      }
      connections++;
      const counted: Counter = {
        release: () => {
          if (counted.released) return;
          counted.released = true;
          connections--;
          sockets.release();
        },
        released: false,
      };
      if (!sockets.tryAcquire()) {
        // The budget is spent: answer at once, with the descriptor accept already gave us.
        connections--;
        options.onRefused?.("sockets", (conn.remoteAddr as Deno.NetAddr).hostname);
        // No linger here: this descriptor is outside the budget, so it must be given back at once. In a burst,
        // the loop accepts no more than a few such connections at a time (the rest wait in the kernel's backlog,
        // costing no descriptor), so every one still gets its 503.
        unbudgeted++;
        track(
          answerNow(conn, SOCKETS_SPENT).finally(() => {
            unbudgeted--;
            const wake = wakeAccept;
            wakeAccept = undefined;
            wake?.();
          }),
        );
        continue;
      }
      track(serveConnection(conn, counted));
    }
  }

  const loop = acceptLoop();
  return {
    addr: listener.addr as Deno.NetAddr,
    get connections() {
      return connections;
    },
    get pending() {
      return pending;
    },
    async close() {
      if (!closing) {
        closing = true;
        try {
          listener.close();
        } catch { /* already closed */ }
        if (retryTimer !== undefined) clearTimeout(retryTimer);
        wakeRetry?.();
        wakeAccept?.();
        for (const conn of open) {
          try {
            conn.close();
          } catch { /* already closed */ }
        }
      }
      await loop;
      while (tasks.size > 0) await Promise.allSettled([...tasks]);
    },
  };
}

async function writeAll(conn: Deno.Conn, bytes: Uint8Array): Promise<void> {
  for (let offset = 0; offset < bytes.byteLength;) offset += await conn.write(bytes.subarray(offset));
}

/**
 * Reads up to the end of the request head. Returns the head and any bytes after it, `"too_large"` past the
 * cap, or null if the client closed first.
 */
/** Default of {@linkcode ListenOptions.maxBodyBytes}. */
const DEFAULT_MAX_BODY_BYTES = 64 * 1024;

/** Reads a body of `length` bytes, starting with what came after the head; null if the peer went away. */
async function readBody(
  conn: Deno.Conn,
  already: Uint8Array,
  length: number,
): Promise<{ body: Uint8Array<ArrayBuffer>; rest: Uint8Array } | null> {
  const body = new Uint8Array(length);
  const first = Math.min(length, already.byteLength);
  body.set(already.subarray(0, first));
  for (let filled = first; filled < length;) {
    const n = await conn.read(body.subarray(filled));
    if (n === null) return null;
    filled += n;
  }
  return { body, rest: already.slice(first) };
}

async function readHead(
  conn: Deno.Conn,
  maxBytes: number,
): Promise<{ head: Uint8Array; rest: Uint8Array } | "too_large" | null> {
  let buffer = new Uint8Array(Math.min(4096, maxBytes + 4));
  let filled = 0;
  for (;;) {
    if (filled === buffer.byteLength) {
      if (buffer.byteLength >= maxBytes + 4) return "too_large";
      const bigger = new Uint8Array(Math.min(buffer.byteLength * 2, maxBytes + 4));
      bigger.set(buffer);
      buffer = bigger;
    }
    const n = await conn.read(buffer.subarray(filled));
    if (n === null) return null;
    const from = filled;
    filled += n;
    const end = findHeadEnd(buffer.subarray(0, filled), from);
    if (end >= 0) {
      if (end > maxBytes) return "too_large";
      return { head: buffer.subarray(0, end), rest: buffer.slice(end, filled) };
    }
    if (filled > maxBytes) return "too_large";
  }
}

/** A handler's response as bytes: head with its length, then the body (HEAD gets none). */
async function encodeResponse(method: string, response: Response): Promise<Uint8Array> {
  const body = method === "HEAD" || response.body === null
    ? new Uint8Array(0)
    : new Uint8Array(await response.arrayBuffer());
  if (method === "HEAD") await response.body?.cancel();
  const headers: [string, string][] = [];
  for (const [name, value] of response.headers) {
    if (name !== "content-length" && name !== "connection" && name !== "transfer-encoding") {
      headers.push([name, value]);
    }
  }
  headers.push(["content-length", String(body.byteLength)], ["connection", "close"]);
  const head = encodeResponseHead(response.status, headers);
  const out = new Uint8Array(head.byteLength + body.byteLength);
  out.set(head);
  out.set(body, head.byteLength);
  return out;
}
