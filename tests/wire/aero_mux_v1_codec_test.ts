/**
 * Unit tests of the aero-tcp-mux-v1 codec: the shared golden vectors both ways, every truncation and split point,
 * the zero-copy paths, the payload limit, and each malformed frame with its error.
 */
import assert from "node:assert/strict";
import {
  decodeClosePayload,
  decodeErrorPayload,
  decodeOpenPayload,
  encodeClose,
  encodeData,
  encodeError,
  encodeFrame,
  encodeOpen,
  encodePing,
  encodePong,
  encodeRawFrame,
  encodeWindow,
  MUX_CLOSE_FLAGS_MASK,
  MUX_DEFAULT_ERROR_MESSAGE_BYTES,
  MUX_DEFAULT_MAX_PAYLOAD_BYTES,
  MUX_ERROR_CODE_NAMES,
  MUX_HEADER_SIZE,
  MUX_MAX_OPEN_HOST_BYTES,
  MUX_MAX_OPEN_METADATA_BYTES,
  MUX_MAX_OPEN_PAYLOAD_BYTES,
  MUX_V1_SUBPROTOCOL,
  MuxCloseFlag,
  type MuxDecoded,
  MuxErrorCode,
  type MuxFrame,
  MuxFrameDecoder,
  MuxMsgType,
  MuxProtocolError,
  writeDataHeader,
} from "../../src/wire/aero_mux_v1_codec.ts";

// ---------------------------------------------------------------------------------------------------------------
// Helpers

const utf8 = new TextEncoder();

function bytes(...values: number[]): Uint8Array {
  return new Uint8Array(values);
}

function text(value: string): Uint8Array {
  return utf8.encode(value);
}

function fromBase64(value: string): Uint8Array {
  return Uint8Array.from(atob(value), (c) => c.charCodeAt(0));
}

function concat(...parts: Uint8Array[]): Uint8Array {
  const out = new Uint8Array(parts.reduce((sum, p) => sum + p.byteLength, 0));
  let at = 0;
  for (const part of parts) {
    out.set(part, at);
    at += part.byteLength;
  }
  return out;
}

function u16(value: number): number[] {
  return [value >> 8, value & 0xff];
}

/** A header with any fields, followed by `payload` (whose length need not match `length`). */
function rawHeader(type: number, streamId: number, length: number): Uint8Array {
  const header = new Uint8Array(MUX_HEADER_SIZE);
  header[0] = type;
  const view = new DataView(header.buffer);
  view.setUint32(1, streamId);
  view.setUint32(5, length);
  return header;
}

/** An OPEN payload built field by field, so lengths can lie. */
function openPayload(
  parts: {
    hostLength?: number;
    host: Uint8Array;
    port: number;
    metadataLength?: number;
    metadata?: Uint8Array;
  },
): Uint8Array {
  const metadata = parts.metadata ?? bytes();
  return concat(
    bytes(...u16(parts.hostLength ?? parts.host.byteLength)),
    parts.host,
    bytes(...u16(parts.port), ...u16(parts.metadataLength ?? metadata.byteLength)),
    metadata,
  );
}

/** A decoded item as plain data, for deep comparison. */
type Described =
  | { type: "invalid"; streamId: number; scope: string; code: number; message: string }
  | { type: number; streamId: number; fields: Record<string, unknown> };

function describe(item: MuxDecoded): Described {
  if (item.type === "invalid") {
    assert.equal(item.error.streamId, item.streamId, "an invalid frame's error names its stream");
    const { scope, code, message } = item.error;
    return { type: "invalid", streamId: item.streamId, scope, code, message };
  }
  const { type, streamId, ...rest } = item;
  const fields: Record<string, unknown> = {};
  for (const [key, value] of Object.entries(rest)) {
    fields[key] = value instanceof Uint8Array ? Array.from(value) : value;
  }
  return { type, streamId, fields };
}

interface Outcome {
  items: Described[];
  /** The session error's message: the last item of a push, or thrown by `finish`. */
  failure: string | undefined;
}

function decodeChunks(chunks: readonly Uint8Array[], maxPayloadBytes?: number): Outcome {
  const decoder = new MuxFrameDecoder(maxPayloadBytes === undefined ? {} : { maxPayloadBytes });
  const items: Described[] = [];
  try {
    for (const chunk of chunks) {
      const pushed = decoder.push(chunk);
      for (const [i, item] of pushed.entries()) {
        if (item.type === "invalid" && item.error.scope === "session") {
          assert.equal(i, pushed.length - 1, "a session error is the last item");
          assertSessionError(() => decoder.push(bytes()), new RegExp(escapeRegExp(item.error.message)));
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

/** Decodes one complete frame pushed whole; fails unless it yields exactly one item. */
function decodeOne(frame: Uint8Array): MuxDecoded {
  const decoder = new MuxFrameDecoder();
  const items = decoder.push(frame);
  decoder.finish();
  assert.equal(items.length, 1, `expected one item, got ${items.length}`);
  return items[0]!;
}

function decodeValid(frame: Uint8Array): MuxFrame {
  const item = decodeOne(frame);
  if (item.type === "invalid") assert.fail(`expected a frame, got: ${item.error.message}`);
  return item;
}

function assertInvalid(item: MuxDecoded | undefined, streamId: number, pattern: RegExp): void {
  assert.ok(item !== undefined, "expected an invalid frame, got nothing");
  if (item.type !== "invalid") assert.fail(`expected an invalid frame, got type ${item.type}`);
  assert.ok(item.error instanceof MuxProtocolError);
  assert.equal(item.error.scope, "stream");
  assert.equal(item.error.code, MuxErrorCode.PROTOCOL_ERROR);
  assert.equal(item.streamId, streamId);
  assert.equal(item.error.streamId, streamId);
  assert.match(item.error.message, pattern);
}

function escapeRegExp(value: string): string {
  return value.replace(/[.*+?^${}()|[\]\\]/g, "\\$&");
}

/** Checks that `items` ends with a session error matching `pattern`; returns the items before it. */
function assertSessionItem(items: readonly MuxDecoded[], pattern: RegExp): MuxDecoded[] {
  const last = items.at(-1);
  assert.ok(last?.type === "invalid", "expected a session error as the last item");
  assert.equal(last.streamId, 0);
  assert.equal(last.error.scope, "session");
  assert.equal(last.error.streamId, 0);
  assert.equal(last.error.code, MuxErrorCode.PROTOCOL_ERROR);
  assert.match(last.error.message, pattern);
  return items.slice(0, -1);
}

function assertSessionError(fn: () => unknown, pattern: RegExp): void {
  assert.throws(fn, (err: unknown) => {
    assert.ok(err instanceof MuxProtocolError, `expected MuxProtocolError, got ${err}`);
    assert.equal(err.scope, "session");
    assert.equal(err.streamId, 0);
    assert.equal(err.code, MuxErrorCode.PROTOCOL_ERROR);
    assert.match(err.message, pattern);
    return true;
  });
}

// ---------------------------------------------------------------------------------------------------------------
// Golden vectors (read before any test runs, so the tests themselves need no permission)

interface FrameVector {
  name: string;
  msgType: number;
  streamId: number;
  "payload_b64": string;
  "frame_b64": string;
}
interface OpenVector {
  name: string;
  host: string;
  port: number;
  metadata?: string;
  "payload_b64": string;
}
interface CloseVector {
  name: string;
  flags: number;
  "payload_b64": string;
}
interface ErrorVector {
  name: string;
  code?: number;
  message?: string;
  "payload_b64": string;
  expectError?: boolean;
  errorContains?: string;
}
interface StreamVector {
  name: string;
  "chunks_b64": string[];
  expectFrames?: { msgType: number; streamId: number; "payload_b64": string }[];
  expectError?: boolean;
  errorContains?: string;
}
interface Vectors {
  schema: number;
  frames: FrameVector[];
  openPayloads: OpenVector[];
  closePayloads: CloseVector[];
  errorPayloads: ErrorVector[];
  parserStreams: StreamVector[];
}

const VECTORS_URL = new URL("../../../shared/spec/vectors/aero-tcp-mux-v1.json", import.meta.url);
const vectors: Vectors = JSON.parse(await Deno.readTextFile(VECTORS_URL));

/** The decoded fields of each frame vector, written out by hand from the spec (not derived by the codec). */
const FRAME_EXPECTATIONS: Record<string, MuxFrame> = {
  "frame_open_example.com_with_metadata": {
    type: MuxMsgType.OPEN,
    streamId: 1,
    host: "example.com",
    port: 443,
    metadata: text('{"k":"v"}'),
  },
  "frame_data_hi": { type: MuxMsgType.DATA, streamId: 1, data: text("hi") },
  "frame_close_fin": { type: MuxMsgType.CLOSE, streamId: 1, flags: MuxCloseFlag.FIN },
  "frame_error_policy_denied_nope": {
    type: MuxMsgType.ERROR,
    streamId: 1,
    code: MuxErrorCode.POLICY_DENIED,
    message: "nope",
  },
  "frame_ping_stream0_payload_010203": { type: MuxMsgType.PING, streamId: 0, payload: bytes(1, 2, 3) },
  "frame_pong_stream0_empty": { type: MuxMsgType.PONG, streamId: 0, payload: bytes() },
};

/** Each frame vector built with the typed encoder a sender would use. */
function encodeLikeASender(frame: MuxFrame): Uint8Array {
  switch (frame.type) {
    case MuxMsgType.OPEN:
      return encodeOpen(frame.streamId, { host: frame.host, port: frame.port, metadata: frame.metadata });
    case MuxMsgType.DATA:
      return encodeData(frame.streamId, frame.data);
    case MuxMsgType.CLOSE:
      return encodeClose(frame.streamId, frame.flags);
    case MuxMsgType.ERROR:
      return encodeError(frame.streamId, { code: frame.code, message: frame.message });
    case MuxMsgType.PING:
      return encodePing(frame.streamId, frame.payload);
    case MuxMsgType.PONG:
      return encodePong(frame.streamId, frame.payload);
    case MuxMsgType.WINDOW:
      return encodeWindow(frame.streamId, frame.bytes);
  }
}

Deno.test({
  name: "credit extension: WINDOW round trips, and is an unknown type without it",
  permissions: "none",
}, () => {
  const bytes = encodeWindow(7, 983_040);
  assert.deepEqual([...bytes], [0x10, 0, 0, 0, 7, 0, 0, 0, 4, 0x00, 0x0f, 0x00, 0x00]);
  assert.deepEqual(new MuxFrameDecoder({ credit: true }).push(bytes), [
    { type: MuxMsgType.WINDOW, streamId: 7, bytes: 983_040 },
  ]);
  const [plain] = new MuxFrameDecoder().push(bytes);
  assert.ok(
    plain?.type === "invalid" && plain.error.scope === "stream" &&
      /unknown msg_type 16/.test(plain.error.message),
  );
  // Zero bytes, the wrong length, and stream 0 are errors on their stream; the session goes on.
  const zero = encodeRawFrame({ type: MuxMsgType.WINDOW, streamId: 3 }, new Uint8Array(4));
  const short = encodeRawFrame({ type: MuxMsgType.WINDOW, streamId: 3 }, new Uint8Array(3));
  const session = encodeRawFrame({ type: MuxMsgType.WINDOW, streamId: 0 }, new Uint8Array([0, 0, 0, 1]));
  const decoded = new MuxFrameDecoder({ credit: true }).push(concat(zero, short, session, bytes));
  assert.deepEqual(decoded.map((d) => d.type), ["invalid", "invalid", "invalid", MuxMsgType.WINDOW]);
  assert.ok(decoded.slice(0, 3).every((d) => d.type === "invalid" && d.error.scope === "stream"));
  assert.throws(() => encodeWindow(1, 0), RangeError);
  assert.throws(() => encodeWindow(0, 1), RangeError);
});

Deno.test({ name: "vectors: the file is the expected schema", permissions: "none" }, () => {
  assert.equal(vectors.schema, 1);
  assert.deepEqual(
    vectors.frames.map((v) => v.name).sort(),
    Object.keys(FRAME_EXPECTATIONS).sort(),
    "every frame vector needs a hand-written expectation",
  );
  for (
    const list of [vectors.openPayloads, vectors.closePayloads, vectors.errorPayloads, vectors.parserStreams]
  ) {
    assert.ok(list.length > 0);
  }
});

Deno.test(
  { name: "vectors: frames encode to and decode from the golden bytes", permissions: "none" },
  async (t) => {
    for (const vector of vectors.frames) {
      await t.step(vector.name, () => {
        const frameBytes = fromBase64(vector.frame_b64);
        const payload = fromBase64(vector.payload_b64);
        const expected = FRAME_EXPECTATIONS[vector.name]!;
        assert.equal(expected.type, vector.msgType);
        assert.equal(expected.streamId, vector.streamId);
        // Encode: the typed encoder, the generic one and the raw one all give the golden bytes.
        assert.deepEqual(encodeLikeASender(expected), frameBytes);
        assert.deepEqual(encodeFrame(expected), frameBytes);
        assert.deepEqual(
          encodeRawFrame({ type: vector.msgType, streamId: vector.streamId }, payload),
          frameBytes,
        );
        // Decode: the golden bytes give the hand-written fields.
        const decoded = decodeValid(frameBytes);
        assert.deepEqual(describe(decoded), describe(expected));
        assert.deepEqual(encodeFrame(decoded).subarray(MUX_HEADER_SIZE), payload);
      });
    }
  },
);

Deno.test({ name: "vectors: OPEN payloads", permissions: "none" }, async (t) => {
  for (const vector of vectors.openPayloads) {
    await t.step(vector.name, () => {
      const payload = fromBase64(vector.payload_b64);
      const metadata = text(vector.metadata ?? "");
      const encoded = encodeOpen(7, {
        host: vector.host,
        port: vector.port,
        ...(vector.metadata === undefined ? {} : { metadata: vector.metadata }),
      });
      assert.deepEqual(encoded.subarray(MUX_HEADER_SIZE), payload);
      const decoded = decodeOpenPayload(7, payload);
      assert.deepEqual(
        describe(decoded),
        describe({ type: MuxMsgType.OPEN, streamId: 7, host: vector.host, port: vector.port, metadata }),
      );
      assert.deepEqual(
        describe(decodeValid(encodeRawFrame({ type: MuxMsgType.OPEN, streamId: 7 }, payload))),
        {
          type: MuxMsgType.OPEN,
          streamId: 7,
          fields: { host: vector.host, port: vector.port, metadata: Array.from(metadata) },
        },
      );
    });
  }
});

Deno.test({ name: "vectors: CLOSE payloads", permissions: "none" }, async (t) => {
  for (const vector of vectors.closePayloads) {
    await t.step(vector.name, () => {
      const payload = fromBase64(vector.payload_b64);
      assert.deepEqual(encodeClose(9, vector.flags).subarray(MUX_HEADER_SIZE), payload);
      assert.deepEqual(decodeClosePayload(9, payload), {
        type: MuxMsgType.CLOSE,
        streamId: 9,
        flags: vector.flags,
      });
    });
  }
});

Deno.test({ name: "vectors: ERROR payloads", permissions: "none" }, async (t) => {
  for (const vector of vectors.errorPayloads) {
    await t.step(vector.name, () => {
      const payload = fromBase64(vector.payload_b64);
      const framed = encodeRawFrame({ type: MuxMsgType.ERROR, streamId: 3 }, payload);
      if (vector.expectError) {
        const pattern = new RegExp(escapeRegExp(vector.errorContains!));
        assert.throws(() => decodeErrorPayload(3, payload), (err: unknown) => {
          assert.ok(err instanceof MuxProtocolError);
          assert.equal(err.scope, "stream");
          assert.match(err.message, pattern);
          return true;
        });
        assertInvalid(decodeOne(framed), 3, pattern);
        return;
      }
      const code = vector.code!;
      const message = vector.message!;
      assert.deepEqual(encodeError(3, { code, message }).subarray(MUX_HEADER_SIZE), payload);
      assert.deepEqual(decodeErrorPayload(3, payload), {
        type: MuxMsgType.ERROR,
        streamId: 3,
        code,
        message,
      });
      assert.deepEqual(decodeValid(framed), { type: MuxMsgType.ERROR, streamId: 3, code, message });
    });
  }
});

Deno.test({ name: "vectors: parser streams", permissions: "none" }, async (t) => {
  for (const vector of vectors.parserStreams) {
    await t.step(vector.name, () => {
      const chunks = vector.chunks_b64.map(fromBase64);
      const outcome = decodeChunks(chunks);
      if (vector.expectError) {
        assert.ok(outcome.failure !== undefined, "expected the stream to fail");
        assert.ok(outcome.failure.includes(vector.errorContains!), outcome.failure);
        return;
      }
      assert.equal(outcome.failure, undefined);
      const expected = vector.expectFrames!.map((f) =>
        describe(
          decodeValid(encodeRawFrame({ type: f.msgType, streamId: f.streamId }, fromBase64(f.payload_b64))),
        )
      );
      assert.deepEqual(outcome.items, expected);
      // Whatever the chunking, the same bytes decode the same.
      const whole = concat(...chunks);
      assert.deepEqual(decodeChunks([whole]), outcome);
      for (let cut = 0; cut <= whole.byteLength; cut++) {
        assert.deepEqual(
          decodeChunks([whole.subarray(0, cut), whole.subarray(cut)]),
          outcome,
          `cut at ${cut}`,
        );
      }
    });
  }
});

// ---------------------------------------------------------------------------------------------------------------
// Framing: truncation, splitting, concatenation, zero copies, the payload limit

/** Frames covering every type, empty and non-empty payloads and extreme stream ids. */
const SAMPLE_FRAMES: readonly MuxFrame[] = [
  ...Object.values(FRAME_EXPECTATIONS),
  { type: MuxMsgType.OPEN, streamId: 0xffff_ffff, host: "2001:db8::1", port: 65535, metadata: bytes() },
  { type: MuxMsgType.DATA, streamId: 2, data: bytes() },
  {
    type: MuxMsgType.DATA,
    streamId: 0x0102_0304,
    data: Uint8Array.from({ length: 300 }, (_, i) => i & 0xff),
  },
  { type: MuxMsgType.CLOSE, streamId: 2, flags: MuxCloseFlag.RST },
  { type: MuxMsgType.CLOSE, streamId: 2, flags: MuxCloseFlag.FIN | MuxCloseFlag.RST },
  { type: MuxMsgType.ERROR, streamId: 0, code: 0xffff, message: "" },
  { type: MuxMsgType.ERROR, streamId: 4, code: MuxErrorCode.DIAL_FAILED, message: "ünïcödé ✓ 🚀" },
  { type: MuxMsgType.PING, streamId: 8, payload: bytes(0xff) },
];

Deno.test(
  { name: "framing: every truncation of every frame is held, then completed", permissions: "none" },
  async (t) => {
    for (const frame of SAMPLE_FRAMES) {
      const encoded = encodeFrame(frame);
      await t.step(`type ${frame.type} stream ${frame.streamId} (${encoded.byteLength} bytes)`, () => {
        const expected = describe(frame);
        for (let cut = 0; cut < encoded.byteLength; cut++) {
          const decoder = new MuxFrameDecoder();
          assert.deepEqual(
            decoder.push(encoded.subarray(0, cut)),
            [],
            `prefix of ${cut} bytes yields nothing`,
          );
          assert.equal(decoder.bufferedBytes, cut);
          if (cut > 0) assertSessionError(() => decoder.finish(), /truncated tcp-mux frame stream/);
          else decoder.finish();
          const rest = decoder.push(encoded.subarray(cut));
          assert.deepEqual(rest.map(describe), [expected], `completed after a cut at ${cut}`);
          assert.equal(decoder.bufferedBytes, 0);
          decoder.finish();
        }
      });
    }
    await t.step("a trailing byte is the start of a frame that never completes", () => {
      const decoder = new MuxFrameDecoder();
      const items = decoder.push(concat(encodeData(1, text("hi")), bytes(MuxMsgType.DATA)));
      assert.deepEqual(items.map(describe), [
        describe({ type: MuxMsgType.DATA, streamId: 1, data: text("hi") }),
      ]);
      assert.equal(decoder.bufferedBytes, 1);
      assertSessionError(
        () => decoder.finish(),
        /truncated tcp-mux frame stream \(1 pending bytes, 8 more expected\)/,
      );
    });
    await t.step("a truncated payload reports what is missing", () => {
      const decoder = new MuxFrameDecoder();
      decoder.push(encodeData(1, text("hello")).subarray(0, 11));
      assertSessionError(() => decoder.finish(), /\(11 pending bytes, 3 more expected\)/);
    });
  },
);

Deno.test(
  { name: "framing: every split of a multi-frame stream decodes the same", permissions: "none" },
  async (t) => {
    const stream = concat(...SAMPLE_FRAMES.map(encodeFrame));
    const expected: Outcome = { items: SAMPLE_FRAMES.map(describe), failure: undefined };
    await t.step("concatenated in one chunk", () => assert.deepEqual(decodeChunks([stream]), expected));
    await t.step("one frame per chunk", () => {
      assert.deepEqual(decodeChunks(SAMPLE_FRAMES.map(encodeFrame)), expected);
    });
    await t.step("one byte per chunk", () => {
      const chunks = Array.from(stream, (b) => bytes(b));
      assert.deepEqual(decodeChunks(chunks), expected);
    });
    await t.step("every single split point", () => {
      for (let cut = 0; cut <= stream.byteLength; cut++) {
        assert.deepEqual(
          decodeChunks([stream.subarray(0, cut), stream.subarray(cut)]),
          expected,
          `cut at ${cut}`,
        );
      }
    });
    await t.step("every pair of split points (empty chunks included)", () => {
      // The 300-byte DATA frame makes the full square slow; pairs over the small frames cover every boundary.
      const small = concat(...SAMPLE_FRAMES.filter((f) => f.type !== MuxMsgType.DATA).map(encodeFrame));
      const smallExpected = decodeChunks([small]);
      assert.equal(smallExpected.failure, undefined);
      for (let i = 0; i <= small.byteLength; i++) {
        for (let j = i; j <= small.byteLength; j++) {
          const chunks = [small.subarray(0, i), small.subarray(i, j), small.subarray(j)];
          assert.deepEqual(decodeChunks(chunks), smallExpected, `cuts at ${i} and ${j}`);
        }
      }
    });
  },
);

Deno.test(
  { name: "framing: payloads are views unless a frame spans chunks", permissions: "none" },
  async (t) => {
    await t.step("a frame inside one chunk: DATA is a view of that chunk", () => {
      const chunk = concat(encodeData(1, text("ab")), encodeData(2, text("cde")));
      const [first, second] = new MuxFrameDecoder().push(chunk.subarray(0)) as [MuxDecoded, MuxDecoded];
      assert.ok(first.type === MuxMsgType.DATA && second.type === MuxMsgType.DATA);
      assert.equal(first.data.buffer, chunk.buffer);
      assert.equal(first.data.byteOffset, MUX_HEADER_SIZE);
      assert.equal(second.data.buffer, chunk.buffer);
      assert.equal(second.data.byteOffset, 2 * MUX_HEADER_SIZE + 2);
      chunk[MUX_HEADER_SIZE] = 0x7a;
      assert.equal(first.data[0], 0x7a, "no copy was made");
    });
    await t.step("a header split from its payload: the payload is a view of the second chunk", () => {
      const frame = encodeData(1, text("xyz"));
      const decoder = new MuxFrameDecoder();
      assert.deepEqual(decoder.push(frame.subarray(0, 4)), []);
      const second = frame.subarray(4);
      const [item] = decoder.push(second);
      assert.ok(item?.type === MuxMsgType.DATA);
      assert.equal(item.data.buffer, frame.buffer);
      assert.equal(item.data.byteOffset, MUX_HEADER_SIZE);
    });
    await t.step("a payload spanning chunks is copied once, into its own buffer", () => {
      const frame = encodeData(1, text("split"));
      const decoder = new MuxFrameDecoder();
      assert.deepEqual(decoder.push(frame.subarray(0, 11)), []);
      const [item] = decoder.push(frame.subarray(11));
      assert.ok(item?.type === MuxMsgType.DATA);
      assert.notEqual(item.data.buffer, frame.buffer);
      assert.equal(item.data.buffer.byteLength, 5, "exactly the payload's size");
      frame.fill(0);
      assert.deepEqual(item.data, text("split"));
    });
    await t.step("OPEN metadata and PING payloads are views too", () => {
      const chunk = concat(encodeOpen(1, { host: "h", port: 1, metadata: "{}" }), encodePing(0, bytes(5)));
      const [open, ping] = new MuxFrameDecoder().push(chunk) as [MuxDecoded, MuxDecoded];
      assert.ok(open.type === MuxMsgType.OPEN && ping.type === MuxMsgType.PING);
      assert.equal(open.metadata.buffer, chunk.buffer);
      assert.equal(ping.payload.buffer, chunk.buffer);
    });
  },
);

Deno.test(
  { name: "framing: a payload over the limit fails the session at its header", permissions: "none" },
  async (t) => {
    await t.step("the 9 header bytes alone are enough to reject", () => {
      const decoder = new MuxFrameDecoder({ maxPayloadBytes: 16 });
      const items = decoder.push(rawHeader(MuxMsgType.DATA, 1, 17));
      assert.deepEqual(
        assertSessionItem(items, /payload length 17 \(msg_type 2, stream 1\) is over the 16-byte limit/),
        [],
      );
      assertSessionError(() => decoder.push(encodeData(1, bytes())), /over the 16-byte limit/);
      assertSessionError(() => decoder.finish(), /over the 16-byte limit/);
    });
    await t.step("a header split across chunks is rejected when it completes", () => {
      const decoder = new MuxFrameDecoder({ maxPayloadBytes: 16 });
      const header = rawHeader(MuxMsgType.PING, 0, 1000);
      assert.deepEqual(decoder.push(header.subarray(0, 8)), []);
      assertSessionItem(decoder.push(header.subarray(8)), /payload length 1000/);
    });
    await t.step("the limit itself is accepted", () => {
      const frame = encodeData(1, new Uint8Array(16));
      assert.equal(decodeChunks([frame], 16).failure, undefined);
      assert.deepEqual(decodeChunks([frame], 15).items, []);
      assert.match(decodeChunks([frame], 15).failure ?? "", /over the 15-byte limit/);
    });
    await t.step("the default limit, and a u32 length", () => {
      assert.equal(new MuxFrameDecoder().maxPayloadBytes, MUX_DEFAULT_MAX_PAYLOAD_BYTES);
      assertSessionItem(
        new MuxFrameDecoder().push(rawHeader(MuxMsgType.DATA, 1, MUX_DEFAULT_MAX_PAYLOAD_BYTES + 1)),
        /over the 1048576-byte limit/,
      );
      assertSessionItem(new MuxFrameDecoder().push(rawHeader(MuxMsgType.DATA, 1, 0xffff_ffff)), /4294967295/);
    });
    await t.step("frames before the bad header come out first; nothing after it is read", () => {
      const decoder = new MuxFrameDecoder({ maxPayloadBytes: 16 });
      const chunk = concat(encodeData(1, bytes(1)), rawHeader(2, 1, 17), encodeData(1, bytes(2)));
      const before = assertSessionItem(decoder.push(chunk), /limit/);
      assert.deepEqual(before.map(describe), [
        describe({ type: MuxMsgType.DATA, streamId: 1, data: bytes(1) }),
      ]);
      assert.equal(decoder.bufferedBytes, 0);
    });
    await t.step("a bad maxPayloadBytes option is a RangeError", () => {
      for (const value of [-1, 1.5, 2 ** 32, Number.NaN]) {
        assert.throws(() => new MuxFrameDecoder({ maxPayloadBytes: value }), RangeError);
      }
    });
  },
);

Deno.test({ name: "framing: the decoder holds at most one frame", permissions: "none" }, async (t) => {
  await t.step("byte by byte through a maximal frame", () => {
    const max = 64;
    const stream = concat(encodeData(1, new Uint8Array(max)), encodePing(0, new Uint8Array(max)));
    const decoder = new MuxFrameDecoder({ maxPayloadBytes: max });
    let frames = 0;
    for (let i = 0; i < stream.byteLength; i++) {
      frames += decoder.push(stream.subarray(i, i + 1)).length;
      assert.ok(decoder.bufferedBytes <= MUX_HEADER_SIZE + max, `${decoder.bufferedBytes} bytes held`);
    }
    assert.equal(frames, 2);
    assert.equal(decoder.bufferedBytes, 0);
  });
  await t.step("an invalid frame's payload is stepped over, never buffered", () => {
    const payload = new Uint8Array(1000).fill(0xee);
    const stream = concat(
      encodeRawFrame({ type: MuxMsgType.DATA, streamId: 0 }, payload),
      encodeData(1, bytes(7)),
    );
    const decoder = new MuxFrameDecoder({ maxPayloadBytes: 1000 });
    const items: MuxDecoded[] = [];
    for (let at = 0; at < stream.byteLength; at += 10) {
      items.push(...decoder.push(stream.subarray(at, at + 10)));
      if (at >= MUX_HEADER_SIZE && at < MUX_HEADER_SIZE + 1000 - 10) assert.equal(decoder.bufferedBytes, 0);
    }
    assert.equal(items.length, 2);
    assertInvalid(items[0], 0, /stream id 0 is reserved/);
    assert.deepEqual(describe(items[1]!), describe({ type: MuxMsgType.DATA, streamId: 1, data: bytes(7) }));
  });
  await t.step("an empty push changes nothing", () => {
    const decoder = new MuxFrameDecoder();
    assert.deepEqual(decoder.push(bytes()), []);
    decoder.push(bytes(2, 0));
    assert.deepEqual(decoder.push(bytes()), []);
    assert.equal(decoder.bufferedBytes, 2);
  });
});

// ---------------------------------------------------------------------------------------------------------------
// Malformed frames: each is a stream-scoped invalid item, and decoding goes on after it

interface MalformedCase {
  name: string;
  frame: Uint8Array;
  streamId: number;
  error: RegExp;
}

const GOOD_HOST = text("example.com");
const MALFORMED: readonly MalformedCase[] = [
  { name: "unknown msg_type 0", frame: rawHeader(0, 5, 0), streamId: 5, error: /unknown msg_type 0/ },
  {
    name: "unknown msg_type 7, with a payload",
    frame: encodeRawFrame({ type: 7, streamId: 5 }, bytes(1, 2, 3)),
    streamId: 5,
    error: /unknown msg_type 7/,
  },
  { name: "unknown msg_type 255", frame: rawHeader(255, 0, 0), streamId: 0, error: /unknown msg_type 255/ },
  {
    name: "OPEN on stream 0",
    frame: encodeRawFrame({ type: MuxMsgType.OPEN, streamId: 0 }, openPayload({ host: GOOD_HOST, port: 80 })),
    streamId: 0,
    error: /Invalid OPEN frame: stream id 0 is reserved/,
  },
  {
    name: "OPEN payload shorter than its fixed fields",
    frame: encodeRawFrame({ type: MuxMsgType.OPEN, streamId: 1 }, bytes(0, 1, 0x61, 0, 80)),
    streamId: 1,
    error: /Invalid OPEN frame: payload length 5 is not in 6-5126/,
  },
  {
    name: "OPEN payload longer than any valid one",
    frame: encodeRawFrame(
      { type: MuxMsgType.OPEN, streamId: 1 },
      new Uint8Array(MUX_MAX_OPEN_PAYLOAD_BYTES + 1),
    ),
    streamId: 1,
    error: /payload length 5127 is not in 6-5126/,
  },
  {
    name: "OPEN with an empty host",
    frame: encodeRawFrame({ type: MuxMsgType.OPEN, streamId: 1 }, openPayload({ host: bytes(), port: 80 })),
    streamId: 1,
    error: /host is empty/,
  },
  {
    name: "OPEN with host_len over the limit",
    frame: encodeRawFrame(
      { type: MuxMsgType.OPEN, streamId: 1 },
      openPayload({ host: new Uint8Array(MUX_MAX_OPEN_HOST_BYTES + 1).fill(0x61), port: 80 }),
    ),
    streamId: 1,
    error: /host_len 1025 is over the 1024-byte limit/,
  },
  {
    name: "OPEN with host_len overrunning the payload",
    frame: encodeRawFrame(
      { type: MuxMsgType.OPEN, streamId: 1 },
      openPayload({ hostLength: 12, host: GOOD_HOST, port: 80 }),
    ),
    streamId: 1,
    error: /host_len 12 overruns the 17-byte payload/,
  },
  {
    name: "OPEN with a host that is not UTF-8",
    frame: encodeRawFrame(
      { type: MuxMsgType.OPEN, streamId: 1 },
      openPayload({ host: bytes(0x61, 0xff), port: 80 }),
    ),
    streamId: 1,
    error: /host is not valid UTF-8/,
  },
  {
    name: "OPEN with an overlong UTF-8 encoding in the host",
    frame: encodeRawFrame(
      { type: MuxMsgType.OPEN, streamId: 1 },
      openPayload({ host: bytes(0xc0, 0xae), port: 80 }),
    ),
    streamId: 1,
    error: /host is not valid UTF-8/,
  },
  {
    name: "OPEN with an encoded surrogate in the host",
    frame: encodeRawFrame(
      { type: MuxMsgType.OPEN, streamId: 1 },
      openPayload({ host: bytes(0xed, 0xa0, 0x80), port: 80 }),
    ),
    streamId: 1,
    error: /host is not valid UTF-8/,
  },
  {
    name: "OPEN to port 0",
    frame: encodeRawFrame({ type: MuxMsgType.OPEN, streamId: 2 }, openPayload({ host: GOOD_HOST, port: 0 })),
    streamId: 2,
    error: /port 0 is not a destination/,
  },
  {
    name: "OPEN with metadata over 4 KiB",
    frame: encodeRawFrame(
      { type: MuxMsgType.OPEN, streamId: 2 },
      openPayload({
        host: GOOD_HOST,
        port: 80,
        metadata: new Uint8Array(MUX_MAX_OPEN_METADATA_BYTES + 1).fill(0x20),
      }),
    ),
    streamId: 2,
    error: /metadata_len 4097 is over the 4096-byte limit/,
  },
  {
    name: "OPEN with metadata shorter than metadata_len",
    frame: encodeRawFrame(
      { type: MuxMsgType.OPEN, streamId: 2 },
      openPayload({ host: GOOD_HOST, port: 80, metadataLength: 3, metadata: text("{}") }),
    ),
    streamId: 2,
    error: /length mismatch: metadata_len is 3 but 2 bytes follow/,
  },
  {
    name: "OPEN with a trailing byte after the metadata",
    frame: encodeRawFrame(
      { type: MuxMsgType.OPEN, streamId: 2 },
      openPayload({ host: GOOD_HOST, port: 80, metadataLength: 0, metadata: bytes(0) }),
    ),
    streamId: 2,
    error: /length mismatch: metadata_len is 0 but 1 bytes follow/,
  },
  {
    name: "OPEN with metadata that is not UTF-8",
    frame: encodeRawFrame(
      { type: MuxMsgType.OPEN, streamId: 2 },
      openPayload({ host: GOOD_HOST, port: 80, metadata: bytes(0x7b, 0x80, 0x7d) }),
    ),
    streamId: 2,
    error: /metadata is not valid UTF-8/,
  },
  {
    name: "DATA on stream 0",
    frame: encodeRawFrame({ type: MuxMsgType.DATA, streamId: 0 }, text("hi")),
    streamId: 0,
    error: /Invalid DATA frame: stream id 0 is reserved/,
  },
  {
    name: "CLOSE on stream 0",
    frame: encodeRawFrame({ type: MuxMsgType.CLOSE, streamId: 0 }, bytes(MuxCloseFlag.FIN)),
    streamId: 0,
    error: /Invalid CLOSE frame: stream id 0 is reserved/,
  },
  {
    name: "CLOSE with no flags byte",
    frame: rawHeader(MuxMsgType.CLOSE, 3, 0),
    streamId: 3,
    error: /CLOSE payload: expected 1 byte, got 0/,
  },
  {
    name: "CLOSE with two payload bytes",
    frame: encodeRawFrame({ type: MuxMsgType.CLOSE, streamId: 3 }, bytes(1, 0)),
    streamId: 3,
    error: /CLOSE payload: expected 1 byte, got 2/,
  },
  {
    name: "CLOSE with flags 0",
    frame: encodeRawFrame({ type: MuxMsgType.CLOSE, streamId: 3 }, bytes(0)),
    streamId: 3,
    error: /flags 0x00 must be FIN \(0x01\), RST \(0x02\) or both/,
  },
  {
    name: "CLOSE with an unknown flag bit",
    frame: encodeRawFrame({ type: MuxMsgType.CLOSE, streamId: 3 }, bytes(0x04)),
    streamId: 3,
    error: /flags 0x04/,
  },
  {
    name: "CLOSE with FIN and an unknown flag bit",
    frame: encodeRawFrame({ type: MuxMsgType.CLOSE, streamId: 3 }, bytes(0x81)),
    streamId: 3,
    error: /flags 0x81/,
  },
  {
    name: "ERROR shorter than code and message_len",
    frame: encodeRawFrame({ type: MuxMsgType.ERROR, streamId: 4 }, bytes(0, 1, 0)),
    streamId: 4,
    error: /ERROR payload: length 3 is not in 4-65539/,
  },
  {
    name: "ERROR longer than any message_len allows",
    frame: encodeRawFrame({ type: MuxMsgType.ERROR, streamId: 4 }, new Uint8Array(65540)),
    streamId: 4,
    error: /ERROR payload: length 65540 is not in 4-65539/,
  },
  {
    name: "ERROR with more bytes than message_len",
    frame: encodeRawFrame({ type: MuxMsgType.ERROR, streamId: 4 }, bytes(0, 1, 0, 1, 0x61, 0x62)),
    streamId: 4,
    error: /length mismatch: message_len is 1 but 2 bytes follow/,
  },
  {
    name: "ERROR with a message that is not UTF-8",
    frame: encodeRawFrame({ type: MuxMsgType.ERROR, streamId: 4 }, bytes(0, 1, 0, 1, 0xfe)),
    streamId: 4,
    error: /message is not valid UTF-8/,
  },
];

Deno.test({ name: "malformed frames are stream errors, in order", permissions: "none" }, async (t) => {
  const after = encodeData(9, text("next"));
  const afterDescribed = describe({ type: MuxMsgType.DATA, streamId: 9, data: text("next") });
  for (const c of MALFORMED) {
    await t.step(c.name, () => {
      const items = new MuxFrameDecoder({ maxPayloadBytes: 1 << 17 }).push(concat(c.frame, after));
      assert.equal(items.length, 2, "the invalid frame, then the next frame");
      assertInvalid(items[0], c.streamId, c.error);
      assert.deepEqual(describe(items[1]!), afterDescribed);
      // The same result when the bytes arrive one at a time.
      const decoder = new MuxFrameDecoder({ maxPayloadBytes: 1 << 17 });
      const trickled: MuxDecoded[] = [];
      for (let i = 0; i < c.frame.byteLength; i++) trickled.push(...decoder.push(c.frame.subarray(i, i + 1)));
      assert.equal(trickled.length, 1);
      assertInvalid(trickled[0], c.streamId, c.error);
      decoder.finish();
    });
  }
});

Deno.test({ name: "edge frames that are valid", permissions: "none" }, async (t) => {
  const cases: [string, Uint8Array, MuxFrame][] = [
    [
      "OPEN with a host of exactly 1024 bytes and metadata of exactly 4 KiB",
      encodeOpen(1, { host: "a".repeat(1024), port: 1, metadata: " ".repeat(4096) }),
      {
        type: MuxMsgType.OPEN,
        streamId: 1,
        host: "a".repeat(1024),
        port: 1,
        metadata: text(" ".repeat(4096)),
      },
    ],
    [
      "OPEN with a non-ASCII host",
      encodeOpen(2, { host: "bücher.example", port: 8080 }),
      { type: MuxMsgType.OPEN, streamId: 2, host: "bücher.example", port: 8080, metadata: bytes() },
    ],
    [
      "CLOSE with FIN and RST",
      encodeRawFrame({ type: MuxMsgType.CLOSE, streamId: 3 }, bytes(3)),
      { type: MuxMsgType.CLOSE, streamId: 3, flags: 3 },
    ],
    [
      "ERROR on stream 0 (connection level)",
      encodeError(0, { code: MuxErrorCode.PROTOCOL_ERROR, message: "bye" }),
      { type: MuxMsgType.ERROR, streamId: 0, code: 3, message: "bye" },
    ],
    [
      "PING on a stream id other than 0 (echoed by the PONG)",
      encodePing(7, bytes(9)),
      { type: MuxMsgType.PING, streamId: 7, payload: bytes(9) },
    ],
    [
      "DATA on the largest stream id",
      encodeData(0xffff_ffff, bytes(1)),
      { type: MuxMsgType.DATA, streamId: 0xffff_ffff, data: bytes(1) },
    ],
  ];
  for (const [name, frame, expected] of cases) {
    await t.step(name, () => assert.deepEqual(describe(decodeValid(frame)), describe(expected)));
  }
});

// ---------------------------------------------------------------------------------------------------------------
// Encoders

Deno.test({ name: "encoders: golden bytes beyond the vectors", permissions: "none" }, async (t) => {
  await t.step("header fields are big-endian", () => {
    assert.deepEqual(
      encodeData(0x0102_0304, bytes(0xaa)),
      bytes(2, 1, 2, 3, 4, 0, 0, 0, 1, 0xaa),
    );
  });
  await t.step(
    "CLOSE RST",
    () => assert.deepEqual(encodeClose(258, MuxCloseFlag.RST), bytes(3, 0, 0, 1, 2, 0, 0, 0, 1, 2)),
  );
  await t.step("ERROR counts UTF-8 bytes", () => {
    assert.deepEqual(
      encodeError(1, { code: MuxErrorCode.DIAL_FAILED, message: "é" }).subarray(MUX_HEADER_SIZE),
      bytes(0, 2, 0, 2, 0xc3, 0xa9),
    );
  });
  await t.step("a PONG echoes the PING", () => {
    const ping = decodeValid(encodePing(0, bytes(1, 2, 3)));
    assert.ok(ping.type === MuxMsgType.PING);
    assert.deepEqual(encodePong(ping.streamId, ping.payload), fromBase64("BgAAAAAAAAADAQID"));
  });
  await t.step("PING and PONG default to an empty payload", () => {
    assert.deepEqual(encodePong(0), fromBase64("BgAAAAAAAAAA"));
    assert.deepEqual(encodePing(0), bytes(5, 0, 0, 0, 0, 0, 0, 0, 0));
  });
  await t.step("OPEN metadata may be given as bytes", () => {
    assert.deepEqual(
      encodeOpen(1, { host: "example.com", port: 443, metadata: text('{"k":"v"}') }),
      fromBase64("AQAAAAEAAAAaAAtleGFtcGxlLmNvbQG7AAl7ImsiOiJ2In0="),
    );
  });
});

Deno.test({ name: "encoders: writeDataHeader frames a payload in place", permissions: "none" }, async (t) => {
  await t.step("the relay's read-then-frame path", () => {
    const buffer = new Uint8Array(MUX_HEADER_SIZE + 64).fill(0xcc);
    buffer.set(text("abc"), MUX_HEADER_SIZE); // As if the target socket read 3 bytes into buffer.subarray(9).
    const frame = buffer.subarray(0, MUX_HEADER_SIZE + 3);
    writeDataHeader(frame, 5);
    assert.deepEqual(frame, encodeData(5, text("abc")));
    assert.equal(buffer[MUX_HEADER_SIZE + 3], 0xcc, "nothing past the frame is touched");
  });
  await t.step("on a view with an offset", () => {
    const buffer = new Uint8Array(20);
    const frame = buffer.subarray(4, 4 + MUX_HEADER_SIZE + 2);
    frame.set(bytes(7, 8), MUX_HEADER_SIZE);
    writeDataHeader(frame, 1);
    assert.deepEqual(frame, encodeData(1, bytes(7, 8)));
    assert.deepEqual(buffer.subarray(0, 4), bytes(0, 0, 0, 0));
  });
  await t.step("an empty payload", () => {
    const frame = new Uint8Array(MUX_HEADER_SIZE);
    writeDataHeader(frame, 1);
    assert.deepEqual(frame, encodeData(1, bytes()));
  });
  await t.step("caller mistakes are RangeErrors", () => {
    assert.throws(() => writeDataHeader(new Uint8Array(8), 1), RangeError);
    assert.throws(() => writeDataHeader(new Uint8Array(9), 0), /stream id 0 is reserved/);
    assert.throws(() => writeDataHeader(new Uint8Array(9), 2 ** 32), /not a u32/);
  });
});

Deno.test(
  { name: "encoders: ERROR messages are cut to fit, as valid UTF-8", permissions: "none" },
  async (t) => {
    const decodeMessage = (frame: Uint8Array) =>
      decodeErrorPayload(1, frame.subarray(MUX_HEADER_SIZE)).message;
    await t.step("the default cut is 1024 bytes", () => {
      const message = decodeMessage(encodeError(1, { code: 2, message: "x".repeat(5000) }));
      assert.equal(message, "x".repeat(MUX_DEFAULT_ERROR_MESSAGE_BYTES));
    });
    await t.step("never inside a character", () => {
      for (
        const [char, limit, kept] of [["é", 5, 2], ["€", 5, 1], ["🚀", 7, 1], ["🚀", 8, 2], [
          "é",
          0,
          0,
        ]] as const
      ) {
        const message = decodeMessage(
          encodeError(1, { code: 2, message: char.repeat(10), maxMessageBytes: limit }),
        );
        assert.equal(message, char.repeat(kept), `${char} cut at ${limit}`);
      }
    });
    await t.step("a mixed message keeps whole characters up to the limit", () => {
      const frame = encodeError(1, { code: 2, message: "aé€🚀", maxMessageBytes: 9 });
      assert.equal(decodeMessage(frame), "aé€");
    });
    await t.step("up to 65535 bytes on request", () => {
      const frame = encodeError(1, { code: 2, message: "y".repeat(70000), maxMessageBytes: 0xffff });
      assert.equal(decodeMessage(frame).length, 0xffff);
    });
    await t.step("lone surrogates become U+FFFD", () => {
      assert.equal(decodeMessage(encodeError(1, { code: 2, message: "a\ud800b" })), "a\ufffdb");
    });
  },
);

Deno.test({ name: "encoders: caller mistakes are RangeErrors", permissions: "none" }, async (t) => {
  const cases: [string, () => unknown, RegExp][] = [
    ["OPEN on stream 0", () => encodeOpen(0, { host: "h", port: 1 }), /stream id 0 is reserved/],
    ["OPEN on a non-u32 stream", () => encodeOpen(-1, { host: "h", port: 1 }), /not a u32/],
    ["OPEN with an empty host", () => encodeOpen(1, { host: "", port: 1 }), /host must be 1 to 1024/],
    ["OPEN with a long host", () => encodeOpen(1, { host: "é".repeat(513), port: 1 }), /got 1026/],
    ["OPEN to port 0", () => encodeOpen(1, { host: "h", port: 0 }), /port 0 is not in 1-65535/],
    ["OPEN to port 65536", () => encodeOpen(1, { host: "h", port: 65536 }), /port 65536/],
    ["OPEN to port 1.5", () => encodeOpen(1, { host: "h", port: 1.5 }), /port 1.5/],
    [
      "OPEN with long metadata",
      () => encodeOpen(1, { host: "h", port: 1, metadata: "m".repeat(4097) }),
      /metadata is 4097 bytes/,
    ],
    [
      "OPEN with metadata that is not UTF-8",
      () => encodeOpen(1, { host: "h", port: 1, metadata: bytes(0xff) }),
      /metadata is not valid UTF-8/,
    ],
    ["DATA on stream 0", () => encodeData(0, bytes()), /stream id 0 is reserved/],
    ["DATA on stream 2^32", () => encodeData(2 ** 32, bytes()), /not a u32/],
    ["CLOSE on stream 0", () => encodeClose(0, MuxCloseFlag.FIN), /stream id 0 is reserved/],
    ["CLOSE with flags 0", () => encodeClose(1, 0), /flags 0 must be FIN/],
    ["CLOSE with flags 4", () => encodeClose(1, 4), /flags 4/],
    ["ERROR with code 65536", () => encodeError(1, { code: 65536, message: "" }), /code 65536 is not a u16/],
    [
      "ERROR with maxMessageBytes 65536",
      () => encodeError(1, { code: 1, message: "", maxMessageBytes: 65536 }),
      /maxMessageBytes 65536/,
    ],
    ["PING on stream 1.5", () => encodePing(1.5), /not a u32/],
    ["a raw frame with msg_type 256", () => encodeRawFrame({ type: 256, streamId: 1 }, bytes()), /not a u8/],
  ];
  for (const [name, fn, pattern] of cases) {
    await t.step(name, () => {
      assert.throws(fn, (err: unknown) => {
        assert.ok(err instanceof RangeError, `expected RangeError, got ${err}`);
        assert.match(err.message, pattern);
        return true;
      });
    });
  }
});

Deno.test({ name: "constants are the spec's numbers", permissions: "none" }, () => {
  assert.equal(MUX_V1_SUBPROTOCOL, "aero-tcp-mux-v1");
  assert.equal(MUX_HEADER_SIZE, 9);
  // The spec's six, and the credit extension's WINDOW (this project's, README "Credit extension").
  assert.deepEqual({ ...MuxMsgType }, {
    OPEN: 1,
    DATA: 2,
    CLOSE: 3,
    ERROR: 4,
    PING: 5,
    PONG: 6,
    WINDOW: 0x10,
  });
  assert.deepEqual({ ...MuxErrorCode }, {
    POLICY_DENIED: 1,
    DIAL_FAILED: 2,
    PROTOCOL_ERROR: 3,
    UNKNOWN_STREAM: 4,
    STREAM_LIMIT_EXCEEDED: 5,
    STREAM_BUFFER_OVERFLOW: 6,
  });
  assert.equal(MUX_ERROR_CODE_NAMES[6], "STREAM_BUFFER_OVERFLOW");
  assert.deepEqual({ ...MuxCloseFlag }, { FIN: 1, RST: 2 });
  assert.equal(MUX_CLOSE_FLAGS_MASK, 3);
  assert.equal(MUX_MAX_OPEN_METADATA_BYTES, 4096);
});
