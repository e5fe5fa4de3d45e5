/**
 * Property tests of the codec (issue 7): every frame round-trips, and the decoders are total: for any byte
 * string they return a frame or throw `ProtocolError`, nothing else.
 */
import assert from "node:assert/strict";
import fc from "fast-check";
import {
  type ClientFrame,
  decodeClientFrame,
  decodeServerFrame,
  encodeClose,
  encodeData,
  encodeError,
  encodeOpen,
  encodeOpenAck,
  FrameType,
  HEADER_SIZE,
  MAX_ERROR_MESSAGE_BYTES,
  ProtocolError,
  type ServerFrame,
} from "../../src/protocol/mod.ts";

/** Runs per property: enough to hit every branch many times, a second or two in all. */
const RUNS = 5_000;

const streamId = fc.integer({ min: 1, max: 0xffff_ffff });
const anyId = fc.integer({ min: 0, max: 0xffff_ffff });
const ipBytes = fc.tuple(
  fc.integer({ min: 0, max: 255 }),
  fc.integer({ min: 0, max: 255 }),
  fc.integer({ min: 0, max: 255 }),
  fc.integer({ min: 0, max: 255 }),
);

const clientFrame: fc.Arbitrary<ClientFrame> = fc.oneof(
  fc.record({
    type: fc.constant(FrameType.OPEN),
    connectionId: streamId,
    ip: ipBytes,
    port: fc.integer({ min: 1, max: 0xffff }),
  }),
  fc.record({
    type: fc.constant(FrameType.DATA),
    connectionId: streamId,
    data: fc.uint8Array({ maxLength: 512 }),
  }),
  fc.record({ type: fc.constant(FrameType.CLOSE), connectionId: streamId }),
);

const serverFrame: fc.Arbitrary<ServerFrame> = fc.oneof(
  fc.record({ type: fc.constant(FrameType.OPEN), connectionId: anyId, ack: fc.constant(true as const) }),
  fc.record({
    type: fc.constant(FrameType.DATA),
    connectionId: anyId,
    data: fc.uint8Array({ maxLength: 512 }),
  }),
  fc.record({ type: fc.constant(FrameType.CLOSE), connectionId: anyId }),
  fc.record({
    type: fc.constant(FrameType.ERROR),
    connectionId: anyId,
    code: fc.integer({ min: 0, max: 0xffff }),
    message: fc.string({ unit: "grapheme", maxLength: 200 }),
  }),
);

function encodeClient(frame: ClientFrame): Uint8Array {
  switch (frame.type) {
    case FrameType.OPEN:
      return encodeOpen(frame.connectionId, frame.ip, frame.port);
    case FrameType.DATA:
      return encodeData(frame.connectionId, frame.data);
    case FrameType.CLOSE:
      return encodeClose(frame.connectionId);
  }
}

function encodeServer(frame: ServerFrame): Uint8Array {
  switch (frame.type) {
    case FrameType.OPEN:
      return encodeOpenAck(frame.connectionId);
    case FrameType.DATA:
      return encodeData(frame.connectionId, frame.data);
    case FrameType.CLOSE:
      return encodeClose(frame.connectionId);
    case FrameType.ERROR:
      return encodeError(frame.connectionId, frame.code, frame.message);
  }
}

/** Byte strings worth decoding: pure noise, and noise behind a valid type byte so the payload checks run. */
const wireBytes = fc.oneof(
  fc.uint8Array({ maxLength: 64 }),
  fc.tuple(fc.integer({ min: 0, max: 5 }), fc.uint8Array({ minLength: 4, maxLength: 80 })).map(
    ([type, rest]) => {
      const out = new Uint8Array(1 + rest.byteLength);
      out[0] = type;
      out.set(rest, 1);
      return out;
    },
  ),
  // An ERROR prefix whose msg_len may or may not match, followed by bytes that may or may not be UTF-8.
  fc.tuple(
    anyId,
    fc.integer({ min: 0, max: 0xffff }),
    fc.integer({ min: 0, max: 40 }),
    fc.uint8Array({ maxLength: 40 }),
  )
    .map(([id, code, length, text]) => {
      const out = new Uint8Array(HEADER_SIZE + 4 + text.byteLength);
      const view = new DataView(out.buffer);
      out[0] = FrameType.ERROR;
      view.setUint32(1, id);
      view.setUint16(5, code);
      view.setUint16(7, length);
      out.set(text, 9);
      return out;
    }),
);

/** Calls `decode`; a thrown value other than `ProtocolError` fails the property. */
function decodeOrProtocolError<T>(decode: (b: Uint8Array) => T, bytes: Uint8Array): T | ProtocolError {
  try {
    return decode(bytes);
  } catch (err: unknown) {
    if (err instanceof ProtocolError) return err;
    throw new Error(`Decoder threw something other than ProtocolError: ${err}`, { cause: err });
  }
}

/** Session-level errors are exactly the frames too short for a header or with an unknown type byte. */
function assertScope(bytes: Uint8Array, err: ProtocolError): void {
  const sessionLevel = bytes.byteLength < HEADER_SIZE || bytes[0]! < FrameType.OPEN ||
    bytes[0]! > FrameType.ERROR;
  assert.equal(err.scope, sessionLevel ? "session" : "stream", err.message);
  if (!sessionLevel) {
    assert.equal(err.connectionId, new DataView(bytes.buffer, bytes.byteOffset).getUint32(1));
  }
}

Deno.test({ name: "property: every client frame survives encode then decode", permissions: "none" }, () => {
  fc.assert(
    fc.property(clientFrame, (frame) => {
      assert.deepEqual(decodeClientFrame(encodeClient(frame)), { ...frame });
    }),
    { numRuns: RUNS },
  );
});

Deno.test({ name: "property: every relay frame survives encode then decode", permissions: "none" }, () => {
  fc.assert(
    fc.property(serverFrame, (frame) => {
      assert.deepEqual(decodeServerFrame(encodeServer(frame)), { ...frame });
    }),
    { numRuns: RUNS },
  );
});

Deno.test(
  { name: "property: an over-long ERROR message decodes to a prefix of itself", permissions: "none" },
  () => {
    fc.assert(
      fc.property(
        fc.string({ unit: "grapheme", minLength: 1, maxLength: 8 }),
        fc.integer({ min: 0, max: 64 }),
        (piece, extra) => {
          // Repeat multi-byte text past the u16 limit so the cut lands at varying places inside characters.
          const message = piece.repeat(Math.ceil((MAX_ERROR_MESSAGE_BYTES + extra) / piece.length) + 1);
          const frame = decodeServerFrame(encodeError(7, 9, message));
          assert.equal(frame.type, FrameType.ERROR);
          if (frame.type !== FrameType.ERROR) return;
          assert.ok(new TextEncoder().encode(frame.message).byteLength <= MAX_ERROR_MESSAGE_BYTES);
          assert.ok(message.startsWith(frame.message), "the cut message is a prefix of the original");
        },
      ),
      { numRuns: 100 },
    );
  },
);

Deno.test(
  {
    name: "property: decodeClientFrame() returns a frame or throws ProtocolError for any bytes",
    permissions: "none",
  },
  () => {
    fc.assert(
      fc.property(wireBytes, (bytes) => {
        const result = decodeOrProtocolError(decodeClientFrame, bytes);
        if (result instanceof ProtocolError) return assertScope(bytes, result);
        // Whatever the decoder accepts is canonical: encoding the frame again gives the same bytes.
        assert.deepEqual(encodeClient(result), bytes);
      }),
      { numRuns: RUNS * 4 },
    );
  },
);

Deno.test(
  {
    name: "property: decodeServerFrame() returns a frame or throws ProtocolError for any bytes",
    permissions: "none",
  },
  () => {
    fc.assert(
      fc.property(wireBytes, (bytes) => {
        const result = decodeOrProtocolError(decodeServerFrame, bytes);
        if (result instanceof ProtocolError) return assertScope(bytes, result);
        assert.deepEqual(encodeServer(result), bytes);
      }),
      { numRuns: RUNS * 4 },
    );
  },
);
