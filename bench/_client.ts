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

/** A tcp-mux session. */
export class MuxSession implements AsyncDisposable {
  readonly ws: WebSocket;
  readonly #handlers = new Map<number, StreamHandler>();
  readonly #closed: Promise<void>;

  private constructor(ws: WebSocket) {
    this.ws = ws;
    const { promise, resolve } = Promise.withResolvers<void>();
    this.#closed = promise;
    ws.onclose = () => resolve();
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

  /** Opens a session to the relay on `port`. */
  static async connect(port: number, token: string, timeoutMs = 10_000): Promise<MuxSession> {
    const ws = new WebSocket(`ws://127.0.0.1:${port}${MUX_PATH}?token=${encodeURIComponent(token)}`);
    ws.binaryType = "arraybuffer";
    const session = new MuxSession(ws);
    const { promise, resolve, reject } = Promise.withResolvers<void>();
    ws.onopen = () => resolve();
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

  /** Registers `handler` for `id` and sends OPEN to 127.0.0.1:`port`. */
  open(id: number, port: number, handler: StreamHandler): void {
    this.#handlers.set(id, handler);
    const frame = header(new Uint8Array(HEADER_SIZE + 7), FrameType.OPEN, id);
    frame[5] = 4;
    frame.set([127, 0, 0, 1], 6);
    frame[10] = port >>> 8;
    frame[11] = port & 0xff;
    this.ws.send(frame);
  }

  /** Sends DATA with `payload` (copies it into a new frame). */
  sendData(id: number, payload: Uint8Array): void {
    const frame = header(new Uint8Array(HEADER_SIZE + payload.byteLength), FrameType.DATA, id);
    frame.set(payload, HEADER_SIZE);
    this.ws.send(frame);
  }

  /** Sends a prepared frame (the WebSocket copies it, so it may be reused). */
  sendFrame(frame: Uint8Array): void {
    this.ws.send(frame);
  }

  sendClose(id: number): void {
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
