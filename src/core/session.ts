/**
 * One WebSocket session: decodes client frames, owns the id -> stream map, enforces the per-session limits,
 * and has one cleanup path for when the WebSocket goes away.
 * @module
 */
import { getLogger } from "@logtape/logtape";
import type { QueueBudget, SocketBudget } from "../budget.ts";
import type { Config } from "../config.ts";
import { Metrics } from "../metrics.ts";
import type { Policy } from "../policy/policy.ts";
import { TokenBucket } from "../rate_limit.ts";
import { type DatagramDrop, type DatagramHost, UdpStream } from "./datagram.ts";
import {
  type CloseReason,
  type ConnectCause,
  type Dial,
  MIN_READ,
  type SessionStream,
  type StreamHost,
  type StreamTarget,
  TcpStream,
} from "./stream.ts";
import type { Target, TargetResult } from "./target.ts";

/** The part of a WebSocket a session uses (the seam tests and adapters can fill). */
export interface FrameSocket {
  readonly bufferedAmount: number;
  readonly readyState: number;
  /** Bytes go as a binary message, a string as a text message (control messages of some wires). */
  send(data: Uint8Array | string): void;
  close(code?: number, reason?: string): void;
  /** Stops and restarts reading from the client (the transport's TCP backpressure). */
  pause(): void;
  resume(): void;
  /** Resolves once the send buffer is at or below `low` bytes, or the socket has closed. */
  drained(low: number): Promise<void>;
}

/** WebSocket close code for a text message on a binary protocol (RFC 6455, 7.4.1), as Aero's gateway sends. */
export const CLOSE_UNSUPPORTED_DATA = 1003;
/** WebSocket close code for a protocol violation (RFC 6455, 7.4.1). */
export const CLOSE_PROTOCOL_ERROR = 1002;
/** WebSocket close code when the relay shuts down. */
export const CLOSE_GOING_AWAY = 1001;
/** WebSocket close code for a message over the size limit (RFC 6455, 7.4.1). */
export const CLOSE_TOO_BIG = 1009;
/** WebSocket close code for a normal end (used for an idle session). */
export const CLOSE_NORMAL = 1000;
/** WebSocket close code for a peer that breaks the relay's rules (RFC 6455, 7.4.1). */
export const CLOSE_POLICY_VIOLATION = 1008;
/**
 * Replies a client earned by bad frames (ERRORs) that may wait behind a congested send buffer (about 400 KB)
 * before a client that does not read them is cut off.
 */
export const MAX_UNREAD_ERRORS = 4096;
/** Bytes of such replies (a PONG echoes its PING's payload) that may wait before the client is cut off. */
export const MAX_UNREAD_REPLY_BYTES = 1024 * 1024;
/** The connection id used for the session itself in messages and logs. */
const SESSION_ID = 0;

/** Why the core refused an OPEN (the stream never existed). */
export type Refusal = "policy_denied" | "rate_limited" | "invalid";

/**
 * A wire format, for one session: decodes the client's messages into calls on the session, and encodes what
 * the core reports in that protocol's frames and codes. The core never writes a protocol's bytes itself.
 */
export interface Wire {
  /** Bytes in front of each DATA payload (0 for a protocol of raw bytes). */
  readonly dataHeaderSize: number;
  /** Whether the protocol can half-close a stream (see `StreamHost.halfClose`). */
  readonly halfClose: boolean;
  /** The target of stream `id` finished sending (half-close protocols only). */
  targetEnded(id: number): void;
  /** Writes the DATA header of stream `id` at `frame[0]`; the payload is the rest of `frame`. */
  writeDataHeader(frame: Uint8Array, id: number): void;
  /** One message from the client. */
  receive(data: ArrayBuffer | string): void;
  /** Stream `id` is connected to its target. */
  streamOpened(id: number): void;
  /**
   * Stream `id` ends for `reason`; `message` is set when it ends in error, `cause` when a connect failed for a
   * reason the relay could tell (unreachable, timed out, refused).
   */
  streamEnding(id: number, reason: CloseReason, message: string | undefined, cause?: ConnectCause): void;
  /**
   * The target of TCP stream `id` took client bytes; `queuedBytes` are still waiting for it (0: all written).
   * For wires that grant the client credit as the queue drains.
   */
  uploadProgress?(id: number, queuedBytes: number, bytesToTarget: number): void;
  /** Bytes in front of a datagram of UDP binding `id`, where they differ per binding (default: dataHeaderSize). */
  datagramHeaderSize?(id: number): number;
  /** An OPEN was refused before it became a stream. */
  openRefused(id: number, refusal: Refusal, message: string): void;
  /** The transport found a rule broken at the WebSocket level and is about to close with `code`. */
  peerViolation(code: number, message: string): void;
  /** A bug in the relay ends the session; the wire may say so first. */
  internalError(): void;
  /** The session has ended: the wire stops its timers. */
  sessionClosed?(): void;
}
/** WebSocket close code for an unexpected condition in the relay (RFC 6455, 7.4.1). */
export const CLOSE_INTERNAL_ERROR = 1011;
/** `readyState` of an open WebSocket. */
const OPEN = 1;

/**
 * Ids of streams that ended recently. A client's DATA or CLOSE for such an id may have crossed our CLOSE on
 * the wire; it is dropped quietly instead of answered with ERROR 5. Bounded: oldest ids fall out first.
 */
const RECENT_IDS = 4096;

/** Everything a session needs, injected by the server. */
export interface SessionDeps {
  readonly config: Config;
  readonly policy: Policy;
  readonly metrics: Metrics;
  readonly dial: Dial;
  readonly clientIp: string;
  /** Resolves and checks a target written as a name or an address (see src/core/target.ts). */
  readonly resolveTarget?: (target: Target, signal: AbortSignal) => Promise<TargetResult>;
  /** The wire format this session speaks. */
  readonly wire: (session: Session) => Wire;
  /** Shared with the listener and every session: a target connection takes one socket. */
  readonly sockets?: SocketBudget;
  /** Client bytes queued towards targets across all sessions. */
  readonly queue?: QueueBudget;
  /** Bytes of messages and frames still arriving, across all sessions (counted, for the metrics). */
  readonly assembly?: QueueBudget;
  /** Called once when the session ends, before its socket has necessarily finished closing. */
  readonly onClose?: () => void;
  /** Largest datagram payload of this session's UDP bindings; default `config.udpMaxDatagramBytes`. */
  readonly maxDatagramBytes?: number;
  /**
   * A limit beyond the session's own (such as its token's OPEN rate): false refuses the OPEN at once with
   * `rate_limited`; a promise lets the stream start and ends it with `rate_limited` if it resolves false.
   */
  readonly admitOpen?: () => boolean | Promise<boolean>;
  /** Stream payload bytes this session moved, either way (for per-token quotas). */
  readonly countBytes?: (bytes: number) => void;
}

const logger = getLogger(["aero-net-proxy", "session"]);
let nextSessionNumber = 1;

/** One client's WebSocket and its streams. */
export class Session implements StreamHost, DatagramHost {
  readonly sessionId: string;
  readonly dial: Dial;
  readonly connectTimeoutMs: number;
  readonly streamQueueBytes: number;
  readonly sessionQueueBytes: number;
  readonly sockets: SocketBudget | undefined;
  readonly dataHeaderSize: number;
  readonly halfClose: boolean;
  /** Client bytes queued towards this session's targets, overhead included. */
  queuedBytes = 0;

  readonly #socket: FrameSocket;
  readonly #wire: Wire;
  readonly #deps: SessionDeps;
  readonly #metrics: Metrics;
  readonly #streams = new Map<number, SessionStream>();
  #datagramStreams = 0;
  readonly #datagramBucket: TokenBucket | undefined;
  readonly #datagramByteBucket: TokenBucket | undefined;
  readonly maxDatagramBytes: number;
  readonly datagramIdleMs: number;
  readonly #recent = new Set<number>();
  /** Stream tasks still running, and who waits for them all to settle. */
  #running = 0;
  #allSettled: PromiseWithResolvers<void> | undefined;
  /** Finished streams still draining their target after a client CLOSE (see `LINGER_MS`). */
  readonly #lingering = new Set<TcpStream>();
  readonly #openBucket: TokenBucket | undefined;
  readonly #uplinkBucket: TokenBucket | undefined;
  readonly #downlinkBucket: TokenBucket | undefined;
  #sweepTimer: ReturnType<typeof setInterval> | undefined;
  #emptySince = performance.now();
  readonly #highWatermark: number;
  readonly #lowWatermark: number;
  readonly #startedAt = performance.now();
  readonly #limitsLogged = new Set<string>();
  /** One wait for the send buffer to drain, shared by every stream that waits. */
  #drain: { promise: Promise<void>; resolve: () => void } | undefined;
  /** Bytes that pending target reads may still add to the send buffer. */
  #readsReserved = 0;
  /** Streams whose upload queue is over its cap. */
  readonly #fullStreams = new Set<TcpStream>();
  #uploadPaused = false;
  #cancelQueueWait: (() => void) | undefined;
  #stallTimer: ReturnType<typeof setInterval> | undefined;
  #stopWatchingQueue: (() => void) | undefined;
  /** The wait the OPEN rate gave the OPEN being admitted. */
  #openDelayMs = 0;
  /** The answer of `deps.admitOpen` still to come for the OPEN being admitted, handed to its stream. */
  #openGate: Promise<boolean> | undefined;
  #closed = false;
  #unreadErrors = 0;
  #unreadReplyBytes = 0;
  /** Bytes of a frame still arriving, as last reported by the wire. */
  #partialBytes = 0;
  #streamsOpened = 0;
  #bytesIn = 0;
  #bytesOut = 0;

  constructor(socket: FrameSocket, deps: SessionDeps) {
    const { config } = deps;
    this.sessionId = `s${nextSessionNumber++}-${crypto.randomUUID().slice(0, 8)}`;
    this.#socket = socket;
    this.#deps = deps;
    this.#wire = deps.wire(this);
    this.dataHeaderSize = this.#wire.dataHeaderSize;
    this.halfClose = this.#wire.halfClose;
    this.#metrics = deps.metrics;
    this.dial = deps.dial;
    this.connectTimeoutMs = config.connectTimeoutMs;
    this.streamQueueBytes = config.streamQueueBytes;
    this.sessionQueueBytes = config.sessionQueueBytes;
    this.sockets = deps.sockets;
    // When the shared upload budget runs over, every session holding queued bytes checks for stalled targets.
    this.#stopWatchingQueue = deps.queue?.onOver(() => {
      if (this.queuedBytes > 0) this.#watchStalls();
    });
    this.#highWatermark = config.wsHighWatermark;
    this.#lowWatermark = config.wsLowWatermark;
    this.#openBucket = config.openRate > 0 ? new TokenBucket(config.openRate, config.openBurst) : undefined;
    this.#uplinkBucket = config.clientBytesPerSec > 0
      ? new TokenBucket(config.clientBytesPerSec, config.clientBytesPerSec)
      : undefined;
    this.maxDatagramBytes = deps.maxDatagramBytes ?? config.udpMaxDatagramBytes;
    this.datagramIdleMs = config.udpIdleMs;
    this.#datagramBucket = config.udpDatagramsPerSec > 0
      ? new TokenBucket(config.udpDatagramsPerSec, config.udpDatagramsPerSec)
      : undefined;
    this.#datagramByteBucket = config.udpBytesPerSec > 0
      ? new TokenBucket(config.udpBytesPerSec, config.udpBytesPerSec)
      : undefined;
    this.#downlinkBucket = config.targetBytesPerSec > 0
      ? new TokenBucket(config.targetBytesPerSec, config.targetBytesPerSec)
      : undefined;
    const idles = [config.streamIdleMs, config.sessionIdleMs].filter((ms) => ms > 0);
    if (idles.length > 0) {
      // One sweep per session finds idle streams and an idle session; a quarter of the shortest idle time keeps
      // the error under 25 %.
      const period = Math.min(15_000, Math.max(25, Math.min(...idles) / 4));
      this.#sweepTimer = setInterval(this.#sweep, period);
    }
    this.#metrics.sessionsActive++;
    this.#metrics.sessionsTotal++;
    logger.info("session_open", {
      event: "session_open",
      sessionId: this.sessionId,
      clientIp: deps.clientIp,
    });
  }

  /** Number of live streams. */
  get streamCount(): number {
    return this.#streams.size;
  }

  /** Whether the session has ended. */
  get closed(): boolean {
    return this.#closed;
  }

  // --- Calls from the wire -------------------------------------------------------------------------------

  /** The metrics this session counts into. */
  get metrics(): Metrics {
    return this.#metrics;
  }

  /**
   * The wire holds `bytes` of a frame still arriving (a framing whose frames span WebSocket messages): they
   * count in the relay-wide bytes of messages still arriving, until the frame completes or the session ends.
   */
  holdPartial(bytes: number): void {
    const delta = this.#closed ? -this.#partialBytes : bytes - this.#partialBytes;
    if (delta > 0) this.#deps.assembly?.add(delta);
    else if (delta < 0) this.#deps.assembly?.remove(-delta);
    this.#partialBytes += delta;
  }

  /**
   * A message of a binary protocol named `protocol`: its bytes, counted; a text message ends the session with
   * 1003 and gives undefined.
   */
  binaryMessage(data: ArrayBuffer | string, protocol: string): Uint8Array | undefined {
    if (typeof data === "string") {
      this.protocolViolation(`Text message on ${protocol}, which is binary`, CLOSE_UNSUPPORTED_DATA);
      return undefined;
    }
    this.countInbound(data.byteLength);
    return new Uint8Array(data);
  }

  /** Counts one message from the client. */
  countInbound(bytes: number): void {
    this.#metrics.framesFromClient++;
    this.#metrics.bytesFromClient += bytes;
    this.#bytesIn += bytes;
  }

  /** Whether stream `id` is live. */
  hasStream(id: number): boolean {
    return this.#streams.has(id);
  }

  /** Whether `id` belonged to a stream that ended (or an OPEN refused) recently. */
  isRecent(id: number): boolean {
    return this.#recent.has(id);
  }

  /**
   * Opens stream `id` to `ip:port` (an address the client wrote as bytes) if the limits and the policy allow
   * it; otherwise the wire hears why. The caller has checked that `id` is not live.
   */
  open(id: number, ip: readonly number[], port: number): void {
    if (!this.#admit(id)) return;
    const decision = this.#deps.policy(ip, port);
    if (!decision.allowed) {
      this.#policyDenied(id, decision.rule, decision.reason);
      this.#wire.openRefused(id, "policy_denied", decision.reason);
      return;
    }
    this.#startStream(id, { host: ip.join("."), port, resolve: false });
  }

  /**
   * Opens stream `id` to `host:port`, a name or an address written as text. The stream exists at once (DATA
   * sent behind the OPEN is queued); the name is resolved and checked before anything is dialed, and a
   * refusal ends the stream with `policy_denied` or `invalid_target`.
   */
  openTarget(id: number, host: string, port: number, options: { downloadCredit?: number } = {}): void {
    if (!this.#admit(id)) return;
    this.#startStream(id, { host, port, resolve: true, ...options });
  }

  /** Download credit stream `id` holds now (credit wires); undefined when it is no live credit stream. */
  downloadCredit(id: number): number | undefined {
    const stream = this.#streams.get(id);
    return stream instanceof TcpStream ? stream.downloadCredit : undefined;
  }

  /**
   * The client of a credit wire lets stream `id` send `bytes` more; false when no such TCP stream is live (a
   * grant that crossed the stream's end).
   */
  grantDownload(id: number, bytes: number): boolean {
    const stream = this.#streams.get(id);
    if (!(stream instanceof TcpStream)) return false;
    stream.grantDownload(bytes);
    return true;
  }

  /**
   * Opens stream `id` to an address that the caller has already resolved and checked against the policy
   * (`/tcp` checks its target before the upgrade, so that a refusal is an HTTP status).
   */
  openChecked(id: number, address: string, port: number): void {
    if (!this.#admit(id)) return;
    this.#startStream(id, { host: address, port, resolve: false });
  }

  /**
   * Opens a UDP binding `id` to `host:port` (a name or an address as text), resolved and checked like a TCP
   * target; refused with `policy_denied` when the operator turned UDP off, `rate_limited` past the bindings cap.
   */
  openDatagram(id: number, host: string, port: number, resolve = true): void {
    const { config } = this.#deps;
    if (!config.allowUdp) {
      if (this.#closed || this.#streams.has(id)) return;
      this.remember(id);
      this.#policyDenied(id, "udp_disabled", "UDP is turned off on this relay");
      this.#wire.openRefused(id, "policy_denied", "UDP is turned off on this relay");
      return;
    }
    if (this.#datagramStreams >= config.udpMaxBindings && !this.#closed && !this.#streams.has(id)) {
      this.remember(id);
      this.#limit(
        "udp_bindings",
        id,
        `Too many UDP bindings: this session has ${this.#datagramStreams} (the limit)`,
      );
      return;
    }
    if (!this.#admit(id)) return;
    this.#recent.delete(id);
    const gate = this.#openGate;
    const stream = new UdpStream(this, id, { host, port, resolve, ...(gate === undefined ? {} : { gate }) });
    this.#datagramStreams++;
    this.#metrics.udpBindingsActive++;
    this.#track(stream, 0);
  }

  /** The checks every OPEN passes before it becomes a stream; false when it was refused (and answered). */
  #admit(id: number): boolean {
    if (this.#closed || this.#streams.has(id)) return false;
    // A refused OPEN still counts as recent, so DATA the client pipelined behind it is dropped quietly.
    this.remember(id);
    const { config } = this.#deps;
    if (this.#streams.size >= config.maxStreamsPerSession) {
      this.#limit(
        "streams",
        id,
        `Too many streams: this session already has ${this.#streams.size} (the limit)`,
      );
      return false;
    }
    this.#openDelayMs = 0;
    if (this.#openBucket !== undefined) {
      // Over the rate, an OPEN waits its turn (bursts are smoothed) unless the wait would exceed the bound.
      if (this.#openBucket.waitFor(1) > config.openQueueMs) {
        this.#limit(
          "open_rate",
          id,
          `Too many OPENs: the limit is ${config.openRate} a second after a burst of ${config.openBurst}`,
        );
        return false;
      }
      this.#openDelayMs = this.#openBucket.reserve(1);
    }
    this.#openGate = undefined;
    const gate = this.#deps.admitOpen?.();
    if (gate === false) {
      this.#limit(
        "token_open_rate",
        id,
        "Too many OPENs for this token: its rate across all its sessions is spent",
      );
      return false;
    }
    if (gate instanceof Promise) this.#openGate = gate;
    return true;
  }

  #policyDenied(id: number, rule: string, reason: string): void {
    Metrics.bump(this.#metrics.policyDenied, rule);
    if (this.#firstTime(`policy:${rule}`)) {
      logger.warn("policy_denied", {
        event: "policy_denied",
        sessionId: this.sessionId,
        streamId: id,
        rule,
        reason,
      });
    }
  }

  #startStream(id: number, target: StreamTarget): void {
    this.#recent.delete(id);
    const gate = this.#openGate;
    this.#track(
      new TcpStream(this, id, gate === undefined ? target : { ...target, gate }),
      this.#openDelayMs,
    );
  }

  /** Registers a new stream and starts it; a bug in it ends that stream, never the relay. */
  #track(stream: SessionStream, delayMs: number): void {
    this.#streams.set(stream.id, stream);
    this.#streamsOpened++;
    this.#metrics.streamsActive++;
    this.#metrics.streamsTotal++;
    // Streams catch their own bugs (an internal error ends that stream only); this is a second net that must
    // never let a rejection go unhandled, which would stop the relay. No per-stream closure: idle streams are many.
    this.#running++;
    stream.start(delayMs).then(this.#taskSettled, this.#taskFailed);
  }

  #taskFailed = (err: unknown): void => {
    this.#internalError(err, SESSION_ID);
    this.#taskSettled();
  };

  #taskSettled = (): void => {
    if (--this.#running === 0 && this.#allSettled !== undefined) {
      this.#allSettled.resolve();
      this.#allSettled = undefined;
    }
  };

  /** Resolves a stream's target; a denial is counted and logged like any policy denial. */
  async resolveTarget(target: Target, signal: AbortSignal): Promise<TargetResult> {
    const resolve = this.#deps.resolveTarget;
    if (resolve === undefined) {
      return { ok: false, kind: "invalid", reason: "This relay resolves no target names" };
    }
    const result = await resolve(target, signal);
    if (!result.ok && result.kind === "denied") {
      this.#policyDenied(SESSION_ID, result.rule ?? "denied", result.reason);
    }
    return result;
  }

  /** Client bytes stream `id` still holds for its target, as charged; undefined when it is not a live TCP stream. */
  uploadQueued(id: number): number | undefined {
    const stream = this.#streams.get(id);
    return stream instanceof TcpStream ? stream.queuedBytes : undefined;
  }

  /** Client bytes for stream `id`; false when no such stream is live. */
  data(id: number, bytes: Uint8Array): boolean {
    const stream = this.#streams.get(id);
    if (stream === undefined) return false;
    stream.enqueue(bytes);
    return true;
  }

  /** The client closed stream `id`: flush, then close; false when no such stream is live. */
  clientClose(id: number): boolean {
    const stream = this.#streams.get(id);
    if (stream === undefined) return false;
    stream.clientClose();
    return true;
  }

  /** The client aborted stream `id` (RST): its socket is closed at once, queued bytes dropped. */
  abortStream(id: number): boolean {
    const stream = this.#streams.get(id);
    if (stream === undefined) return false;
    stream.finish("client_reset");
    return true;
  }

  /** A violation of the wire format that ends the session: logged, then the WebSocket closes with `code`. */
  protocolViolation(message: string, code: number): void {
    logger.warn("protocol_violation", { event: "error", sessionId: this.sessionId, reason: message });
    this.close(code, "protocol error");
  }

  /**
   * The transport found a rule broken at the WebSocket level and is about to close with `code`: the wire may
   * answer in its own terms first.
   */
  peerViolation(code: number, message: string): void {
    this.#wire.peerViolation(code, message);
    if (code !== CLOSE_TOO_BIG) {
      logger.warn("protocol_violation", { event: "error", sessionId: this.sessionId, code, reason: message });
    }
  }

  /**
   * Whether a reply the client earned (an error for a bad frame) may be sent. A client that sends bad frames
   * without reading could make the send buffer grow without bound: replies while the buffer is congested are
   * counted, and past {@linkcode MAX_UNREAD_ERRORS} the session is cut off. A client that reads starts from
   * zero again.
   */
  admitReply(id: number, bytes = 0): boolean {
    if (this.#closed) return false;
    if (this.#socket.bufferedAmount > this.#highWatermark) {
      this.#unreadReplyBytes += bytes;
      if (++this.#unreadErrors > MAX_UNREAD_ERRORS || this.#unreadReplyBytes > MAX_UNREAD_REPLY_BYTES) {
        this.countLimit(
          "unread_errors",
          id,
          `Client does not read: ${this.#unreadErrors} replies (${this.#unreadReplyBytes} bytes) are waiting ` +
            "behind the send buffer",
        );
        this.close(CLOSE_POLICY_VIOLATION, "client does not read its frames");
        return false;
      }
    } else {
      this.#unreadErrors = 0;
      this.#unreadReplyBytes = 0;
    }
    return true;
  }

  #internalError(err: unknown, streamId: number): void {
    logger.error("internal_error", {
      event: "error",
      sessionId: this.sessionId,
      streamId,
      reason: err instanceof Error ? `${err.name}: ${err.message}` : String(err),
      stack: err instanceof Error ? err.stack ?? null : null,
    });
  }

  /**
   * Handles one WebSocket message through the wire; a bug while doing so costs this session (the wire's
   * internal error, then close 1011), never the relay.
   */
  receive(data: ArrayBuffer | string): void {
    if (this.#closed) return;
    try {
      this.#wire.receive(data);
    } catch (err: unknown) {
      this.#internalError(err, SESSION_ID);
      this.#wire.internalError();
      this.close(CLOSE_INTERNAL_ERROR, "internal error");
    }
  }

  #limit(kind: string, id: number, message: string): void {
    this.countLimit(kind, id, message);
    this.#wire.openRefused(id, "rate_limited", message);
  }

  /** Counts a limit hit and logs it once per session and kind. */
  countLimit(kind: string, id: number, message: string): void {
    Metrics.bump(this.#metrics.rateLimited, kind);
    if (this.#firstTime(`limit:${kind}`)) {
      logger.warn("rate_limited", {
        event: "rate_limited",
        sessionId: this.sessionId,
        streamId: id,
        kind,
        reason: message,
      });
    }
  }

  /** A stream ended with ERROR 8 for a stalled target: counted, and logged once per session. */
  #backpressureHit(id: number, message: string): void {
    this.#metrics.backpressureErrors++;
    if (this.#firstTime("backpressure")) {
      logger.warn("backpressure", {
        event: "backpressure",
        sessionId: this.sessionId,
        streamId: id,
        reason: message,
      });
    }
  }

  #sweep = (): void => {
    const now = performance.now();
    const { streamIdleMs, sessionIdleMs } = this.#deps.config;
    if (streamIdleMs > 0) {
      for (const stream of [...this.#streams.values()]) {
        if (stream.idleFor(now, streamIdleMs)) stream.finish("idle_timeout");
      }
    }
    if (this.#streams.size > 0) {
      this.#emptySince = now;
    } else if (sessionIdleMs > 0 && now - this.#emptySince >= sessionIdleMs) {
      this.close(CLOSE_NORMAL, "session idle");
    }
  };

  /** True the first time a kind of event is seen in this session (one log line per kind, no floods). */
  #firstTime(kind: string): boolean {
    if (this.#limitsLogged.has(kind)) return false;
    this.#limitsLogged.add(kind);
    return true;
  }

  /** Marks `id` as recently ended: DATA or CLOSE for it that crossed the end on the wire is dropped quietly. */
  remember(id: number): void {
    this.#recent.delete(id);
    this.#recent.add(id);
    if (this.#recent.size > RECENT_IDS) {
      const oldest = this.#recent.values().next().value;
      if (oldest !== undefined) this.#recent.delete(oldest);
    }
  }

  // --- StreamHost ------------------------------------------------------------------------------------

  get congested(): boolean {
    return this.#socket.bufferedAmount > this.#highWatermark;
  }

  /** Resolves once the WebSocket send buffer is at or below the low watermark (or the session ended). */
  waitForDrain(): Promise<void> {
    if (this.#closed || this.#socket.bufferedAmount <= this.#lowWatermark) return Promise.resolve();
    this.#metrics.backpressurePauses++;
    if (this.#drain === undefined) {
      const drain = Promise.withResolvers<void>();
      this.#drain = drain;
      void this.#socket.drained(this.#lowWatermark).then(() => {
        if (this.#drain === drain) this.#drain = undefined;
        drain.resolve();
      });
    }
    return this.#drain.promise;
  }

  /**
   * How many bytes a stream may read from its target now: what is left of the high watermark after the send
   * buffer and the other pending reads, at least {@linkcode MIN_READ}, at most `want`. Give it back with
   * {@linkcode releaseRead} when the read returns.
   */
  reserveRead(want: number, floor = MIN_READ): number {
    const room = this.#highWatermark - this.#socket.bufferedAmount - this.#readsReserved;
    const size = Math.max(floor, Math.min(want, room));
    this.#readsReserved += size;
    return size;
  }

  releaseRead(size: number): void {
    this.#readsReserved -= size;
  }

  // --- Upload budget: pause the client instead of dropping its streams ----------------------------------

  queueAdded(stream: TcpStream, bytes: number, streamFull: boolean): void {
    this.queuedBytes += bytes;
    this.#deps.queue?.add(bytes);
    // A credit stream's queue is bounded by the window its wire grants, not by the stream cap.
    if (streamFull && !stream.creditControlled) this.#fullStreams.add(stream);
    if (!this.#uploadPaused && this.#overBudget()) this.#pauseUploads();
  }

  queueRemoved(stream: TcpStream, bytes: number, streamFull: boolean): void {
    this.queuedBytes -= bytes;
    this.#deps.queue?.remove(bytes);
    if (!streamFull) this.#fullStreams.delete(stream);
    if (this.#uploadPaused && !this.#overBudget()) this.#resumeUploads();
    if (!stream.closed && !this.#closed) {
      this.#wire.uploadProgress?.(stream.id, stream.queuedBytes, stream.bytesToTarget);
    }
  }

  #overBudget(): boolean {
    return this.#fullStreams.size > 0 || this.queuedBytes > this.sessionQueueBytes ||
      (this.#deps.queue?.over ?? false);
  }

  /**
   * Stops reading the client's WebSocket: TCP backpressure slows the client as a direct connection would.
   * A stream whose target accepts nothing for `uploadStallMs` meanwhile gets ERROR 8, which frees its queue.
   */
  #pauseUploads(): void {
    this.#uploadPaused = true;
    this.#metrics.uploadPauses++;
    this.#socket.pause();
    const queue = this.#deps.queue;
    if (queue?.over) {
      this.#cancelQueueWait = queue.whenUnder(() => {
        this.#cancelQueueWait = undefined;
        if (this.#uploadPaused && !this.#overBudget()) this.#resumeUploads();
      });
    }
    this.#watchStalls();
  }

  /** Looks for stalled uploads while this session is paused or the shared budget is over. */
  #watchStalls(): void {
    if (this.#stallTimer !== undefined || this.#closed) return;
    const stallMs = this.#deps.config.uploadStallMs;
    this.#stallTimer = setInterval(this.#findStalls, Math.max(10, Math.min(1000, stallMs / 4)));
  }

  #resumeUploads(): void {
    this.#uploadPaused = false;
    this.#cancelQueueWait?.();
    this.#cancelQueueWait = undefined;
    if (!this.#closed) this.#socket.resume();
  }

  #findStalls = (): void => {
    if (this.#closed || (!this.#uploadPaused && !(this.#deps.queue?.over ?? false))) {
      clearInterval(this.#stallTimer);
      this.#stallTimer = undefined;
      return;
    }
    const now = performance.now();
    const stallMs = this.#deps.config.uploadStallMs;
    for (const stream of [...this.#streams.values()]) {
      // A credit stream waits for its target as TCP would, and its wire keeps the session's windows within the
      // session budget. This runs only while the session is paused all the same (the initial windows of very many
      // streams) or the relay-wide budget is spent: then the stall rule applies to credit streams too, so that
      // windows to stalled targets cannot hold the session's other streams, or every other session's uploads.
      if (stream.stalledFor(now) >= stallMs) {
        const message = `Target ${stream.destination} is not reading fast enough: it accepted no data for ` +
          `${stallMs} ms while the upload queues were full`;
        this.#backpressureHit(stream.id, message);
        stream.finish("backpressure", message);
      }
    }
    // Over the shared budget with nothing of ours stalled: wait for other sessions to free some.
    if (this.#uploadPaused && !this.#overBudget()) this.#resumeUploads();
  };

  reserveUplink(n: number): number {
    return this.#uplinkBucket === undefined ? 0 : this.#uplinkBucket.reserve(n);
  }

  reserveDownlink(n: number): number {
    return this.#downlinkBucket === undefined ? 0 : this.#downlinkBucket.reserve(n);
  }

  sendFrame(frame: Uint8Array): void {
    if (this.#closed || this.#socket.readyState !== OPEN) return;
    this.#socket.send(frame);
    this.#metrics.framesToClient++;
    this.#metrics.bytesToClient += frame.byteLength;
    this.#bytesOut += frame.byteLength;
  }

  writeDataHeader(frame: Uint8Array, id: number): void {
    this.#wire.writeDataHeader(frame, id);
  }

  /** A text message (a wire's control message); counted like any message to the client. */
  sendText(text: string): void {
    if (this.#closed || this.#socket.readyState !== OPEN) return;
    this.#socket.send(text);
    this.#metrics.framesToClient++;
    this.#metrics.bytesToClient += text.length;
  }

  streamOpened(stream: SessionStream): void {
    this.#wire.streamOpened(stream.id);
  }

  targetEnded(stream: TcpStream): void {
    if (!this.#closed) this.#wire.targetEnded(stream.id);
  }

  streamEnding(
    stream: SessionStream,
    reason: CloseReason,
    message: string | undefined,
    cause?: ConnectCause,
  ): void {
    if (!this.#closed) this.#wire.streamEnding(stream.id, reason, message, cause);
  }

  streamFinished(stream: SessionStream): void {
    if (stream instanceof UdpStream) {
      this.#datagramStreams--;
      this.#metrics.udpBindingsActive--;
    }
    if (this.#streams.get(stream.id) === stream) {
      this.#streams.delete(stream.id);
      this.#metrics.streamsActive--;
      if (this.#streams.size === 0) this.#emptySince = performance.now();
    }
    this.remember(stream.id);
  }

  // --- DatagramHost ----------------------------------------------------------------------------------

  datagramHeaderSize(id: number): number {
    return this.#wire.datagramHeaderSize?.(id) ?? this.dataHeaderSize;
  }

  admitDatagram(bytes: number): boolean {
    if (this.#datagramBucket !== undefined && this.#datagramBucket.waitFor(1) > 0) return false;
    if (this.#datagramByteBucket !== undefined && !this.#datagramByteBucket.tryTake(bytes)) return false;
    this.#datagramBucket?.tryTake(1);
    return true;
  }

  datagramDropped(reason: DatagramDrop): void {
    Metrics.bump(this.#metrics.datagramsDropped, reason);
  }

  datagramRelayed(direction: "to_target" | "from_target", bytes: number): void {
    if (direction === "to_target") {
      this.#metrics.datagramsToTargets++;
      this.countToTarget(bytes);
    } else {
      this.#metrics.datagramsFromTargets++;
      this.countFromTarget(bytes);
    }
  }

  lingerStarted(stream: TcpStream): void {
    this.#lingering.add(stream);
  }

  lingerEnded(stream: TcpStream): void {
    this.#lingering.delete(stream);
  }

  observeStream(reason: string, connectMs: number | undefined, durationMs: number): void {
    this.#metrics.observeStream(reason, connectMs, durationMs);
  }

  countToTarget(n: number): void {
    this.#metrics.bytesToTargets += n;
    this.#deps.countBytes?.(n);
  }

  countFromTarget(n: number): void {
    this.#metrics.bytesFromTargets += n;
    this.#deps.countBytes?.(n);
  }

  // --- Lifetime --------------------------------------------------------------------------------------

  /**
   * Ends the session: closes the WebSocket (if `code` is given and it is still open) and every TCP socket.
   * Safe to call more than once; the first call wins.
   */
  close(code?: number, reason?: string): void {
    if (this.#closed) return;
    if (code !== undefined && this.#socket.readyState === OPEN) {
      try {
        this.#socket.close(code, reason);
      } catch {
        // The peer went away at the same moment.
      }
    }
    this.#closed = true;
    for (const stream of [...this.#streams.values()]) stream.finish("session_closed");
    for (const stream of [...this.#lingering]) stream.abortLinger();
    this.#drain?.resolve();
    this.#drain = undefined;
    if (this.#sweepTimer !== undefined) clearInterval(this.#sweepTimer);
    this.#sweepTimer = undefined;
    if (this.#uploadPaused) this.#resumeUploads();
    this.#wire.sessionClosed?.();
    this.holdPartial(0);
    if (this.#stallTimer !== undefined) clearInterval(this.#stallTimer);
    this.#stallTimer = undefined;
    this.#stopWatchingQueue?.();
    this.#metrics.sessionsActive--;
    logger.info("session_close", {
      event: "session_close",
      sessionId: this.sessionId,
      clientIp: this.#deps.clientIp,
      durationMs: Math.round(performance.now() - this.#startedAt),
      bytesFromClient: this.#bytesIn,
      bytesToClient: this.#bytesOut,
      streams: this.#streamsOpened,
      closeCode: code ?? null,
      closeReason: reason ?? null,
    });
    this.#deps.onClose?.();
  }

  /** Resolves when every stream task of this session has settled. */
  settled(): Promise<void> {
    if (this.#running === 0) return Promise.resolve();
    return (this.#allSettled ??= Promise.withResolvers<void>()).promise;
  }
}
