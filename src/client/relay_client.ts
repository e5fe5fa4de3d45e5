/**
 * A tcp-mux v1 client over one WebSocket. Uses only web platform APIs (WebSocket, web streams, timers), so the
 * same code runs in browsers and in Deno.
 * @module
 */
import {
  decodeServerFrame,
  encodeClose,
  encodeData,
  encodeOpen,
  ErrorCode,
  FrameType,
  MAX_CONNECTION_ID,
  MUX_SUBPROTOCOL,
  ProtocolError,
  type ServerFrame,
  SESSION_ID,
  TOKEN_SUBPROTOCOL_PREFIX,
} from "../protocol/mod.ts";
import { RelayError, SessionClosedError } from "./errors.ts";

/** Where the client puts the token on the upgrade request. */
export type TokenPlacement = "query" | "subprotocol";

/** Options of {@linkcode RelayClient}. */
export interface RelayClientOptions {
  /** The relay's token. */
  readonly token: string;
  /**
   * `"query"` appends `?token=` to the URL. `"subprotocol"` offers
   * `Sec-WebSocket-Protocol: aero-seed-mux-v1, aero-token.<token>`, which keeps the token out of URLs and
   * access logs.
   * @default {"query"}
   */
  readonly tokenIn?: TokenPlacement;
  /**
   * Largest DATA payload the client sends; longer writes are split.
   * @default {16384}
   */
  readonly chunkSize?: number;
  /**
   * Writes wait while the WebSocket's `bufferedAmount` is at or above this many bytes; waiting writes resume
   * once it has drained below half of it.
   * @default {1048576}
   */
  readonly sendHighWaterMark?: number;
  /**
   * High-water mark, in bytes, of each stream's `readable`.
   * @default {262144}
   */
  readonly readableHighWaterMark?: number;
  /**
   * Bytes a stream's `readable` may hold unread before the client gives the stream up with a `RelayError`
   * (code 8, `BACKPRESSURE`). Protocol v1 cannot pause one stream of a WebSocket, so this bound is what keeps
   * an application that stops reading from filling memory.
   * @default {16777216}
   */
  readonly readableMaxBytes?: number;
}

/** An IPv4 address: dotted-quad text or four bytes. */
export type Ipv4Address = string | readonly number[];

const DEFAULTS = {
  tokenIn: "query" as TokenPlacement,
  chunkSize: 16 * 1024,
  sendHighWaterMark: 1024 * 1024,
  readableHighWaterMark: 256 * 1024,
  readableMaxBytes: 16 * 1024 * 1024,
};
/** How often a waiting writer checks whether the WebSocket has drained (it has no drain event). */
const DRAIN_POLL_MS = 2;
/** RFC 7230 `token` characters, the only ones a subprotocol may contain. */
const SUBPROTOCOL_CHARS = /^[!#$%&'*+\-.^_`|~0-9A-Za-z]+$/;
const DOTTED_QUAD = /^(\d{1,3})\.(\d{1,3})\.(\d{1,3})\.(\d{1,3})$/;

/** Parses `ip` into four bytes; throws a `TypeError` for anything that is not an IPv4 address. */
export function parseIpv4(ip: Ipv4Address): [number, number, number, number] {
  const parts = typeof ip === "string" ? DOTTED_QUAD.exec(ip)?.slice(1).map(Number) : [...ip];
  if (
    parts === undefined || parts.length !== 4 ||
    !parts.every((b) => Number.isInteger(b) && b >= 0 && b <= 255)
  ) {
    throw new TypeError(
      `Cannot connect: ${JSON.stringify(ip)} is not an IPv4 address (protocol v1 carries IPv4 only)`,
    );
  }
  return parts as [number, number, number, number];
}

function positive(name: string, value: number | undefined, fallback: number): number {
  if (value === undefined) return fallback;
  if (!Number.isSafeInteger(value) || value < 1) {
    throw new RangeError(`Cannot create RelayClient: ${name} must be a positive integer, got ${value}`);
  }
  return value;
}

/** What the client needs of a WebSocket (the browser's and Deno's both fit). */
type Socket = WebSocket;

interface DrainWaiter {
  readonly owner: StreamCore;
  readonly resolve: () => void;
  readonly reject: (err: unknown) => void;
}

/**
 * One session with a relay: one WebSocket carrying many TCP streams.
 *
 * The WebSocket opens when the client is constructed. Connection ids start at 1 and are never reused within
 * the session. When the session ends, every open stream fails with a {@linkcode SessionClosedError}; a
 * client is not reconnected, make a new one.
 *
 * @example
 * ```ts
 * const relay = new RelayClient("wss://relay.example/tcp-mux", { token });
 * const stream = await relay.connect("93.184.216.34", 80);
 * ```
 */
export class RelayClient implements AsyncDisposable {
  /** Resolves once the WebSocket is open; rejects with a `SessionClosedError` if it never opens. */
  readonly ready: Promise<void>;
  /** Resolves when the session has ended, for whatever reason. */
  readonly closed: Promise<SessionClosedError>;

  readonly #socket: Socket;
  readonly #chunkSize: number;
  readonly #sendHighWaterMark: number;
  readonly #readableHighWaterMark: number;
  readonly #readableMaxBytes: number;
  readonly #streams = new Map<number, StreamCore>();
  #nextId = 1;
  #wasOpen = false;
  #end: SessionClosedError | undefined;
  #sessionError: RelayError | undefined;
  #drainWaiters: DrainWaiter[] = [];
  #drainTimer: ReturnType<typeof setTimeout> | undefined;

  /**
   * @param url the relay's WebSocket URL, e.g. `wss://relay.example/tcp-mux`
   * @param options the token and tuning
   */
  constructor(url: string | URL, options: RelayClientOptions) {
    if (typeof options?.token !== "string" || options.token === "") {
      throw new TypeError("Cannot create RelayClient: a token is required");
    }
    const tokenIn = options.tokenIn ?? DEFAULTS.tokenIn;
    this.#chunkSize = positive("chunkSize", options.chunkSize, DEFAULTS.chunkSize);
    this.#sendHighWaterMark = positive(
      "sendHighWaterMark",
      options.sendHighWaterMark,
      DEFAULTS.sendHighWaterMark,
    );
    this.#readableHighWaterMark = positive(
      "readableHighWaterMark",
      options.readableHighWaterMark,
      DEFAULTS.readableHighWaterMark,
    );
    this.#readableMaxBytes = positive(
      "readableMaxBytes",
      options.readableMaxBytes,
      DEFAULTS.readableMaxBytes,
    );

    const target = new URL(url);
    let protocols: string[] | undefined;
    if (tokenIn === "query") {
      target.searchParams.set("token", options.token);
    } else if (tokenIn === "subprotocol") {
      if (!SUBPROTOCOL_CHARS.test(options.token)) {
        throw new TypeError(
          "Cannot create RelayClient: the token contains characters a WebSocket subprotocol cannot carry",
        );
      }
      protocols = [MUX_SUBPROTOCOL, `${TOKEN_SUBPROTOCOL_PREFIX}${options.token}`];
    } else {
      throw new TypeError(`Cannot create RelayClient: tokenIn must be "query" or "subprotocol"`);
    }

    const opened = Promise.withResolvers<void>();
    const ended = Promise.withResolvers<SessionClosedError>();
    this.ready = opened.promise;
    this.closed = ended.promise;
    // Callers that only ever call connect() learn about a failed open from there.
    this.ready.catch(() => {});

    const socket = new WebSocket(target, protocols);
    this.#socket = socket;
    socket.binaryType = "arraybuffer";
    socket.onopen = () => {
      this.#wasOpen = true;
      opened.resolve();
    };
    socket.onmessage = (event: MessageEvent) => this.#onMessage(event.data);
    socket.onclose = (event: CloseEvent) => {
      const error = this.#finishSession(event.code, event.reason);
      opened.reject(error);
      ended.resolve(error);
    };
    // An error event is always followed by a close event, which does the work.
    socket.onerror = () => {};
  }

  /** Whether the session has ended. */
  get isClosed(): boolean {
    return this.#end !== undefined;
  }

  /** Streams that are opening or open. */
  get streamCount(): number {
    return this.#streams.size;
  }

  /**
   * Opens a TCP stream to `ip:port` through the relay.
   *
   * @param ip IPv4 address, as `"93.184.216.34"` or `[93, 184, 216, 34]` (protocol v1 has no host names)
   * @param port TCP port, 1 to 65535
   * @returns the stream, once the relay has connected to the target
   * @throws {RelayError} when the relay refuses (code 3, 4, 5) or cannot connect (code 6)
   * @throws {SessionClosedError} when the session is gone or goes away meanwhile
   */
  async connect(ip: Ipv4Address, port: number): Promise<RelayStream> {
    const address = parseIpv4(ip);
    if (!Number.isInteger(port) || port < 1 || port > 0xffff) {
      throw new RangeError(`Cannot connect: port ${port} is not from 1 to 65535`);
    }
    await this.ready;
    if (this.#end !== undefined) throw this.#end;
    if (this.#nextId > MAX_CONNECTION_ID) {
      throw new RangeError("Cannot connect: this session has used every connection id; open a new client");
    }
    const id = this.#nextId++;
    const core = new StreamCore(this, id, `${address.join(".")}:${port}`, {
      readableHighWaterMark: this.#readableHighWaterMark,
      readableMaxBytes: this.#readableMaxBytes,
      chunkSize: this.#chunkSize,
    });
    this.#streams.set(id, core);
    this.#socket.send(encodeOpen(id, address, port));
    return await core.opened;
  }

  /** Closes the WebSocket (code 1000); every stream still open fails with a `SessionClosedError`. */
  async close(): Promise<void> {
    if (this.#socket.readyState === WebSocket.CONNECTING || this.#socket.readyState === WebSocket.OPEN) {
      this.#socket.close(1000, "client closed");
    }
    await this.closed;
  }

  async [Symbol.asyncDispose](): Promise<void> {
    await this.close();
  }

  /** @internal Sends one frame; false once the session is gone. */
  sendFrame(frame: Uint8Array): boolean {
    if (this.#end !== undefined || this.#socket.readyState !== WebSocket.OPEN) return false;
    this.#socket.send(frame);
    return true;
  }

  /** @internal Resolves when the WebSocket has room for another DATA frame of `owner`. */
  waitForRoom(owner: StreamCore): Promise<void> | undefined {
    if (this.#end !== undefined) return Promise.reject(this.#end);
    if (this.#socket.bufferedAmount < this.#sendHighWaterMark) return undefined;
    const { promise, resolve, reject } = Promise.withResolvers<void>();
    this.#drainWaiters.push({ owner, resolve, reject });
    this.#drainTimer ??= setTimeout(() => this.#checkDrain(), DRAIN_POLL_MS);
    return promise;
  }

  /** @internal Wakes `owner`'s waiting write with `err` (the stream ended while it waited). */
  cancelWaits(owner: StreamCore, err: unknown): void {
    const mine = this.#drainWaiters.filter((w) => w.owner === owner);
    if (mine.length === 0) return;
    this.#drainWaiters = this.#drainWaiters.filter((w) => w.owner !== owner);
    for (const waiter of mine) waiter.reject(err);
    this.#stopDrainTimerIfIdle();
  }

  /** @internal Forgets a stream that has ended; its id is never handed out again. */
  retire(id: number): void {
    this.#streams.delete(id);
  }

  #checkDrain(): void {
    this.#drainTimer = undefined;
    // Resuming below half the mark (not just below it) lets a writer send many chunks per wake-up.
    if (this.#socket.bufferedAmount < this.#sendHighWaterMark / 2) {
      // Every waiter sends at most one chunk before it checks again, so the overshoot past the mark is
      // bounded by (waiting streams x chunkSize).
      const waiters = this.#drainWaiters;
      this.#drainWaiters = [];
      for (const waiter of waiters) waiter.resolve();
      return;
    }
    this.#drainTimer = setTimeout(() => this.#checkDrain(), DRAIN_POLL_MS);
  }

  #stopDrainTimerIfIdle(): void {
    if (this.#drainWaiters.length === 0 && this.#drainTimer !== undefined) {
      clearTimeout(this.#drainTimer);
      this.#drainTimer = undefined;
    }
  }

  #onMessage(data: unknown): void {
    if (!(data instanceof ArrayBuffer)) {
      this.#socket.close(1002, "tcp-mux v1 frames are binary");
      return;
    }
    let frame: ServerFrame;
    try {
      frame = decodeServerFrame(new Uint8Array(data));
    } catch (err: unknown) {
      if (!(err instanceof ProtocolError)) throw err;
      this.#sessionError = new RelayError(
        ErrorCode.INVALID_FRAME,
        `The relay sent a bad frame: ${err.message}`,
        {
          cause: err,
        },
      );
      this.#socket.close(1002, "invalid frame from the relay");
      return;
    }
    if (frame.connectionId === SESSION_ID) {
      if (frame.type === FrameType.ERROR) {
        this.#sessionError = new RelayError(frame.code, frame.message, { connectionId: SESSION_ID });
      }
      return;
    }
    // Frames for a stream that already ended locally (e.g. the CLOSE behind an ERROR 6) are dropped.
    this.#streams.get(frame.connectionId)?.onFrame(frame);
  }

  #finishSession(code: number, reason: string): SessionClosedError {
    const message = this.#wasOpen || this.#sessionError !== undefined
      ? `The relay session closed (code ${code}${reason === "" ? "" : `: ${reason}`})`
      : `Cannot open a relay session: the WebSocket closed with code ${code} (check the URL and the token)`;
    const error = new SessionClosedError(
      this.#sessionError === undefined ? message : `${message}: ${this.#sessionError.message}`,
      this.#sessionError === undefined
        ? { closeCode: code, reason }
        : { closeCode: code, reason, cause: this.#sessionError },
    );
    this.#end = error;
    if (this.#drainTimer !== undefined) clearTimeout(this.#drainTimer);
    this.#drainTimer = undefined;
    const waiters = this.#drainWaiters;
    this.#drainWaiters = [];
    for (const waiter of waiters) waiter.reject(error);
    const streams = [...this.#streams.values()];
    this.#streams.clear();
    for (const stream of streams) stream.fail(error);
    return error;
  }
}

interface StreamCoreOptions {
  readonly readableHighWaterMark: number;
  readonly readableMaxBytes: number;
  readonly chunkSize: number;
}

type StreamState = "opening" | "open" | "closing" | "done";

/** One stream's state machine; {@linkcode RelayStream} is its public face. */
class StreamCore {
  readonly id: number;
  readonly remote: string;
  readonly opened: Promise<RelayStream>;
  readonly closed: Promise<void>;
  readonly #client: RelayClient;
  readonly #options: StreamCoreOptions;
  readonly #opened: PromiseWithResolvers<RelayStream>;
  readonly #closed: PromiseWithResolvers<void>;
  #state: StreamState = "opening";
  #error: unknown;
  #readableController: ReadableStreamDefaultController<Uint8Array> | undefined;
  #writableController: WritableStreamDefaultController | undefined;
  #readableDone = false;
  #writableClosing = false;

  constructor(client: RelayClient, id: number, remote: string, options: StreamCoreOptions) {
    this.#client = client;
    this.id = id;
    this.remote = remote;
    this.#options = options;
    this.#opened = Promise.withResolvers<RelayStream>();
    this.#closed = Promise.withResolvers<void>();
    this.opened = this.#opened.promise;
    this.closed = this.#closed.promise;
    // Marked handled: a caller who never looks at `closed` must not get an unhandled rejection.
    this.closed.catch(() => {});
  }

  onFrame(frame: ServerFrame): void {
    switch (frame.type) {
      case FrameType.OPEN:
        if (this.#state !== "opening") return;
        this.#state = "open";
        this.#opened.resolve(new RelayStream(this, this.#makeReadable(), this.#makeWritable()));
        return;
      case FrameType.DATA:
        if (this.#state === "open" || this.#state === "closing") this.#deliver(frame.data);
        return;
      case FrameType.ERROR:
        this.fail(new RelayError(frame.code, frame.message, { connectionId: this.id }));
        return;
      case FrameType.CLOSE:
        this.#finish();
        return;
    }
  }

  /** Sends CLOSE once; the stream ends when the relay answers CLOSE (after flushing to the target). */
  close(): Promise<void> {
    if (this.#state === "open") {
      this.#state = "closing";
      if (!this.#client.sendFrame(encodeClose(this.id))) this.#finish();
    }
    return this.closed;
  }

  /** Ends the stream now: sends CLOSE, discards what still arrives, fails the readable and writable. */
  abort(reason: unknown): Promise<void> {
    if (this.#state === "open" || this.#state === "closing") {
      this.#client.sendFrame(encodeClose(this.id));
      this.#fail(reason ?? new TypeError(`Stream ${this.id} was aborted`));
    }
    return this.closed.catch(() => {});
  }

  /** Fails the stream with `err` (an ERROR frame, or the session's end). */
  fail(err: unknown): void {
    if (this.#state === "opening") {
      this.#state = "done";
      this.#error = err;
      this.#client.retire(this.id);
      this.#opened.reject(err);
      this.#closed.reject(err);
      return;
    }
    this.#fail(err);
  }

  async write(chunk: Uint8Array): Promise<void> {
    if (!(chunk instanceof Uint8Array)) {
      throw new TypeError(`Cannot write to stream ${this.id}: expected a Uint8Array`);
    }
    for (let offset = 0; offset < chunk.byteLength; offset += this.#options.chunkSize) {
      await this.#client.waitForRoom(this);
      if (this.#state !== "open") {
        throw this.#error ?? new TypeError(`Cannot write: stream ${this.id} is closed`);
      }
      this.#client.sendFrame(encodeData(this.id, chunk.subarray(offset, offset + this.#options.chunkSize)));
    }
  }

  #makeReadable(): ReadableStream<Uint8Array> {
    return new ReadableStream<Uint8Array>({
      start: (controller) => {
        this.#readableController = controller;
      },
      // The application no longer wants the bytes: v1 has no half-close, so the whole stream ends.
      cancel: (reason) => {
        this.#readableDone = true;
        return this.abort(reason);
      },
    }, { highWaterMark: this.#options.readableHighWaterMark, size: (chunk) => chunk.byteLength });
  }

  #makeWritable(): WritableStream<Uint8Array> {
    return new WritableStream<Uint8Array>({
      start: (controller) => {
        this.#writableController = controller;
      },
      write: (chunk) => this.write(chunk),
      close: () => {
        this.#writableClosing = true;
        return this.close();
      },
      abort: (reason) => this.abort(reason),
    });
  }

  #deliver(data: Uint8Array): void {
    const controller = this.#readableController;
    if (controller === undefined || this.#readableDone) return;
    const queued = this.#options.readableHighWaterMark - (controller.desiredSize ?? 0);
    if (queued + data.byteLength > this.#options.readableMaxBytes) {
      this.#client.sendFrame(encodeClose(this.id));
      this.#fail(
        new RelayError(
          ErrorCode.BACKPRESSURE,
          `Stream ${this.id} gave up: more than ${this.#options.readableMaxBytes} bytes arrived unread`,
          { connectionId: this.id },
        ),
      );
      return;
    }
    controller.enqueue(data);
  }

  /** The relay's CLOSE: every byte has arrived. */
  #finish(): void {
    if (this.#state === "done") return;
    if (this.#state === "opening") {
      this.fail(new RelayError(ErrorCode.INTERNAL_ERROR, `Stream ${this.id} closed before it opened`));
      return;
    }
    this.#state = "done";
    this.#client.retire(this.id);
    const ended = new TypeError(`Cannot write: stream ${this.id} is closed`);
    this.#client.cancelWaits(this, ended);
    if (!this.#readableDone) {
      this.#readableDone = true;
      this.#readableController?.close();
    }
    // A close() in flight on `writable` resolves normally; otherwise later writes fail.
    if (!this.#writableClosing) this.#writableController?.error(ended);
    this.#closed.resolve();
  }

  #fail(err: unknown): void {
    if (this.#state === "done") return;
    this.#state = "done";
    this.#error = err;
    this.#client.retire(this.id);
    this.#client.cancelWaits(this, err);
    if (!this.#readableDone) {
      this.#readableDone = true;
      this.#readableController?.error(err);
    }
    this.#writableController?.error(err);
    this.#closed.reject(err);
  }
}

/**
 * One TCP stream through the relay. `readable` yields what the target sends; `writable` sends to the target.
 * Protocol v1 has no half-close: closing either side ends the whole stream.
 */
export class RelayStream {
  /** The connection id (unique within the session). */
  readonly id: number;
  /** The target, as `ip:port`. */
  readonly remote: string;
  /** Bytes from the target; closes when the target closes, errors with a `RelayError` or `SessionClosedError`. */
  readonly readable: ReadableStream<Uint8Array>;
  /** Bytes to the target, sent in DATA frames of at most `chunkSize`; a write resolves once it is sent. */
  readonly writable: WritableStream<Uint8Array>;
  readonly #core: StreamCore;

  constructor(core: StreamCore, readable: ReadableStream<Uint8Array>, writable: WritableStream<Uint8Array>) {
    this.#core = core;
    this.id = core.id;
    this.remote = core.remote;
    this.readable = readable;
    this.writable = writable;
  }

  /** Resolves when the relay has closed the stream; rejects with the error that ended it otherwise. */
  get closed(): Promise<void> {
    return this.#core.closed;
  }

  /**
   * Closes the stream gracefully: the relay writes every byte already sent to the target, closes the socket,
   * and answers CLOSE; bytes that arrive meanwhile still reach `readable`.
   * @returns resolves once the relay has answered CLOSE
   */
  close(): Promise<void> {
    return this.#core.close();
  }

  /** Ends the stream at once: `readable` and `writable` fail with `reason`, later bytes are dropped. */
  abort(reason?: unknown): Promise<void> {
    return this.#core.abort(reason);
  }
}
