/**
 * One logical stream: dial the target, pump target bytes to the WebSocket (with backpressure), write client
 * bytes to the target from a bounded queue, and finish exactly once.
 * @module
 */
import { getLogger } from "@logtape/logtape";
import type { SocketBudget } from "../budget.ts";
import type { Target, TargetResult } from "./target.ts";

/**
 * The smallest read a stream may make when the session's download budget (the high watermark, less what is
 * buffered and what other streams' pending reads may bring) is spent. It bounds the overshoot: with every
 * stream reading at once, at most this much per stream lands above the watermark.
 */
export const MIN_READ = 1024;
/** Most bytes read from a target per DATA frame. */
export const READ_SIZE = 64 * 1024;
/**
 * First read buffer of a stream. An idle stream keeps only this much pinned in its pending read; a read that
 * fills the buffer grows it fourfold, up to {@linkcode READ_SIZE}, so a bulk transfer reaches full-size reads
 * after three reads.
 */
export const INITIAL_READ_SIZE = 1 * 1024;
/**
 * Bookkeeping charged per queued chunk on top of its bytes (the view and its buffer's header), so that the
 * queue caps count what a queued chunk really costs.
 */
export const CHUNK_OVERHEAD = 256;
/**
 * Client chunks up to this size are copied into a shared tail buffer of {@linkcode TAIL_BYTES} instead of
 * being kept one by one: a flood of 1-byte DATA frames then holds about its own size, not a buffer per byte.
 * The tail is charged its whole capacity.
 */
export const SMALL_CHUNK = 1024;
export const TAIL_BYTES = 8 * 1024;
const EMPTY = new Uint8Array(0);
/** At most this many queued bytes, and chunks, are joined into one write to the target. */
const COALESCE_BYTES = 256 * 1024;
const COALESCE_CHUNKS = 64;

/**
 * After a client CLOSE the relay half-closes the target (FIN) and keeps reading, discarding, for at most this
 * long: closing a socket with unread input sends a reset, which can destroy data the target has not read yet.
 */
export const LINGER_MS = 2000;

/** Opens a TCP connection; `Deno.connect` in production. */
export type Dial = (
  options: { hostname: string; port: number; signal: AbortSignal },
) => Promise<Deno.TcpConn>;

/** A cancellable sleep: one pending timer at most; `cancel()` resolves it at once. */
class Sleeper {
  #timer: ReturnType<typeof setTimeout> | undefined;
  #resolve: (() => void) | undefined;

  sleep(ms: number): Promise<void> {
    return new Promise<void>((resolve) => {
      this.#resolve = resolve;
      // Timers overflow past 2^31 - 1 ms and would fire at once; a longer sleep wakes early and waits again.
      this.#timer = setTimeout(() => this.cancel(), Math.min(ms, 2 ** 31 - 1));
    });
  }

  cancel(): void {
    if (this.#timer !== undefined) clearTimeout(this.#timer);
    this.#timer = undefined;
    const resolve = this.#resolve;
    this.#resolve = undefined;
    resolve?.();
  }
}

/** Why a stream ended; stable labels for logs and metrics. */
export type CloseReason =
  | "client_close"
  | "idle_timeout"
  | "target_close"
  | "connect_failed"
  | "policy_denied"
  | "socket_error"
  | "backpressure"
  | "rate_limited"
  | "session_closed"
  | "invalid_target"
  | "client_reset"
  | "internal_error";

/**
 * Why a connect failed, for wires that tell these apart (Wisp has a close reason for each); the others see
 * `connect_failed` alone.
 */
export type ConnectCause = "unreachable" | "timeout" | "refused";

/** Where a stream goes: an address to dial as it is, or a name (or literal) the session resolves first. */
export interface StreamTarget {
  readonly host: string;
  readonly port: number;
  /** Whether `host` still has to go through the session's target resolution and policy. */
  readonly resolve: boolean;
  /**
   * Bytes the client lets the relay send before it grants more (a credit wire); undefined: no window, the
   * WebSocket's send buffer is the only limit. A credit stream's uploads are bounded by the wire's own window,
   * so the stream cap and the stall rule do not apply to it.
   */
  readonly downloadCredit?: number;
  /** A limit still deciding whether this OPEN may go ahead (see `SessionDeps.admitOpen`); false ends it. */
  readonly gate?: Promise<boolean>;
}

/** The message of a stream whose OPEN a limit outside its session refused. */
export const GATE_REFUSED =
  "Too many OPENs for this token: its rate across all its sessions and relays is spent";

/** What a session holds for each live stream, TCP or UDP. */
export interface SessionStream {
  readonly id: number;
  readonly destination: string;
  readonly closed: boolean;
  /** Starts connecting (after `delayMs`); settles when the stream's loops have ended. */
  start(delayMs?: number): Promise<void>;
  /** Client bytes for the target. */
  enqueue(data: Uint8Array): void;
  /** The client is done sending (what that means is the stream's: FIN for TCP, the end for UDP). */
  clientClose(): void;
  finish(reason: CloseReason, message?: string, cause?: ConnectCause): void;
  /** True once the stream has seen no traffic for `idleMs`, as of `now`. */
  idleFor(now: number, idleMs: number): boolean;
  /** How long queued client bytes have waited for the target (0: nothing waits). */
  stalledFor(now: number): number;
  /** Ends a linger at once (the session is closing). */
  abortLinger(): void;
}

/** What every stream, TCP or UDP, needs from its session: target checks, sockets, frames, its lifecycle. */
export interface StreamHostBase {
  readonly sessionId: string;
  /** Turns a target into checked addresses (names resolved once, every address judged by the policy). */
  resolveTarget(target: Target, signal: AbortSignal): Promise<TargetResult>;
  /** Takes a socket for a target connection; undefined: no budget. */
  readonly sockets: SocketBudget | undefined;
  /** True while the WebSocket send buffer is above the high watermark. */
  readonly congested: boolean;
  /** Writes the DATA header for stream `id` at `frame[0]`; the payload is the rest of `frame`. */
  writeDataHeader(frame: Uint8Array, id: number): void;
  sendFrame(frame: Uint8Array): void;
  /** The target accepted the connection. */
  streamOpened(stream: SessionStream): void;
  /**
   * The stream is ending for `reason` (with a message for the client when it is an error, and for a failed
   * connect, its cause when known).
   */
  streamEnding(
    stream: SessionStream,
    reason: CloseReason,
    message: string | undefined,
    cause?: ConnectCause,
  ): void;
  /** Called once when the stream has finished. */
  streamFinished(stream: SessionStream): void;
  /** Records a finished stream in the metrics. */
  observeStream(reason: CloseReason, connectMs: number | undefined, durationMs: number): void;
}

/** What a TCP stream needs from its session. */
export interface StreamHost extends StreamHostBase {
  readonly dial: Dial;
  readonly connectTimeoutMs: number;
  readonly streamQueueBytes: number;
  /**
   * Whether the wire can half-close: a client close then only ends the client's direction (FIN to the target,
   * whose answer still flows), and the target's EOF is reported with `targetEnded` instead of ending the stream.
   */
  readonly halfClose: boolean;
  /** The target finished sending (half-close wires only). */
  targetEnded(stream: TcpStream): void;
  /** The stream queued `bytes` more (charged); `full`: its queue is now over the stream cap. */
  queueAdded(stream: TcpStream, bytes: number, full: boolean): void;
  /** The stream wrote or dropped `bytes` (as charged); `full`: its queue is still over the stream cap. */
  queueRemoved(stream: TcpStream, bytes: number, full: boolean): void;
  waitForDrain(): Promise<void>;
  /**
   * Bytes the stream may read from its target now (at most `want`, at least `floor`, which defaults to
   * `MIN_READ`); give them back with `releaseRead`.
   */
  reserveRead(want: number, floor?: number): number;
  releaseRead(size: number): void;
  /** Milliseconds to wait before `n` more client bytes may go to a target (shaping). */
  reserveUplink(n: number): number;
  /** Milliseconds to wait after `n` target bytes before the next read (shaping). */
  reserveDownlink(n: number): number;
  /** Bytes the wire format puts in front of each DATA payload (0 for raw bytes). */
  readonly dataHeaderSize: number;
  /** The stream keeps its socket open after finishing, to drain the target after a client CLOSE. */
  lingerStarted(stream: TcpStream): void;
  lingerEnded(stream: TcpStream): void;
  countToTarget(n: number): void;
  countFromTarget(n: number): void;
}

const logger = getLogger(["aero-net-proxy", "stream"]);

function describe(err: unknown): string {
  return err instanceof Error ? `${err.name}: ${err.message}` : String(err);
}

/** Maps a failed `Deno.connect` to the ERROR code and reason the client gets. */
export function connectFailure(err: unknown): CloseReason {
  if (err instanceof Deno.errors.NotCapable || err instanceof Deno.errors.PermissionDenied) {
    // Deno's --deny-net sandbox refused the address: the policy's second line of defence.
    return "policy_denied";
  }
  return "connect_failed";
}

/** `host:port`, with an IPv6 address in brackets. */
export function formatDestination(host: string, port: number): string {
  return host.includes(":") ? `[${host}]:${port}` : `${host}:${port}`;
}

/** A stream's target after resolution: the checked address to use, or how the stream ends instead. */
export type ResolvedTarget =
  | { readonly address: string }
  | { readonly reason: CloseReason; readonly message: string; readonly cause?: ConnectCause };

/**
 * Resolves and checks a stream's target once (TCP and UDP alike): the first allowed address, or the ending
 * that a denial, an invalid target or a failed lookup means.
 */
export async function resolveStreamTarget(
  host: Pick<StreamHost, "resolveTarget">,
  target: Target,
  signal: AbortSignal,
): Promise<ResolvedTarget> {
  const result = await host.resolveTarget(target, signal);
  if (result.ok) return { address: result.addresses[0]! };
  if (result.kind === "denied") return { reason: "policy_denied", message: result.reason };
  if (result.kind === "invalid") return { reason: "invalid_target", message: result.reason };
  const destination = formatDestination(target.host, target.port);
  return {
    reason: "connect_failed",
    message: `Cannot resolve ${destination}: ${result.reason}`,
    cause: "unreachable",
  };
}

/** What kind of connect failure `err` is, when it is one a wire can name. */
export function connectCause(err: unknown, timedOut: boolean): ConnectCause | undefined {
  if (timedOut) return "timeout";
  if (err instanceof Deno.errors.ConnectionRefused) return "refused";
  if (err instanceof Deno.errors.TimedOut) return "timeout";
  if (err instanceof Deno.errors.NetworkUnreachable || err instanceof Deno.errors.AddrNotAvailable) {
    return "unreachable";
  }
  return undefined;
}

/** One TCP stream of a session. */
export class TcpStream implements SessionStream {
  readonly id: number;
  readonly destination: string;
  readonly #host: StreamHost;
  #hostname: string;
  readonly #resolve: boolean;
  /** The target has sent its last byte (half-close wires). */
  #targetEnded = false;
  /** The write side to the target is shut (FIN sent) after the client's half-close. */
  #writeShut = false;
  readonly #port: number;
  /** Aborts the lookup and the dial; dropped once connected (an idle stream keeps no controller). */
  #dialAbort: AbortController | undefined = new AbortController();
  readonly #startedAt = performance.now();
  #conn: Deno.TcpConn | undefined;
  #task: Promise<void> | undefined;

  // Client -> target queue: chunks from #head on are pending, each with what it was charged; #queued is their sum.
  #chunks: Uint8Array[] = [];
  #charges: number[] = [];
  #head = 0;
  #queued = 0;
  /** The buffer small chunks are copied into, while it is the last chunk and no write has taken it. */
  #tail: Uint8Array | undefined;
  #tailUsed = 0;
  /** When the writer last got bytes to the target (or the queue last became non-empty). */
  #progressAt = 0;
  #socketHeld = false;
  /** Whether the writer is running; it runs only while there is something to write (idle streams hold none). */
  #writing = false;
  /** Settles `start()`'s task once the stream has finished, when the reader ended before that. */
  #ended: PromiseWithResolvers<void> | undefined;
  #writerSleep: Sleeper | undefined;
  #readerSleep: Sleeper | undefined;
  #throttled = false;
  /** Bumped on every read and write; the session's idle sweep compares it between ticks. */
  #activity = 0;
  #seenActivity = -1;
  #idleSince = 0;

  #clientClosed = false;
  #closed = false;
  #lingering = false;
  #lingerTimer: ReturnType<typeof setTimeout> | undefined;
  #connClosed = false;
  #connectMs: number | undefined;
  /** Bytes the client still lets this stream send (credit wires); undefined: unlimited. */
  #downloadCredit: number | undefined;
  /** See `StreamTarget.gate`; cleared once answered. */
  #gate: Promise<boolean> | undefined;
  #wakeReader: (() => void) | undefined;
  bytesToTarget = 0;
  bytesFromTarget = 0;

  constructor(host: StreamHost, id: number, target: StreamTarget) {
    this.#host = host;
    this.id = id;
    this.#hostname = target.host;
    this.#port = target.port;
    this.#resolve = target.resolve;
    this.#downloadCredit = target.downloadCredit;
    this.#gate = target.gate;
    this.destination = formatDestination(target.host, target.port);
  }

  /** Whether the stream has finished. */
  get closed(): boolean {
    return this.#closed;
  }

  /** Whether a credit wire bounds this stream in both directions (see `StreamTarget.downloadCredit`). */
  get creditControlled(): boolean {
    return this.#downloadCredit !== undefined;
  }

  /** Bytes the client still lets this stream send (credit wires); undefined: no window. */
  get downloadCredit(): number | undefined {
    return this.#downloadCredit;
  }

  /** The client granted `bytes` more of download credit (credit wires). */
  grantDownload(bytes: number): void {
    if (this.#downloadCredit === undefined) return;
    this.#downloadCredit += bytes;
    const wake = this.#wakeReader;
    this.#wakeReader = undefined;
    wake?.();
  }

  /** Client bytes queued for the target, as charged (0: everything the client sent has been written). */
  get queuedBytes(): number {
    return this.#queued;
  }

  /**
   * Starts dialing, after `delayMs` if the session's OPEN rate asked this stream to wait its turn.
   * The returned promise settles when every loop of the stream has ended.
   */
  start(delayMs = 0): Promise<void> {
    this.#task ??= this.#run(delayMs);
    return this.#task;
  }

  /** True once the stream has seen no traffic for `idleMs` (checked by the session's sweep at `now`). */
  idleFor(now: number, idleMs: number): boolean {
    if (this.#activity !== this.#seenActivity) {
      this.#seenActivity = this.#activity;
      this.#idleSince = now;
      return false;
    }
    return now - this.#idleSince >= idleMs;
  }

  /**
   * The stream's life: connect, then read until the end. Kept small on purpose: an idle stream's task stays
   * suspended here, and everything this frame holds (timers, closures, the dial's state) stays alive with it,
   * so the connect happens in {@linkcode #connect}, whose frame is gone once connected.
   */
  async #run(delayMs: number): Promise<void> {
    try {
      const conn = await this.#connect(delayMs);
      if (conn === undefined) return;
      // The writer starts now for what the client queued while we dialed, and again whenever bytes arrive.
      this.#wake();
      await this.#readLoop(conn);
      // The reader can end first (the target's FIN on a half-close wire): the task lasts until the stream ends.
      if (!this.#closed) await (this.#ended = Promise.withResolvers<void>()).promise;
    } catch (err: unknown) {
      // A bug ends this stream with an internal error, never the session or the relay.
      logger.error("internal_error", {
        event: "error",
        sessionId: this.#host.sessionId,
        streamId: this.id,
        reason: describe(err),
        stack: err instanceof Error ? err.stack ?? null : null,
      });
      this.finish("internal_error", "Internal relay error");
    }
  }

  /** Waits its turn, resolves and checks the target, takes a socket and dials; undefined if the stream ended. */
  async #connect(delayMs: number): Promise<Deno.TcpConn | undefined> {
    if (delayMs > 0) {
      await (this.#readerSleep ??= new Sleeper()).sleep(delayMs);
      if (this.#closed) return undefined;
    }
    if (this.#gate !== undefined) {
      const allowed = await this.#gate;
      this.#gate = undefined;
      if (this.#closed) return undefined;
      if (!allowed) {
        this.finish("rate_limited", GATE_REFUSED);
        return undefined;
      }
    }
    if (this.#resolve) {
      const resolved = await resolveStreamTarget(
        this.#host,
        { host: this.#hostname, port: this.#port },
        this.#dialAbort!.signal,
      );
      if (this.#closed) return undefined;
      if (!("address" in resolved)) {
        this.finish(resolved.reason, resolved.message, resolved.cause);
        return undefined;
      }
      // Dial exactly a checked address, never the name again (a second lookup could answer differently).
      this.#hostname = resolved.address;
    }
    const sockets = this.#host.sockets;
    if (sockets !== undefined) {
      if (!sockets.tryAcquire()) {
        this.finish(
          "rate_limited",
          `Cannot connect to ${this.destination}: the relay is at its socket limit (${sockets.limit})`,
        );
        return undefined;
      }
      this.#socketHeld = true;
    }
    let conn: Deno.TcpConn;
    // One controller and one timer that is cleared once connected: AbortSignal.timeout() would keep its timer
    // and AbortSignal.any() its signals alive for the whole timeout, per stream.
    let timedOut = false;
    const timer = setTimeout(() => {
      timedOut = true;
      this.#dialAbort?.abort(new DOMException("Connect timed out", "TimeoutError"));
    }, this.#host.connectTimeoutMs);
    try {
      conn = await this.#host.dial({
        hostname: this.#hostname,
        port: this.#port,
        signal: this.#dialAbort!.signal,
      });
    } catch (err: unknown) {
      this.#releaseSocket();
      if (this.#closed) return undefined;
      const reason = connectFailure(err);
      const detail = timedOut ? `timed out after ${this.#host.connectTimeoutMs} ms` : describe(err);
      this.finish(reason, `Cannot connect to ${this.destination}: ${detail}`, connectCause(err, timedOut));
      return undefined;
    } finally {
      clearTimeout(timer);
    }
    if (this.#closed) {
      conn.close();
      this.#releaseSocket();
      return undefined;
    }
    this.#conn = conn;
    this.#dialAbort = undefined;
    this.#connectMs = performance.now() - this.#startedAt;
    try {
      conn.setNoDelay(true);
    } catch {
      // A connection reset before we got here surfaces on the first read or write instead.
    }
    this.#host.streamOpened(this);
    // Per-stream lines are debug: at info they cost about 5 % of a stream's setup; the counts and times are in
    // the metrics (streams_total, connect_duration_seconds) at every level.
    logger.debug("stream_open", () => ({
      event: "stream_open",
      sessionId: this.#host.sessionId,
      streamId: this.id,
      destination: this.destination,
      connectMs: Math.round(this.#connectMs ?? 0),
    }));
    return conn;
  }

  /**
   * Target -> client: one DATA frame per read, pausing while the WebSocket is congested. Each read is sized by
   * the session's download budget, so that many streams reading at once cannot pile far above the watermark.
   */
  async #readLoop(conn: Deno.TcpConn): Promise<void> {
    // The header is the same for every DATA frame of this stream: write it once, read payloads after it.
    const header = this.#host.dataHeaderSize;
    let frame = new Uint8Array(header + INITIAL_READ_SIZE);
    /** How much the next read asks for: grows fourfold while reads fill their buffer. */
    let want = INITIAL_READ_SIZE;
    try {
      for (;;) {
        if (this.#closed) {
          if (!this.#lingering) return;
          // The client closed: discard what the target still sends until its EOF (or the linger bound), so that
          // our close is a FIN after the client's last byte, not a reset that throws the upload away.
          if (frame.byteLength < header + MIN_READ) frame = new Uint8Array(header + MIN_READ);
          if ((await conn.read(frame.subarray(header))) === null) {
            this.#closeConn();
            return;
          }
          continue;
        }
        if (this.#host.congested) {
          // A buffer kept across the wait would pin up to 64 KiB per stream for as long as the client stalls.
          if (frame.byteLength > header + MIN_READ) frame = new Uint8Array(header);
          await this.#host.waitForDrain();
          continue;
        }
        const credit = this.#downloadCredit;
        if (credit !== undefined && credit <= 0) {
          // The client's window is full: read nothing more from the target until it grants more, so the
          // target is slowed by TCP as it would be by a direct connection.
          if (frame.byteLength > header + MIN_READ) frame = new Uint8Array(header);
          await new Promise<void>((resolve) => this.#wakeReader = resolve);
          continue;
        }
        const size = credit === undefined
          ? this.#host.reserveRead(want)
          : this.#host.reserveRead(Math.min(want, credit), Math.min(MIN_READ, credit));
        const capacity = frame.byteLength - header;
        // Keep the buffer unless it is too small, or so large that an idle read would pin memory for nothing.
        if (capacity < size || capacity > 4 * size) {
          frame = new Uint8Array(header + size);
        }
        let n: number | null;
        try {
          n = await conn.read(frame.subarray(header, header + size));
        } finally {
          this.#host.releaseRead(size);
        }
        if (this.#closed) continue;
        if (n === null) {
          if (!this.#host.halfClose) {
            this.finish("target_close");
            return;
          }
          // Only the target's direction is done: say so, and let the writer finish the client's.
          this.#targetEnded = true;
          this.#host.targetEnded(this);
          this.#wake();
          return;
        }
        this.bytesFromTarget += n;
        if (this.#downloadCredit !== undefined) this.#downloadCredit -= n;
        this.#activity++;
        this.#host.countFromTarget(n);
        // The transport copies the bytes, so the buffer is free for the next read at once.
        // The header goes in front of the payload just read (some wire formats carry its length), so the frame
        // leaves with no copy of the payload.
        const out = frame.subarray(0, header + n);
        this.#host.writeDataHeader(out, this.id);
        this.#host.sendFrame(out);
        if (n === size && want < READ_SIZE) want = Math.min(READ_SIZE, want * 4);
        const wait = this.#host.reserveDownlink(n);
        if (wait > 0) await (this.#readerSleep ??= new Sleeper()).sleep(wait);
      }
    } catch (err: unknown) {
      if (this.#closed) {
        this.#closeConn();
        return;
      }
      this.finish("socket_error", `Cannot read from ${this.destination}: ${describe(err)}`);
    }
  }

  /** Client -> target: write queued chunks in order; after a client CLOSE, flush then finish. */
  async #writeLoop(conn: Deno.TcpConn): Promise<void> {
    try {
      while (!this.#closed) {
        const chunk = this.#chunks[this.#head];
        if (chunk === undefined) {
          if (this.#clientClosed && !this.#host.halfClose) {
            this.finish("client_close");
            return;
          }
          if (this.#clientClosed || this.#targetEnded) {
            // Half-close: everything the client sent is written; pass its FIN on, and end once both are done.
            // After the target's EOF the client sends nothing more (its CLOSE was answered), so that ends too.
            if (!this.#writeShut) {
              this.#writeShut = true;
              try {
                conn.closeWrite();
              } catch { /* the target already went away */ }
            }
            if (this.#targetEnded) {
              this.finish(this.#clientClosed ? "client_close" : "target_close");
              return;
            }
          }
          // Nothing to write: the writer stops, and `#wake` starts it again when bytes or a close arrive.
          this.#writing = false;
          return;
        }
        // Chunks that queued up while the last write was in flight go out in one write: the queue drains at the
        // rate of writes, not of WebSocket messages, which v1 gives no way to slow down.
        let count = 1;
        let bytes = chunk.byteLength;
        for (
          let next = this.#chunks[this.#head + 1];
          next !== undefined;
          next = this.#chunks[this.#head + count]
        ) {
          if (count >= COALESCE_CHUNKS || bytes + next.byteLength > COALESCE_BYTES) break;
          bytes += next.byteLength;
          count++;
        }
        // The tail buffer must take no more bytes once this write has counted it.
        if (this.#head + count === this.#chunks.length) this.#tail = undefined;
        const wait = this.#host.reserveUplink(bytes);
        if (wait > 0) {
          this.#throttled = true;
          await (this.#writerSleep ??= new Sleeper()).sleep(wait);
          this.#throttled = false;
          if (this.#closed) return;
        }
        let out = chunk;
        if (count > 1) {
          out = new Uint8Array(bytes);
          for (let i = 0, offset = 0; i < count; i++) {
            const part = this.#chunks[this.#head + i]!;
            out.set(part, offset);
            offset += part.byteLength;
            // The joined copy stands for the parts from now on: they are free while the write is pending.
            this.#chunks[this.#head + i] = i === 0 ? out : EMPTY;
          }
        }
        for (let offset = 0; offset < out.byteLength;) {
          offset += await conn.write(out.subarray(offset));
        }
        // finish() may have run during the write and already released the whole queue: count nothing twice.
        if (this.#closed) return;
        let charged = 0;
        for (let i = 0; i < count; i++) {
          charged += this.#charges[this.#head]!;
          this.#chunks[this.#head++] = undefined as unknown as Uint8Array;
        }
        if (this.#head === this.#chunks.length) {
          this.#chunks = [];
          this.#charges = [];
          this.#head = 0;
        } else if (this.#head > 1024 && this.#head * 2 > this.#chunks.length) {
          this.#chunks = this.#chunks.slice(this.#head);
          this.#charges = this.#charges.slice(this.#head);
          this.#head = 0;
        }
        this.#queued -= charged;
        this.#progressAt = performance.now();
        // Counted before the session hears of it: a credit wire returns exactly the bytes that reached the target.
        this.bytesToTarget += bytes;
        this.#activity++;
        this.#host.countToTarget(bytes);
        this.#host.queueRemoved(this, charged, this.#queued > this.#host.streamQueueBytes);
      }
    } catch (err: unknown) {
      if (this.#closed) return;
      this.finish("socket_error", `Cannot write to ${this.destination}: ${describe(err)}`);
    }
  }

  /**
   * Queues client bytes for the target. Over the stream's cap the session pauses reading the client (and
   * ends the stream with ERROR 8 if its target stays stalled); nothing accepted is dropped.
   * @param data a view of the received message; kept (or, when small, copied into the tail buffer)
   */
  enqueue(data: Uint8Array): void {
    if (this.#closed || this.#clientClosed) return;
    const length = data.byteLength;
    if (length === 0) return;
    // A view keeps its whole message alive: one much smaller than its buffer (a frame packed with others into
    // one message) is copied, so that what the queue is charged is what it holds.
    if (length * 2 < data.buffer.byteLength) data = data.slice();
    if (this.#head === this.#chunks.length) this.#progressAt = performance.now();
    let charged: number;
    const tail = this.#tail;
    if (this.#head === this.#chunks.length) {
      // Nothing waits: the chunk goes to the writer as it is (a copy into a tail buffer would only pay off
      // for small chunks piling up behind a write in flight).
      this.#tail = undefined;
      this.#chunks.push(data);
      charged = length + CHUNK_OVERHEAD;
      this.#charges.push(charged);
    } else if (length <= SMALL_CHUNK && tail !== undefined && this.#tailUsed + length <= tail.byteLength) {
      // Append to the tail chunk, already charged its capacity.
      tail.set(data, this.#tailUsed);
      const last = this.#chunks.length - 1;
      const start = this.#chunks[last]!.byteOffset;
      this.#tailUsed += length;
      this.#chunks[last] = tail.subarray(start, this.#tailUsed);
      charged = 0;
    } else if (length <= SMALL_CHUNK) {
      const fresh = new Uint8Array(TAIL_BYTES);
      fresh.set(data);
      this.#tail = fresh;
      this.#tailUsed = length;
      this.#chunks.push(fresh.subarray(0, length));
      charged = TAIL_BYTES + CHUNK_OVERHEAD;
      this.#charges.push(charged);
    } else {
      this.#tail = undefined;
      this.#chunks.push(data);
      charged = length + CHUNK_OVERHEAD;
      this.#charges.push(charged);
    }
    this.#activity++;
    this.#queued += charged;
    if (charged > 0) this.#host.queueAdded(this, charged, this.#queued > this.#host.streamQueueBytes);
    if (!this.#throttled) this.#wake();
  }

  /**
   * How long the queue has waited for the target to accept bytes, as of `now`; 0 when nothing is queued or
   * the relay's own upload shaping is what holds it back.
   */
  stalledFor(now: number): number {
    if (this.#closed || this.#head === this.#chunks.length || this.#throttled) return 0;
    return now - this.#progressAt;
  }

  /** The client sent CLOSE: flush what is queued, close the socket, answer CLOSE. */
  clientClose(): void {
    if (this.#closed || this.#clientClosed) return;
    this.#clientClosed = true;
    // Before the connection exists the writer is not running; it sees the flag once connected.
    if (this.#conn !== undefined && !this.#throttled) this.#wake();
  }

  /** After a client CLOSE: send FIN now, close the socket once the target has finished (bounded). */
  #linger(conn: Deno.TcpConn): void {
    try {
      conn.closeWrite();
    } catch {
      this.#closeConn();
      return;
    }
    this.#lingering = true;
    this.#lingerTimer = setTimeout(() => this.#closeConn(), LINGER_MS);
    this.#host.lingerStarted(this);
  }

  /** Closes the TCP socket (once) and ends any linger. Also called by the session when it goes away. */
  #closeConn(): void {
    if (this.#connClosed) return;
    this.#connClosed = true;
    if (this.#lingerTimer !== undefined) clearTimeout(this.#lingerTimer);
    this.#lingerTimer = undefined;
    if (this.#lingering) {
      this.#lingering = false;
      this.#host.lingerEnded(this);
    }
    try {
      this.#conn?.close();
    } catch {
      // Already closed by the peer or the runtime.
    }
    this.#releaseSocket();
  }

  #releaseSocket(): void {
    if (!this.#socketHeld) return;
    this.#socketHeld = false;
    this.#host.sockets?.release();
  }

  /** Ends a linger at once (the session is closing). */
  abortLinger(): void {
    this.#closeConn();
  }

  /** Starts the writer if it is not running (a running writer picks new chunks up by itself). */
  #wake(): void {
    const conn = this.#conn;
    if (this.#writing || this.#closed || conn === undefined) return;
    this.#writing = true;
    this.#writeLoop(conn).catch((err: unknown) => {
      // The writer handles its own I/O errors; anything else is a bug, which ends this stream only.
      this.#writing = false;
      logger.error("internal_error", {
        event: "error",
        sessionId: this.#host.sessionId,
        streamId: this.id,
        reason: describe(err),
      });
      this.finish("internal_error", "Internal relay error");
    });
  }

  /**
   * Ends the stream exactly once: the wire tells the client (unless the session is gone), the socket is
   * closed, the queue released. `message` explains an error to the client.
   */
  finish(reason: CloseReason, message?: string, cause?: ConnectCause): void {
    if (this.#closed) return;
    this.#closed = true;
    if (reason !== "session_closed") this.#host.streamEnding(this, reason, message, cause);
    // Only a lookup or a dial in progress has anything to abort; aborting builds a DOMException each time.
    this.#dialAbort?.abort();
    this.#dialAbort = undefined;
    if (reason === "client_close" && this.#conn !== undefined) this.#linger(this.#conn);
    else this.#closeConn();
    this.#writerSleep?.cancel();
    this.#readerSleep?.cancel();
    const wakeReader = this.#wakeReader;
    this.#wakeReader = undefined;
    wakeReader?.();
    const dropped = this.#queued;
    this.#queued = 0;
    this.#chunks = [];
    this.#charges = [];
    this.#head = 0;
    this.#tail = undefined;
    this.#host.queueRemoved(this, dropped, false);
    this.#host.streamFinished(this);
    this.#ended?.resolve();
    const durationMs = performance.now() - this.#startedAt;
    this.#host.observeStream(reason, this.#connectMs, durationMs);
    const fields = () => ({
      event: "stream_close",
      sessionId: this.#host.sessionId,
      streamId: this.id,
      destination: this.destination,
      reason,
      connectMs: this.#connectMs === undefined ? null : Math.round(this.#connectMs),
      durationMs: Math.round(durationMs),
      bytesToTarget: this.bytesToTarget,
      bytesFromTarget: this.bytesFromTarget,
      ...(message === undefined ? {} : { error: message }),
    });
    // A stream that ended in error is worth a line at info; a clean end only at debug (see stream_open).
    if (message === undefined) logger.debug("stream_close", fields);
    else logger.info("stream_close", fields);
  }
}
