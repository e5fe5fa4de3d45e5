/**
 * Seeded, bounded fuzzing of a live relay: random and mutated frames over many sessions. The relay must never
 * crash or leak a descriptor, must answer exactly as the codec classifies each frame, and must still relay for a
 * fresh session afterwards. Same seed, same frames: a failure is reproducible with FUZZ_SEED.
 */
import assert from "node:assert/strict";
import {
  decodeClientFrame,
  encodeClose,
  encodeData,
  encodeError,
  encodeOpen,
  ErrorCode,
  FrameType,
  ProtocolError,
} from "../src/protocol/mod.ts";
import { spawnRelay } from "./_process.ts";
import {
  delay,
  FuzzRng,
  MuxClient,
  muxUrl,
  procStats,
  report,
  startEchoServer,
  TOKEN,
  withTimeout,
} from "./_util.ts";

const SESSIONS = 60;
const FRAMES_PER_SESSION = 300;
const MAX_FRAME = 64 * 1024;

/** The fuzz's random source, with the ids it favours: 0, the largest, a few small ones, anything. */
class Rng extends FuzzRng {
  id(): number {
    const pick = this.below(10);
    return pick === 0 ? 0 : pick === 1 ? 0xffff_ffff : pick < 6 ? 1 + this.below(16) : this.next();
  }
}

type Message = Uint8Array | string;

/** One random message: mostly well-formed headers with hostile payloads, sometimes pure noise. */
function generate(rng: Rng, avoidPort: number): Message {
  // Per mille: session-level violations are rare so that most sessions see all their frames.
  const kind = rng.below(1000);
  const id = rng.id();
  let frame: Uint8Array;
  if (kind < 2) return "text message";
  if (kind < 4) frame = encodeData(id, new Uint8Array(MAX_FRAME + 1 + rng.below(1000))); // over the limit
  else if (kind < 7) frame = rng.bytes(rng.below(24)); // noise: short messages, unknown types
  else if (kind < 300) frame = encodeOpen(id, rng.bytes(4), 1 + rng.below(65535));
  else if (kind < 500) frame = encodeData(id, rng.bytes(rng.below(64)));
  else if (kind < 600) frame = encodeClose(id);
  else if (kind < 650) frame = encodeError(id, rng.below(65536), "x".repeat(rng.below(8)));
  else if (kind < 750) {
    // A valid header with a garbage payload.
    frame = rng.bytes(5 + rng.below(12));
    frame[0] = 1 + rng.below(4);
  } else if (kind < 850) {
    const whole = encodeOpen(id, rng.bytes(4), 1 + rng.below(65535));
    frame = whole.slice(0, 5 + rng.below(whole.byteLength - 4)); // truncated payload, whole header
  } else if (kind < 900) {
    frame = encodeOpen(id, rng.bytes(4), rng.below(2) === 0 ? 0 : 1 + rng.below(65535));
    frame[5] = rng.below(256); // a random ip_version, sometimes port 0
  } else {
    // A valid frame with one bit flipped anywhere after the type byte.
    frame = encodeOpen(id, rng.bytes(4), 1 + rng.below(65535));
    const at = 1 + rng.below(frame.byteLength - 1);
    frame[at] = frame[at]! ^ (1 << rng.below(8));
  }
  // Never aim an OPEN at the one destination the relay allows: no fuzzed frame may open a stream.
  if (
    frame.byteLength === 12 && frame[0] === FrameType.OPEN && ((frame[10]! << 8) | frame[11]!) === avoidPort
  ) {
    frame[11] = (frame[11]! + 1) & 255;
  }
  return frame;
}

/** What the relay must answer: ERRORs per id, or the end of the session with a close code. */
interface Expectation {
  errors: Map<number, number>;
  closeCode: number | undefined;
}

function expect(message: Message, opened: Set<number>, expected: Expectation): void {
  const bump = (id: number) => expected.errors.set(id, (expected.errors.get(id) ?? 0) + 1);
  if (typeof message === "string") {
    bump(0);
    expected.closeCode = 1002;
    return;
  }
  if (message.byteLength > MAX_FRAME) {
    bump(0);
    expected.closeCode = 1009;
    return;
  }
  try {
    const frame = decodeClientFrame(message);
    if (frame.type === FrameType.OPEN) {
      bump(frame.connectionId); // refused by the policy, which allows only the echo server
      opened.add(frame.connectionId);
    } else if (!opened.has(frame.connectionId)) {
      bump(frame.connectionId); // DATA or CLOSE for an id that was never opened
    }
  } catch (err: unknown) {
    if (!(err instanceof ProtocolError)) throw err;
    bump(err.connectionId);
    if (err.scope === "session") expected.closeCode = 1002;
    // A malformed OPEN is a refused OPEN too: what follows it on that id is dropped quietly.
    else if (message[0] === FrameType.OPEN && err.connectionId !== 0) opened.add(err.connectionId);
  }
}

Deno.test("fuzz: thousands of random and mutated frames never crash, leak or go unanswered", async () => {
  const seed = Number(Deno.env.get("FUZZ_SEED") ?? "20261124");
  await using echo = startEchoServer();
  await using relay = await spawnRelay({
    AERO_PROXY_AUTH_TOKEN: TOKEN,
    AERO_PROXY_ALLOW_CIDRS: "127.0.0.1/32",
    AERO_PROXY_ALLOW_PORTS: String(echo.port),
    AERO_PROXY_MAX_FRAME_BYTES: String(MAX_FRAME),
  });
  {
    // Warm up once so lazily created runtime resources are part of the baseline.
    await using client = await MuxClient.connect(muxUrl(relay.port));
    await client.open(1, echo.port);
  }
  await delay(300);
  const before = await procStats(relay.pid);
  const rng = new Rng(seed);
  let sent = 0;
  let errors = 0;
  let sessionsClosedByRelay = 0;
  for (let s = 0; s < SESSIONS; s++) {
    await using client = await MuxClient.connect(muxUrl(relay.port));
    const opened = new Set<number>();
    const expected: Expectation = { errors: new Map(), closeCode: undefined };
    for (let i = 0; i < FRAMES_PER_SESSION && expected.closeCode === undefined; i++) {
      const message = generate(rng, echo.port);
      expect(message, opened, expected);
      client.ws.send(message);
      sent++;
    }
    if (expected.closeCode === undefined) {
      // A sentinel the relay must answer last: once its ERROR arrives, every earlier answer has arrived.
      let sentinel = 0x7fff_0000 + s;
      while (opened.has(sentinel)) sentinel++;
      client.send(encodeClose(sentinel));
      const answer = await client.next(sentinel, 10_000);
      assert.ok(
        answer.type === FrameType.ERROR && answer.code === ErrorCode.INVALID_FRAME,
        `session ${s}: sentinel`,
      );
    } else {
      const event = await withTimeout(client.closed, 10_000, `session ${s} to be closed`);
      assert.equal(event.code, expected.closeCode, `session ${s}: close code`);
      sessionsClosedByRelay++;
    }
    for (const [id, count] of expected.errors) {
      const frames = client.pending(id);
      assert.equal(frames.length, count, `session ${s}, id ${id}: ${JSON.stringify(frames)}`);
      for (const frame of frames) assert.equal(frame.type, FrameType.ERROR, `session ${s}, id ${id}`);
      errors += count;
    }
    const answered = [...expected.errors.values()].reduce((a, b) => a + b, 0) +
      (expected.closeCode === undefined ? 1 : 0);
    assert.equal(client.received, answered, `session ${s}: frames beyond the expected answers`);
  }
  // Every session is closed; the relay must be back to its baseline of descriptors.
  let after = await procStats(relay.pid);
  for (let i = 0; i < 40 && after.fds > before.fds; i++) {
    await delay(50);
    after = await procStats(relay.pid);
  }
  report(
    `fuzz seed ${seed}: ${sent} messages over ${SESSIONS} sessions, ${errors} ERROR answers, ` +
      `${sessionsClosedByRelay} sessions closed for violations; relay fds ${before.fds} -> ${after.fds}, ` +
      `RSS ${(before.rss / 2 ** 20).toFixed(1)} -> ${(after.rss / 2 ** 20).toFixed(1)} MiB`,
  );
  assert.ok(sent >= 2000, `only ${sent} messages were sent`);
  assert.ok(after.fds <= before.fds, `relay holds ${after.fds - before.fds} more descriptors than before`);
  // And it still relays.
  await using client = await MuxClient.connect(muxUrl(relay.port));
  await client.open(1, echo.port);
  client.sendData(1, new TextEncoder().encode("still here"));
  assert.equal(new TextDecoder().decode(await client.readBytes(1, 10)), "still here");
});
