import assert from "node:assert/strict";
import {
  type ClientFrame,
  decodeClientFrame,
  decodeServerFrame,
  encodeClose,
  encodeData,
  encodeError,
  encodeOpen,
  encodeOpenAck,
  ErrorCode,
  FrameType,
  ProtocolError,
} from "../../src/protocol/mod.ts";

const bytes = (...values: number[]) => new Uint8Array(values);

function rejects(input: Uint8Array, scope: "stream" | "session", id: number, pattern: RegExp): void {
  assert.throws(() => decodeClientFrame(input), (err: unknown) => {
    assert.ok(err instanceof ProtocolError, `expected ProtocolError, got ${err}`);
    assert.equal(err.scope, scope);
    assert.equal(err.connectionId, id);
    assert.equal(err.code, ErrorCode.INVALID_FRAME);
    assert.match(err.message, pattern);
    return true;
  });
}

Deno.test({ name: "encoders produce the v1 golden bytes", permissions: "none" }, async (t) => {
  await t.step("OPEN", () => {
    assert.deepEqual(
      encodeOpen(0x01020304, [93, 184, 216, 34], 443),
      bytes(1, 1, 2, 3, 4, 4, 93, 184, 216, 34, 0x01, 0xbb),
    );
  });
  await t.step("OPEN ack", () => assert.deepEqual(encodeOpenAck(7), bytes(1, 0, 0, 0, 7)));
  await t.step(
    "DATA",
    () => assert.deepEqual(encodeData(0xffffffff, bytes(9, 8)), bytes(2, 255, 255, 255, 255, 9, 8)),
  );
  await t.step("CLOSE", () => assert.deepEqual(encodeClose(258), bytes(3, 0, 0, 1, 2)));
  await t.step("ERROR", () => {
    assert.deepEqual(
      encodeError(5, ErrorCode.POLICY_DENIED, "no"),
      bytes(4, 0, 0, 0, 5, 0, 3, 0, 2, 0x6e, 0x6f),
    );
  });
  await t.step("ERROR with a multi-byte message counts UTF-8 bytes", () => {
    const frame = encodeError(1, 9, "é");
    assert.deepEqual(frame.subarray(5), bytes(0, 9, 0, 2, 0xc3, 0xa9));
  });
});

Deno.test({ name: "every frame kind round-trips through the codec", permissions: "none" }, async (t) => {
  await t.step("client frames", () => {
    const cases: [Uint8Array, ClientFrame][] = [
      [encodeOpen(42, [1, 2, 3, 4], 80), {
        type: FrameType.OPEN,
        connectionId: 42,
        ip: [1, 2, 3, 4],
        port: 80,
      }],
      [encodeData(42, bytes(1, 2, 3)), { type: FrameType.DATA, connectionId: 42, data: bytes(1, 2, 3) }],
      [encodeData(42, bytes()), { type: FrameType.DATA, connectionId: 42, data: bytes() }],
      [encodeClose(42), { type: FrameType.CLOSE, connectionId: 42 }],
    ];
    for (const [encoded, expected] of cases) assert.deepEqual(decodeClientFrame(encoded), expected);
  });
  await t.step("server frames", () => {
    assert.deepEqual(decodeServerFrame(encodeOpenAck(3)), {
      type: FrameType.OPEN,
      connectionId: 3,
      ack: true,
    });
    assert.deepEqual(decodeServerFrame(encodeData(3, bytes(7))), {
      type: FrameType.DATA,
      connectionId: 3,
      data: bytes(7),
    });
    assert.deepEqual(decodeServerFrame(encodeClose(3)), { type: FrameType.CLOSE, connectionId: 3 });
    assert.deepEqual(decodeServerFrame(encodeError(0, 5, "bad ✓")), {
      type: FrameType.ERROR,
      connectionId: 0,
      code: 5,
      message: "bad ✓",
    });
  });
  await t.step("DATA payload is a view, not a copy", () => {
    const encoded = encodeData(1, bytes(1, 2));
    const frame = decodeClientFrame(encoded);
    assert.equal(frame.type, FrameType.DATA);
    if (frame.type === FrameType.DATA) assert.equal(frame.data.buffer, encoded.buffer);
  });
});

Deno.test(
  { name: "decodeClientFrame() rejects session-level violations", permissions: "none" },
  async (t) => {
    for (let length = 0; length < 5; length++) {
      await t.step(`a ${length}-byte message`, () => {
        rejects(new Uint8Array(length).fill(2), "session", 0, /expected at least 5 bytes/);
      });
    }
    for (const type of [0, 5, 6, 255]) {
      await t.step(
        `unknown type ${type}`,
        () => rejects(bytes(type, 0, 0, 0, 1), "session", 0, /unknown frame type/),
      );
    }
  },
);

Deno.test(
  { name: "decodeClientFrame() rejects per-stream problems on their id", permissions: "none" },
  async (t) => {
    const open = encodeOpen(9, [8, 8, 8, 8], 53);
    for (let cut = 6; cut < open.byteLength; cut++) {
      await t.step(
        `OPEN truncated to ${cut} bytes`,
        () => rejects(open.slice(0, cut), "stream", 9, /expected 7 payload bytes/),
      );
    }
    await t.step("OPEN with a trailing byte", () => {
      rejects(new Uint8Array([...open, 0]), "stream", 9, /expected 7 payload bytes, got 8/);
    });
    await t.step("OPEN with ip_version 6", () => {
      const frame = open.slice();
      frame[5] = 6;
      rejects(frame, "stream", 9, /ip_version 6 is not supported/);
    });
    await t.step("OPEN to port 0", () => rejects(encodeOpen(9, [8, 8, 8, 8], 0), "stream", 9, /port 0/));
    await t.step(
      "OPEN on id 0",
      () => rejects(encodeOpen(0, [8, 8, 8, 8], 53), "stream", 0, /id 0 is reserved/),
    );
    await t.step(
      "an OPEN ack sent by a client",
      () => rejects(encodeOpenAck(9), "stream", 9, /acknowledgement/),
    );
    await t.step("DATA on id 0", () => rejects(encodeData(0, bytes(1)), "stream", 0, /id 0 is reserved/));
    await t.step("CLOSE on id 0", () => rejects(encodeClose(0), "stream", 0, /id 0 is reserved/));
    await t.step(
      "CLOSE with a payload",
      () => rejects(bytes(3, 0, 0, 0, 9, 1), "stream", 9, /empty payload/),
    );
    await t.step(
      "an ERROR sent by a client",
      () => rejects(encodeError(9, 1, "x"), "stream", 9, /must not send ERROR/),
    );
  },
);

Deno.test(
  { name: "decodeServerFrame() rejects malformed ERROR and OPEN frames", permissions: "none" },
  async (t) => {
    const error = encodeError(4, 3, "abc");
    for (let cut = 5; cut < error.byteLength; cut++) {
      await t.step(`ERROR truncated to ${cut} bytes`, () => {
        assert.throws(() => decodeServerFrame(error.slice(0, cut)), ProtocolError);
      });
    }
    await t.step("ERROR with a trailing byte", () => {
      assert.throws(() => decodeServerFrame(new Uint8Array([...error, 0])), /msg_len is 3 but 4/);
    });
    await t.step("ERROR with invalid UTF-8", () => {
      assert.throws(() => decodeServerFrame(bytes(4, 0, 0, 0, 1, 0, 5, 0, 1, 0xff)), /not valid UTF-8/);
    });
    await t.step("OPEN ack with a payload", () => {
      assert.throws(() => decodeServerFrame(encodeOpen(1, [1, 1, 1, 1], 1)), /expected an empty payload/);
    });
  },
);

Deno.test({ name: "encoders refuse values the wire cannot carry", permissions: "none" }, () => {
  assert.throws(() => encodeOpen(1, [1, 2, 3], 80), RangeError);
  assert.throws(() => encodeOpen(1, [1, 2, 3, 256], 80), RangeError);
  assert.throws(() => encodeOpen(1, [1, 2, 3, 4], 65536), RangeError);
  assert.throws(() => encodeData(-1, bytes()), RangeError);
  assert.throws(() => encodeData(2 ** 32, bytes()), RangeError);
  assert.throws(() => encodeError(1, 70000, ""), RangeError);
});

Deno.test(
  { name: "encodeError() cuts an over-long message at a character boundary", permissions: "none" },
  () => {
    const frame = encodeError(1, 9, "é".repeat(40000));
    const decoded = decodeServerFrame(frame);
    assert.equal(decoded.type, FrameType.ERROR);
    if (decoded.type === FrameType.ERROR) {
      assert.equal(decoded.message, "é".repeat(32767));
    }
  },
);
