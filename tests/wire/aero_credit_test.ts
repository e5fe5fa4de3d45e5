/**
 * The credit extension (`aero-tcp-mux-v1-credit`) on a live relay, frame by frame: negotiation, the download
 * window (the relay never sends past the client's grants, and reads the target no faster), the upload window
 * (credit returned exactly once as bytes reach the target, an overrun is an ERROR on that stream), a target
 * that stops reading for longer than the stall rule (no ERROR, memory bounded by the window), and fast-check
 * over random windows and chunkings (no overrun, no deadlock).
 */
import assert from "node:assert/strict";
import fc from "fast-check";
import { defaultConfig } from "../../src/config.ts";
import { type RunningRelay, serveRelay } from "../../src/server.ts";
import {
  encodeData,
  encodeOpen,
  encodePing,
  encodeRawFrame,
  encodeWindow,
  MUX_CREDIT_INITIAL_WINDOW,
  MUX_CREDIT_SUBPROTOCOL,
  MUX_V1_SUBPROTOCOL,
  MuxCloseFlag,
  MuxErrorCode,
  type MuxFrame,
  MuxMsgType,
} from "../../src/wire/aero_mux_v1_codec.ts";
import {
  delay,
  MIB,
  patternDigest,
  PatternStream,
  sha256Hex,
  startEchoServer,
  startSinkServer,
  startSourceServer,
  startStalledServer,
  startTcpServer,
  TOKEN,
  waitUntil,
} from "../_util.ts";
import { AeroClient } from "./_aero_client.ts";

const KIB = 1024;

function startCreditRelay(overrides: Record<string, unknown> = {}): RunningRelay {
  return serveRelay(
    defaultConfig({ port: 0, authTokens: [TOKEN], allowPrivateIps: true, logLevel: "error", ...overrides }),
  );
}

const isData = (id: number) => (f: MuxFrame) => f.type === MuxMsgType.DATA && f.streamId === id;
const isWindow = (id: number) => (f: MuxFrame) => f.type === MuxMsgType.WINDOW && f.streamId === id;

/** DATA bytes of stream `id` received so far (frames consumed). */
function takeData(client: AeroClient, id: number): number {
  let bytes = 0;
  for (let i = client.frames.length - 1; i >= 0; i--) {
    const frame = client.frames[i]!;
    if (frame.type === MuxMsgType.DATA && frame.streamId === id) {
      bytes += frame.data.byteLength;
      client.frames.splice(i, 1);
    }
  }
  return bytes;
}

Deno.test("credit: negotiated only when offered; plain aero-tcp-mux-v1 never sees a WINDOW", async () => {
  await using relay = startCreditRelay();
  await using source = startSourceServer(256 * KIB);
  await using credit = await AeroClient.connect(relay.port, [MUX_CREDIT_SUBPROTOCOL, MUX_V1_SUBPROTOCOL]);
  assert.equal(credit.ws.protocol, MUX_CREDIT_SUBPROTOCOL);
  await using plain = await AeroClient.connect(relay.port);
  assert.equal(plain.ws.protocol, MUX_V1_SUBPROTOCOL);
  plain.send(encodeOpen(1, { host: "127.0.0.1", port: source.port }));
  const { data } = await plain.readToClose(1);
  assert.equal(data.byteLength, 256 * KIB);
  assert.equal(plain.frames.filter((f) => f.type === MuxMsgType.WINDOW).length, 0);
  // A WINDOW where the extension is off is an unknown type, for that stream only.
  plain.send(encodeRawFrame({ type: MuxMsgType.WINDOW, streamId: 5 }, new Uint8Array([0, 0, 1, 0])));
  const error = await plain.next((f) => f.type === MuxMsgType.ERROR, "ERROR for a WINDOW");
  assert.ok(
    error.type === MuxMsgType.ERROR && error.code === MuxErrorCode.PROTOCOL_ERROR && error.streamId === 5,
  );
});

Deno.test("credit download: the relay sends exactly what the client granted, then waits", async () => {
  await using relay = startCreditRelay();
  await using source = startSourceServer(1 * MIB, 3);
  await using client = await AeroClient.connect(relay.port, [MUX_CREDIT_SUBPROTOCOL]);
  client.send(encodeOpen(1, { host: "127.0.0.1", port: source.port }));
  // The initial window, and not a byte more however long we wait.
  let got = 0;
  for (let i = 0; i < 50 && got < MUX_CREDIT_INITIAL_WINDOW; i++) {
    await delay(10);
    got += takeData(client, 1);
  }
  await delay(200);
  got += takeData(client, 1);
  assert.equal(got, MUX_CREDIT_INITIAL_WINDOW);
  // Grants of odd sizes: the relay follows each exactly.
  for (const grant of [1, 1000, 65_536, 100_000]) {
    client.send(encodeWindow(1, grant));
    const target = got + grant;
    for (let i = 0; i < 100 && got < target; i++) {
      await delay(5);
      got += takeData(client, 1);
    }
    await delay(50);
    got += takeData(client, 1);
    assert.equal(got, target, `after a grant of ${grant}`);
  }
  // And the rest once the window is wide open: the stream ends with FIN, the bytes intact.
  client.send(encodeWindow(1, 2 * MIB));
  const { data, flags } = await client.readToClose(1);
  assert.equal(got + data.byteLength, 1 * MIB);
  assert.equal(flags, MuxCloseFlag.FIN);
});

Deno.test("credit upload: the relay's window, credit back as bytes reach the target, overrun is ERROR 6", async () => {
  const window = 256 * KIB;
  await using relay = startCreditRelay({ creditWindowBytes: window });
  await using sink = startSinkServer();
  await using client = await AeroClient.connect(relay.port, [MUX_CREDIT_SUBPROTOCOL]);
  client.send(encodeOpen(1, { host: "127.0.0.1", port: sink.port }));
  // The relay tops the window up to its configured size at once.
  const topUp = await client.next(isWindow(1), "the window top-up");
  assert.ok(topUp.type === MuxMsgType.WINDOW);
  assert.equal(topUp.bytes, window - MUX_CREDIT_INITIAL_WINDOW);
  // 4 MiB within the window: every byte arrives, and the credit returned is exactly what was sent.
  const pattern = new PatternStream(9);
  let allowed = window;
  let sent = 0;
  let returned = 0;
  const total = 4 * MIB;
  while (sent < total) {
    while (sent < total && sent + 16 * KIB <= allowed) {
      client.send(encodeData(1, pattern.fill(new Uint8Array(16 * KIB))));
      sent += 16 * KIB;
    }
    const grant = await client.next(isWindow(1), "credit back");
    assert.ok(grant.type === MuxMsgType.WINDOW);
    allowed += grant.bytes;
    returned += grant.bytes;
  }
  client.send(encodeRawFrame({ type: MuxMsgType.CLOSE, streamId: 1 }, new Uint8Array([MuxCloseFlag.FIN])));
  const received = await sink.received;
  assert.equal(sha256Hex(received), patternDigest(total, 9));
  for (let i = 0; i < 100 && returned < total; i++) {
    const grant = await client.next(isWindow(1), "the last credit", 2000).catch(() => undefined);
    if (grant?.type === MuxMsgType.WINDOW) returned += grant.bytes;
  }
  assert.equal(returned, total, "credit given back exactly once per byte");

  // A client that sends past its window: ERROR 6 on that stream, and the relay drops it.
  await using stalled = startStalledServer();
  client.send(encodeOpen(3, { host: "127.0.0.1", port: stalled.port }));
  await client.next(isWindow(3), "the top-up of stream 3");
  client.send(encodeData(3, new Uint8Array(window + 1)));
  const error = await client.next((f) => f.type === MuxMsgType.ERROR && f.streamId === 3, "ERROR 6");
  assert.ok(error.type === MuxMsgType.ERROR && error.code === MuxErrorCode.STREAM_BUFFER_OVERFLOW);
  assert.equal(relay.relay.metrics.rateLimited.get("credit_overrun"), 1);
});

Deno.test("credit upload: a target that stops reading for 3 s costs at most the window, then the upload completes", async () => {
  const window = 512 * KIB;
  await using relay = startCreditRelay({ creditWindowBytes: window, uploadStallMs: 500 });
  // Reads nothing for 3 s (six times the stall rule), then everything.
  const { promise: all, resolve } = Promise.withResolvers<number>();
  await using pausing = startTcpServer(async (conn) => {
    await delay(3000);
    const buf = new Uint8Array(64 * KIB);
    let total = 0;
    for (;;) {
      const n = await conn.read(buf);
      if (n === null) break;
      total += n;
    }
    resolve(total);
  });
  await using client = await AeroClient.connect(relay.port, [MUX_CREDIT_SUBPROTOCOL]);
  client.send(encodeOpen(1, { host: "127.0.0.1", port: pausing.port }));
  await client.next(isWindow(1), "the top-up");
  const total = 16 * MIB;
  let allowed = window;
  let sent = 0;
  let maxQueued = 0;
  const chunk = new Uint8Array(64 * KIB).fill(7);
  while (sent < total) {
    while (sent < total && sent + chunk.byteLength <= allowed) {
      client.send(encodeData(1, chunk));
      sent += chunk.byteLength;
    }
    const grant = await client.next(isWindow(1), "credit", 10_000);
    assert.ok(grant.type === MuxMsgType.WINDOW);
    allowed += grant.bytes;
    maxQueued = Math.max(maxQueued, relay.relay.queue.used);
  }
  client.send(encodeRawFrame({ type: MuxMsgType.CLOSE, streamId: 1 }, new Uint8Array([MuxCloseFlag.FIN])));
  assert.equal(await all, total);
  assert.equal(client.frames.filter((f) => f.type === MuxMsgType.ERROR).length, 0);
  assert.equal(relay.relay.metrics.backpressureErrors, 0);
  // The queue (charged with its bookkeeping) never held much more than the window.
  assert.ok(maxQueued <= window + 64 * KIB, `queue peaked at ${maxQueued} bytes`);
});

Deno.test("credit: fast-check over windows and chunkings: no overrun, no deadlock, credit returned once", async () => {
  await using relay = startCreditRelay({ creditWindowBytes: 96 * KIB });
  await fc.assert(
    fc.asyncProperty(
      fc.array(fc.integer({ min: 1, max: 40 * KIB }), { minLength: 1, maxLength: 40 }),
      fc.array(fc.integer({ min: 1, max: 50 * KIB }), { minLength: 1, maxLength: 30 }),
      async (uploadChunks, downloadGrants) => {
        await using sink = startSinkServer();
        const downloadTotal = downloadGrants.reduce((a, b) => a + b, 0);
        await using source = startSourceServer(downloadTotal + MUX_CREDIT_INITIAL_WINDOW, 5);
        await using client = await AeroClient.connect(relay.port, [MUX_CREDIT_SUBPROTOCOL]);
        // Upload with random chunk sizes inside the relay's window.
        client.send(encodeOpen(1, { host: "127.0.0.1", port: sink.port }));
        let allowed = MUX_CREDIT_INITIAL_WINDOW;
        let sent = 0;
        const uploadTotal = uploadChunks.reduce((a, b) => a + b, 0);
        for (const size of uploadChunks) {
          while (sent + size > allowed) {
            const grant = await client.next(isWindow(1), "upload credit", 5000);
            assert.ok(grant.type === MuxMsgType.WINDOW);
            allowed += grant.bytes;
          }
          client.send(encodeData(1, new Uint8Array(size).fill(size & 0xff)));
          sent += size;
        }
        client.send(
          encodeRawFrame({ type: MuxMsgType.CLOSE, streamId: 1 }, new Uint8Array([MuxCloseFlag.FIN])),
        );
        assert.equal((await sink.received).byteLength, uploadTotal);
        // Everything granted beyond the initial window and the top-up is credit given back: exactly the bytes.
        for (;;) {
          const grant = await client.next(isWindow(1), "late credit", 300).catch(() => undefined);
          if (grant?.type !== MuxMsgType.WINDOW) break;
          allowed += grant.bytes;
        }
        // Everything allowed beyond the configured window was given back: exactly the bytes that were sent.
        assert.equal(allowed - 96 * KIB, uploadTotal);
        // Download with random grants: never more than granted.
        client.send(encodeOpen(3, { host: "127.0.0.1", port: source.port }));
        let got = 0;
        let granted = MUX_CREDIT_INITIAL_WINDOW;
        for (const grant of [0, ...downloadGrants]) {
          if (grant > 0) client.send(encodeWindow(3, grant));
          granted += grant;
          for (let i = 0; i < 200 && got < granted; i++) {
            const frame = await client.next(isData(3), "download data", 5000);
            assert.ok(frame.type === MuxMsgType.DATA);
            got += frame.data.byteLength;
            assert.ok(got <= granted, `relay sent ${got} bytes with ${granted} granted`);
          }
        }
        assert.equal(got, granted);
      },
    ),
    { numRuns: 12, seed: 20261201 },
  );
});

Deno.test("credit: windows to stalled targets cannot hold the relay-wide upload budget", async () => {
  // Three 16 MiB windows against an 8 MiB budget for the whole relay (loopback kernel buffers take a few MiB
  // per connection first): once it is spent, the stall rule applies to credit streams too, so another session's
  // upload is not held up behind them.
  await using relay = startCreditRelay({
    creditWindowBytes: 16 * MIB,
    sessionQueueBytes: 64 * MIB,
    totalQueueBytes: 8 * MIB,
    uploadStallMs: 300,
  });
  await using stalled = startStalledServer();
  await using attacker = await AeroClient.connect(relay.port, [MUX_CREDIT_SUBPROTOCOL]);
  const chunk = new Uint8Array(64 * KIB);
  for (const id of [1, 3, 5]) {
    attacker.send(encodeOpen(id, { host: "127.0.0.1", port: stalled.port }));
    await attacker.next(isWindow(id), `the top-up of stream ${id}`);
    for (let sent = 0; sent < 16 * MIB; sent += chunk.byteLength) attacker.send(encodeData(id, chunk));
  }
  assert.ok(
    await waitUntil(() => relay.relay.metrics.backpressureErrors >= 1, { timeoutMs: 10_000 }),
    `no stalled credit stream was ended (relay queue ${relay.relay.queue.used} bytes)`,
  );
  const error = await attacker.next((f) => f.type === MuxMsgType.ERROR, "ERROR 6", 5000);
  assert.ok(error.type === MuxMsgType.ERROR && error.code === MuxErrorCode.STREAM_BUFFER_OVERFLOW);
  // Another session uploads 8 MiB without a hitch.
  await using sink = startSinkServer();
  await using other = await AeroClient.connect(relay.port, [MUX_CREDIT_SUBPROTOCOL]);
  other.send(encodeOpen(1, { host: "127.0.0.1", port: sink.port }));
  let allowed = MUX_CREDIT_INITIAL_WINDOW;
  let sent = 0;
  while (sent < 8 * MIB) {
    while (sent < 8 * MIB && sent + chunk.byteLength <= allowed) {
      other.send(encodeData(1, chunk));
      sent += chunk.byteLength;
    }
    const grant = await other.next(isWindow(1), "credit for the other session", 10_000);
    assert.ok(grant.type === MuxMsgType.WINDOW);
    allowed += grant.bytes;
  }
  other.send(encodeRawFrame({ type: MuxMsgType.CLOSE, streamId: 1 }, new Uint8Array([MuxCloseFlag.FIN])));
  assert.equal((await sink.received).byteLength, 8 * MIB);
});

Deno.test("credit: uploads to stalled targets past the session budget never freeze the session", async () => {
  // Four streams' windows against a 512 KiB session budget: the relay grants top-ups only within the budget,
  // and if the queues still pause the session the stall rule ends the stalled streams; a PING always gets its
  // PONG and a fresh stream still works.
  await using relay = startCreditRelay({
    creditWindowBytes: 256 * KIB,
    sessionQueueBytes: 512 * KIB,
    uploadStallMs: 200,
  });
  await using stalled = startStalledServer();
  await using echo = startEchoServer();
  await using client = await AeroClient.connect(relay.port, [MUX_CREDIT_SUBPROTOCOL]);
  const chunk = new Uint8Array(16 * KIB);
  let granted = 0;
  for (const id of [1, 3, 5, 7]) {
    client.send(encodeOpen(id, { host: "127.0.0.1", port: stalled.port }));
    await delay(20);
    let allowed = MUX_CREDIT_INITIAL_WINDOW;
    for (const frame of client.frames.filter(isWindow(id))) {
      allowed += frame.type === MuxMsgType.WINDOW ? frame.bytes : 0;
    }
    granted += allowed;
    for (let sent = 0; sent + chunk.byteLength <= allowed; sent += chunk.byteLength) {
      client.send(encodeData(id, chunk));
    }
  }
  assert.ok(
    granted <= 512 * KIB + 4 * MUX_CREDIT_INITIAL_WINDOW,
    `the relay granted ${granted} bytes in all`,
  );
  client.send(encodePing(0, new Uint8Array([1, 2, 3])));
  const pong = await client.next((f) => f.type === MuxMsgType.PONG, "the PONG", 5000);
  assert.equal(pong.streamId, 0);
  client.send(
    encodeOpen(9, { host: "127.0.0.1", port: echo.port }),
    encodeData(9, new TextEncoder().encode("hi")),
  );
  const data = await client.next(isData(9), "the echo on a fresh stream", 5000);
  assert.ok(data.type === MuxMsgType.DATA && new TextDecoder().decode(data.data) === "hi");
});

Deno.test("credit: initial windows of many streams past the session budget: the stall rule frees the session", async () => {
  // Every stream starts with 64 KiB of credit, which no top-up cap can take back: eight of them exceed a
  // 256 KiB budget. On loopback the stalled targets' kernel buffers may take those bytes before the queues
  // pause the session; if they do not, the stall rule ends the stalled credit streams (ERROR 6). Either way
  // the session must go on answering.
  await using relay = startCreditRelay({ sessionQueueBytes: 256 * KIB, uploadStallMs: 200 });
  await using stalled = startStalledServer();
  await using client = await AeroClient.connect(relay.port, [MUX_CREDIT_SUBPROTOCOL]);
  const chunk = new Uint8Array(16 * KIB);
  for (let id = 1; id <= 15; id += 2) {
    client.send(encodeOpen(id, { host: "127.0.0.1", port: stalled.port }));
    for (let sent = 0; sent < MUX_CREDIT_INITIAL_WINDOW; sent += chunk.byteLength) {
      client.send(encodeData(id, chunk));
    }
  }
  client.send(encodePing(0, new Uint8Array([9])));
  const pong = await client.next((f) => f.type === MuxMsgType.PONG, "the PONG", 5000);
  assert.equal(pong.streamId, 0);
});
