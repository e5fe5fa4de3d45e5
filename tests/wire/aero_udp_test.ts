/**
 * Aero's `/udp` end to end with real UDP servers on loopback (`node:dgram`): the per-target form, the
 * multiplexed v1/v2 frames (IPv4 and IPv6), the control messages (ready, auth, error), the destination policy,
 * the inbound filter, the size cap and the binding idle timeout.
 */
import assert from "node:assert/strict";
import dgram from "node:dgram";
import { defaultConfig } from "../../src/config.ts";
import { type RunningRelay, serveRelay } from "../../src/server.ts";
import { decodeUdpFrame, encodeUdpFrame, ipToText } from "../../src/wire/aero_udp_codec.ts";
import { delay, TOKEN, waitUntil, withTimeout } from "../_util.ts";
import { frame, RawClient, upgradeRequest } from "../transport/_frames.ts";
import { startUdpEcho } from "./_udp.ts";

function startUdpRelay(overrides: Record<string, unknown> = {}): RunningRelay {
  return serveRelay(
    defaultConfig({ port: 0, authTokens: [TOKEN], allowPrivateIps: true, logLevel: "error", ...overrides }),
  );
}

/** A WebSocket that keeps every message, text and binary, in order. */
class UdpClient implements AsyncDisposable {
  readonly ws: WebSocket;
  readonly texts: Record<string, unknown>[] = [];
  readonly binaries: Uint8Array[] = [];
  readonly closed: Promise<CloseEvent>;

  private constructor(ws: WebSocket) {
    this.ws = ws;
    ws.binaryType = "arraybuffer";
    ws.onmessage = (event) => {
      if (typeof event.data === "string") this.texts.push(JSON.parse(event.data));
      else this.binaries.push(new Uint8Array(event.data as ArrayBuffer));
    };
    this.closed = new Promise((resolve) => ws.addEventListener("close", resolve, { once: true }));
  }

  static async open(url: string): Promise<UdpClient> {
    const client = new UdpClient(new WebSocket(url));
    await withTimeout(
      new Promise<void>((resolve, reject) => {
        client.ws.onopen = () => resolve();
        client.ws.onerror = () => reject(new Error(`WebSocket to ${url} failed`));
      }),
      5000,
      "the WebSocket to open",
    );
    return client;
  }

  async text(): Promise<Record<string, unknown>> {
    await withTimeout(
      (async () => {
        while (this.texts.length === 0) await delay(5);
      })(),
      5000,
      "a text message",
    );
    return this.texts.shift()!;
  }

  async binary(ms = 5000): Promise<Uint8Array> {
    await withTimeout(
      (async () => {
        while (this.binaries.length === 0) await delay(5);
      })(),
      ms,
      "a datagram",
    );
    return this.binaries.shift()!;
  }

  async [Symbol.asyncDispose](): Promise<void> {
    if (this.ws.readyState !== WebSocket.CLOSED) this.ws.close();
    await this.closed;
  }
}

const bytes = (text: string) => new TextEncoder().encode(text);
const loopback4 = Uint8Array.of(127, 0, 0, 1);
const loopback6 = Uint8Array.of(...new Array(15).fill(0), 1);

Deno.test("/udp per target: one datagram per message both ways; refusals are HTTP statuses", async () => {
  await using echo = await startUdpEcho();
  await using relay = startUdpRelay();
  const base = `ws://127.0.0.1:${relay.port}/udp`;
  await using client = await UdpClient.open(`${base}?host=127.0.0.1&port=${echo.port}&token=${TOKEN}`);
  for (const text of ["one", "two", "three"]) {
    client.ws.send(bytes(text));
    assert.equal(new TextDecoder().decode(await client.binary()), text);
  }
  assert.equal(client.texts.length, 0, "the per-target form sends no control messages");
  const status = async (port: number, query: string) => {
    const { head } = upgradeRequest(port, `/udp?${query}`);
    const { client: raw, response } = await RawClient.request(port, head);
    await raw.close();
    return response.status;
  };
  assert.equal(await status(relay.port, `host=127.0.0.1&port=${echo.port}`), 401);
  assert.equal(await status(relay.port, `host=127.0.0.1&port=${echo.port}&token=nope`), 403);
  assert.equal(await status(relay.port, `host=127.0.0.1&port=0&token=${TOKEN}`), 400);
  assert.equal(await status(relay.port, `token=${TOKEN}&apiKey=other`), 403);
  await using strict = startUdpRelay({ allowPrivateIps: false });
  assert.equal(await status(strict.port, `host=127.0.0.1&port=${echo.port}&token=${TOKEN}`), 403);
  assert.equal(echo.received, 3);
});

Deno.test("/udp multiplexed: ready first; v1 and v2 (IPv4, IPv6) answered in the guest's own version", async () => {
  await using echo4 = await startUdpEcho();
  await using echo6 = await startUdpEcho(6);
  await using relay = startUdpRelay();
  await using client = await UdpClient.open(`ws://127.0.0.1:${relay.port}/udp?token=${TOKEN}`);
  const ready = await client.text();
  assert.equal(ready.type, "ready");
  assert.equal(typeof ready.sessionId, "string");
  const cases = [
    { version: 1 as const, remoteIp: loopback4, remotePort: echo4.port, guestPort: 40001 },
    { version: 2 as const, remoteIp: loopback4, remotePort: echo4.port, guestPort: 40002 },
    { version: 2 as const, remoteIp: loopback6, remotePort: echo6.port, guestPort: 40003 },
  ];
  for (const frame of cases) {
    client.ws.send(
      encodeUdpFrame({ ...frame, payload: bytes(`v${frame.version} ${ipToText(frame.remoteIp)}`) }),
    );
    const reply = decodeUdpFrame(await client.binary());
    assert.ok(!("error" in reply));
    assert.equal(reply.version, frame.version);
    assert.equal(reply.guestPort, frame.guestPort);
    assert.deepEqual([...reply.remoteIp], [...frame.remoteIp]);
    assert.equal(reply.remotePort, frame.remotePort);
    assert.equal(new TextDecoder().decode(reply.payload), `v${frame.version} ${ipToText(frame.remoteIp)}`);
  }
  assert.equal(relay.relay.metrics.udpBindingsActive, 3);
  // Malformed frames and payloads over the 1,200-byte cap are dropped and counted; the session goes on.
  client.ws.send(Uint8Array.of(1, 2, 3));
  client.ws.send(encodeUdpFrame({ ...cases[0]!, payload: new Uint8Array(1201) }));
  client.ws.send(encodeUdpFrame({ ...cases[0]!, payload: bytes("after") }));
  const after = decodeUdpFrame(await client.binary());
  assert.ok(!("error" in after) && new TextDecoder().decode(after.payload) === "after");
  assert.equal(relay.relay.metrics.datagramsDropped.get("malformed"), 1);
  assert.equal(relay.relay.metrics.datagramsDropped.get("too_large"), 1);
  assert.equal(relay.relay.metrics.sessionsByProtocol.get("udp"), 1);
});

Deno.test("/udp auth: a first auth message, or error unauthorized and 1008", async () => {
  await using echo = await startUdpEcho();
  await using relay = startUdpRelay({ headerTimeoutMs: 300 });
  const url = `ws://127.0.0.1:${relay.port}/udp`;
  {
    await using client = await UdpClient.open(url);
    client.ws.send(JSON.stringify({ type: "auth", apiKey: TOKEN, token: TOKEN }));
    assert.equal((await client.text()).type, "ready");
    client.ws.send(
      encodeUdpFrame({
        version: 1,
        guestPort: 5,
        remoteIp: loopback4,
        remotePort: echo.port,
        payload: bytes("x"),
      }),
    );
    assert.ok(!("error" in decodeUdpFrame(await client.binary())));
  }
  const refusals: [string, (c: UdpClient) => void][] = [
    ["a wrong token", (c) => c.ws.send(JSON.stringify({ type: "auth", token: "nope" }))],
    [
      "token and apiKey differ",
      (c) => c.ws.send(JSON.stringify({ type: "auth", token: TOKEN, apiKey: "x" })),
    ],
    ["a datagram first", (c) => c.ws.send(new Uint8Array(9))],
    ["nothing at all", () => {}],
  ];
  for (const [what, act] of refusals) {
    await using client = await UdpClient.open(url);
    act(client);
    const error = await client.text();
    assert.equal(error.type, "error", what);
    assert.equal(error.code, "unauthorized", what);
    assert.equal((await client.closed).code, 1008, what);
  }
});

Deno.test("/udp policy and inbound filter: denied remotes dropped, replies only from the remote sent to", async () => {
  await using echo = await startUdpEcho();
  // A server that answers from a second socket (another port): not the remote the guest sent to.
  const answering = dgram.createSocket("udp4");
  const other = dgram.createSocket("udp4");
  await new Promise<void>((resolve) => answering.bind(0, "127.0.0.1", resolve));
  await new Promise<void>((resolve) => other.bind(0, "127.0.0.1", resolve));
  answering.on("message", (message, remote) => other.send(message, remote.port, remote.address));
  try {
    await using relay = startUdpRelay({ udpIdleMs: 200 });
    await using client = await UdpClient.open(`ws://127.0.0.1:${relay.port}/udp?token=${TOKEN}`);
    await client.text();
    const to = (port: number, text: string) =>
      encodeUdpFrame({
        version: 1,
        guestPort: 7,
        remoteIp: loopback4,
        remotePort: port,
        payload: bytes(text),
      });
    client.ws.send(to(answering.address().port, "from elsewhere"));
    client.ws.send(to(echo.port, "direct"));
    const reply = decodeUdpFrame(await client.binary());
    assert.ok(!("error" in reply) && new TextDecoder().decode(reply.payload) === "direct");
    await delay(100);
    assert.equal(client.binaries.length, 0, "a reply from another port was delivered");
    // Idle bindings close, and the next datagram opens a fresh one.
    assert.ok(await waitUntil(() => relay.relay.metrics.udpBindingsActive === 0, { timeoutMs: 3000 }));
    client.ws.send(to(echo.port, "again"));
    const again = decodeUdpFrame(await client.binary());
    assert.ok(!("error" in again) && new TextDecoder().decode(again.payload) === "again");
  } finally {
    await new Promise<void>((resolve) => answering.close(() => resolve()));
    await new Promise<void>((resolve) => other.close(() => resolve()));
  }
  await using strict = startUdpRelay({ allowPrivateIps: false });
  await using client = await UdpClient.open(`ws://127.0.0.1:${strict.port}/udp?token=${TOKEN}`);
  await client.text();
  client.ws.send(
    encodeUdpFrame({
      version: 1,
      guestPort: 7,
      remoteIp: loopback4,
      remotePort: echo.port,
      payload: bytes("no"),
    }),
  );
  assert.ok(
    await waitUntil(() => (strict.relay.metrics.datagramsDropped.get("refused") ?? 0) >= 1, {
      timeoutMs: 3000,
    }),
  );
  assert.equal(echo.received, 2, "the denied datagram reached the target");
});

Deno.test("/udp congestion: datagrams for a client that stops reading are dropped and counted, never queued", async () => {
  // A target that answers each datagram with a burst of 2,000 (2.4 MB), and a client that never reads.
  const burst = dgram.createSocket("udp4");
  await new Promise<void>((resolve) => burst.bind(0, "127.0.0.1", resolve));
  const reply = new Uint8Array(1200);
  burst.on("message", (_message, remote) => {
    for (let i = 0; i < 2000; i++) burst.send(reply, remote.port, remote.address);
  });
  try {
    await using relay = startUdpRelay({ udpDatagramsPerSec: 0, udpBytesPerSec: 0 });
    const { client } = await RawClient.upgrade(relay.port, `/udp?token=${TOKEN}`);
    try {
      const request = encodeUdpFrame({
        version: 1,
        guestPort: 9,
        remoteIp: loopback4,
        remotePort: burst.address().port,
        payload: bytes("go"),
      });
      for (let round = 0; round < 8; round++) {
        await client.write(frame.binary(request));
        await delay(50);
      }
      assert.ok(
        await waitUntil(() => (relay.relay.metrics.datagramsDropped.get("congested") ?? 0) > 0, {
          timeoutMs: 5000,
        }),
        `no datagram was dropped for congestion (relayed ${relay.relay.metrics.datagramsFromTargets})`,
      );
      // What waits for the client is bounded by the send buffer's mark, not by what the target sent.
      assert.ok(relay.relay.metrics.datagramsFromTargets < 8 * 2000);
    } finally {
      await client.close();
    }
  } finally {
    await new Promise<void>((resolve) => burst.close(() => resolve()));
  }
});

Deno.test("/udp without a valid token: a small pool per IP, and a wrong query token is told after the upgrade", async () => {
  await using relay = startUdpRelay();
  const url = `ws://127.0.0.1:${relay.port}/udp`;
  {
    await using wrong = await UdpClient.open(`${url}?token=nope`);
    const error = await wrong.text();
    assert.deepEqual([error.type, error.code], ["error", "unauthorized"]);
    assert.equal((await wrong.closed).code, 1008);
  }
  const waiting: UdpClient[] = [];
  try {
    for (let i = 0; i < 8; i++) waiting.push(await UdpClient.open(url));
    const { head } = upgradeRequest(relay.port, "/udp");
    const { client, response } = await RawClient.request(relay.port, head);
    await client.close();
    assert.equal(response.status, 429, "a ninth unauthenticated session from one address was accepted");
    // Authenticating frees the place at once.
    waiting[0]!.ws.send(JSON.stringify({ type: "auth", token: TOKEN }));
    assert.equal((await waiting[0]!.text()).type, "ready");
    waiting.push(await UdpClient.open(url));
  } finally {
    for (const client of waiting) await client[Symbol.asyncDispose]();
  }
});

Deno.test("/udp: an upgrade refused by a session cap gives its place in the unauthenticated pool back", async () => {
  await using relay = startUdpRelay({ maxSessionsPerIp: 1 });
  const url = `ws://127.0.0.1:${relay.port}/udp`;
  {
    await using _authenticated = await UdpClient.open(`${url}?token=${TOKEN}`);
    // More refusals than the pool has places (8 per IP): each would keep its place if it leaked.
    for (let i = 0; i < 12; i++) {
      const { head } = upgradeRequest(relay.port, "/udp");
      const { client, response } = await RawClient.request(relay.port, head);
      await client.close();
      assert.equal(response.status, 429);
    }
    assert.equal(relay.relay.metrics.rejectedUpgrades.get("sessions_per_ip"), 12);
    assert.equal(relay.relay.metrics.rejectedUpgrades.get("unauthenticated_per_ip"), undefined);
  }
  await waitUntil(() => relay.relay.sessions.size === 0, { timeoutMs: 5000, intervalMs: 10 });
  await using waiting = await UdpClient.open(url);
  waiting.ws.send(JSON.stringify({ type: "auth", token: TOKEN }));
  assert.equal((await waiting.text()).type, "ready");
});

Deno.test("/udp authenticated in band takes on its token's limits: the session cap, and the byte quota", async (t) => {
  await using echo = await startUdpEcho();
  await t.step("a token at its session cap cannot authenticate one more session in band", async () => {
    await using relay = startUdpRelay({ maxSessionsPerToken: 1 });
    const url = `ws://127.0.0.1:${relay.port}/udp`;
    await using first = await UdpClient.open(`${url}?token=${TOKEN}`);
    assert.equal((await first.text()).type, "ready");
    await using second = await UdpClient.open(url);
    second.ws.send(JSON.stringify({ type: "auth", token: TOKEN }));
    const answer = await second.text();
    assert.deepEqual([answer.type, answer.code], ["error", "unauthorized"]);
    assert.equal((await second.closed).code, 1008);
    assert.equal(relay.relay.metrics.rejectedUpgrades.get("sessions_per_token"), 1);
  });
  await t.step("datagrams of a session authenticated in band count against the quota", async () => {
    await using relay = startUdpRelay({ tokenByteQuota: 4096 });
    await using client = await UdpClient.open(`ws://127.0.0.1:${relay.port}/udp`);
    client.ws.send(JSON.stringify({ type: "auth", token: TOKEN }));
    assert.equal((await client.text()).type, "ready");
    const frame = { version: 2 as const, remoteIp: loopback4, remotePort: echo.port, guestPort: 40100 };
    // 1,000 bytes each way per datagram: the quota of 4,096 is spent within three round trips.
    for (let i = 0; i < 8 && client.ws.readyState === WebSocket.OPEN; i++) {
      client.ws.send(encodeUdpFrame({ ...frame, payload: new Uint8Array(1000) }));
      await delay(20);
    }
    const closed = await withTimeout(client.closed, 3000, "closed for the quota");
    assert.equal(closed.code, 1008);
    assert.match(closed.reason, /byte quota/);
  });
});
