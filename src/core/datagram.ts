/**
 * One UDP binding of a session: a socket of its own, connected to one checked address, one datagram per client
 * message each way. Protocol-neutral: Wisp's UDP streams use it now, Aero's `/udp` can use the same binding.
 *
 * UDP semantics throughout: nothing is queued beyond a handful of datagrams sent before the socket is ready.
 * A datagram over the size cap, over the session's rate, or arriving while the WebSocket is congested is
 * dropped and counted, never buffered.
 * @module
 */
import dgram from "node:dgram";
import { getLogger } from "@logtape/logtape";
import {
  type CloseReason,
  type ConnectCause,
  formatDestination,
  GATE_REFUSED,
  resolveStreamTarget,
  type SessionStream,
  type StreamHostBase,
} from "./stream.ts";

/** Datagrams, and bytes of them, a binding holds while its socket is being set up; more are dropped. */
export const PENDING_DATAGRAMS = 16;
export const PENDING_BYTES = 16 * 1024;

/** Why a datagram was dropped; stable labels for the metrics. */
export type DatagramDrop =
  | "too_large"
  | "rate_limited"
  | "congested"
  | "not_ready"
  | "foreign_source"
  | "malformed"
  | "refused";

/** What a UDP binding needs from its session. */
export interface DatagramHost extends StreamHostBase {
  /** Bytes the wire puts in front of a datagram of binding `id` (they may differ per binding). */
  datagramHeaderSize(id: number): number;
  /** Largest datagram payload relayed either way. */
  readonly maxDatagramBytes: number;
  /** A binding with no datagram either way for this long is closed. */
  readonly datagramIdleMs: number;
  /** Takes one datagram of `bytes` from the session's UDP rate; false: drop it. */
  admitDatagram(bytes: number): boolean;
  datagramDropped(reason: DatagramDrop): void;
  datagramRelayed(direction: "to_target" | "from_target", bytes: number): void;
}

const logger = getLogger(["aero-net-proxy", "stream"]);

/** Whether `address` (an IP literal) is a loopback address. */
function isLoopback(address: string): boolean {
  return address === "::1" || address.startsWith("127.");
}

/** One UDP binding. */
export class UdpStream implements SessionStream {
  readonly id: number;
  readonly destination: string;
  readonly #host: DatagramHost;
  #hostname: string;
  readonly #port: number;
  readonly #resolve: boolean;
  readonly #abort = new AbortController();
  readonly #startedAt = performance.now();
  #socket: dgram.Socket | undefined;
  #ready = false;
  #pending: Uint8Array[] = [];
  #pendingBytes = 0;
  #socketHeld = false;
  #closed = false;
  #lastActivity = performance.now();
  #idleTimer: ReturnType<typeof setTimeout> | undefined;
  #connectMs: number | undefined;
  #task: Promise<void> | undefined;
  #settle: (() => void) | undefined;
  /** See `StreamTarget.gate`. */
  #gate: Promise<boolean> | undefined;

  constructor(
    host: DatagramHost,
    id: number,
    target: { host: string; port: number; resolve: boolean; gate?: Promise<boolean> },
  ) {
    this.#host = host;
    this.#gate = target.gate;
    this.id = id;
    this.#hostname = target.host;
    this.#port = target.port;
    this.#resolve = target.resolve;
    this.destination = formatDestination(target.host, target.port);
  }

  get closed(): boolean {
    return this.#closed;
  }

  start(_delayMs = 0): Promise<void> {
    // UDP bindings are not shaped by the OPEN rate's queue: the rate itself still admitted this one.
    this.#task ??= this.#run().catch((err: unknown) => {
      // A bug ends this binding with an internal error, never the session or the relay.
      logger.error("internal_error", {
        event: "error",
        sessionId: this.#host.sessionId,
        streamId: this.id,
        reason: err instanceof Error ? `${err.name}: ${err.message}` : String(err),
      });
      this.finish("internal_error", "Internal relay error");
    });
    return this.#task;
  }

  async #run(): Promise<void> {
    const ended = new Promise<void>((resolve) => this.#settle = resolve);
    if (this.#gate !== undefined) {
      const allowed = await this.#gate;
      this.#gate = undefined;
      if (this.#closed) return;
      if (!allowed) return this.finish("rate_limited", GATE_REFUSED);
    }
    if (this.#resolve) {
      const resolved = await resolveStreamTarget(
        this.#host,
        { host: this.#hostname, port: this.#port },
        this.#abort.signal,
      );
      if (this.#closed) return;
      if (!("address" in resolved)) return this.finish(resolved.reason, resolved.message, resolved.cause);
      this.#hostname = resolved.address;
    }
    const sockets = this.#host.sockets;
    if (sockets !== undefined) {
      if (!sockets.tryAcquire()) {
        this.finish("rate_limited", `Cannot bind for ${this.destination}: the relay is at its socket limit`);
        return;
      }
      this.#socketHeld = true;
    }
    const v6 = this.#hostname.includes(":");
    const socket = dgram.createSocket({ type: v6 ? "udp6" : "udp4" });
    this.#socket = socket;
    socket.on("message", this.#onMessage);
    // Bind where the target is reachable from: loopback for a loopback target (which is all a sandbox that
    // allows only loopback permits), the wildcard address otherwise.
    const local = isLoopback(this.#hostname) ? (v6 ? "::1" : "127.0.0.1") : (v6 ? "::" : "0.0.0.0");
    const bound = new Promise<void>((resolve, reject) => {
      socket.once("error", reject);
      socket.bind(0, local, () => {
        socket.connect(this.#port, this.#hostname, (err?: Error) => (err ? reject(err) : resolve()));
      });
    });
    bound.catch(() => {});
    try {
      // A binding finished while it is being set up closes its socket, and node:dgram then calls neither
      // callback: the stream's own end must settle this wait too.
      await Promise.race([bound, ended]);
    } catch (err: unknown) {
      if (this.#closed) return;
      const message = err instanceof Error ? err.message : String(err);
      const denied = err instanceof Deno.errors.NotCapable || err instanceof Deno.errors.PermissionDenied;
      this.finish(
        denied ? "policy_denied" : "connect_failed",
        `Cannot bind for ${this.destination}: ${message}`,
      );
      return;
    }
    if (this.#closed) return;
    socket.removeAllListeners("error");
    socket.on(
      "error",
      (err: Error) => this.finish("socket_error", `UDP ${this.destination}: ${err.message}`),
    );
    this.#ready = true;
    this.#connectMs = performance.now() - this.#startedAt;
    this.#host.streamOpened(this);
    const pending = this.#pending;
    this.#pending = [];
    this.#pendingBytes = 0;
    for (const datagram of pending) this.#send(datagram);
    this.#armIdle();
    await ended;
  }

  #onMessage = (message: Uint8Array, remote: { address: string; port: number }): void => {
    if (this.#closed) return;
    const host = this.#host;
    // A connected socket only hears its peer; checked anyway, since that is the rule this binding promises.
    if (remote.port !== this.#port || remote.address !== this.#hostname) {
      host.datagramDropped("foreign_source");
      return;
    }
    const bytes = message.byteLength;
    if (bytes > host.maxDatagramBytes) return host.datagramDropped("too_large");
    if (host.congested) return host.datagramDropped("congested");
    if (!host.admitDatagram(bytes)) return host.datagramDropped("rate_limited");
    this.#lastActivity = performance.now();
    const header = host.datagramHeaderSize(this.id);
    const frame = new Uint8Array(header + bytes);
    frame.set(message, header);
    host.writeDataHeader(frame, this.id);
    host.sendFrame(frame);
    host.datagramRelayed("from_target", bytes);
  };

  enqueue(data: Uint8Array): void {
    if (this.#closed) return;
    const host = this.#host;
    if (data.byteLength > host.maxDatagramBytes) return host.datagramDropped("too_large");
    if (!host.admitDatagram(data.byteLength)) return host.datagramDropped("rate_limited");
    if (!this.#ready) {
      if (this.#pending.length >= PENDING_DATAGRAMS || this.#pendingBytes + data.byteLength > PENDING_BYTES) {
        return host.datagramDropped("not_ready");
      }
      this.#pendingBytes += data.byteLength;
      this.#pending.push(data.slice());
      return;
    }
    this.#send(data);
  }

  #send(data: Uint8Array): void {
    this.#lastActivity = performance.now();
    // node:dgram copies nothing before the send completes: hand it a copy the client's message cannot change.
    this.#socket!.send(data.slice());
    this.#host.datagramRelayed("to_target", data.byteLength);
  }

  /** Closes the binding once it has seen nothing either way for the idle time. */
  #armIdle(): void {
    const idleMs = this.#host.datagramIdleMs;
    const left = this.#lastActivity + idleMs - performance.now();
    this.#idleTimer = setTimeout(() => {
      if (this.#closed) return;
      if (performance.now() - this.#lastActivity >= idleMs) this.finish("idle_timeout");
      else this.#armIdle();
    }, Math.max(1, left));
  }

  clientClose(): void {
    this.finish("client_close");
  }

  idleFor(): boolean {
    // The binding keeps its own idle time (datagramIdleMs), whatever the session sweeps for TCP.
    return false;
  }

  stalledFor(): number {
    return 0;
  }

  abortLinger(): void {}

  finish(reason: CloseReason, message?: string, cause?: ConnectCause): void {
    if (this.#closed) return;
    this.#closed = true;
    if (reason !== "session_closed") this.#host.streamEnding(this, reason, message, cause);
    this.#abort.abort();
    if (this.#idleTimer !== undefined) clearTimeout(this.#idleTimer);
    this.#pending = [];
    this.#pendingBytes = 0;
    try {
      this.#socket?.close();
    } catch {
      // Closed already.
    }
    if (this.#socketHeld) {
      this.#socketHeld = false;
      this.#host.sockets?.release();
    }
    this.#host.streamFinished(this);
    const durationMs = performance.now() - this.#startedAt;
    this.#host.observeStream(reason, this.#connectMs, durationMs);
    const log = message === undefined ? logger.debug.bind(logger) : logger.info.bind(logger);
    log("stream_close", {
      event: "stream_close",
      sessionId: this.#host.sessionId,
      streamId: this.id,
      destination: this.destination,
      transport: "udp",
      reason,
      durationMs: Math.round(durationMs),
      ...(message === undefined ? {} : { error: message }),
    });
    this.#settle?.();
  }
}
