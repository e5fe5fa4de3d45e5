/**
 * Wisp end to end with the real wisp-js client (v1 and v2) against real loopback targets: echo, 20 streams at
 * once, 32 MiB each way checked by hash (the upload paced by the relay's CONTINUE credits), UDP echo, a
 * policy refusal, the MOTD and password authentication.
 */
import assert from "node:assert/strict";
import { WispCloseReason } from "../../src/wire/wisp_codec.ts";
import {
  MIB,
  patternDigest,
  PatternStream,
  report,
  sha256Hex,
  startEchoServer,
  startRelay,
  startSinkServer,
  startSourceServer,
  TOKEN,
  withTimeout,
} from "../_util.ts";
import { connectWispJs } from "./_wisp_client.ts";
import { startUdpEcho } from "./_udp.ts";

const encoder = new TextEncoder();
const decoder = new TextDecoder();

function wispUrl(port: number, token = TOKEN): string {
  return `ws://127.0.0.1:${port}/wisp/${token}/`;
}

for (const version of [1, 2] as const) {
  Deno.test(`wisp-js v${version}: echo, then 20 streams at once`, async () => {
    await using relay = startRelay();
    await using echo = startEchoServer();
    await using client = await connectWispJs(wispUrl(relay.port), { version });
    assert.equal(client.conn.wisp_version, version);
    assert.equal(client.conn.max_buffer_size, 128);
    const first = client.open("127.0.0.1", echo.port);
    first.raw.send(encoder.encode("hello wisp"));
    assert.equal(decoder.decode(await first.until(10)), "hello wisp");

    const streams = Array.from({ length: 20 }, (_, i) => {
      const stream = client.open("localhost", echo.port);
      stream.raw.send(encoder.encode(`stream ${i} `.repeat(100)));
      return stream;
    });
    const answers = await Promise.all(streams.map((s, i) => s.until(`stream ${i} `.length * 100)));
    answers.forEach((bytes, i) => assert.equal(decoder.decode(bytes), `stream ${i} `.repeat(100)));
    // A client CLOSE ends the stream on the relay too (Wisp has no half-close).
    first.raw.close(WispCloseReason.VOLUNTARY);
    await withTimeout(
      (async () => {
        while (relay.relay.metrics.streamsActive > 20) await new Promise((r) => setTimeout(r, 10));
      })(),
      5000,
      "the closed stream to end on the relay",
    );
  });

  Deno.test(`wisp-js v${version}: 32 MiB download and 32 MiB upload, hash-checked`, async () => {
    const total = 32 * MIB;
    await using relay = startRelay();
    await using source = startSourceServer(total, 7);
    await using sink = startSinkServer();
    await using client = await connectWispJs(wispUrl(relay.port), { version });

    const down = client.open("127.0.0.1", source.port);
    const started = performance.now();
    const downloaded = await down.until(total, 60_000);
    assert.equal(await withTimeout(down.closed, 5000, "CLOSE after the download"), WispCloseReason.VOLUNTARY);
    assert.equal(sha256Hex(downloaded), patternDigest(total, 7));
    const downMs = performance.now() - started;

    // wisp-js sends while it has credit and holds the rest until the relay's next CONTINUE.
    const up = client.open("127.0.0.1", sink.port);
    const pattern = new PatternStream(11);
    let maxHeld = 0;
    const upStarted = performance.now();
    for (let sent = 0; sent < total; sent += 64 * 1024) {
      up.raw.send(pattern.fill(new Uint8Array(64 * 1024)));
      maxHeld = Math.max(maxHeld, up.raw.send_buffer.length);
      if (up.raw.send_buffer.length > 64) {
        // The relay has not granted more yet: let the event loop deliver its CONTINUE.
        while (up.raw.send_buffer.length > 0) await new Promise((r) => setTimeout(r, 1));
      }
    }
    while (up.raw.send_buffer.length > 0) await new Promise((r) => setTimeout(r, 1));
    up.raw.close(WispCloseReason.VOLUNTARY);
    const uploaded = await withTimeout(sink.received, 60_000, "the sink to receive the upload");
    const upMs = performance.now() - upStarted;
    assert.equal(uploaded.byteLength, total);
    assert.equal(sha256Hex(uploaded), patternDigest(total, 11));
    // The client really was paced by credits (it held packets back), and never went past them.
    assert.ok(maxHeld > 0, "wisp-js never waited for a CONTINUE: the relay's credit did not pace it");
    assert.equal(relay.relay.metrics.rateLimited.get("wisp_credit"), undefined);
    report(
      `wisp-js v${version}: 32 MiB down in ${downMs.toFixed(0)} ms, up in ${upMs.toFixed(0)} ms ` +
        `(client held up to ${maxHeld} packets for credit)`,
    );
  });

  Deno.test(`wisp-js v${version}: UDP echo through a UDP stream`, async () => {
    await using relay = startRelay();
    await using udp = await startUdpEcho();
    await using client = await connectWispJs(wispUrl(relay.port), { version });
    assert.equal(client.conn.udp_enabled, true);
    const stream = client.open("127.0.0.1", udp.port, "udp");
    const datagrams = ["one", "two", "three"];
    for (const text of datagrams) stream.raw.send(encoder.encode(text));
    await stream.until(11);
    // One DATA packet per datagram, each intact (UDP keeps message boundaries).
    assert.deepEqual(stream.chunks.map((c) => decoder.decode(c)).sort(), [...datagrams].sort());
    assert.equal(relay.relay.metrics.datagramsToTargets, 3);
    assert.equal(relay.relay.metrics.datagramsFromTargets, 3);
    assert.equal(relay.relay.metrics.udpBindingsActive, 1);
    stream.raw.close(WispCloseReason.VOLUNTARY);
  });

  Deno.test(`wisp-js v${version}: a denied destination is CLOSE 0x48 and never dialed`, async () => {
    await using relay = startRelay({ allowPrivateIps: false });
    await using echo = startEchoServer();
    await using udp = await startUdpEcho();
    await using client = await connectWispJs(wispUrl(relay.port), { version });
    const tcp = client.open("127.0.0.1", echo.port);
    assert.equal(
      await withTimeout(tcp.closed, 5000, "CLOSE for a denied TCP stream"),
      WispCloseReason.HOST_BLOCKED,
    );
    const dgram = client.open("127.0.0.1", udp.port, "udp");
    dgram.raw.send(encoder.encode("never"));
    assert.equal(
      await withTimeout(dgram.closed, 5000, "CLOSE for a denied UDP stream"),
      WispCloseReason.HOST_BLOCKED,
    );
    assert.equal(echo.accepted, 0);
    assert.equal(udp.received, 0);
    assert.equal(relay.relay.metrics.wispClosesSent.get("HOST_BLOCKED"), 2);
  });
}

Deno.test("wisp-js v2: the MOTD arrives in INFO", async () => {
  await using relay = startRelay({ wispMotd: "Welcome to the test relay" });
  await using client = await connectWispJs(wispUrl(relay.port), { version: 2 });
  assert.equal(client.conn.server_motd, "Welcome to the test relay");
});

Deno.test("wisp-js v2: password authentication with the token, when the URL carries none", async () => {
  await using relay = startRelay({ wispPasswordAuth: true });
  await using echo = startEchoServer();
  const url = `ws://127.0.0.1:${relay.port}/wisp/`;
  await using client = await connectWispJs(url, {
    version: 2,
    password: { username: "guest", password: TOKEN },
  });
  const stream = client.open("127.0.0.1", echo.port);
  stream.raw.send(encoder.encode("authenticated"));
  assert.equal(decoder.decode(await stream.until(13)), "authenticated");
  await assert.rejects(
    connectWispJs(url, { version: 2, password: { username: "guest", password: "wrong" } }),
    /closed before the handshake/,
  );
  assert.equal(relay.relay.metrics.wispClosesSent.get("AUTH_BAD_PASSWORD"), 1);
});
