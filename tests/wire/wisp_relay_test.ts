/**
 * Wisp on the relay, byte for byte: Deno's WebSocket sends packets built with the codec and every answer is
 * decoded and compared exactly: the handshakes, credits, close reasons per outcome, UDP limits, and the URL
 * and auth forms real clients use.
 */
import assert from "node:assert/strict";
import type { Config } from "../../src/config.ts";
import type { Dial } from "../../src/core/stream.ts";
import type { Resolver } from "../../src/core/target.ts";
import { defaultConfig } from "../../src/config.ts";
import { type RunningRelay, serveRelay } from "../../src/server.ts";
import {
  decodeWispPacket,
  encodeWispConnect,
  encodeWispData,
  encodeWispInfo,
  encodeWispRawPacket,
  WispCloseReason,
  type WispDecoded,
  WispPacketType,
  WispStreamType,
} from "../../src/wire/wisp_codec.ts";
import { parseWispRequest } from "../../src/wire/wisp.ts";
import {
  closedPort,
  delay,
  startEchoServer,
  startStalledServer,
  TOKEN,
  waitUntil,
  withTimeout,
} from "../_util.ts";
import { RawClient, upgradeRequest } from "../transport/_frames.ts";
import { startUdpEcho } from "./_udp.ts";

function startWispRelay(
  overrides: Partial<Config> = {},
  deps: { resolve?: Resolver; dial?: Dial } = {},
): RunningRelay {
  return serveRelay(
    defaultConfig({ port: 0, authTokens: [TOKEN], allowPrivateIps: true, logLevel: "error", ...overrides }),
    deps,
  );
}

/** A Wisp client over Deno's WebSocket that decodes every packet the relay sends. */
class RawWisp implements AsyncDisposable {
  readonly ws: WebSocket;
  readonly packets: WispDecoded[] = [];
  readonly closed: Promise<CloseEvent>;
  #wake: (() => void) | undefined;

  private constructor(ws: WebSocket) {
    this.ws = ws;
    ws.binaryType = "arraybuffer";
    ws.onmessage = (event) => {
      this.packets.push(decodeWispPacket(new Uint8Array(event.data as ArrayBuffer), { sender: "server" }));
      this.#wake?.();
    };
    this.closed = new Promise((resolve) => ws.addEventListener("close", resolve, { once: true }));
    void this.closed.then(() => this.#wake?.());
  }

  static async open(url: string, protocols?: string[]): Promise<RawWisp> {
    const ws = new WebSocket(url, protocols);
    // Listening from the start: the relay speaks first, right after the upgrade.
    const client = new RawWisp(ws);
    await withTimeout(
      new Promise<void>((resolve, reject) => {
        ws.onopen = () => resolve();
        ws.onerror = () => reject(new Error(`WebSocket to ${url} failed`));
      }),
      5000,
      "the WebSocket to open",
    );
    return client;
  }

  send(packet: Uint8Array): void {
    this.ws.send(packet);
  }

  /** The next packet matching `match` (consumed), waiting up to `ms`. */
  async next(match: (p: WispDecoded) => boolean = () => true, ms = 5000): Promise<WispDecoded> {
    const deadline = performance.now() + ms;
    for (;;) {
      const index = this.packets.findIndex(match);
      if (index >= 0) return this.packets.splice(index, 1)[0]!;
      const left = deadline - performance.now();
      if (left <= 0 || this.ws.readyState === WebSocket.CLOSED) {
        throw new Error(`No matching packet; have ${JSON.stringify(this.packets.map((p) => p.type))}`);
      }
      let timer: ReturnType<typeof setTimeout> | undefined;
      await new Promise<void>((resolve) => {
        this.#wake = resolve;
        timer = setTimeout(resolve, Math.min(left, 100));
      });
      clearTimeout(timer);
    }
  }

  /** The CLOSE the relay sends on stream `id`: its reason. */
  async closeReason(id: number, ms = 5000): Promise<number> {
    const packet = await this.next((p) => p.type === WispPacketType.CLOSE && p.streamId === id, ms);
    assert.equal(packet.type, WispPacketType.CLOSE);
    return packet.type === WispPacketType.CLOSE ? packet.reason : -1;
  }

  async [Symbol.asyncDispose](): Promise<void> {
    if (this.ws.readyState !== WebSocket.CLOSED) this.ws.close();
    await this.closed;
  }
}

const url = (relay: RunningRelay, path = `/wisp/${TOKEN}/`) => `ws://127.0.0.1:${relay.port}${path}`;
const bytes = (text: string) => new TextEncoder().encode(text);

/** A v1 session whose handshake CONTINUE has been read. */
async function v1(relay: RunningRelay): Promise<RawWisp> {
  const client = await RawWisp.open(url(relay));
  await client.next((p) => p.type === WispPacketType.CONTINUE && p.streamId === 0);
  return client;
}

Deno.test("wisp v1: the first message is CONTINUE on stream 0 with the buffer size, byte for byte", async () => {
  await using relay = startWispRelay({ wispBufferPackets: 200 });
  const ws = new WebSocket(url(relay));
  ws.binaryType = "arraybuffer";
  const first = await withTimeout(
    new Promise<Uint8Array>((resolve) =>
      ws.onmessage = (e) => resolve(new Uint8Array(e.data as ArrayBuffer))
    ),
    5000,
    "the handshake CONTINUE",
  );
  assert.equal(ws.protocol, "");
  assert.deepEqual([...first], [0x03, 0, 0, 0, 0, 200, 0, 0, 0]);
  const closed = new Promise((resolve) => ws.onclose = resolve);
  ws.close();
  await closed;
});

Deno.test("wisp v2: INFO first, the offered subprotocol echoed, CONTINUE after the client's INFO", async () => {
  await using relay = startWispRelay({ wispMotd: "hi" });
  await using echo = startEchoServer();
  await using client = await RawWisp.open(url(relay), ["wisp-v2"]);
  assert.equal(client.ws.protocol, "wisp-v2");
  const info = await client.next();
  assert.deepEqual(info, {
    type: WispPacketType.INFO,
    streamId: 0,
    major: 2,
    minor: 0,
    extensions: [{ kind: "udp" }, { kind: "motd", text: "hi" }, { kind: "stream-confirmation" }],
  });
  // Nothing more until the client answers.
  await delay(50);
  assert.equal(client.packets.length, 0);
  client.send(encodeWispInfo({ major: 2, minor: 0, extensions: [{ kind: "stream-confirmation" }] }));
  assert.deepEqual(await client.next(), { type: WispPacketType.CONTINUE, streamId: 0, bufferRemaining: 128 });
  // Stream open confirmation: CONTINUE on the stream once its target is connected, then the echo.
  client.send(
    encodeWispConnect(7, { streamType: WispStreamType.TCP, port: echo.port, hostname: "127.0.0.1" }),
  );
  assert.deepEqual(await client.next(), { type: WispPacketType.CONTINUE, streamId: 7, bufferRemaining: 128 });
  client.send(encodeWispData(7, bytes("ping")));
  const data = await client.next();
  assert.equal(data.type, WispPacketType.DATA);
  assert.deepEqual(data.type === WispPacketType.DATA ? [...data.data] : [], [...bytes("ping")]);
  // v2 without UDP in the client's INFO: a UDP CONNECT is invalid information.
  client.send(encodeWispConnect(9, { streamType: WispStreamType.UDP, port: 53, hostname: "127.0.0.1" }));
  assert.equal(await client.closeReason(9), WispCloseReason.INVALID_INFO);
});

Deno.test("wisp v2: a packet before the client's INFO closes the WebSocket with 1002", async () => {
  await using relay = startWispRelay();
  await using client = await RawWisp.open(url(relay), ["wisp-v2"]);
  await client.next();
  client.send(encodeWispConnect(1, { streamType: WispStreamType.TCP, port: 80, hostname: "127.0.0.1" }));
  assert.equal((await client.closed).code, 1002);
});

Deno.test("wisp v2 password auth: missing credentials 0xc2, wrong 0xc0, then close 1008", async () => {
  await using relay = startWispRelay({ wispPasswordAuth: true });
  for (
    const [extensions, reason] of [
      [[], WispCloseReason.AUTH_MISSING_CREDENTIALS],
      [
        [{ kind: "password-auth-credentials", username: "u", password: "nope" }],
        WispCloseReason.AUTH_BAD_PASSWORD,
      ],
    ] as const
  ) {
    await using client = await RawWisp.open(url(relay, "/wisp/"), ["wisp-v2"]);
    const info = await client.next();
    assert.ok(info.type === WispPacketType.INFO);
    assert.deepEqual(info.extensions.find((e) => e.kind === "password-auth-offer"), {
      kind: "password-auth-offer",
      required: true,
    });
    client.send(encodeWispInfo({ major: 2, minor: 0, extensions }));
    assert.equal(await client.closeReason(0), reason);
    assert.equal((await client.closed).code, 1008);
  }
  // The draft's own layout (username length only) works too.
  await using good = await RawWisp.open(url(relay, "/wisp/"), ["wisp-v2"]);
  await good.next();
  good.send(encodeWispInfo({
    major: 2,
    minor: 0,
    extensions: [{ kind: "password-auth-credentials", username: "u", password: TOKEN }],
  }, { passwordLayout: "username-length" }));
  assert.deepEqual(await good.next(), { type: WispPacketType.CONTINUE, streamId: 0, bufferRemaining: 128 });
});

Deno.test("wisp: close reasons for refused, unresolvable, timed out, blocked and malformed CONNECTs", async () => {
  const resolve: Resolver = (name) =>
    name === "nowhere.test" ? Promise.reject(new Deno.errors.NotFound(name)) : Promise.resolve(["127.0.0.1"]);
  // Dials to port 9 hang until the relay's connect timeout aborts them; every other port is really dialed.
  const dial: Dial = (options) =>
    options.port !== 9
      ? Deno.connect({ ...options, transport: "tcp" })
      : new Promise((_, reject) =>
        options.signal.addEventListener("abort", () => reject(options.signal.reason))
      );
  await using relay = startWispRelay({ connectTimeoutMs: 200, denyHosts: ["blocked.test"] }, {
    resolve,
    dial,
  });
  await using client = await v1(relay);
  const connect = (id: number, hostname: string, port: number) =>
    client.send(encodeWispConnect(id, { streamType: WispStreamType.TCP, port, hostname }));
  connect(1, "127.0.0.1", closedPort());
  connect(2, "nowhere.test", 80);
  connect(3, "127.0.0.1", 9);
  connect(4, "blocked.test", 80);
  client.send(
    encodeWispRawPacket({ type: WispPacketType.CONNECT, streamId: 5 }, Uint8Array.of(0x07, 80, 0, 0x61)),
  );
  connect(6, "not a host name", 80);
  assert.equal(await client.closeReason(1), WispCloseReason.CONNECTION_REFUSED);
  assert.equal(await client.closeReason(2), WispCloseReason.HOST_UNREACHABLE);
  assert.equal(await client.closeReason(3), WispCloseReason.CONNECT_TIMEOUT);
  assert.equal(await client.closeReason(4), WispCloseReason.HOST_BLOCKED);
  assert.equal(await client.closeReason(5), WispCloseReason.INVALID_INFO);
  assert.equal(await client.closeReason(6), WispCloseReason.INVALID_INFO);
  // The session is still fine.
  await using echo = startEchoServer();
  connect(8, "127.0.0.1", echo.port);
  client.send(encodeWispData(8, bytes("still here")));
  const data = await client.next((p) => p.type === WispPacketType.DATA);
  assert.ok(data.type === WispPacketType.DATA && new TextDecoder().decode(data.data) === "still here");
});

Deno.test("wisp credits: past the granted packets the stream gets CLOSE 0x49 and nothing more is queued", async () => {
  // A slow lookup keeps the stream unconnected, so every DATA packet waits in its queue.
  const resolve: Resolver = (_name, signal) =>
    new Promise((resolve, reject) => {
      const timer = setTimeout(() => resolve(["127.0.0.1"]), 300);
      signal.addEventListener("abort", () => {
        clearTimeout(timer);
        reject(signal.reason);
      }, { once: true });
    });
  await using stalled = startStalledServer();
  await using relay = startWispRelay({ wispBufferPackets: 4 }, { resolve });
  await using client = await v1(relay);
  client.send(
    encodeWispConnect(1, { streamType: WispStreamType.TCP, port: stalled.port, hostname: "slow.test" }),
  );
  for (let i = 0; i < 6; i++) client.send(encodeWispData(1, new Uint8Array(1000)));
  assert.equal(await client.closeReason(1), WispCloseReason.THROTTLED);
  assert.equal(relay.relay.metrics.rateLimited.get("wisp_credit"), 1);
  assert.ok(await waitUntil(() => relay.relay.queue.used === 0, { timeoutMs: 2000 }), "queue not released");
});

Deno.test("wisp credits: a draining queue earns a fresh CONTINUE after half the buffer is used", async () => {
  await using echo = startEchoServer();
  await using relay = startWispRelay({ wispBufferPackets: 8 });
  await using client = await v1(relay);
  client.send(
    encodeWispConnect(1, { streamType: WispStreamType.TCP, port: echo.port, hostname: "127.0.0.1" }),
  );
  let granted = 8;
  let sent = 0;
  while (sent < 40) {
    while (sent < granted) {
      client.send(encodeWispData(1, bytes("x")));
      sent++;
    }
    const grant = await client.next((p) => p.type === WispPacketType.CONTINUE && p.streamId === 1);
    assert.ok(grant.type === WispPacketType.CONTINUE);
    assert.equal(grant.bufferRemaining, 8);
    granted = sent + grant.bufferRemaining;
  }
  assert.ok(await waitUntil(() => relay.relay.metrics.bytesToTargets >= 40, { timeoutMs: 2000 }));
});

Deno.test("wisp UDP: oversized datagrams dropped and counted, idle bindings closed with 0x47", async () => {
  await using udp = await startUdpEcho();
  await using relay = startWispRelay({ udpMaxDatagramBytes: 16, udpIdleMs: 150 });
  await using client = await v1(relay);
  client.send(
    encodeWispConnect(3, { streamType: WispStreamType.UDP, port: udp.port, hostname: "127.0.0.1" }),
  );
  client.send(encodeWispData(3, new Uint8Array(17)));
  client.send(encodeWispData(3, bytes("fits")));
  const echoed = await client.next((p) => p.type === WispPacketType.DATA);
  assert.ok(echoed.type === WispPacketType.DATA && new TextDecoder().decode(echoed.data) === "fits");
  assert.equal(relay.relay.metrics.datagramsDropped.get("too_large"), 1);
  assert.equal(udp.received, 1);
  const started = performance.now();
  assert.equal(await client.closeReason(3, 3000), WispCloseReason.TRANSFER_TIMEOUT);
  assert.ok(performance.now() - started >= 100);
  assert.equal(relay.relay.metrics.udpBindingsActive, 0);
});

Deno.test("wisp credits: a stream confirmed after the client used most of its buffer still earns more", async () => {
  const resolve: Resolver = (_name, signal) =>
    new Promise((resolve, reject) => {
      const timer = setTimeout(() => resolve(["127.0.0.1"]), 200);
      signal.addEventListener("abort", () => {
        clearTimeout(timer);
        reject(signal.reason);
      }, { once: true });
    });
  await using echo = startEchoServer();
  await using relay = startWispRelay({ wispBufferPackets: 4 }, { resolve });
  await using client = await RawWisp.open(url(relay), ["wisp-v2"]);
  await client.next();
  client.send(encodeWispInfo({ major: 2, minor: 0, extensions: [{ kind: "stream-confirmation" }] }));
  await client.next((p) => p.type === WispPacketType.CONTINUE && p.streamId === 0);
  client.send(
    encodeWispConnect(1, { streamType: WispStreamType.TCP, port: echo.port, hostname: "slow.test" }),
  );
  // Three of the four packets go before the target is connected.
  for (let i = 0; i < 3; i++) client.send(encodeWispData(1, bytes("x")));
  assert.deepEqual(await client.next((p) => p.type === WispPacketType.CONTINUE && p.streamId === 1), {
    type: WispPacketType.CONTINUE,
    streamId: 1,
    bufferRemaining: 1,
  });
  // A client that believes the confirmation has one packet left; after it, the drained queue earns a buffer.
  client.send(encodeWispData(1, bytes("y")));
  assert.deepEqual(await client.next((p) => p.type === WispPacketType.CONTINUE && p.streamId === 1), {
    type: WispPacketType.CONTINUE,
    streamId: 1,
    bufferRemaining: 4,
  });
});

Deno.test("wisp credits: empty DATA packets use credit and earn it back", async () => {
  await using echo = startEchoServer();
  await using relay = startWispRelay({ wispBufferPackets: 4 });
  await using client = await v1(relay);
  client.send(
    encodeWispConnect(1, { streamType: WispStreamType.TCP, port: echo.port, hostname: "127.0.0.1" }),
  );
  client.send(encodeWispData(1, bytes("a")));
  await client.next((p) => p.type === WispPacketType.DATA);
  for (let i = 0; i < 3; i++) client.send(encodeWispData(1, new Uint8Array(0)));
  const grant = await client.next((p) => p.type === WispPacketType.CONTINUE && p.streamId === 1);
  assert.deepEqual(grant, { type: WispPacketType.CONTINUE, streamId: 1, bufferRemaining: 4 });
});

Deno.test("wisp UDP over IPv6 (::1), and the session's datagram rate", async () => {
  await using udp6 = await startUdpEcho(6);
  await using relay = startWispRelay({ udpDatagramsPerSec: 5 });
  await using client = await v1(relay);
  client.send(encodeWispConnect(2, { streamType: WispStreamType.UDP, port: udp6.port, hostname: "::1" }));
  client.send(encodeWispData(2, bytes("v6")));
  const echoed = await client.next((p) => p.type === WispPacketType.DATA);
  assert.ok(echoed.type === WispPacketType.DATA && new TextDecoder().decode(echoed.data) === "v6");
  // The burst is 5 datagrams a second, both directions together: one went out and one came back.
  for (let i = 0; i < 20; i++) client.send(encodeWispData(2, bytes(`d${i}`)));
  assert.ok(
    await waitUntil(() => (relay.relay.metrics.datagramsDropped.get("rate_limited") ?? 0) >= 10, {
      timeoutMs: 2000,
    }),
  );
  await delay(100);
  assert.ok(udp6.received <= 5, `${udp6.received} datagrams passed a rate of 5 a second`);
});

Deno.test("wisp: past the streams limit a CONNECT gets 0x49", async () => {
  await using echo = startEchoServer();
  await using relay = startWispRelay({ maxStreamsPerSession: 1 });
  await using client = await v1(relay);
  client.send(
    encodeWispConnect(1, { streamType: WispStreamType.TCP, port: echo.port, hostname: "127.0.0.1" }),
  );
  client.send(
    encodeWispConnect(2, { streamType: WispStreamType.TCP, port: echo.port, hostname: "127.0.0.1" }),
  );
  assert.equal(await client.closeReason(2), WispCloseReason.THROTTLED);
  assert.equal(relay.relay.metrics.rateLimited.get("streams"), 1);
});

Deno.test("wisp UDP: operator switch off refuses UDP CONNECTs with 0x48", async () => {
  await using udp = await startUdpEcho();
  await using relay = startWispRelay({ allowUdp: false });
  await using client = await v1(relay);
  client.send(
    encodeWispConnect(3, { streamType: WispStreamType.UDP, port: udp.port, hostname: "127.0.0.1" }),
  );
  assert.equal(await client.closeReason(3), WispCloseReason.HOST_BLOCKED);
  assert.equal(udp.received, 0);
});

Deno.test("wisp URL forms: token in the path, in the query (with client debris), as Bearer", async () => {
  await using relay = startWispRelay();
  const status = async (target: string, headers: Record<string, string> = {}) => {
    const { head } = upgradeRequest(relay.port, target, { headers });
    const { client, response } = await RawClient.request(relay.port, head);
    await client.close();
    return response.status;
  };
  assert.equal(await status(`/wisp/${TOKEN}/`), 101);
  assert.equal(await status(`/wisp/?token=${TOKEN}`), 101);
  assert.equal(await status(`/wisp/?token=${TOKEN}/`), 101);
  assert.equal(await status(`/wisp/?a=1&token=${TOKEN}&/`), 101);
  assert.equal(await status("/wisp/", { Authorization: `Bearer ${TOKEN}` }), 101);
  assert.equal(await status("/wisp/"), 401);
  assert.equal(await status("/wisp/wrong-token/"), 403);
  assert.equal(await status(`/wisp/?token=wrong`), 403);
  assert.equal(await status(`/wisp/127.0.0.1:80`), 400);
  assert.equal(await status(`/wisp/a/b/`), 404);
  // A token offered only as a subprotocol entry: never echoed, and not a Wisp version either.
  assert.equal(await status("/wisp/", { "Sec-WebSocket-Protocol": `aero-token.${TOKEN}` }), 400);
  assert.equal(await status("/wisp/", { "Sec-WebSocket-Protocol": `wisp-v2, aero-token.${TOKEN}` }), 101);
  assert.equal(await status(`/wisp/${TOKEN}/`, { Origin: "https://evil.example" }), 101);
  await using strict = startWispRelay({ allowedOrigins: ["https://app.example"] });
  const { head } = upgradeRequest(strict.port, `/wisp/${TOKEN}/`, {
    headers: { Origin: "https://evil.example" },
  });
  const { client, response } = await RawClient.request(strict.port, head);
  await client.close();
  assert.equal(response.status, 403);
});

Deno.test("parseWispRequest: the forms clients produce", () => {
  const parse = (u: string) => parseWispRequest(new URL(u, "http://relay"));
  assert.deepEqual(parse("/wisp/"), { kind: "wisp", tokens: [] });
  assert.deepEqual(parse("/wisp/abc/"), { kind: "wisp", tokens: ["abc"] });
  assert.deepEqual(parse("/wisp/a%2Fb/"), { kind: "wisp", tokens: ["a/b"] });
  assert.deepEqual(parse("/wisp/?token=abc/"), { kind: "wisp", tokens: ["abc/", "abc"] });
  assert.deepEqual(parse("/wisp/?x=1&token=abc&/"), { kind: "wisp", tokens: ["abc"] });
  assert.deepEqual(parse("/wisp/example.com:443"), { kind: "wsproxy" });
  assert.deepEqual(parse("/wisp/a/b/"), { kind: "not_found" });
  assert.deepEqual(parse("/tcp-mux"), { kind: "not_found" });
});

Deno.test("wisp: sessions count against the per-IP cap like every other protocol", async () => {
  await using relay = startWispRelay({ maxSessionsPerIp: 1 });
  await using first = await v1(relay);
  const { head } = upgradeRequest(relay.port, `/wisp/${TOKEN}/`);
  const { client, response } = await RawClient.request(relay.port, head);
  await client.close();
  assert.equal(response.status, 429);
  assert.equal(relay.relay.metrics.sessionsByProtocol.get("wisp-v1"), 1);
  assert.ok(first.ws.readyState === WebSocket.OPEN);
});

Deno.test("wisp UDP: past the bindings limit a UDP CONNECT gets 0x49, and every socket is given back", async () => {
  await using udp = await startUdpEcho();
  await using relay = startWispRelay({ udpMaxBindings: 2 });
  await using client = await v1(relay);
  for (const id of [1, 2, 3]) {
    client.send(
      encodeWispConnect(id, { streamType: WispStreamType.UDP, port: udp.port, hostname: "127.0.0.1" }),
    );
  }
  assert.equal(await client.closeReason(3), WispCloseReason.THROTTLED);
  assert.equal(relay.relay.metrics.rateLimited.get("udp_bindings"), 1);
  assert.ok(await waitUntil(() => relay.relay.metrics.udpBindingsActive === 2, { timeoutMs: 2000 }));
  const held = relay.relay.sockets.used;
  client.ws.close();
  await client.closed;
  assert.ok(await waitUntil(() => relay.relay.metrics.udpBindingsActive === 0, { timeoutMs: 2000 }));
  assert.ok(
    await waitUntil(() => relay.relay.sockets.used <= held - 2, { timeoutMs: 2000 }),
    "UDP sockets kept",
  );
});

Deno.test("wisp password mode: a request refused before the upgrade gives its place among sessions to authenticate back", async () => {
  await using relay = startWispRelay({ wispPasswordAuth: true });
  // More than the pool's 8 places per IP, each answered 426 (no Upgrade header) after the place was taken.
  for (let i = 0; i < 10; i++) {
    const head = upgradeRequest(relay.port, "/wisp/", {
      headers: { Upgrade: null, Connection: null, "Sec-WebSocket-Protocol": "wisp-v2" },
    }).head;
    const { client, response } = await RawClient.request(relay.port, head);
    await client.close();
    assert.equal(response.status, 426);
  }
  const head =
    upgradeRequest(relay.port, "/wisp/", { headers: { "Sec-WebSocket-Protocol": "wisp-v2" } }).head;
  const { client, response } = await RawClient.request(relay.port, head);
  await client.close();
  assert.equal(response.status, 101, "the pool of sessions to authenticate is not leaked");
});

Deno.test("wisp password mode: the password's token keeps its session cap (a token at its cap gets 0xc0)", async () => {
  await using relay = startWispRelay({ wispPasswordAuth: true, maxSessionsPerToken: 1 });
  const login = async () => {
    const client = await RawWisp.open(url(relay, "/wisp/"), ["wisp-v2"]);
    await client.next();
    client.send(encodeWispInfo({
      major: 2,
      minor: 0,
      extensions: [{ kind: "password-auth-credentials", username: "u", password: TOKEN }],
    }));
    return client;
  };
  await using first = await login();
  assert.deepEqual(await first.next(), { type: WispPacketType.CONTINUE, streamId: 0, bufferRemaining: 128 });
  await using second = await login();
  assert.equal(await second.closeReason(0), WispCloseReason.AUTH_BAD_PASSWORD);
  assert.equal((await second.closed).code, 1008);
  assert.equal(relay.relay.metrics.rejectedUpgrades.get("sessions_per_token"), 1);
});
