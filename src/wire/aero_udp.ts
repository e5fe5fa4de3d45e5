/**
 * Aero's UDP relay over WebSocket (`/udp`, `../shared/spec/aero-udp-relay.md`) as a wire of the core's UDP
 * bindings. Two forms:
 *
 * - **Per target** (`/udp?host=H&port=P`): the target is resolved and checked before the upgrade (like `/tcp`);
 *   every binary message is one datagram to it, every datagram from it one binary message back.
 * - **Multiplexed** (`/udp`): v1/v2 datagram frames. Each (guest port, remote address, remote port) is a binding
 *   of its own, a socket connected to that remote, so replies come only from remotes the guest has sent to.
 *   Replies use the frame version the guest used for that binding. Text messages are control: the relay sends
 *   `{"type":"ready","sessionId":…}` once the session is authenticated (at once when the upgrade carried the
 *   token, else after a first `{"type":"auth",…}` message), and `{"type":"error",…}` before closing with 1008.
 *
 * UDP semantics: a malformed frame, one over the size cap or the rate, a refused destination: the datagram is
 * dropped and counted, the session goes on.
 * @module
 */
import { CLOSE_POLICY_VIOLATION, type Refusal, type Session, type Wire } from "../core/session.ts";
import type { CloseReason } from "../core/stream.ts";
import { decodeUdpFrame, ipToText, udpHeaderBytes, writeUdpHeader } from "./aero_udp_codec.ts";

/** Where the UDP relay is served. */
export const UDP_PATH = "/udp";
/** The binding id of the per-target form. */
export const UDP_TARGET_ID = 1;

/** How a `/udp` session starts. */
export interface AeroUdpOptions {
  /** Per-target form: the binding is opened by the server after the upgrade; no control messages. */
  readonly perTarget: boolean;
  /**
   * Multiplexed form without a valid token on the upgrade: the first message must authenticate with one `check`
   * accepts (or, with `rejected`, the session is refused at once, as the upgrade's token was wrong). `settled`
   * is called once the session has authenticated or ended.
   */
  readonly auth?: {
    check(token: string): boolean;
    readonly timeoutMs: number;
    readonly rejected?: string;
    settled(): void;
  };
}

/** One binding of the multiplexed form. */
interface Binding {
  readonly id: number;
  readonly key: string;
  readonly version: 1 | 2;
  readonly guestPort: number;
  readonly remoteIp: Uint8Array;
  readonly remotePort: number;
}

/** Aero's `/udp`, for one session. */
export class AeroUdpWire implements Wire {
  readonly dataHeaderSize = 0;
  readonly halfClose = false;
  readonly #session: Session;
  readonly #options: AeroUdpOptions;
  readonly #byKey = new Map<string, Binding>();
  readonly #byId = new Map<number, Binding>();
  #nextId = UDP_TARGET_ID + 1;
  #authenticated: boolean;
  #authTimer: ReturnType<typeof setTimeout> | undefined;

  constructor(session: Session, options: AeroUdpOptions) {
    this.#session = session;
    this.#options = options;
    this.#authenticated = options.auth === undefined;
  }

  /** The WebSocket is open. */
  start(): void {
    if (this.#options.perTarget || this.#session.closed) return;
    if (this.#authenticated) {
      this.#ready();
      return;
    }
    const auth = this.#options.auth!;
    if (auth.rejected !== undefined) {
      this.#unauthorized(auth.rejected);
      return;
    }
    this.#authTimer = setTimeout(() => {
      this.#authTimer = undefined;
      if (!this.#authenticated) this.#unauthorized(`no auth message within ${auth.timeoutMs} ms`);
    }, auth.timeoutMs);
  }

  #ready(): void {
    this.#session.sendText(JSON.stringify({ type: "ready", sessionId: this.#session.sessionId }));
  }

  #unauthorized(message: string): void {
    this.#session.metrics.authFailures++;
    this.#session.sendText(JSON.stringify({ type: "error", code: "unauthorized", message }));
    this.#session.protocolViolation(`UDP relay: ${message}`, CLOSE_POLICY_VIOLATION);
  }

  receive(data: ArrayBuffer | string): void {
    const session = this.#session;
    if (typeof data === "string") {
      session.countInbound(data.length);
      this.#control(data);
      return;
    }
    session.countInbound(data.byteLength);
    const bytes = new Uint8Array(data);
    if (!this.#authenticated) {
      this.#unauthorized("a datagram before authentication");
      return;
    }
    if (this.#options.perTarget) {
      session.data(UDP_TARGET_ID, bytes);
      return;
    }
    const frame = decodeUdpFrame(bytes);
    if ("error" in frame) {
      session.datagramDropped("malformed");
      return;
    }
    const key = `${frame.guestPort}|${frame.remoteIp.join(".")}|${frame.remotePort}`;
    let binding = this.#byKey.get(key);
    if (binding === undefined) {
      binding = {
        id: this.#nextId++,
        key,
        version: frame.version,
        guestPort: frame.guestPort,
        remoteIp: frame.remoteIp.slice(),
        remotePort: frame.remotePort,
      };
      this.#byKey.set(key, binding);
      this.#byId.set(binding.id, binding);
      // Resolved and judged like any destination: an address literal still passes the whole policy.
      session.openDatagram(binding.id, ipToText(binding.remoteIp), binding.remotePort);
      if (!this.#byId.has(binding.id)) return; // refused at once: dropped and counted
    }
    session.data(binding.id, frame.payload);
  }

  /** A text message: `auth` before the session is ready; anything else is ignored (the spec reserves text). */
  #control(text: string): void {
    if (this.#authenticated) return;
    let message: { type?: unknown; token?: unknown; apiKey?: unknown };
    try {
      message = JSON.parse(text);
    } catch {
      this.#unauthorized("the first message is not JSON");
      return;
    }
    if (message?.type !== "auth") {
      this.#unauthorized("the first message must be an auth message");
      return;
    }
    const token = typeof message.token === "string" ? message.token : undefined;
    const apiKey = typeof message.apiKey === "string" ? message.apiKey : undefined;
    if (token !== undefined && apiKey !== undefined && token !== apiKey) {
      this.#unauthorized("token and apiKey differ");
      return;
    }
    const credential = token ?? apiKey;
    if (credential === undefined || credential === "") {
      this.#unauthorized("the auth message carries no token");
      return;
    }
    if (!this.#options.auth!.check(credential)) {
      this.#unauthorized("the token is not valid");
      return;
    }
    this.#authenticated = true;
    if (this.#authTimer !== undefined) clearTimeout(this.#authTimer);
    this.#authTimer = undefined;
    this.#options.auth!.settled();
    this.#ready();
  }

  datagramHeaderSize(id: number): number {
    const binding = this.#byId.get(id);
    return binding === undefined ? 0 : udpHeaderBytes(binding.version, binding.remoteIp.byteLength);
  }

  writeDataHeader(frame: Uint8Array, id: number): void {
    const binding = this.#byId.get(id);
    if (binding === undefined) return;
    writeUdpHeader(frame, binding.version, binding.guestPort, binding.remoteIp, binding.remotePort);
  }

  streamOpened(): void {}

  targetEnded(): void {}

  streamEnding(id: number, reason: CloseReason): void {
    this.#forget(id);
    // A destination refused after its lookup: the datagrams sent to it are dropped, and counted so.
    if (reason === "policy_denied" || reason === "invalid_target" || reason === "connect_failed") {
      this.#session.datagramDropped("refused");
    }
    // Per target: the one binding is the session.
    if (this.#options.perTarget) this.#session.close(1000, "UDP binding ended");
  }

  openRefused(id: number, _refusal: Refusal, _message: string): void {
    this.#forget(id);
    this.#session.datagramDropped("refused");
    if (this.#options.perTarget) this.#session.close(CLOSE_POLICY_VIOLATION, "UDP binding refused");
  }

  #forget(id: number): void {
    const binding = this.#byId.get(id);
    if (binding === undefined) return;
    this.#byId.delete(id);
    this.#byKey.delete(binding.key);
  }

  peerViolation(): void {}

  internalError(): void {}

  sessionClosed(): void {
    if (this.#authTimer !== undefined) clearTimeout(this.#authTimer);
    this.#authTimer = undefined;
    this.#options.auth?.settled();
  }
}
