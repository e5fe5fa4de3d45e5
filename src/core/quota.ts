/**
 * Per-token limits counted in this process: concurrent sessions, the OPEN rate over all of a token's sessions,
 * and stream bytes per period. Tokens come from the operator's list, so every map here is bounded by it.
 * With Redis (see shared_limits.ts) the same limits are also counted across the fleet; these stay as the floor.
 * @module
 */
import { TokenBucket } from "../rate_limit.ts";

/** The settings of {@linkcode TokenLimits} (a subset of the relay's configuration). */
export interface TokenLimitSettings {
  /** Concurrent sessions per token (0 = unlimited). */
  readonly maxSessionsPerToken: number;
  /** Sustained OPENs per second per token (0 = unlimited). */
  readonly tokenOpenRate: number;
  readonly tokenOpenBurst: number;
  /** Stream bytes per token per period (0 = unlimited). */
  readonly tokenByteQuota: number;
  readonly tokenQuotaPeriodS: number;
}

/** The period that `nowMs` (wall clock) falls in, and the milliseconds left in it. */
export function quotaPeriod(nowMs: number, periodS: number): { index: number; leftMs: number } {
  const periodMs = periodS * 1000;
  const index = Math.floor(nowMs / periodMs);
  return { index, leftMs: (index + 1) * periodMs - nowMs };
}

interface Usage {
  period: number;
  bytes: number;
}

/** Sessions, OPENs and bytes per token, in this process. */
export class TokenLimits {
  readonly #settings: TokenLimitSettings;
  readonly #wallClock: () => number;
  readonly #monotonic: () => number;
  readonly #sessions = new Map<string, number>();
  readonly #buckets = new Map<string, TokenBucket>();
  readonly #usage = new Map<string, Usage>();
  /** Tokens the fleet (Redis) reported over the quota, with the period it was over in. */
  readonly #fleetExhausted = new Map<string, number>();

  /**
   * @param wallClock milliseconds since the epoch (periods are aligned to it, the same on every replica)
   * @param monotonic milliseconds for the OPEN buckets
   */
  constructor(
    settings: TokenLimitSettings,
    wallClock: () => number = Date.now,
    monotonic: () => number = performance.now.bind(performance),
  ) {
    this.#settings = settings;
    this.#wallClock = wallClock;
    this.#monotonic = monotonic;
  }

  /** Whether any per-token limit is on. */
  get active(): boolean {
    const s = this.#settings;
    return s.maxSessionsPerToken > 0 || s.tokenOpenRate > 0 || s.tokenByteQuota > 0;
  }

  /** Sessions `token` holds in this process. */
  sessions(token: string): number {
    return this.#sessions.get(token) ?? 0;
  }

  /** Whether `token` may start one more session here (the count, not the quota). */
  sessionAllowed(token: string): boolean {
    const max = this.#settings.maxSessionsPerToken;
    return max === 0 || this.sessions(token) < max;
  }

  addSession(token: string): void {
    this.#sessions.set(token, this.sessions(token) + 1);
  }

  removeSession(token: string): void {
    const left = this.sessions(token) - 1;
    if (left > 0) this.#sessions.set(token, left);
    else this.#sessions.delete(token);
  }

  /** Takes one OPEN from `token`'s bucket; false when the token is over its rate. */
  takeOpen(token: string): boolean {
    const { tokenOpenRate: rate, tokenOpenBurst: burst } = this.#settings;
    if (rate === 0) return true;
    let bucket = this.#buckets.get(token);
    if (bucket === undefined) {
      bucket = new TokenBucket(rate, burst, this.#monotonic);
      this.#buckets.set(token, bucket);
    }
    return bucket.tryTake(1);
  }

  /**
   * Counts `bytes` for `token`: "under" its quota (or none is set), "crossed" when this addition took it past the
   * quota for the period (the caller ends the token's sessions), "over" when it was already past (here or, as
   * the fleet reported, elsewhere).
   */
  addBytes(token: string, bytes: number): "under" | "crossed" | "over" {
    const { tokenByteQuota: quota, tokenQuotaPeriodS: periodS } = this.#settings;
    if (quota === 0) return "under";
    const period = quotaPeriod(this.#wallClock(), periodS).index;
    let usage = this.#usage.get(token);
    if (usage === undefined || usage.period !== period) {
      usage = { period, bytes: 0 };
      this.#usage.set(token, usage);
    }
    const before = usage.bytes;
    usage.bytes += bytes;
    if (before >= quota || this.#fleetExhausted.get(token) === period) return "over";
    return usage.bytes >= quota ? "crossed" : "under";
  }

  /** The fleet reported `token` over its quota in the current period. */
  markExhausted(token: string): void {
    this.#fleetExhausted.set(token, quotaPeriod(this.#wallClock(), this.#settings.tokenQuotaPeriodS).index);
  }

  /** Milliseconds until `token` may move bytes again: 0 when it is under its quota. */
  exhaustedFor(token: string): number {
    const { tokenByteQuota: quota, tokenQuotaPeriodS: periodS } = this.#settings;
    if (quota === 0) return 0;
    const { index, leftMs } = quotaPeriod(this.#wallClock(), periodS);
    const usage = this.#usage.get(token);
    const local = usage !== undefined && usage.period === index && usage.bytes >= quota;
    return local || this.#fleetExhausted.get(token) === index ? leftMs : 0;
  }
}
