/**
 * The frame receiver and encoder alone, without sockets: every rule, every split of the input, and the word-wise
 * unmasking against a byte loop.
 */
import assert from "node:assert/strict";
import {
  CloseCode,
  closePayload,
  encodeFrame,
  type FrameEvents,
  FrameReceiver,
  headerLength,
  isValidCloseCode,
  Opcode,
  unmask,
  WebSocketError,
} from "../../src/transport/frames.ts";
import { findHeadEnd, HttpError, parseRequestHead } from "../../src/transport/http.ts";
import { concat } from "../_util.ts";
import { encodeFrame as encodeClientFrame } from "./_frames.ts";

type Event =
  | { kind: "message"; data: Uint8Array; binary: boolean }
  | { kind: "ping" | "pong"; data: Uint8Array }
  | { kind: "close"; code: number | undefined; reason: string };

function recorder(): { events: Event[]; handlers: FrameEvents } {
  const events: Event[] = [];
  return {
    events,
    handlers: {
      message: (data, binary) => events.push({ kind: "message", data: new Uint8Array(data), binary }),
      ping: (data) => events.push({ kind: "ping", data: data.slice() }),
      pong: (data) => events.push({ kind: "pong", data: data.slice() }),
      close: (code, reason) => events.push({ kind: "close", code, reason }),
    },
  };
}

/** A client frame (the test's own encoder), masked with a fixed key unless `mask` is `null`. */
function clientFrame(
  opcode: number,
  payload: Uint8Array,
  options: { fin?: boolean; rsv?: number; mask?: Uint8Array | null; lengthForm?: 7 | 16 | 64 } = {},
): Uint8Array {
  const { mask = new Uint8Array([0x37, 0xfa, 0x21, 0x3d]), ...rest } = options;
  return encodeClientFrame({ opcode, payload, mask: mask ?? false, ...rest });
}

function violation(bytes: Uint8Array, maxMessageBytes = 1 << 20): WebSocketError {
  const { handlers } = recorder();
  const receiver = new FrameReceiver(handlers, { maxMessageBytes });
  try {
    receiver.push(bytes);
  } catch (err: unknown) {
    assert.ok(err instanceof WebSocketError, String(err));
    return err;
  }
  assert.fail("expected a WebSocketError");
}

const text = (s: string) => new TextEncoder().encode(s);

Deno.test("unmask: word-wise XOR equals a byte loop at every offset, alignment and length", () => {
  const mask = new Uint8Array([0x12, 0x34, 0x56, 0x78]);
  const source = new Uint8Array(300).map((_, i) => (i * 31 + 7) & 0xff);
  for (let start = 0; start < 8; start++) {
    for (const length of [0, 1, 3, 4, 5, 17, 64, 255]) {
      for (let offset = 0; offset < 4; offset++) {
        const buffer = source.slice();
        const view = buffer.subarray(start, start + length);
        unmask(view, mask, offset);
        for (let i = 0; i < length; i++) {
          assert.equal(
            view[i],
            source[start + i]! ^ mask[(offset + i) & 3]!,
            `start ${start} length ${length}`,
          );
        }
        // Bytes outside the view are untouched.
        assert.deepEqual(buffer.subarray(0, start), source.subarray(0, start));
        assert.deepEqual(buffer.subarray(start + length), source.subarray(start + length));
      }
    }
  }
});

Deno.test("receiver: a stream of frames gives the same events however it is split", () => {
  const binary = new Uint8Array(70_000).map((_, i) => i & 0xff);
  const stream = concat([
    clientFrame(Opcode.BINARY, new Uint8Array([1, 2, 3])),
    clientFrame(Opcode.PING, text("hi")),
    clientFrame(Opcode.BINARY, binary.subarray(0, 300), { fin: false }),
    clientFrame(Opcode.PING, new Uint8Array(0)),
    clientFrame(Opcode.CONTINUATION, binary.subarray(300), { fin: true }),
    clientFrame(Opcode.TEXT, text("h\u00e9"), { fin: false }),
    clientFrame(Opcode.CONTINUATION, text("llo \u{1F600}")),
    clientFrame(Opcode.BINARY, new Uint8Array(0)),
    clientFrame(Opcode.PONG, text("p")),
    clientFrame(Opcode.BINARY, new Uint8Array(200), { lengthForm: 64 }),
    clientFrame(Opcode.CLOSE, closePayload(1000, "bye")),
  ]);
  const whole = recorder();
  new FrameReceiver(whole.handlers, { maxMessageBytes: 1 << 20 }).push(stream);
  assert.deepEqual(whole.events.map((e) => e.kind), [
    "message",
    "ping",
    "ping",
    "message",
    "message",
    "message",
    "pong",
    "message",
    "close",
  ]);
  assert.deepEqual((whole.events[3] as { data: Uint8Array }).data, binary);
  assert.equal(
    new TextDecoder().decode((whole.events[4] as { data: Uint8Array }).data),
    "h\u00e9llo \u{1F600}",
  );
  assert.deepEqual(whole.events.at(-1), { kind: "close", code: 1000, reason: "bye" });

  // Every two-way split, then a byte at a time, then seeded random splits.
  const splits: number[][] = [];
  for (let cut = 1; cut < 200; cut++) splits.push([cut]);
  for (let cut = stream.byteLength - 200; cut < stream.byteLength; cut++) splits.push([cut]);
  let seed = 12345;
  const random = () => (seed = (seed * 1103515245 + 12345) & 0x7fffffff) / 0x7fffffff;
  for (let run = 0; run < 50; run++) {
    const cuts = Array.from({ length: 40 }, () => Math.floor(random() * stream.byteLength)).sort((a, b) =>
      a - b
    );
    splits.push(cuts);
  }
  for (const cuts of splits) {
    const split = recorder();
    const receiver = new FrameReceiver(split.handlers, { maxMessageBytes: 1 << 20 });
    let at = 0;
    for (const cut of [...cuts, stream.byteLength]) {
      receiver.push(stream.subarray(at, cut));
      at = cut;
    }
    assert.deepEqual(split.events, whole.events, `cuts ${cuts.join(",")}`);
  }
  const bytewise = recorder();
  const receiver = new FrameReceiver(bytewise.handlers, { maxMessageBytes: 1 << 20 });
  for (let i = 0; i < stream.byteLength; i++) receiver.push(stream.subarray(i, i + 1));
  assert.deepEqual(bytewise.events, whole.events);
});

Deno.test("receiver: each rule maps to its close code", async (t) => {
  const cases: [string, Uint8Array, number, RegExp][] = [
    ["unmasked frame", clientFrame(Opcode.BINARY, new Uint8Array(1), { mask: null }), 1002, /masked/],
    ["RSV1", clientFrame(Opcode.BINARY, new Uint8Array(1), { rsv: 4 }), 1002, /reserved bits/],
    ["RSV3", clientFrame(Opcode.PING, new Uint8Array(0), { rsv: 1 }), 1002, /reserved bits/],
    ["opcode 3", clientFrame(3, new Uint8Array(0)), 1002, /reserved opcode 3/],
    ["opcode 0xB", clientFrame(0xb, new Uint8Array(0)), 1002, /reserved opcode 11/],
    ["ping of 126 bytes", clientFrame(Opcode.PING, new Uint8Array(126)), 1002, /control frame payload/],
    [
      "fragmented ping",
      clientFrame(Opcode.PING, new Uint8Array(0), { fin: false }),
      1002,
      /fragmented control/,
    ],
    ["stray continuation", clientFrame(Opcode.CONTINUATION, new Uint8Array(1)), 1002, /continuation/],
    [
      "new message inside a fragmented one",
      concat([
        clientFrame(Opcode.BINARY, new Uint8Array(1), { fin: false }),
        clientFrame(Opcode.BINARY, new Uint8Array(1)),
      ]),
      1002,
      /before the fragmented one ended/,
    ],
    ["invalid UTF-8", clientFrame(Opcode.TEXT, new Uint8Array([0xc0, 0x80])), 1007, /UTF-8/],
    [
      "UTF-8 truncated at the last fragment",
      concat([
        clientFrame(Opcode.TEXT, text("ok"), { fin: false }),
        clientFrame(Opcode.CONTINUATION, new Uint8Array([0xe2, 0x82])),
      ]),
      1007,
      /UTF-8/,
    ],
    ["close with 1 byte", clientFrame(Opcode.CLOSE, new Uint8Array([3])), 1002, /1-byte/],
    ["close code 1005", clientFrame(Opcode.CLOSE, closePayload(1005)), 1002, /code 1005/],
    [
      "close reason not UTF-8",
      clientFrame(Opcode.CLOSE, new Uint8Array([3, 232, 0xff])),
      1007,
      /reason/,
    ],
  ];
  for (const [name, bytes, code, pattern] of cases) {
    await t.step(name, () => {
      const err = violation(bytes);
      assert.equal(err.code, code);
      assert.match(err.message, pattern);
    });
  }
  await t.step("64-bit length with the top bit set, seen from the third byte", () => {
    const frame = new Uint8Array([0x82, 0xff, 0x80]);
    assert.equal(violation(frame).code, 1002);
  });
});

Deno.test("receiver: the size limit is enforced at the frame header, before any payload", () => {
  // A header announcing 63 MiB, and nothing else: 1009 at once.
  const header = clientFrame(Opcode.BINARY, new Uint8Array(0), { lengthForm: 64 });
  new DataView(header.buffer).setBigUint64(2, 63n * 1024n * 1024n);
  const err = violation(header.subarray(0, 14), 64 * 1024);
  assert.equal(err.code, CloseCode.MESSAGE_TOO_BIG);
  // Fragments: the one that passes the limit is refused at its header.
  const { handlers } = recorder();
  const receiver = new FrameReceiver(handlers, { maxMessageBytes: 1000 });
  receiver.push(clientFrame(Opcode.BINARY, new Uint8Array(600), { fin: false }));
  // What is held is the fragments' buffer: at least their bytes, never more than the limit.
  assert.ok(receiver.heldBytes >= 600 && receiver.heldBytes <= 1000, String(receiver.heldBytes));
  const second = clientFrame(Opcode.CONTINUATION, new Uint8Array(401));
  assert.throws(
    () => receiver.push(second.subarray(0, 8)),
    (e: unknown) => e instanceof WebSocketError && e.code === 1009,
  );
  // Exactly the limit is fine.
  const ok = recorder();
  const exact = new FrameReceiver(ok.handlers, { maxMessageBytes: 1000 });
  exact.push(clientFrame(Opcode.BINARY, new Uint8Array(1000)));
  assert.equal(ok.events.length, 1);
});

Deno.test("encoder: header lengths at the length-form boundaries, close payloads cut on a character", () => {
  for (const [length, header] of [[0, 2], [125, 2], [126, 4], [65535, 4], [65536, 10]] as const) {
    assert.equal(headerLength(length), header);
    const frame = encodeFrame(Opcode.BINARY, new Uint8Array(length));
    assert.equal(frame.byteLength, header + length);
    assert.equal(frame[0], 0x82);
  }
  const long = closePayload(1001, "\u00e9".repeat(100));
  assert.ok(long.byteLength <= 125);
  new TextDecoder("utf-8", { fatal: true }).decode(long.subarray(2));
  assert.equal(closePayload(undefined).byteLength, 0);
  for (const code of [1000, 1003, 1007, 1014, 3000, 4999]) assert.ok(isValidCloseCode(code), String(code));
  for (const code of [999, 1004, 1005, 1006, 1015, 2999, 5000]) {
    assert.ok(!isValidCloseCode(code), String(code));
  }
});

Deno.test("request heads: parsed strictly, with the right status for each fault", () => {
  const head = (s: string) => new TextEncoder().encode(s);
  const ok = parseRequestHead(
    head("GET /tcp-mux?token=a HTTP/1.1\r\nHost: x\r\nUpgrade:  websocket \r\n\r\n"),
    4096,
  );
  assert.equal(ok.method, "GET");
  assert.equal(ok.target, "/tcp-mux?token=a");
  assert.equal(ok.headers.get("upgrade"), "websocket");
  assert.equal(ok.version, "HTTP/1.1");
  const status = (s: string, max = 4096) => {
    try {
      parseRequestHead(head(s), max);
    } catch (err: unknown) {
      assert.ok(err instanceof HttpError);
      return err.status;
    }
    return 0;
  };
  assert.equal(status("GET / HTTP/2.0\r\n\r\n"), 505);
  assert.equal(status("GET  / HTTP/1.1\r\n\r\n"), 400);
  assert.equal(status("GET http://x/ HTTP/1.1\r\n\r\n"), 400);
  assert.equal(status("GET /aaaaaaaaaa HTTP/1.1\r\n\r\n", 5), 414);
  assert.equal(status("GET / HTTP/1.1\r\nBad Name: x\r\n\r\n"), 400);
  assert.equal(status("GET / HTTP/1.1\r\nName : x\r\n\r\n"), 400);
  assert.equal(status("GET / HTTP/1.1\r\n folded\r\n\r\n"), 400);
  assert.equal(status("GET / HTTP/1.1\r\nX: a\x00b\r\n\r\n"), 400);
  assert.equal(findHeadEnd(head("GET / HTTP/1.1\r\n\r\nrest")), 18);
  assert.equal(findHeadEnd(head("GET / HTTP/1.1\r\n\r")), -1);
});

Deno.test("receiver: a flood of empty fragments holds nothing", () => {
  const { events, handlers } = recorder();
  const receiver = new FrameReceiver(handlers, { maxMessageBytes: 1 << 20 });
  receiver.push(clientFrame(Opcode.BINARY, new Uint8Array([1]), { fin: false }));
  const empty = clientFrame(Opcode.CONTINUATION, new Uint8Array(0), { fin: false });
  const batch = concat(Array.from({ length: 10_000 }, () => empty));
  for (let i = 0; i < 20; i++) receiver.push(batch);
  // 200,000 fragments later the message still holds its first buffer, and nothing else.
  assert.ok(receiver.heldBytes <= 4096, `held ${receiver.heldBytes}`);
  receiver.push(clientFrame(Opcode.CONTINUATION, new Uint8Array([2])));
  assert.equal(events.length, 1);
  assert.deepEqual((events[0] as { data: Uint8Array }).data, new Uint8Array([1, 2]));
});
