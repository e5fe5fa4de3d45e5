/**
 * SharedLimits against a real redis-server: two instances stand for two relay processes.
 */
import assert from "node:assert/strict";
import { type SharedLease, SharedLimits, type SharedLimitSettings } from "../../src/core/shared_limits.ts";
import { RedisServer, redisUnavailable } from "../_redis.ts";
import { waitUntil } from "../_util.ts";

const unavailable = await redisUnavailable("shared limits tests");

function settings(url: string, overrides: Partial<SharedLimitSettings> = {}): SharedLimitSettings {
  return {
    redisUrl: url,
    redisPrefix: `test-${crypto.randomUUID()}:`,
    redisLeaseMs: 1500,
    redisTimeoutMs: 250,
    maxSessionsPerIp: 2,
    maxSessionsPerToken: 0,
    tokenOpenRate: 0,
    tokenOpenBurst: 1,
    tokenByteQuota: 0,
    tokenQuotaPeriodS: 3600,
    ...overrides,
  };
}

function isLease(value: SharedLease | string): value is SharedLease {
  return typeof value !== "string";
}

/** Whether a session from `ip` would get in now: "admitted" (its slot is given straight back) or the refusal. */
async function probe(limits: SharedLimits, ip: string, token?: string): Promise<string> {
  const outcome = await limits.acquire(ip, token);
  if (typeof outcome === "string") return outcome;
  outcome.release();
  return "admitted";
}

async function connected(...limits: SharedLimits[]): Promise<void> {
  assert.ok(
    await waitUntil(() => limits.every((l) => l.up), { timeoutMs: 5000, intervalMs: 10 }),
    "Redis up",
  );
}

Deno.test({
  name: "shared limits: per-IP and per-token caps hold across two processes; release frees a slot",
  ignore: unavailable !== undefined,
  async fn() {
    await using redis = await RedisServer.start();
    const common = settings(redis.url, { maxSessionsPerToken: 3 });
    const a = new SharedLimits(common);
    const b = new SharedLimits(common);
    try {
      await connected(a, b);
      const first = await a.acquire("192.0.2.1", "tok");
      const second = await b.acquire("192.0.2.1", "tok");
      assert.ok(isLease(first) && isLease(second));
      assert.equal(await a.acquire("192.0.2.1", "tok"), "sessions_per_ip");
      assert.equal(await b.acquire("192.0.2.1", undefined), "sessions_per_ip");
      const third = await b.acquire("192.0.2.2", "tok");
      assert.ok(isLease(third));
      assert.equal(await a.acquire("192.0.2.3", "tok"), "sessions_per_token");
      // A session without a token counts for its IP only.
      assert.ok(isLease(await a.acquire("192.0.2.3", undefined)));
      second.release();
      assert.ok(
        await waitUntil(async () => await probe(a, "192.0.2.1", "other") === "admitted", {
          timeoutMs: 2000,
          intervalMs: 20,
        }),
      );
    } finally {
      await a.close();
      await b.close();
    }
  },
});

Deno.test({
  name: "shared limits: a process that stops renewing (killed) gives its slots back within the lease time",
  ignore: unavailable !== undefined,
  async fn() {
    await using redis = await RedisServer.start();
    const common = settings(redis.url);
    const dead = new SharedLimits(common);
    const alive = new SharedLimits(common);
    try {
      await connected(dead, alive);
      assert.ok(isLease(await dead.acquire("198.51.100.7", undefined)));
      assert.ok(isLease(await dead.acquire("198.51.100.7", undefined)));
      // Closing without releasing is what a crash leaves behind: leases that nobody renews.
      await dead.close();
      const stoppedAt = performance.now();
      assert.equal(await alive.acquire("198.51.100.7", undefined), "sessions_per_ip");
      // Renewed by the living process meanwhile: its own leases are not the ones that run out.
      let admitted = false;
      while (!admitted && performance.now() - stoppedAt < 5000) {
        admitted = isLease(await alive.acquire("198.51.100.7", undefined));
        if (!admitted) await new Promise((resolve) => setTimeout(resolve, 50));
      }
      const tookMs = performance.now() - stoppedAt;
      assert.ok(admitted, "the dead process's slots came back");
      assert.ok(tookMs <= common.redisLeaseMs + 500, `back after ${Math.round(tookMs)} ms`);
      assert.ok(tookMs >= common.redisLeaseMs / 2, `not before the lease ran out: ${Math.round(tookMs)} ms`);
    } finally {
      await dead.close();
      await alive.close();
    }
  },
});

Deno.test({
  name:
    "shared limits: Redis down -> local limits decide, failures counted; Redis back empty -> leases again",
  ignore: unavailable !== undefined,
  async fn() {
    await using redis = await RedisServer.start();
    const errors: string[] = [];
    const health: boolean[] = [];
    const common = settings(redis.url);
    const holder = new SharedLimits(common, {
      onError: (operation) => errors.push(operation),
      onHealth: (up) => health.push(up),
    });
    let newcomer: SharedLimits | undefined;
    try {
      await connected(holder);
      assert.ok(isLease(await holder.acquire("203.0.113.9", undefined)));
      await redis.stop();
      // Admitted without Redis (the relay's local caps are the floor): the lease is kept to register later.
      const during = await holder.acquire("203.0.113.9", undefined);
      assert.ok(isLease(during), "admitted on the local limits while Redis is down");
      assert.equal(holder.up, false);
      assert.ok(errors.length > 0, "failures counted");
      assert.equal(holder.leases, 2);

      await redis.restart();
      assert.equal(await redis.command("DBSIZE"), "0", "Redis came back empty");
      await connected(holder);
      newcomer = new SharedLimits(common);
      await connected(newcomer);
      // Both of the holder's sessions (one admitted while Redis was away) are counted again within seconds.
      // (A probe that gets in gives its slot straight back, so that only the holder's sessions count.)
      const refusedAgain = await waitUntil(
        async () => await probe(newcomer!, "203.0.113.9") === "sessions_per_ip",
        { timeoutMs: 3000, intervalMs: 50 },
      );
      assert.ok(refusedAgain, "the shared cap holds again after Redis restarted empty");
      assert.deepEqual(health.slice(0, 2), [true, false]);
      assert.equal(health.at(-1), true);
    } finally {
      await holder.close();
      await newcomer?.close();
    }
  },
});

Deno.test({
  name: "shared limits: a token's OPEN rate and byte quota are counted across processes",
  ignore: unavailable !== undefined,
  async fn() {
    await using redis = await RedisServer.start();
    const exhausted: string[] = [];
    const common = settings(redis.url, { tokenOpenRate: 1, tokenOpenBurst: 3, tokenByteQuota: 1000 });
    const a = new SharedLimits(common, { onExhausted: (token) => exhausted.push(`a:${token}`) });
    const b = new SharedLimits(common, { onExhausted: (token) => exhausted.push(`b:${token}`) });
    try {
      await connected(a, b);
      const taken = [await a.takeOpen("t1"), await b.takeOpen("t1"), await a.takeOpen("t1")];
      assert.deepEqual(taken, [true, true, true]);
      assert.equal(await b.takeOpen("t1"), false, "the burst of 3 is shared");
      assert.equal(await a.takeOpen("t2"), true, "another token has its own bucket");

      a.addBytes("t1", 600);
      await a.flushBytes();
      assert.deepEqual(exhausted, []);
      b.addBytes("t1", 600);
      await b.flushBytes();
      assert.deepEqual(exhausted, ["b:t1"], "the fleet's 1,200 bytes pass the quota of 1,000");
      assert.equal(await a.acquire("192.0.2.50", "t1"), "token_quota");
      assert.ok(isLease(await a.acquire("192.0.2.50", "t2")));
    } finally {
      await a.close();
      await b.close();
    }
  },
});

Deno.test({
  name: "shared limits: a slow Redis delays a byte count but never counts it twice",
  ignore: unavailable !== undefined,
  async fn() {
    await using redis = await RedisServer.start();
    const common = settings(redis.url, { tokenByteQuota: 1 << 30 });
    const limits = new SharedLimits(common);
    try {
      await connected(limits);
      limits.addBytes("t", 1000);
      // Every command waits 1.5 s, far past the 250 ms timeout; flushes keep coming meanwhile.
      await redis.command("CLIENT", "PAUSE", "1500", "ALL");
      const flushes = [limits.flushBytes(), limits.flushBytes()];
      await new Promise((resolve) => setTimeout(resolve, 400));
      limits.addBytes("t", 24);
      flushes.push(limits.flushBytes());
      await Promise.all(flushes);
      await limits.flushBytes();
      const key = (await redis.command("--scan", "--pattern", "*bytes:t:*")).trim();
      assert.equal(Number(await redis.command("GET", key)), 1024);
    } finally {
      await limits.close();
    }
  },
});

Deno.test({
  name: "shared limits: a hung Redis (SIGSTOP) neither holds up close() nor keeps a released slot taken",
  ignore: unavailable !== undefined,
  async fn() {
    await using redis = await RedisServer.start();
    const common = settings(redis.url, { maxSessionsPerIp: 1, redisLeaseMs: 3000 });
    const hung = new SharedLimits(common);
    const other = new SharedLimits(common);
    try {
      await connected(hung, other);
      const lease = await hung.acquire("192.0.2.77", undefined);
      assert.ok(isLease(lease));
      redis.signal("SIGSTOP");
      // The renewal times out and marks Redis stalled; the release then cannot be sent.
      await hung.renew();
      lease.release();
      assert.equal(hung.up, false);
      redis.signal("SIGCONT");
      // Resumed, the stalled commands finish; the removal that could not be sent goes at the next renewal.
      const answering = await waitUntil(async () => {
        await probe(hung, "192.0.2.99");
        return hung.up;
      }, { timeoutMs: 3000, intervalMs: 20 });
      assert.ok(answering, "Redis answers again after SIGCONT");
      const freed = await waitUntil(async () => await probe(other, "192.0.2.77") === "admitted", {
        timeoutMs: 1500,
        intervalMs: 50,
      });
      assert.ok(freed, "the released slot is free well before its lease (3 s) runs out");

      assert.ok(isLease(await hung.acquire("192.0.2.78", undefined)));
      redis.signal("SIGSTOP");
      const began = performance.now();
      await hung.close();
      const tookMs = performance.now() - began;
      assert.ok(tookMs < 2000, `close() took ${Math.round(tookMs)} ms with Redis hung`);
    } finally {
      redis.signal("SIGCONT");
      await hung.close();
      await other.close();
    }
  },
});

Deno.test({
  name: "shared limits: slots given back while Redis is down are kept to retry, 16,384 at most",
  ignore: unavailable !== undefined,
  async fn() {
    await using redis = await RedisServer.start();
    const limits = new SharedLimits(settings(redis.url));
    try {
      await connected(limits);
      await redis.stop();
      // A client opening and ending sessions as fast as it can while Redis is away.
      for (let i = 0; i < 17_000; i++) {
        const lease = await limits.acquire(`198.18.${i >> 8}.${i & 255}`, undefined);
        assert.ok(isLease(lease));
        lease.release();
      }
      await waitUntil(() => limits.pendingRemovals >= 16_384, { timeoutMs: 5000, intervalMs: 20 });
      assert.equal(limits.pendingRemovals, 16_384);
      assert.equal(limits.leases, 0);
    } finally {
      await limits.close();
    }
  },
});
