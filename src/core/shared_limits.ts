/**
 * Limits shared by every relay process through Redis: concurrent sessions per client IP and per token, the OPEN
 * rate per token, and the byte quota per token per period.
 *
 * Sessions hold leases: each is a member of a sorted set per IP (and per token) scored by its expiry in Redis's
 * own clock. Every process renews the leases it holds each third of the lease time, re-adding any that are
 * missing, so a Redis that restarts empty counts every live session again at the next renewal (at once when the
 * client reconnects), and a process that dies stops renewing: its slots come back within one lease time.
 *
 * When Redis cannot answer (down, slow past the timeout), the relay keeps serving on its local limits, which are
 * always applied first and so stay the floor; failures are counted and logged at most once a minute.
 * @module
 */
import { createHash, randomBytes } from "node:crypto";
import { getLogger } from "@logtape/logtape";
import type { createClient } from "redis";
import { quotaPeriod } from "./quota.ts";

const logger = getLogger(["aero-net-proxy", "redis"]);

/** Milliseconds of Redis server time; scripts read the clock there so replicas never disagree on expiry. */
const NOW = `local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
`;

/**
 * KEYS: the IP's lease set, the token's lease set, the token's byte counter.
 * ARGV: member, lease ms, IP cap, token cap (0 = none), byte quota (0 = none).
 * Returns 0 when the lease was taken, else which limit refused it: 1 IP, 2 token, 3 byte quota.
 */
const ACQUIRE = `${NOW}
local lease = tonumber(ARGV[2])
local caps = { tonumber(ARGV[3]), tonumber(ARGV[4]) }
for i = 1, 2 do
  if caps[i] > 0 then
    redis.call('ZREMRANGEBYSCORE', KEYS[i], '-inf', now)
    if not redis.call('ZSCORE', KEYS[i], ARGV[1]) and redis.call('ZCARD', KEYS[i]) >= caps[i] then return i end
  end
end
local quota = tonumber(ARGV[5])
if quota > 0 and tonumber(redis.call('GET', KEYS[3]) or '0') >= quota then return 3 end
for i = 1, 2 do
  if caps[i] > 0 then
    redis.call('ZADD', KEYS[i], now + lease, ARGV[1])
    redis.call('PEXPIRE', KEYS[i], lease * 2)
  end
end
return 0
`;

/** KEYS: one lease set. ARGV: lease ms, then the members to renew (re-added if Redis lost them). */
const RENEW = `${NOW}
local lease = tonumber(ARGV[1])
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', now)
for i = 2, #ARGV do redis.call('ZADD', KEYS[1], now + lease, ARGV[i]) end
redis.call('PEXPIRE', KEYS[1], lease * 2)
return 0
`;

/** KEYS: the token's OPEN bucket. ARGV: rate per second, burst. Returns 1 when an OPEN was taken. */
const TAKE_OPEN = `${NOW}
local rate, burst = tonumber(ARGV[1]), tonumber(ARGV[2])
local state = redis.call('HMGET', KEYS[1], 'tokens', 'at')
local tokens = tonumber(state[1]) or burst
local at = tonumber(state[2]) or now
tokens = math.min(burst, tokens + math.max(0, now - at) * rate / 1000)
local taken = 0
if tokens >= 1 then
  tokens = tokens - 1
  taken = 1
end
redis.call('HSET', KEYS[1], 'tokens', tostring(tokens), 'at', tostring(now))
redis.call('PEXPIRE', KEYS[1], math.ceil(burst / rate * 1000) + 1000)
return taken
`;

/** KEYS: the token's byte counter for one period. ARGV: bytes, expiry ms. Returns the period's total. */
const ADD_BYTES = `local total = redis.call('INCRBY', KEYS[1], ARGV[1])
redis.call('PEXPIRE', KEYS[1], ARGV[2])
return total
`;

const SCRIPTS = { ACQUIRE, RENEW, TAKE_OPEN, ADD_BYTES };
type ScriptName = keyof typeof SCRIPTS;
const SHA = Object.fromEntries(
  Object.entries(SCRIPTS).map(([name, body]) => [name, createHash("sha1").update(body).digest("hex")]),
) as Record<ScriptName, string>;

/** What the fleet limits need to know (a subset of the relay's configuration). */
export interface SharedLimitSettings {
  readonly redisUrl: string;
  readonly redisPrefix: string;
  readonly redisLeaseMs: number;
  readonly redisTimeoutMs: number;
  readonly maxSessionsPerIp: number;
  readonly maxSessionsPerToken: number;
  readonly tokenOpenRate: number;
  readonly tokenOpenBurst: number;
  readonly tokenByteQuota: number;
  readonly tokenQuotaPeriodS: number;
}

/** Hooks into the relay: metrics and what to do when the fleet finds a token over its quota. */
export interface SharedLimitHooks {
  /** A Redis operation failed or timed out (the relay went on with its local limits). */
  readonly onError?: (operation: string) => void;
  /** Redis became reachable (true) or stopped answering (false). */
  readonly onHealth?: (up: boolean) => void;
  /** The fleet's byte count for `token` reached the quota in the current period. */
  readonly onExhausted?: (token: string) => void;
}

/** Which limit refused a session in the fleet. */
export type SharedRefusal = "sessions_per_ip" | "sessions_per_token" | "token_quota";

/** A session's slot in the fleet; release it when the session ends. */
export interface SharedLease {
  release(): void;
}

/** How often unsent byte counts go to Redis. */
const FLUSH_MS = 1000;
/** At most one "Redis is unavailable" line per this long. */
const LOG_EVERY_MS = 60_000;

class Lease implements SharedLease {
  readonly member: string;
  readonly keys: readonly string[];
  readonly #owner: SharedLimits;

  constructor(owner: SharedLimits, member: string, keys: readonly string[]) {
    this.#owner = owner;
    this.member = member;
    this.keys = keys;
  }

  release(): void {
    this.#owner.release(this);
  }
}

class Timeout extends Error {}

type RedisClient = ReturnType<typeof createClient>;

/** The fleet's limits, kept in Redis. */
export class SharedLimits {
  readonly #settings: SharedLimitSettings;
  readonly #hooks: SharedLimitHooks;
  /** Set once the client library has loaded: only relays that use Redis load it (it costs ~16 MiB of RSS). */
  #client: RedisClient | undefined;
  readonly #loaded: Promise<void>;
  /** This process's name in lease members: a crashed process's leases are never confused with a new one's. */
  readonly #instance = randomBytes(8).toString("hex");
  #nextLease = 1;
  readonly #leases = new Set<Lease>();
  /** Bytes counted here and not yet added in Redis, per token. */
  readonly #unsentBytes = new Map<string, number>();
  #up = false;
  #lastLog = -Infinity;
  #failuresSinceLog = 0;
  readonly #renewTimer: ReturnType<typeof setInterval>;
  readonly #flushTimer: ReturnType<typeof setInterval>;
  #closed = false;

  constructor(settings: SharedLimitSettings, hooks: SharedLimitHooks = {}) {
    this.#settings = settings;
    this.#hooks = hooks;
    this.#loaded = import("redis").then(({ createClient }) => {
      if (this.#closed) return;
      const client = createClient({
        url: settings.redisUrl,
        // Fail at once while disconnected instead of queueing: the local limits decide meanwhile.
        disableOfflineQueue: true,
        socket: {
          connectTimeout: Math.max(1000, settings.redisTimeoutMs),
          reconnectStrategy: (retries: number) => Math.min(100 * 2 ** Math.min(retries, 5), 2000),
        },
      });
      this.#client = client;
      client.on("error", (err: unknown) => this.#failed("connection", err));
      client.on("ready", () => {
        this.#setUp(true);
        // Redis may have come back empty (restart, failover): count every live session there again now.
        void this.renew();
      });
      client.on("end", () => this.#setUp(false));
      client.connect().catch((err: unknown) => this.#failed("connection", err));
    }).catch((err: unknown) => this.#failed("load", err));
    this.#renewTimer = setInterval(
      () => void this.renew(),
      Math.max(100, Math.floor(settings.redisLeaseMs / 3)),
    );
    this.#flushTimer = setInterval(() => void this.flushBytes(), FLUSH_MS);
  }

  /** Whether Redis answered the last command (or connected) and has not failed since. */
  get up(): boolean {
    return this.#up;
  }

  /** Leases held by this process. */
  get leases(): number {
    return this.#leases.size;
  }

  #key(...parts: string[]): string {
    return this.#settings.redisPrefix + parts.join(":");
  }

  #setUp(up: boolean): void {
    if (up === this.#up) return;
    this.#up = up;
    this.#hooks.onHealth?.(up);
    if (up) {
      logger.info("redis_up", {
        event: "redis_up",
        reason: "Redis answers; limits are shared with the other relays again",
        failures: this.#failuresSinceLog,
      });
      this.#lastLog = -Infinity;
      this.#failuresSinceLog = 0;
    }
  }

  #failed(operation: string, err: unknown): void {
    this.#hooks.onError?.(operation);
    this.#setUp(false);
    this.#failuresSinceLog++;
    const now = performance.now();
    if (now - this.#lastLog < LOG_EVERY_MS) return;
    this.#lastLog = now;
    logger.warn("redis_unavailable", {
      event: "redis_unavailable",
      operation,
      reason: err instanceof Error ? err.message : String(err),
      failures: this.#failuresSinceLog,
      fallback: "each relay applies its local limits until Redis answers again",
    });
    this.#failuresSinceLog = 0;
  }

  /** Runs a script by its hash, loading it when Redis does not know it (a new or restarted server). */
  async #run(
    name: ScriptName,
    keys: readonly string[],
    args: readonly (string | number)[],
  ): Promise<unknown> {
    const tail = [String(keys.length), ...keys, ...args.map(String)];
    const client = this.#client;
    if (client === undefined) throw new Error("the Redis client is still loading");
    const call = async () => {
      try {
        return await client.sendCommand(["EVALSHA", SHA[name], ...tail]);
      } catch (err: unknown) {
        if (!(err instanceof Error) || !err.message.startsWith("NOSCRIPT")) throw err;
        return await client.sendCommand(["EVAL", SCRIPTS[name], ...tail]);
      }
    };
    let timer: ReturnType<typeof setTimeout> | undefined;
    const timeout = new Promise<never>((_, reject) => {
      timer = setTimeout(
        () => reject(new Timeout(`no answer within ${this.#settings.redisTimeoutMs} ms`)),
        this.#settings.redisTimeoutMs,
      );
    });
    try {
      const reply = await Promise.race([call(), timeout]);
      this.#setUp(true);
      return reply;
    } finally {
      clearTimeout(timer);
    }
  }

  /**
   * Takes a slot for a session from `ip` (and `token`, when the session has one) across the fleet. Resolves to
   * the lease, or to the limit that refused it. When Redis cannot answer, the session is admitted on the local
   * limits alone, and its lease is registered in Redis by the next renewal after Redis is back.
   */
  async acquire(ip: string, token: string | undefined): Promise<SharedLease | SharedRefusal> {
    const s = this.#settings;
    const member = `${this.#instance}:${this.#nextLease++}`;
    const ipKey = this.#key("sessions", "ip", ip);
    const tokenKey = token === undefined
      ? this.#key("sessions", "token", "-")
      : this.#key("sessions", "token", token);
    const bytesKey = this.#bytesKey(token ?? "-");
    const tokenCap = token === undefined ? 0 : s.maxSessionsPerToken;
    const quota = token === undefined ? 0 : s.tokenByteQuota;
    const keys = tokenCap > 0 ? [ipKey, tokenKey] : [ipKey];
    try {
      const refused = Number(
        await this.#run("ACQUIRE", [ipKey, tokenKey, bytesKey], [
          member,
          s.redisLeaseMs,
          s.maxSessionsPerIp,
          tokenCap,
          quota,
        ]),
      );
      if (refused === 1) return "sessions_per_ip";
      if (refused === 2) return "sessions_per_token";
      if (refused === 3) {
        this.#hooks.onExhausted?.(token!);
        return "token_quota";
      }
    } catch (err: unknown) {
      this.#failed("acquire", err);
    }
    const lease = new Lease(this, member, keys);
    this.#leases.add(lease);
    return lease;
  }

  /** Gives a session's slot back (if Redis misses this, the lease runs out by itself). */
  release(lease: Lease): void {
    if (!this.#leases.delete(lease) || this.#closed) return;
    for (const key of lease.keys) {
      this.#client?.sendCommand(["ZREM", key, lease.member]).catch((err: unknown) =>
        this.#failed("release", err)
      );
    }
  }

  /** Renews every lease this process holds, re-adding those Redis has lost. */
  async renew(): Promise<void> {
    if (this.#closed || this.#leases.size === 0) return;
    const byKey = new Map<string, string[]>();
    for (const lease of this.#leases) {
      for (const key of lease.keys) {
        const members = byKey.get(key);
        if (members === undefined) byKey.set(key, [lease.member]);
        else members.push(lease.member);
      }
    }
    try {
      await Promise.all(
        [...byKey].map(([key, members]) =>
          this.#run("RENEW", [key], [this.#settings.redisLeaseMs, ...members])
        ),
      );
    } catch (err: unknown) {
      this.#failed("renew", err);
    }
  }

  /** Takes one OPEN from `token`'s fleet-wide bucket; true also when Redis cannot answer (local rate applies). */
  async takeOpen(token: string): Promise<boolean> {
    const { tokenOpenRate: rate, tokenOpenBurst: burst } = this.#settings;
    if (rate === 0) return true;
    try {
      return Number(await this.#run("TAKE_OPEN", [this.#key("opens", token)], [rate, burst])) === 1;
    } catch (err: unknown) {
      this.#failed("take_open", err);
      return true;
    }
  }

  #bytesKey(token: string): string {
    const { index } = quotaPeriod(Date.now(), this.#settings.tokenQuotaPeriodS);
    return this.#key("bytes", token, String(index));
  }

  /** Counts `bytes` for `token`; they reach Redis within a second. */
  addBytes(token: string, bytes: number): void {
    if (this.#settings.tokenByteQuota === 0) return;
    this.#unsentBytes.set(token, (this.#unsentBytes.get(token) ?? 0) + bytes);
  }

  /** Adds the bytes counted since the last flush; a token whose fleet total reached the quota is reported. */
  async flushBytes(): Promise<void> {
    if (this.#closed || this.#unsentBytes.size === 0) return;
    const periodMs = this.#settings.tokenQuotaPeriodS * 1000;
    const batch = [...this.#unsentBytes];
    this.#unsentBytes.clear();
    await Promise.all(batch.map(async ([token, bytes]) => {
      try {
        const total = Number(await this.#run("ADD_BYTES", [this.#bytesKey(token)], [bytes, 2 * periodMs]));
        if (total >= this.#settings.tokenByteQuota) this.#hooks.onExhausted?.(token);
      } catch (err: unknown) {
        // Kept for the next flush: bytes moved while Redis was away still count once it is back.
        this.#unsentBytes.set(token, (this.#unsentBytes.get(token) ?? 0) + bytes);
        this.#failed("add_bytes", err);
      }
    }));
  }

  /** Stops renewing and disconnects; leases this process still holds run out in Redis by themselves. */
  async close(): Promise<void> {
    if (this.#closed) return;
    await this.flushBytes();
    this.#closed = true;
    clearInterval(this.#renewTimer);
    clearInterval(this.#flushTimer);
    await this.#loaded;
    // Waits for the replies still due (the last releases), then disconnects.
    const client = this.#client;
    await client?.close().catch(() => client.destroy());
  }
}
