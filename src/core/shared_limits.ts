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
/** Removals kept to retry while Redis cannot take them (about 200 bytes each). */
const MAX_UNRELEASED = 16_384;

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

/** A command not sent at all: no client yet, or Redis is stalled on earlier ones. */
class NotSent extends Error {}

type RedisModule = typeof import("redis");
type RedisClient = ReturnType<RedisModule["createClient"]>;

/** Waits `ms`, or less if `until` settles first; leaves no timer behind. */
async function within(until: Promise<unknown>, ms: number): Promise<void> {
  let timer: ReturnType<typeof setTimeout> | undefined;
  await Promise.race([until.catch(() => {}), new Promise((resolve) => timer = setTimeout(resolve, ms))]);
  clearTimeout(timer);
}

/** The fleet's limits, kept in Redis. */
export class SharedLimits {
  readonly #settings: SharedLimitSettings;
  readonly #hooks: SharedLimitHooks;
  /** The client library, loaded only by relays that use Redis (it costs ~16 MiB of RSS). */
  #redis: RedisModule | undefined;
  #client: RedisClient | undefined;
  readonly #loaded: Promise<void>;
  /** The first connection of the current client, with its retries (settles once connected, or destroyed). */
  #connecting: Promise<void> = Promise.resolve();
  /** When the client's current reconnection back-off ends (performance.now()). */
  #retryAt = 0;
  /** Commands sent and not yet answered. */
  #pending = 0;
  /**
   * Since when a command is past its timeout and still unanswered: until Redis answers, nothing more is sent
   * (its queue would only grow), and past {@linkcode #stallLimitMs} the connection is dropped and made anew.
   */
  #stalledSince: number | undefined;
  /** This process's name in lease members: a crashed process's leases are never confused with a new one's. */
  readonly #instance = randomBytes(8).toString("hex");
  #nextLease = 1;
  readonly #leases = new Set<Lease>();
  /** Bytes counted here and not yet added in Redis, per token. */
  readonly #unsentBytes = new Map<string, number>();
  /** Slots given back while Redis could not take the removal, to retry (at most one lease time old). */
  readonly #unreleased = new Map<string, { key: string; member: string; since: number }>();
  /** Tokens whose byte count is on its way to Redis: one addition in flight per token, never a repeat. */
  readonly #flushing = new Set<string>();
  #up = false;
  #lastLog = -Infinity;
  #failuresSinceLog = 0;
  readonly #renewTimer: ReturnType<typeof setInterval>;
  readonly #flushTimer: ReturnType<typeof setInterval>;
  #closed = false;

  constructor(settings: SharedLimitSettings, hooks: SharedLimitHooks = {}) {
    this.#settings = settings;
    this.#hooks = hooks;
    this.#loaded = import("redis").then((redis) => {
      this.#redis = redis;
      if (!this.#closed) this.#connect();
    }).catch((err: unknown) => this.#failed("load", err));
    this.#renewTimer = setInterval(
      () => void this.renew(),
      Math.max(100, Math.floor(settings.redisLeaseMs / 3)),
    );
    this.#flushTimer = setInterval(() => void this.flushBytes(), FLUSH_MS);
  }

  get #stallLimitMs(): number {
    return Math.max(2000, 8 * this.#settings.redisTimeoutMs);
  }

  #connect(): void {
    const client = this.#redis!.createClient({
      url: this.#settings.redisUrl,
      // Fail at once while disconnected instead of queueing: the local limits decide meanwhile.
      disableOfflineQueue: true,
      socket: {
        connectTimeout: Math.max(1000, this.#settings.redisTimeoutMs),
        reconnectStrategy: (retries: number) => {
          // Closed: no more attempts (an attempt that fails after close() would otherwise wait once more).
          if (this.#closed) return new Error("closed");
          const delayMs = Math.min(100 * 2 ** Math.min(retries, 5), 2000);
          this.#retryAt = performance.now() + delayMs;
          return delayMs;
        },
      },
    });
    this.#client = client;
    client.on("error", (err: unknown) => this.#failed("connection", err));
    client.on("ready", () => void this.#ready(client));
    client.on("end", () => this.#setUp(false));
    this.#connecting = client.connect().then(() => {}, (err: unknown) => this.#failed("connection", err));
  }

  /** Loads the scripts, then counts every live session in Redis again: it may have come back empty. */
  async #ready(client: RedisClient): Promise<void> {
    try {
      // Loaded before any use, so that no command is ever retried after a NOSCRIPT (a retried renewal could
      // re-add a lease released in between).
      await Promise.all(Object.values(SCRIPTS).map((body) => this.#send(client, ["SCRIPT", "LOAD", body])));
      this.#setUp(true);
      await this.renew();
    } catch (err: unknown) {
      this.#failed("connection", err);
    }
  }

  /** Drops a connection that stopped answering and opens a new one (every command on it fails now). */
  #reconnect(): void {
    const client = this.#client;
    this.#client = undefined;
    this.#stalledSince = undefined;
    this.#setUp(false);
    try {
      client?.destroy();
    } catch {
      // Already closed.
    }
    if (!this.#closed) this.#connect();
  }

  /** Whether Redis answered the last command (or connected) and has not failed since. */
  get up(): boolean {
    return this.#up;
  }

  /** Removals waiting for Redis to answer (bounded; see MAX_UNRELEASED). */
  get pendingRemovals(): number {
    return this.#unreleased.size;
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

  /** Sends one command on `client` (the current one by default), unless Redis is stalled. */
  async #send(client: RedisClient | undefined, args: string[]): Promise<unknown> {
    if (client === undefined) throw new NotSent("Redis is not connected");
    if (this.#stalledSince !== undefined) {
      if (performance.now() - this.#stalledSince > this.#stallLimitMs) this.#reconnect();
      throw new NotSent("Redis has not answered earlier commands");
    }
    this.#pending++;
    try {
      return await client.sendCommand(args);
    } finally {
      if (--this.#pending === 0) this.#stalledSince = undefined;
    }
  }

  /**
   * Runs a script by its hash (loaded on connect; a NOSCRIPT, after a `SCRIPT FLUSH`, is an error for this
   * call and reloads them all). With `bounded`, the answer is awaited at most the configured timeout.
   */
  async #run(
    name: ScriptName,
    keys: readonly string[],
    args: readonly (string | number)[],
    bounded = true,
  ): Promise<unknown> {
    const call = this.#send(this.#client, [
      "EVALSHA",
      SHA[name],
      String(keys.length),
      ...keys,
      ...args.map(String),
    ])
      .catch((err: unknown) => {
        if (err instanceof Error && err.message.startsWith("NOSCRIPT") && this.#client !== undefined) {
          void this.#ready(this.#client);
        }
        throw err;
      });
    if (!bounded) {
      const reply = await call;
      this.#setUp(true);
      return reply;
    }
    let timer: ReturnType<typeof setTimeout> | undefined;
    const timeout = new Promise<never>((_, reject) => {
      timer = setTimeout(() => {
        this.#stalledSince ??= performance.now();
        reject(new Timeout(`no answer within ${this.#settings.redisTimeoutMs} ms`));
      }, this.#settings.redisTimeoutMs);
    });
    try {
      const reply = await Promise.race([call, timeout]);
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
    for (const key of lease.keys) this.#remove(key, lease.member, performance.now());
  }

  /**
   * Takes `member` out of `key`; when that cannot be sent now (Redis down or stalled), it is tried again at each
   * renewal for as long as the lease could still be counted, so that a slot is not held a whole lease longer.
   */
  #remove(key: string, member: string, since: number): void {
    const entry = `${key} ${member}`;
    this.#send(this.#client, ["ZREM", key, member]).then(
      () => this.#unreleased.delete(entry),
      (err: unknown) => {
        // Kept at most one lease time, and at most MAX_UNRELEASED of them (sessions that a client opens and
        // ends quickly while Redis is away): past either, the lease runs out in Redis by itself.
        const fresh = performance.now() - since < this.#settings.redisLeaseMs;
        if (fresh && this.#unreleased.size < MAX_UNRELEASED) {
          this.#unreleased.set(entry, { key, member, since });
        }
        this.#failed("release", err);
      },
    );
  }

  /** Renews every lease this process holds, re-adding those Redis has lost. */
  async renew(): Promise<void> {
    if (this.#closed) return;
    for (const [entry, { key, member, since }] of this.#unreleased) {
      this.#unreleased.delete(entry);
      this.#remove(key, member, since);
    }
    if (this.#leases.size === 0) return;
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
    // A session that ended while the renewal was on its way was re-added by it: give that slot back again.
    const held = new Set([...this.#leases].map((lease) => lease.member));
    for (const [key, members] of byKey) {
      for (const member of members) {
        if (held.has(member)) continue;
        this.#remove(key, member, performance.now());
      }
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

  /**
   * Adds the bytes counted since the last flush; a token whose fleet total reached the quota is reported. Each
   * token has at most one addition on its way: a slow Redis delays the count, it never counts bytes twice.
   */
  async flushBytes(): Promise<void> {
    if (this.#closed) return;
    const periodMs = this.#settings.tokenQuotaPeriodS * 1000;
    const additions: Promise<void>[] = [];
    for (const [token, bytes] of this.#unsentBytes) {
      if (this.#flushing.has(token)) continue;
      this.#unsentBytes.delete(token);
      this.#flushing.add(token);
      additions.push((async () => {
        try {
          const total = Number(
            await this.#run("ADD_BYTES", [this.#bytesKey(token)], [bytes, 2 * periodMs], false),
          );
          if (total >= this.#settings.tokenByteQuota) this.#hooks.onExhausted?.(token);
        } catch (err: unknown) {
          // Counted again next time only when Redis certainly did not add them: never sent, or refused. A
          // connection lost with the command on it may or may not have added them, and is not retried.
          if (
            err instanceof NotSent || (this.#redis !== undefined && err instanceof this.#redis.ErrorReply)
          ) {
            this.#unsentBytes.set(token, (this.#unsentBytes.get(token) ?? 0) + bytes);
          }
          this.#failed("add_bytes", err);
        } finally {
          this.#flushing.delete(token);
        }
      })());
    }
    await Promise.all(additions);
  }

  /**
   * Stops renewing and disconnects, within about twice the command timeout whatever Redis does; leases this
   * process still holds run out in Redis by themselves.
   */
  async close(): Promise<void> {
    if (this.#closed) return;
    await within(this.flushBytes(), this.#settings.redisTimeoutMs);
    this.#closed = true;
    clearInterval(this.#renewTimer);
    clearInterval(this.#flushTimer);
    await this.#loaded;
    const client = this.#client;
    this.#client = undefined;
    if (client === undefined) return;
    // The replies still due (the last releases) are awaited while Redis answers; then the socket goes, along
    // with any reconnection the client had planned.
    if (client.isReady && this.#stalledSince === undefined) {
      await within(client.close(), this.#settings.redisTimeoutMs);
    }
    try {
      client.destroy();
    } catch {
      // Already closed.
    }
    // A client still trying to connect, first or again, wakes from its back-off (at most 2 s) to find itself
    // destroyed; waiting for that leaves no timer of the library's behind.
    await within(this.#connecting, 2500);
    const backOffMs = this.#retryAt - performance.now();
    if (backOffMs > 0) await within(new Promise(() => {}), backOffMs + 20);
  }
}
