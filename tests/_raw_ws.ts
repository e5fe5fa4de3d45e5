/**
 * A minimal WebSocket client over a raw TCP socket (RFC 6455, client side). Tests use it where a browser-like
 * client is not enough: to stop reading the socket entirely, or to vanish without a closing handshake.
 * @module
 */
import { createHash, type Hash } from "node:crypto";
import { decodeServerFrame, FrameType } from "../src/protocol/mod.ts";
import { concat } from "./_util.ts";

const encoder = new TextEncoder();
const decoder = new TextDecoder();

export interface RawFrame {
  readonly opcode: number;
  readonly payload: Uint8Array;
}

/**
 * The payload length of the frame at the start of `b` and where the rest of its header (the masking key, if the
 * mask bit is set) starts; `undefined` until the whole length field has arrived.
 */
export function payloadAt(b: Uint8Array): { length: number; offset: number } | undefined {
  if (b.byteLength < 2) return undefined;
  const view = new DataView(b.buffer, b.byteOffset, b.byteLength);
  const short = b[1]! & 0x7f;
  if (short < 126) return { length: short, offset: 2 };
  if (short === 126) return b.byteLength < 4 ? undefined : { length: view.getUint16(2), offset: 4 };
  return b.byteLength < 10 ? undefined : { length: Number(view.getBigUint64(2)), offset: 10 };
}

export class RawWebSocket implements AsyncDisposable {
  readonly conn: Deno.Conn;
  #buffer: Uint8Array = new Uint8Array(0);
  #closed = false;

  private constructor(conn: Deno.Conn) {
    this.conn = conn;
  }

  /** Connects and performs the opening handshake; rejects unless the server answers 101. */
  static async connect(
    port: number,
    pathAndQuery: string,
    headers: Record<string, string> = {},
    options: { tls?: { caCerts: string[] } } = {},
  ): Promise<RawWebSocket> {
    const conn = options.tls === undefined
      ? await Deno.connect({ hostname: "127.0.0.1", port })
      : await Deno.connectTls({ hostname: "127.0.0.1", port, caCerts: options.tls.caCerts });
    const ws = new RawWebSocket(conn);
    try {
      const key = btoa(String.fromCharCode(...crypto.getRandomValues(new Uint8Array(16))));
      const lines = [
        `GET ${pathAndQuery} HTTP/1.1`,
        `Host: 127.0.0.1:${port}`,
        "Upgrade: websocket",
        "Connection: Upgrade",
        `Sec-WebSocket-Key: ${key}`,
        "Sec-WebSocket-Version: 13",
        ...Object.entries(headers).map(([k, v]) => `${k}: ${v}`),
        "",
        "",
      ];
      await ws.#writeAll(encoder.encode(lines.join("\r\n")));
      const head = await ws.#readHead();
      const status = head.split("\r\n")[0] ?? "";
      if (!/^HTTP\/1\.1 101 /.test(status)) throw new Error(`Upgrade refused: ${status}`);
      return ws;
    } catch (err) {
      ws.abort();
      throw err;
    }
  }

  async #fill(): Promise<boolean> {
    const chunk = new Uint8Array(256 * 1024);
    const n = await this.conn.read(chunk);
    if (n === null) return false;
    this.#buffer = this.#buffer.byteLength === 0
      ? chunk.subarray(0, n)
      : concat([this.#buffer, chunk.subarray(0, n)]);
    return true;
  }

  async #readHead(): Promise<string> {
    for (;;) {
      const text = decoder.decode(this.#buffer);
      const end = text.indexOf("\r\n\r\n");
      if (end >= 0) {
        this.#buffer = this.#buffer.subarray(encoder.encode(text.slice(0, end + 4)).byteLength);
        return text.slice(0, end);
      }
      if (!(await this.#fill())) throw new Error("Connection closed during the handshake");
    }
  }

  async #writeAll(bytes: Uint8Array): Promise<void> {
    for (let off = 0; off < bytes.byteLength;) off += await this.conn.write(bytes.subarray(off));
  }

  /** Sends many binary frames in one write (for floods). */
  sendMany(payloads: readonly Uint8Array[]): Promise<void> {
    return this.#writeAll(concat(payloads.map((p) => RawWebSocket.#frame(p, 0x2))));
  }

  /** Sends one masked frame (binary by default). */
  send(payload: Uint8Array, opcode = 0x2): Promise<void> {
    return this.#writeAll(RawWebSocket.#frame(payload, opcode));
  }

  static #frame(payload: Uint8Array, opcode: number): Uint8Array {
    const length = payload.byteLength;
    const extra = length < 126 ? 0 : length < 65536 ? 2 : 8;
    const frame = new Uint8Array(2 + extra + 4 + length);
    frame[0] = 0x80 | opcode;
    const view = new DataView(frame.buffer);
    if (extra === 0) frame[1] = 0x80 | length;
    else if (extra === 2) {
      frame[1] = 0x80 | 126;
      view.setUint16(2, length);
    } else {
      frame[1] = 0x80 | 127;
      view.setBigUint64(2, BigInt(length));
    }
    const mask = crypto.getRandomValues(new Uint8Array(4));
    frame.set(mask, 2 + extra);
    const body = 2 + extra + 4;
    for (let i = 0; i < length; i++) frame[body + i] = payload[i]! ^ mask[i & 3]!;
    return frame;
  }

  /** Reads the next complete frame; `null` when the connection ended. Answers pings. */
  async read(): Promise<RawFrame | null> {
    for (;;) {
      const frame = this.#parse();
      if (frame !== undefined) {
        if (frame.opcode === 0x9) {
          await this.send(frame.payload, 0xa);
          continue;
        }
        return frame;
      }
      if (this.#closed || !(await this.#fill())) return null;
    }
  }

  #parse(): RawFrame | undefined {
    const b = this.#buffer;
    const at = payloadAt(b);
    if (at === undefined) return undefined;
    const { length, offset } = at;
    if (b.byteLength < offset + length) return undefined;
    const frame = { opcode: b[0]! & 0x0f, payload: b.slice(offset, offset + length) };
    this.#buffer = b.subarray(offset + length);
    return frame;
  }

  /** Drops the TCP connection without a closing handshake (a client that vanished). */
  abort(): void {
    if (this.#closed) return;
    this.#closed = true;
    try {
      this.conn.close();
    } catch { /* already closed */ }
  }

  [Symbol.asyncDispose](): Promise<void> {
    this.abort();
    return Promise.resolve();
  }
}

/**
 * Reads one stream's download from a raw WebSocket: counts and hashes DATA, notes CLOSE, throws on ERROR.
 * Reading happens only inside {@linkcode readUntil}, so a test can stop reading the socket in between.
 */
export class RawDownload {
  readonly #ws: RawWebSocket;
  readonly #hash: Hash = createHash("sha256");
  received = 0;
  closed = false;

  constructor(ws: RawWebSocket) {
    this.#ws = ws;
  }

  /** Reads frames until `done()` holds or the stream is closed. */
  async readUntil(done: () => boolean): Promise<void> {
    while (!this.closed && !done()) {
      const raw = await this.#ws.read();
      if (raw === null) throw new Error("The relay closed the WebSocket");
      if (raw.opcode !== 0x2) continue;
      const frame = decodeServerFrame(raw.payload);
      if (frame.type === FrameType.DATA) {
        this.#hash.update(frame.data);
        this.received += frame.data.byteLength;
      } else if (frame.type === FrameType.CLOSE) this.closed = true;
      else if (frame.type === FrameType.ERROR) throw new Error(`ERROR ${frame.code}: ${frame.message}`);
    }
  }

  /** SHA-256 (hex) of everything received; call once, at the end. */
  digest(): string {
    return this.#hash.digest("hex");
  }
}
