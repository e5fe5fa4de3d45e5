/**
 * Benchmark targets on 127.0.0.1: source, acknowledging sink, echo and stalled servers. They send constant
 * buffers (no pattern to compute), so the load generator's process spends its CPU on moving bytes; the tests
 * check content, the benchmark counts bytes.
 * @module
 */

import { startTcpServer } from "../tests/_util.ts";

/** Reads one target connection may do before it is dropped: a bound on every server loop. */
const MAX_READS = 10_000_000;

/** Bytes of sink traffic covered by one acknowledgement byte. */
export const ACK_UNIT = 128 * 1024;

/** A TCP server on a free loopback port. */
export interface Target extends AsyncDisposable {
  readonly port: number;
}

/** The same loopback TCP server the tests use, so that both measure and check one implementation. */
const startServer: (onConn: (conn: Deno.TcpConn, signal: AbortSignal) => Promise<void>) => Target =
  startTcpServer;

async function writeAll(conn: Deno.TcpConn, bytes: Uint8Array): Promise<void> {
  for (let off = 0; off < bytes.byteLength;) off += await conn.write(bytes.subarray(off));
}

/**
 * Sends bytes to every connection, then closes it. The first 4 bytes the client writes (u32be) say how many;
 * a client that writes nothing within the first read gets nothing.
 */
export function startSource(): Target {
  const block = new Uint8Array(256 * 1024).fill(0x5a);
  return startServer(async (conn, signal) => {
    const head = new Uint8Array(4);
    for (let have = 0; have < 4;) {
      const n = await conn.read(head.subarray(have));
      if (n === null) return;
      have += n;
    }
    const total = new DataView(head.buffer).getUint32(0);
    for (let left = total; left > 0 && !signal.aborted;) {
      const n = await conn.write(block.subarray(0, Math.min(left, block.byteLength)));
      left -= n;
    }
  });
}

/** Reads everything and writes one byte back for every {@linkcode ACK_UNIT} bytes received. */
export function startAckSink(): Target {
  return startServer(async (conn) => {
    const buf = new Uint8Array(256 * 1024);
    const acks = new Uint8Array(1024).fill(1);
    let received = 0;
    let acked = 0;
    for (let reads = 0; reads < MAX_READS; reads++) {
      const n = await conn.read(buf);
      if (n === null) return;
      received += n;
      const due = Math.floor(received / ACK_UNIT) - acked;
      if (due > 0) {
        await writeAll(conn, acks.subarray(0, Math.min(due, acks.byteLength)));
        acked += Math.min(due, acks.byteLength);
      }
    }
  });
}

/** Echoes every byte back. */
export function startEcho(): Target {
  return startServer(async (conn) => {
    const buf = new Uint8Array(64 * 1024);
    for (let reads = 0; reads < MAX_READS; reads++) {
      const n = await conn.read(buf);
      if (n === null) return;
      await writeAll(conn, buf.subarray(0, n));
    }
  });
}

/** Accepts connections and never reads or writes (a target that stopped reading, or an idle one). */
export function startStalled(): Target {
  return startServer((_conn, signal) =>
    new Promise<void>((resolve) => signal.addEventListener("abort", () => resolve(), { once: true }))
  );
}

/** The four targets' ports. */
export interface TargetPorts {
  readonly source: number;
  readonly sink: number;
  readonly echo: number;
  readonly stalled: number;
}

/** The targets in their own process, so that neither the load generator nor the relay pays for them. */
export interface TargetsProcess extends AsyncDisposable {
  readonly ports: TargetPorts;
  readonly pid: number;
}

/**
 * Runs `bench/_targets_main.ts` in a subprocess (network narrowed to loopback) and reads its ports; the
 * process exits when its stdin closes.
 */
export async function spawnTargets(): Promise<TargetsProcess> {
  const child = new Deno.Command(Deno.execPath(), {
    args: ["run", "--allow-net=127.0.0.0/8", new URL("./_targets_main.ts", import.meta.url).pathname],
    stdin: "piped",
    stdout: "piped",
    stderr: "inherit",
  }).spawn();
  const stdin = child.stdin.getWriter();
  const reader = child.stdout.pipeThrough(new TextDecoderStream()).getReader();
  let text = "";
  const started = performance.now();
  try {
    for (let reads = 0; !text.includes("\n") && reads < 1000; reads++) {
      if (performance.now() - started > 20_000) throw new Error("The targets did not start within 20 s");
      const { value, done } = await reader.read();
      if (done) throw new Error("The targets process exited before printing its ports");
      text += value;
    }
  } catch (err) {
    await reader.cancel();
    await stdin.close().catch(() => {});
    await child.status;
    throw err;
  }
  const ports = JSON.parse(text.slice(0, text.indexOf("\n"))) as TargetPorts;
  return {
    ports,
    pid: child.pid,
    async [Symbol.asyncDispose]() {
      await stdin.close().catch(() => {});
      await reader.cancel();
      const timer = setTimeout(() => {
        try {
          child.kill("SIGKILL");
        } catch { /* exited */ }
      }, 10_000);
      await child.status;
      clearTimeout(timer);
    },
  };
}
