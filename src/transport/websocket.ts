/**
 * One server-side WebSocket over a TCP (or TLS) connection: the message socket the layers above use.
 *
 * It looks like the browser's `WebSocket` where the relay already used it (`send`, `close`, `bufferedAmount`,
 * `readyState`, `onmessage`, `onclose`), and adds what a server under load needs and the built-in one lacks:
 * `pause`/`resume` of inbound reads, a drain promise, a close handshake with a deadline, keepalive pings with a
 * dead-peer deadline, a deadline for fragmented messages, and a hook that runs before a violation closes it.
 * @module
 */
import { clearTimeout, setTimeout } from "node:timers";
import {
  CloseCode,
  closePayload,
  encodeFrame,
  FrameReceiver,
  headerLength,
  Opcode,
  WebSocketError,
  writeHeader,
} from "./frames.ts";

/** `readyState` values, as the browser's `WebSocket` numbers them. */
export const ReadyState = { CONNECTING: 0, OPEN: 1, CLOSING: 2, CLOSED: 3 } as const;

/** Settings of one WebSocket; the relay fills them from its configuration. */
export interface WebSocketOptions {
  /** Largest message accepted, all fragments together. Over it: close 1009 at the frame header. */
  readonly maxMessageBytes: number;
  /** A fragmented message must be complete this long after its first fragment; 0 = no limit. */
  readonly messageTimeoutMs: number;
  /** Ping after this long without hearing from the peer, and drop it if the next interval brings nothing; 0 = off. */
  readonly keepaliveMs: number;
  /** How long a close handshake (and a non-reading peer's unsent data) may hold the connection. */
  readonly closeTimeoutMs: number;
  /**
   * Shared with the layers above: the bytes of messages still arriving count against it, and while it is over
   * its limit a socket in the middle of a message stops reading (the message deadline still runs).
   */
  readonly heldBudget?: HeldBudget;
}

/** A process-wide byte budget (`QueueBudget` in budget.ts fits). */
export interface HeldBudget {
  readonly over: boolean;
  add(bytes: number): void;
  remove(bytes: number): void;
  /** Calls `wake` once the budget is under its limit again; returns a function that cancels. */
  whenUnder(wake: () => void): () => void;
}

/** What `onclose` receives. */
export interface CloseInfo {
  /** The peer's close code, 1005 for a close frame without one, 1006 when no close frame was received. */
  readonly code: number;
  readonly reason: string;
  /** Whether both close frames were exchanged. */
  readonly wasClean: boolean;
}

/** Largest read from the socket. A read that fills the buffer grows it fourfold from {@linkcode FIRST_READ}. */
const MAX_READ = 128 * 1024;
const FIRST_READ = 2 * 1024;
/** Small frames queued together are joined into one write of at most this many bytes. */
const JOIN_BYTES = 64 * 1024;

/**
 * Frames from {@linkcode POOLED_MIN} to {@linkcode POOLED_BYTES} bytes (a 64 KiB read from a target with the
 * relay's header) are built in buffers that go back to a process-wide pool once written; the pool keeps at
 * most {@linkcode POOL_MAX} of them (4 MiB).
 */
const POOLED_BYTES = 64 * 1024 + 32;
const POOLED_MIN = 16 * 1024;
const POOL_MAX = 64;
/** Pongs that may wait to be written; past this, the last one is replaced by the answer to the latest ping. */
const MAX_PONGS = 64;
const pool: Uint8Array[] = [];

/** Gives a written frame's buffer back to the pool if it came from there. */
function recycle(frame: Uint8Array): void {
  if (frame.buffer.byteLength === POOLED_BYTES && frame.byteOffset === 0 && pool.length < POOL_MAX) {
    pool.push(new Uint8Array(frame.buffer as ArrayBuffer));
  }
}

/** A server-side WebSocket; created by `upgradeWebSocket`, live once the transport attaches its connection. */
export class WebSocketConnection {
  /** For code written against the browser's `WebSocket`; binary messages are always `ArrayBuffer`s. */
  binaryType = "arraybuffer";
  /** The subprotocol the handshake selected, or "". */
  readonly protocol: string;
  onopen: (() => void) | null = null;
  onmessage: ((event: { data: ArrayBuffer | string }) => void) | null = null;
  onclose: ((event: CloseInfo) => void) | null = null;
  onerror: ((event: { message: string }) => void) | null = null;
  /**
   * Runs when the peer broke a rule, before the close frame with `code` is queued, so the protocol above can
   * send its own error message first (the seed framing sends an ERROR frame before 1009).
   */
  onviolation: ((code: number, message: string) => void) | null = null;

  readonly #options: WebSocketOptions;
  #conn: Deno.Conn | undefined;
  #state: number = ReadyState.CONNECTING;
  #receiver: FrameReceiver | undefined;
  #released: (() => void) | undefined;

  // Outbound: whole frames waiting to be written, oldest first.
  #queue: Uint8Array[] = [];
  #queueHead = 0;
  #buffered = 0;
  #writing = false;
  /** The pong to write before the next queued frame, if a ping is waiting for one. */
  #pongs: Uint8Array[] = [];
  /** Runs once the queue is empty, when the connection is to close after its last frame. */
  #flushed: (() => void) | undefined;
  #drainWaiters: { low: number; resolve: () => void }[] = [];

  // Inbound.
  /** Paused by the layer above (upload queues) and by the held-bytes budget, independently. */
  #paused = false;
  #budgetPaused = false;
  #cancelBudgetWait: (() => void) | undefined;
  /** Bytes of the message in progress, as counted in the held budget. */
  #held = 0;
  #resume: (() => void) | undefined;
  #heard = false;
  #pingSent = false;
  #keepaliveTimer: ReturnType<typeof setInterval> | undefined;
  #messageTimer: ReturnType<typeof setTimeout> | undefined;

  // Closing.
  #closeSent = false;
  #closeReceived: { code: number; reason: string } | undefined;
  #closeTimer: ReturnType<typeof setTimeout> | undefined;
  #ended = false;

  constructor(options: WebSocketOptions, protocol = "") {
    this.#options = options;
    this.protocol = protocol;
  }

  get readyState(): number {
    return this.#state;
  }

  /** Bytes accepted by `send` and not yet handed to the kernel. */
  get bufferedAmount(): number {
    return this.#buffered;
  }

  /**
   * Starts the socket on a connection whose 101 response has been written. `leftover` holds bytes the client
   * sent after its request head; `released` runs once when the connection is closed.
   */
  attach(conn: Deno.Conn, leftover: Uint8Array, released: () => void): void {
    if (this.#conn !== undefined) throw new TypeError("Cannot attach a WebSocket twice");
    this.#conn = conn;
    this.#released = released;
    // Frames are written whole; Nagle's algorithm would hold a small one (a pong, an echo) behind the
    // peer's delayed ACK for up to 40 ms.
    if ("setNoDelay" in conn && typeof conn.setNoDelay === "function") {
      try {
        (conn as Deno.TcpConn).setNoDelay(true);
      } catch { /* the peer already went away */ }
    }
    this.#state = ReadyState.OPEN;
    this.#receiver = new FrameReceiver({
      message: (data, binary) => {
        if (this.#state !== ReadyState.OPEN) return;
        this.onmessage?.({ data: binary ? data : new TextDecoder().decode(data) });
      },
      ping: (payload) => {
        if (this.#state === ReadyState.OPEN) this.#queuePong(payload);
      },
      pong: () => {},
      close: (code, reason) => this.#peerClosed(code, reason),
    }, { maxMessageBytes: this.#options.maxMessageBytes });
    if (this.#options.keepaliveMs > 0) {
      this.#keepaliveTimer = setInterval(this.#keepalive, this.#options.keepaliveMs);
    }
    try {
      this.onopen?.();
    } catch (err: unknown) {
      this.#fail(err);
    }
    void this.#readLoop(leftover);
  }

  /** Queues a message: binary for bytes, text for a string. Ignored unless the socket is open. */
  send(data: Uint8Array | ArrayBuffer | string): void {
    if (this.#state !== ReadyState.OPEN) return;
    if (typeof data === "string") {
      this.#sendFrame(encodeFrame(Opcode.TEXT, new TextEncoder().encode(data)));
      return;
    }
    const payload = data instanceof Uint8Array ? data : new Uint8Array(data);
    const length = headerLength(payload.byteLength) + payload.byteLength;
    if (length < POOLED_MIN || length > POOLED_BYTES) {
      this.#sendFrame(encodeFrame(Opcode.BINARY, payload));
      return;
    }
    // Bulk frames are copied into a recycled buffer: a download would otherwise leave one 64 KiB buffer per
    // frame for the garbage collector, tens of MiB of resident memory between collections.
    const buffer = pool.pop() ?? new Uint8Array(POOLED_BYTES);
    buffer.set(payload, writeHeader(buffer, Opcode.BINARY, payload.byteLength));
    this.#sendFrame(buffer.subarray(0, length));
  }

  /**
   * Starts the closing handshake: the close frame goes out after what is queued; the connection closes when
   * the peer answers, or after the close deadline. Safe to call more than once.
   */
  close(code?: number, reason?: string): void {
    if (this.#state === ReadyState.CLOSING || this.#state === ReadyState.CLOSED) return;
    if (this.#conn === undefined) {
      this.#state = ReadyState.CLOSED;
      return;
    }
    this.#state = ReadyState.CLOSING;
    this.#closeSent = true;
    this.#sendControl(Opcode.CLOSE, closePayload(code, reason));
    this.#closeTimer = setTimeout(() => this.#end(), this.#options.closeTimeoutMs);
    // A paused reader would never see the peer's answer.
    this.#cancelBudgetWait?.();
    this.#cancelBudgetWait = undefined;
    this.#budgetPaused = false;
    this.resume();
  }

  /**
   * For the listener: the upgrade failed before the socket was attached (the client went away before its
   * 101). The socket closes as if the connection had dropped (1006), so its owner can let go of it.
   */
  abandon(): void {
    if (this.#conn !== undefined || this.#ended) return;
    this.#ended = true;
    this.#state = ReadyState.CLOSED;
    this.onclose?.({ code: CloseCode.ABNORMAL, reason: "", wasClean: false });
  }

  /** Stops reading from the peer (TCP backpressure) until {@linkcode resume}. */
  pause(): void {
    if (this.#state === ReadyState.OPEN) this.#paused = true;
  }

  resume(): void {
    this.#paused = false;
    if (!this.#budgetPaused) this.#wakeReader();
  }

  #wakeReader(): void {
    const resume = this.#resume;
    this.#resume = undefined;
    resume?.();
  }

  /** Resolves once `bufferedAmount` is at or below `low`, or the socket has closed. */
  drained(low: number): Promise<void> {
    if (this.#buffered <= low || this.#state === ReadyState.CLOSED) return Promise.resolve();
    const { promise, resolve } = Promise.withResolvers<void>();
    this.#drainWaiters.push({ low, resolve });
    return promise;
  }

  // --- Inbound ---------------------------------------------------------------------------------------

  async #readLoop(leftover: Uint8Array): Promise<void> {
    const conn = this.#conn!;
    let buffer = new Uint8Array(FIRST_READ);
    try {
      if (leftover.byteLength > 0) this.#consume(leftover);
      while (!this.#ended) {
        if (this.#paused || this.#budgetPaused) {
          await new Promise<void>((resolve) => this.#resume = resolve);
          continue;
        }
        const n = await conn.read(buffer);
        if (n === null) break;
        this.#consume(buffer.subarray(0, n));
        if (n === buffer.byteLength && n < MAX_READ) buffer = new Uint8Array(Math.min(MAX_READ, n * 4));
      }
    } catch (err: unknown) {
      if (!this.#ended && !(err instanceof Deno.errors.BadResource)) {
        this.onerror?.({ message: describe(err) });
      }
    }
    this.#end();
  }

  #consume(bytes: Uint8Array): void {
    this.#heard = true;
    const receiver = this.#receiver;
    // After a violation, or after both close frames, what the peer still sends is read and dropped.
    if (receiver === undefined || this.#closeReceived !== undefined) return;
    try {
      receiver.push(bytes);
    } catch (err: unknown) {
      if (!(err instanceof WebSocketError)) {
        this.#fail(err);
        return;
      }
      this.#violation(err.code, err.message);
      return;
    }
    const budget = this.#options.heldBudget;
    if (budget !== undefined) {
      const held = receiver.heldBytes;
      if (held > this.#held) budget.add(held - this.#held);
      else if (held < this.#held) budget.remove(this.#held - held);
      this.#held = held;
      if (held > 0 && budget.over && !this.#budgetPaused && this.#state === ReadyState.OPEN) {
        this.#budgetPaused = true;
        this.#cancelBudgetWait = budget.whenUnder(() => {
          this.#cancelBudgetWait = undefined;
          this.#budgetPaused = false;
          if (!this.#paused) this.#wakeReader();
        });
      }
    }
    if (receiver.partial) {
      if (this.#messageTimer === undefined && this.#options.messageTimeoutMs > 0) {
        this.#messageTimer = setTimeout(() => {
          this.#messageTimer = undefined;
          this.#violation(
            CloseCode.POLICY_VIOLATION,
            `Message not completed within ${this.#options.messageTimeoutMs} ms`,
          );
        }, this.#options.messageTimeoutMs);
      }
    } else if (this.#messageTimer !== undefined) {
      clearTimeout(this.#messageTimer);
      this.#messageTimer = undefined;
    }
  }

  #violation(code: number, message: string): void {
    this.#receiver = undefined;
    this.#releaseHeld();
    if (this.#state === ReadyState.OPEN) {
      try {
        this.onviolation?.(code, message);
      } catch { /* the close below still happens */ }
    }
    this.close(code, message.slice(0, 120));
  }

  /** A handler above threw: the connection ends as an internal error, never the process. */
  #fail(err: unknown): void {
    this.onerror?.({ message: describe(err) });
    this.#receiver = undefined;
    this.#releaseHeld();
    this.close(CloseCode.INTERNAL_ERROR, "internal error");
  }

  /** Gives back what the unfinished message held, and stops waiting for the budget. */
  #releaseHeld(): void {
    if (this.#held > 0) this.#options.heldBudget?.remove(this.#held);
    this.#held = 0;
    this.#cancelBudgetWait?.();
    this.#cancelBudgetWait = undefined;
    this.#budgetPaused = false;
  }

  #peerClosed(code: number | undefined, reason: string): void {
    this.#closeReceived = { code: code ?? CloseCode.NO_STATUS, reason };
    if (this.#closeSent) {
      // Our close was answered: the handshake is complete.
      this.#closeWhenFlushed();
      return;
    }
    // Echo the peer's code, as RFC 6455 5.5.1 suggests, then close once it is written.
    this.#state = ReadyState.CLOSING;
    this.#closeSent = true;
    this.#sendControl(Opcode.CLOSE, closePayload(code));
    this.#closeTimer = setTimeout(() => this.#end(), this.#options.closeTimeoutMs);
    this.#closeWhenFlushed();
  }

  #keepalive = (): void => {
    if (this.#state !== ReadyState.OPEN) return;
    // While reads are paused the peer's answers sit unread: silence then proves nothing.
    if (this.#heard || this.#paused || this.#budgetPaused) {
      this.#heard = false;
      this.#pingSent = false;
      return;
    }
    if (this.#pingSent) {
      // A whole interval after the ping and nothing at all from the peer: it is gone.
      this.onerror?.({ message: "Peer did not answer a ping" });
      this.#end();
      return;
    }
    this.#pingSent = true;
    this.#sendControl(Opcode.PING, new Uint8Array(0));
  };

  // --- Outbound --------------------------------------------------------------------------------------

  /**
   * Each ping gets its pong, but at most {@linkcode MAX_PONGS} wait to be written: past that the last one is
   * replaced by the answer to the latest ping (RFC 6455 5.5.3 allows answering only the latest), so a peer that
   * pings without reading cannot make the relay queue anything.
   */
  #queuePong(payload: Uint8Array): void {
    if (this.#ended) return;
    const pong = encodeFrame(Opcode.PONG, payload);
    if (this.#pongs.length >= MAX_PONGS) this.#buffered -= this.#pongs.pop()!.byteLength;
    this.#pongs.push(pong);
    this.#buffered += pong.byteLength;
    if (!this.#writing) void this.#writeLoop();
  }

  #sendControl(opcode: number, payload: Uint8Array): void {
    this.#sendFrame(encodeFrame(opcode, payload));
  }

  #sendFrame(frame: Uint8Array): void {
    if (this.#ended) return;
    this.#queue.push(frame);
    this.#buffered += frame.byteLength;
    if (!this.#writing) void this.#writeLoop();
  }

  async #writeLoop(): Promise<void> {
    this.#writing = true;
    const conn = this.#conn!;
    try {
      while ((this.#pongs.length > 0 || this.#queueHead < this.#queue.length) && !this.#ended) {
        const out = this.#pongs.shift() ?? this.#take();
        for (let offset = 0; offset < out.byteLength;) {
          offset += await conn.write(out.subarray(offset));
        }
        recycle(out);
        this.#buffered -= out.byteLength;
        if (this.#drainWaiters.length > 0) this.#wakeDrained();
      }
    } catch (err: unknown) {
      if (!this.#ended && !(err instanceof Deno.errors.BadResource)) {
        this.onerror?.({ message: describe(err) });
      }
      this.#writing = false;
      this.#end();
      return;
    }
    this.#writing = false;
    if (this.#queueHead !== this.#queue.length) return;
    if (this.#flushed !== undefined) {
      this.#flushed();
    } else if (this.#closeSent && this.#closeReceived === undefined && !this.#ended) {
      // Our close frame is out and nothing may follow it: a FIN tells the peer at once, and lets a peer that
      // no longer parses frames close its side too (we keep reading until it does, or the deadline).
      try {
        conn.closeWrite();
      } catch { /* the peer already went away */ }
    }
  }

  /** The next write: one frame, or several small ones joined. */
  #take(): Uint8Array {
    const first = this.#queue[this.#queueHead]!;
    let count = 1;
    let bytes = first.byteLength;
    while (this.#queueHead + count < this.#queue.length) {
      const next = this.#queue[this.#queueHead + count]!;
      if (bytes + next.byteLength > JOIN_BYTES) break;
      bytes += next.byteLength;
      count++;
    }
    let out = first;
    if (count > 1) {
      out = new Uint8Array(bytes);
      for (let i = 0, offset = 0; i < count; i++) {
        const part = this.#queue[this.#queueHead + i]!;
        out.set(part, offset);
        offset += part.byteLength;
        recycle(part);
      }
    }
    this.#queueHead += count;
    if (this.#queueHead === this.#queue.length) {
      this.#queue = [];
      this.#queueHead = 0;
    } else if (this.#queueHead > 1024 && this.#queueHead * 2 > this.#queue.length) {
      this.#queue = this.#queue.slice(this.#queueHead);
      this.#queueHead = 0;
    }
    return out;
  }

  #wakeDrained(): void {
    const still: { low: number; resolve: () => void }[] = [];
    for (const waiter of this.#drainWaiters) {
      if (this.#buffered <= waiter.low) waiter.resolve();
      else still.push(waiter);
    }
    this.#drainWaiters = still;
  }

  /** Closes the connection once every queued frame (the close frame last) has been written. */
  #closeWhenFlushed(): void {
    if (!this.#writing && this.#queueHead === this.#queue.length) {
      this.#end();
      return;
    }
    this.#flushed = () => this.#end();
  }

  // --- End -------------------------------------------------------------------------------------------

  /** Closes the connection (once) and reports it. */
  #end(): void {
    if (this.#ended) return;
    this.#ended = true;
    this.#state = ReadyState.CLOSED;
    this.#receiver = undefined;
    this.#releaseHeld();
    if (this.#closeTimer !== undefined) clearTimeout(this.#closeTimer);
    if (this.#messageTimer !== undefined) clearTimeout(this.#messageTimer);
    if (this.#keepaliveTimer !== undefined) clearInterval(this.#keepaliveTimer);
    this.#closeTimer = this.#messageTimer = this.#keepaliveTimer = undefined;
    try {
      this.#conn?.close();
    } catch { /* already closed */ }
    this.#queue = [];
    this.#queueHead = 0;
    this.#pongs = [];
    this.#buffered = 0;
    this.#wakeDrained();
    this.resume();
    this.#released?.();
    this.#released = undefined;
    const received = this.#closeReceived;
    const info: CloseInfo = received === undefined
      ? { code: CloseCode.ABNORMAL, reason: "", wasClean: false }
      : { code: received.code, reason: received.reason, wasClean: this.#closeSent };
    this.onclose?.(info);
  }
}

function describe(err: unknown): string {
  return err instanceof Error ? `${err.name}: ${err.message}` : String(err);
}
