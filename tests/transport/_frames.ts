/**
 * A raw RFC 6455 client for transport conformance tests, over real loopback TCP: any handshake (custom headers,
 * bytes pipelined behind the head), client frames with control over every header bit (FIN, RSV, opcode, mask,
 * length form, declared length), writes split anywhere, and a reader for the server's frames that notices EOF.
 *
 * Nothing here answers pings or assembles messages on its own: every frame the server sends is visible to the
 * test. Every wait takes a bound.
 * @module
 */
import assert from "node:assert/strict";
import { createHash } from "node:crypto";
import { CloseCode, Opcode } from "../../src/transport/frames.ts";
import { payloadAt } from "../_raw_ws.ts";
import { concat } from "../_util.ts";

/** WebSocket opcodes (RFC 6455 section 5.2): numbers of the RFC, shared with the server's code. */
export { Opcode };

/** The GUID the server appends to Sec-WebSocket-Key before hashing (RFC 6455 section 1.3). */
export const WEBSOCKET_GUID = "258EAFA5-E914-47DA-95CA-C5AB0DC85B11";

/** The status a Close frame without a payload stands for (RFC 6455 section 7.4.1); never sent on the wire. */
export const NO_STATUS_CODE = CloseCode.NO_STATUS;

/** Largest server frame the reader accepts; a bigger length means the stream is out of step. */
const MAX_SERVER_FRAME = 64 * 1024 * 1024;

const encoder = new TextEncoder();
const strictUtf8 = new TextDecoder("utf-8", { fatal: true });
const latin1 = new TextDecoder("latin1");

// --- Frames -----------------------------------------------------------------------------------------

/** One client frame, with control over every field of the header. */
export interface FrameSpec {
  readonly opcode: number;
  /** @default true */
  readonly fin?: boolean;
  /** RSV1..RSV3 as a 3-bit number: 4 = RSV1, 2 = RSV2, 1 = RSV3. @default 0 */
  readonly rsv?: number;
  /** A string is sent as its UTF-8 bytes. @default empty */
  readonly payload?: Uint8Array | string;
  /** `true`: a random masking key; `false`: unmasked; four bytes: this key. @default true */
  readonly mask?: boolean | Uint8Array;
  /** Form of the length field: 7-bit, 16-bit or 64-bit. @default the shortest form that fits */
  readonly lengthForm?: 7 | 16 | 64;
  /** Length written in the header, when it should differ from the payload's (a lie, or a header alone). */
  readonly declaredLength?: number | bigint;
}

/** A frame as the server sent it. */
export interface WsFrame {
  readonly fin: boolean;
  readonly rsv: number;
  readonly opcode: number;
  readonly masked: boolean;
  readonly payload: Uint8Array;
}

export function bytesOf(payload: Uint8Array | string | undefined): Uint8Array {
  if (payload === undefined) return new Uint8Array(0);
  return typeof payload === "string" ? encoder.encode(payload) : payload;
}

/** Encodes one client frame exactly as `spec` says, including frames that break the protocol. */
export function encodeFrame(spec: FrameSpec): Uint8Array {
  const payload = bytesOf(spec.payload);
  const declared = BigInt(spec.declaredLength ?? payload.byteLength);
  if (declared < 0n || declared >= 1n << 64n) {
    throw new RangeError(`Cannot encode frame: declared length ${declared} does not fit 64 bits`);
  }
  const form = spec.lengthForm ?? (declared < 126n ? 7 : declared < 65536n ? 16 : 64);
  if ((form === 7 && declared > 125n) || (form === 16 && declared > 0xffffn)) {
    throw new RangeError(
      `Cannot encode frame: declared length ${declared} does not fit the ${form}-bit form`,
    );
  }
  const rsv = spec.rsv ?? 0;
  if (!Number.isInteger(rsv) || rsv < 0 || rsv > 7) throw new RangeError(`Cannot encode frame: rsv ${rsv}`);
  if (!Number.isInteger(spec.opcode) || spec.opcode < 0 || spec.opcode > 15) {
    throw new RangeError(`Cannot encode frame: opcode ${spec.opcode} is not 4 bits`);
  }
  const key = spec.mask === false
    ? undefined
    : spec.mask === undefined || spec.mask === true
    ? crypto.getRandomValues(new Uint8Array(4))
    : spec.mask;
  if (key !== undefined && key.byteLength !== 4) {
    throw new RangeError("Cannot encode frame: mask is not 4 bytes");
  }
  const extra = form === 7 ? 0 : form === 16 ? 2 : 8;
  const head = 2 + extra + (key === undefined ? 0 : 4);
  const frame = new Uint8Array(head + payload.byteLength);
  const view = new DataView(frame.buffer);
  frame[0] = ((spec.fin ?? true) ? 0x80 : 0) | (rsv << 4) | spec.opcode;
  const maskBit = key === undefined ? 0 : 0x80;
  if (form === 7) frame[1] = maskBit | Number(declared);
  else if (form === 16) {
    frame[1] = maskBit | 126;
    view.setUint16(2, Number(declared));
  } else {
    frame[1] = maskBit | 127;
    view.setBigUint64(2, declared);
  }
  if (key === undefined) {
    frame.set(payload, head);
  } else {
    frame.set(key, 2 + extra);
    for (let i = 0; i < payload.byteLength; i++) frame[head + i] = payload[i]! ^ key[i & 3]!;
  }
  return frame;
}

/** Encodes several frames back to back (one buffer, to be written whole or split). */
export function encodeFrames(specs: readonly FrameSpec[]): Uint8Array {
  return concat(specs.map(encodeFrame));
}

/** Shorthands for the common frames; all masked unless the spec says otherwise. */
export const frame = {
  binary: (payload: Uint8Array | string, more: Partial<FrameSpec> = {}): Uint8Array =>
    encodeFrame({ opcode: Opcode.BINARY, payload, ...more }),
  text: (payload: Uint8Array | string, more: Partial<FrameSpec> = {}): Uint8Array =>
    encodeFrame({ opcode: Opcode.TEXT, payload, ...more }),
  continuation: (payload: Uint8Array | string, more: Partial<FrameSpec> = {}): Uint8Array =>
    encodeFrame({ opcode: Opcode.CONTINUATION, payload, ...more }),
  ping: (payload: Uint8Array | string = "", more: Partial<FrameSpec> = {}): Uint8Array =>
    encodeFrame({ opcode: Opcode.PING, payload, ...more }),
  pong: (payload: Uint8Array | string = "", more: Partial<FrameSpec> = {}): Uint8Array =>
    encodeFrame({ opcode: Opcode.PONG, payload, ...more }),
  close: (code?: number, reason: Uint8Array | string = "", more: Partial<FrameSpec> = {}): Uint8Array =>
    encodeFrame({ opcode: Opcode.CLOSE, payload: closePayload(code, reason), ...more }),
};

/** The payload of a Close frame: nothing without a code, else the code (u16be) and the reason. */
export function closePayload(code?: number, reason: Uint8Array | string = ""): Uint8Array {
  if (code === undefined) return new Uint8Array(0);
  const text = bytesOf(reason);
  const payload = new Uint8Array(2 + text.byteLength);
  new DataView(payload.buffer).setUint16(0, code);
  payload.set(text, 2);
  return payload;
}

/** Splits a message payload into `count` fragments of near-equal size (some may be empty). */
export function fragmentsOf(payload: Uint8Array, count: number): Uint8Array[] {
  const out: Uint8Array[] = [];
  for (let i = 0; i < count; i++) {
    out.push(
      payload.subarray(
        Math.floor((i * payload.byteLength) / count),
        Math.floor(((i + 1) * payload.byteLength) / count),
      ),
    );
  }
  return out;
}

/** Encodes one message as fragments: the first with `opcode`, the rest continuations, FIN on the last. */
export function fragmentedMessage(opcode: number, parts: readonly Uint8Array[]): Uint8Array[] {
  return parts.map((part, i) =>
    encodeFrame({
      opcode: i === 0 ? opcode : Opcode.CONTINUATION,
      fin: i === parts.length - 1,
      payload: part,
    })
  );
}

/** The code and reason of a server Close frame; `NO_STATUS_CODE` for an empty payload. */
export function parseClose(payload: Uint8Array): { code: number; reason: Uint8Array } {
  if (payload.byteLength === 0) return { code: NO_STATUS_CODE, reason: payload };
  assert.ok(
    payload.byteLength >= 2,
    `the server sent a Close frame with a ${payload.byteLength}-byte payload`,
  );
  return {
    code: new DataView(payload.buffer, payload.byteOffset, payload.byteLength).getUint16(0),
    reason: payload.subarray(2),
  };
}

export function describeWsFrame(f: WsFrame): string {
  const name: Record<number, string> = {
    0: "cont",
    1: "text",
    2: "binary",
    8: "close",
    9: "ping",
    10: "pong",
  };
  const extra = f.opcode === Opcode.CLOSE ? ` code ${parseCloseLoose(f.payload)}` : "";
  return `${name[f.opcode] ?? `op${f.opcode}`}${f.fin ? "" : "(fin=0)"} ${f.payload.byteLength} B${extra}`;
}

function parseCloseLoose(payload: Uint8Array): string {
  if (payload.byteLength === 0) return "none";
  if (payload.byteLength === 1) return "1-byte";
  return String(new DataView(payload.buffer, payload.byteOffset, payload.byteLength).getUint16(0));
}

// --- Bytes and splits --------------------------------------------------------------------------------

/** Cuts `bytes` at the given offsets (sorted, deduplicated, out-of-range ones dropped). */
export function splitAt(bytes: Uint8Array, cuts: readonly number[]): Uint8Array[] {
  const points = [...new Set(cuts)].filter((c) => c > 0 && c < bytes.byteLength).sort((a, b) => a - b);
  const out: Uint8Array[] = [];
  let from = 0;
  for (const at of [...points, bytes.byteLength]) {
    out.push(bytes.subarray(from, at));
    from = at;
  }
  return out;
}

/** One piece per byte. */
export function bytewise(bytes: Uint8Array): Uint8Array[] {
  return splitAt(bytes, Array.from({ length: bytes.byteLength }, (_, i) => i));
}

/** Cuts `bytes` at up to `maxCuts` random offsets drawn from `rng`. */
export function randomSplit(bytes: Uint8Array, rng: Prng, maxCuts: number): Uint8Array[] {
  const cuts = Array.from({ length: rng.int(maxCuts + 1) }, () => rng.int(bytes.byteLength));
  return splitAt(bytes, cuts);
}

/** A small seeded PRNG (mulberry32): the same seed gives the same sequence. */
export class Prng {
  #state: number;
  readonly seed: number;
  constructor(seed: number) {
    this.seed = seed >>> 0;
    this.#state = this.seed;
  }
  /** A uniform u32. */
  next(): number {
    this.#state = (this.#state + 0x6d2b79f5) >>> 0;
    let t = this.#state;
    t = Math.imul(t ^ (t >>> 15), t | 1);
    t ^= t + Math.imul(t ^ (t >>> 7), t | 61);
    return (t ^ (t >>> 14)) >>> 0;
  }
  /** A uniform integer in `[0, bound)`. */
  int(bound: number): number {
    return bound <= 0 ? 0 : Math.floor((this.next() / 2 ** 32) * bound);
  }
  chance(p: number): boolean {
    return this.next() / 2 ** 32 < p;
  }
  pick<T>(items: readonly T[]): T {
    assert.ok(items.length > 0, "Cannot pick from an empty list");
    return items[this.int(items.length)]!;
  }
  bytes(length: number): Uint8Array {
    const out = new Uint8Array(length);
    for (let i = 0; i < length; i++) out[i] = this.next() & 0xff;
    return out;
  }
}

// --- HTTP --------------------------------------------------------------------------------------------

/** Sec-WebSocket-Accept for a key: base64(SHA-1(key + GUID)). */
export function acceptFor(key: string): string {
  return createHash("sha1").update(key + WEBSOCKET_GUID).digest("base64");
}

export function randomKey(): string {
  return btoa(String.fromCharCode(...crypto.getRandomValues(new Uint8Array(16))));
}

export interface UpgradeRequestOptions {
  /** @default "GET" */
  readonly method?: string;
  /** Request target. @default the relay's path with the test token */
  readonly target?: string;
  /** @default a random valid key */
  readonly key?: string;
  /**
   * Changes to the default headers (Host, Upgrade, Connection, Sec-WebSocket-Key, Sec-WebSocket-Version),
   * matched case-insensitively: a string replaces or adds, `null` leaves the header out.
   */
  readonly headers?: Readonly<Record<string, string | null>>;
  /** Raw header lines added at the end, as written. */
  readonly extraLines?: readonly string[];
}

/** Builds a request head; with no options, a valid WebSocket upgrade. */
export function upgradeRequest(
  port: number,
  target: string,
  options: UpgradeRequestOptions = {},
): { head: Uint8Array; key: string } {
  const key = options.key ?? randomKey();
  const headers: [string, string][] = [
    ["Host", `127.0.0.1:${port}`],
    ["Upgrade", "websocket"],
    ["Connection", "Upgrade"],
    ["Sec-WebSocket-Key", key],
    ["Sec-WebSocket-Version", "13"],
  ];
  for (const [name, value] of Object.entries(options.headers ?? {})) {
    const index = headers.findIndex(([n]) => n.toLowerCase() === name.toLowerCase());
    if (value === null) {
      if (index >= 0) headers.splice(index, 1);
    } else if (index >= 0) headers[index] = [headers[index]![0], value];
    else headers.push([name, value]);
  }
  const lines = [
    `${options.method ?? "GET"} ${options.target ?? target} HTTP/1.1`,
    ...headers.map(([n, v]) => `${n}: ${v}`),
    ...(options.extraLines ?? []),
    "",
    "",
  ];
  return { head: encoder.encode(lines.join("\r\n")), key };
}

/** A parsed HTTP response head. */
export interface HttpHead {
  readonly status: number;
  readonly statusLine: string;
  /** Lower-case names; repeated headers joined with ", ". */
  readonly headers: ReadonlyMap<string, string>;
}

function parseHead(text: string): HttpHead {
  const [statusLine = "", ...lines] = text.split("\r\n");
  const match = /^HTTP\/1\.[01] (\d{3})(?: .*)?$/.exec(statusLine);
  assert.ok(match, `not an HTTP status line: ${JSON.stringify(statusLine)}`);
  const headers = new Map<string, string>();
  for (const line of lines) {
    const colon = line.indexOf(":");
    assert.ok(colon > 0, `malformed response header line: ${JSON.stringify(line)}`);
    const name = line.slice(0, colon).trim().toLowerCase();
    const value = line.slice(colon + 1).trim();
    const prior = headers.get(name);
    headers.set(name, prior === undefined ? value : `${prior}, ${value}`);
  }
  return { status: Number(match[1]), statusLine, headers };
}

/** The comma-separated tokens of a header, lower-cased. */
export function headerTokens(head: HttpHead, name: string): string[] {
  return (head.headers.get(name.toLowerCase()) ?? "").split(",").map((t) => t.trim().toLowerCase()).filter(
    (t) => t !== "",
  );
}

// --- The client ----------------------------------------------------------------------------------------

/** What a bounded read found. */
export type ReadOutcome = "data" | "eof" | "timeout";

export class TimeoutError extends Error {
  constructor(message: string) {
    super(message);
    this.name = "TimeoutError";
  }
}

export interface WriteOptions {
  /** Pause between pieces, so that they reach the server as separate reads. @default 0 */
  readonly gapMs?: number;
  /** Bound on the whole write; on expiry the connection is closed. @default 10000 */
  readonly timeoutMs?: number;
}

/** One TCP connection to the server, spoken to byte by byte. */
export class RawClient implements AsyncDisposable {
  readonly conn: Deno.TcpConn;
  #buffer: Uint8Array = new Uint8Array(0);
  #pending: Promise<Uint8Array | null> | undefined;
  #eof = false;
  #closed = false;
  /** The connection ended with a reset rather than a FIN. */
  reset = false;

  private constructor(conn: Deno.TcpConn) {
    this.conn = conn;
  }

  static async connect(port: number): Promise<RawClient> {
    const conn = await Deno.connect({ hostname: "127.0.0.1", port, transport: "tcp" });
    conn.setNoDelay(true);
    return new RawClient(conn);
  }

  /**
   * Connects, writes `head` (and `pipelined` in the same write), and reads the response head.
   * The caller owns the returned client even when the status is not 101.
   */
  static async request(
    port: number,
    head: Uint8Array,
    options: { pipelined?: Uint8Array; timeoutMs?: number } = {},
  ): Promise<{ client: RawClient; response: HttpHead }> {
    const client = await RawClient.connect(port);
    try {
      await client.write(options.pipelined === undefined ? head : concat([head, options.pipelined]));
      const response = await client.readHead(options.timeoutMs ?? 5000);
      return { client, response };
    } catch (err) {
      await client.close();
      throw err;
    }
  }

  /**
   * A completed upgrade: asserts 101, `Upgrade: websocket`, `Connection: upgrade` and the right
   * Sec-WebSocket-Accept.
   */
  static async upgrade(
    port: number,
    target: string,
    options: UpgradeRequestOptions & { pipelined?: Uint8Array } = {},
  ): Promise<{ client: RawClient; response: HttpHead }> {
    const { head, key } = upgradeRequest(port, target, options);
    const result = await RawClient.request(
      port,
      head,
      options.pipelined === undefined ? {} : { pipelined: options.pipelined },
    );
    try {
      assertUpgraded(result.response, key);
    } catch (err) {
      await result.client.close();
      throw err;
    }
    return result;
  }

  get eof(): boolean {
    return this.#eof;
  }

  /** Bytes received and not yet consumed. */
  get buffered(): number {
    return this.#buffer.byteLength;
  }

  /** Writes every piece in order, each with its own write call. */
  async write(bytes: Uint8Array | readonly Uint8Array[], options: WriteOptions = {}): Promise<void> {
    const pieces = bytes instanceof Uint8Array ? [bytes] : bytes;
    const deadline = performance.now() + (options.timeoutMs ?? 10_000);
    for (let i = 0; i < pieces.length; i++) {
      if (i > 0 && (options.gapMs ?? 0) > 0) await sleep(options.gapMs!);
      const piece = pieces[i]!;
      for (let off = 0; off < piece.byteLength;) {
        off += await this.#bounded(this.conn.write(piece.subarray(off)), deadline, "a write");
      }
    }
  }

  /** Like `write`, but returns `false` instead of throwing when the server has already gone away. */
  async tryWrite(bytes: Uint8Array | readonly Uint8Array[], options: WriteOptions = {}): Promise<boolean> {
    try {
      await this.write(bytes, options);
      return true;
    } catch (err: unknown) {
      if (
        err instanceof Deno.errors.BrokenPipe || err instanceof Deno.errors.ConnectionReset ||
        err instanceof Deno.errors.NotConnected || err instanceof Deno.errors.ConnectionAborted
      ) return false;
      throw err;
    }
  }

  async #bounded<T>(op: Promise<T>, deadline: number, what: string): Promise<T> {
    let timer: ReturnType<typeof setTimeout> | undefined;
    const expired = new Promise<"timeout">((resolve) => {
      timer = setTimeout(() => resolve("timeout"), Math.max(0, deadline - performance.now()));
    });
    try {
      const result = await Promise.race([op, expired]);
      if (result !== "timeout") return result as T;
    } finally {
      clearTimeout(timer);
    }
    // Closing the socket is the only way to end a pending operation; wait for it to settle.
    await this.close();
    await op.catch(() => {});
    throw new TimeoutError(`Timed out waiting for ${what}`);
  }

  #read(): Promise<Uint8Array | null> {
    return this.#pending ??= (async () => {
      const chunk = new Uint8Array(256 * 1024);
      try {
        const n = await this.conn.read(chunk);
        return n === null ? null : chunk.subarray(0, n);
      } catch (err: unknown) {
        if (err instanceof Deno.errors.ConnectionReset) {
          this.reset = true;
          return null;
        }
        if (this.#closed) return null;
        throw err;
      }
    })();
  }

  /** Waits for more bytes until `deadline` (a `performance.now()` time). */
  async fill(deadline: number): Promise<ReadOutcome> {
    if (this.#eof) return "eof";
    const read = this.#read();
    let timer: ReturnType<typeof setTimeout> | undefined;
    const expired = new Promise<"timeout">((resolve) => {
      timer = setTimeout(() => resolve("timeout"), Math.max(0, deadline - performance.now()));
    });
    const result = await Promise.race([read.then((bytes) => ({ bytes })), expired]).finally(() =>
      clearTimeout(timer)
    );
    if (result === "timeout") return "timeout";
    this.#pending = undefined;
    if (result.bytes === null) {
      this.#eof = true;
      return "eof";
    }
    this.#buffer = this.#buffer.byteLength === 0 ? result.bytes : concat([this.#buffer, result.bytes]);
    return "data";
  }

  /** Reads an HTTP response head (up to the blank line); the bytes behind it stay buffered. */
  async readHead(timeoutMs: number): Promise<HttpHead> {
    const deadline = performance.now() + timeoutMs;
    for (;;) {
      const end = indexOfBlankLine(this.#buffer);
      if (end >= 0) {
        const text = latin1.decode(this.#buffer.subarray(0, end));
        this.#buffer = this.#buffer.subarray(end + 4);
        return parseHead(text);
      }
      const outcome = await this.fill(deadline);
      if (outcome === "eof") {
        throw new Error(`Connection closed before a response head (got ${this.#buffer.byteLength} bytes)`);
      }
      if (outcome === "timeout") throw new TimeoutError(`No response head within ${timeoutMs} ms`);
    }
  }

  /** Takes every buffered byte. */
  takeBuffered(): Uint8Array {
    const bytes = this.#buffer;
    this.#buffer = new Uint8Array(0);
    return bytes;
  }

  /** The next server frame; `null` at EOF; throws `TimeoutError` after `timeoutMs`. */
  async readFrame(timeoutMs: number): Promise<WsFrame | null> {
    const deadline = performance.now() + timeoutMs;
    for (;;) {
      const parsed = this.#parseFrame();
      if (parsed !== undefined) return parsed;
      const outcome = await this.fill(deadline);
      if (outcome === "eof") {
        if (this.#buffer.byteLength > 0) {
          throw new Error(`Connection closed inside a frame (${this.#buffer.byteLength} bytes left over)`);
        }
        return null;
      }
      if (outcome === "timeout") throw new TimeoutError(`No frame within ${timeoutMs} ms`);
    }
  }

  #parseFrame(): WsFrame | undefined {
    const b = this.#buffer;
    const at = payloadAt(b);
    if (at === undefined) return undefined;
    const masked = (b[1]! & 0x80) !== 0;
    let { offset } = at;
    const { length } = at;
    assert.ok(length <= MAX_SERVER_FRAME, `the server announced a ${length}-byte frame`);
    let key: Uint8Array | undefined;
    if (masked) {
      if (b.byteLength < offset + 4) return undefined;
      key = b.slice(offset, offset + 4);
      offset += 4;
    }
    if (b.byteLength < offset + length) return undefined;
    const payload = b.slice(offset, offset + length);
    if (key !== undefined) { for (let i = 0; i < payload.byteLength; i++) payload[i]! ^= key[i & 3]!; }
    this.#buffer = b.subarray(offset + length);
    return { fin: (b[0]! & 0x80) !== 0, rsv: (b[0]! >> 4) & 7, opcode: b[0]! & 0x0f, masked, payload };
  }

  /** Reads and discards until EOF; `false` if the connection is still open after `timeoutMs`. */
  async waitEof(timeoutMs: number): Promise<boolean> {
    const deadline = performance.now() + timeoutMs;
    for (;;) {
      this.#buffer = new Uint8Array(0);
      const outcome = await this.fill(deadline);
      if (outcome === "eof") return true;
      if (outcome === "timeout") return false;
    }
  }

  /** Closes the socket and waits for a pending read to settle. Safe to call twice. */
  async close(): Promise<void> {
    if (!this.#closed) {
      this.#closed = true;
      try {
        this.conn.close();
      } catch { /* already closed */ }
    }
    const pending = this.#pending;
    this.#pending = undefined;
    if (pending !== undefined) await pending.catch(() => null);
  }

  [Symbol.asyncDispose](): Promise<void> {
    return this.close();
  }
}

function indexOfBlankLine(b: Uint8Array): number {
  for (let i = 0; i + 3 < b.byteLength; i++) {
    if (b[i] === 13 && b[i + 1] === 10 && b[i + 2] === 13 && b[i + 3] === 10) return i;
  }
  return -1;
}

/** Asserts a valid 101 answer to a request with Sec-WebSocket-Key `key`. */
export function assertUpgraded(response: HttpHead, key: string): void {
  assert.equal(response.status, 101, `expected 101, got ${JSON.stringify(response.statusLine)}`);
  assert.ok(headerTokens(response, "upgrade").includes("websocket"), "101 without Upgrade: websocket");
  assert.ok(headerTokens(response, "connection").includes("upgrade"), "101 without Connection: upgrade");
  assert.equal(response.headers.get("sec-websocket-accept"), acceptFor(key), "wrong Sec-WebSocket-Accept");
}

export function sleep(ms: number): Promise<void> {
  return new Promise((resolve) => setTimeout(resolve, ms));
}

// --- Expectations --------------------------------------------------------------------------------------

export interface CloseExpectation {
  /** Time allowed for the Close frame and the EOF behind it, from the call. @default 2000 */
  readonly withinMs?: number;
  /**
   * Answer the server's Close with a Close (a well-behaved peer). When `false` (the default) the client stays
   * silent, so the server must close the TCP connection on its own, as RFC 6455 section 7.1.7 has it for a
   * failed connection.
   */
  readonly reply?: boolean;
}

export interface CloseResult {
  readonly code: number;
  readonly reason: Uint8Array;
  /** Frames the server sent before its Close. */
  readonly before: readonly WsFrame[];
  readonly elapsedMs: number;
}

/**
 * Expects the server to send a Close frame whose code is one of `codes` (`NO_STATUS_CODE` for an empty
 * payload), with a valid UTF-8 reason, and then to close the TCP connection, all within the bound. Frames
 * before the Close are returned; a frame after it fails.
 */
export async function expectCloseThenEof(
  client: RawClient,
  codes: number | readonly number[],
  options: CloseExpectation = {},
): Promise<CloseResult> {
  const wanted = typeof codes === "number" ? [codes] : codes;
  const withinMs = options.withinMs ?? 2000;
  const started = performance.now();
  const deadline = started + withinMs;
  const before: WsFrame[] = [];
  const seen = () => before.length === 0 ? "nothing" : before.map(describeWsFrame).join(", ");
  let close: WsFrame | null | undefined;
  while (close === undefined) {
    let f: WsFrame | null;
    try {
      f = await client.readFrame(Math.max(0, deadline - performance.now()));
    } catch (err: unknown) {
      if (err instanceof TimeoutError) {
        assert.fail(
          `expected Close ${wanted.join("|")} within ${withinMs} ms; none came (before: ${seen()})`,
        );
      }
      throw err;
    }
    if (f === null) close = null;
    else if (f.opcode === Opcode.CLOSE) close = f;
    else before.push(f);
  }
  if (close === null) {
    assert.fail(
      `expected Close ${wanted.join("|")}; the server closed TCP without a Close frame${
        client.reset ? " (reset)" : ""
      } after ${(performance.now() - started).toFixed(0)} ms (before: ${seen()})`,
    );
  }
  assert.equal(close.masked, false, "the server masked its Close frame");
  assert.ok(close.fin, "the server fragmented its Close frame");
  const { code, reason } = parseClose(close.payload);
  assert.ok(
    wanted.includes(code),
    `expected Close ${wanted.join("|")}, got ${code} (reason ${
      JSON.stringify(latin1.decode(reason))
    }; before: ${seen()})`,
  );
  assert.doesNotThrow(() => strictUtf8.decode(reason), "the Close reason is not valid UTF-8");
  if (options.reply === true) {
    await client.tryWrite(frame.close(code === NO_STATUS_CODE ? undefined : code));
  }
  let after: WsFrame | null;
  try {
    after = await client.readFrame(Math.max(0, deadline - performance.now()));
  } catch (err: unknown) {
    if (err instanceof TimeoutError) {
      assert.fail(
        `got Close ${code}, but the server did not close the TCP connection within ${withinMs} ms` +
          (options.reply === true ? "" : " (the client did not answer the Close)"),
      );
    }
    throw err;
  }
  assert.equal(after, null, `the server sent a frame after its Close: ${after && describeWsFrame(after)}`);
  return { code, reason, before, elapsedMs: performance.now() - started };
}

/** Expects the server to send a Pong with exactly `payload` next (skipping nothing). */
export async function expectPong(client: RawClient, payload: Uint8Array, timeoutMs = 2000): Promise<void> {
  const f = await client.readFrame(timeoutMs);
  assert.ok(f !== null, "the server closed the connection instead of answering the Ping");
  assert.equal(f.opcode, Opcode.PONG, `expected Pong, got ${describeWsFrame(f)}`);
  assert.ok(f.fin && !f.masked && f.rsv === 0, `malformed Pong: ${describeWsFrame(f)}`);
  assert.deepEqual(f.payload, payload);
}

/** Expects no frame and no EOF for `ms`. */
export async function expectSilence(client: RawClient, ms: number): Promise<void> {
  try {
    const f = await client.readFrame(ms);
    assert.fail(f === null ? "the server closed the connection" : `unexpected frame: ${describeWsFrame(f)}`);
  } catch (err: unknown) {
    if (!(err instanceof TimeoutError)) throw err;
  }
}
