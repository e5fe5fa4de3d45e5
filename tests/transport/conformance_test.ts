/**
 * RFC 6455 conformance of the relay's public port, modelled on the Autobahn TestSuite case list (the section
 * number of the nearest Autobahn group leads each step name). A raw client speaks over real loopback TCP to a
 * relay in this process; every frame the server sends is checked, and every wait is bounded.
 *
 * Violations must end with the server's Close frame carrying the code and then the server closing TCP on its
 * own: the client does not answer the Close (RFC 6455 section 7.1.7, "Fail the WebSocket Connection").
 */
import assert from "node:assert/strict";
import { defaultConfig } from "../../src/config.ts";
import { MUX_SUBPROTOCOL } from "../../src/protocol/mod.ts";
import { concat, describeFrame, report, startEchoServer, startRelay } from "../_util.ts";
import {
  acceptFor,
  bytesOf,
  bytewise,
  encodeFrame,
  expectCloseThenEof,
  expectPong,
  expectSilence,
  fragmentedMessage,
  fragmentsOf,
  frame,
  headerTokens,
  NO_STATUS_CODE,
  Opcode,
  Prng,
  randomSplit,
  RawClient,
  sleep,
  splitAt,
  upgradeRequest,
  type UpgradeRequestOptions,
} from "./_frames.ts";
import {
  assertRelayEchoes,
  assertSessionError,
  connectMux,
  dataBytes,
  missingConfigKeys,
  MUX_TARGET,
  openBytes,
  relayOverrides,
  SeedReader,
} from "./_relay.ts";

const PROTOCOL_ERROR = 1002;
const INVALID_PAYLOAD = 1007;
const POLICY_VIOLATION = 1008;
const MESSAGE_TOO_BIG = 1009;
const KIB = 1024;
const MIB = 1024 * KIB;

const missing = missingConfigKeys();
if (missing.length > 0) {
  report(`config keys not in src/config.ts yet (passed through a cast): ${missing.join(", ")}`);
}

/** Sends `bytes` on a fresh upgraded connection and expects Close `code`, then EOF. */
async function expectViolation(
  port: number,
  bytes: Uint8Array | readonly Uint8Array[],
  code: number | readonly number[],
  options: { gapMs?: number; withinMs?: number } = {},
) {
  await using client = await connectMux(port);
  await client.tryWrite(bytes, { gapMs: options.gapMs ?? 0 });
  return await expectCloseThenEof(client, code, { withinMs: options.withinMs ?? 2000 });
}

/**
 * Runs `run` for every item and fails once, listing every item that failed, so one step reports the whole
 * table instead of stopping at the first failure.
 */
async function eachCase<T>(
  items: readonly T[],
  label: (item: T) => string,
  run: (item: T) => Promise<unknown>,
) {
  const failures: string[] = [];
  for (const item of items) {
    try {
      await run(item);
    } catch (err: unknown) {
      failures.push(`  ${label(item)}: ${err instanceof Error ? err.message.split("\n")[0] : String(err)}`);
    }
  }
  if (failures.length > 0) {
    assert.fail(`${failures.length} of ${items.length} cases failed:\n${failures.join("\n")}`);
  }
}

/** A raw request's response head (the connection is closed afterwards). */
async function respond(port: number, options: UpgradeRequestOptions) {
  const { head, key } = upgradeRequest(port, MUX_TARGET, options);
  const { client, response } = await RawClient.request(port, head);
  await client.close();
  return { response, key };
}

Deno.test("handshake: status codes, accept key, extensions, subprotocol, pipelined frames", async (t) => {
  await using relay = startRelay();
  await using echo = startEchoServer();
  const port = relay.port;

  await t.step("a valid upgrade gets 101 with the SHA-1/base64 accept of key + GUID", async () => {
    const key = "dGhlIHNhbXBsZSBub25jZQ==";
    assert.equal(acceptFor(key), "s3pPLMBiTxaQ9kYGzzhZRbK+xOo="); // RFC 6455 section 1.3
    const { client, response } = await RawClient.upgrade(port, MUX_TARGET, { key });
    await client.close();
    assert.equal(response.headers.get("sec-websocket-accept"), "s3pPLMBiTxaQ9kYGzzhZRbK+xOo=");
  });
  await t.step("a non-GET upgrade gets 405", async () => {
    await eachCase(["POST", "PUT", "HEAD"], (m) => m, async (method) => {
      const { response } = await respond(port, { method });
      assert.equal(response.status, 405, response.statusLine);
    });
  });
  await t.step("a missing or other Upgrade header gets 426", async () => {
    await eachCase([null, "h2c", "websocket2"], (u) => `Upgrade: ${u}`, async (upgrade) => {
      const { response } = await respond(port, { headers: { Upgrade: upgrade } });
      assert.equal(response.status, 426, response.statusLine);
    });
  });
  await t.step(
    "Upgrade and Connection tokens are case-insensitive; Connection may list more tokens",
    async () => {
      for (
        const headers of [{ Upgrade: "WebSocket" }, { Connection: "keep-alive, Upgrade" }, {
          Connection: "UPGRADE",
        }]
      ) {
        const { client } = await RawClient.upgrade(port, MUX_TARGET, { headers });
        await client.close();
      }
    },
  );
  await t.step("a missing Sec-WebSocket-Key gets 400", async () => {
    const { response } = await respond(port, { headers: { "Sec-WebSocket-Key": null } });
    assert.equal(response.status, 400, response.statusLine);
  });
  await t.step("a malformed Sec-WebSocket-Key (not base64 of 16 bytes) gets 400", async () => {
    const bad = [
      "",
      "not base64 at all!",
      "AAAAAAAAAAAAAAAAAAAA", // 15 bytes
      btoa("0123456789abcdefg"), // 17 bytes
      "dGhlIHNhbXBsZSBub25jZQ", // 16 bytes without the padding
      "dGhlIHNhbXBsZSBub25jZQ=*",
    ];
    await eachCase(bad, (key) => `key ${JSON.stringify(key)}`, async (key) => {
      const { response } = await respond(port, { key });
      assert.equal(response.status, 400, response.statusLine);
    });
  });
  await t.step("Sec-WebSocket-Version other than 13 gets 426 with Sec-WebSocket-Version: 13", async () => {
    await eachCase(["8", "12", "14", "abc"], (v) => `version ${v}`, async (version) => {
      const { response } = await respond(port, { headers: { "Sec-WebSocket-Version": version } });
      assert.equal(response.status, 426, response.statusLine);
      assert.deepEqual(
        headerTokens(response, "sec-websocket-version"),
        ["13"],
        "Sec-WebSocket-Version header",
      );
    });
  });
  await t.step("a missing Sec-WebSocket-Version gets 400 or 426", async () => {
    const { response } = await respond(port, { headers: { "Sec-WebSocket-Version": null } });
    assert.ok([400, 426].includes(response.status), response.statusLine);
  });
  await t.step("a Connection header without the upgrade token (or none) gets 400", async () => {
    await eachCase(
      ["keep-alive", "close", "upgraded", null],
      (c) => `Connection: ${c}`,
      async (connection) => {
        const { response } = await respond(port, { headers: { Connection: connection } });
        assert.equal(response.status, 400, response.statusLine);
      },
    );
  });
  await t.step("12.x permessage-deflate offered is never accepted", async () => {
    const { client, response } = await RawClient.upgrade(port, MUX_TARGET, {
      headers: {
        "Sec-WebSocket-Extensions": "permessage-deflate; client_max_window_bits, x-webkit-deflate-frame",
      },
    });
    await client.close();
    assert.equal(response.headers.get("sec-websocket-extensions"), undefined);
  });
  await t.step(`subprotocol ${MUX_SUBPROTOCOL} is echoed only when offered`, async () => {
    const offered = await RawClient.upgrade(port, MUX_TARGET, {
      headers: { "Sec-WebSocket-Protocol": `other, ${MUX_SUBPROTOCOL}` },
    });
    await offered.client.close();
    assert.equal(offered.response.headers.get("sec-websocket-protocol"), MUX_SUBPROTOCOL);
    const notOffered = await RawClient.upgrade(port, MUX_TARGET);
    await notOffered.client.close();
    assert.equal(notOffered.response.headers.get("sec-websocket-protocol"), undefined);
    const others = await RawClient.upgrade(port, MUX_TARGET, {
      headers: { "Sec-WebSocket-Protocol": "chat" },
    });
    await others.client.close();
    assert.equal(others.response.headers.get("sec-websocket-protocol"), undefined);
  });
  await t.step("frames pipelined in the same write as the request head are processed", async () => {
    const payload = bytesOf("pipelined behind the head");
    const { client } = await RawClient.upgrade(port, MUX_TARGET, {
      pipelined: concat([frame.binary(openBytes(1, echo.port)), frame.binary(dataBytes(1, payload))]),
    });
    await using _ = client;
    const reader = new SeedReader(client);
    await reader.expectAck(1);
    assert.deepEqual(await reader.readData(1, payload.byteLength), payload);
  });
});

Deno.test("handshake limits: head size (431) and head timeout (408)", async (t) => {
  const maxHeaderBytes = 16 * KIB;
  const headerTimeoutMs = 300;
  await using relay = startRelay(relayOverrides({ maxHeaderBytes, headerTimeoutMs }));
  const port = relay.port;
  /** A valid upgrade head padded to `total` bytes with an X-Pad header. */
  const paddedHead = (total: number) => {
    const base = upgradeRequest(port, MUX_TARGET, { extraLines: ["X-Pad: "] }).head.byteLength;
    return upgradeRequest(port, MUX_TARGET, { extraLines: [`X-Pad: ${"a".repeat(total - base)}`] });
  };

  await t.step("AERO_PROXY_MAX_HEADER_BYTES defaults to 16384", () => {
    assert.equal((defaultConfig() as unknown as Record<string, unknown>).maxHeaderBytes, 16384);
  });
  await t.step("a head just under the limit is accepted", async () => {
    const { head, key } = paddedHead(maxHeaderBytes - 256);
    assert.equal(head.byteLength, maxHeaderBytes - 256);
    const { client, response } = await RawClient.request(port, head);
    await client.close();
    assert.equal(response.status, 101, response.statusLine);
    assert.equal(response.headers.get("sec-websocket-accept"), acceptFor(key));
  });
  await t.step("a head over the limit gets 431", async () => {
    for (const total of [maxHeaderBytes + 256, 4 * maxHeaderBytes]) {
      const { head } = paddedHead(total);
      await using client = await RawClient.connect(port);
      // The server may answer and close before it has read everything.
      await client.tryWrite(head);
      const response = await client.readHead(3000);
      assert.equal(response.status, 431, `${total} bytes: ${response.statusLine}`);
    }
  });
  await t.step("many small header lines over the limit get 431", async () => {
    const lines: string[] = [];
    for (let size = 0; size <= maxHeaderBytes + 256; size += lines.at(-1)!.length + 2) {
      lines.push(`X-H${lines.length}: v`);
    }
    const { head } = upgradeRequest(port, MUX_TARGET, { extraLines: lines });
    assert.ok(head.byteLength > maxHeaderBytes + 256);
    await using client = await RawClient.connect(port);
    await client.tryWrite(head);
    assert.equal((await client.readHead(3000)).status, 431);
  });

  /** Expects 408 and then EOF within the bound, for a client that stalled in its head since `started`. */
  const expectHeadTimeout = async (client: RawClient, started: number) => {
    const boundMs = headerTimeoutMs + 1500;
    const response = await client.readHead(boundMs);
    assert.equal(response.status, 408, response.statusLine);
    assert.ok(await client.waitEof(boundMs), "the connection stayed open after 408");
    const elapsed = performance.now() - started;
    assert.ok(elapsed >= headerTimeoutMs - 50, `closed after ${elapsed.toFixed(0)} ms, before the timeout`);
  };
  await t.step("a client that sends nothing gets 408 and EOF after headerTimeoutMs", async () => {
    const started = performance.now();
    await using client = await RawClient.connect(port);
    await expectHeadTimeout(client, started);
  });
  await t.step("a client that sends half a head gets 408 and EOF after headerTimeoutMs", async () => {
    const started = performance.now();
    await using client = await RawClient.connect(port);
    const { head } = upgradeRequest(port, MUX_TARGET);
    await client.write(head.subarray(0, head.byteLength >> 1));
    await expectHeadTimeout(client, started);
  });
  await t.step(
    "a client that trickles its head a byte at a time is cut off after headerTimeoutMs",
    async () => {
      const started = performance.now();
      await using client = await RawClient.connect(port);
      const { head } = upgradeRequest(port, MUX_TARGET);
      let sent = 0;
      while (
        !client.eof && performance.now() - started < headerTimeoutMs + 1500 && sent < head.byteLength - 4
      ) {
        if (!(await client.tryWrite(head.subarray(sent, sent + 1)))) break;
        sent++;
        if ((await client.fill(performance.now() + 50)) !== "timeout") break;
      }
      assert.ok(sent < head.byteLength - 4, "the whole head was sent without a timeout");
      await expectHeadTimeout(client, started);
    },
  );
  await t.step("a complete upgrade within the timeout is not cut off later", async () => {
    await using client = await connectMux(port);
    await sleep(headerTimeoutMs + 200);
    await client.write(frame.ping("still here"));
    await expectPong(client, bytesOf("still here"));
  });
});

Deno.test("framing violations: the server closes with 1002, then closes TCP", async (t) => {
  await using relay = startRelay();
  const port = relay.port;
  type Case = readonly [label: string, bytes: Uint8Array | readonly Uint8Array[]];
  const table = (name: string, cases: readonly Case[]) =>
    t.step(
      name,
      () => eachCase(cases, ([label]) => label, ([, bytes]) => expectViolation(port, bytes, PROTOCOL_ERROR)),
    );

  await table("1.x unmasked client frames", [
    ["binary", frame.binary(openBytes(1, 9), { mask: false })],
    ["empty Ping", frame.ping("", { mask: false })],
    ["Close 1000", frame.close(1000, "", { mask: false })],
    ["text", frame.text("x", { mask: false })],
  ]);
  await table("3.x RSV bits", [
    ...[1, 2, 3, 4, 5, 6, 7].map((
      rsv,
    ): Case => [`binary rsv=${rsv}`, frame.binary(openBytes(1, 9), { rsv })]),
    ["text rsv=4", frame.text("hello", { rsv: 4 })],
    ["Ping rsv=2", frame.ping("x", { rsv: 2 })],
    ["Close rsv=1", frame.close(1000, "", { rsv: 1 })],
    ["continuation rsv=4", [frame.binary("ab", { fin: false }), frame.continuation("cd", { rsv: 4 })]],
  ]);
  await t.step("3.x RSV bits after a valid Ping: the Pong comes first, then 1002", async () => {
    const result = await expectViolation(port, [
      frame.ping("first"),
      frame.binary(openBytes(1, 9), { rsv: 2 }),
    ], PROTOCOL_ERROR);
    assert.deepEqual(result.before.map((f) => [f.opcode, new TextDecoder().decode(f.payload)]), [[
      Opcode.PONG,
      "first",
    ]]);
  });
  await table(
    "4.1.x reserved data opcodes 3-7",
    [3, 4, 5, 6, 7].flatMap((opcode): Case[] => [
      [`opcode ${opcode}`, encodeFrame({ opcode })],
      [`opcode ${opcode} with payload`, encodeFrame({ opcode, payload: "reserved opcode" })],
    ]),
  );
  await table(
    "4.2.x reserved control opcodes 0xB-0xF",
    [0xb, 0xc, 0xd, 0xe, 0xf].flatMap((opcode): Case[] => [
      [`opcode ${opcode}`, encodeFrame({ opcode })],
      [`opcode ${opcode} with payload`, encodeFrame({ opcode, payload: "reserved opcode" })],
    ]),
  );
  await t.step("4.x a reserved opcode after a valid Ping, written byte by byte", async () => {
    const bytes = bytewise(concat([frame.ping("a"), encodeFrame({ opcode: 5 })]));
    await expectViolation(port, bytes, PROTOCOL_ERROR, { gapMs: 1 });
  });
  await table("2.5 control frames with a payload over 125 bytes", [
    ["Ping 126", frame.ping(new Uint8Array(126))],
    ["Pong 126", frame.pong(new Uint8Array(126))],
    ["Close with a 124-byte reason", frame.close(1000, "r".repeat(124))],
    ["Ping 200 (16-bit length form)", encodeFrame({ opcode: Opcode.PING, payload: new Uint8Array(200) })],
    ["Ping 65536 declared, header only", encodeFrame({ opcode: Opcode.PING, declaredLength: 65536 })],
  ]);
  await table("5.1/5.2 fragmented control frames (FIN=0)", [
    ["Ping + continuation", [frame.ping("a", { fin: false }), frame.continuation("b")]],
    ["Pong + continuation", [frame.pong("a", { fin: false }), frame.continuation("b")]],
    ["Close + continuation", [frame.close(1000, "", { fin: false }), frame.continuation("")]],
    ["empty Ping alone", frame.ping("", { fin: false })],
  ]);
  await table("5.9-5.17 continuation with no message started", [
    ["FIN=1", frame.continuation(openBytes(1, 9))],
    ["FIN=0 then FIN=1", [frame.continuation("abc", { fin: false }), frame.continuation("def")]],
    ["after a finished fragmented message", [
      frame.binary(new Uint8Array(0), { fin: false }),
      frame.continuation(new Uint8Array(0)),
      frame.continuation(new Uint8Array(3)),
    ]],
    ["after a finished unfragmented message", [frame.ping("p"), frame.continuation("x")]],
  ]);
  await table("5.18 a new data frame while a fragmented message is open", [
    ["binary after binary FIN=0", [
      frame.binary(openBytes(1, 9).subarray(0, 4), { fin: false }),
      frame.binary(openBytes(2, 9)),
    ]],
    ["text after binary FIN=0", [
      frame.binary(openBytes(1, 9).subarray(0, 4), { fin: false }),
      frame.text("x"),
    ]],
    ["text after text FIN=0", [frame.text("a", { fin: false }), frame.text("b")]],
  ]);
  await table("1.x a 64-bit length with the most significant bit set", [
    ["2^63", encodeFrame({ opcode: Opcode.BINARY, declaredLength: 1n << 63n, lengthForm: 64 })],
    ["2^64 - 1", encodeFrame({ opcode: Opcode.BINARY, declaredLength: (1n << 64n) - 1n, lengthForm: 64 })],
  ]);
});

Deno.test("ping and pong", async (t) => {
  await using relay = startRelay();
  await using echo = startEchoServer();
  const port = relay.port;

  for (
    const [name, payload] of [
      ["2.1 no payload", new Uint8Array(0)],
      ["2.2 a short text payload", bytesOf("Hello, world!")],
      ["2.3 a binary payload", new Uint8Array([0x00, 0xff, 0xfe, 0xfd, 0xfc, 0xfb, 0x00, 0xff])],
      ["2.4 a 125-byte payload", new Prng(125).bytes(125)],
    ] as const
  ) {
    await t.step(`${name}: the Pong carries the identical payload`, async () => {
      await using client = await connectMux(port);
      await client.write(frame.ping(payload));
      await expectPong(client, payload);
    });
  }
  await t.step("2.6 a 125-byte Ping written a byte at a time", async () => {
    await using client = await connectMux(port);
    const payload = new Prng(6).bytes(125);
    await client.write(bytewise(frame.ping(payload)), { gapMs: 1 });
    await expectPong(client, payload);
  });
  await t.step("2.7/2.8 an unsolicited Pong (empty, with payload) is ignored", async () => {
    await using client = await connectMux(port);
    await client.write([frame.pong(), frame.pong("unsolicited")]);
    await expectSilence(client, 300);
    await client.write(frame.ping("after"));
    await expectPong(client, bytesOf("after"));
  });
  await t.step("2.9 an unsolicited Pong then a Ping: only the Ping is answered", async () => {
    await using client = await connectMux(port);
    await client.write(concat([frame.pong("unsolicited"), frame.ping("ping")]));
    await expectPong(client, bytesOf("ping"));
    await expectSilence(client, 200);
  });
  await t.step(
    "2.10/2.11 ten Pings in one write, and written byte by byte, get ten Pongs in order",
    async () => {
      for (const split of [false, true]) {
        await using client = await connectMux(port);
        const payloads = Array.from({ length: 10 }, (_, i) => bytesOf(`payload-${i}`));
        const bytes = concat(payloads.map((p) => frame.ping(p)));
        await client.write(split ? bytewise(bytes) : [bytes]);
        for (const p of payloads) await expectPong(client, p);
      }
    },
  );
  await t.step(
    "5.6-5.8 a Ping between the fragments of a message is answered, the message completes",
    async () => {
      for (const split of ["whole", "bytewise", "chopped"] as const) {
        await using client = await connectMux(port);
        const reader = new SeedReader(client);
        const [a, b, c] = fragmentedMessage(Opcode.BINARY, fragmentsOf(openBytes(1, echo.port), 3));
        const bytes = concat([a!, frame.ping("between-1"), b!, frame.ping("between-2"), c!]);
        const pieces = split === "whole"
          ? [bytes]
          : split === "bytewise"
          ? bytewise(bytes)
          : randomSplit(bytes, new Prng(58), 8);
        await client.write(pieces, { gapMs: split === "whole" ? 0 : 1 });
        await expectPong(client, bytesOf("between-1"));
        await expectPong(client, bytesOf("between-2"));
        await reader.expectAck(1);
      }
    },
  );
  await t.step("5.19/5.20 pings between five fragments, with pauses", async () => {
    await using client = await connectMux(port);
    const reader = new SeedReader(client);
    const payload = bytesOf("five fragments");
    await client.write(frame.binary(openBytes(1, echo.port)));
    await reader.expectAck(1);
    const fragments = fragmentedMessage(Opcode.BINARY, fragmentsOf(dataBytes(1, payload), 5));
    for (let i = 0; i < fragments.length; i++) {
      await client.write(fragments[i]!);
      if (i < fragments.length - 1) {
        await client.write(frame.ping(`p${i}`));
        await sleep(20);
      }
    }
    assert.deepEqual(await reader.readData(1, payload.byteLength), payload);
    await reader.waitPongs(4, 2000);
    assert.deepEqual(reader.pongs, [0, 1, 2, 3].map((i) => bytesOf(`p${i}`)));
  });
});

Deno.test("fragmented binary messages are assembled", async (t) => {
  await using relay = startRelay();
  await using echo = startEchoServer();
  const port = relay.port;

  await t.step("5.3-5.5 an OPEN in three fragments: whole, byte by byte, chopped", async () => {
    for (const split of ["whole", "bytewise", "chopped"] as const) {
      await using client = await connectMux(port);
      const reader = new SeedReader(client);
      const bytes = concat(fragmentedMessage(Opcode.BINARY, fragmentsOf(openBytes(7, echo.port), 3)));
      const pieces = split === "whole"
        ? [bytes]
        : split === "bytewise"
        ? bytewise(bytes)
        : randomSplit(bytes, new Prng(55), 6);
      await client.write(pieces, { gapMs: split === "whole" ? 0 : 1 });
      await reader.expectAck(7);
    }
  });
  await t.step("6.1 empty fragments around the payload", async () => {
    await using client = await connectMux(port);
    const reader = new SeedReader(client);
    const empty = new Uint8Array(0);
    await client.write(fragmentedMessage(Opcode.BINARY, [empty, empty, openBytes(3, echo.port), empty]));
    await reader.expectAck(3);
  });
  await t.step("10.1 a 64 KiB DATA in fragments of 1300 bytes is echoed", async () => {
    await using client = await connectMux(port);
    const reader = new SeedReader(client);
    await client.write(frame.binary(openBytes(1, echo.port)));
    await reader.expectAck(1);
    const data = new Prng(101).bytes(64 * KIB);
    const message = dataBytes(1, data);
    const parts = fragmentsOf(message, Math.ceil(message.byteLength / 1300));
    await client.write(fragmentedMessage(Opcode.BINARY, parts));
    assert.deepEqual(await reader.readData(1, data.byteLength), data);
  });
});

Deno.test("UTF-8 in text messages", async (t) => {
  await using relay = startRelay();
  const port = relay.port;
  const u = (...b: number[]) => new Uint8Array(b);
  const utf8 = (s: string) => bytesOf(s);

  const invalid: [string, Uint8Array][] = [
    ["a lone continuation byte", u(0x80)],
    ["an overlong NUL (C0 80)", u(0xc0, 0x80)],
    ["an overlong C1 BF", u(0xc1, 0xbf)],
    ["an overlong 3-byte form (E0 80 80)", u(0xe0, 0x80, 0x80)],
    ["a surrogate (ED A0 80)", u(0xed, 0xa0, 0x80)],
    ["a code point past U+10FFFF (F4 90 80 80)", u(0xf4, 0x90, 0x80, 0x80)],
    ["a 5-byte form (F8 88 80 80 80)", u(0xf8, 0x88, 0x80, 0x80, 0x80)],
    ["FE and FF", u(0x61, 0xfe, 0xff)],
    [
      "6.4.x valid text around a surrogate",
      concat([utf8("κόσμε"), u(0xed, 0xa0, 0x80), utf8("edited")]),
    ],
    ["a truncated sequence at the end", concat([utf8("ab"), u(0xe2, 0x82)])],
  ];
  await t.step("6.3-6.21 invalid UTF-8 in a single text frame -> 1007", async () => {
    await eachCase(
      invalid,
      ([name]) => name,
      ([, payload]) => expectViolation(port, frame.text(payload), INVALID_PAYLOAD),
    );
  });
  await t.step("6.x invalid UTF-8 split across fragments -> 1007", async () => {
    // F4 is a valid start; F4 90 is past U+10FFFF.
    await expectViolation(port, [
      frame.text(u(0x61, 0xf4), { fin: false }),
      frame.continuation(u(0x90, 0x80, 0x80)),
    ], INVALID_PAYLOAD);
    // E2 82 then a byte that is not a continuation.
    await expectViolation(
      port,
      [frame.text(u(0xe2, 0x82), { fin: false }), frame.continuation(utf8("("))],
      INVALID_PAYLOAD,
    );
  });
  await t.step("6.x a sequence truncated at the end of the last fragment -> 1007", async () => {
    await expectViolation(port, [
      frame.text("ab", { fin: false }),
      frame.continuation(u(0xf0, 0x9f), { fin: true }),
    ], INVALID_PAYLOAD);
    await expectViolation(port, [
      frame.text(u(0xf0, 0x9f, 0x98), { fin: false }),
      frame.continuation(new Uint8Array(0)),
    ], INVALID_PAYLOAD);
  });
  await t.step("6.x invalid UTF-8 in a text message written byte by byte -> 1007", async () => {
    await expectViolation(port, bytewise(frame.text(u(0x68, 0xed, 0xa0, 0x80, 0x69))), INVALID_PAYLOAD, {
      gapMs: 1,
    });
  });

  /** Valid text is not part of the seed protocol: ERROR 5 on id 0, then the session closes with 1002. */
  const expectTextRefused = async (bytes: Uint8Array | readonly Uint8Array[]) => {
    await using client = await connectMux(port);
    await client.write(bytes);
    const result = await expectCloseThenEof(client, PROTOCOL_ERROR, { reply: true, withinMs: 3000 });
    assertSessionError(result.before);
  };
  await t.step("6.2 valid text gets the session's ERROR 5 on id 0 and close 1002", async () => {
    await expectTextRefused(frame.text("Hello-µ@ßöäüàá-UTF-8!!"));
  });
  await t.step("6.1 an empty text message gets the session's ERROR 5 on id 0 and close 1002", async () => {
    await expectTextRefused(frame.text(""));
  });
  await t.step("6.x boundary code points U+FFFF and U+10FFFF are valid (no 1007)", async () => {
    await expectTextRefused(frame.text(u(0xef, 0xbf, 0xbf, 0xf4, 0x8f, 0xbf, 0xbf)));
  });
  await t.step("6.2 valid text split mid-character across fragments is not 1007", async () => {
    // "€" is E2 82 AC: one byte per fragment.
    await expectTextRefused(fragmentedMessage(Opcode.TEXT, [u(0xe2), u(0x82), u(0xac)]));
  });
});

Deno.test("close handshake", async (t) => {
  await using relay = startRelay();
  await using echo = startEchoServer();
  const port = relay.port;

  const validCodes = [
    1000,
    1001,
    1002,
    1003,
    1007,
    1008,
    1009,
    1010,
    1011,
    1012,
    1013,
    1014,
    3000,
    3999,
    4000,
    4999,
  ];
  await t.step(`7.7.x valid codes are echoed, then TCP closes: ${validCodes.join(" ")}`, async () => {
    await eachCase(validCodes, (code) => `code ${code}`, async (code) => {
      await using client = await connectMux(port);
      await client.write(frame.close(code, "bye"));
      await expectCloseThenEof(client, code);
    });
  });
  await t.step("7.3.1 an empty Close gets a Close (empty or 1000), then TCP closes", async () => {
    await using client = await connectMux(port);
    await client.write(frame.close());
    await expectCloseThenEof(client, [NO_STATUS_CODE, 1000]);
  });
  await t.step("7.3.5 a Close with a 123-byte reason (125-byte payload) is echoed", async () => {
    await using client = await connectMux(port);
    await client.write(frame.close(1000, "r".repeat(123)));
    await expectCloseThenEof(client, 1000);
  });
  await t.step("7.3.2 a Close with a 1-byte payload -> 1002", async () => {
    await expectViolation(
      port,
      encodeFrame({ opcode: Opcode.CLOSE, payload: new Uint8Array([0x03]) }),
      PROTOCOL_ERROR,
    );
  });
  const invalidCodes = [0, 999, 1004, 1005, 1006, 1015, 1016, 1100, 2000, 2999, 5000, 65535];
  await t.step(`7.9.x invalid codes -> 1002: ${invalidCodes.join(" ")}`, async () => {
    await eachCase(
      invalidCodes,
      (code) => `code ${code}`,
      (code) => expectViolation(port, frame.close(code), PROTOCOL_ERROR),
    );
  });
  await t.step("7.5.1 a reason with invalid UTF-8 -> 1007", async () => {
    await expectViolation(
      port,
      frame.close(
        1000,
        new Uint8Array([
          0xce,
          0xba,
          0xe1,
          0xbd,
          0xb9,
          0xcf,
          0x83,
          0xce,
          0xbc,
          0xce,
          0xb5,
          0xed,
          0xa0,
          0x80,
          0x65,
          0x64,
        ]),
      ),
      INVALID_PAYLOAD,
    );
  });
  await t.step("7.1.3/7.1.4 frames after the client's Close are ignored", async () => {
    await using client = await connectMux(port);
    const bytes = concat([
      frame.close(1000),
      frame.ping("after close"),
      frame.text("after close"),
      frame.binary(openBytes(1, echo.port)),
      encodeFrame({ opcode: 5 }),
    ]);
    await client.tryWrite(bytes);
    const result = await expectCloseThenEof(client, 1000);
    assert.deepEqual(result.before, [], "the server answered frames sent after the Close");
  });
  await t.step("7.1.5 a Close between the fragments of a message is answered", async () => {
    await using client = await connectMux(port);
    await client.write([
      frame.binary(openBytes(1, echo.port).subarray(0, 5), { fin: false }),
      frame.close(1000),
    ]);
    await expectCloseThenEof(client, 1000);
  });
  await t.step("7.1.1 a Close after an echo round trip", async () => {
    await assertRelayEchoes(port, echo.port);
  });
});

Deno.test("message size limit (maxFrameBytes 64 KiB): 1009 as soon as a header announces too much", async (t) => {
  const maxFrameBytes = 64 * KIB;
  await using relay = startRelay({ maxFrameBytes });
  await using echo = startEchoServer();
  const port = relay.port;
  const tooBig = async (bytes: Uint8Array | readonly Uint8Array[]) => {
    const result = await expectViolation(port, bytes, MESSAGE_TOO_BIG, { withinMs: 2000 });
    assertSessionError(result.before);
  };

  await t.step(
    "9.x a header claiming 63 MiB, without its payload -> ERROR 5 on id 0 and 1009 within 2 s",
    async () => {
      await tooBig(encodeFrame({ opcode: Opcode.BINARY, declaredLength: 63 * MIB }));
    },
  );
  await t.step("a message of exactly maxFrameBytes is accepted", async () => {
    await using client = await connectMux(port);
    const reader = new SeedReader(client);
    const data = new Prng(64).bytes(maxFrameBytes - 5);
    await client.write([frame.binary(openBytes(1, echo.port)), frame.binary(dataBytes(1, data))]);
    await reader.expectAck(1);
    assert.deepEqual(await reader.readData(1, data.byteLength), data);
  });
  await t.step("a header claiming maxFrameBytes + 1, without its payload -> 1009", async () => {
    await tooBig(encodeFrame({ opcode: Opcode.BINARY, declaredLength: maxFrameBytes + 1 }));
  });
  await t.step("a complete message of maxFrameBytes + 1 -> 1009", async () => {
    await tooBig(frame.binary(dataBytes(1, new Uint8Array(maxFrameBytes + 1 - 5))));
  });
  await t.step(
    "fragments whose sum passes the limit -> 1009 at the header of the fragment that passes it",
    async () => {
      await tooBig([
        frame.binary(new Uint8Array(32 * KIB), { fin: false }),
        frame.continuation(new Uint8Array(32 * KIB), { fin: false }),
        encodeFrame({ opcode: Opcode.CONTINUATION, fin: true, declaredLength: 1 }),
      ]);
    },
  );
  await t.step("many small fragments whose sum passes the limit -> 1009", async () => {
    const parts = Array.from({ length: 70 }, () => new Uint8Array(KIB));
    await tooBig(fragmentedMessage(Opcode.BINARY, parts));
  });
  await t.step("the relay still serves afterwards", async () => {
    await assertRelayEchoes(port, echo.port);
  });
});

Deno.test("message timeout (messageTimeoutMs 300): an unfinished fragmented message gets 1008", async (t) => {
  const messageTimeoutMs = 300;
  await using relay = startRelay(relayOverrides({ messageTimeoutMs }));
  await using echo = startEchoServer();
  const port = relay.port;

  await t.step("a first fragment and nothing more -> 1008 after the timeout", async () => {
    await using client = await connectMux(port);
    await client.write(frame.binary(openBytes(1, echo.port).subarray(0, 6), { fin: false }));
    const result = await expectCloseThenEof(client, POLICY_VIOLATION, { withinMs: messageTimeoutMs + 1700 });
    assert.ok(result.elapsedMs >= messageTimeoutMs - 50, `closed after ${result.elapsedMs.toFixed(0)} ms`);
  });
  await t.step("fragments that keep coming but never finish -> 1008", async () => {
    await using client = await connectMux(port);
    const started = performance.now();
    await client.write(frame.binary(new Uint8Array(1), { fin: false }));
    while (performance.now() - started < messageTimeoutMs + 1500 && client.buffered === 0) {
      if (!(await client.tryWrite(frame.continuation(new Uint8Array(1), { fin: false })))) break;
      if ((await client.fill(performance.now() + 50)) !== "timeout") break;
    }
    await expectCloseThenEof(client, POLICY_VIOLATION, { withinMs: 2000 });
  });
  await t.step("a fragmented message finished within the timeout is accepted", async () => {
    await using client = await connectMux(port);
    const reader = new SeedReader(client);
    for (const f of fragmentedMessage(Opcode.BINARY, fragmentsOf(openBytes(1, echo.port), 3))) {
      await client.write(f);
      await sleep(50);
    }
    await reader.expectAck(1);
  });
  await t.step(
    "the timeout is per message: messages spread over longer than the timeout are fine",
    async () => {
      await using client = await connectMux(port);
      const reader = new SeedReader(client);
      await client.write(frame.binary(openBytes(1, echo.port)));
      await reader.expectAck(1);
      for (let i = 0; i < 4; i++) {
        const data = bytesOf(`message ${i}`);
        await client.write(fragmentedMessage(Opcode.BINARY, fragmentsOf(dataBytes(1, data), 2)));
        assert.deepEqual(await reader.readData(1, data.byteLength), data);
        await sleep(messageTimeoutMs / 2);
      }
    },
  );
});

Deno.test("keepalive (wsKeepaliveS 1): pings; an answering peer stays, a silent one is dropped", async (t) => {
  const intervalMs = 1000;
  await using relay = startRelay({ wsKeepaliveS: 1 });
  await using echo = startEchoServer();
  const port = relay.port;

  await t.step("a peer that answers pings stays open for 3.5 s and still works", async () => {
    await using client = await connectMux(port);
    const reader = new SeedReader(client);
    const until = performance.now() + 3500;
    while (performance.now() < until) {
      try {
        const f = await reader.next(Math.max(1, until - performance.now()));
        assert.fail(`unexpected seed frame: ${JSON.stringify(describeFrame(f))}`);
      } catch (err: unknown) {
        if (!(err instanceof Error && err.name === "TimeoutError")) throw err;
      }
    }
    assert.ok(reader.pingsAnswered >= 2, `the server sent ${reader.pingsAnswered} pings in 3.5 s`);
    const payload = bytesOf("after keepalive");
    await client.write([frame.binary(openBytes(1, echo.port)), frame.binary(dataBytes(1, payload))]);
    await reader.expectAck(1);
    assert.deepEqual(await reader.readData(1, payload.byteLength), payload);
  });
  await t.step("a peer that reads but never answers is closed within 2 x interval + slack", async () => {
    await using client = await connectMux(port);
    const started = performance.now();
    const boundMs = 2 * intervalMs + 1000;
    let pings = 0;
    for (;;) {
      const left = boundMs - (performance.now() - started);
      assert.ok(left > 0, `still open after ${boundMs} ms (${pings} pings seen)`);
      let f;
      try {
        f = await client.readFrame(left);
      } catch (err: unknown) {
        if (err instanceof Error && err.name === "TimeoutError") continue;
        throw err;
      }
      if (f === null) break;
      if (f.opcode === Opcode.PING) pings++;
    }
    assert.ok(pings >= 1, "the connection closed without a ping first");
    report(`silent peer dropped after ${(performance.now() - started).toFixed(0)} ms (${pings} pings)`);
  });
});

Deno.test("valid traffic: frames split at every byte boundary and length-encoding boundaries", async (t) => {
  // The ~1 MiB message must fit the per-stream queue (1 MiB by default): the limit under test is the transport's.
  await using relay = startRelay({ openRate: 0, streamQueueBytes: 4 * MIB });
  await using echo = startEchoServer();
  const port = relay.port;

  await t.step("OPEN and DATA written one byte per write", async () => {
    await using client = await connectMux(port);
    const reader = new SeedReader(client);
    const payload = bytesOf("one byte per write");
    const bytes = concat([frame.binary(openBytes(1, echo.port)), frame.binary(dataBytes(1, payload))]);
    await client.write(bytewise(bytes), { gapMs: 1 });
    await reader.expectAck(1);
    assert.deepEqual(await reader.readData(1, payload.byteLength), payload);
  });
  await t.step("OPEN + DATA split in two at every byte boundary", async () => {
    await using client = await connectMux(port);
    const reader = new SeedReader(client);
    const payload = bytesOf("split here");
    const length = frame.binary(openBytes(1, 1)).byteLength + frame.binary(dataBytes(1, payload)).byteLength;
    for (let cut = 1; cut < length; cut++) {
      const id = cut;
      const bytes = concat([
        frame.binary(openBytes(id, echo.port)),
        frame.binary(dataBytes(id, payload)),
      ]);
      await client.write(splitAt(bytes, [cut]), { gapMs: 2 });
      await reader.expectAck(id);
      assert.deepEqual(await reader.readData(id, payload.byteLength), payload, `cut at ${cut}`);
    }
  });
  await t.step("random splits of many frames with pings and fragments (seeded)", async () => {
    const seed = 0x5eed_0001;
    const rng = new Prng(seed);
    report(`valid-traffic split seed ${seed}`);
    await using client = await connectMux(port);
    const reader = new SeedReader(client);
    const ids = [1, 2, 3, 4];
    const expected = new Map<number, Uint8Array[]>(ids.map((id) => [id, []]));
    const frames: Uint8Array[] = ids.map((id) => frame.binary(openBytes(id, echo.port)));
    const pings: Uint8Array[] = [];
    for (let i = 0; i < 200; i++) {
      const id = rng.pick(ids);
      const data = rng.bytes(rng.chance(0.1) ? rng.int(70_000) : rng.int(300));
      expected.get(id)!.push(data);
      const message = dataBytes(id, data);
      if (rng.chance(0.3)) {
        const parts = fragmentsOf(message, 2 + rng.int(4));
        const fragments = fragmentedMessage(Opcode.BINARY, parts);
        for (let j = 0; j < fragments.length; j++) {
          frames.push(fragments[j]!);
          if (j < fragments.length - 1 && rng.chance(0.3)) {
            const p = rng.bytes(rng.int(126));
            pings.push(p);
            frames.push(frame.ping(p));
          }
        }
      } else frames.push(frame.binary(message));
    }
    const bytes = concat(frames);
    const pieces = randomSplit(bytes, rng, 400);
    const writing = client.write(pieces, { timeoutMs: 20_000 });
    const totals = new Map(
      [...expected].map(([id, parts]) => [id, parts.reduce((s, p) => s + p.byteLength, 0)]),
    );
    const got = await reader.collect(totals, 20_000);
    await writing;
    for (const [id, parts] of expected) assert.deepEqual(got.get(id), concat(parts), `stream ${id}`);
    // Pongs may trail the last DATA.
    await reader.waitPongs(pings.length, 2000);
    assert.deepEqual(reader.pongs, pings, "pongs differ from the pings");
  });
  await t.step("1.2.8 a 65536-byte message written in chunks of 997 bytes", async () => {
    await using client = await connectMux(port);
    const reader = new SeedReader(client);
    await client.write(frame.binary(openBytes(1, echo.port)));
    await reader.expectAck(1);
    const data = new Prng(997).bytes(65536 - 5);
    const bytes = frame.binary(dataBytes(1, data));
    await client.write(
      splitAt(bytes, Array.from({ length: Math.floor(bytes.byteLength / 997) }, (_, i) => (i + 1) * 997)),
    );
    assert.deepEqual(await reader.readData(1, data.byteLength), data);
  });
  for (const length of [125, 126, 127, 128, 65535, 65536, MIB + 1]) {
    await t.step(`1.2.x a ${length}-byte binary message is accepted and echoed`, async () => {
      await using client = await connectMux(port);
      const reader = new SeedReader(client);
      await client.write(frame.binary(openBytes(1, echo.port)));
      await reader.expectAck(1);
      const data = new Prng(length).bytes(length - 5);
      await client.write(frame.binary(dataBytes(1, data)));
      assert.deepEqual(await reader.readData(1, data.byteLength), data);
    });
  }
  await t.step(
    "1.2.1 a 0-byte binary message reaches the session (ERROR 5 on id 0, close 1002)",
    async () => {
      await using client = await connectMux(port);
      await client.write(frame.binary(new Uint8Array(0)));
      const result = await expectCloseThenEof(client, PROTOCOL_ERROR, { reply: true, withinMs: 3000 });
      assertSessionError(result.before);
    },
  );
  await t.step("the relay still serves afterwards", async () => {
    await assertRelayEchoes(port, echo.port);
  });
});
