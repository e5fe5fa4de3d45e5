/**
 * Test fixtures: relays, target servers and clients, all on 127.0.0.1, all `AsyncDisposable`.
 * @module
 */
import assert from "node:assert/strict";
import { createHash } from "node:crypto";
import { type Config, defaultConfig } from "../src/config.ts";
import {
  decodeServerFrame,
  encodeClose,
  encodeData,
  encodeOpen,
  FrameType,
  MUX_PATH,
  type ServerFrame,
} from "../src/protocol/mod.ts";
import { type RunningRelay, serveRelay } from "../src/server.ts";

export const TOKEN = "test-token-0123456789abcdef";
export const KIB = 1024;
export const MIB = 1024 * KIB;
export const LOOPBACK = [127, 0, 0, 1] as const;

/** A relay in this process on a free port, loopback destinations allowed. */
export function startRelay(overrides: Partial<Config> = {}): RunningRelay {
  return serveRelay(
    defaultConfig({ port: 0, authTokens: [TOKEN], allowPrivateIps: true, logLevel: "warning", ...overrides }),
  );
}

/** The relay's WebSocket URL; `token: null` leaves the token out. */
export function muxUrl(port: number, token: string | null = TOKEN): string {
  return `ws://127.0.0.1:${port}${MUX_PATH}${token === null ? "" : `?token=${encodeURIComponent(token)}`}`;
}

/** A TCP server on a free loopback port; `onConn` owns each accepted connection until it returns. */
export interface TcpServer extends AsyncDisposable {
  readonly port: number;
  /** Connections accepted so far. */
  readonly accepted: number;
}

export function startTcpServer(
  onConn: (conn: Deno.TcpConn, signal: AbortSignal) => Promise<void>,
): TcpServer {
  const listener = Deno.listen({ hostname: "127.0.0.1", port: 0 });
  const stop = new AbortController();
  const conns = new Set<Deno.TcpConn>();
  const tasks = new Set<Promise<void>>();
  let accepted = 0;
  const acceptLoop = (async () => {
    try {
      for await (const conn of listener) {
        accepted++;
        conns.add(conn);
        try {
          conn.setNoDelay(true);
        } catch { /* reset already */ }
        const task = onConn(conn, stop.signal).catch(() => {}).finally(() => {
          conns.delete(conn);
          try {
            conn.close();
          } catch { /* already closed */ }
        });
        tasks.add(task);
        void task.finally(() => tasks.delete(task));
      }
    } catch { /* listener closed */ }
  })();
  return {
    port: (listener.addr as Deno.NetAddr).port,
    get accepted() {
      return accepted;
    },
    async [Symbol.asyncDispose]() {
      stop.abort();
      listener.close();
      await acceptLoop;
      for (const conn of conns) {
        try {
          conn.close();
        } catch { /* already closed */ }
      }
      await Promise.allSettled([...tasks]);
    },
  };
}

/** Echoes every byte back. */
export function startEchoServer(): TcpServer {
  return startTcpServer(async (conn) => {
    const buf = new Uint8Array(64 * 1024);
    for (;;) {
      const n = await conn.read(buf);
      if (n === null) return;
      for (let off = 0; off < n;) off += await conn.write(buf.subarray(off, n));
    }
  });
}

/** Deterministic pseudo-random bytes (xorshift32), the same for the same seed. */
export class PatternStream {
  #state: number;
  constructor(seed = 0x9e3779b9) {
    this.#state = seed >>> 0 || 1;
  }
  fill(target: Uint8Array): Uint8Array {
    const words = new Uint32Array(target.buffer, target.byteOffset, target.byteLength >>> 2);
    let x = this.#state;
    for (let i = 0; i < words.length; i++) {
      x ^= x << 13;
      x ^= x >>> 17;
      x ^= x << 5;
      words[i] = x >>> 0;
    }
    for (let i = words.length * 4; i < target.byteLength; i++) {
      x ^= x << 13;
      x ^= x >>> 17;
      x ^= x << 5;
      target[i] = x & 0xff;
    }
    this.#state = x >>> 0;
    return target;
  }
}

/** SHA-256 (hex) of `total` bytes of the pattern, computed in 1 MiB steps. */
export function patternDigest(total: number, seed?: number): string {
  const hash = createHash("sha256");
  const pattern = new PatternStream(seed);
  const block = new Uint8Array(1 << 20);
  for (let left = total; left > 0; left -= block.byteLength) {
    hash.update(pattern.fill(block.subarray(0, Math.min(left, block.byteLength))));
  }
  return hash.digest("hex");
}

/** Sends `total` pattern bytes to every connection, then closes it. `sent` counts bytes accepted by the kernel. */
export function startSourceServer(total: number, seed?: number): TcpServer & { readonly sent: number } {
  let sent = 0;
  const server = startTcpServer(async (conn) => {
    const pattern = new PatternStream(seed);
    const block = new Uint8Array(256 * 1024);
    for (let left = total; left > 0;) {
      const chunk = pattern.fill(block.subarray(0, Math.min(left, block.byteLength)));
      for (let off = 0; off < chunk.byteLength;) {
        const n = await conn.write(chunk.subarray(off));
        off += n;
        sent += n;
      }
      left -= chunk.byteLength;
    }
  });
  // A getter, not Object.assign: that would copy the value once, and `sent` would read 0 forever.
  return Object.defineProperty(server, "sent", { get: () => sent, enumerable: true }) as
    & TcpServer
    & { readonly sent: number };
}

/** Accepts connections and reads nothing until disposed (a target that stopped reading). */
export function startStalledServer(): TcpServer {
  return startTcpServer((_conn, signal) =>
    new Promise((resolve) => signal.addEventListener("abort", () => resolve()))
  );
}

/** Reads everything into memory and reports it when the peer closes. */
export function startSinkServer(): TcpServer & { readonly received: Promise<Uint8Array> } {
  const { promise, resolve } = Promise.withResolvers<Uint8Array>();
  const server = startTcpServer(async (conn) => {
    const parts: Uint8Array[] = [];
    const buf = new Uint8Array(64 * 1024);
    for (;;) {
      const n = await conn.read(buf);
      if (n === null) break;
      parts.push(buf.slice(0, n));
    }
    const all = new Uint8Array(parts.reduce((s, p) => s + p.byteLength, 0));
    let off = 0;
    for (const p of parts) {
      all.set(p, off);
      off += p.byteLength;
    }
    resolve(all);
  });
  return Object.assign(server, { received: promise });
}

/** A free loopback port with nothing listening on it (connections are refused). */
export function closedPort(): number {
  const listener = Deno.listen({ hostname: "127.0.0.1", port: 0 });
  const port = (listener.addr as Deno.NetAddr).port;
  listener.close();
  return port;
}

export function withTimeout<T>(promise: Promise<T>, ms: number, what: string): Promise<T> {
  let timer: ReturnType<typeof setTimeout> | undefined;
  const timeout = new Promise<never>((_, reject) => {
    timer = setTimeout(() => reject(new Error(`Timed out after ${ms} ms waiting for ${what}`)), ms);
  });
  return Promise.race([promise, timeout]).finally(() => clearTimeout(timer));
}

export function delay(ms: number): Promise<void> {
  return new Promise((resolve) => setTimeout(resolve, ms));
}

type Waiter = { resolve: (f: ServerFrame) => void; reject: (e: Error) => void };

/**
 * A test client over a real WebSocket that writes raw protocol frames and collects decoded replies per id.
 */
export class MuxClient implements AsyncDisposable {
  readonly ws: WebSocket;
  readonly closed: Promise<CloseEvent>;
  #queues = new Map<number, ServerFrame[]>();
  #waiters = new Map<number, Waiter[]>();
  #handlers = new Map<number, (frame: ServerFrame) => void>();
  #closeEvent: CloseEvent | undefined;
  /** Frames received so far, on any id. */
  received = 0;

  private constructor(ws: WebSocket) {
    this.ws = ws;
    const { promise, resolve } = Promise.withResolvers<CloseEvent>();
    this.closed = promise;
    ws.onmessage = (event) => {
      const frame = decodeServerFrame(new Uint8Array(event.data as ArrayBuffer));
      this.received++;
      const handler = this.#handlers.get(frame.connectionId);
      if (handler !== undefined) return handler(frame);
      const waiter = this.#waiters.get(frame.connectionId)?.shift();
      if (waiter !== undefined) return waiter.resolve(frame);
      const queue = this.#queues.get(frame.connectionId) ?? [];
      queue.push(frame);
      this.#queues.set(frame.connectionId, queue);
    };
    ws.onclose = (event) => {
      this.#closeEvent = event;
      for (const waiters of this.#waiters.values()) {
        for (const w of waiters) w.reject(new Error(`WebSocket closed (${event.code} ${event.reason})`));
      }
      this.#waiters.clear();
      resolve(event);
    };
  }

  /** Opens a WebSocket to `url`; rejects if the relay refuses the upgrade. */
  static async connect(url: string, protocols?: string | string[]): Promise<MuxClient> {
    const ws = new WebSocket(url, protocols);
    ws.binaryType = "arraybuffer";
    const client = new MuxClient(ws);
    const { promise, resolve, reject } = Promise.withResolvers<void>();
    ws.onopen = () => resolve();
    ws.onerror = (event) =>
      reject(new Error(`WebSocket failed: ${(event as ErrorEvent).message ?? "error"}`));
    try {
      await promise;
    } catch (err) {
      await client.closed;
      throw err;
    }
    ws.onerror = null;
    return client;
  }

  send(frame: Uint8Array): void {
    this.ws.send(frame);
  }

  /** The next frame on `id` (0 for session frames). */
  next(id: number, timeoutMs = 5000): Promise<ServerFrame> {
    const queued = this.#queues.get(id)?.shift();
    if (queued !== undefined) return Promise.resolve(queued);
    if (this.#closeEvent !== undefined) return Promise.reject(new Error("WebSocket is closed"));
    const { promise, resolve, reject } = Promise.withResolvers<ServerFrame>();
    const waiters = this.#waiters.get(id) ?? [];
    const waiter = { resolve, reject };
    waiters.push(waiter);
    this.#waiters.set(id, waiters);
    let timer: ReturnType<typeof setTimeout> | undefined;
    const timeout = new Promise<never>((_, rej) => {
      timer = setTimeout(() => {
        const list = this.#waiters.get(id);
        const index = list?.indexOf(waiter) ?? -1;
        if (index >= 0) list!.splice(index, 1);
        rej(new Error(`Timed out after ${timeoutMs} ms waiting for a frame on id ${id}`));
      }, timeoutMs);
    });
    return Promise.race([promise, timeout]).finally(() => clearTimeout(timer));
  }

  /** Frames already received on `id` and not yet taken. */
  pending(id: number): readonly ServerFrame[] {
    return this.#queues.get(id) ?? [];
  }

  /** Routes every later frame on `id` to `handler` instead of the queue. */
  onFrames(id: number, handler: (frame: ServerFrame) => void): void {
    for (const frame of this.#queues.get(id) ?? []) handler(frame);
    this.#queues.delete(id);
    this.#handlers.set(id, handler);
  }

  /** Sends OPEN and waits for the acknowledgement. */
  async open(id: number, port: number, ip: readonly number[] = LOOPBACK): Promise<void> {
    this.send(encodeOpen(id, ip, port));
    const frame = await this.next(id);
    if (frame.type !== FrameType.OPEN) {
      throw new Error(`Expected OPEN ack on id ${id}, got ${JSON.stringify(describeFrame(frame))}`);
    }
  }

  sendData(id: number, data: Uint8Array): void {
    this.send(encodeData(id, data));
  }

  sendClose(id: number): void {
    this.send(encodeClose(id));
  }

  /** Collects DATA on `id` until CLOSE; throws on ERROR. */
  async readUntilClose(id: number, timeoutMs = 10_000): Promise<Uint8Array> {
    const parts: Uint8Array[] = [];
    for (;;) {
      const frame = await this.next(id, timeoutMs);
      if (frame.type === FrameType.DATA) parts.push(frame.data);
      else if (frame.type === FrameType.CLOSE) break;
      else throw new Error(`Unexpected frame on id ${id}: ${JSON.stringify(describeFrame(frame))}`);
    }
    return concat(parts);
  }

  /** Reads DATA on `id` until `length` bytes arrived. */
  async readBytes(id: number, length: number, timeoutMs = 10_000): Promise<Uint8Array> {
    const parts: Uint8Array[] = [];
    let have = 0;
    while (have < length) {
      const frame = await this.next(id, timeoutMs);
      if (frame.type !== FrameType.DATA) {
        throw new Error(`Expected DATA on id ${id}, got ${JSON.stringify(describeFrame(frame))}`);
      }
      parts.push(frame.data);
      have += frame.data.byteLength;
    }
    return concat(parts);
  }

  async [Symbol.asyncDispose](): Promise<void> {
    if (this.ws.readyState === WebSocket.CONNECTING || this.ws.readyState === WebSocket.OPEN) this.ws.close();
    await this.closed;
  }
}

export function concat(parts: readonly Uint8Array[]): Uint8Array {
  const out = new Uint8Array(parts.reduce((sum, p) => sum + p.byteLength, 0));
  let off = 0;
  for (const p of parts) {
    out.set(p, off);
    off += p.byteLength;
  }
  return out;
}

/** A printable summary of a frame, for assertion messages. */
export function describeFrame(frame: ServerFrame): Record<string, unknown> {
  switch (frame.type) {
    case FrameType.DATA:
      return { type: "DATA", id: frame.connectionId, bytes: frame.data.byteLength };
    case FrameType.ERROR:
      return { type: "ERROR", id: frame.connectionId, code: frame.code, message: frame.message };
    case FrameType.OPEN:
      return { type: "OPEN", id: frame.connectionId };
    case FrameType.CLOSE:
      return { type: "CLOSE", id: frame.connectionId };
  }
}

/**
 * Resident set size (bytes) and open file descriptors of a process. Deno lets only --allow-all read /proc, so
 * this asks `ps` and `ls` in a subprocess instead.
 */
export async function procStats(pid: number = Deno.pid): Promise<{ rss: number; fds: number }> {
  const output = await new Deno.Command("sh", {
    args: ["-c", `ps -o rss= -p ${pid} && ls /proc/${pid}/fd | wc -l`],
    stdout: "piped",
    stderr: "piped",
  }).output();
  const [rss, fds] = new TextDecoder().decode(output.stdout).trim().split(/\s+/).map(Number);
  if (!output.success || rss === undefined || fds === undefined || Number.isNaN(rss) || Number.isNaN(fds)) {
    throw new Error(`Cannot read stats of process ${pid}: ${new TextDecoder().decode(output.stderr)}`);
  }
  return { rss: rss * 1024, fds };
}

/** Samples a process's RSS and open file descriptors in the background until stopped; keeps the peaks. */
export class StatsSampler implements AsyncDisposable {
  peakRss = 0;
  peakFds = 0;
  lastRss = 0;
  lastFds = 0;
  samples = 0;
  readonly #loop: Promise<void>;
  #stopped = false;

  constructor(pid: number, intervalMs = 50) {
    this.#loop = (async () => {
      while (!this.#stopped) {
        try {
          const { rss, fds } = await procStats(pid);
          this.lastRss = rss;
          this.lastFds = fds;
          this.peakRss = Math.max(this.peakRss, rss);
          this.peakFds = Math.max(this.peakFds, fds);
          this.samples++;
        } catch {
          return; // the process exited between two samples
        }
        await delay(intervalMs);
      }
    })();
  }

  /** Stops sampling and waits for the last sample. */
  async stop(): Promise<void> {
    this.#stopped = true;
    await this.#loop;
  }

  [Symbol.asyncDispose](): Promise<void> {
    return this.stop();
  }
}

/** `bytes` as mebibytes with one decimal. */
export function mib(bytes: number): string {
  return (bytes / MIB).toFixed(1);
}

/** Polls `check` every `intervalMs` until it holds or `timeoutMs` passes; returns whether it held. */
export async function waitUntil(
  check: () => boolean | Promise<boolean>,
  options: { timeoutMs: number; intervalMs?: number },
): Promise<boolean> {
  const deadline = performance.now() + options.timeoutMs;
  for (;;) {
    if (await check()) return true;
    if (performance.now() >= deadline) return false;
    await delay(options.intervalMs ?? 20);
  }
}

/** Resident set size of a process, in bytes. */
export async function rssOf(pid: number = Deno.pid): Promise<number> {
  return (await procStats(pid)).rss;
}

export function sha256Hex(bytes: Uint8Array): string {
  return createHash("sha256").update(bytes).digest("hex");
}

/** Prints a measured figure in the test output (tests report, benchmarks judge). */
export function report(line: string): void {
  // deno-lint-ignore no-console
  console.log(`  [measured] ${line}`);
}

/** Asserts that `frame` is an ERROR with `code` (and a message matching `pattern`). */
export function expectError(frame: ServerFrame, code: number, pattern?: RegExp): void {
  assert.equal(
    frame.type,
    FrameType.ERROR,
    `expected ERROR ${code}, got ${JSON.stringify(describeFrame(frame))}`,
  );
  if (frame.type !== FrameType.ERROR) return;
  assert.equal(frame.code, code, frame.message);
  if (pattern !== undefined) assert.match(frame.message, pattern);
}

/** A self-signed certificate for 127.0.0.1 in a temporary directory; disposing removes the directory. */
export interface TestCertificate extends AsyncDisposable {
  readonly dir: string;
  readonly certFile: string;
  readonly keyFile: string;
  /** PEM text of the certificate and of its key. */
  readonly cert: string;
  readonly key: string;
}

/**
 * Makes a one-day self-signed RSA certificate for `IP:127.0.0.1` with openssl, in a new temporary directory
 * named with `prefix`. Resolves `undefined`, and reports the skip, when openssl is not installed.
 */
export async function makeCertificate(prefix = "aero-tls-"): Promise<TestCertificate | undefined> {
  if (!(await hasCommand("openssl", ["version"]))) {
    report("skipped: openssl is not installed");
    return undefined;
  }
  const dir = await Deno.makeTempDir({ prefix });
  const remove = () => Deno.remove(dir, { recursive: true });
  try {
    const certFile = `${dir}/cert.pem`;
    const keyFile = `${dir}/key.pem`;
    const made = await new Deno.Command("openssl", {
      args: [
        ...["req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1", "-subj", "/CN=127.0.0.1"],
        ...["-addext", "subjectAltName=IP:127.0.0.1", "-addext", "basicConstraints=critical,CA:FALSE"],
        ...["-keyout", keyFile, "-out", certFile],
      ],
      stdout: "null",
      stderr: "piped",
    }).output();
    assert.ok(made.success, new TextDecoder().decode(made.stderr));
    const cert = await Deno.readTextFile(certFile);
    const key = await Deno.readTextFile(keyFile);
    return { dir, certFile, keyFile, cert, key, [Symbol.asyncDispose]: remove };
  } catch (err: unknown) {
    await remove();
    throw err;
  }
}

/** Whether a command is installed (runs `name args` and checks it succeeds). */
export function hasCommand(name: string, args: string[] = ["--version"]): Promise<boolean> {
  return new Deno.Command(name, { args, stdout: "null", stderr: "null" }).output().then(
    (o) => o.success,
    () => false,
  );
}

/** A test certificate authority and a server certificate it signed, in a temporary directory. */
export interface TestCa extends AsyncDisposable {
  /** PEM of the CA certificate (what a client must trust). */
  readonly caCert: string;
  /** PEM of the server certificate (for `IP:127.0.0.1` and `DNS:localhost`) and of its key. */
  readonly cert: string;
  readonly key: string;
}

/**
 * Makes a one-day CA and a server certificate signed by it, with openssl. Resolves `undefined`, and reports
 * the skip, when openssl is not installed.
 */
export async function makeTestCa(): Promise<TestCa | undefined> {
  if (!(await hasCommand("openssl", ["version"]))) {
    report("skipped: openssl is not installed");
    return undefined;
  }
  const dir = await Deno.makeTempDir({ prefix: "aero-ca-" });
  const remove = () => Deno.remove(dir, { recursive: true });
  const openssl = async (...args: string[]) => {
    const result = await new Deno.Command("openssl", { args, cwd: dir, stdout: "null", stderr: "piped" })
      .output();
    assert.ok(result.success, new TextDecoder().decode(result.stderr));
  };
  try {
    await openssl(
      ...[
        "req",
        "-x509",
        "-newkey",
        "rsa:2048",
        "-nodes",
        "-days",
        "1",
        "-subj",
        "/CN=aero-net-proxy test CA",
      ],
      ...["-addext", "basicConstraints=critical,CA:TRUE", "-addext", "keyUsage=critical,keyCertSign,cRLSign"],
      ...["-keyout", "ca.key", "-out", "ca.pem"],
    );
    await openssl(
      "req",
      "-newkey",
      "rsa:2048",
      "-nodes",
      "-subj",
      "/CN=127.0.0.1",
      "-keyout",
      "leaf.key",
      "-out",
      "leaf.csr",
    );
    await Deno.writeTextFile(
      `${dir}/leaf.ext`,
      "subjectAltName=IP:127.0.0.1,DNS:localhost\nbasicConstraints=critical,CA:FALSE\nextendedKeyUsage=serverAuth\n",
    );
    await openssl(
      ...[
        "x509",
        "-req",
        "-in",
        "leaf.csr",
        "-CA",
        "ca.pem",
        "-CAkey",
        "ca.key",
        "-CAcreateserial",
        "-days",
        "1",
      ],
      ...["-extfile", "leaf.ext", "-out", "leaf.pem"],
    );
    const [caCert, cert, key] = await Promise.all(
      ["ca.pem", "leaf.pem", "leaf.key"].map((name) => Deno.readTextFile(`${dir}/${name}`)),
    );
    return { caCert: caCert!, cert: cert!, key: key!, [Symbol.asyncDispose]: remove };
  } catch (err: unknown) {
    await remove();
    throw err;
  }
}

/** xorshift32 for the seeded fuzz tests: small, fast and reproducible (same seed, same sequence). */
export class FuzzRng {
  #x: number;
  constructor(seed: number) {
    this.#x = seed >>> 0 || 1;
  }
  next(): number {
    let x = this.#x;
    x ^= x << 13;
    x ^= x >>> 17;
    x ^= x << 5;
    return (this.#x = x >>> 0);
  }
  below(n: number): number {
    return this.next() % n;
  }
  bytes(n: number): Uint8Array {
    const out = new Uint8Array(n);
    for (let i = 0; i < n; i++) out[i] = this.next() & 255;
    return out;
  }
}
