/**
 * Seeded fuzz of the relay's WebSocket framing over real loopback TCP: random valid and invalid frame sequences,
 * split at random boundaries. The relay must never crash (after every case a fresh client still connects and
 * echoes); valid sequences must echo byte-exact; each invalid one must end in the expected Close (1002, 1007,
 * 1008 or 1009 from the transport, or the session's ERROR 5 on id 0 and 1002) and then a TCP close.
 *
 * The seed comes from FUZZ_SEED when set, else at random; it is printed, so a failure can be replayed with
 * `FUZZ_SEED=<seed>`. Cases are bounded in number and in time.
 */
import assert from "node:assert/strict";
import { concat, report, startEchoServer, startRelay } from "../_util.ts";
import {
  bytesOf,
  closePayload,
  encodeFrame,
  expectCloseThenEof,
  fragmentedMessage,
  fragmentsOf,
  frame,
  Opcode,
  Prng,
  randomSplit,
  sleep,
} from "./_frames.ts";
import {
  assertRelayEchoes,
  assertSessionError,
  connectMux,
  dataBytes,
  openBytes,
  relayOverrides,
  SeedReader,
} from "./_relay.ts";

const MAX_CASES = 80;
const BUDGET_MS = 25_000;
const MAX_FRAME_BYTES = 64 * 1024;
const MESSAGE_TIMEOUT_MS = 300;

function fuzzSeed(): number {
  const text = Deno.env.get("FUZZ_SEED");
  if (text === undefined || text.trim() === "") return crypto.getRandomValues(new Uint32Array(1))[0]!;
  const seed = Number(text);
  if (!Number.isInteger(seed) || seed < 0 || seed > 0xffff_ffff) {
    throw new RangeError(`FUZZ_SEED must be an integer in [0, 2^32), got "${text}"`);
  }
  return seed;
}

/** What the relay must do with a generated sequence. */
type Expectation =
  | { readonly kind: "echo"; readonly data: Uint8Array; readonly pings: readonly Uint8Array[] }
  | {
    readonly kind: "close";
    readonly code: number;
    readonly sessionError: boolean;
    readonly reply: boolean;
  };

interface FuzzCase {
  readonly name: string;
  /** The kind of case, for the tally. */
  readonly family: string;
  readonly bytes: Uint8Array;
  readonly expect: Expectation;
}

/** Valid frames that leave no fragmented message open: pings, pongs, DATA on stream 1 (whole or in fragments). */
function validPrefix(rng: Prng, echoPort: number, data: Uint8Array[], pings: Uint8Array[]): Uint8Array[] {
  const frames = [frame.binary(openBytes(1, echoPort))];
  const count = rng.int(5);
  for (let i = 0; i < count; i++) {
    const roll = rng.int(10);
    if (roll < 2) {
      const payload = rng.bytes(rng.int(126));
      pings.push(payload);
      frames.push(frame.ping(payload));
    } else if (roll < 3) {
      frames.push(frame.pong(rng.bytes(rng.int(126))));
    } else {
      const chunk = rng.bytes(rng.int(rng.chance(0.2) ? 20_000 : 600));
      data.push(chunk);
      const message = dataBytes(1, chunk);
      if (rng.chance(0.4)) {
        const fragments = fragmentedMessage(Opcode.BINARY, fragmentsOf(message, 2 + rng.int(4)));
        for (let j = 0; j < fragments.length; j++) {
          frames.push(fragments[j]!);
          if (j < fragments.length - 1 && rng.chance(0.3)) {
            const payload = rng.bytes(rng.int(126));
            pings.push(payload);
            frames.push(frame.ping(payload));
          }
        }
      } else frames.push(frame.binary(message));
    }
  }
  return frames;
}

const INVALID_UTF8 = [[0x80], [0xc0, 0x80], [0xed, 0xa0, 0x80], [0xf4, 0x90, 0x80, 0x80], [0xfe], [
  0xe2,
  0x82,
]];
const INVALID_CLOSE_CODES = [0, 999, 1004, 1005, 1006, 1015, 1016, 2999, 5000];

interface Violation {
  name: string;
  /** Groups variants (`Close 999`, `Close 5000`) in the tally. @default name */
  family?: string;
  frames: Uint8Array[];
  code: number;
  sessionError?: boolean;
  reply?: boolean;
}

/** One violation, placed after a prefix that left no message open. */
function violation(rng: Prng): Violation {
  const kinds: (() => Violation)[] = [
    () => ({
      name: "unmasked frame",
      frames: [rng.pick([frame.binary(rng.bytes(8), { mask: false }), frame.ping("u", { mask: false })])],
      code: 1002,
    }),
    () => {
      const rsv = 1 + rng.int(7);
      return {
        name: `rsv=${rsv}`,
        family: "RSV bits",
        frames: [rng.pick([frame.binary(rng.bytes(6), { rsv }), frame.ping("r", { rsv })])],
        code: 1002,
      };
    },
    () => {
      const opcode = rng.pick([3, 4, 5, 6, 7, 0xb, 0xc, 0xd, 0xe, 0xf]);
      return {
        name: `opcode ${opcode}`,
        family: "reserved opcode",
        frames: [encodeFrame({ opcode, payload: rng.bytes(rng.int(10)) })],
        code: 1002,
      };
    },
    () => ({
      name: "control frame over 125 bytes",
      frames: [
        encodeFrame({ opcode: rng.pick([Opcode.PING, Opcode.PONG]), payload: rng.bytes(126 + rng.int(200)) }),
      ],
      code: 1002,
    }),
    () => ({
      name: "fragmented control frame",
      frames: [
        encodeFrame({ opcode: rng.pick([Opcode.PING, Opcode.PONG]), fin: false }),
        frame.continuation(""),
      ],
      code: 1002,
    }),
    () => ({
      name: "continuation without a message",
      frames: [frame.continuation(rng.bytes(5))],
      code: 1002,
    }),
    () => ({
      name: "new message while one is open",
      frames: [
        frame.binary(rng.bytes(3), { fin: false }),
        rng.pick([frame.binary(rng.bytes(5)), frame.text("t")]),
      ],
      code: 1002,
    }),
    () => ({
      name: "64-bit length with the top bit",
      frames: [
        encodeFrame({
          opcode: Opcode.BINARY,
          lengthForm: 64,
          declaredLength: (1n << 63n) + BigInt(rng.int(1000)),
        }),
      ],
      code: 1002,
    }),
    () => {
      const bad = Uint8Array.from(rng.pick(INVALID_UTF8));
      const split = rng.chance(0.5);
      return {
        name: `invalid UTF-8 ${split ? "across fragments" : "in one frame"}`,
        family: "invalid UTF-8 text",
        frames: split
          ? [frame.text("ok", { fin: false }), frame.continuation(bad)]
          : [frame.text(concat([bytesOf("ok"), bad]))],
        code: 1007,
      };
    },
    () => {
      const code = rng.pick(INVALID_CLOSE_CODES);
      return { name: `Close ${code}`, family: "invalid close code", frames: [frame.close(code)], code: 1002 };
    },
    () => ({
      name: "Close with a 1-byte payload",
      frames: [encodeFrame({ opcode: Opcode.CLOSE, payload: new Uint8Array([3]) })],
      code: 1002,
    }),
    () => ({
      name: "Close reason with invalid UTF-8",
      frames: [encodeFrame({ opcode: Opcode.CLOSE, payload: closePayload(1000, new Uint8Array([0xff])) })],
      code: 1007,
    }),
    () => ({
      name: "header announcing a message over the limit",
      frames: [
        encodeFrame({
          opcode: Opcode.BINARY,
          declaredLength: MAX_FRAME_BYTES + 1 + rng.int(63 * 1024 * 1024),
        }),
      ],
      code: 1009,
      sessionError: true,
    }),
    () => ({
      name: "fragments summing over the limit",
      frames: [
        frame.binary(new Uint8Array(MAX_FRAME_BYTES - 10), { fin: false }),
        encodeFrame({ opcode: Opcode.CONTINUATION, declaredLength: 11 + rng.int(1000) }),
      ],
      code: 1009,
      sessionError: true,
    }),
    () => ({
      name: "valid text (session: ERROR 5 on id 0, 1002)",
      frames: [frame.text("hello")],
      code: 1002,
      sessionError: true,
      reply: true,
    }),
    () => ({
      name: "binary message under 5 bytes (session: ERROR 5 on id 0, 1002)",
      frames: [frame.binary(rng.bytes(rng.int(5)))],
      code: 1002,
      sessionError: true,
      reply: true,
    }),
    () => ({
      name: "unknown seed frame type (session: ERROR 5 on id 0, 1002)",
      frames: [frame.binary(Uint8Array.of(9, 0, 0, 0, 1))],
      code: 1002,
      sessionError: true,
      reply: true,
    }),
  ];
  // A message that never finishes costs the timeout; keep it rare.
  if (rng.chance(0.05)) {
    return {
      name: "unfinished fragmented message",
      frames: [frame.binary(rng.bytes(4), { fin: false })],
      code: 1008,
    };
  }
  return rng.pick(kinds)();
}

function generate(rng: Prng, echoPort: number): FuzzCase {
  const data: Uint8Array[] = [];
  const pings: Uint8Array[] = [];
  const prefix = validPrefix(rng, echoPort, data, pings);
  if (rng.chance(0.3)) {
    return {
      name: `valid: ${prefix.length} frames`,
      family: "valid",
      bytes: concat(prefix),
      expect: { kind: "echo", data: concat(data), pings },
    };
  }
  const v = violation(rng);
  // Whatever follows a violation must be ignored (the Close is already decided).
  const trailing = rng.chance(0.3) && v.code !== 1008
    ? [frame.binary(rng.bytes(rng.int(40))), frame.ping("late")]
    : [];
  return {
    name: `${v.name} after ${prefix.length} valid frames${trailing.length > 0 ? " + trailing frames" : ""}`,
    family: v.family ?? v.name,
    bytes: concat([...prefix, ...v.frames, ...trailing]),
    expect: { kind: "close", code: v.code, sessionError: v.sessionError ?? false, reply: v.reply ?? false },
  };
}

async function runCase(port: number, c: FuzzCase, rng: Prng): Promise<void> {
  await using client = await connectMux(port);
  const pieces = randomSplit(c.bytes, rng, 1 + rng.int(24));
  const gapMs = rng.chance(0.3) ? 1 : 0;
  if (c.expect.kind === "echo") {
    const reader = new SeedReader(client);
    await client.write(pieces, { gapMs });
    await reader.expectAck(1);
    assert.deepEqual(
      await reader.readData(1, c.expect.data.byteLength),
      c.expect.data,
      "echoed bytes differ",
    );
    await reader.waitPongs(c.expect.pings.length, 2000);
    assert.deepEqual(reader.pongs, c.expect.pings, "pongs differ from the pings");
    await client.write(frame.close(1000));
    await expectCloseThenEof(client, 1000);
    return;
  }
  await client.tryWrite(pieces, { gapMs });
  const withinMs = c.expect.code === 1008 ? MESSAGE_TIMEOUT_MS + 2000 : c.expect.reply ? 3000 : 2000;
  const result = await expectCloseThenEof(client, c.expect.code, { withinMs, reply: c.expect.reply });
  if (c.expect.sessionError) assertSessionError(result.before);
  // Frames before the Close are pongs, acks, echoed DATA or the session error; never another Close.
  for (const f of result.before) assert.ok(f.opcode !== Opcode.CLOSE);
}

Deno.test("frame fuzz: random valid and invalid frame sequences at random splits", async () => {
  const seed = fuzzSeed();
  report(`FUZZ_SEED=${seed} (replay with FUZZ_SEED=${seed})`);
  const rng = new Prng(seed);
  await using relay = startRelay(
    relayOverrides({ maxFrameBytes: MAX_FRAME_BYTES, messageTimeoutMs: MESSAGE_TIMEOUT_MS, openRate: 0 }),
  );
  await using echo = startEchoServer();
  const started = performance.now();
  const failures: string[] = [];
  const tally = new Map<string, [ok: number, failed: number]>();
  let cases = 0;
  while (cases < MAX_CASES && performance.now() - started < BUDGET_MS) {
    const c = generate(rng, echo.port);
    const index = cases++;
    const family = c.expect.kind === "echo" ? "valid" : c.family;
    const counts = tally.get(family) ?? [0, 0];
    try {
      await runCase(relay.port, c, rng);
      counts[0]++;
    } catch (err: unknown) {
      counts[1]++;
      failures.push(
        `#${index} ${c.name}: ${err instanceof Error ? err.message.split("\n")[0] : String(err)}`,
      );
    }
    tally.set(family, counts);
    // Whatever happened, the relay must still serve a fresh, well-behaved client.
    try {
      await assertRelayEchoes(relay.port, echo.port);
    } catch (err: unknown) {
      assert.fail(`the relay stopped serving after case #${index} (${c.name}), seed ${seed}: ${String(err)}`);
    }
  }
  const elapsed = ((performance.now() - started) / 1000).toFixed(1);
  report(`${cases} cases in ${elapsed} s, ${failures.length} failed`);
  for (const [family, [ok, failed]] of [...tally].sort()) report(`  ${family}: ${ok} ok, ${failed} failed`);
  for (const until = performance.now() + 2000; relay.relay.sessions.size > 0 && performance.now() < until;) {
    await sleep(20);
  }
  assert.equal(relay.relay.sessions.size, 0, "sessions left open after the fuzz");
  assert.ok(cases > 0);
  if (failures.length > 0) {
    assert.fail(
      `${failures.length} of ${cases} cases failed (FUZZ_SEED=${seed}):\n${failures.slice(0, 15).join("\n")}`,
    );
  }
});
