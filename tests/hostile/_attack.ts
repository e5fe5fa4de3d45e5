/**
 * Harness for the hostile-load cases (issue 11): a relay subprocess with a lowered descriptor limit, attacker
 * sockets from other loopback addresses, hand-made WebSocket frames, and bounded polling and sampling.
 * @module
 */
import net from "node:net";
import { type RelayProcess, type SpawnOptions, spawnRelay } from "../_process.ts";
import { RawWebSocket } from "../_raw_ws.ts";
import {
  delay,
  KIB,
  LOOPBACK,
  MuxClient,
  muxUrl,
  procStats,
  startTcpServer,
  type TcpServer,
  TOKEN,
  withTimeout,
} from "../_util.ts";
import {
  decodeServerFrame,
  encodeData,
  encodeOpen,
  FrameType,
  type ServerFrame,
} from "../../src/protocol/mod.ts";
import { CloseCode, Opcode } from "../../src/transport/frames.ts";
import { encodeFrame } from "../transport/_frames.ts";

/** How to start a relay with a lowered open-file limit. */
export interface LimitedRelayOptions extends SpawnOptions {
  /** `ulimit -n` (soft and hard) of the relay process only. */
  readonly fdLimit: number;
}

/** A relay subprocess with a lowered open-file limit. */
export interface LimitedRelay extends RelayProcess {
  readonly fdLimit: number;
}

/**
 * Environment of a relay under attack: known token, loopback targets allowed. Logs stay at the production
 * default (`info`: `listening` is an info line, and the figures include the cost of logging).
 */
export function hostileEnv(extra: Record<string, string> = {}): Record<string, string> {
  return { AERO_PROXY_AUTH_TOKEN: TOKEN, AERO_PROXY_ALLOW_PRIVATE_IPS: "1", ...extra };
}

/** The variable that points the cases at another checkout of the relay (for a before/after comparison). */
export const RELAY_DIR_VARIABLE = "AERO_HOSTILE_RELAY_DIR";

/**
 * The checkout whose `main.ts` the cases start: `$AERO_HOSTILE_RELAY_DIR` when set (and the test may read it),
 * else this one (the working directory). Lets the same cases run against, say, `git archive HEAD` unpacked elsewhere.
 */
export function relayDir(): string | undefined {
  if (Deno.permissions.querySync({ name: "env", variable: RELAY_DIR_VARIABLE }).state !== "granted") {
    return undefined;
  }
  const dir = Deno.env.get(RELAY_DIR_VARIABLE);
  return dir === undefined || dir === "" ? undefined : dir;
}

/** The socket budget the relay derives from its descriptor limit when `AERO_PROXY_MAX_SOCKETS` is unset. */
export function autoSocketBudget(fdLimit: number): number {
  return Math.floor(fdLimit * 0.9) - 64;
}

/**
 * Starts the relay through the start task's command line (network narrowed to 127.0.0.0/8) with only the relay
 * limited to `fdLimit` descriptors (see {@linkcode SpawnOptions.openFiles}; the pid is the relay's own), in
 * {@linkcode relayDir}, keeping a bounded tail of its output; resolves once it logged `listening`.
 */
export async function spawnLimitedRelay(
  env: Record<string, string>,
  options: LimitedRelayOptions,
): Promise<LimitedRelay> {
  const { fdLimit, ...rest } = options;
  const relay = await spawnRelay(env, [], {
    relayDir: relayDir(),
    maxLogLines: 10_000,
    maxStderrChars: 64 * KIB,
    ...rest,
    openFiles: fdLimit,
  });
  return { ...relay, fdLimit };
}

/** Throws (with the relay's last stderr) if the relay process has exited. */
export function assertAlive(relay: RelayProcess, when: string): void {
  const status = relay.exited();
  if (status !== undefined) {
    throw new Error(
      `The relay died ${when}: exit code ${status.code}, signal ${status.signal ?? "none"}; stderr tail: ` +
        relay.stderr().slice(-2000),
    );
  }
}

/** The relay's open-file limits as the kernel sees them (soft, hard), from `/proc/<pid>/limits`. */
export async function fdLimitsOf(pid: number): Promise<{ soft: number; hard: number }> {
  const output = await new Deno.Command("sh", {
    args: ["-c", `grep 'Max open files' /proc/${pid}/limits`],
    stdout: "piped",
    stderr: "piped",
  }).output();
  const match = /Max open files\s+(\d+)\s+(\d+)/.exec(new TextDecoder().decode(output.stdout));
  if (match === null) throw new Error(`Cannot read the open-file limit of process ${pid}`);
  return { soft: Number(match[1]), hard: Number(match[2]) };
}

/** The relay's RSS once it has been idle a moment (median of three samples). */
export async function idleRss(pid: number): Promise<number> {
  await delay(300);
  const samples: number[] = [];
  for (let i = 0; i < 3; i++) {
    samples.push((await procStats(pid)).rss);
    await delay(50);
  }
  return samples.sort((a, b) => a - b)[1]!;
}

/** Milliseconds with no decimals. */
export function ms(value: number): string {
  return `${Math.round(value)} ms`;
}

// ---------------------------------------------------------------------------------------------------------
// Attacker TCP connections from another loopback address (node:net, for `localAddress`).

/** What happened to one attacker connection. */
export interface AttackConn {
  /** When the TCP connection was established (performance.now()), or `undefined` if it never was. */
  readonly connectedAt: number | undefined;
  /** When the relay ended the connection (EOF, reset), or `undefined` while open / if we ended it. */
  readonly closedAt: number | undefined;
  /** The HTTP status in the relay's answer, if any arrived. */
  readonly status: number | undefined;
  /** The connect or socket error code (`ECONNRESET`, `ECONNREFUSED`, ...). */
  readonly error: string | undefined;
  /** Resolves once the socket is fully closed, by either side. */
  readonly done: Promise<void>;
  write(text: string): void;
  /** Ends the connection from our side (counts as still open if the relay had not closed it). */
  destroy(): void;
}

/**
 * Opens a TCP connection to `127.0.0.1:port` from `localAddress` and records when and how the relay ends it.
 * Resolves once connected or failed; never rejects.
 */
export function connectFrom(port: number, localAddress: string): Promise<AttackConn> {
  const socket = net.connect({ host: "127.0.0.1", port, localAddress });
  let connectedAt: number | undefined;
  let closedAt: number | undefined;
  let error: string | undefined;
  let head = "";
  let ours = false;
  const { promise: done, resolve: finished } = Promise.withResolvers<void>();
  const { promise: ready, resolve: settle } = Promise.withResolvers<AttackConn>();
  const conn: AttackConn = {
    get connectedAt() {
      return connectedAt;
    },
    get closedAt() {
      return closedAt;
    },
    get status() {
      const match = /^HTTP\/1\.[01] (\d{3})/.exec(head);
      return match === null ? undefined : Number(match[1]);
    },
    get error() {
      return error;
    },
    done,
    write(text: string) {
      if (!socket.destroyed) socket.write(text);
    },
    destroy() {
      if (closedAt === undefined) ours = true;
      socket.destroy();
    },
  };
  socket.setNoDelay(true);
  socket.on("connect", () => {
    connectedAt = performance.now();
    settle(conn);
  });
  socket.on("data", (chunk: Uint8Array) => {
    if (head.length < 256) head += new TextDecoder().decode(chunk).slice(0, 256);
  });
  socket.on("end", () => {
    if (!ours && closedAt === undefined) closedAt = performance.now();
    socket.destroy();
  });
  socket.on("error", (err: NodeJS.ErrnoException) => {
    error ??= err.code ?? err.message;
    if (!ours && closedAt === undefined && connectedAt !== undefined) closedAt = performance.now();
  });
  socket.on("close", () => {
    if (!ours && closedAt === undefined && connectedAt !== undefined) closedAt = performance.now();
    settle(conn);
    finished();
  });
  return ready;
}

/** How an attacker connection behaves once connected. */
export type FloodBehaviour = "idle" | "slowHeader";

export interface FloodOptions {
  /** Source address of every connection (another loopback address than the real client's). */
  readonly localAddress: string;
  /** Connections opened at once. */
  readonly count: number;
  readonly behaviour: FloodBehaviour;
  /** `slowHeader`: one byte of half a request head every this many ms. @default 1000 */
  readonly byteIntervalMs?: number;
}

/** A set of attacker connections; dispose to end the ones the relay left open. */
export interface Flood extends AsyncDisposable {
  readonly conns: readonly AttackConn[];
  readonly startedAt: number;
}

/**
 * Opens `count` connections from `localAddress` at once. `idle` ones send nothing; `slowHeader` ones send half
 * of a valid upgrade request head, one byte per `byteIntervalMs`, never the blank line that ends it.
 */
export async function startFlood(port: number, options: FloodOptions): Promise<Flood> {
  const startedAt = performance.now();
  const conns = await Promise.all(
    Array.from({ length: options.count }, () => connectFrom(port, options.localAddress)),
  );
  const timers: ReturnType<typeof setInterval>[] = [];
  if (options.behaviour === "slowHeader") {
    const head =
      `GET ${new URL(muxUrl(port)).pathname}?token=${TOKEN} HTTP/1.1\r\nHost: 127.0.0.1:${port}\r\n` +
      "Upgrade: websocket\r\nConnection: Upgrade\r\n";
    const half = head.slice(0, Math.floor(head.length / 2));
    for (const conn of conns) {
      let sent = 0;
      const timer = setInterval(() => {
        if (conn.closedAt !== undefined || sent >= half.length) return;
        conn.write(half[sent++]!);
      }, options.byteIntervalMs ?? 1000);
      timers.push(timer);
      conn.write(half[sent++]!);
    }
  }
  return {
    conns,
    startedAt,
    async [Symbol.asyncDispose]() {
      for (const timer of timers) clearInterval(timer);
      for (const conn of conns) conn.destroy();
      await Promise.all(conns.map((c) => c.done));
    },
  };
}

/** A raw HTTP/1.1 GET over a fresh connection from 127.0.0.1; resolves with the status code. */
export async function httpStatus(port: number, path: string, timeoutMs = 5000): Promise<number> {
  const conn = await Deno.connect({ hostname: "127.0.0.1", port });
  try {
    return await withTimeout(
      (async () => {
        const request = `GET ${path} HTTP/1.1\r\nHost: 127.0.0.1:${port}\r\nConnection: close\r\n\r\n`;
        await writeAll(conn, new TextEncoder().encode(request));
        let text = "";
        const buf = new Uint8Array(4096);
        while (!/\r\n/.test(text)) {
          const n = await conn.read(buf);
          if (n === null) break;
          text += new TextDecoder().decode(buf.subarray(0, n));
        }
        const match = /^HTTP\/1\.[01] (\d{3})/.exec(text);
        if (match === null) {
          throw new Error(`No HTTP status from ${path}: ${JSON.stringify(text.slice(0, 100))}`);
        }
        return Number(match[1]);
      })(),
      timeoutMs,
      `GET ${path}`,
    );
  } finally {
    conn.close();
  }
}

/**
 * A real client's whole session from 127.0.0.1: upgrade, OPEN to the echo server, 1 KiB round trip, CLOSE.
 * Resolves with the time it took; rejects if any step fails or takes longer than `timeoutMs`.
 */
export async function echoSession(relayPort: number, echoPort: number, timeoutMs = 5000): Promise<number> {
  const started = performance.now();
  await withTimeout(
    (async () => {
      await using client = await MuxClient.connect(muxUrl(relayPort));
      await client.open(1, echoPort, LOOPBACK);
      const ping = crypto.getRandomValues(new Uint8Array(1024));
      client.sendData(1, ping);
      const pong = await client.readBytes(1, ping.byteLength, timeoutMs);
      if (!pong.every((b, i) => b === ping[i])) throw new Error("The echo came back different");
      client.sendClose(1);
      await client.next(1, timeoutMs);
    })(),
    timeoutMs,
    "a real client's echo session",
  );
  return performance.now() - started;
}

// ---------------------------------------------------------------------------------------------------------
// Hand-made WebSocket frames (client side: masked). A zero masking key leaves the payload as written, which a
// server cannot tell from any other key.

/** A zero masking key: the payload goes out as written. */
const ZERO_KEY = new Uint8Array(4);

/** The header of one client frame announcing `length` payload bytes, with a zero masking key. */
export function frameHeader(length: number, options: { opcode?: number; fin?: boolean } = {}): Uint8Array {
  return encodeFrame({
    opcode: options.opcode ?? Opcode.BINARY,
    fin: options.fin ?? true,
    declaredLength: length,
    mask: ZERO_KEY,
  });
}

/** One whole client frame around `payload` (zero masking key). */
export function frame(payload: Uint8Array, options: { opcode?: number; fin?: boolean } = {}): Uint8Array {
  return encodeFrame({
    opcode: options.opcode ?? Opcode.BINARY,
    fin: options.fin ?? true,
    payload,
    mask: ZERO_KEY,
  });
}

/** `count` copies of one small frame back to back, for floods of tiny frames. */
export function repeatFrame(one: Uint8Array, count: number): Uint8Array {
  const out = new Uint8Array(one.byteLength * count);
  for (let i = 0; i < count; i++) out.set(one, i * one.byteLength);
  return out;
}

/** The WebSocket frame of one seed DATA frame carrying `data` on stream `id`. */
export function dataFrame(id: number, data: Uint8Array): Uint8Array {
  return frame(encodeData(id, data));
}

export async function writeAll(conn: Deno.Conn, bytes: Uint8Array): Promise<void> {
  for (let off = 0; off < bytes.byteLength;) off += await conn.write(bytes.subarray(off));
}

/** The status code in a close frame's payload (1005 when it carries none). */
export function closeCode(payload: Uint8Array): number {
  return payload.byteLength >= 2 ? (payload[0]! << 8) | payload[1]! : CloseCode.NO_STATUS;
}

/** Opens a raw WebSocket session from 127.0.0.1 to the relay's mux endpoint. */
export function rawSession(port: number): Promise<RawWebSocket> {
  const url = new URL(muxUrl(port));
  return RawWebSocket.connect(port, `${url.pathname}${url.search}`);
}

/** Sends one seed OPEN of stream `id` to `127.0.0.1:port` over a raw session. */
export function sendOpen(ws: RawWebSocket, id: number, port: number): Promise<void> {
  return writeAll(ws.conn, frame(encodeOpen(id, LOOPBACK, port)));
}

/** An ERROR frame as a raw session saw it. */
export interface SeenError {
  readonly id: number;
  readonly code: number;
  readonly message: string;
  readonly at: number;
}

/**
 * Reads a raw session in the background and records what the relay sent: OPEN acknowledgements, DATA bytes
 * per id, seed CLOSE and ERROR frames, the WebSocket close code and when the connection ended. Reading can be
 * stopped (a client that no longer reads); {@linkcode abort} ends the connection and the loop.
 */
export class RawWatch implements AsyncDisposable {
  readonly ws: RawWebSocket;
  readonly acks = new Map<number, number>();
  readonly seedCloses = new Map<number, number>();
  readonly errors: SeenError[] = [];
  readonly dataBytes = new Map<number, number>();
  totalData = 0;
  /** The code of the relay's WebSocket close frame, and when it arrived. */
  closeCode: number | undefined;
  closeAt: number | undefined;
  /** When the TCP connection ended (EOF or error) while we were reading. */
  endedAt: number | undefined;
  readError: string | undefined;
  readonly finished: Promise<void>;
  #reading = true;
  #gate = Promise.withResolvers<void>();
  #aborted = false;
  readonly #onFrame: ((frame: ServerFrame) => void) | undefined;

  constructor(ws: RawWebSocket, onFrame?: (frame: ServerFrame) => void) {
    this.ws = ws;
    this.#onFrame = onFrame;
    this.finished = this.#loop();
  }

  /** Whether the relay ended the session (close frame or end of the connection). */
  get ended(): boolean {
    return this.closeAt !== undefined || this.endedAt !== undefined;
  }

  async #loop(): Promise<void> {
    try {
      for (;;) {
        if (!this.#reading) await this.#gate.promise;
        if (this.#aborted) return;
        const raw = await this.ws.read();
        const now = performance.now();
        if (raw === null) break;
        if (raw.opcode === Opcode.CLOSE) {
          this.closeCode ??= closeCode(raw.payload);
          this.closeAt ??= now;
          continue;
        }
        if (raw.opcode !== Opcode.BINARY) continue;
        let decoded: ServerFrame;
        try {
          decoded = decodeServerFrame(raw.payload);
        } catch {
          continue;
        }
        this.#record(decoded, now);
      }
    } catch (err: unknown) {
      if (this.#aborted) return;
      this.readError = err instanceof Error ? `${err.name}: ${err.message}` : String(err);
    }
    this.endedAt ??= performance.now();
  }

  #record(frame: ServerFrame, now: number): void {
    const id = frame.connectionId;
    switch (frame.type) {
      case FrameType.OPEN:
        this.acks.set(id, now);
        break;
      case FrameType.DATA:
        this.dataBytes.set(id, (this.dataBytes.get(id) ?? 0) + frame.data.byteLength);
        this.totalData += frame.data.byteLength;
        break;
      case FrameType.CLOSE:
        this.seedCloses.set(id, now);
        break;
      case FrameType.ERROR:
        this.errors.push({ id, code: frame.code, message: frame.message, at: now });
        break;
    }
    this.#onFrame?.(frame);
  }

  /** Stops reading after the read in flight (at most 256 KiB more); the kernel buffers fill up behind it. */
  stopReading(): void {
    if (!this.#reading) return;
    this.#reading = false;
    this.#gate = Promise.withResolvers<void>();
  }

  resumeReading(): void {
    this.#reading = true;
    this.#gate.resolve();
  }

  /** The first ERROR seen on `id`. */
  errorOn(id: number): SeenError | undefined {
    return this.errors.find((e) => e.id === id);
  }

  /** Drops the connection and waits for the reading loop to end. */
  async abort(): Promise<void> {
    this.#aborted = true;
    this.ws.abort();
    this.#gate.resolve();
    await this.finished;
  }

  [Symbol.asyncDispose](): Promise<void> {
    return this.abort();
  }
}

/**
 * A TCP target whose connects never complete: a listener with a backlog of one that never accepts, its accept
 * queue filled by the test, so the kernel drops every further SYN and the relay's dials hang until its connect
 * timeout. Nothing the relay queues for such a stream can leave the relay (no kernel buffer absorbs it).
 */
export interface BlackholeTarget extends AsyncDisposable {
  readonly port: number;
}

export async function startBlackholeTarget(): Promise<BlackholeTarget> {
  const listener = Deno.listen({ hostname: "127.0.0.1", port: 0, tcpBacklog: 1 });
  const port = (listener.addr as Deno.NetAddr).port;
  const fillers: Deno.Conn[] = [];
  let full = false;
  try {
    while (fillers.length < 64) {
      try {
        fillers.push(await Deno.connect({ hostname: "127.0.0.1", port, signal: AbortSignal.timeout(300) }));
      } catch (err: unknown) {
        if (!(err instanceof DOMException && err.name === "TimeoutError")) throw err;
        full = true;
        break;
      }
    }
    if (!full) {
      throw new Error(`Cannot fill the accept queue of port ${port} with ${fillers.length} connections`);
    }
  } catch (err: unknown) {
    for (const conn of fillers) conn.close();
    listener.close();
    throw err;
  }
  return {
    port,
    [Symbol.asyncDispose]() {
      for (const conn of fillers) conn.close();
      listener.close();
      return Promise.resolve();
    },
  };
}

/**
 * A target that accepts connections and sends `total` bytes on each, but only once {@linkcode release} is
 * called: streams can be opened first and the download started later, all at once.
 */
export interface GatedSource extends TcpServer {
  /** Bytes the kernel has taken from this server so far. */
  readonly sent: number;
  release(): void;
}

export function startGatedSource(total: number): GatedSource {
  const gate = Promise.withResolvers<void>();
  let sent = 0;
  const server = startTcpServer(async (conn, signal) => {
    await gate.promise;
    const block = new Uint8Array(64 * KIB).fill(0x63);
    for (let left = total; left > 0 && !signal.aborted;) {
      const n = await conn.write(block.subarray(0, Math.min(left, block.byteLength)));
      sent += n;
      left -= n;
    }
  });
  return {
    port: server.port,
    get accepted() {
      return server.accepted;
    },
    get sent() {
      return sent;
    },
    release: () => gate.resolve(),
    [Symbol.asyncDispose]() {
      const stopped = server[Symbol.asyncDispose](); // aborts the signal before its first await
      gate.resolve(); // connections still waiting for the release see the abort and end
      return stopped;
    },
  };
}

/** One TCP connection's kernel queues, from `ss`. */
export interface SocketQueue {
  readonly localPort: number;
  readonly peerPort: number;
  /** Bytes received by the kernel that the owner has not read. */
  readonly recvQ: number;
  /** Bytes written by the owner that the peer has not acknowledged (on loopback: not yet taken in). */
  readonly sendQ: number;
}

/** The kernel queues of every loopback TCP connection from or to `port`, listeners left out (`ss -Htan`). */
export async function socketQueues(port: number): Promise<SocketQueue[]> {
  const output = await new Deno.Command("ss", {
    args: ["-Htan", `( sport = :${port} or dport = :${port} )`],
    stdout: "piped",
    stderr: "piped",
  }).output();
  if (!output.success) throw new Error(`ss failed: ${new TextDecoder().decode(output.stderr)}`);
  const rows: SocketQueue[] = [];
  for (const line of new TextDecoder().decode(output.stdout).split("\n")) {
    // State Recv-Q Send-Q Local:Port Peer:Port
    const words = line.trim().split(/\s+/);
    if (words.length < 5 || words[0] === "LISTEN") continue;
    const portOf = (address: string) => Number(address.slice(address.lastIndexOf(":") + 1));
    rows.push({
      recvQ: Number(words[1]),
      sendQ: Number(words[2]),
      localPort: portOf(words[3]!),
      peerPort: portOf(words[4]!),
    });
  }
  return rows;
}
