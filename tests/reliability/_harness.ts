/**
 * Helpers shared by the reliability cases: relay environment, bounded polling, memory sampling, percentiles.
 * @module
 */
import type { RelayProcess } from "../_process.ts";
import { delay, procStats, TOKEN } from "../_util.ts";

export const KIB = 1024;
export const MIB = 1024 * KIB;

/**
 * Environment of a relay subprocess under test: known token, loopback targets allowed. Logs stay at the
 * production default (`info`, one line per stream), so the figures include the cost of logging.
 */
export function relayEnv(extra: Record<string, string> = {}): Record<string, string> {
  return { AERO_PROXY_AUTH_TOKEN: TOKEN, AERO_PROXY_ALLOW_PRIVATE_IPS: "1", ...extra };
}

/**
 * Throws away the relay's parsed log lines every 500 ms while held: spawnRelay keeps every line, and at tens
 * of thousands of streams that would grow the test process, not the relay.
 */
export function discardLogs(relay: RelayProcess): Disposable {
  const timer = setInterval(() => relay.logs.splice(0), 500);
  return { [Symbol.dispose]: () => clearInterval(timer) };
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

/** The `p`-th percentile (0..100) of `values`, nearest rank. */
export function percentile(values: readonly number[], p: number): number {
  if (values.length === 0) return Number.NaN;
  const sorted = [...values].sort((a, b) => a - b);
  const rank = Math.min(sorted.length - 1, Math.max(0, Math.ceil((p / 100) * sorted.length) - 1));
  return sorted[rank]!;
}

/** Samples a process's RSS and open file descriptors in the background until disposed. */
export class StatsSampler implements AsyncDisposable {
  peakRss = 0;
  peakFds = 0;
  samples = 0;
  readonly #loop: Promise<void>;
  #stopped = false;

  constructor(pid: number, intervalMs = 100) {
    this.#loop = (async () => {
      while (!this.#stopped) {
        try {
          const { rss, fds } = await procStats(pid);
          this.peakRss = Math.max(this.peakRss, rss);
          this.peakFds = Math.max(this.peakFds, fds);
          this.samples++;
        } catch {
          // The process exited between two samples.
          return;
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
