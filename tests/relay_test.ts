/**
 * End to end against a relay in this process: real WebSocket client, real TCP targets on 127.0.0.1.
 */
import assert from "node:assert/strict";
import { RelayClient, SessionClosedError } from "../src/client/mod.ts";
import {
  encodeClose,
  encodeData,
  encodeError,
  encodeOpen,
  encodeOpenAck,
  ErrorCode,
  FrameType,
} from "../src/protocol/mod.ts";
import {
  closedPort,
  describeFrame,
  expectError,
  LOOPBACK,
  MuxClient,
  muxUrl,
  patternDigest,
  PatternStream,
  report,
  sha256Hex,
  startEchoServer,
  startRelay,
  startSinkServer,
  startSourceServer,
  startStalledServer,
  startTcpServer,
  TOKEN,
  withTimeout,
} from "./_util.ts";
import type { ServerFrame } from "../src/protocol/mod.ts";
import { defaultConfig } from "../src/config.ts";
import { serveRelay } from "../src/server.ts";
import { digestOf, readExactly } from "./client/_streams.ts";

/** Proves the session still works: a fresh stream echoes. */
async function assertEchoes(client: MuxClient, id: number, echoPort: number): Promise<void> {
  await client.open(id, echoPort);
  const payload = new TextEncoder().encode(`still alive ${id}`);
  client.sendData(id, payload);
  assert.deepEqual(await client.readBytes(id, payload.byteLength), payload);
  client.sendClose(id);
  assert.equal((await client.next(id)).type, FrameType.CLOSE);
}

Deno.test("the upgrade endpoint answers 404, 405, 401, 403 and 426 before any WebSocket", async (t) => {
  await using relay = startRelay();
  const base = `http://127.0.0.1:${relay.port}`;
  const status = async (path: string, init: RequestInit = {}) => {
    const response = await fetch(`${base}${path}`, init);
    await response.body?.cancel();
    return response.status;
  };
  await t.step("wrong path", async () => assert.equal(await status(`/other?token=${TOKEN}`), 404));
  await t.step("root", async () => assert.equal(await status("/"), 404));
  await t.step(
    "wrong method",
    async () => assert.equal(await status(`/tcp-mux?token=${TOKEN}`, { method: "POST" }), 405),
  );
  await t.step("missing token", async () => assert.equal(await status("/tcp-mux"), 401));
  await t.step("empty token", async () => assert.equal(await status("/tcp-mux?token="), 401));
  await t.step("wrong token", async () => assert.equal(await status("/tcp-mux?token=nope"), 403));
  await t.step("wrong bearer token", async () => {
    assert.equal(await status("/tcp-mux", { headers: { authorization: "Bearer nope" } }), 403);
  });
  await t.step(
    "right token, not a WebSocket upgrade",
    async () => assert.equal(await status(`/tcp-mux?token=${TOKEN}`), 426),
  );
  await t.step("a WebSocket with a wrong token never opens", async () => {
    await assert.rejects(MuxClient.connect(muxUrl(relay.port, "wrong")), /WebSocket failed/);
    await assert.rejects(MuxClient.connect(muxUrl(relay.port, null)), /WebSocket failed/);
  });
  assert.equal(relay.relay.metrics.authFailures, 6);
  assert.equal(relay.relay.metrics.sessionsTotal, 0);
});

Deno.test("a session authenticated by query or Bearer header relays two streams independently", async () => {
  await using echo = startEchoServer();
  await using relay = startRelay();
  await using client = await MuxClient.connect(muxUrl(relay.port));
  await client.open(1, echo.port);
  await client.open(2, echo.port);
  const encoder = new TextEncoder();
  client.sendData(1, encoder.encode("one-"));
  client.sendData(2, encoder.encode("two-two-"));
  client.sendData(1, encoder.encode("more"));
  assert.equal(new TextDecoder().decode(await client.readBytes(2, 8)), "two-two-");
  assert.equal(new TextDecoder().decode(await client.readBytes(1, 8)), "one-more");
  client.sendClose(1);
  assert.equal((await client.next(1)).type, FrameType.CLOSE);
  // Stream 2 is unaffected by the end of stream 1.
  client.sendData(2, encoder.encode("after"));
  assert.equal(new TextDecoder().decode(await client.readBytes(2, 5)), "after");

  // A Bearer header is accepted too (for non-browser clients).
  const headerClient = new WebSocket(muxUrl(relay.port, null), {
    headers: { authorization: `Bearer ${TOKEN}` },
  } as unknown as string[]);
  const opened = await new Promise<boolean>((resolve) => {
    headerClient.onopen = () => resolve(true);
    headerClient.onerror = () => resolve(false);
  });
  headerClient.close();
  await new Promise((resolve) => headerClient.onclose = resolve);
  assert.ok(opened, "Bearer-authenticated WebSocket should open");
});

Deno.test("1 MiB round-trips in 16 KiB DATA frames, byte for byte (RelayClient)", async () => {
  await using echo = startEchoServer();
  await using relay = startRelay({ clientBytesPerSec: 0 });
  await using client = new RelayClient(muxUrl(relay.port, null), { token: TOKEN });
  const stream = await client.connect(LOOPBACK, echo.port);
  const payload = new PatternStream(7).fill(new Uint8Array(1 << 20));
  const writer = stream.writable.getWriter();
  const [, echoed] = await Promise.all([
    writer.write(payload),
    readExactly(stream.readable, payload.byteLength),
  ]);
  assert.equal(echoed.byteLength, payload.byteLength);
  assert.ok(echoed.every((b, i) => b === payload[i]), "echoed bytes differ");
  await writer.close();
  assert.equal(relay.relay.metrics.bytesToTargets, payload.byteLength);
});

Deno.test("a 64 MiB download arrives complete and in order (SHA-256, RelayClient)", async () => {
  const total = 64 * 1024 * 1024;
  await using source = startSourceServer(total, 64);
  await using relay = startRelay();
  await using client = new RelayClient(muxUrl(relay.port, null), { token: TOKEN });
  const started = performance.now();
  const stream = await client.connect(LOOPBACK, source.port);
  const { hex, bytes } = await withTimeout(digestOf(stream.readable), 60_000, "the download");
  const seconds = (performance.now() - started) / 1000;
  report(
    `64 MiB download through the relay: ${seconds.toFixed(2)} s (${(64 / seconds).toFixed(0)} MiB/s)`,
  );
  assert.equal(bytes, total);
  assert.equal(hex, patternDigest(total, 64));
  await stream.closed;
});

Deno.test("close semantics: client CLOSE flushes queued bytes first, target EOF sends every byte then CLOSE", async (t) => {
  await using relay = startRelay({ clientBytesPerSec: 0 });
  await using client = await MuxClient.connect(muxUrl(relay.port));
  await t.step(
    "client CLOSE right behind DATA: the target gets every byte, then EOF; relay answers CLOSE",
    async () => {
      await using sink = startSinkServer();
      await client.open(1, sink.port);
      const payload = new PatternStream(1).fill(new Uint8Array(300_000));
      for (let off = 0; off < payload.byteLength; off += 10_000) {
        client.sendData(
          1,
          payload.subarray(off, off + 10_000),
        );
      }
      client.sendClose(1);
      const received = await withTimeout(sink.received, 10_000, "the sink to see EOF");
      assert.equal(received.byteLength, payload.byteLength);
      assert.deepEqual(received, payload);
      const frame = await client.next(1);
      assert.equal(frame.type, FrameType.CLOSE);
    },
  );
  await t.step("DATA and CLOSE sent before the OPEN ack are still delivered", async () => {
    await using sink = startSinkServer();
    client.send(encodeOpen(2, LOOPBACK, sink.port));
    client.sendData(2, new Uint8Array([1, 2, 3]));
    client.sendClose(2);
    assert.deepEqual(await withTimeout(sink.received, 10_000, "the sink"), new Uint8Array([1, 2, 3]));
    assert.equal((await client.next(2)).type, FrameType.OPEN);
    assert.equal((await client.next(2)).type, FrameType.CLOSE);
  });
  await t.step("target sends then closes: all DATA arrives, then exactly one CLOSE", async () => {
    await using source = startSourceServer(200_000, 5);
    await client.open(3, source.port);
    const data = await client.readUntilClose(3);
    assert.equal(data.byteLength, 200_000);
    assert.deepEqual(data, new PatternStream(5).fill(new Uint8Array(200_000)));
    // The client's CLOSE, crossing ours, is not an error.
    client.sendClose(3);
    client.sendData(3, new Uint8Array([1]));
    await assertEchoesAfter(client, 4);
    assert.deepEqual(client.pending(3), []);
  });
});

async function assertEchoesAfter(client: MuxClient, id: number): Promise<void> {
  await using echo = startEchoServer();
  await assertEchoes(client, id, echo.port);
}

Deno.test("connect refused gives ERROR 6 then CLOSE; the session lives on", async () => {
  await using relay = startRelay();
  await using client = await MuxClient.connect(muxUrl(relay.port));
  client.send(encodeOpen(5, LOOPBACK, closedPort()));
  expectError(await client.next(5), ErrorCode.CONNECT_FAILED, /Cannot connect to 127\.0\.0\.1:\d+/);
  assert.equal((await client.next(5)).type, FrameType.CLOSE);
  await assertEchoesAfter(client, 6);
});

Deno.test("private and special destinations are denied with ERROR 3 (OPEN frames only)", async () => {
  await using relay = startRelay({ allowPrivateIps: false });
  await using client = await MuxClient.connect(muxUrl(relay.port));
  const targets = [[127, 0, 0, 1], [10, 0, 0, 1], [169, 254, 169, 254], [0, 0, 0, 0], [224, 0, 0, 1], [
    192,
    168,
    0,
    1,
  ]];
  let id = 10;
  for (const ip of targets) {
    client.send(encodeOpen(++id, ip, 80));
    expectError(await client.next(id), ErrorCode.POLICY_DENIED, new RegExp(`${ip.join("\\.")}:80 denied`));
  }
  client.send(encodeOpen(++id, [1, 1, 1, 1], 25));
  expectError(await client.next(id), ErrorCode.POLICY_DENIED, /port 25/);
  assert.equal(relay.relay.metrics.policyDenied.get("special_range"), targets.length);
  assert.equal(relay.relay.metrics.streamsTotal, 0);
  // Nothing else arrives for denied ids (no CLOSE for a stream that never existed).
  await new Promise((r) => setTimeout(r, 50));
  for (let i = 11; i <= id; i++) assert.deepEqual(client.pending(i), []);
});

Deno.test("per-stream protocol errors get ERROR 5 on their id and the session lives on", async (t) => {
  await using echo = startEchoServer();
  await using relay = startRelay();
  await using client = await MuxClient.connect(muxUrl(relay.port));
  const cases: [string, Uint8Array, number, RegExp][] = [
    ["bad OPEN payload", new Uint8Array([1, 0, 0, 0, 20, 4, 127, 0]), 20, /expected 7 payload bytes/],
    ["ip_version 6", new Uint8Array([1, 0, 0, 0, 21, 6, 127, 0, 0, 1, 0, 80]), 21, /ip_version 6/],
    ["port 0", encodeOpen(22, LOOPBACK, 0), 22, /port 0/],
    ["id 0", encodeOpen(0, LOOPBACK, echo.port), 0, /id 0 is reserved/],
    [
      "DATA for an unknown id",
      encodeData(23, new Uint8Array([1])),
      23,
      /no open stream has connection id 23/,
    ],
    ["CLOSE for an unknown id", encodeClose(24), 24, /no open stream has connection id 24/],
    ["OPEN ack sent by the client", encodeOpenAck(25), 25, /acknowledgement/],
    ["ERROR sent by the client", encodeError(26, 9, "x"), 26, /must not send ERROR/],
  ];
  for (const [name, frame, id, pattern] of cases) {
    await t.step(name, async () => {
      client.send(frame);
      expectError(await client.next(id), ErrorCode.INVALID_FRAME, pattern);
    });
  }
  await t.step("duplicate id: ERROR 5, the first stream keeps working", async () => {
    await client.open(30, echo.port);
    client.send(encodeOpen(30, LOOPBACK, echo.port));
    expectError(await client.next(30), ErrorCode.INVALID_FRAME, /already open/);
    client.sendData(30, new Uint8Array([42]));
    assert.deepEqual(await client.readBytes(30, 1), new Uint8Array([42]));
  });
  await t.step("the session still relays", () => assertEchoes(client, 31, echo.port));
});

Deno.test("session-level violations get ERROR on id 0, then close 1002", async (t) => {
  await using relay = startRelay();
  const cases: [string, string | Uint8Array][] = [
    ["a 4-byte message", new Uint8Array([2, 0, 0, 0])],
    ["an empty message", new Uint8Array(0)],
    ["an unknown type", new Uint8Array([9, 0, 0, 0, 1])],
    ["a text message", "hello"],
  ];
  for (const [name, message] of cases) {
    await t.step(name, async () => {
      await using client = await MuxClient.connect(muxUrl(relay.port));
      client.ws.send(message);
      expectError(await client.next(0), ErrorCode.INVALID_FRAME);
      const event = await withTimeout(client.closed, 5000, "the close");
      assert.equal(event.code, 1002);
    });
  }
});

Deno.test("one session holds 500 concurrent streams (RelayClient)", async () => {
  await using echo = startEchoServer();
  await using relay = startRelay();
  await using client = new RelayClient(muxUrl(relay.port, null), { token: TOKEN });
  const streams = await Promise.all(Array.from({ length: 500 }, () => client.connect(LOOPBACK, echo.port)));
  await Promise.all(streams.map(async (stream) => {
    const message = new TextEncoder().encode(`#${stream.id}`);
    const writer = stream.writable.getWriter();
    await writer.write(message);
    assert.equal(
      new TextDecoder().decode(await readExactly(stream.readable, message.byteLength)),
      `#${stream.id}`,
    );
  }));
  // Every stream has echoed, so all 500 are open at once (aero-tcp-mux-v1 acknowledges no OPEN).
  assert.equal(relay.relay.metrics.streamsActive, 500);
  // Half-close each: the echo server sees EOF and closes, and the relay ends the stream with CLOSE FIN.
  await Promise.all(streams.map(async (stream) => {
    await stream.close();
  }));
  await withTimeout(
    (async () => {
      while (relay.relay.metrics.streamsActive !== 0) await new Promise((r) => setTimeout(r, 10));
    })(),
    2000,
    "streamsActive to reach 0",
  );
  assert.equal(client.streamCount, 0);
});

Deno.test("a target that stops reading gets ERROR 8 on its stream only; another stream still echoes", async () => {
  await using stalled = startStalledServer();
  await using echo = startEchoServer();
  await using relay = startRelay({ clientBytesPerSec: 0 });
  await using client = await MuxClient.connect(muxUrl(relay.port));
  await client.open(1, stalled.port);
  await client.open(2, echo.port);
  const chunk = new Uint8Array(64 * 1024);
  let sent = 0;
  let error: ServerFrame | undefined;
  // Bounded: at most 256 MiB; the relay must give up long before (kernel buffers + 1 MiB queue).
  while (error === undefined && sent < 256 * 1024 * 1024) {
    client.sendData(1, chunk);
    sent += chunk.byteLength;
    while (client.ws.bufferedAmount > 1 << 20) await new Promise((r) => setTimeout(r, 1));
    if (sent % (4 << 20) === 0) await new Promise((r) => setTimeout(r, 0));
    if (client.pending(1).length > 0) error = await client.next(1);
  }
  error ??= await client.next(1, 10_000);
  expectError(error, ErrorCode.BACKPRESSURE, /not reading fast enough/);
  assert.equal((await client.next(1)).type, FrameType.CLOSE);
  report(`ERROR 8 after ${(sent / 1024 / 1024).toFixed(1)} MiB sent to a target that never reads`);
  client.sendData(2, new Uint8Array([7, 7]));
  assert.deepEqual(await client.readBytes(2, 2), new Uint8Array([7, 7]));
});

Deno.test("per-session limits: stream count and OPEN rate give ERROR 4, the session lives on", async (t) => {
  await using echo = startEchoServer();
  await t.step("max streams", async () => {
    await using relay = startRelay({ maxStreamsPerSession: 2 });
    await using client = await MuxClient.connect(muxUrl(relay.port));
    await client.open(1, echo.port);
    await client.open(2, echo.port);
    client.send(encodeOpen(3, LOOPBACK, echo.port));
    expectError(await client.next(3), ErrorCode.RATE_LIMITED, /Too many streams/);
    client.sendClose(1);
    assert.equal((await client.next(1)).type, FrameType.CLOSE);
    await assertEchoes(client, 4, echo.port);
  });
  await t.step("OPEN rate", async () => {
    await using relay = startRelay({ openRate: 1, openBurst: 3, openQueueMs: 0 });
    await using client = await MuxClient.connect(muxUrl(relay.port));
    for (let id = 1; id <= 4; id++) client.send(encodeOpen(id, LOOPBACK, echo.port));
    for (let id = 1; id <= 3; id++) assert.equal((await client.next(id)).type, FrameType.OPEN);
    expectError(await client.next(4), ErrorCode.RATE_LIMITED, /Too many OPENs/);
    assert.equal(relay.relay.metrics.rateLimited.get("open_rate"), 1);
  });
  await t.step("client bytes per second: shaped by pausing the client, and every byte arrives", async () => {
    await using sink = startSinkServer();
    const rate = 64 * 1024;
    await using relay = startRelay({ clientBytesPerSec: rate, streamQueueBytes: 32 * 1024 });
    await using client = await MuxClient.connect(muxUrl(relay.port));
    await client.open(1, sink.port);
    const chunk = new Uint8Array(16 * 1024).map((_, i) => i % 251);
    const chunks = 12; // 192 KiB: the first 64 KiB is the burst, the rest takes about 2 s at the rate
    const started = performance.now();
    for (let i = 0; i < chunks; i++) client.sendData(1, chunk);
    client.send(encodeClose(1));
    const received = await withTimeout(sink.received, 10_000, "the sink to receive the upload");
    const elapsed = performance.now() - started;
    assert.equal(received.byteLength, chunks * chunk.byteLength);
    for (let i = 0; i < chunks; i++) {
      assert.deepEqual(received.subarray(i * chunk.byteLength, (i + 1) * chunk.byteLength), chunk);
    }
    assert.ok(elapsed >= 1500, `shaped upload took ${elapsed.toFixed(0)} ms, expected about 2 s`);
    assert.ok(relay.relay.metrics.uploadPauses >= 1, "the session paused reading at least once");
    assert.equal((await client.next(1)).type, FrameType.CLOSE);
  });
});

Deno.test("when the WebSocket goes away every TCP socket of the session is closed (RelayClient)", async () => {
  await using relay = startRelay();
  let closedByRelay = 0;
  const { promise: allClosed, resolve } = Promise.withResolvers<void>();
  await using server = startTcpServer(async (conn) => {
    const buf = new Uint8Array(1024);
    while ((await conn.read(buf)) !== null) { /* wait for EOF */ }
    if (++closedByRelay === 3) resolve();
  });
  const client = new RelayClient(muxUrl(relay.port, null), { token: TOKEN });
  const streams = [];
  for (let i = 0; i < 3; i++) streams.push(await client.connect(LOOPBACK, server.port));
  // connect() resolves once OPEN is sent; wait until the relay has actually dialled all three.
  await withTimeout(
    (async () => {
      while (server.accepted !== 3) await new Promise((r) => setTimeout(r, 10));
    })(),
    2000,
    "the relay to connect all three streams",
  );
  await client.close();
  for (const stream of streams) await assert.rejects(stream.closed, SessionClosedError);
  await withTimeout(allClosed, 2000, "the relay to close all three target sockets");
  assert.equal(server.accepted, 3);
  await withTimeout(
    (async () => {
      while (relay.relay.metrics.streamsActive !== 0) await new Promise((r) => setTimeout(r, 10));
    })(),
    2000,
    "streamsActive to reach 0",
  );
  assert.equal(relay.relay.metrics.sessionsActive, 0);
});

Deno.test("client CLOSE after an upload: a target that answered while reading still gets every byte and a FIN", async () => {
  // The target writes a little back for every read; bytes the relay has not read when it closes must not turn
  // its close into a reset that discards the upload still in flight.
  const outcomes: string[] = [];
  await using target = startTcpServer(async (conn) => {
    let total = 0;
    const buf = new Uint8Array(16 * 1024);
    try {
      for (;;) {
        const n = await conn.read(buf);
        if (n === null) break;
        total += n;
        await conn.write(buf.subarray(0, Math.min(n, 16)));
      }
      outcomes.push(`${total}/EOF`);
    } catch (err: unknown) {
      outcomes.push(`${total}/${err instanceof Error ? err.name : String(err)}`);
    }
  });
  await using relay = startRelay({ clientBytesPerSec: 0 });
  await using client = await MuxClient.connect(muxUrl(relay.port));
  const upload = 900_000;
  const streams = 8;
  for (let id = 1; id <= streams; id++) {
    client.send(encodeOpen(id, LOOPBACK, target.port));
    for (let off = 0; off < upload; off += 60_000) {
      client.sendData(id, new Uint8Array(Math.min(60_000, upload - off)));
    }
    client.sendClose(id);
  }
  for (let id = 1; id <= streams; id++) {
    for (;;) {
      const frame = await client.next(id, 10_000);
      assert.notEqual(frame.type, FrameType.ERROR, JSON.stringify(frame));
      if (frame.type === FrameType.CLOSE) break;
    }
  }
  await withTimeout(
    (async () => {
      while (outcomes.length < streams) await new Promise((r) => setTimeout(r, 10));
    })(),
    10_000,
    "every target connection to end",
  );
  assert.deepEqual(outcomes, Array(streams).fill(`${upload}/EOF`));
});

Deno.test("DATA and CLOSE behind an OPEN refused as malformed are dropped quietly, like any refused OPEN", async () => {
  await using relay = startRelay();
  await using client = await MuxClient.connect(muxUrl(relay.port));
  const refused: [number, Uint8Array][] = [
    [41, new Uint8Array([1, 0, 0, 0, 41, 6, 127, 0, 0, 1, 0, 80])], // ip_version 6
    [42, encodeOpen(42, LOOPBACK, 0)], // port 0
    [43, new Uint8Array([1, 0, 0, 0, 43, 4, 127, 0, 0, 1, 0])], // 6-byte payload
  ];
  for (const [id, open] of refused) {
    client.send(open);
    client.sendData(id, new Uint8Array([1]));
    client.sendClose(id);
    expectError(await client.next(id), ErrorCode.INVALID_FRAME);
  }
  // A sentinel answered after everything above: once it arrives, nothing else may be pending.
  client.sendClose(99);
  expectError(await client.next(99), ErrorCode.INVALID_FRAME, /no open stream has connection id 99/);
  for (const [id] of refused) assert.deepEqual(client.pending(id), [], `id ${id}`);
});

Deno.test("a 32 MiB upload at full speed arrives complete with the default settings", async () => {
  // v1 cannot slow a client down, so the relay must drain each stream's queue faster than a client that
  // keeps its own send buffer under 1 MiB (as a browser app watching bufferedAmount does) can fill it.
  const total = 32 * 1024 * 1024;
  await using sink = startSinkServer();
  await using relay = serveRelay(
    defaultConfig({ port: 0, authTokens: [TOKEN], allowCidrs: ["127.0.0.1/32"] }),
  );
  await using client = await MuxClient.connect(muxUrl(relay.port));
  await client.open(1, sink.port);
  const payload = new PatternStream(32).fill(new Uint8Array(total));
  for (let off = 0; off < total; off += 64 * 1024) {
    client.sendData(1, payload.subarray(off, off + 64 * 1024));
    while (client.ws.bufferedAmount > 1024 * 1024) await new Promise((r) => setTimeout(r, 1));
  }
  client.sendClose(1);
  const frame = await client.next(1, 30_000);
  assert.equal(frame.type, FrameType.CLOSE, JSON.stringify(describeFrame(frame)));
  const received = await withTimeout(sink.received, 30_000, "the sink to see EOF");
  assert.equal(received.byteLength, total);
  assert.equal(sha256Hex(received), sha256Hex(payload));
});
