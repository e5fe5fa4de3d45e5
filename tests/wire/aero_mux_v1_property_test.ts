/**
 * Property tests of the aero-tcp-mux-v1 decoder: framing is independent of how the byte stream is chunked, valid
 * frames round-trip, the decoder is total (frames, invalid items or a session `MuxProtocolError`, nothing else)
 * and never holds more than one frame.
 */
import assert from "node:assert/strict";
import fc from "fast-check";
import {
  encodeFrame,
  encodeRawFrame,
  MUX_HEADER_SIZE,
  MUX_MAX_OPEN_HOST_BYTES,
  MUX_MAX_OPEN_METADATA_BYTES,
  MuxCloseFlag,
  type MuxDecoded,
  type MuxFrame,
  MuxFrameDecoder,
  MuxMsgType,
  MuxProtocolError,
} from "../../src/wire/aero_mux_v1_codec.ts";

/** Runs per property: every branch many times over, in about a second each. */
const RUNS = 1_000;

const utf8 = new TextEncoder();

function concat(parts: readonly Uint8Array[]): Uint8Array {
  const out = new Uint8Array(parts.reduce((sum, p) => sum + p.byteLength, 0));
  let at = 0;
  for (const part of parts) {
    out.set(part, at);
    at += part.byteLength;
  }
  return out;
}

/** Splits `data` at `offsets` (taken modulo length + 1, any order, duplicates kept as empty chunks). */
function splitAt(data: Uint8Array, offsets: readonly number[]): Uint8Array[] {
  const cuts = offsets.map((o) => o % (data.byteLength + 1)).sort((a, b) => a - b);
  const chunks: Uint8Array[] = [];
  let start = 0;
  for (const cut of cuts) {
    chunks.push(data.subarray(start, cut));
    start = cut;
  }
  chunks.push(data.subarray(start));
  return chunks;
}

/** An item as plain data; payload views become arrays so a copy and a view compare equal. */
function describe(item: MuxDecoded): unknown {
  if (item.type === "invalid") {
    return {
      invalid: item.streamId,
      scope: item.error.scope,
      code: item.error.code,
      message: item.error.message,
    };
  }
  return Object.fromEntries(
    Object.entries(item).map((
      [key, value],
    ) => [key, value instanceof Uint8Array ? Array.from(value) : value]),
  );
}

interface Outcome {
  items: unknown[];
  failure: string | undefined;
}

/**
 * Decodes `chunks`, checking the buffer bound after every push. A session error (the last item of a push, or
 * thrown by `finish`) ends the outcome; any other exception escapes and fails the property.
 */
function decode(chunks: readonly Uint8Array[], maxPayloadBytes: number): Outcome {
  const decoder = new MuxFrameDecoder({ maxPayloadBytes });
  const items: unknown[] = [];
  try {
    for (const chunk of chunks) {
      const pushed = decoder.push(chunk);
      assert.ok(
        decoder.bufferedBytes <= MUX_HEADER_SIZE + maxPayloadBytes,
        `${decoder.bufferedBytes} bytes held`,
      );
      for (const [i, item] of pushed.entries()) {
        if (item.type === "invalid" && item.error.scope === "session") {
          assert.equal(i, pushed.length - 1, "a session error is the last item");
          assert.equal(item.streamId, 0);
          assert.throws(() => decoder.push(new Uint8Array(1)), (err) => err === item.error);
          return { items, failure: item.error.message };
        }
        items.push(describe(item));
      }
    }
    decoder.finish();
  } catch (err: unknown) {
    if (!(err instanceof MuxProtocolError)) throw err;
    assert.equal(err.scope, "session");
    assert.equal(err.streamId, 0);
    return { items, failure: err.message };
  }
  return { items, failure: undefined };
}

const streamId = fc.integer({ min: 1, max: 0xffff_ffff });
const anyStreamId = fc.oneof(fc.constant(0), streamId);
const payload = fc.uint8Array({ maxLength: 64 });
/** Text whose UTF-8 form fits `maxBytes` (well-formed strings only: lone surrogates do not round-trip). */
const utf8Text = (maxLength: number, maxBytes: number) =>
  fc.string({ unit: "grapheme", maxLength }).filter((s) => utf8.encode(s).byteLength <= maxBytes);

const validFrame: fc.Arbitrary<MuxFrame> = fc.oneof(
  fc.record({
    type: fc.constant(MuxMsgType.OPEN),
    streamId,
    host: utf8Text(40, MUX_MAX_OPEN_HOST_BYTES).filter((s) => s.length > 0),
    port: fc.integer({ min: 1, max: 0xffff }),
    metadata: utf8Text(40, MUX_MAX_OPEN_METADATA_BYTES).map((s) => utf8.encode(s)),
  }),
  fc.record({ type: fc.constant(MuxMsgType.DATA), streamId, data: payload }),
  fc.record({
    type: fc.constant(MuxMsgType.CLOSE),
    streamId,
    flags: fc.constantFrom(MuxCloseFlag.FIN, MuxCloseFlag.RST, MuxCloseFlag.FIN | MuxCloseFlag.RST),
  }),
  fc.record({
    type: fc.constant(MuxMsgType.ERROR),
    streamId: anyStreamId,
    code: fc.integer({ min: 0, max: 0xffff }),
    message: utf8Text(40, 0xffff),
  }),
  fc.record({ type: fc.constant(MuxMsgType.PING), streamId: anyStreamId, payload }),
  fc.record({ type: fc.constant(MuxMsgType.PONG), streamId: anyStreamId, payload }),
);

/** Well-framed but often invalid frames: any type byte, id and payload, with a truthful length. */
const rawFrame = fc
  .record({
    type: fc.oneof(fc.integer({ min: 0, max: 8 }), fc.integer({ min: 0, max: 255 })),
    streamId: fc.constantFrom(0, 1, 2, 0xffff_ffff),
    payload: fc.oneof(
      payload,
      fc.constantFrom(new Uint8Array([1]), new Uint8Array([0, 1, 0x61, 0, 80, 0, 0])),
    ),
  })
  .map(({ type, streamId, payload }) => encodeRawFrame({ type, streamId }, payload));

/** Byte streams a hostile client might send: real frames, junk, or both interleaved. */
const hostileStream = fc.oneof(
  fc.uint8Array({ maxLength: 200 }),
  fc.array(fc.oneof(rawFrame, validFrame.map(encodeFrame)), { maxLength: 12 }).map(concat),
  fc.array(fc.oneof(rawFrame, fc.uint8Array({ maxLength: 12 })), { maxLength: 8 }).map(concat),
);

const cuts = fc.array(fc.nat(), { maxLength: 12 });

Deno.test({ name: "property: valid frames split anywhere decode to themselves", permissions: "none" }, () => {
  fc.assert(
    fc.property(fc.array(validFrame, { maxLength: 12 }), cuts, (frames, offsets) => {
      const stream = concat(frames.map(encodeFrame));
      const outcome = decode(splitAt(stream, offsets), 1 << 17);
      assert.deepEqual(outcome, { items: frames.map(describe), failure: undefined });
    }),
    { numRuns: RUNS },
  );
});

Deno.test(
  { name: "property: any byte stream decodes the same however it is chunked", permissions: "none" },
  () => {
    fc.assert(
      fc.property(hostileStream, cuts, fc.constantFrom(0, 1, 8, 64, 1 << 17), (stream, offsets, max) => {
        const whole = decode([stream], max);
        assert.deepEqual(decode(splitAt(stream, offsets), max), whole);
        assert.deepEqual(decode(Array.from(stream, (b) => new Uint8Array([b])), max), whole);
      }),
      { numRuns: RUNS },
    );
  },
);

Deno.test(
  { name: "property: every decoded frame re-encodes to the bytes it came from", permissions: "none" },
  () => {
    fc.assert(
      fc.property(rawFrame, (frame) => {
        const [item, ...rest] = new MuxFrameDecoder().push(frame);
        assert.equal(rest.length, 0);
        assert.ok(item !== undefined);
        if (item.type === "invalid") {
          assert.equal(item.error.scope, "stream");
          return;
        }
        assert.deepEqual(encodeFrame(item), frame);
      }),
      { numRuns: RUNS },
    );
  },
);

Deno.test({
  name: "property: each well-framed frame yields exactly one item, valid or not",
  permissions: "none",
}, () => {
  fc.assert(
    fc.property(
      fc.array(fc.oneof(rawFrame, validFrame.map(encodeFrame)), { maxLength: 12 }),
      cuts,
      (frames, offsets) => {
        const alone = frames.map((frame) => decode([frame], 1 << 17));
        for (const outcome of alone) {
          assert.equal(outcome.failure, undefined);
          assert.equal(outcome.items.length, 1);
        }
        const together = decode(splitAt(concat(frames), offsets), 1 << 17);
        assert.deepEqual(together, { items: alone.flatMap((o) => o.items), failure: undefined });
      },
    ),
    { numRuns: RUNS },
  );
});
