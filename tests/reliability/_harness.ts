/**
 * Helpers shared by the reliability cases: relay environment, log discarding, percentiles. Polling, memory
 * sampling and sizes are in `../_util.ts`.
 * @module
 */
import type { RelayProcess } from "../_process.ts";
import { TOKEN } from "../_util.ts";

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

/** The `p`-th percentile (0..100) of `values`, nearest rank. */
export function percentile(values: readonly number[], p: number): number {
  if (values.length === 0) return Number.NaN;
  const sorted = [...values].sort((a, b) => a - b);
  const rank = Math.min(sorted.length - 1, Math.max(0, Math.ceil((p / 100) * sorted.length) - 1));
  return sorted[rank]!;
}
