/**
 * The relay as users run it: the `deno task start` command line in a subprocess (network narrowed to loopback).
 */
import assert from "node:assert/strict";
import { encodeOpen } from "../src/protocol/mod.ts";
import { RelayClient } from "../src/client/mod.ts";
import { runToEnd, spawnRelay } from "./_process.ts";
import { readExactly } from "./client/_streams.ts";
import { RawDownload, RawWebSocket } from "./_raw_ws.ts";
import {
  delay,
  LOOPBACK,
  MuxClient,
  muxUrl,
  patternDigest,
  report,
  rssOf,
  startEchoServer,
  startSourceServer,
  TOKEN,
  withTimeout,
} from "./_util.ts";

const MIB = 1024 * 1024;

Deno.test("deno task start without a token generates one, prints the connect URL once, and relays", async () => {
  await using echo = startEchoServer();
  await using relay = await spawnRelay({ AERO_PROXY_ALLOW_PRIVATE_IPS: "1" });
  await withTimeout(
    (async () => {
      while (!relay.stderr().includes("\n", relay.stderr().indexOf("Connect to:"))) await delay(10);
    })(),
    5000,
    "the connect URL on stderr",
  );
  const match = /Connect to: (ws:\/\/127\.0\.0\.1:\d+\/tcp-mux\?token=([A-Za-z0-9_-]{43}))/.exec(
    relay.stderr(),
  );
  assert.ok(match, `no connect URL in stderr: ${relay.stderr()}`);
  const [, url, token] = match;
  assert.equal(relay.stderr().split("Connect to:").length, 2, "the URL is printed exactly once");
  const printed = new URL(url!);
  printed.search = "";
  await using client = new RelayClient(printed, { token: token! });
  const stream = await client.connect(LOOPBACK, echo.port);
  const writer = stream.writable.getWriter();
  await writer.write(new Uint8Array([1, 2, 3]));
  assert.deepEqual(await readExactly(stream.readable, 3), new Uint8Array([1, 2, 3]));
  await writer.close();
  assert.ok(!JSON.stringify(relay.logs).includes(token!), "the token must not appear in the logs");
});

Deno.test("structured logs are JSON lines with session and stream events, and never the token", async () => {
  await using echo = startEchoServer();
  // Debug level: a stream that ends cleanly is logged there (errors are at info).
  await using relay = await spawnRelay({
    AERO_PROXY_AUTH_TOKEN: TOKEN,
    AERO_PROXY_ALLOW_PRIVATE_IPS: "1",
    AERO_PROXY_LOG_LEVEL: "debug",
  });
  const forbidden = await fetch(`http://127.0.0.1:${relay.port}/tcp-mux?token=${TOKEN}x`);
  await forbidden.body?.cancel();
  assert.equal(forbidden.status, 403);
  {
    await using client = await MuxClient.connect(muxUrl(relay.port));
    await client.open(9, echo.port);
    client.sendData(9, new Uint8Array(1000));
    await client.readBytes(9, 1000);
    client.sendClose(9);
    await client.next(9);
  }
  const events = () => relay.logs.map((r) => (r.properties as Record<string, unknown>).event);
  await withTimeout(
    (async () => {
      while (!events().includes("session_close") || !events().includes("auth_failed")) await delay(20);
    })(),
    5000,
    "a session_close log line",
  );
  for (const event of ["listening", "auth_failed", "session_open", "stream_close", "session_close"]) {
    assert.ok(events().includes(event), `missing ${event} in ${JSON.stringify(events())}`);
  }
  const streamClose = relay.logs.find((r) =>
    (r.properties as Record<string, unknown>).event === "stream_close"
  )!;
  assert.deepEqual(
    { ...(streamClose.properties as Record<string, unknown>), sessionId: "", durationMs: 0, connectMs: 0 },
    {
      event: "stream_close",
      sessionId: "",
      streamId: 9,
      destination: `127.0.0.1:${echo.port}`,
      reason: "client_close",
      durationMs: 0,
      connectMs: 0,
      bytesToTarget: 1000,
      bytesFromTarget: 1000,
    },
  );
  assert.ok(!JSON.stringify(relay.logs).includes(TOKEN), "the token must not appear in the logs");
});

Deno.test("bad configuration exits 2 with one line naming the variable", async (t) => {
  const cases: [Record<string, string>, string[], RegExp][] = [
    [{ AERO_PROXY_PORT: "abc" }, [], /AERO_PROXY_PORT must be an integer from 0 to 65535, got "abc"/],
    [{ AERO_PROXY_ALLOW_PRIVATE_IPS: "maybe" }, [], /AERO_PROXY_ALLOW_PRIVATE_IPS must be 1 or 0/],
    [
      { AERO_PROXY_MAX_STREAMS_PER_SESSION: "-1" },
      [],
      /AERO_PROXY_MAX_STREAMS_PER_SESSION must be a positive integer/,
    ],
    [{}, ["--bogus"], /bogus/],
  ];
  for (const [env, args, pattern] of cases) {
    await t.step(JSON.stringify({ env, args }), async () => {
      const result = await runToEnd(env, args);
      assert.equal(result.code, 2);
      assert.match(result.stderr, pattern);
      assert.equal(result.stderr.trim().split("\n").length, 1, result.stderr);
      assert.equal(result.stdout, "");
    });
  }
  await t.step("--help and --version exit 0", async () => {
    const help = await runToEnd({}, ["--help"]);
    assert.equal(help.code, 0);
    assert.match(help.stdout, /AERO_PROXY_AUTH_TOKEN/);
    const version = await runToEnd({}, ["--version"]);
    assert.equal(version.code, 0);
    assert.match(version.stdout, /^aero-net-proxy \d+\.\d+\.\d+/);
  });
});

Deno.test("SIGTERM closes sessions after the grace period and exits 0", async () => {
  await using relay = await spawnRelay({ AERO_PROXY_AUTH_TOKEN: TOKEN, AERO_PROXY_SHUTDOWN_GRACE_MS: "200" });
  const client = new RelayClient(muxUrl(relay.port, null), { token: TOKEN });
  await client.ready;
  relay.kill("SIGTERM");
  const ended = await withTimeout(client.closed, 10_000, "the session to close");
  assert.equal(ended.closeCode, 1001);
  assert.equal((await relay.status).code, 0);
});

Deno.test("a client that stops reading for 2 s while the target pushes 64 MiB: bounded relay memory, nothing lost", async () => {
  const total = 64 * MIB;
  await using source = startSourceServer(total, 11);
  await using relay = await spawnRelay({ AERO_PROXY_AUTH_TOKEN: TOKEN, AERO_PROXY_ALLOW_PRIVATE_IPS: "1" });
  await delay(200);
  const idle = await rssOf(relay.pid);
  await using ws = await RawWebSocket.connect(relay.port, `/tcp-mux?token=${TOKEN}`);
  await ws.send(encodeOpen(1, LOOPBACK, source.port));
  const download = new RawDownload(ws);
  await download.readUntil(() => download.received >= 4 * MIB);
  // Stop reading the socket entirely; sample the relay's RSS meanwhile.
  let peak = await rssOf(relay.pid);
  const sentBefore = source.sent;
  for (let i = 0; i < 20; i++) {
    await delay(100);
    peak = Math.max(peak, await rssOf(relay.pid));
  }
  const sentDuringPause = source.sent - sentBefore;
  await withTimeout(download.readUntil(() => false), 60_000, "the rest of the download");
  const growth = (peak - idle) / MIB;
  report(
    `relay RSS idle ${(idle / MIB).toFixed(1)} MiB, peak during the stall ${(peak / MIB).toFixed(1)} MiB ` +
      `(+${growth.toFixed(1)} MiB); target pushed ${
        (sentDuringPause / MIB).toFixed(1)
      } MiB during the 2 s pause`,
  );
  assert.ok(download.closed, "the stream ends with CLOSE");
  assert.equal(download.received, total);
  assert.equal(download.digest(), patternDigest(total, 11));
  assert.ok(growth < 64, `relay RSS grew by ${growth.toFixed(1)} MiB (limit 64 MiB)`);
  assert.ok(
    sentDuringPause < 32 * MIB,
    `the target kept sending ${sentDuringPause} bytes: backpressure did not reach it`,
  );
});
