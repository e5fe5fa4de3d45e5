/**
 * Aero's `/tcp` (aero-gateway-net-api.md section 3): one TCP connection per WebSocket, raw bytes both ways, no
 * framing. The target comes from the URL and is checked before the upgrade; afterwards the only signal is the
 * WebSocket's close code.
 * @module
 */
import { CLOSE_NORMAL, CLOSE_POLICY_VIOLATION, type Session, type Wire } from "../core/session.ts";
import type { CloseReason } from "../core/stream.ts";

/** The path of the one-connection-per-WebSocket endpoint. */
export const TCP_PATH = "/tcp";

/** The one stream of a `/tcp` session. */
export const TCP_STREAM_ID = 1;

/**
 * Close codes for the ways the stream can end. Only codes every client accepts: some WebSocket clients (Deno's
 * among them) reject 1012-1014 as invalid, so a failed connect is 1011 with the reason in the close message.
 */
const CLOSE_INTERNAL_ERROR = 1011;

const ENDING_CLOSE: Readonly<Record<CloseReason, number>> = {
  "client_close": CLOSE_NORMAL,
  "target_close": CLOSE_NORMAL,
  "idle_timeout": CLOSE_NORMAL,
  "session_closed": CLOSE_NORMAL,
  "client_reset": CLOSE_NORMAL,
  "connect_failed": CLOSE_INTERNAL_ERROR,
  "socket_error": CLOSE_INTERNAL_ERROR,
  "policy_denied": CLOSE_POLICY_VIOLATION,
  "invalid_target": CLOSE_POLICY_VIOLATION,
  "backpressure": CLOSE_POLICY_VIOLATION,
  "rate_limited": CLOSE_POLICY_VIOLATION,
  "internal_error": CLOSE_INTERNAL_ERROR,
};

const encoder = new TextEncoder();

/** `/tcp`, for one session: every message is bytes for the target; the target's bytes are binary messages. */
export class AeroTcpWire implements Wire {
  readonly dataHeaderSize = 0;
  readonly halfClose = false;
  readonly #session: Session;

  constructor(session: Session) {
    this.#session = session;
  }

  writeDataHeader(): void {
    // Raw bytes: no header.
  }

  receive(data: ArrayBuffer | string): void {
    const bytes = typeof data === "string" ? encoder.encode(data) : new Uint8Array(data);
    this.#session.countInbound(bytes.byteLength);
    // Text is forwarded as its UTF-8 bytes, as the contract allows for debugging clients.
    this.#session.data(TCP_STREAM_ID, bytes);
  }

  streamOpened(): void {
    // Nothing to say: bytes simply start to flow.
  }

  targetEnded(): void {
    // No half-close on /tcp: the stream ends at the target's EOF.
  }

  streamEnding(_id: number, reason: CloseReason, message: string | undefined): void {
    // The WebSocket is the stream: it closes with a code that says how, once what was read has been sent.
    const code = ENDING_CLOSE[reason];
    const text = message ?? (code === CLOSE_NORMAL ? "stream closed" : reason);
    queueMicrotask(() => this.#session.close(code, text.slice(0, 120)));
  }

  openRefused(_id: number, _refusal: unknown, message: string): void {
    queueMicrotask(() => this.#session.close(CLOSE_POLICY_VIOLATION, message.slice(0, 120)));
  }

  peerViolation(): void {
    // WebSocket-level violations close the connection; nothing to add.
  }

  internalError(): void {
    // The session closes with 1011 right after.
  }
}

/**
 * The target of a `/tcp` URL: `target=<host>:<port>` (IPv6 in brackets) wins over `host` and `port`; `v`, if
 * present, must be `1`. The host is returned as written (without brackets); the dialer checks it.
 */
export function parseTcpTarget(query: URLSearchParams): { host: string; port: number } | { error: string } {
  const version = query.get("v");
  if (version !== null && version !== "1") {
    return { error: `protocol version v=${version} is not supported (v=1)` };
  }
  let host: string | null;
  let portText: string | null;
  const target = query.get("target");
  if (target !== null) {
    const match = /^(?:\[([^\]]+)\]|([^:\[\]]+)):([0-9]{1,5})$/.exec(target);
    if (match === null) return { error: "target must be host:port, with an IPv6 address in brackets" };
    host = match[1] ?? match[2] ?? "";
    portText = match[3]!;
  } else {
    host = query.get("host");
    portText = query.get("port");
    if (host === null || portText === null) return { error: "give host and port, or target=host:port" };
    if (host.startsWith("[") && host.endsWith("]")) host = host.slice(1, -1);
  }
  const port = /^[0-9]{1,5}$/.test(portText) ? Number(portText) : 0;
  if (port < 1 || port > 65535) {
    return { error: `port must be an integer from 1 to 65535, got ${JSON.stringify(portText)}` };
  }
  if (host === "") return { error: "the host is empty" };
  return { host, port };
}
