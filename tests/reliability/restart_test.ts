/**
 * Relay restart under load (issue 7): SIGTERM while 100 streams transfer. Each stream either completes (every
 * byte, SHA-256 checked, then CLOSE) or is ended by an error (an ERROR frame, or the session closing), never a
 * silent short CLOSE; the process exits 0 within its grace period; nothing hangs.
 *
 * Holds with either shutdown: sessions closed at once with 1001 (today), or after a grace period
 * (`AERO_PROXY_SHUTDOWN_GRACE_MS`, set here so that a relay that knows it stays within the time bound).
 */
import assert from "node:assert/strict";
import { createHash } from "node:crypto";
import { encodeOpen, FrameType } from "../../src/protocol/mod.ts";
import { spawnRelay } from "../_process.ts";
import {
  delay,
  LOOPBACK,
  MIB,
  MuxClient,
  muxUrl,
  patternDigest,
  report,
  startSourceServer,
  withTimeout,
} from "../_util.ts";
import { relayEnv } from "./_harness.ts";

const SESSIONS = 10;
const STREAMS_PER_SESSION = 10;
const PER_STREAM = 8 * MIB;
const SEED = 31;
const GRACE_MS = 2000;
/** Exit within the grace period plus this much. */
const EXIT_SLACK_MS = 5000;
/**
 * Close codes a relay going down may use: normal, going away, service restart; and 1006 or 0 (Deno's client
 * reports 0), an abnormal closure: the connection ended without a close frame. Under load the relay loses the
 * 1001 frame today (it exits while the frame waits behind buffered DATA); the client still learns that every
 * stream of the session ended, which is what this case checks, and the report counts the clean closes.
 */
const SHUTDOWN_CLOSE_CODES = [1000, 1001, 1012, 1006, 0];

type Outcome = "completed" | "error" | "session_closed";

interface StreamState {
  bytes: number;
  readonly hash: ReturnType<typeof createHash>;
  outcome?: Outcome;
  detail?: string;
}

/** For example `1001 x4, 0 (abnormal) x6`. */
function closeSummary(events: readonly CloseEvent[]): string {
  const counts = new Map<string, number>();
  for (const e of events) {
    const key = `${e.code}${e.wasClean ? "" : " (abnormal)"}`;
    counts.set(key, (counts.get(key) ?? 0) + 1);
  }
  return [...counts].map(([key, n]) => `${key} x${n}`).join(", ");
}

Deno.test("relay restart under load: SIGTERM during 100 transfers; each completes or errors, exit 0, no hang", async () => {
  await using source = startSourceServer(PER_STREAM, SEED);
  await using relay = await spawnRelay(relayEnv({ AERO_PROXY_SHUTDOWN_GRACE_MS: String(GRACE_MS) }));
  const expected = patternDigest(PER_STREAM, SEED);

  const clients = await Promise.all(
    Array.from({ length: SESSIONS }, () => MuxClient.connect(muxUrl(relay.port))),
  );
  const streams: StreamState[] = [];
  try {
    for (const client of clients) {
      const states: StreamState[] = [];
      for (let id = 1; id <= STREAMS_PER_SESSION; id++) {
        const state: StreamState = { bytes: 0, hash: createHash("sha256") };
        states.push(state);
        streams.push(state);
        client.onFrames(id, (frame) => {
          if (state.outcome !== undefined) return;
          if (frame.type === FrameType.DATA) {
            state.bytes += frame.data.byteLength;
            state.hash.update(frame.data);
          } else if (frame.type === FrameType.ERROR) {
            state.outcome = "error";
            state.detail = `ERROR ${frame.code}`;
          } else if (frame.type === FrameType.CLOSE) {
            const whole = state.bytes === PER_STREAM && state.hash.digest("hex") === expected;
            state.outcome = "completed";
            if (!whole) state.detail = `CLOSE after ${state.bytes} of ${PER_STREAM} bytes`;
          }
        });
        client.send(encodeOpen(id, LOOPBACK, source.port));
      }
      void client.closed.then((event) => {
        for (const state of states) {
          if (state.outcome !== undefined) continue;
          state.outcome = "session_closed";
          state.detail = `WebSocket closed ${event.code}`;
        }
      });
    }

    // Let the transfers get going, then stop the relay in the middle of them.
    await withTimeout(
      (async () => {
        while (streams.filter((s) => s.bytes > 0).length < streams.length) await delay(5);
      })(),
      10_000,
      "every stream to receive bytes",
    );
    const inFlight = streams.filter((s) => s.outcome === undefined).length;
    const signalledAt = performance.now();
    relay.kill("SIGTERM");
    const status = await withTimeout(relay.status, GRACE_MS + EXIT_SLACK_MS, "the relay to exit");
    const exitMs = performance.now() - signalledAt;
    const closes = await withTimeout(
      Promise.all(clients.map((c) => c.closed)),
      5000,
      "every session to close",
    );

    const count = (outcome: Outcome) => streams.filter((s) => s.outcome === outcome).length;
    report(
      `restart: SIGTERM with ${inFlight}/${streams.length} streams in flight; exit code ${status.code} after ` +
        `${exitMs.toFixed(0)} ms; ${count("completed")} completed (SHA-256 checked), ${count("error")} ` +
        `ended by ERROR, ${count("session_closed")} ended by the session closing (close codes ` +
        `${closeSummary(closes)}); ` +
        `${(streams.reduce((sum, s) => sum + s.bytes, 0) / MIB).toFixed(0)} MiB received in all`,
    );
    assert.equal(status.code, 0, relay.stderr());
    assert.ok(inFlight >= 90, `only ${inFlight} streams were still transferring at SIGTERM`);
    for (const event of closes) {
      assert.ok(SHUTDOWN_CLOSE_CODES.includes(event.code), `session closed with ${event.code}`);
    }
    const unresolved = streams.filter((s) => s.outcome === undefined);
    assert.equal(unresolved.length, 0, "every stream ended one way or another");
    const silentlyShort = streams.filter((s) => s.outcome === "completed" && s.detail !== undefined);
    assert.deepEqual(silentlyShort.map((s) => s.detail), [], "no stream ends with a short CLOSE");
  } finally {
    await Promise.all(clients.map((client) => client[Symbol.asyncDispose]()));
  }
});
