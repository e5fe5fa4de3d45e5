/**
 * Wisp v1.2 and v2 (draft 6) on `/wisp/` as a wire of the stream core (`../shared/spec/wisp-v1.md`,
 * `wisp-v2.md`): one packet per binary WebSocket message, little-endian header, CONNECT to a name or address
 * over TCP or UDP, DATA, CLOSE with Wisp's reasons, and CONTINUE credits counted in packets.
 *
 * Credits: every TCP stream starts with the relay's buffer size (the handshake CONTINUE). The relay counts the
 * DATA packets it receives per stream against the credit it has granted, and grants a fresh buffer once the
 * stream's queue towards the target has drained and the client has used half its buffer. A client sends at most
 * what it was granted when it heard the last CONTINUE plus that CONTINUE's value, so the relay's bound is the sum
 * of the grants: a client past it gets CLOSE 0x49 on that stream, never more memory. UDP streams have no credit
 * (the spec forbids CONTINUE on them).
 *
 * v2 handshake: the relay sends INFO (UDP, MOTD, password auth when enabled, stream confirmation), waits for the
 * client's INFO (checking the password if one is required), then sends the handshake CONTINUE.
 * @module
 */
import {
  CLOSE_NORMAL,
  CLOSE_POLICY_VIOLATION,
  CLOSE_PROTOCOL_ERROR,
  type Refusal,
  type Session,
  type Wire,
} from "../core/session.ts";
import type { CloseReason, ConnectCause } from "../core/stream.ts";
import { Metrics } from "../metrics.ts";
import {
  decodeWispPacket,
  encodeWispClose,
  encodeWispContinue,
  encodeWispInfo,
  WISP_CLOSE_REASON_NAMES,
  WISP_HANDSHAKE_STREAM_ID,
  WISP_HEADER_SIZE,
  WispCloseReason,
  type WispEncodableExtension,
  type WispInfoPacket,
  WispPacketType,
  WispStreamType,
  writeWispDataHeader,
} from "./wisp_codec.ts";

/** The Wisp version this relay speaks in v2 INFO. */
export const WISP_VERSION = { major: 2, minor: 0 } as const;

/** The CLOSE reason for a stream that ends, by the core's reason (none: the client ended it). */
const ENDING_REASONS: Readonly<Partial<Record<CloseReason, number>>> = {
  "target_close": WispCloseReason.VOLUNTARY,
  "idle_timeout": WispCloseReason.TRANSFER_TIMEOUT,
  "connect_failed": WispCloseReason.NETWORK_ERROR,
  "policy_denied": WispCloseReason.HOST_BLOCKED,
  "invalid_target": WispCloseReason.INVALID_INFO,
  "socket_error": WispCloseReason.NETWORK_ERROR,
  "backpressure": WispCloseReason.TRANSFER_TIMEOUT,
  "rate_limited": WispCloseReason.THROTTLED,
  "internal_error": WispCloseReason.UNSPECIFIED,
};

/** A failed connect whose cause the relay could tell. */
const CAUSE_REASONS: Readonly<Record<ConnectCause, number>> = {
  "unreachable": WispCloseReason.HOST_UNREACHABLE,
  "timeout": WispCloseReason.CONNECT_TIMEOUT,
  "refused": WispCloseReason.CONNECTION_REFUSED,
};

/** The CLOSE reason for a CONNECT the core refused. */
const REFUSAL_REASONS: Readonly<Record<Refusal, number>> = {
  "policy_denied": WispCloseReason.HOST_BLOCKED,
  "rate_limited": WispCloseReason.THROTTLED,
  "invalid": WispCloseReason.INVALID_INFO,
};

/** How a Wisp session is set up. */
export interface WispOptions {
  readonly version: 1 | 2;
  /** DATA packets a TCP stream may have in flight (the CONTINUE buffer size). */
  readonly bufferPackets: number;
  /** v2: the message of the day; empty = no MOTD extension. */
  readonly motd: string;
  /** Whether UDP streams are offered (v2 UDP extension) and accepted. */
  readonly udp: boolean;
  /**
   * v2 password authentication: offered when set. `required` when the upgrade carried no token, and then the
   * client's INFO must carry a password that `check` accepts.
   */
  readonly password?: { readonly required: boolean; check(password: string): boolean; settled?(): void };
  /** How long the client has to answer the v2 INFO (0 = no limit). */
  readonly handshakeTimeoutMs: number;
  /** Called once the handshake is through (v1: at once; v2: after the client's INFO). */
  readonly onReady?: () => void;
}

/** Credit bookkeeping of one TCP stream, in packets. */
interface Credit {
  /** DATA packets received. */
  received: number;
  /** The most the client may have sent, by the grants it has heard. */
  limit: number;
  /** `received` when the last grant went out. */
  grantedAt: number;
}

/** Wisp, for one session. */
export class WispWire implements Wire {
  readonly dataHeaderSize = WISP_HEADER_SIZE;
  readonly halfClose = false;
  readonly #session: Session;
  readonly #options: WispOptions;
  readonly #credits = new Map<number, Credit>();
  #phase: "starting" | "handshake" | "open" = "starting";
  #handshakeTimer: ReturnType<typeof setTimeout> | undefined;
  /** v2: whether the client asked for stream open confirmations. */
  #confirmStreams = false;
  /** v2: whether the client announced UDP (v1 has it always). */
  #clientUdp = true;

  constructor(session: Session, options: WispOptions) {
    this.#session = session;
    this.#options = options;
  }

  /** The WebSocket is open: v1 grants the buffer at once, v2 starts its handshake with INFO. */
  start(): void {
    if (this.#phase !== "starting" || this.#session.closed) return;
    const options = this.#options;
    if (options.version === 1) {
      this.#ready();
      return;
    }
    this.#phase = "handshake";
    const extensions: WispEncodableExtension[] = [];
    if (options.udp) extensions.push({ kind: "udp" });
    if (options.password !== undefined) {
      extensions.push({ kind: "password-auth-offer", required: options.password.required });
    }
    if (options.motd !== "") extensions.push({ kind: "motd", text: options.motd });
    extensions.push({ kind: "stream-confirmation" });
    this.#session.sendFrame(encodeWispInfo({ ...WISP_VERSION, extensions }));
    if (options.handshakeTimeoutMs > 0) {
      this.#handshakeTimer = setTimeout(() => {
        this.#handshakeTimer = undefined;
        if (this.#phase !== "handshake" || this.#session.closed) return;
        this.#reject(
          options.password?.required ? WispCloseReason.AUTH_MISSING_CREDENTIALS : WispCloseReason.UNSPECIFIED,
          `Wisp handshake not completed within ${options.handshakeTimeoutMs} ms`,
        );
      }, options.handshakeTimeoutMs);
    }
  }

  #ready(): void {
    this.#phase = "open";
    this.#stopHandshakeTimer();
    this.#options.password?.settled?.();
    this.#session.sendFrame(encodeWispContinue(WISP_HANDSHAKE_STREAM_ID, this.#options.bufferPackets));
    this.#options.onReady?.();
  }

  #stopHandshakeTimer(): void {
    if (this.#handshakeTimer !== undefined) clearTimeout(this.#handshakeTimer);
    this.#handshakeTimer = undefined;
  }

  /** Rejects the v2 handshake: CLOSE on stream 0 with `reason`, then the WebSocket closes. */
  #reject(reason: number, message: string): void {
    this.#sendClose(WISP_HANDSHAKE_STREAM_ID, reason);
    this.#session.protocolViolation(message, CLOSE_POLICY_VIOLATION);
  }

  writeDataHeader(frame: Uint8Array, id: number): void {
    writeWispDataHeader(frame, id);
  }

  receive(data: ArrayBuffer | string): void {
    const session = this.#session;
    const bytes = session.binaryMessage(data, "Wisp");
    if (bytes === undefined) return;
    const packet = decodeWispPacket(bytes, { sender: "client", passwordLayout: "auto" });
    if (this.#phase === "handshake") {
      this.#handshake(packet.type === WispPacketType.INFO ? packet : undefined, packet);
      return;
    }
    switch (packet.type) {
      case "invalid":
        if (packet.error.scope === "session") {
          session.protocolViolation(packet.error.message, CLOSE_PROTOCOL_ERROR);
          return;
        }
        this.#streamError(packet.streamId, packet.error.closeReason);
        return;
      case WispPacketType.CONNECT: {
        const id = packet.streamId;
        if (session.hasStream(id)) {
          // The client's ids name one stream each: a second CONNECT on a live one is a client bug, and both go.
          this.#streamError(id, WispCloseReason.INVALID_INFO);
          return;
        }
        const host = packet.hostname.startsWith("[") && packet.hostname.endsWith("]")
          ? packet.hostname.slice(1, -1)
          : packet.hostname;
        if (packet.streamType === WispStreamType.UDP) {
          if (!this.#clientUdp) {
            // v2 without the UDP extension on both sides: the stream type is not part of this connection.
            session.remember(id);
            this.#sendClose(id, WispCloseReason.INVALID_INFO);
            return;
          }
          session.openDatagram(id, host, packet.port);
          return;
        }
        const buffer = this.#options.bufferPackets;
        this.#credits.set(id, { received: 0, limit: buffer, grantedAt: 0 });
        session.openTarget(id, host, packet.port);
        return;
      }
      case WispPacketType.DATA: {
        const id = packet.streamId;
        const credit = this.#credits.get(id);
        if (credit !== undefined && ++credit.received > credit.limit) {
          session.countLimit(
            "wisp_credit",
            id,
            `Wisp client sent ${credit.received} DATA packets on stream ${id}; it was granted ${credit.limit}`,
          );
          this.#streamError(id, WispCloseReason.THROTTLED);
          return;
        }
        // DATA for a stream that is gone crossed its CLOSE on the wire: dropped, as Wisp clients expect.
        session.data(id, packet.data);
        // An empty packet costs the client a credit but never reaches the target, so no write will report
        // progress for it: settle it here, or a client that sends empty packets would wait for credit forever.
        if (credit !== undefined && packet.data.byteLength === 0) {
          const queued = session.uploadQueued(id);
          if (queued !== undefined) this.uploadProgress(id, queued);
        }
        return;
      }
      case WispPacketType.CLOSE:
        // Wisp has no half-close: the client is done with the stream. What it sent before is still delivered
        // (then the target gets FIN); a client that reports its own failure (0x81) drops the stream at once.
        if (packet.reason === WispCloseReason.CLIENT_ERROR) session.abortStream(packet.streamId);
        else session.clientClose(packet.streamId);
        this.#forget(packet.streamId);
        if (packet.streamId === WISP_HANDSHAKE_STREAM_ID) session.close(CLOSE_NORMAL, "client closed Wisp");
        return;
      case WispPacketType.CONTINUE:
      case WispPacketType.INFO:
        // CONTINUE is the server's to send, and INFO belongs to the handshake: neither means anything now.
        return;
    }
  }

  /** The v2 handshake: the first packet must be the client's INFO. */
  #handshake(info: WispInfoPacket | undefined, packet: { type: unknown }): void {
    const password = this.#options.password;
    if (info === undefined) {
      if (password?.required) {
        this.#reject(WispCloseReason.AUTH_MISSING_CREDENTIALS, "Wisp client sent no credentials");
        return;
      }
      const what = packet.type === "invalid" ? "a malformed packet" : `packet type ${String(packet.type)}`;
      this.#session.protocolViolation(`Wisp v2 client sent ${what} instead of INFO`, CLOSE_PROTOCOL_ERROR);
      return;
    }
    const kinds = new Set(info.extensions.map((extension) => extension.kind));
    if (password?.required) {
      const credentials = info.extensions.find((extension) => extension.kind === "password-auth-credentials");
      if (credentials === undefined) {
        this.#session.metrics.authFailures++;
        this.#reject(WispCloseReason.AUTH_MISSING_CREDENTIALS, "Wisp client sent no credentials");
        return;
      }
      if (!password.check(credentials.password)) {
        this.#session.metrics.authFailures++;
        this.#reject(WispCloseReason.AUTH_BAD_PASSWORD, "Wisp client sent a wrong password");
        return;
      }
    }
    this.#confirmStreams = kinds.has("stream-confirmation");
    this.#clientUdp = this.#options.udp && kinds.has("udp");
    this.#ready();
  }

  streamOpened(id: number): void {
    const credit = this.#credits.get(id);
    if (!this.#confirmStreams || credit === undefined) return;
    // Stream open confirmation: a CONTINUE once connected, carrying what is left of the stream's buffer. It
    // is not a refill: the half-buffer count towards the next one keeps running from the last real grant, or a
    // client that used more than half its buffer before the connect could never earn another.
    const left = Math.max(0, credit.limit - credit.received);
    credit.limit += left;
    this.#session.sendFrame(encodeWispContinue(id, left));
  }

  uploadProgress(id: number, queuedBytes: number): void {
    const credit = this.#credits.get(id);
    if (credit === undefined || queuedBytes > 0) return;
    // Everything received so far has reached the target: once the client has used half its buffer, give it a
    // whole one again (as wisp-js and epoxy servers do, a CONTINUE per half buffer).
    const buffer = this.#options.bufferPackets;
    if (credit.received - credit.grantedAt >= Math.ceil(buffer / 2)) this.#grant(id, credit, buffer);
  }

  #grant(id: number, credit: Credit, packets: number): void {
    credit.limit += packets;
    credit.grantedAt = credit.received;
    this.#session.sendFrame(encodeWispContinue(id, packets));
  }

  targetEnded(): void {
    // Not a half-close wire: the core ends the stream on the target's EOF.
  }

  streamEnding(id: number, reason: CloseReason, message: string | undefined, cause?: ConnectCause): void {
    this.#forget(id);
    if (reason === "client_close" || reason === "client_reset") return;
    const closeReason =
      (reason === "connect_failed" && cause !== undefined ? CAUSE_REASONS[cause] : undefined) ??
        ENDING_REASONS[reason] ??
        (message === undefined ? WispCloseReason.VOLUNTARY : WispCloseReason.UNSPECIFIED);
    this.#sendClose(id, closeReason);
  }

  openRefused(id: number, refusal: Refusal): void {
    this.#forget(id);
    this.#sendClose(id, REFUSAL_REASONS[refusal]);
  }

  peerViolation(): void {
    // WebSocket-level violations close the connection; Wisp has nothing to add.
  }

  internalError(): void {
    // The WebSocket closes with 1011; a Wisp CLOSE on stream 0 would mean a rejected handshake.
  }

  sessionClosed(): void {
    this.#stopHandshakeTimer();
    this.#options.password?.settled?.();
  }

  /** A packet that breaks a stream: CLOSE with `reason`, and the stream (if live) is dropped. */
  #streamError(id: number, reason: number): void {
    this.#forget(id);
    this.#session.remember(id);
    // Aborted as the client's reset, which the core answers with nothing: the CLOSE below is the only answer.
    this.#session.abortStream(id);
    this.#sendClose(id, reason);
  }

  #forget(id: number): void {
    this.#credits.delete(id);
  }

  #sendClose(id: number, reason: number): void {
    const session = this.#session;
    if (!session.admitReply(id)) return;
    Metrics.bump(session.metrics.wispClosesSent, WISP_CLOSE_REASON_NAMES[reason] ?? String(reason));
    session.sendFrame(encodeWispClose(id, reason));
  }
}

/** Where Wisp is served: the prefix every Wisp URL starts with. */
export const WISP_PATH = "/wisp/";

/** What a `/wisp/...` request asks for, read from its URL alone. */
export type WispRequest =
  | { readonly kind: "wisp"; readonly tokens: readonly string[] }
  | { readonly kind: "wsproxy" }
  | { readonly kind: "not_found" };

/**
 * Reads a Wisp URL. Clients only take a URL and append to it (wisp-js needs the trailing `/`; libcurl.js adds
 * `/host:port` and cuts at the last `/`), so the token may come as a path segment (`/wisp/<token>/`) or in the
 * query (`/wisp/?token=T`, where a stray trailing `/` or `&/` from such clients is ignored). `tokens` lists
 * the candidates found in the URL, in the order they are tried.
 */
export function parseWispRequest(url: URL): WispRequest {
  const path = url.pathname;
  if (!path.startsWith(WISP_PATH)) return { kind: "not_found" };
  const rest = path.slice(WISP_PATH.length);
  const tokens: string[] = [];
  if (rest !== "") {
    const segment = /^([^/]+)\/$/.exec(rest)?.[1];
    if (segment === undefined) {
      // `/wisp/host:port`: the one-socket-per-WebSocket "wsproxy" form, which this relay does not serve.
      return /^[^/]+$/.test(rest) ? { kind: "wsproxy" } : { kind: "not_found" };
    }
    try {
      tokens.push(decodeURIComponent(segment));
    } catch {
      tokens.push(segment);
    }
  }
  const query = url.searchParams.get("token");
  if (query !== null && query !== "") {
    tokens.push(query);
    if (query.endsWith("/")) tokens.push(query.slice(0, -1));
  }
  return { kind: "wisp", tokens: tokens.filter((token) => token !== "") };
}
