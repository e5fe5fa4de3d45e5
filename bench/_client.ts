/**
 * The load generator's clients: a tcp-mux client over Deno's WebSocket that dispatches frames to per-stream
 * callbacks (no Promise per frame), and the same operations over raw TCP for the baseline.
 * @module
 */
import { FrameType, HEADER_SIZE, MUX_PATH } from "../src/protocol/mod.ts";

/** Callbacks of one stream; `payload` is a view that is valid only during the call. */
export interface StreamHandler {
  onOpen?(): void;
  onData?(payload: Uint8Array): void;
  onClose?(): void;
  onError?(code: number, message: string): void;
}

const decoder = new TextDecoder();

/** Writes a frame header: type, then the connection id as u32be. */
export function header(frame: Uint8Array, type: number, id: number): Uint8Array {
  frame[0] = type;
  frame[1] = id >>> 24;
  frame[2] = (id >>> 16) & 0xff;
  frame[3] = (id >>> 8) & 0xff;
  frame[4] = id & 0xff;
  return frame;
}

/** A DATA frame of `size` payload bytes (filled with `fill`). */
export function dataFrame(id: number, size: number, fill = 0x61): Uint8Array {
  const frame = new Uint8Array(HEADER_SIZE + size).fill(fill);
  return header(frame, FrameType.DATA, id);
}

/**
 * Which framing a bench session speaks: the seed's on `/tcp-mux`, Wisp v2 on `/wisp/`, or aero-tcp-mux-v1 with
 * the credit extension on `/tcp-mux` (windows both ways; see {@linkcode MuxSession.receiveWindow}).
 */
export type Framing = "seed" | "wisp" | "credit";

const AERO_HEADER = 9;
const AERO_DATA = 2;
const AERO_CLOSE = 3;
const AERO_ERROR = 4;
const AERO_WINDOW = 0x10;
const CREDIT_INITIAL = 64 * 1024;

/** Writes an aero-tcp-mux-v1 header: type, stream id u32be, payload length u32be. */
function aeroHeader(frame: Uint8Array, type: number, id: number): Uint8Array {
  const view = new DataView(frame.buffer, frame.byteOffset);
  frame[0] = type;
  view.setUint32(1, id);
  view.setUint32(5, frame.byteLength - AERO_HEADER);
  return frame;
}

function aeroWindow(id: number, bytes: number): Uint8Array {
  const frame = aeroHeader(new Uint8Array(AERO_HEADER + 4), AERO_WINDOW, id);
  new DataView(frame.buffer).setUint32(AERO_HEADER, bytes);
  return frame;
}

const WISP_DATA = 0x02;
const WISP_CONTINUE = 0x03;
const WISP_CLOSE = 0x04;
const WISP_INFO = 0x05;
const WISP_VOLUNTARY = 0x02;

/** Writes a Wisp header: type, then the stream id as u32le. */
function wispHeader(frame: Uint8Array, type: number, id: number): Uint8Array {
  frame[0] = type;
  new DataView(frame.buffer, frame.byteOffset).setUint32(1, id, true);
  return frame;
}

/**
 * A session of the load generator, in either framing. Wisp: v2 with stream open confirmation, so `onOpen` means
 * the same as the seed's OPEN acknowledgement (the target is connected); the target's close is CLOSE 0x02 and
 * any other reason is reported as an error. The bench client stays within its credit by construction: it keeps
 * at most one request or ping in flight per stream, or a W4 round of ten packets.
 */
export class MuxSession implements AsyncDisposable {
  /** Credit: the default download window of new sessions (the bench's `--receive-window`). */
  static creditWindow = 256 * 1024;
  readonly ws: WebSocket;
  readonly framing: Framing;
  readonly #handlers = new Map<number, StreamHandler>();
  /** Wisp streams whose open confirmation has arrived. */
  readonly #confirmed = new Set<number>();
  readonly #closed: Promise<void>;
  /** Wisp: resolves on the handshake CONTINUE. */
  readonly #ready = Promise.withResolvers<void>();
  /** Credit: the download window each stream grants the relay (the client reads everything at once). */
  readonly receiveWindow: number;
  /** Credit: per stream, what we may still send, and bytes received but not yet given back. */
  readonly #sendCredit = new Map<number, number>();
  readonly #owed = new Map<number, number>();
  #creditWaiters: (() => void)[] = [];

  private constructor(ws: WebSocket, framing: Framing, receiveWindow: number) {
    this.ws = ws;
    this.framing = framing;
    this.receiveWindow = receiveWindow;
    const { promise, resolve } = Promise.withResolvers<void>();
    this.#closed = promise;
    ws.onclose = () => resolve();
    if (framing === "wisp") {
      ws.onmessage = this.#onWisp;
      return;
    }
    if (framing === "credit") {
      ws.onmessage = this.#onAero;
      return;
    }
    ws.onmessage = (event: MessageEvent) => {
      const bytes = new Uint8Array(event.data as ArrayBuffer);
      const id = ((bytes[1]! << 24) | (bytes[2]! << 16) | (bytes[3]! << 8) | bytes[4]!) >>> 0;
      const handler = this.#handlers.get(id);
      if (handler === undefined) return;
      switch (bytes[0]) {
        case FrameType.DATA:
          handler.onData?.(bytes.subarray(HEADER_SIZE));
          return;
        case FrameType.OPEN:
          handler.onOpen?.();
          return;
        case FrameType.CLOSE:
          this.#handlers.delete(id);
          handler.onClose?.();
          return;
        case FrameType.ERROR: {
          const view = new DataView(bytes.buffer, HEADER_SIZE);
          handler.onError?.(view.getUint16(0), decoder.decode(bytes.subarray(HEADER_SIZE + 4)));
          return;
        }
      }
    };
  }

  #onWisp = (event: MessageEvent): void => {
    const bytes = new Uint8Array(event.data as ArrayBuffer);
    const id = new DataView(bytes.buffer).getUint32(1, true);
    if (id === 0) {
      if (bytes[0] === WISP_INFO) {
        // Answer the relay's INFO: version 2.0, stream open confirmation (id 0x05, no payload).
        const info = wispHeader(new Uint8Array(5 + 2 + 5), WISP_INFO, 0);
        info.set([2, 0, 0x05, 0, 0, 0, 0], 5);
        this.ws.send(info);
      } else if (bytes[0] === WISP_CONTINUE) {
        this.#ready.resolve();
      }
      return;
    }
    const handler = this.#handlers.get(id);
    if (handler === undefined) return;
    switch (bytes[0]) {
      case WISP_DATA:
        handler.onData?.(bytes.subarray(5));
        return;
      case WISP_CONTINUE:
        if (!this.#confirmed.has(id)) {
          this.#confirmed.add(id);
          handler.onOpen?.();
        }
        return;
      case WISP_CLOSE:
        this.#handlers.delete(id);
        this.#confirmed.delete(id);
        if (bytes[5] === WISP_VOLUNTARY) handler.onClose?.();
        else handler.onError?.(bytes[5]!, `Wisp CLOSE 0x${bytes[5]!.toString(16)}`);
        return;
    }
  };

  #onAero = (event: MessageEvent): void => {
    const bytes = new Uint8Array(event.data as ArrayBuffer);
    const view = new DataView(bytes.buffer);
    // The relay writes whole frames, one or more per message.
    for (let at = 0; at + AERO_HEADER <= bytes.byteLength;) {
      const type = bytes[at]!;
      const id = view.getUint32(at + 1);
      const length = view.getUint32(at + 5);
      const payload = bytes.subarray(at + AERO_HEADER, at + AERO_HEADER + length);
      at += AERO_HEADER + length;
      if (type === AERO_WINDOW) {
        this.#sendCredit.set(id, (this.#sendCredit.get(id) ?? 0) + view.getUint32(at - 4));
        const waiters = this.#creditWaiters;
        this.#creditWaiters = [];
        for (const wake of waiters) wake();
        continue;
      }
      const handler = this.#handlers.get(id);
      if (handler === undefined) continue;
      if (type === AERO_DATA) {
        handler.onData?.(payload);
        // Consumed at once: the credit goes back a quarter window at a time.
        const owed = (this.#owed.get(id) ?? 0) + payload.byteLength;
        if (owed >= this.receiveWindow / 4) {
          this.ws.send(aeroWindow(id, owed));
          this.#owed.set(id, 0);
        } else {
          this.#owed.set(id, owed);
        }
      } else if (type === AERO_CLOSE) {
        this.#forgetStream(id);
        handler.onClose?.();
      } else if (type === AERO_ERROR) {
        this.#forgetStream(id);
        const length = new DataView(payload.buffer, payload.byteOffset).getUint16(2);
        handler.onError?.(
          new DataView(payload.buffer, payload.byteOffset).getUint16(0),
          decoder.decode(payload.subarray(4, 4 + length)),
        );
      }
    }
  };

  #forgetStream(id: number): void {
    this.#handlers.delete(id);
    this.#sendCredit.delete(id);
    this.#owed.delete(id);
  }

  /** Credit: bytes stream `id` may still send (Infinity in the other framings). */
  sendCredit(id: number): number {
    return this.framing === "credit" ? this.#sendCredit.get(id) ?? 0 : Infinity;
  }

  /** Credit: resolves at the relay's next WINDOW (for any stream). */
  creditChanged(): Promise<void> {
    return new Promise((resolve) => this.#creditWaiters.push(resolve));
  }

  /** Opens a session to the relay on `port`. */
  static async connect(
    port: number,
    token: string,
    framing: Framing = "seed",
    timeoutMs = 10_000,
    receiveWindow = MuxSession.creditWindow,
  ): Promise<MuxSession> {
    const ws = framing === "wisp"
      ? new WebSocket(`ws://127.0.0.1:${port}/wisp/${encodeURIComponent(token)}/`, ["wisp-v2"])
      : framing === "credit"
      ? new WebSocket(`ws://127.0.0.1:${port}${MUX_PATH}?token=${encodeURIComponent(token)}`, [
        "aero-tcp-mux-v1-credit",
      ])
      : new WebSocket(`ws://127.0.0.1:${port}${MUX_PATH}?token=${encodeURIComponent(token)}`);
    ws.binaryType = "arraybuffer";
    const session = new MuxSession(ws, framing, receiveWindow);
    const { promise, resolve, reject } = Promise.withResolvers<void>();
    ws.onopen = () => framing === "wisp" ? session.#ready.promise.then(() => resolve()) : resolve();
    ws.onerror = () => reject(new Error("Cannot open the WebSocket session"));
    const timer = setTimeout(() => reject(new Error("WebSocket open timed out")), timeoutMs);
    try {
      await promise;
    } catch (err) {
      ws.close();
      await session.#closed;
      throw err;
    } finally {
      clearTimeout(timer);
    }
    ws.onerror = null;
    return session;
  }

  /** A DATA frame of `size` payload bytes in this session's framing (filled with `fill`). */
  dataFrame(id: number, size: number, fill = 0x61): Uint8Array {
    if (this.framing === "seed") return dataFrame(id, size, fill);
    if (this.framing === "credit") {
      return aeroHeader(new Uint8Array(AERO_HEADER + size).fill(fill), AERO_DATA, id);
    }
    return wispHeader(new Uint8Array(5 + size).fill(fill), WISP_DATA, id);
  }

  /** Registers `handler` for `id` and sends OPEN (Wisp: CONNECT) to 127.0.0.1:`port`. */
  open(id: number, port: number, handler: StreamHandler): void {
    this.#handlers.set(id, handler);
    if (this.framing === "credit") {
      const host = new TextEncoder().encode("127.0.0.1");
      const frame = aeroHeader(new Uint8Array(AERO_HEADER + 6 + host.byteLength), 0x01, id);
      const view = new DataView(frame.buffer);
      view.setUint16(AERO_HEADER, host.byteLength);
      frame.set(host, AERO_HEADER + 2);
      view.setUint16(AERO_HEADER + 2 + host.byteLength, port);
      view.setUint16(AERO_HEADER + 4 + host.byteLength, 0);
      this.ws.send(frame);
      this.#sendCredit.set(id, CREDIT_INITIAL);
      if (this.receiveWindow > CREDIT_INITIAL) {
        this.ws.send(aeroWindow(id, this.receiveWindow - CREDIT_INITIAL));
      }
      // aero-tcp-mux-v1 has no OPEN acknowledgement: the stream is usable at once.
      queueMicrotask(() => handler.onOpen?.());
      return;
    }
    if (this.framing === "wisp") {
      const host = new TextEncoder().encode("127.0.0.1");
      const frame = wispHeader(new Uint8Array(5 + 3 + host.byteLength), 0x01, id);
      frame[5] = 0x01;
      frame[6] = port & 0xff;
      frame[7] = port >>> 8;
      frame.set(host, 8);
      this.ws.send(frame);
      return;
    }
    const frame = header(new Uint8Array(HEADER_SIZE + 7), FrameType.OPEN, id);
    frame[5] = 4;
    frame.set([127, 0, 0, 1], 6);
    frame[10] = port >>> 8;
    frame[11] = port & 0xff;
    this.ws.send(frame);
  }

  /** Sends DATA with `payload` (copies it into a new frame). */
  sendData(id: number, payload: Uint8Array): void {
    const frame = this.dataFrame(id, payload.byteLength);
    frame.set(payload, frame.byteLength - payload.byteLength);
    this.sendFrame(frame);
  }

  /** Sends a prepared frame (the WebSocket copies it, so it may be reused); DATA spends credit. */
  sendFrame(frame: Uint8Array): void {
    if (this.framing === "credit" && frame[0] === AERO_DATA) {
      const id = new DataView(frame.buffer, frame.byteOffset).getUint32(1);
      this.#sendCredit.set(id, (this.#sendCredit.get(id) ?? 0) - (frame.byteLength - AERO_HEADER));
    }
    this.ws.send(frame);
  }

  sendClose(id: number): void {
    if (this.framing === "credit") {
      const frame = aeroHeader(new Uint8Array(AERO_HEADER + 1), AERO_CLOSE, id);
      frame[AERO_HEADER] = 0x01; // FIN: the relay answers CLOSE at the target's end
      this.ws.send(frame);
      return;
    }
    if (this.framing === "wisp") {
      const frame = wispHeader(new Uint8Array(6), WISP_CLOSE, id);
      frame[5] = WISP_VOLUNTARY;
      this.ws.send(frame);
      // Wisp does not answer a client's CLOSE: the stream is over for the client now.
      const handler = this.#handlers.get(id);
      this.#handlers.delete(id);
      handler?.onClose?.();
      return;
    }
    this.ws.send(header(new Uint8Array(HEADER_SIZE), FrameType.CLOSE, id));
  }

  /** Forgets a stream's handler (frames for it are ignored from now on). */
  forget(id: number): void {
    this.#handlers.delete(id);
  }

  async [Symbol.asyncDispose](): Promise<void> {
    if (this.ws.readyState === WebSocket.CONNECTING || this.ws.readyState === WebSocket.OPEN) this.ws.close();
    await this.#closed;
  }
}

/** Writes all of `bytes` to `conn`. */
export async function writeAll(conn: Deno.Conn, bytes: Uint8Array): Promise<void> {
  for (let off = 0; off < bytes.byteLength;) off += await conn.write(bytes.subarray(off));
}

/** A u32be length prefix: what the source target reads to know how many bytes to send. */
export function sizeRequest(total: number): Uint8Array {
  const bytes = new Uint8Array(4);
  new DataView(bytes.buffer).setUint32(0, total);
  return bytes;
}

/** Connects to 127.0.0.1:`port` with TCP_NODELAY. */
export async function dial(port: number): Promise<Deno.TcpConn> {
  const conn = await Deno.connect({ hostname: "127.0.0.1", port });
  conn.setNoDelay(true);
  return conn;
}
