/**
 * In-memory counters of one relay. Plain number fields, so the hot path pays an addition and nothing else.
 * @module
 */

/** Counters and gauges of one relay instance. */
export class Metrics {
  sessionsActive = 0;
  sessionsTotal = 0;
  streamsActive = 0;
  streamsTotal = 0;
  framesFromClient = 0;
  framesToClient = 0;
  /** WebSocket message bytes, headers included. */
  bytesFromClient = 0;
  bytesToClient = 0;
  /** Stream payload bytes written to targets and read from targets. */
  bytesToTargets = 0;
  bytesFromTargets = 0;
  authFailures = 0;
  /** Times a stream's reader paused for the WebSocket send buffer to drain. */
  backpressurePauses = 0;
  /** Streams ended with ERROR 8 because their target did not read fast enough. */
  backpressureErrors = 0;
  readonly policyDenied = new Map<string, number>();
  /** Upgrade requests refused before a session existed (other than auth), by kind. */
  readonly rejectedUpgrades = new Map<string, number>();
  readonly rateLimited = new Map<string, number>();
  /** ERROR frames sent, by code. */
  readonly errorsSent = new Map<number, number>();

  /** Adds one to a labelled counter. */
  static bump<K>(map: Map<K, number>, key: K): void {
    map.set(key, (map.get(key) ?? 0) + 1);
  }

  /** A plain-object copy of every counter. */
  snapshot(): Record<string, number | Record<string, number>> {
    const out: Record<string, number | Record<string, number>> = {};
    for (const [key, value] of Object.entries(this)) {
      out[key] = value instanceof Map ? Object.fromEntries(value) : value as number;
    }
    return out;
  }
}
