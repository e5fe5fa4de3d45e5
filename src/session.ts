/**
 * One WebSocket session: decodes client frames, owns the id -> stream map, enforces the per-session limits,
 * and has one cleanup path for when the WebSocket goes away.
 * @module
 */
import { getLogger } from "@logtape/logtape";
import type { QueueBudget, SocketBudget } from "./budget.ts";
import type { Config } from "./config.ts";
import { Metrics } from "./metrics.ts";
import type { Policy } from "./policy/policy.ts";
import {
  type ClientFrame,
  decodeClientFrame,
  encodeError,
  ERROR_CODE_NAMES,
  ErrorCode,
  FrameType,
  type OpenFrame,
  ProtocolError,
  SESSION_ID,
} from "./protocol/mod.ts";
import { TokenBucket } from "./rate_limit.ts";
import { type Dial, MIN_READ, type StreamHost, TcpStream } from "./tcp_stream.ts";

/** The part of a WebSocket a session uses (the seam tests and adapters can fill). */
export interface FrameSocket {
  readonly bufferedAmount: number;
  readonly readyState: number;
  send(data: Uint8Array): void;
  close(code?: number, reason?: string): void;
  /** Stops and restarts reading from the client (the transport's TCP backpressure). */
  pause(): void;
  resume(): void;
  /** Resolves once the send buffer is at or below `low` bytes, or the socket has closed. */
  drained(low: number): Promise<void>;
}

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
 * ERROR frames a session may have waiting behind a congested send buffer (about 400 KB) before a client that
 * does not read them is cut off.
 */
export const MAX_UNREAD_ERRORS = 4096;
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
  /** Shared with the listener and every session: a target connection takes one socket. */
  readonly sockets?: SocketBudget;
  /** Client bytes queued towards targets across all sessions. */
  readonly queue?: QueueBudget;
  /** Called once when the session ends, before its socket has necessarily finished closing. */
  readonly onClose?: () => void;
}

const logger = getLogger(["aero-net-proxy", "session"]);
let nextSessionNumber = 1;

/** One client's WebSocket and its streams. */
export class Session implements StreamHost {
  readonly sessionId: string;
  readonly dial: Dial;
  readonly connectTimeoutMs: number;
  readonly streamQueueBytes: number;
  readonly sessionQueueBytes: number;
  readonly sockets: SocketBudget | undefined;
  /** Client bytes queued towards this session's targets, overhead included. */
  queuedBytes = 0;

  readonly #socket: FrameSocket;
  readonly #deps: SessionDeps;
  readonly #metrics: Metrics;
  readonly #streams = new Map<number, TcpStream>();
  readonly #recent = new Set<number>();
  readonly #tasks = new Set<Promise<void>>();
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
  #closed = false;
  #unreadErrors = 0;
  #streamsOpened = 0;
  #bytesIn = 0;
  #bytesOut = 0;

  constructor(socket: FrameSocket, deps: SessionDeps) {
    const { config } = deps;
    this.sessionId = `s${nextSessionNumber++}-${crypto.randomUUID().slice(0, 8)}`;
    this.#socket = socket;
    this.#deps = deps;
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

  // --- Inbound frames --------------------------------------------------------------------------------

  /** Handles one WebSocket message from the client. */
  handleMessage(data: unknown): void {
    if (this.#closed) return;
    if (!(data instanceof ArrayBuffer)) {
      this.#violation(
        typeof data === "string"
          ? "Invalid frame: text messages are not part of the protocol; send binary frames"
          : "Invalid frame: unsupported message type",
      );
      return;
    }
    this.#metrics.framesFromClient++;
    this.#metrics.bytesFromClient += data.byteLength;
    this.#bytesIn += data.byteLength;
    if (data.byteLength > this.#deps.config.maxFrameBytes) {
      this.#countLimit(
        "frame_size",
        SESSION_ID,
        `Message of ${data.byteLength} bytes exceeds the limit of ${this.#deps.config.maxFrameBytes}`,
      );
      this.sendError(
        SESSION_ID,
        ErrorCode.INVALID_FRAME,
        `Invalid frame: message of ${data.byteLength} bytes exceeds the limit of ${this.#deps.config.maxFrameBytes}`,
      );
      this.close(CLOSE_TOO_BIG, "message too big");
      return;
    }
    let frame: ClientFrame;
    try {
      frame = decodeClientFrame(new Uint8Array(data));
    } catch (err: unknown) {
      if (!(err instanceof ProtocolError)) throw err;
      if (err.scope === "session") {
        this.#violation(err.message);
        return;
      }
      // A malformed OPEN is a refused OPEN: what the client pipelined behind it is dropped quietly.
      const refusedOpen = data.byteLength > 0 && new Uint8Array(data, 0, 1)[0] === FrameType.OPEN;
      if (refusedOpen && err.connectionId !== SESSION_ID && !this.#streams.has(err.connectionId)) {
        this.#remember(err.connectionId);
      }
      this.sendError(err.connectionId, err.code, err.message);
      return;
    }
    switch (frame.type) {
      case FrameType.OPEN:
        this.#open(frame);
        return;
      case FrameType.DATA: {
        const stream = this.#streams.get(frame.connectionId);
        if (stream !== undefined) stream.enqueue(frame.data);
        else this.#unknownId(frame.connectionId, "DATA");
        return;
      }
      case FrameType.CLOSE: {
        const stream = this.#streams.get(frame.connectionId);
        if (stream !== undefined) stream.clientClose();
        else this.#unknownId(frame.connectionId, "CLOSE");
        return;
      }
    }
  }

  /**
   * The transport found a rule broken at the WebSocket level and is about to close with `code`. A message over
   * the size limit is also answered in the seed framing's own terms: ERROR 5 on id 0, before the 1009.
   */
  peerViolation(code: number, message: string): void {
    if (code === CLOSE_TOO_BIG) {
      this.#countLimit("frame_size", SESSION_ID, message);
      this.sendError(
        SESSION_ID,
        ErrorCode.INVALID_FRAME,
        `Invalid frame: ${message[0]!.toLowerCase()}${message.slice(1)}`,
      );
      return;
    }
    logger.warn("protocol_violation", { event: "error", sessionId: this.sessionId, code, reason: message });
  }

  #unknownId(id: number, kind: string): void {
    if (this.#recent.has(id)) return;
    this.sendError(
      id,
      ErrorCode.INVALID_FRAME,
      `Invalid ${kind} frame: no open stream has connection id ${id}`,
    );
  }

  #open(frame: OpenFrame): void {
    const id = frame.connectionId;
    if (this.#streams.has(id)) {
      this.sendError(id, ErrorCode.INVALID_FRAME, `Invalid OPEN frame: connection id ${id} is already open`);
      return;
    }
    // A refused OPEN still counts as recent, so DATA the client pipelined behind it is dropped quietly.
    this.#remember(id);
    const { config } = this.#deps;
    if (this.#streams.size >= config.maxStreamsPerSession) {
      this.#limit(
        "streams",
        id,
        `Too many streams: this session already has ${this.#streams.size} (the limit)`,
      );
      return;
    }
    const decision = this.#deps.policy(frame.ip, frame.port);
    if (!decision.allowed) {
      Metrics.bump(this.#metrics.policyDenied, decision.rule);
      if (this.#firstTime(`policy:${decision.rule}`)) {
        logger.warn("policy_denied", {
          event: "policy_denied",
          sessionId: this.sessionId,
          streamId: id,
          rule: decision.rule,
          reason: decision.reason,
        });
      }
      this.sendError(id, ErrorCode.POLICY_DENIED, decision.reason);
      return;
    }
    let delayMs = 0;
    if (this.#openBucket !== undefined) {
      // Over the rate, an OPEN waits its turn (bursts are smoothed) unless the wait would exceed the bound.
      if (this.#openBucket.waitFor(1) > config.openQueueMs) {
        this.#limit(
          "open_rate",
          id,
          `Too many OPENs: the limit is ${config.openRate} a second after a burst of ${config.openBurst}`,
        );
        return;
      }
      delayMs = this.#openBucket.reserve(1);
    }
    this.#recent.delete(id);
    const stream = new TcpStream(this, id, frame.ip, frame.port);
    this.#streams.set(id, stream);
    this.#streamsOpened++;
    this.#metrics.streamsActive++;
    this.#metrics.streamsTotal++;
    // A bug in a stream must end that stream with ERROR 9, never reject unhandled (which would stop the relay).
    const task = stream.start(delayMs).catch((err: unknown) => {
      this.#internalError(err, id);
      stream.finish("internal_error", { code: ErrorCode.INTERNAL_ERROR, message: "Internal relay error" });
    });
    this.#tasks.add(task);
    void task.finally(() => this.#tasks.delete(task));
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
   * Handles one WebSocket message; a bug while doing so costs this session (ERROR 9 on id 0, close 1011),
   * never the relay.
   */
  receive(data: unknown): void {
    try {
      this.handleMessage(data);
    } catch (err: unknown) {
      this.#internalError(err, SESSION_ID);
      this.sendError(SESSION_ID, ErrorCode.INTERNAL_ERROR, "Internal relay error");
      this.close(CLOSE_INTERNAL_ERROR, "internal error");
    }
  }

  #limit(kind: string, id: number, message: string): void {
    this.#countLimit(kind, id, message);
    this.sendError(id, ErrorCode.RATE_LIMITED, message);
  }

  /** Counts a limit hit and logs it once per session and kind. */
  #countLimit(kind: string, id: number, message: string): void {
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

  /** Streams report their queue overflows here, so they are counted and logged like other limits. */
  limitHit(kind: "backpressure" | "client_bytes", id: number, message: string): void {
    if (kind === "backpressure") {
      this.#metrics.backpressureErrors++;
      if (this.#firstTime("backpressure")) {
        logger.warn("backpressure", {
          event: "backpressure",
          sessionId: this.sessionId,
          streamId: id,
          reason: message,
        });
      }
    } else {
      this.#countLimit(kind, id, message);
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

  #remember(id: number): void {
    this.#recent.delete(id);
    this.#recent.add(id);
    if (this.#recent.size > RECENT_IDS) {
      const oldest = this.#recent.values().next().value;
      if (oldest !== undefined) this.#recent.delete(oldest);
    }
  }

  /** A session-level protocol violation: ERROR on id 0, then close with 1002. */
  #violation(message: string): void {
    this.sendError(SESSION_ID, ErrorCode.INVALID_FRAME, message);
    logger.warn("protocol_violation", { event: "error", sessionId: this.sessionId, reason: message });
    this.close(CLOSE_PROTOCOL_ERROR, "protocol error");
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
  reserveRead(want: number): number {
    const room = this.#highWatermark - this.#socket.bufferedAmount - this.#readsReserved;
    const size = Math.max(MIN_READ, Math.min(want, room));
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
    if (streamFull) this.#fullStreams.add(stream);
    if (!this.#uploadPaused && this.#overBudget()) this.#pauseUploads();
  }

  queueRemoved(stream: TcpStream, bytes: number, streamFull: boolean): void {
    this.queuedBytes -= bytes;
    this.#deps.queue?.remove(bytes);
    if (!streamFull) this.#fullStreams.delete(stream);
    if (this.#uploadPaused && !this.#overBudget()) this.#resumeUploads();
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
      if (stream.stalledFor(now) >= stallMs) {
        const message = `Target ${stream.destination} is not reading fast enough: it accepted no data for ` +
          `${stallMs} ms while the upload queues were full`;
        this.limitHit("backpressure", stream.id, message);
        stream.finish("backpressure", { code: ErrorCode.BACKPRESSURE, message });
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

  sendError(connectionId: number, code: ErrorCode, message: string): void {
    if (this.#closed) return;
    // Every bad frame earns an ERROR, so a client that sends bad frames without reading could make the send
    // buffer grow without bound. ERRORs sent while the buffer is congested are counted; past the bound the
    // session is cut off. A client that reads (the buffer drains) starts from zero again.
    if (this.#socket.bufferedAmount > this.#highWatermark) {
      if (++this.#unreadErrors > MAX_UNREAD_ERRORS) {
        this.#countLimit(
          "unread_errors",
          connectionId,
          `Client does not read: ${MAX_UNREAD_ERRORS} ERROR frames are waiting behind the send buffer`,
        );
        this.close(CLOSE_POLICY_VIOLATION, "client does not read its frames");
        return;
      }
    } else {
      this.#unreadErrors = 0;
    }
    Metrics.bump(this.#metrics.errorsSent, code);
    logger.debug("error_sent", {
      event: "error",
      sessionId: this.sessionId,
      streamId: connectionId,
      code,
      codeName: ERROR_CODE_NAMES[code],
      reason: message,
    });
    this.sendFrame(encodeError(connectionId, code, message));
  }

  streamFinished(stream: TcpStream): void {
    if (this.#streams.get(stream.id) === stream) {
      this.#streams.delete(stream.id);
      this.#metrics.streamsActive--;
      if (this.#streams.size === 0) this.#emptySince = performance.now();
    }
    this.#remember(stream.id);
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
  }

  countFromTarget(n: number): void {
    this.#metrics.bytesFromTargets += n;
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
  async settled(): Promise<void> {
    while (this.#tasks.size > 0) await Promise.allSettled([...this.#tasks]);
  }
}
