/**
 * Many sessions (issue 7): 2,000 concurrent idle sessions carrying 10,000 idle streams. Records the relay's
 * RSS per idle session and per idle stream (target: under 20 KiB per idle stream).
 */
import assert from "node:assert/strict";
import { spawnRelay } from "../_process.ts";
import {
  delay,
  KIB,
  mib,
  MuxClient,
  muxUrl,
  procStats,
  report,
  startStalledServer,
  waitUntil,
} from "../_util.ts";
import { discardLogs, relayEnv } from "./_harness.ts";

const SESSIONS = 2000;
const STREAMS = 10_000;
const STREAMS_PER_SESSION = STREAMS / SESSIONS;
/** Target listeners; spreading the connects keeps each accept queue short. */
const TARGETS = 10;
/** Connects (or OPENs) in flight at once while building up. */
const BATCH = 250;
const STREAM_TARGET_BYTES = 20 * KIB;

async function fileLimit(): Promise<number> {
  const output = await new Deno.Command("sh", { args: ["-c", "ulimit -n"], stdout: "piped" }).output();
  const text = new TextDecoder().decode(output.stdout).trim();
  return text === "unlimited" ? Number.POSITIVE_INFINITY : Number(text);
}

/** RSS after letting the relay settle for a moment (two samples 500 ms apart, the lower one). */
async function settledRss(pid: number): Promise<number> {
  await delay(1000);
  const first = (await procStats(pid)).rss;
  await delay(500);
  return Math.min(first, (await procStats(pid)).rss);
}

Deno.test("many sessions: 2,000 idle sessions and 10,000 idle streams; RSS per session and per stream", async () => {
  // Each process (this one and the relay) holds about 12,000 sockets at the peak.
  const limit = await fileLimit();
  assert.ok(limit >= 16_384, `ulimit -n is ${limit}; this case needs 16384 (.ci/run raises it)`);

  await using targets = new AsyncDisposableStack();
  const ports = Array.from({ length: TARGETS }, () => targets.use(startStalledServer()).port);
  // 2,000 sessions from one address: above the default of 256 per IP.
  await using relay = await spawnRelay(
    relayEnv({ AERO_PROXY_MAX_SESSIONS_PER_IP: "4096", AERO_PROXY_MAX_PENDING_PER_IP: "1024" }),
  );
  using _logs = discardLogs(relay);
  const url = muxUrl(relay.port);
  const idle = await settledRss(relay.pid);
  const idleFds = (await procStats(relay.pid)).fds;

  const clients: MuxClient[] = [];
  try {
    const t0 = performance.now();
    for (let i = 0; i < SESSIONS; i += BATCH) {
      clients.push(...await Promise.all(Array.from({ length: BATCH }, () => MuxClient.connect(url))));
    }
    const sessionsMs = performance.now() - t0;
    const withSessions = await settledRss(relay.pid);

    const t1 = performance.now();
    const opens: (() => Promise<void>)[] = [];
    clients.forEach((client, s) => {
      for (let k = 0; k < STREAMS_PER_SESSION; k++) {
        const id = k + 1;
        opens.push(() => client.open(id, ports[(s * STREAMS_PER_SESSION + k) % TARGETS]!));
      }
    });
    for (let i = 0; i < opens.length; i += BATCH) {
      await Promise.all(opens.slice(i, i + BATCH).map((f) => f()));
    }
    const streamsMs = performance.now() - t1;
    const withStreams = await settledRss(relay.pid);
    const { fds } = await procStats(relay.pid);

    const perSession = (withSessions - idle) / SESSIONS;
    const perStream = (withStreams - withSessions) / STREAMS;
    report(
      `many sessions: relay RSS idle ${mib(idle)} MiB, with ${SESSIONS} sessions ${mib(withSessions)} MiB ` +
        `(${(perSession / KIB).toFixed(1)} KiB per session, connected in ${
          (sessionsMs / 1000).toFixed(1)
        } s), ` +
        `with ${STREAMS} streams ${mib(withStreams)} MiB (${(perStream / KIB).toFixed(1)} KiB per stream, ` +
        `opened in ${(streamsMs / 1000).toFixed(1)} s); relay fds ${idleFds} -> ${fds}`,
    );
    assert.ok(fds >= idleFds + SESSIONS + STREAMS, `the relay holds only ${fds} descriptors`);
    assert.ok(
      perStream < STREAM_TARGET_BYTES,
      `${(perStream / KIB).toFixed(1)} KiB per idle stream (target under 20 KiB)`,
    );
  } finally {
    for (let i = 0; i < clients.length; i += BATCH) {
      await Promise.all(clients.slice(i, i + BATCH).map((c) => c[Symbol.asyncDispose]()));
    }
  }
  const released = await waitUntil(async () => (await procStats(relay.pid)).fds <= idleFds + 2, {
    timeoutMs: 10_000,
    intervalMs: 200,
  });
  assert.ok(released, "the relay let go of every socket after the sessions closed");
});
