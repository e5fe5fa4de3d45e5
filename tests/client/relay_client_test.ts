/**
 * The client in Deno against a real relay and real TCP targets on 127.0.0.1.
 */
import assert from "node:assert/strict";
import {
  ErrorCode,
  MUX_SUBPROTOCOL,
  RelayClient,
  RelayError,
  SessionClosedError,
  TOKEN_SUBPROTOCOL_PREFIX,
} from "../../src/client/mod.ts";
import { MUX_PATH } from "../../src/protocol/mod.ts";
import { spawnRelay } from "../_process.ts";
import {
  closedPort,
  delay,
  muxUrl,
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
import { digestOf, readAll, readExactly } from "./_streams.ts";

const MIB = 1024 * 1024;
const encoder = new TextEncoder();
const decoder = new TextDecoder();

function clientFor(port: number, options: Partial<ConstructorParameters<typeof RelayClient>[1]> = {}) {
  return new RelayClient(muxUrl(port, null), { token: TOKEN, ...options });
}

async function assertRelayError(
  promise: Promise<unknown>,
  code: number,
  pattern: RegExp,
): Promise<RelayError> {
  const err = await promise.then(() => undefined, (e: unknown) => e);
  assert.ok(err instanceof RelayError, `expected a RelayError, got ${String(err)}`);
  assert.equal(err.code, code, err.message);
  assert.match(err.message, pattern);
  return err;
}

Deno.test("RelayClient echoes through the relay and closes cleanly", async () => {
  await using echo = startEchoServer();
  await using relay = startRelay();
  await using client = clientFor(relay.port);
  const stream = await client.connect("127.0.0.1", echo.port);
  assert.equal(stream.remote, `127.0.0.1:${echo.port}`);
  const writer = stream.writable.getWriter();
  await writer.write(encoder.encode("hello, relay"));
  assert.equal(decoder.decode(await readExactly(stream.readable, 12)), "hello, relay");
  writer.releaseLock();
  await stream.close();
  await stream.closed;
  assert.deepEqual(await readAll(stream.readable), new Uint8Array(0));
  assert.equal(client.streamCount, 0);
  assert.equal(relay.relay.metrics.streamsActive, 0);
});

Deno.test("a 1 MiB write goes out as 64 DATA frames of 16 KiB and echoes byte for byte", async () => {
  await using echo = startEchoServer();
  await using relay = startRelay({ clientBytesPerSec: 0 });
  await using client = clientFor(relay.port);
  const stream = await client.connect([127, 0, 0, 1], echo.port);
  const payload = new PatternStream(21).fill(new Uint8Array(MIB));
  const writer = stream.writable.getWriter();
  const [, echoed] = await Promise.all([writer.write(payload), readExactly(stream.readable, MIB)]);
  assert.deepEqual(echoed, payload);
  await writer.close();
  // OPEN + 64 DATA + CLOSE.
  assert.equal(relay.relay.metrics.framesFromClient, 66);
  assert.equal(relay.relay.metrics.bytesFromClient, 12 + 64 * (5 + 16 * 1024) + 5);
});

Deno.test("an 8 MiB download arrives complete (SHA-256) and the readable closes at the target's EOF", async () => {
  const total = 8 * MIB;
  await using source = startSourceServer(total, 8);
  await using relay = startRelay();
  await using client = clientFor(relay.port);
  const stream = await client.connect("127.0.0.1", source.port);
  const { hex, bytes } = await withTimeout(digestOf(stream.readable), 30_000, "the download");
  assert.equal(bytes, total);
  assert.equal(hex, patternDigest(total, 8));
  await stream.closed;
});

Deno.test("a denied destination rejects connect() with RelayError 3 (OPEN frame only)", async () => {
  await using relay = startRelay({ allowPrivateIps: false });
  await using client = clientFor(relay.port);
  const err = await assertRelayError(client.connect("10.0.0.1", 80), ErrorCode.POLICY_DENIED, /denied/);
  assert.equal(err.codeName, "POLICY_DENIED");
  assert.equal(err.name, "RelayError");
  assert.equal(err.connectionId, 1);
  assert.equal(relay.relay.metrics.streamsTotal, 0);
  assert.equal(client.streamCount, 0);
});

Deno.test("a refused connection rejects connect() with RelayError 6; the session lives on", async () => {
  await using echo = startEchoServer();
  await using relay = startRelay();
  await using client = clientFor(relay.port);
  await assertRelayError(
    client.connect("127.0.0.1", closedPort()),
    ErrorCode.CONNECT_FAILED,
    /Cannot connect to 127\.0\.0\.1/,
  );
  const stream = await client.connect("127.0.0.1", echo.port);
  const writer = stream.writable.getWriter();
  await writer.write(new Uint8Array([1, 2, 3]));
  assert.deepEqual(await readExactly(stream.readable, 3), new Uint8Array([1, 2, 3]));
  await writer.close();
});

Deno.test("bad arguments throw TypeError or RangeError before anything is sent", async () => {
  await using relay = startRelay();
  await using client = clientFor(relay.port);
  await assert.rejects(client.connect("example.com", 80), TypeError);
  await assert.rejects(client.connect("256.0.0.1", 80), TypeError);
  await assert.rejects(client.connect([1, 2, 3], 80), TypeError);
  await assert.rejects(client.connect("1.2.3.4", 0), RangeError);
  await assert.rejects(client.connect("1.2.3.4", 65536), RangeError);
  assert.throws(() => new RelayClient(muxUrl(relay.port, null), { token: "" }), TypeError);
  assert.throws(() => clientFor(relay.port, { chunkSize: 0 }), RangeError);
  assert.equal(relay.relay.metrics.framesFromClient, 0);
});

Deno.test("a wrong token rejects ready and connect() with SessionClosedError", async () => {
  await using relay = startRelay();
  await using client = new RelayClient(muxUrl(relay.port, null), { token: "wrong" });
  const err = await client.ready.then(() => undefined, (e: unknown) => e);
  assert.ok(err instanceof SessionClosedError, String(err));
  assert.match(err.message, /Cannot open a relay session/);
  await assert.rejects(client.connect("127.0.0.1", 80), SessionClosedError);
  assert.equal(relay.relay.metrics.authFailures, 1);
});

Deno.test("session loss errors every open stream, pending writes included, and later connects", async () => {
  await using echo = startEchoServer();
  const relay = startRelay();
  await using client = clientFor(relay.port);
  const streams = await Promise.all([1, 2, 3].map(() => client.connect("127.0.0.1", echo.port)));
  const reads = streams.map((s) => s.readable.getReader().read());
  for (const read of reads) read.catch(() => {});
  await relay.close();
  for (const [i, stream] of streams.entries()) {
    const err = await reads[i]!.then(() => undefined, (e: unknown) => e);
    assert.ok(err instanceof SessionClosedError, `stream ${stream.id}: ${String(err)}`);
    assert.equal(err.closeCode, 1001);
    await assert.rejects(stream.closed, SessionClosedError);
    await assert.rejects(stream.writable.getWriter().write(new Uint8Array([1])), SessionClosedError);
  }
  await assert.rejects(client.connect("127.0.0.1", echo.port), SessionClosedError);
  assert.equal((await client.closed).closeCode, 1001);
  assert.ok(client.isClosed);
  assert.equal(client.streamCount, 0);
});

Deno.test("connection ids count up from 1 and are never reused, whatever ended the stream", async () => {
  await using echo = startEchoServer();
  await using relay = startRelay({ allowPrivateIps: false, allowCidrs: ["127.0.0.0/8"] });
  await using client = clientFor(relay.port);
  const ids: number[] = [];
  for (let round = 0; round < 5; round++) {
    const stream = await client.connect("127.0.0.1", echo.port);
    ids.push(stream.id);
    await stream.close();
    const denied = await assertRelayError(client.connect("10.0.0.1", 80), ErrorCode.POLICY_DENIED, /denied/);
    ids.push(denied.connectionId);
    const refused = await assertRelayError(client.connect("127.0.0.1", closedPort()), 6, /Cannot connect/);
    ids.push(refused.connectionId);
  }
  assert.deepEqual(ids, Array.from({ length: 15 }, (_, i) => i + 1));
  // The relay never saw a duplicate id (that would be ERROR 5).
  assert.equal(relay.relay.metrics.errorsSent.get("INVALID_FRAME"), undefined);
});

Deno.test("an application that stops reading gets RelayError 8 once readableMaxBytes are unread", async () => {
  await using source = startSourceServer(16 * MIB, 2);
  await using relay = startRelay();
  await using client = clientFor(relay.port, { readableHighWaterMark: 64 * 1024, readableMaxBytes: MIB });
  const stream = await client.connect("127.0.0.1", source.port);
  await assertRelayError(
    withTimeout(stream.closed, 10_000, "the stream to give up"),
    ErrorCode.BACKPRESSURE,
    /more than 1048576 bytes arrived unread/,
  );
  await assertRelayError(readAll(stream.readable), ErrorCode.BACKPRESSURE, /unread/);
  assert.equal(client.streamCount, 0);
});

Deno.test("writes wait while the WebSocket send buffer is over the watermark (relay paused with SIGSTOP)", async () => {
  const total = 32 * MIB;
  await using sink = startSinkServer();
  await using relay = await spawnRelay({
    AERO_PROXY_AUTH_TOKEN: TOKEN,
    AERO_PROXY_ALLOW_PRIVATE_IPS: "1",
    AERO_PROXY_CLIENT_BYTES_PER_SEC: "0",
    AERO_PROXY_STREAM_QUEUE_BYTES: String(64 * MIB),
    AERO_PROXY_SESSION_QUEUE_BYTES: String(64 * MIB),
  });
  await using client = clientFor(relay.port, { sendHighWaterMark: 256 * 1024 });
  const stream = await client.connect("127.0.0.1", sink.port);
  relay.kill("SIGSTOP");
  let written = 0;
  const writer = stream.writable.getWriter();
  const pattern = new PatternStream(3);
  const writing = (async () => {
    for (let left = total; left > 0;) {
      const chunk = pattern.fill(new Uint8Array(Math.min(left, 256 * 1024)));
      await writer.write(chunk);
      written += chunk.byteLength;
      left -= chunk.byteLength;
    }
    await writer.close();
  })();
  try {
    // Sample until the writes stop making progress (the kernel buffers are full and the watermark reached).
    let previous = -1;
    for (let i = 0; i < 50 && written !== previous; i++) {
      previous = written;
      await delay(200);
    }
    const stalledAt = written;
    report(`writes stalled after ${(stalledAt / MIB).toFixed(1)} MiB while the relay was stopped`);
    await delay(500);
    assert.equal(written, stalledAt, "writes kept resolving while the relay was stopped");
    assert.ok(stalledAt < total, "every write resolved: nothing held the writer back");
    assert.ok(stalledAt < 24 * MIB, `${stalledAt} bytes were accepted while the relay was stopped`);
  } finally {
    relay.kill("SIGCONT");
  }
  await withTimeout(writing, 60_000, "the writes to finish after SIGCONT");
  const received = await withTimeout(sink.received, 30_000, "the sink to see EOF");
  assert.equal(received.byteLength, total);
  assert.equal(sha256Hex(received), patternDigest(total, 3));
});

Deno.test("the token can travel as a subprotocol instead of the query string", async () => {
  await using echo = startEchoServer();
  await using relay = startRelay();
  await using client = new RelayClient(`ws://127.0.0.1:${relay.port}${MUX_PATH}`, {
    token: TOKEN,
    tokenIn: "subprotocol",
  });
  await client.ready;
  // The relay authenticated the token from Sec-WebSocket-Protocol and selected only the non-secret entry.
  const stream = await client.connect("127.0.0.1", echo.port);
  const writer = stream.writable.getWriter();
  await writer.write(encoder.encode("by subprotocol"));
  assert.equal(decoder.decode(await readExactly(stream.readable, 14)), "by subprotocol");
  await stream.close();
  assert.equal(`${MUX_SUBPROTOCOL} ${TOKEN_SUBPROTOCOL_PREFIX}`, "aero-seed-mux-v1 aero-token.");
  assert.throws(
    () => new RelayClient("ws://127.0.0.1:1/tcp-mux", { token: "a b", tokenIn: "subprotocol" }),
    TypeError,
  );
});
