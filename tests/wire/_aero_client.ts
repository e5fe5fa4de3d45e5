/**
 * A test client of aero-tcp-mux-v1 (and its credit extension) over Deno's WebSocket: frames built with the
 * codec, every frame the relay sends decoded and kept in order of arrival.
 */
import assert from "node:assert/strict";
import {
  MUX_CREDIT_SUBPROTOCOL,
  MUX_V1_SUBPROTOCOL,
  type MuxFrame,
  MuxFrameDecoder,
  MuxMsgType,
} from "../../src/wire/aero_mux_v1_codec.ts";
import { concat, TOKEN, withTimeout } from "../_util.ts";

/** A client speaking aero-tcp-mux-v1 over Deno's WebSocket, collecting the relay's frames per stream. */
export class AeroClient implements AsyncDisposable {
  readonly ws: WebSocket;
  readonly #decoder: MuxFrameDecoder;
  readonly frames: MuxFrame[] = [];
  #waiters: (() => void)[] = [];
  readonly closed: Promise<CloseEvent>;

  private constructor(ws: WebSocket) {
    this.ws = ws;
    this.#decoder = new MuxFrameDecoder({
      maxPayloadBytes: 16 * 1024 * 1024,
      credit: ws.protocol === MUX_CREDIT_SUBPROTOCOL,
    });
    ws.binaryType = "arraybuffer";
    ws.onmessage = (event) => {
      for (const frame of this.#decoder.push(new Uint8Array(event.data as ArrayBuffer))) {
        if (frame.type === "invalid") throw frame.error;
        this.frames.push(frame);
      }
      for (const wake of this.#waiters.splice(0)) wake();
    };
    this.closed = new Promise((resolve) => ws.addEventListener("close", resolve, { once: true }));
  }

  /** Opens a session offering `protocols` (default: plain aero-tcp-mux-v1). */
  static async connect(port: number, protocols: string[] = [MUX_V1_SUBPROTOCOL]): Promise<AeroClient> {
    const ws = new WebSocket(`ws://127.0.0.1:${port}/tcp-mux?token=${TOKEN}`, protocols);
    await new Promise<void>((resolve, reject) => {
      ws.onopen = () => resolve();
      ws.onerror = () => reject(new Error("WebSocket failed"));
    });
    return new AeroClient(ws);
  }

  send(...frames: Uint8Array[]): void {
    for (const frame of frames) this.ws.send(frame);
  }

  /** Waits until a frame matching `match` has arrived (in order of arrival), and returns it. */
  async next(match: (f: MuxFrame) => boolean, what: string, timeoutMs = 5000): Promise<MuxFrame> {
    const deadline = performance.now() + timeoutMs;
    for (;;) {
      const index = this.frames.findIndex(match);
      if (index >= 0) return this.frames.splice(index, 1)[0]!;
      const left = deadline - performance.now();
      if (left <= 0) throw new Error(`Timed out waiting for ${what}`);
      await withTimeout(new Promise<void>((resolve) => this.#waiters.push(resolve)), left, what).catch(
        () => {},
      );
    }
  }

  /** Collects DATA of `id` until its CLOSE (skipping WINDOWs); returns the bytes and the close flags. */
  async readToClose(id: number, timeoutMs = 10_000): Promise<{ data: Uint8Array; flags: number }> {
    const parts: Uint8Array[] = [];
    for (;;) {
      const frame = await this.next((f) => f.streamId === id, `stream ${id}`, timeoutMs);
      if (frame.type === MuxMsgType.DATA) parts.push(frame.data.slice());
      else if (frame.type === MuxMsgType.CLOSE) return { data: concat(parts), flags: frame.flags };
      else if (frame.type === MuxMsgType.WINDOW) continue; // upload credit (credit extension)
      else assert.fail(`unexpected frame ${JSON.stringify(frame)}`);
    }
  }

  async [Symbol.asyncDispose](): Promise<void> {
    if (this.ws.readyState !== WebSocket.CLOSED) this.ws.close();
    await this.closed;
  }
}
