/**
 * Slow client (issue 7): a client stops reading its socket for 5 s in the middle of a 256 MiB download. The
 * relay's memory stays within 32 MiB of idle, the target's sends stall (backpressure reached it), and every
 * byte arrives afterwards (SHA-256).
 */
import assert from "node:assert/strict";
import { encodeOpen } from "../../src/protocol/mod.ts";
import { spawnRelay } from "../_process.ts";
import { RawDownload, RawWebSocket } from "../_raw_ws.ts";
import {
  delay,
  LOOPBACK,
  MIB,
  mib,
  patternDigest,
  procStats,
  report,
  startSourceServer,
  StatsSampler,
  TOKEN,
  withTimeout,
} from "../_util.ts";
import { relayEnv } from "./_harness.ts";

const TOTAL = 256 * MIB;
const PAUSE_MS = 5000;
const SEED = 77;

Deno.test("slow client: 5 s without reading during a 256 MiB download; bounded memory, target stalls, nothing lost", async () => {
  await using source = startSourceServer(TOTAL, SEED);
  await using relay = await spawnRelay(relayEnv());
  await delay(300);
  const idle = (await procStats(relay.pid)).rss;
  await using sampler = new StatsSampler(relay.pid, 100);

  await using ws = await RawWebSocket.connect(relay.port, `/tcp-mux?token=${TOKEN}`);
  await ws.send(encodeOpen(1, LOOPBACK, source.port));
  const download = new RawDownload(ws);

  const started = performance.now();
  await withTimeout(download.readUntil(() => download.received >= 32 * MIB), 30_000, "the first 32 MiB");
  // Stop reading the socket entirely. After a second the buffers on the way (kernel, WebSocket) are full;
  // from then on the target must not get to send anything.
  const atPause = source.sent;
  await delay(1000);
  const afterFirstSecond = source.sent;
  await delay(PAUSE_MS - 1000);
  const atResume = source.sent;
  await withTimeout(download.readUntil(() => false), 120_000, "the rest of the download");
  const seconds = (performance.now() - started - PAUSE_MS) / 1000;
  await sampler.stop();

  const growth = sampler.peakRss - idle;
  report(
    `slow client: relay RSS idle ${mib(idle)} MiB, peak ${mib(sampler.peakRss)} MiB (+${
      mib(growth)
    } MiB) over ` +
      `${sampler.samples} samples; target sent ${
        mib(afterFirstSecond - atPause)
      } MiB in the first second of ` +
      `the ${PAUSE_MS / 1000} s pause and ${mib(atResume - afterFirstSecond)} MiB in the other ` +
      `${(PAUSE_MS - 1000) / 1000} s; 256 MiB verified, ${
        (TOTAL / MIB / seconds).toFixed(0)
      } MiB/s outside the pause`,
  );
  assert.ok(download.closed, "the stream ends with CLOSE");
  assert.equal(download.received, TOTAL);
  assert.equal(download.digest(), patternDigest(TOTAL, SEED));
  assert.ok(growth < 32 * MIB, `relay RSS grew by ${mib(growth)} MiB (limit 32 MiB)`);
  assert.ok(
    atResume - afterFirstSecond < 1 * MIB,
    `the target kept sending (${atResume - afterFirstSecond} bytes): backpressure did not reach it`,
  );
});
