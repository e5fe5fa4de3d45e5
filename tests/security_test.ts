/**
 * Who may connect, and every per-session limit: each rule over real sockets, and the session surviving it.
 */
import assert from "node:assert/strict";
import { encodeClose, encodeData, encodeOpen, ErrorCode, FrameType } from "../src/protocol/mod.ts";
import { spawnRelay } from "./_process.ts";
import { RawWebSocket } from "./_raw_ws.ts";
import {
  delay,
  expectError,
  hasCommand,
  LOOPBACK,
  MuxClient,
  muxUrl,
  report,
  startEchoServer,
  startRelay,
  startSourceServer,
  startTcpServer,
  TOKEN,
  withTimeout,
} from "./_util.ts";

async function echoOnce(client: MuxClient, id: number, port: number): Promise<void> {
  await client.open(id, port);
  client.sendData(id, new Uint8Array([id & 255]));
  assert.deepEqual(await client.readBytes(id, 1), new Uint8Array([id & 255]));
  client.sendClose(id);
  assert.equal((await client.next(id)).type, FrameType.CLOSE);
}

/** Status of an upgrade attempt made over a raw socket with arbitrary headers. */
async function upgradeStatus(
  port: number,
  path: string,
  headers: Record<string, string> = {},
): Promise<string> {
  try {
    await using _ws = await RawWebSocket.connect(port, path, headers);
    return "101";
  } catch (err: unknown) {
    const match = /Upgrade refused: HTTP\/1\.1 (\d{3})/.exec(String(err));
    if (match === null) throw err;
    return match[1]!;
  }
}

Deno.test("tokens: several at once for rotation, by query, Bearer header or subprotocol", async (t) => {
  const second = "second-token-0123456789";
  await using echo = startEchoServer();
  await using relay = startRelay({ authTokens: [TOKEN, second] });
  await t.step("either token works", async () => {
    for (const token of [TOKEN, second]) {
      await using client = await MuxClient.connect(muxUrl(relay.port, token));
      await echoOnce(client, 1, echo.port);
    }
  });
  await t.step("Bearer header (non-browser clients)", async () => {
    assert.equal(await upgradeStatus(relay.port, "/tcp-mux", { Authorization: `Bearer ${second}` }), "101");
    assert.equal(await upgradeStatus(relay.port, "/tcp-mux", { Authorization: "Bearer wrong" }), "403");
    assert.equal(await upgradeStatus(relay.port, "/tcp-mux", { Authorization: "Basic abc" }), "401");
  });
  await t.step("subprotocol form: the relay echoes only the non-secret protocol", async () => {
    await using client = await MuxClient.connect(muxUrl(relay.port, null), [
      "aero-seed-mux-v1",
      `aero-token.${TOKEN}`,
    ]);
    assert.equal(client.ws.protocol, "aero-seed-mux-v1");
    await echoOnce(client, 2, echo.port);
  });
  await t.step("subprotocol form with a wrong token: 403", async () => {
    const status = await upgradeStatus(relay.port, "/tcp-mux", {
      "Sec-WebSocket-Protocol": "aero-seed-mux-v1, aero-token.wrong",
    });
    assert.equal(status, "403");
  });
  await t.step("subprotocol token without aero-seed-mux-v1: 400", async () => {
    const status = await upgradeStatus(relay.port, "/tcp-mux", {
      "Sec-WebSocket-Protocol": `aero-token.${TOKEN}`,
    });
    assert.equal(status, "400");
  });
  await t.step(
    "the pre-0.2 pairing (aero-tcp-mux-v1 beside the token) is refused, never answered in seed framing",
    async () => {
      const status = await upgradeStatus(relay.port, "/tcp-mux", {
        "Sec-WebSocket-Protocol": `aero-tcp-mux-v1, aero-token.${TOKEN}`,
      });
      assert.equal(status, "400");
    },
  );
});

Deno.test("origin allowlist: other origins get 403, listed and absent origins are allowed", async () => {
  await using relay = startRelay({ allowedOrigins: ["https://app.example"] });
  const path = `/tcp-mux?token=${TOKEN}`;
  assert.equal(await upgradeStatus(relay.port, path, { Origin: "https://app.example" }), "101");
  assert.equal(await upgradeStatus(relay.port, path, { Origin: "https://evil.example" }), "403");
  assert.equal(await upgradeStatus(relay.port, path, { Origin: "null" }), "403");
  assert.equal(await upgradeStatus(relay.port, path), "101");
  assert.equal(relay.relay.metrics.rejectedUpgrades.get("origin_not_allowed"), 2);
});

Deno.test("session caps per client IP (429) and in total (503); URL length (414)", async (t) => {
  await t.step("per IP", async () => {
    await using relay = startRelay({ maxSessionsPerIp: 2 });
    const a = await MuxClient.connect(muxUrl(relay.port));
    await using _b = await MuxClient.connect(muxUrl(relay.port));
    assert.equal(await upgradeStatus(relay.port, `/tcp-mux?token=${TOKEN}`), "429");
    await a[Symbol.asyncDispose]();
    await withTimeout(
      (async () => {
        while (relay.relay.sessions.size > 1) await delay(5);
      })(),
      2000,
      "the closed session to be released",
    );
    await using _c = await MuxClient.connect(muxUrl(relay.port));
    assert.equal(relay.relay.sessions.size, 2);
  });
  await t.step("in total", async () => {
    await using relay = startRelay({ maxSessions: 1 });
    await using _a = await MuxClient.connect(muxUrl(relay.port));
    assert.equal(await upgradeStatus(relay.port, `/tcp-mux?token=${TOKEN}`), "503");
  });
  await t.step("URL length", async () => {
    await using relay = startRelay({ maxUrlLength: 200 });
    assert.equal(await upgradeStatus(relay.port, `/tcp-mux?token=${TOKEN}&pad=${"x".repeat(300)}`), "414");
    assert.equal(await upgradeStatus(relay.port, `/tcp-mux?token=${TOKEN}`), "101");
  });
  await t.step("X-Forwarded-For counts only with AERO_PROXY_TRUST_PROXY", async () => {
    for (const trustProxy of [true, false]) {
      await using relay = startRelay({ maxSessionsPerIp: 1, trustProxy });
      const path = `/tcp-mux?token=${TOKEN}`;
      await using _first = await RawWebSocket.connect(relay.port, path, { "X-Forwarded-For": "203.0.113.7" });
      const other = await upgradeStatus(relay.port, path, { "X-Forwarded-For": "198.51.100.1, 203.0.113.9" });
      assert.equal(other, trustProxy ? "101" : "429", `trustProxy ${trustProxy}`);
    }
  });
});

Deno.test("OPENs over the rate wait their turn up to a bound, then get ERROR 4", async () => {
  await using echo = startEchoServer();
  await using relay = startRelay({ openRate: 20, openBurst: 2, openQueueMs: 150 });
  await using client = await MuxClient.connect(muxUrl(relay.port));
  const started = performance.now();
  for (let id = 1; id <= 6; id++) client.send(encodeOpen(id, LOOPBACK, echo.port));
  // 2 at once, then one every 50 ms: ids 3..5 wait 50..150 ms; id 6 would wait 200 ms > 150 ms.
  for (let id = 1; id <= 5; id++) assert.equal((await client.next(id)).type, FrameType.OPEN, `ack ${id}`);
  expectError(await client.next(6), ErrorCode.RATE_LIMITED, /Too many OPENs/);
  const elapsed = performance.now() - started;
  assert.ok(
    elapsed >= 100,
    `smoothed OPENs were acknowledged after ${elapsed.toFixed(0)} ms, expected >= 100 ms`,
  );
  // A smoothed stream is a normal stream.
  client.sendData(5, new Uint8Array([5]));
  assert.deepEqual(await client.readBytes(5, 1), new Uint8Array([5]));
});

Deno.test("target-to-client bytes per second are shaped by delaying reads", async () => {
  const total = 768 * 1024;
  await using source = startSourceServer(total, 3);
  await using relay = startRelay({ targetBytesPerSec: 256 * 1024 });
  await using client = await MuxClient.connect(muxUrl(relay.port));
  const started = performance.now();
  await client.open(1, source.port);
  const data = await client.readUntilClose(1, 20_000);
  const seconds = (performance.now() - started) / 1000;
  report(`768 KiB at a 256 KiB/s downlink limit took ${seconds.toFixed(2)} s`);
  assert.equal(data.byteLength, total);
  // The first 256 KiB pass as the burst; the other 512 KiB need at least 2 s at 256 KiB/s.
  assert.ok(seconds >= 1.8, `took ${seconds.toFixed(2)} s, expected >= 1.8 s`);
});

Deno.test("a message over the frame limit gets ERROR 5 on id 0 and close 1009", async () => {
  await using relay = startRelay({ maxFrameBytes: 1000 });
  await using client = await MuxClient.connect(muxUrl(relay.port));
  client.send(encodeData(1, new Uint8Array(2000)));
  expectError(await client.next(0), ErrorCode.INVALID_FRAME, /exceeds the limit of 1000/);
  assert.equal((await withTimeout(client.closed, 5000, "close")).code, 1009);
  assert.equal(relay.relay.metrics.rateLimited.get("frame_size"), 1);
});

Deno.test("TCP connect timeout gives ERROR 6 (a listener with a full accept queue never answers)", async (t) => {
  if (!(await hasCommand("python3"))) {
    report("skipped: python3 is not installed (it provides a listener with a zero-length accept queue)");
    return;
  }
  // Python's listen(0) leaves room for one pending connection; we fill it, so the relay's SYN is dropped.
  const child = new Deno.Command("python3", {
    args: [
      "-c",
      "import socket,sys,time\ns=socket.socket();s.bind(('127.0.0.1',0));s.listen(0)\nprint(s.getsockname()[1],flush=True)\nsys.stdin.read()",
    ],
    stdin: "piped",
    stdout: "piped",
  }).spawn();
  const reader = child.stdout.pipeThrough(new TextDecoderStream()).getReader();
  const port = Number((await reader.read()).value?.trim());
  const filler = await Deno.connect({ hostname: "127.0.0.1", port });
  try {
    await t.step("the OPEN times out", async () => {
      await using relay = startRelay({ connectTimeoutMs: 300 });
      await using client = await MuxClient.connect(muxUrl(relay.port));
      client.send(encodeOpen(1, LOOPBACK, port));
      expectError(await client.next(1, 5000), ErrorCode.CONNECT_FAILED, /timed out after 300 ms/);
      assert.equal((await client.next(1)).type, FrameType.CLOSE);
    });
  } finally {
    filler.close();
    await child.stdin.close();
    await reader.cancel();
    await child.status;
  }
});

Deno.test("idle timeouts: a silent stream gets CLOSE, an empty session is closed", async (t) => {
  await using echo = startEchoServer();
  await t.step("stream", async () => {
    await using relay = startRelay({ streamIdleMs: 200 });
    await using client = await MuxClient.connect(muxUrl(relay.port));
    await client.open(1, echo.port);
    await client.open(2, echo.port);
    // Stream 2 stays busy; stream 1 stays silent.
    const until = performance.now() + 500;
    while (performance.now() < until) {
      client.sendData(2, new Uint8Array([1]));
      await client.readBytes(2, 1);
      await delay(40);
    }
    assert.equal((await client.next(1, 2000)).type, FrameType.CLOSE);
    client.sendData(2, new Uint8Array([9]));
    assert.deepEqual(await client.readBytes(2, 1), new Uint8Array([9]));
  });
  await t.step("session", async () => {
    await using relay = startRelay({ sessionIdleMs: 200 });
    await using client = await MuxClient.connect(muxUrl(relay.port));
    const event = await withTimeout(client.closed, 3000, "the idle session to close");
    assert.equal(event.code, 1000);
  });
});

Deno.test("keepalive: a peer that stops answering pings is dropped and its sockets closed", async () => {
  let closedByRelay = 0;
  await using target = startTcpServer(async (conn) => {
    const buf = new Uint8Array(256);
    while ((await conn.read(buf)) !== null) { /* until the relay closes */ }
    closedByRelay++;
  });
  await using relay = startRelay({ wsKeepaliveS: 1 });
  await using ws = await RawWebSocket.connect(relay.port, `/tcp-mux?token=${TOKEN}`);
  await ws.send(encodeOpen(1, LOOPBACK, target.port));
  const ack = await ws.read();
  assert.equal(ack?.payload[0], FrameType.OPEN);
  // Now never read again: pings go unanswered.
  await withTimeout(
    (async () => {
      while (closedByRelay === 0) await delay(50);
    })(),
    8000,
    "the relay to drop the silent peer",
  );
  assert.equal(relay.relay.metrics.streamsActive, 0);
});

Deno.test("defence in depth: a connect refused by Deno's --deny-net is ERROR 3, not a crash", async (t) => {
  await using echo = startEchoServer();
  await t.step("an explicit --deny-net=127.0.0.2 with ALLOW_PRIVATE_IPS=1", async () => {
    await using relay = await spawnRelay(
      { AERO_PROXY_AUTH_TOKEN: TOKEN, AERO_PROXY_ALLOW_PRIVATE_IPS: "1" },
      [],
      { denoFlags: ["--deny-net=127.0.0.2"] },
    );
    await using client = await MuxClient.connect(muxUrl(relay.port));
    client.send(encodeOpen(1, [127, 0, 0, 2], echo.port));
    expectError(await client.next(1), ErrorCode.POLICY_DENIED, /127\.0\.0\.2/);
    assert.equal((await client.next(1)).type, FrameType.CLOSE);
    await echoOnce(client, 2, echo.port);
  });
  await t.step(
    "the start:sandboxed task: its deny list stops 127.0.0.2 although the policy allows it",
    async () => {
      await using relay = await spawnRelay(
        { AERO_PROXY_AUTH_TOKEN: TOKEN, AERO_PROXY_ALLOW_PRIVATE_IPS: "1" },
        [],
        { task: "start:sandboxed" },
      );
      await using client = await MuxClient.connect(muxUrl(relay.port));
      client.send(encodeOpen(1, [127, 0, 0, 2], echo.port));
      expectError(await client.next(1), ErrorCode.POLICY_DENIED);
      // 127.0.0.1 stays reachable (the relay must be able to listen there).
      await echoOnce(client, 2, echo.port);
      const warned = relay.logs.some((r) =>
        String((r.properties as Record<string, unknown>).reason).includes("--deny-net")
      );
      assert.ok(warned, "the relay warns that the sandbox overrides ALLOW_PRIVATE_IPS");
    },
  );
});

Deno.test("a weak token on a network listener stops the relay with exit 2", async () => {
  const { runToEnd } = await import("./_process.ts");
  const result = await runToEnd({ AERO_PROXY_AUTH_TOKEN: "dev-token", AERO_PROXY_HOST: "0.0.0.0" });
  assert.equal(result.code, 2);
  assert.match(result.stderr, /shorter than 16 bytes/);
  assert.ok(!result.stderr.includes("dev-token"), "the token itself is not echoed");
});

Deno.test("a client that floods ERROR-earning frames without reading is cut off, so relay memory stays bounded", async () => {
  await using relay = startRelay();
  await using ws = await RawWebSocket.connect(relay.port, `/tcp-mux?token=${TOKEN}`);
  // 5-byte CLOSE frames for ids that were never open each earn a ~60-byte ERROR; this client never reads them.
  const frames = Array.from({ length: 20_000 }, (_, i) => encodeClose(1_000_000 + i));
  for (let round = 0; round < 25 && relay.relay.sessions.size > 0; round++) {
    await ws.sendMany(frames).catch(() => {});
    await delay(20);
  }
  await withTimeout(
    (async () => {
      while (relay.relay.sessions.size > 0) await delay(10);
    })(),
    5000,
    "the relay to drop the session",
  );
  assert.equal(relay.relay.metrics.rateLimited.get("unread_errors"), 1);
  assert.equal(relay.relay.metrics.sessionsActive, 0);
});

Deno.test("a session the relay closed frees its slot even if the peer never answers the close", async () => {
  await using relay = startRelay({ maxSessionsPerIp: 1 });
  const path = `/tcp-mux?token=${TOKEN}`;
  const silent: RawWebSocket[] = [];
  try {
    for (let i = 0; i < 2; i++) {
      const ws = await RawWebSocket.connect(relay.port, path);
      silent.push(ws);
      await ws.send(new TextEncoder().encode("not a frame"), 0x1); // a violation: the relay closes with 1002
      await withTimeout(
        (async () => {
          while (relay.relay.sessions.size > 0) await delay(5);
        })(),
        2000,
        "the relay to end the session",
      );
      // This peer never reads, so it never answers the close; the slot is free all the same.
    }
    assert.equal(relay.relay.metrics.sessionsActive, 0);
    // Two unanswered closes from one address reach twice the limit of 1: the next upgrade waits for them.
    assert.equal(await upgradeStatus(relay.port, path), "429");
    silent.shift()!.abort();
    await withTimeout(
      (async () => {
        while ((await upgradeStatus(relay.port, path)) !== "101") await delay(20);
      })(),
      3000,
      "a slot once a silent peer has gone",
    );
  } finally {
    for (const ws of silent) ws.abort();
  }
});
