/**
 * Limits shared through a real Redis by relays running as separate processes (`deno task start`, network narrowed
 * to loopback): the per-IP cap holds across them, a killed relay's slots come back within the lease time, and a
 * Redis that stops and comes back empty is survived as the README says.
 */
import assert from "node:assert/strict";
import { type RelayProcess, spawnRelay } from "./_process.ts";
import { RawWebSocket } from "./_raw_ws.ts";
import { RedisServer, redisUnavailable } from "./_redis.ts";
import { MuxClient, muxUrl, TOKEN, waitUntil } from "./_util.ts";

const unavailable = await redisUnavailable("Redis fleet tests");

const LEASE_MS = 1500;
const PER_IP = 3;

/** The HTTP status an upgrade gets ("101" when it became a session, which is then closed at once). */
async function upgradeStatus(port: number): Promise<string> {
  try {
    await using _ws = await RawWebSocket.connect(port, `/tcp-mux?token=${TOKEN}`);
    return "101";
  } catch (err: unknown) {
    const match = /Upgrade refused: HTTP\/1\.1 (\d{3})/.exec(String(err));
    if (match === null) throw err;
    return match[1]!;
  }
}

async function metric(relay: RelayProcess, series: string): Promise<number | undefined> {
  const response = await fetch(`http://127.0.0.1:${relay.port}/metrics`, {
    headers: { authorization: `Bearer ${TOKEN}` },
  });
  const body = await response.text();
  const line = body.split("\n").find((l) => l.startsWith(`${series} `));
  return line === undefined ? undefined : Number(line.slice(series.length + 1));
}

Deno.test({
  name:
    "Redis fleet: two relay processes share the per-IP cap; a killed one's slots return; Redis down and back",
  ignore: unavailable !== undefined,
  async fn(t) {
    await using redis = await RedisServer.start();
    const env = {
      AERO_PROXY_AUTH_TOKEN: TOKEN,
      AERO_PROXY_REDIS_URL: redis.url,
      AERO_PROXY_REDIS_LEASE_MS: String(LEASE_MS),
      AERO_PROXY_MAX_SESSIONS_PER_IP: String(PER_IP),
    };
    const a = await spawnRelay(env);
    await using b = await spawnRelay(env);
    const clients: MuxClient[] = [];
    let c: RelayProcess | undefined;
    try {
      await t.step("the cap of 3 holds across both: the 4th session gets 429 on either relay", async () => {
        // Until a relay reaches Redis it admits on its local limits alone (as when Redis is down).
        for (const relay of [a, b]) {
          assert.ok(
            await waitUntil(async () => await metric(relay, "aero_proxy_redis_up") === 1, {
              timeoutMs: 5000,
              intervalMs: 20,
            }),
          );
        }
        clients.push(await MuxClient.connect(muxUrl(a.port)), await MuxClient.connect(muxUrl(a.port)));
        const onB = await MuxClient.connect(muxUrl(b.port));
        clients.push(onB);
        assert.equal(await upgradeStatus(a.port), "429");
        assert.equal(await upgradeStatus(b.port), "429");
        assert.equal(await metric(b, "aero_proxy_redis_up"), 1);
      });

      await t.step("a killed relay's two slots come back within the lease time", async () => {
        a.kill("SIGKILL");
        await a.status;
        const killedAt = performance.now();
        // Its clients are gone, but Redis still counts their leases until they run out.
        assert.equal(await upgradeStatus(b.port), "429");
        const back = await waitUntil(async () => {
          if (await upgradeStatus(b.port) !== "101") return false;
          return true;
        }, { timeoutMs: LEASE_MS * 3, intervalMs: 100 });
        const tookMs = performance.now() - killedAt;
        assert.ok(back, "slots came back");
        assert.ok(tookMs <= LEASE_MS + 1000, `after ${Math.round(tookMs)} ms (lease ${LEASE_MS} ms)`);
        clients.push(await MuxClient.connect(muxUrl(b.port)), await MuxClient.connect(muxUrl(b.port)));
        assert.equal(await upgradeStatus(b.port), "429", "B now holds all 3");
      });

      await t.step(
        "Redis stopped: a new relay serves on its local limits and counts the failures",
        async () => {
          await redis.stop();
          c = await spawnRelay(env);
          // The fleet (B) holds 3, but without Redis C only knows its own sessions.
          clients.push(await MuxClient.connect(muxUrl(c.port)));
          assert.equal(await metric(c, "aero_proxy_redis_up"), 0);
          const failures = c.logs.filter((l) =>
            (l.properties as Record<string, unknown>)?.event === "redis_unavailable"
          );
          assert.ok(
            failures.length >= 1 && failures.length <= 2,
            `logged at most once a minute: ${failures.length}`,
          );
        },
      );

      await t.step(
        "Redis back, empty: B and C register their sessions again and the cap holds within seconds",
        async () => {
          await redis.restart();
          const relay = c!;
          const shared = await waitUntil(async () => (await upgradeStatus(relay.port)) === "429", {
            timeoutMs: 5000,
            intervalMs: 100,
          });
          assert.ok(shared, "C refuses once B's sessions are counted again (C alone holds 1 of 3)");
          assert.equal(await metric(relay, "aero_proxy_redis_up"), 1);
          assert.ok(Number(await redis.command("ZCARD", "aero-net-proxy:sessions:ip:127.0.0.1")) >= 4);
        },
      );
    } finally {
      for (const client of clients) await client[Symbol.asyncDispose]();
      if (a.exited() === undefined) a.kill("SIGKILL");
      await a.status;
      await c?.[Symbol.asyncDispose]();
    }
  },
});
