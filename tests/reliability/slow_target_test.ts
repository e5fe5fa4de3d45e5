/**
 * Slow target (issue 7): a target that never reads while the client uploads 64 MiB to it. That stream alone
 * gets ERROR 8; a second stream of the same session keeps a 64-byte echo p99 under 50 ms during the whole
 * episode; the relay's memory stays bounded.
 */
import assert from "node:assert/strict";
import { ErrorCode, FrameType, type ServerFrame } from "../../src/protocol/mod.ts";
import { spawnRelay } from "../_process.ts";
import {
  delay,
  describeFrame,
  KIB,
  MIB,
  mib,
  MuxClient,
  muxUrl,
  PatternStream,
  procStats,
  report,
  startEchoServer,
  startStalledServer,
  StatsSampler,
  waitUntil,
  withTimeout,
} from "../_util.ts";
import { percentile, relayEnv } from "./_harness.ts";

const UPLOAD = 64 * MIB;
const CHUNK = 64 * KIB;
/** The client's own send buffer is kept under this, as a browser app watching `bufferedAmount` would. */
const CLIENT_BUFFER = 1 * MIB;
const P99_LIMIT_MS = 50;
/**
 * The relay holds at most the 1 MiB stream queue for the stalled target; the rest of the growth is garbage
 * (the ~57 MiB of DATA dropped after ERROR 8: Deno's WebSocket API cannot stop receiving, so every message is
 * allocated, dropped, and collected by V8 on its own schedule). Measured +40 to +71 MiB; the bound is 1.5x the
 * upload, so a relay that kept dropped DATA (or copies of it) would still fail.
 */
const RSS_LIMIT = 96 * MIB;

Deno.test("slow target: only its stream gets ERROR 8 during a 64 MiB upload; a sibling's echo p99 stays under 50 ms", async () => {
  await using stalled = startStalledServer();
  await using echo = startEchoServer();
  // Unshaped uploads, so that it is the target, not the session's byte rate, that holds the queue back.
  await using relay = await spawnRelay(relayEnv({ AERO_PROXY_CLIENT_BYTES_PER_SEC: "0" }));
  await delay(300);
  const idle = (await procStats(relay.pid)).rss;
  await using sampler = new StatsSampler(relay.pid, 50);
  await using client = await MuxClient.connect(muxUrl(relay.port));
  await client.open(1, stalled.port);
  await client.open(2, echo.port);

  const slowFrames: ServerFrame[] = [];
  let uploaded = 0;
  let uploadedAtError = -1;
  client.onFrames(1, (frame) => {
    if (frame.type === FrameType.ERROR && uploadedAtError < 0) uploadedAtError = uploaded;
    slowFrames.push(frame);
  });

  // Stream 2: 64-byte ping-pong for as long as the episode lasts.
  let episodeOver = false;
  const rtts: number[] = [];
  const probe = (async () => {
    const ping = new Uint8Array(64);
    for (let i = 0; !episodeOver && i < 1_000_000; i++) {
      ping.fill(i & 0xff);
      const sent = performance.now();
      client.sendData(2, ping);
      const pong = await client.readBytes(2, ping.byteLength, 5000);
      rtts.push(performance.now() - sent);
      assert.deepEqual(pong, ping);
    }
  })();

  const started = performance.now();
  const pattern = new PatternStream(5);
  const chunk = new Uint8Array(CHUNK);
  try {
    while (uploaded < UPLOAD) {
      if (client.ws.bufferedAmount > CLIENT_BUFFER) {
        await delay(1);
        continue;
      }
      client.sendData(1, pattern.fill(chunk));
      uploaded += CHUNK;
    }
    // The whole upload has left this process; then watch a little longer for late effects.
    await withTimeout(
      waitUntil(() => client.ws.bufferedAmount === 0, { timeoutMs: 30_000, intervalMs: 1 }),
      31_000,
      "the upload to leave the client",
    );
    await delay(500);
  } finally {
    episodeOver = true;
    await probe;
  }
  const episodeMs = performance.now() - started;
  await sampler.stop();

  const p50 = percentile(rtts, 50);
  const p99 = percentile(rtts, 99);
  const growth = sampler.peakRss - idle;
  report(
    `slow target: ERROR 8 after ${mib(uploadedAtError)} MiB of the ${
      mib(UPLOAD)
    } MiB upload; sibling echo over ` +
      `${(episodeMs / 1000).toFixed(1)} s: ${rtts.length} round trips, p50 ${p50.toFixed(2)} ms, ` +
      `p99 ${p99.toFixed(2)} ms, max ${Math.max(...rtts).toFixed(2)} ms; relay RSS idle ${mib(idle)} MiB, ` +
      `peak ${mib(sampler.peakRss)} MiB (+${mib(growth)} MiB)`,
  );
  assert.deepEqual(
    slowFrames.map(describeFrame).map(({ type, code }) => ({ type, code })),
    [{ type: "ERROR", code: ErrorCode.BACKPRESSURE }, { type: "CLOSE", code: undefined }],
    "the stalled stream gets ERROR 8 then CLOSE, and the DATA sent after it is dropped quietly",
  );
  assert.deepEqual(client.pending(0), [], "nothing at session level");
  assert.ok(p99 < P99_LIMIT_MS, `sibling echo p99 ${p99.toFixed(2)} ms (limit ${P99_LIMIT_MS} ms)`);
  assert.ok(growth < RSS_LIMIT, `relay RSS grew by ${mib(growth)} MiB (limit ${mib(RSS_LIMIT)} MiB)`);
  // The sibling still ends normally.
  client.sendClose(2);
  assert.equal((await client.next(2)).type, FrameType.CLOSE);
});
