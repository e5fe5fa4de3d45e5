/**
 * An `aero-tcp-mux-v1` client over one WebSocket, with the credit extension (`aero-tcp-mux-v1-credit`, per-stream
 * byte windows both ways) when the relay has it. Uses only web platform APIs (WebSocket, web streams, URL,
 * timers), so the same code runs in browsers and in Deno.
 * @module
 */
import {
  encodeClose,
  encodeData,
  encodeOpen,
  encodePong,
  encodeWindow,
  MUX_CONNECTION_STREAM_ID,
  MUX_CREDIT_INITIAL_WINDOW,
  MUX_CREDIT_SUBPROTOCOL,
  MUX_MAX_OPEN_HOST_BYTES,
  MUX_MAX_STREAM_ID,
  MUX_V1_SUBPROTOCOL,
  MuxCloseFlag,
  MuxErrorCode,
  MuxFrameDecoder,
  MuxMsgType,
} from "../wire/aero_mux_v1_codec.ts";
import { RelayError, SessionClosedError, StreamResetError } from "./errors.ts";

/**
 * Where the client puts the token on the upgrade request: only `"query"` (`?token=`), as Aero's client does.
 * The relay does not pair the `aero-token.<token>` subprotocol carrier with `aero-tcp-mux-v1`; that carrier
 * remains for seed-framing clients only.
 */
export type TokenPlacement = "query";

/** Options of {@linkcode RelayClient}. */
export interface RelayClientOptions {
  /** The relay's token. */
  readonly token: string;
  /**
   * `"query"` appends `?token=` to the URL (the only placement; `"subprotocol"` was removed with the move to
   * `aero-tcp-mux-v1` and throws a `TypeError`).
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
   * (code 6, `STREAM_BUFFER_OVERFLOW`) and resets it (CLOSE RST). The protocol cannot pause one stream of a
   * WebSocket, so this bound is what keeps an application that stops reading from filling memory.
   * @default {16777216}
   */
  readonly readableMaxBytes?: number;
  /**
   * Offer the credit extension (`aero-tcp-mux-v1-credit`). With a relay that has it, every stream gets byte
   * windows both ways: the relay sends a stream at most `receiveWindow` bytes that `readable` has not yet
   * handed to its reader (a slow reader slows the target), and a write waits while the relay's window is
   * spent (a slow target slows `writable`). A relay without it selects plain `aero-tcp-mux-v1`.
   * @default {true}
   */
  readonly credit?: boolean;
  /**
   * Credit extension: bytes the relay may send a stream ahead of its reader. Smaller keeps other streams'
   * replies from waiting behind a bulk download (at 256 KiB a 64-byte reply waits about 1 ms on loopback);
   * larger lets one stream go faster. At least 65536, the window every stream starts with (smaller values
   * are raised to it).
   * @default {262144}
   */
  readonly receiveWindow?: number;
}

/** An IPv4 address: dotted-quad text or four bytes. */
export type Ipv4Address = string | readonly number[];

/**
 * A target host: a name (`"example.com"`, `"localhost"`), an IPv4 address (text or four bytes) or an IPv6
 * address, with or without brackets (`"::1"`, `"[2001:db8::1]"`). The relay resolves names and checks every
 * address against its policy.
 */
export type Host = string | readonly number[];

const DEFAULTS = {
  chunkSize: 16 * 1024,
  sendHighWaterMark: 1024 * 1024,
  readableHighWaterMark: 256 * 1024,
  readableMaxBytes: 16 * 1024 * 1024,
  receiveWindow: 256 * 1024,
};
/** How often a waiting writer checks whether the WebSocket has drained (it has no drain event). */
const DRAIN_POLL_MS = 2;
const DOTTED_QUAD = /^(\d{1,3})\.(\d{1,3})\.(\d{1,3})\.(\d{1,3})$/;
/** Digits and dots only: meant as an IPv4 address, never a name. */
const NUMERIC_HOST = /^[\d.]+$/;
/** Characters no host name contains: white space and URL delimiters (controls are checked apart). */
const NOT_IN_NAMES = /[\s/\\?#@[\]%]/u;
const utf8 = new TextEncoder();

/** Parses `ip` into four bytes; throws a `TypeError` for anything that is not an IPv4 address. */
export function parseIpv4(ip: Ipv4Address): [number, number, number, number] {
  const parts = typeof ip === "string" ? DOTTED_QUAD.exec(ip)?.slice(1).map(Number) : [...ip];
  if (
    parts === undefined || parts.length !== 4 ||
    !parts.every((b) => Number.isInteger(b) && b >= 0 && b <= 255)
  ) {
    throw new TypeError(`Cannot connect: ${JSON.stringify(ip)} is not an IPv4 address`);
  }
  return parts as [number, number, number, number];
}

/** A host as the OPEN frame carries it, and as `remote` shows it. */
interface ParsedHost {
  /** What OPEN sends: a name, dotted-quad IPv4, or IPv6 without brackets. */
  readonly wire: string;
  /** For `host:port` display: IPv6 in brackets. */
  readonly display: string;
}

function hasControl(text: string): boolean {
  for (let i = 0; i < text.length; i++) {
    const code = text.charCodeAt(i);
    if (code < 0x20 || code === 0x7f) return true;
  }
  return false;
}

/** Checks and normalizes a {@linkcode Host}; throws a `TypeError` for what can be no host at all. */
function parseHost(host: Host): ParsedHost {
  if (typeof host !== "string") {
    const quad = parseIpv4(host).join(".");
    return { wire: quad, display: quad };
  }
  const bracketed = host.startsWith("[") && host.endsWith("]");
  const inner = bracketed ? host.slice(1, -1) : host;
  if (bracketed || inner.includes(":")) {
    let canonical: string;
    try {
      // The URL parser is the platform's IPv6 parser; it answers the canonical (compressed) form.
      canonical = new URL(`http://[${inner}]/`).hostname.slice(1, -1);
    } catch {
      throw new TypeError(`Cannot connect: ${JSON.stringify(host)} is not an IPv6 address`);
    }
    return { wire: canonical, display: `[${canonical}]` };
  }
  if (NUMERIC_HOST.test(host)) {
    const quad = parseIpv4(host).join(".");
    return { wire: quad, display: quad };
  }
  if (
    host === "" || NOT_IN_NAMES.test(host) || hasControl(host) ||
    utf8.encode(host).byteLength > MUX_MAX_OPEN_HOST_BYTES
  ) {
    throw new TypeError(`Cannot connect: ${JSON.stringify(host)} is not a host name or an IP address`);
  }
  return { wire: host, display: host };
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
 * One session with a relay: one WebSocket, subprotocol `aero-tcp-mux-v1`, carrying many TCP streams.
 *
 * The WebSocket opens when the client is constructed. Stream ids start at 1 and are never reused within the
 * session. When the session ends, every open stream fails with a {@linkcode SessionClosedError}; a client is
 * not reconnected, make a new one.
 *
 * @example
 * ```ts
 * const relay = new RelayClient("wss://relay.example/tcp-mux", { token });
 * const stream = await relay.connect("example.com", 80);
 * ```
 */
export class RelayClient implements AsyncDisposable {
  /** Resolves once the WebSocket is open; rejects with a `SessionClosedError` if it never opens. */
  readonly ready: Promise<void>;
  /** Resolves when the session has ended, for whatever reason. */
  readonly closed: Promise<SessionClosedError>;

  readonly #socket: Socket;
  #decoder = new MuxFrameDecoder();
  /** Whether the relay selected the credit extension (known once the WebSocket is open). */
  #credit = false;
  readonly #receiveWindow: number;
  readonly #chunkSize: number;
  readonly #sendHighWaterMark: number;
  readonly #readableHighWaterMark: number;
  readonly #readableMaxBytes: number;
  readonly #streams = new Map<number, StreamCore>();
  #nextId = 1;
  #wasOpen = false;
  /** The relay broke the protocol: nothing more it sends is read. */
  #broken = false;
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
    const tokenIn: string = options.tokenIn ?? "query";
    if (tokenIn === "subprotocol") {
      throw new TypeError(
        'Cannot create RelayClient: tokenIn "subprotocol" is no longer supported. RelayClient speaks ' +
          "aero-tcp-mux-v1, which the relay does not pair with the aero-token.<token> subprotocol; " +
          'use tokenIn "query" (the default)',
      );
    }
    if (tokenIn !== "query") {
      throw new TypeError(
        `Cannot create RelayClient: tokenIn must be "query", got ${JSON.stringify(tokenIn)}`,
      );
    }
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

    // The relay starts every stream at the initial window, so a smaller one could not be kept: it is the floor.
    this.#receiveWindow = Math.max(
      MUX_CREDIT_INITIAL_WINDOW,
      positive("receiveWindow", options.receiveWindow, DEFAULTS.receiveWindow),
    );
    if (this.#receiveWindow > 0x7fff_ffff) {
      throw new RangeError("Cannot create RelayClient: receiveWindow is at most 2147483647");
    }

    const target = new URL(url);
    target.searchParams.set("token", options.token);

    const opened = Promise.withResolvers<void>();
    const ended = Promise.withResolvers<SessionClosedError>();
    this.ready = opened.promise;
    this.closed = ended.promise;
    // Callers that only ever call connect() learn about a failed open from there.
    this.ready.catch(() => {});

    const protocols = options.credit === false
      ? [MUX_V1_SUBPROTOCOL]
      : [MUX_CREDIT_SUBPROTOCOL, MUX_V1_SUBPROTOCOL];
    const socket = new WebSocket(target, protocols);
    this.#socket = socket;
    socket.binaryType = "arraybuffer";
    socket.onopen = () => {
      this.#wasOpen = true;
      this.#credit = socket.protocol === MUX_CREDIT_SUBPROTOCOL;
      if (this.#credit) this.#decoder = new MuxFrameDecoder({ credit: true });
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

  /** Whether the relay selected the credit extension (false until the session is open). */
  get credit(): boolean {
    return this.#credit;
  }

  /** Streams that are open (their end has not been seen yet). */
  get streamCount(): number {
    return this.#streams.size;
  }

  /**
   * Opens a TCP stream to `host:port` through the relay.
   *
   * `aero-tcp-mux-v1` has no OPEN acknowledgement, so this resolves as soon as the OPEN frame is sent, as
   * Aero's own client does: you may write at once (the relay queues the bytes until it has connected). A
   * refusal or a failed connect arrives later, as a {@linkcode RelayError} on the stream: `readable` errors,
   * writes reject and `closed` rejects with it (code 1 `POLICY_DENIED`, 2 `DIAL_FAILED`, ...).
   *
   * @param host a name, an IPv4 address (`"93.184.216.34"` or `[93, 184, 216, 34]`) or an IPv6 address
   * @param port TCP port, 1 to 65535
   * @returns the stream
   * @throws {TypeError} when `host` is no host name or IP address at all; {RangeError} for a bad port
   * @throws {SessionClosedError} when the session is gone (or never opened)
   */
  async connect(host: Host, port: number): Promise<RelayStream> {
    const target = parseHost(host);
    if (!Number.isInteger(port) || port < 1 || port > 0xffff) {
      throw new RangeError(`Cannot connect: port ${port} is not from 1 to 65535`);
    }
    await this.ready;
    if (this.#end !== undefined) throw this.#end;
    if (this.#nextId > MUX_MAX_STREAM_ID) {
      throw new RangeError("Cannot connect: this session has used every stream id; open a new client");
    }
    const id = this.#nextId++;
    const core = new StreamCore(this, id, `${target.display}:${port}`, {
      readableHighWaterMark: this.#readableHighWaterMark,
      readableMaxBytes: this.#readableMaxBytes,
      chunkSize: this.#chunkSize,
      receiveWindow: this.#credit ? this.#receiveWindow : undefined,
    });
    this.#streams.set(id, core);
    this.#socket.send(encodeOpen(id, { host: target.wire, port }));
    // Both directions start at the initial window; ours goes up to receiveWindow at once.
    if (this.#credit && this.#receiveWindow > MUX_CREDIT_INITIAL_WINDOW) {
      this.#socket.send(encodeWindow(id, this.#receiveWindow - MUX_CREDIT_INITIAL_WINDOW));
    }
    return core.stream;
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

  /** The relay broke the protocol: the session is closed with `closeCode`, `message` becomes its cause. */
  #violation(message: string, closeCode: number, cause?: unknown): void {
    this.#broken = true;
    this.#sessionError = new RelayError(
      MuxErrorCode.PROTOCOL_ERROR,
      `The relay broke aero-tcp-mux-v1: ${message}`,
      cause === undefined ? {} : { cause },
    );
    this.#socket.close(closeCode, "protocol error from the relay");
  }

  #onMessage(data: unknown): void {
    if (this.#broken) return;
    if (!(data instanceof ArrayBuffer)) {
      this.#violation("a text message (the protocol is binary)", 1003);
      return;
    }
    // Frames are a byte stream: a message may hold several, and a frame may span messages.
    for (const frame of this.#decoder.push(new Uint8Array(data))) {
      switch (frame.type) {
        case "invalid":
          if (frame.error.scope === "session") {
            this.#violation(frame.error.message, 1002, frame.error);
            return;
          }
          // The relay's bytes for that stream cannot be trusted: give it up and tell the relay.
          this.#streams.get(frame.streamId)?.reset(
            new RelayError(
              MuxErrorCode.PROTOCOL_ERROR,
              `The relay sent a bad frame: ${frame.error.message}`,
              { connectionId: frame.streamId, cause: frame.error },
            ),
          );
          continue;
        case MuxMsgType.OPEN:
          this.#violation("an OPEN frame, which only clients send", 1002);
          return;
        case MuxMsgType.DATA:
          // Frames for a stream that already ended here (crossing our RST on the wire) are dropped.
          this.#streams.get(frame.streamId)?.onData(frame.data);
          continue;
        case MuxMsgType.CLOSE:
          this.#streams.get(frame.streamId)?.onClose(frame.flags);
          continue;
        case MuxMsgType.ERROR: {
          const error = new RelayError(frame.code, frame.message, { connectionId: frame.streamId });
          if (frame.streamId === MUX_CONNECTION_STREAM_ID) this.#sessionError = error;
          else this.#streams.get(frame.streamId)?.onError(error);
          continue;
        }
        case MuxMsgType.PING:
          this.sendFrame(encodePong(frame.streamId, frame.payload));
          continue;
        case MuxMsgType.PONG:
          // The client sends no PING, so a PONG answers nothing.
          continue;
        case MuxMsgType.WINDOW:
          this.#streams.get(frame.streamId)?.onWindow(frame.bytes);
          continue;
      }
    }
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
  /** Credit extension: the stream's download window; undefined without the extension. */
  readonly receiveWindow: number | undefined;
}

/** One stream's state machine; {@linkcode RelayStream} is its public face. */
class StreamCore {
  readonly id: number;
  readonly remote: string;
  readonly closed: Promise<void>;
  readonly stream: RelayStream;
  readonly #client: RelayClient;
  readonly #options: StreamCoreOptions;
  readonly #closed: PromiseWithResolvers<void>;
  /** Whether the stream has ended (the relay's CLOSE or ERROR, our RST, or the session's end). */
  #done = false;
  /** Whether our CLOSE FIN has been sent: no more DATA from us. */
  #finSent = false;
  #error: unknown;
  #readableController: ReadableStreamDefaultController<Uint8Array> | undefined;
  #writableController: WritableStreamDefaultController | undefined;
  #readableDone = false;
  #writableAborting = false;
  // Credit extension (all in DATA payload bytes).
  /** What the relay may still send us: our grants less what has arrived. */
  #receiveCredit: number;
  /** Bytes handed to `readable`, and of those, given back to the relay as credit. */
  #delivered = 0;
  #returned = 0;
  /** What we may still send: the relay's grants less what we have sent. */
  #sendCredit = MUX_CREDIT_INITIAL_WINDOW;
  #creditWaiter: { resolve: () => void; reject: (err: unknown) => void } | undefined;

  constructor(client: RelayClient, id: number, remote: string, options: StreamCoreOptions) {
    this.#client = client;
    this.id = id;
    this.remote = remote;
    this.#options = options;
    // The client grants the whole receive window with its OPEN (the initial window plus a WINDOW top-up).
    this.#receiveCredit = options.receiveWindow ?? MUX_CREDIT_INITIAL_WINDOW;
    this.#closed = Promise.withResolvers<void>();
    this.closed = this.#closed.promise;
    // Marked handled: a caller who never looks at `closed` must not get an unhandled rejection.
    this.closed.catch(() => {});
    this.stream = new RelayStream(this, this.#makeReadable(), this.#makeWritable());
  }

  onData(data: Uint8Array): void {
    const controller = this.#readableController;
    if (this.#done || controller === undefined || this.#readableDone) return;
    const window = this.#options.receiveWindow;
    if (window !== undefined) {
      this.#receiveCredit -= data.byteLength;
      if (this.#receiveCredit < 0) {
        this.reset(
          new RelayError(
            MuxErrorCode.PROTOCOL_ERROR,
            `The relay sent stream ${this.id} more than its window allowed`,
            { connectionId: this.id },
          ),
        );
        return;
      }
      this.#delivered += data.byteLength;
      controller.enqueue(data);
      return;
    }
    const queued = this.#options.readableHighWaterMark - (controller.desiredSize ?? 0);
    if (queued + data.byteLength > this.#options.readableMaxBytes) {
      this.reset(
        new RelayError(
          MuxErrorCode.STREAM_BUFFER_OVERFLOW,
          `Stream ${this.id} gave up: more than ${this.#options.readableMaxBytes} bytes arrived unread`,
          { connectionId: this.id },
        ),
      );
      return;
    }
    controller.enqueue(data);
  }

  /** The relay's CLOSE: FIN is the target's end of stream (every byte has arrived), RST a reset. */
  onClose(flags: number): void {
    if (this.#done) return;
    if ((flags & MuxCloseFlag.RST) !== 0) {
      this.#fail(
        new StreamResetError(
          `Stream ${this.id} to ${this.remote} was reset by the relay before the target ended it`,
          { connectionId: this.id },
        ),
      );
      return;
    }
    this.#done = true;
    this.#client.retire(this.id);
    this.#client.cancelWaits(this, this.#endedError());
    if (!this.#readableDone) {
      this.#readableDone = true;
      this.#readableController?.close();
    }
    // The writable is left alone: a close() on it resolves, a later write rejects (the relay has forgotten the
    // stream, so nothing more can reach the target).
    this.#closed.resolve();
  }

  /** The relay's WINDOW: we may send `bytes` more. */
  onWindow(bytes: number): void {
    if (this.#done) return;
    this.#sendCredit += bytes;
    const waiter = this.#creditWaiter;
    this.#creditWaiter = undefined;
    waiter?.resolve();
  }

  /** The reader took bytes from `readable`: give the relay that much credit back, a quarter window at a time. */
  #returnCredit(queued: number): void {
    const window = this.#options.receiveWindow;
    if (window === undefined || this.#done) return;
    const consumed = this.#delivered - queued;
    const owed = consumed - this.#returned;
    if (owed <= 0 || (owed < window / 4 && this.#receiveCredit > 0)) return;
    this.#returned = consumed;
    this.#receiveCredit += owed;
    this.#client.sendFrame(encodeWindow(this.id, owed));
  }

  /** The relay's ERROR: terminal, no CLOSE follows. */
  onError(err: RelayError): void {
    this.#fail(err);
  }

  /** Fails the stream with `err` (the session's end). */
  fail(err: unknown): void {
    this.#fail(err);
  }

  /** Ends the stream here with `err` and tells the relay (CLOSE RST). */
  reset(err: unknown): void {
    if (this.#done) return;
    this.#client.sendFrame(encodeClose(this.id, MuxCloseFlag.RST));
    this.#fail(err);
  }

  /** Half-closes: sends CLOSE FIN once; `readable` goes on until the relay's CLOSE. */
  closeWrite(): void {
    if (this.#done || this.#finSent) return;
    this.#finSent = true;
    this.#client.sendFrame(encodeClose(this.id, MuxCloseFlag.FIN));
  }

  /** Sends FIN (if not yet sent) and waits for the stream's end. */
  close(): Promise<void> {
    this.closeWrite();
    return this.closed;
  }

  /** Ends the stream now: sends CLOSE RST, fails the readable and writable with `reason`. */
  abort(reason: unknown): Promise<void> {
    this.reset(reason ?? new TypeError(`Stream ${this.id} was aborted`));
    return this.closed.catch(() => {});
  }

  async write(chunk: Uint8Array): Promise<void> {
    if (!(chunk instanceof Uint8Array)) {
      throw new TypeError(`Cannot write to stream ${this.id}: expected a Uint8Array`);
    }
    const credit = this.#options.receiveWindow !== undefined;
    for (let offset = 0; offset < chunk.byteLength;) {
      await this.#client.waitForRoom(this);
      if (credit && this.#sendCredit <= 0 && !this.#done) {
        // The relay's window is spent: wait for its WINDOW (the target is slower than we are).
        await new Promise<void>((resolve, reject) => this.#creditWaiter = { resolve, reject });
      }
      if (this.#done) throw this.#error ?? this.#endedError();
      if (this.#finSent) throw new TypeError(`Cannot write: stream ${this.id} is closed for writing`);
      let size = Math.min(this.#options.chunkSize, chunk.byteLength - offset);
      if (credit) {
        size = Math.min(size, this.#sendCredit);
        this.#sendCredit -= size;
      }
      this.#client.sendFrame(encodeData(this.id, chunk.subarray(offset, offset + size)));
      offset += size;
    }
  }

  #endedError(): TypeError {
    return new TypeError(`Cannot write: stream ${this.id} has ended`);
  }

  #makeReadable(): ReadableStream<Uint8Array> {
    return new ReadableStream<Uint8Array>({
      start: (controller) => {
        this.#readableController = controller;
      },
      // Called as the reader takes chunks (the queue is below its mark): under the credit extension, that is
      // when the relay gets its credit back.
      pull: (controller) => {
        this.#returnCredit(this.#options.readableHighWaterMark - (controller.desiredSize ?? 0));
      },
      // The application no longer wants the bytes: a stream cannot be half-closed for reading, so it is reset.
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
        // An abort waits for the write in progress, which may wait for credit a stalled target never gives:
        // reset at once, which fails that write.
        controller.signal.addEventListener("abort", () => {
          // The writable is erroring with the abort's reason already: erroring it again would reject abort().
          this.#writableAborting = true;
          this.reset(controller.signal.reason);
        }, { once: true });
      },
      write: (chunk) => this.write(chunk),
      // Half-close: the relay writes what was sent, then the target gets a FIN and may still answer.
      close: () => this.closeWrite(),
      abort: (reason) => this.abort(reason),
    });
  }

  #fail(err: unknown): void {
    if (this.#done) return;
    this.#done = true;
    this.#error = err;
    const waiter = this.#creditWaiter;
    this.#creditWaiter = undefined;
    waiter?.reject(err);
    this.#client.retire(this.id);
    this.#client.cancelWaits(this, err);
    if (!this.#readableDone) {
      this.#readableDone = true;
      this.#readableController?.error(err);
    }
    if (!this.#writableAborting) this.#writableController?.error(err);
    this.#closed.reject(err);
  }
}

/**
 * One TCP stream through the relay. `readable` yields what the target sends; `writable` sends to the target.
 * Half-close works as in TCP: closing `writable` sends the target a FIN, and `readable` goes on delivering
 * its answer until the target ends its side too.
 */
export class RelayStream {
  /** The stream id (unique within the session). */
  readonly id: number;
  /** The target as given to `connect()`, as `host:port` (IPv6 in brackets). */
  readonly remote: string;
  /**
   * Bytes from the target; closes at the target's end of stream (the relay's CLOSE FIN), errors with a
   * `RelayError` (the relay's ERROR), a `StreamResetError` (the relay's CLOSE RST) or a `SessionClosedError`.
   * Cancelling it resets the stream (CLOSE RST).
   */
  readonly readable: ReadableStream<Uint8Array>;
  /**
   * Bytes to the target, sent in DATA frames of at most `chunkSize`; a write resolves once it is sent.
   * `close()` half-closes (CLOSE FIN), `abort()` resets the stream (CLOSE RST).
   */
  readonly writable: WritableStream<Uint8Array>;
  readonly #core: StreamCore;

  constructor(core: StreamCore, readable: ReadableStream<Uint8Array>, writable: WritableStream<Uint8Array>) {
    this.#core = core;
    this.id = core.id;
    this.remote = core.remote;
    this.readable = readable;
    this.writable = writable;
  }

  /**
   * Resolves when the stream has ended cleanly (the target's end of stream has arrived); rejects with the
   * error that ended it otherwise, e.g. the relay's `RelayError` for a refused or failed connect.
   */
  get closed(): Promise<void> {
    return this.#core.closed;
  }

  /**
   * Half-closes the stream (CLOSE FIN, as closing `writable` does, but also while a writer holds it; writes
   * still queued then fail) and waits for its end: the target may still answer, and its bytes still reach
   * `readable`.
   * @returns resolves once the target has ended its side too
   */
  close(): Promise<void> {
    return this.#core.close();
  }

  /** Ends the stream at once (CLOSE RST): `readable` and `writable` fail with `reason`, later bytes are dropped. */
  abort(reason?: unknown): Promise<void> {
    return this.#core.abort(reason);
  }
}
