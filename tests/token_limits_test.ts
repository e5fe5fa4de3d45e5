/**
 * Per-token limits at the relay: concurrent sessions, the OPEN rate over all of a token's sessions, and the byte
 * quota per period; counted in one process (the default) and across two relays sharing a real Redis.
 */
import assert from "node:assert/strict";
import { tokenId } from "../src/auth.ts";
import { quotaPeriod, TokenLimits } from "../src/core/quota.ts";
import { encodeOpen, ErrorCode, FrameType } from "../src/protocol/mod.ts";
import { RedisServer, redisUnavailable } from "./_redis.ts";
import {
  expectError,
  LOOPBACK,
  MuxClient,
  muxUrl,
  startEchoServer,
  startRelay,
  startSourceServer,
  TOKEN,
  waitUntil,
  withTimeout,
} from "./_util.ts";

const OTHER = "another-token-0123456789abcdef";

/**
 * The upgrade's HTTP status and its Retry-After, read from the raw response head ("101" when it became a
 * session, which the test then drops).
 */
async function upgrade(port: number, token: string): Promise<{ status: string; retryAfter?: string }> {
  const conn = await Deno.connect({ hostname: "127.0.0.1", port });
  try {
    const key = btoa(String.fromCharCode(...crypto.getRandomValues(new Uint8Array(16))));
    await conn.write(new TextEncoder().encode(
      `GET /tcp-mux?token=${token} HTTP/1.1\r\nHost: 127.0.0.1\r\nUpgrade: websocket\r\n` +
        `Connection: Upgrade\r\nSec-WebSocket-Key: ${key}\r\nSec-WebSocket-Version: 13\r\n\r\n`,
    ));
    let head = "";
    const buffer = new Uint8Array(4096);
    while (!head.includes("\r\n\r\n")) {
      const n = await conn.read(buffer);
      if (n === null) break;
      head += new TextDecoder().decode(buffer.subarray(0, n));
    }
    const status = /^HTTP\/1\.1 (\d{3})/.exec(head)?.[1] ?? `no status in ${JSON.stringify(head)}`;
    const retryAfter = /\r\nretry-after: *(\d+)/i.exec(head)?.[1];
    return { status, ...(retryAfter === undefined ? {} : { retryAfter }) };
  } finally {
    conn.close();
  }
}

Deno.test("token limits (unit): sessions, OPEN bucket, bytes per period aligned to the epoch", () => {
  let wall = 7_200_000 + 1_000; // one second into an hourly period
  let mono = 0;
  const limits = new TokenLimits(
    {
      maxSessionsPerToken: 2,
      tokenOpenRate: 1,
      tokenOpenBurst: 2,
      tokenByteQuota: 100,
      tokenQuotaPeriodS: 3600,
    },
    () => wall,
    () => mono,
  );
  assert.ok(limits.active);
  limits.addSession("a");
  assert.ok(limits.sessionAllowed("a"));
  limits.addSession("a");
  assert.equal(limits.sessionAllowed("a"), false);
  assert.ok(limits.sessionAllowed("b"));
  limits.removeSession("a");
  assert.ok(limits.sessionAllowed("a"));

  assert.deepEqual([limits.takeOpen("a"), limits.takeOpen("a"), limits.takeOpen("a")], [true, true, false]);
  mono += 1000;
  assert.equal(limits.takeOpen("a"), true, "one more a second");

  assert.equal(limits.addBytes("a", 60), "under");
  assert.equal(limits.exhaustedFor("a"), 0);
  assert.equal(limits.addBytes("a", 40), "crossed", "the addition that reaches the quota reports it");
  assert.equal(limits.addBytes("a", 1), "over", "later ones are over it");
  assert.equal(limits.exhaustedFor("a"), 3_599_000, "until the period ends");
  wall += 3_599_000;
  assert.equal(limits.exhaustedFor("a"), 0, "a new period starts from zero");
  limits.markExhausted("b");
  assert.equal(limits.exhaustedFor("b"), 3_600_000, "the fleet said so for this period");
  assert.equal(limits.addBytes("b", 1), "over", "so its sessions end on their next bytes");

  const off = new TokenLimits(
    { maxSessionsPerToken: 0, tokenOpenRate: 0, tokenOpenBurst: 1, tokenByteQuota: 0, tokenQuotaPeriodS: 60 },
  );
  assert.equal(off.active, false);
  assert.ok(off.takeOpen("x") && off.addBytes("x", 1e12) === "under" && off.exhaustedFor("x") === 0);
});

Deno.test("token limits: sessions per token (429), counted per token, not per IP", async () => {
  await using relay = startRelay({ authTokens: [TOKEN, OTHER], maxSessionsPerToken: 2 });
  await using _a = await MuxClient.connect(muxUrl(relay.port));
  await using _b = await MuxClient.connect(muxUrl(relay.port));
  assert.deepEqual(await upgrade(relay.port, TOKEN), { status: "429", retryAfter: "5" });
  assert.equal((await upgrade(relay.port, OTHER)).status, "101", "another token has its own count");
  assert.equal(relay.relay.metrics.rejectedUpgrades.get("sessions_per_token"), 1);
});

Deno.test("token limits: the OPEN rate spans all of a token's sessions (ERROR 4)", async () => {
  await using echo = startEchoServer();
  await using relay = startRelay({ tokenOpenRate: 1, tokenOpenBurst: 3 });
  await using one = await MuxClient.connect(muxUrl(relay.port));
  await using two = await MuxClient.connect(muxUrl(relay.port));
  await one.open(1, echo.port);
  await one.open(2, echo.port);
  await two.open(1, echo.port);
  two.send(encodeOpen(2, LOOPBACK, echo.port));
  expectError(await two.next(2), ErrorCode.RATE_LIMITED, /Too many OPENs for this token/);
  assert.equal(relay.relay.metrics.rateLimited.get("token_open_rate"), 1);
});

Deno.test("token limits: over the byte quota, the token's sessions close with 1008 and new ones get 429", async () => {
  await using source = startSourceServer(256 * 1024);
  await using relay = startRelay({
    authTokens: [TOKEN, OTHER],
    tokenByteQuota: 64 * 1024,
    tokenQuotaPeriodS: 3600,
  });
  await using spender = await MuxClient.connect(muxUrl(relay.port));
  await using bystander = await MuxClient.connect(muxUrl(relay.port, OTHER));
  await spender.open(1, source.port);
  const closed = await withTimeout(spender.closed, 5000, "the spender's session closed");
  assert.equal(closed.code, 1008);
  assert.match(closed.reason, /byte quota/);
  const refused = await upgrade(relay.port, TOKEN);
  assert.equal(refused.status, "429");
  const left = Number(refused.retryAfter);
  assert.ok(left > 0 && left <= 3600, `Retry-After ${refused.retryAfter} is the rest of the period`);
  assert.equal(relay.relay.metrics.rejectedUpgrades.get("token_quota"), 1);
  assert.equal(bystander.ws.readyState, WebSocket.OPEN, "another token's session goes on");
});

const unavailable = await redisUnavailable("token limits through Redis");

Deno.test({
  name: "token limits through Redis: two relays share a token's session cap and OPEN rate",
  ignore: unavailable !== undefined,
  async fn(t) {
    await using redis = await RedisServer.start();
    await using echo = startEchoServer();
    const shared = {
      redisUrl: redis.url,
      maxSessionsPerToken: 3,
      tokenOpenRate: 1,
      tokenOpenBurst: 3,
    };
    await using a = startRelay(shared);
    await using b = startRelay(shared);
    const up = () => a.relay.metrics.redisUp === 1 && b.relay.metrics.redisUp === 1;
    assert.ok(await waitUntil(up, { timeoutMs: 5000, intervalMs: 10 }), "both relays reach Redis");

    await t.step(
      "sessions: 2 on A and 1 on B, then 429 on either; OPENs: a burst of 3 across both",
      async () => {
        await using onA1 = await MuxClient.connect(muxUrl(a.port));
        await using onA2 = await MuxClient.connect(muxUrl(a.port));
        await using onB = await MuxClient.connect(muxUrl(b.port));
        assert.equal((await upgrade(a.port, TOKEN)).status, "429");
        assert.equal((await upgrade(b.port, TOKEN)).status, "429");

        await onA1.open(1, echo.port);
        await onB.open(1, echo.port);
        await onA2.open(1, echo.port);
        onB.send(encodeOpen(2, LOOPBACK, echo.port));
        expectError(await onB.next(2), ErrorCode.RATE_LIMITED, /across all its sessions and relays/);
      },
    );
    assert.equal(a.relay.metrics.redisErrors.size + b.relay.metrics.redisErrors.size, 0);
  },
});

Deno.test({
  name: "token limits through Redis: bytes moved on one relay exhaust the quota on the other",
  ignore: unavailable !== undefined,
  async fn() {
    await using redis = await RedisServer.start();
    // Each stream moves 60 KiB: under the quota on either relay alone, over it for the two together.
    await using source = startSourceServer(60 * 1024);
    const shared = { redisUrl: redis.url, tokenByteQuota: 100 * 1024 };
    await using a = startRelay(shared);
    await using b = startRelay(shared);
    const up = () => a.relay.metrics.redisUp === 1 && b.relay.metrics.redisUp === 1;
    assert.ok(await waitUntil(up, { timeoutMs: 5000, intervalMs: 10 }), "both relays reach Redis");
    await using onB = await MuxClient.connect(muxUrl(b.port));
    {
      await using onA = await MuxClient.connect(muxUrl(a.port));
      await onA.open(1, source.port);
      assert.equal((await onA.readUntilClose(1)).byteLength, 60 * 1024);
    }
    // A's count reaches Redis within a second (a relay flushes what it counted once a second).
    const period = quotaPeriod(Date.now(), 86_400).index;
    const key = `aero-net-proxy:bytes:${tokenId(TOKEN)}:${period}`;
    const flushed = await waitUntil(async () => Number(await redis.command("GET", key)) === 60 * 1024, {
      timeoutMs: 5000,
      intervalMs: 50,
    });
    assert.ok(flushed, `A's 60 KiB are counted in Redis (${key})`);
    await onB.open(1, source.port);
    assert.equal((await onB.readUntilClose(1)).byteLength, 60 * 1024);
    // B learns the fleet's total (120 KiB, over 100) at its next flush, within a second, and ends the session.
    const closed = await withTimeout(onB.closed, 5000, "B's session closed for the quota");
    assert.equal(closed.code, 1008);
    const refused = await upgrade(a.port, TOKEN);
    assert.equal(refused.status, "429", "A refuses the token too, once the fleet's total is over");
  },
});

Deno.test({
  name: "limits through a slow Redis: the total session cap holds for upgrades waiting on Redis",
  ignore: unavailable !== undefined,
  async fn() {
    await using redis = await RedisServer.start();
    await using relay = startRelay({ redisUrl: redis.url, maxSessions: 2, maxSessionsPerIp: 100 });
    assert.ok(await waitUntil(() => relay.relay.metrics.redisUp === 1, { timeoutMs: 5000, intervalMs: 10 }));
    // Every command now waits past the 250 ms timeout, so the upgrades below overlap while Redis "answers".
    await redis.command("CLIENT", "PAUSE", "1500", "ALL");
    const results = await Promise.all(Array.from({ length: 10 }, () => upgrade(relay.port, TOKEN)));
    const admitted = results.filter((r) => r.status === "101").length;
    assert.ok(admitted <= 2, `maxSessions 2, yet ${admitted} of 10 upgrades got 101`);
    assert.equal(results.filter((r) => r.status === "503").length, 10 - admitted);
  },
});

Deno.test({
  name: "limits through a slow Redis: a session that starts while another spends the quota ends too",
  ignore: unavailable !== undefined,
  async fn() {
    await using redis = await RedisServer.start();
    await using source = startSourceServer(1024 * 1024);
    await using relay = startRelay({
      redisUrl: redis.url,
      tokenByteQuota: 64 * 1024,
      tokenQuotaPeriodS: 3600,
    });
    assert.ok(await waitUntil(() => relay.relay.metrics.redisUp === 1, { timeoutMs: 5000, intervalMs: 10 }));
    await redis.command("CLIENT", "PAUSE", "3000", "ALL");
    await using spender = await MuxClient.connect(muxUrl(relay.port));
    const late = MuxClient.connect(muxUrl(relay.port));
    await spender.open(1, source.port);
    assert.equal((await withTimeout(spender.closed, 3000, "the spender closed")).code, 1008);
    // The second session either never started (429) or ended with 1008 before it moved the quota again.
    let moved = 0;
    try {
      await using second = await late;
      second.send(encodeOpen(1, LOOPBACK, source.port));
      second.onFrames(1, (frame) => {
        if (frame.type === FrameType.DATA) moved += frame.data.byteLength;
      });
      assert.equal((await withTimeout(second.closed, 3000, "the second session closed")).code, 1008);
    } catch (err: unknown) {
      if (!/429|closed/i.test(String(err))) throw err;
    }
    assert.ok(moved < 64 * 1024, `the quota was spent, yet the second session moved ${moved} bytes`);
  },
});
