/**
 * The relay under test, started either as a subprocess of the real entry point (main.ts through the `start`
 * task's command line, network narrowed to 127.0.0.0/8) or in this process (`serveRelay`).
 *
 * Both are configured for benchmarking, not with the production defaults: loopback targets allowed, no client
 * byte-rate shaping, no OPEN rate limit, log level "warning" (no per-stream log lines). Queue sizes and
 * watermarks keep their defaults unless the caller passes overrides.
 * @module
 */
import { defaultConfig } from "../src/config.ts";
import { type RunningRelay, serveRelay } from "../src/server.ts";
import { startCommand } from "../tests/_process.ts";
import { cpuSecondsOf, delay, ownCpuSeconds, rssOf, treeCpuSeconds } from "./_measure.ts";

export const BENCH_TOKEN = "bench-token-0123456789abcdef";

/** The environment the subprocess relay runs with (also printed in the report). */
export const BENCH_ENV: Readonly<Record<string, string>> = {
  AERO_PROXY_AUTH_TOKEN: BENCH_TOKEN,
  AERO_PROXY_ALLOW_PRIVATE_IPS: "1",
  AERO_PROXY_CLIENT_BYTES_PER_SEC: "0",
  AERO_PROXY_OPEN_RATE: "0",
  AERO_PROXY_LOG_LEVEL: "warning",
};

export interface RelayUnderTest extends AsyncDisposable {
  readonly kind: "subprocess" | "in-process";
  readonly port: number;
  /** The relay's process id. */
  readonly pid: number;
  /** The relay's resident set size in bytes (for in-process: this whole process). */
  rss(): Promise<number>;
  /** The relay's CPU seconds so far (for in-process: this whole process). */
  cpuSeconds(): Promise<number>;
}

function freePort(): number {
  const listener = Deno.listen({ hostname: "127.0.0.1", port: 0 });
  const port = (listener.addr as Deno.NetAddr).port;
  listener.close();
  return port;
}

/**
 * Waits (at most 20 s) until something accepts connections on `port`; throws (after `giveUp`) if the process
 * exits first or never listens.
 */
async function waitForListen(
  port: number,
  exited: () => boolean,
  giveUp: () => Promise<void>,
): Promise<void> {
  const started = performance.now();
  for (let attempt = 0;; attempt++) {
    if (exited()) throw new Error(`The process on port ${port} exited before listening`);
    if (performance.now() - started > 20_000 || attempt > 2000) {
      await giveUp();
      throw new Error(`Nothing listened on port ${port} within 20 s`);
    }
    try {
      (await Deno.connect({ hostname: "127.0.0.1", port })).close();
      return;
    } catch {
      await delay(20);
    }
  }
}

/** Waits (at most 20 s) until the relay's `/readyz` answers 200: with workers, until all of them listen. */
async function waitForReady(port: number): Promise<void> {
  const started = performance.now();
  for (let attempt = 0; attempt < 1000 && performance.now() - started < 20_000; attempt++) {
    const response = await fetch(`http://127.0.0.1:${port}/readyz`).catch(() => undefined);
    await response?.body?.cancel();
    if (response?.status === 200) return;
    await delay(20);
  }
  throw new Error(`The relay on port ${port} was not ready within 20 s`);
}

/** Options for a subprocess relay. */
export interface SpawnOptions {
  /** Extra `AERO_PROXY_*` variables (e.g. watermarks), on top of {@linkcode BENCH_ENV}. */
  readonly env?: Readonly<Record<string, string>>;
  /** Write a V8 CPU profile into this directory when the relay exits. */
  readonly profileDir?: string;
  /** Extra flags for `deno run` (e.g. `--v8-flags=...`), for experiments. */
  readonly denoFlags?: readonly string[];
  /** Run main.ts from this checkout instead of this one (A/B comparisons of two versions). */
  readonly relayDir?: string;
}

/** Starts main.ts in a subprocess and waits (at most 20 s) until it accepts connections. */
export async function spawnRelay(options: SpawnOptions = {}): Promise<RelayUnderTest> {
  const { cmd, args } = startCommand();
  const extra = [
    ...(options.profileDir === undefined ? [] : ["--cpu-prof", `--cpu-prof-dir=${options.profileDir}`]),
    ...(options.denoFlags ?? []),
  ];
  const runArgs = [args[0]!, ...extra, ...args.slice(1)];
  if (!runArgs.includes("--allow-net=127.0.0.0/8")) {
    throw new Error(`The start command does not narrow --allow-net to loopback: ${runArgs.join(" ")}`);
  }
  const port = freePort();
  const child = new Deno.Command(cmd, {
    args: runArgs,
    env: { NO_COLOR: "1", ...BENCH_ENV, ...options.env, AERO_PROXY_PORT: String(port) },
    ...(options.relayDir === undefined ? {} : { cwd: options.relayDir }),
    stdin: "null",
    stdout: "null",
    stderr: "inherit",
  }).spawn();
  let exited = false;
  const status = child.status.finally(() => exited = true);
  const kill = (signal: Deno.Signal) => {
    try {
      child.kill(signal);
    } catch { /* already exited */ }
  };
  await waitForListen(port, () => exited, async () => {
    kill("SIGKILL");
    await status;
  });
  // AERO_PROXY_WORKERS > 1: the first worker listening is not enough; and the CPU is the workers' too.
  const workers = Number(options.env?.AERO_PROXY_WORKERS ?? "1") > 1;
  if (workers) await waitForReady(port);
  return {
    kind: "subprocess",
    port,
    pid: child.pid,
    rss: () => rssOf(child.pid),
    cpuSeconds: () => workers ? treeCpuSeconds(child.pid) : cpuSecondsOf(child.pid),
    async [Symbol.asyncDispose]() {
      kill("SIGTERM");
      const timer = setTimeout(() => kill("SIGKILL"), 10_000);
      await status;
      clearTimeout(timer);
    },
  };
}

/** Starts the relay in this process (the load generator shares its event loop). */
export function startInProcessRelay(): RelayUnderTest {
  const running: RunningRelay = serveRelay(defaultConfig({
    port: 0,
    authTokens: [BENCH_TOKEN],
    allowPrivateIps: true,
    clientBytesPerSec: 0,
    openRate: 0,
    logLevel: "warning",
  }));
  return {
    kind: "in-process",
    port: running.port,
    pid: Deno.pid,
    rss: () => Promise.resolve(Deno.memoryUsage().rss),
    cpuSeconds: () => Promise.resolve(ownCpuSeconds()),
    [Symbol.asyncDispose]: () => running.close(),
  };
}

/**
 * Starts the minimal seed-framing relay (`bench/_minimal_relay.ts`, `Deno.serve` and nothing else) in a
 * subprocess: the baseline that shows Deno's own ceiling beside ours in every run.
 */
export async function spawnMinimalRelay(): Promise<RelayUnderTest> {
  const port = freePort();
  const script = new URL("./_minimal_relay.ts", import.meta.url).pathname;
  const child = new Deno.Command(Deno.execPath(), {
    args: ["run", "--allow-net=127.0.0.0/8", script, String(port)],
    env: { NO_COLOR: "1" },
    stdin: "null",
    stdout: "null",
    stderr: "inherit",
  }).spawn();
  let exited = false;
  const status = child.status.finally(() => exited = true);
  await waitForListen(port, () => exited, async () => {
    child.kill("SIGKILL");
    await status;
  });
  return {
    kind: "subprocess",
    port,
    pid: child.pid,
    rss: () => rssOf(child.pid),
    cpuSeconds: () => cpuSecondsOf(child.pid),
    async [Symbol.asyncDispose]() {
      try {
        child.kill("SIGTERM");
      } catch { /* exited */ }
      await status;
    },
  };
}
