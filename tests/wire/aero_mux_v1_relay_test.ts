/**
 * aero-tcp-mux-v1 end to end: a WebSocket that offers the subprotocol, frames built with the codec, real TCP
 * targets on loopback. Names resolve through the relay's resolver seam where a test needs them to.
 */
import assert from "node:assert/strict";
import { defaultConfig } from "../../src/config.ts";
import type { Resolver } from "../../src/core/target.ts";
import { type RunningRelay, serveRelay } from "../../src/server.ts";
import {
  encodeClose,
  encodeData,
  encodeOpen,
  encodePing,
  encodeRawFrame,
  MUX_V1_SUBPROTOCOL,
  MuxCloseFlag,
  MuxErrorCode,
  MuxMsgType,
} from "../../src/wire/aero_mux_v1_codec.ts";
import { encodeFrame as rawFrame, Opcode, RawClient } from "../transport/_frames.ts";
import { AeroClient } from "./_aero_client.ts";

/** A CLOSE with any flags byte, valid or not. */
function encodeRawClose(id: number, flags: number): Uint8Array {
  return encodeRawFrame({ type: MuxMsgType.CLOSE, streamId: id }, new Uint8Array([flags]));
}
import {
  concat,
  patternDigest,
  report,
  sha256Hex,
  startEchoServer,
  startSourceServer,
  startTcpServer,
  TOKEN,
  withTimeout,
} from "../_util.ts";

function startAeroRelay(overrides: Record<string, unknown> = {}, resolve?: Resolver): RunningRelay {
  return serveRelay(
    defaultConfig({ port: 0, authTokens: [TOKEN], allowPrivateIps: true, logLevel: "warning", ...overrides }),
    resolve === undefined ? {} : { resolve },
  );
}

const text = (s: string) => new TextEncoder().encode(s);

Deno.test("aero-tcp-mux-v1: echo by name, half-close both ways, ping, concatenated and split frames", async (t) => {
  await using relay = startAeroRelay();
  await using echo = startEchoServer();
  await using client = await AeroClient.connect(relay.port);
  assert.equal(client.ws.protocol, MUX_V1_SUBPROTOCOL);

  await t.step(
    "OPEN localhost, DATA before the connect completes, FIN: the echo comes back, then CLOSE FIN",
    async () => {
      client.send(
        encodeOpen(1, { host: "localhost", port: echo.port, metadata: '{"guest":"vm-1"}' }),
        encodeData(1, text("hello")),
      );
      client.send(encodeClose(1, MuxCloseFlag.FIN));
      const { data, flags } = await client.readToClose(1);
      assert.equal(new TextDecoder().decode(data), "hello");
      assert.equal(flags, MuxCloseFlag.FIN);
      assert.equal(relay.relay.metrics.openMetadataBytes, 16, "OPEN metadata is counted");
    },
  );

  await t.step("PING on stream 0 is answered with PONG and the same payload", async () => {
    client.send(encodePing(0, text("rtt-probe")));
    const pong = await client.next((f) => f.type === MuxMsgType.PONG, "PONG");
    assert.equal(pong.streamId, 0);
    assert.deepEqual((pong as { payload: Uint8Array }).payload, text("rtt-probe"));
  });

  await t.step("frames concatenated into one message and split across messages", async () => {
    const bytes = concat([
      encodeOpen(2, { host: "127.0.0.1", port: echo.port }),
      encodeData(2, text("split-")),
      encodeData(2, text("and-packed")),
      encodeClose(2, MuxCloseFlag.FIN),
    ]);
    // Pieces of one byte stream, each its own WebSocket message, cut inside headers and payloads.
    client.send(bytes.subarray(0, 5), bytes.subarray(5, 23), bytes.subarray(23));
    const { data, flags } = await client.readToClose(2);
    assert.equal(new TextDecoder().decode(data), "split-and-packed");
    assert.equal(flags, MuxCloseFlag.FIN);
  });
});

Deno.test("aero-tcp-mux-v1: the target answers after the client's FIN, and its answer still arrives", async () => {
  await using relay = startAeroRelay();
  // Reads everything to EOF, then answers with how much it got, then closes.
  await using target = startTcpServer(async (conn) => {
    let total = 0;
    const buffer = new Uint8Array(64 * 1024);
    for (;;) {
      const n = await conn.read(buffer);
      if (n === null) break;
      total += n;
    }
    await conn.write(text(`got ${total}`));
  });
  await using client = await AeroClient.connect(relay.port);
  const upload = new Uint8Array(200_000).fill(7);
  client.send(encodeOpen(1, { host: "127.0.0.1", port: target.port }));
  for (let at = 0; at < upload.byteLength; at += 16 * 1024) {
    client.send(encodeData(1, upload.subarray(at, at + 16 * 1024)));
  }
  client.send(encodeClose(1, MuxCloseFlag.FIN));
  const { data, flags } = await client.readToClose(1);
  assert.equal(new TextDecoder().decode(data), `got ${upload.byteLength}`);
  assert.equal(flags, MuxCloseFlag.FIN);
});

Deno.test("aero-tcp-mux-v1: RST aborts at once; errors carry the protocol's codes and never close the session", async (t) => {
  await using relay = startAeroRelay({ allowPrivateIps: false, allowCidrs: ["127.0.0.1/32"] });
  await using echo = startEchoServer();
  await using client = await AeroClient.connect(relay.port);

  await t.step("a private address is POLICY_DENIED (1); the session lives on", async () => {
    client.send(encodeOpen(1, { host: "10.0.0.1", port: 80 }));
    const error = await client.next((f) => f.streamId === 1, "ERROR on 1");
    assert.equal(error.type, MuxMsgType.ERROR);
    assert.equal((error as { code: number }).code, MuxErrorCode.POLICY_DENIED);
  });
  await t.step("IPv6 special ranges are denied (OPEN frames only)", async () => {
    let id = 10;
    for (
      const host of [
        "::1",
        "[fe80::1]",
        "fc00::1",
        "64:ff9b::a00:1",
        "2001:db8::1",
        "ff02::1",
        "::ffff:10.0.0.1",
      ]
    ) {
      client.send(encodeOpen(++id, { host, port: 443 }));
      const error = await client.next((f) => f.streamId === id, `ERROR for ${host}`);
      assert.equal((error as { code: number }).code, MuxErrorCode.POLICY_DENIED, host);
    }
  });
  await t.step(
    "DATA for a stream that never existed is UNKNOWN_STREAM (4); a reused id is PROTOCOL_ERROR (3)",
    async () => {
      client.send(encodeData(99, text("x")));
      assert.equal(
        ((await client.next((f) => f.streamId === 99, "ERROR on 99")) as { code: number }).code,
        MuxErrorCode.UNKNOWN_STREAM,
      );
      client.send(encodeOpen(1, { host: "127.0.0.1", port: echo.port }));
      assert.equal(
        ((await client.next((f) => f.streamId === 1, "ERROR on reused 1")) as { code: number }).code,
        MuxErrorCode.PROTOCOL_ERROR,
      );
    },
  );
  await t.step("RST: the relay closes the target at once and sends nothing for that stream", async () => {
    client.send(encodeOpen(2, { host: "127.0.0.1", port: echo.port }), encodeData(2, text("ping")));
    const echoed = await client.next((f) => f.streamId === 2, "echo on 2");
    assert.equal(echoed.type, MuxMsgType.DATA);
    client.send(encodeClose(2, MuxCloseFlag.RST));
    client.send(encodePing(0, text("after-rst")));
    await client.next((f) => f.type === MuxMsgType.PONG, "PONG after RST");
    assert.equal(client.frames.filter((f) => f.streamId === 2).length, 0);
    assert.equal(relay.relay.metrics.streamsActive, 0);
  });
});

Deno.test("aero-tcp-mux-v1: a name is resolved once and every address checked (rebinding seam)", async () => {
  await using echo = startEchoServer();
  let calls = 0;
  // First answer: loopback (allowed here by ALLOW_CIDRS); second answer: a public and a private address.
  const resolver: Resolver = (name) => {
    calls++;
    if (name !== "rebind.test") return Promise.reject(new Error("unknown name"));
    return Promise.resolve(calls === 1 ? ["127.0.0.1"] : ["93.184.216.34", "10.1.2.3"]);
  };
  await using relay = startAeroRelay({ allowPrivateIps: false, allowCidrs: ["127.0.0.1/32"] }, resolver);
  await using client = await AeroClient.connect(relay.port);
  client.send(encodeOpen(1, { host: "rebind.test", port: echo.port }), encodeData(1, text("first")));
  const first = await client.next((f) => f.streamId === 1, "echo via the first answer");
  assert.equal(first.type, MuxMsgType.DATA);
  client.send(encodeOpen(2, { host: "rebind.test", port: echo.port }));
  const second = await client.next((f) => f.streamId === 2, "ERROR for the second answer");
  assert.equal((second as { code: number }).code, MuxErrorCode.POLICY_DENIED);
  assert.match((second as { message: string }).message, /10\.1\.2\.3/);
  assert.equal(calls, 2, "each OPEN resolved its name exactly once");
});

Deno.test("aero-tcp-mux-v1: a text message closes the session with 1003", async () => {
  await using relay = startAeroRelay();
  await using client = await AeroClient.connect(relay.port);
  client.ws.send("not binary");
  const event = await withTimeout(client.closed, 3000, "close");
  assert.equal(event.code, 1003);
});

Deno.test("aero-tcp-mux-v1: a 16 MiB download arrives whole and in order (SHA-256)", async () => {
  const total = 16 * 1024 * 1024;
  await using relay = startAeroRelay();
  await using source = startSourceServer(total, 41);
  await using client = await AeroClient.connect(relay.port);
  client.send(encodeOpen(1, { host: "127.0.0.1", port: source.port }));
  const { data, flags } = await client.readToClose(1, 30_000);
  assert.equal(flags, MuxCloseFlag.FIN);
  assert.equal(data.byteLength, total);
  assert.equal(sha256Hex(data), patternDigest(total, 41));
});

Deno.test("aero-tcp-mux-v1: localhost is denied where loopback is, and by a host rule (any case, trailing dot)", async () => {
  await using echo = startEchoServer();
  {
    await using relay = startAeroRelay({ allowPrivateIps: false });
    await using client = await AeroClient.connect(relay.port);
    client.send(encodeOpen(1, { host: "localhost", port: echo.port }));
    const error = await client.next((f) => f.streamId === 1, "ERROR for localhost");
    assert.equal((error as { code: number }).code, MuxErrorCode.POLICY_DENIED);
  }
  {
    await using relay = startAeroRelay({ allowPrivateIps: false, denyHosts: ["localhost"] });
    await using client = await AeroClient.connect(relay.port);
    client.send(encodeOpen(1, { host: "LOCALHOST.", port: echo.port }));
    const error = await client.next((f) => f.streamId === 1, "ERROR for a denied name");
    assert.equal((error as { code: number }).code, MuxErrorCode.POLICY_DENIED);
  }
});

Deno.test("aero-tcp-mux-v1: an echo over IPv6 loopback (::1)", async () => {
  if (Deno.permissions.querySync({ name: "net", host: "[::1]" }).state !== "granted") {
    report("skipped: this test run may not use [::1] (the test task allows 127.0.0.0/8 only)");
    return;
  }
  let listener: Deno.TcpListener;
  try {
    listener = Deno.listen({ hostname: "::1", port: 0 });
  } catch (err: unknown) {
    report(`skipped: ::1 is not available here (${err instanceof Error ? err.message : String(err)})`);
    return;
  }
  const port = (listener.addr as Deno.NetAddr).port;
  const serving = (async () => {
    const conn = await listener.accept();
    const buffer = new Uint8Array(1024);
    const n = await conn.read(buffer);
    if (n !== null) await conn.write(buffer.subarray(0, n));
    conn.close();
  })();
  try {
    await using relay = startAeroRelay();
    await using client = await AeroClient.connect(relay.port);
    client.send(encodeOpen(1, { host: "[::1]", port }), encodeData(1, text("six")));
    const { data } = await client.readToClose(1);
    assert.equal(new TextDecoder().decode(data), "six");
    await serving;
  } finally {
    listener.close();
  }
});

Deno.test("aero-tcp-mux-v1: a frame that never completes is cut off at the message deadline (1008)", async () => {
  await using relay = startAeroRelay({ messageTimeoutMs: 300 });
  await using client = await AeroClient.connect(relay.port);
  // A DATA header announcing 100 bytes, and 10 of them.
  const frame = encodeData(1, new Uint8Array(100));
  client.send(frame.subarray(0, 19));
  const started = performance.now();
  // The half frame is counted with the messages still arriving, and given back when the session ends.
  const until = performance.now() + 2000;
  while (relay.relay.assembly.used === 0 && performance.now() < until) {
    await new Promise((r) => setTimeout(r, 5));
  }
  assert.ok(relay.relay.assembly.used >= 10, `held ${relay.relay.assembly.used}`);
  const event = await withTimeout(client.closed, 3000, "the close");
  assert.equal(event.code, 1008);
  assert.ok(performance.now() - started < 2500);
  assert.equal(relay.relay.assembly.used, 0);
});

Deno.test("aero-tcp-mux-v1: an ERROR the relay sends for a live stream also ends that stream", async () => {
  await using relay = startAeroRelay();
  await using echo = startEchoServer();
  await using client = await AeroClient.connect(relay.port);
  client.send(encodeOpen(1, { host: "127.0.0.1", port: echo.port }), encodeData(1, text("a")));
  assert.equal((await client.next((f) => f.streamId === 1, "echo")).type, MuxMsgType.DATA);
  // CLOSE with flags 0 is malformed: ERROR 3 on stream 1, and stream 1 is gone.
  client.send(encodeRawClose(1, 0));
  const error = await client.next((f) => f.streamId === 1, "ERROR");
  assert.equal((error as { code: number }).code, MuxErrorCode.PROTOCOL_ERROR);
  client.send(encodePing(0, text("sync")));
  await client.next((f) => f.type === MuxMsgType.PONG, "PONG");
  assert.equal(relay.relay.metrics.streamsActive, 0);
});

Deno.test("aero-tcp-mux-v1: a client that pings with big payloads and never reads is cut off", async () => {
  await using relay = startAeroRelay();
  const { client } = await RawClient.upgrade(relay.port, `/tcp-mux?token=${TOKEN}`, {
    headers: { "Sec-WebSocket-Protocol": MUX_V1_SUBPROTOCOL },
  });
  await using _ = client;
  const ping = rawFrame({ opcode: Opcode.BINARY, payload: encodePing(0, new Uint8Array(60 * 1024)) });
  const deadline = performance.now() + 10_000;
  // Never read; write until the relay has given up on this session (bounded by count and time).
  for (let i = 0; i < 2000 && relay.relay.sessions.size > 0 && performance.now() < deadline; i++) {
    if (!(await client.tryWrite(ping, { timeoutMs: 2000 }).catch(() => false))) break;
  }
  const until = performance.now() + 5000;
  while (relay.relay.sessions.size > 0 && performance.now() < until) {
    await new Promise((r) => setTimeout(r, 20));
  }
  assert.equal(relay.relay.sessions.size, 0, "the session was cut off");
  assert.ok((relay.relay.metrics.rateLimited.get("unread_errors") ?? 0) >= 1);
});
