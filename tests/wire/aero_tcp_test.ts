/**
 * Aero's `/tcp`: one TCP connection per WebSocket, raw bytes, the target in the URL and checked before the
 * upgrade. Real WebSockets (Deno's) and real TCP targets on loopback.
 */
import assert from "node:assert/strict";
import { defaultConfig } from "../../src/config.ts";
import { serveRelay } from "../../src/server.ts";
import { parseTcpTarget } from "../../src/wire/aero_tcp.ts";
import {
  closedPort,
  concat,
  startEchoServer,
  startRelay,
  startTcpServer,
  TOKEN,
  withTimeout,
} from "../_util.ts";

/** Opens `/tcp?<query>`; resolves with the socket once open, or with the HTTP status the upgrade got. */
async function openTcp(port: number, query: string): Promise<WebSocket | number> {
  const response = await fetch(`http://127.0.0.1:${port}/tcp?token=${TOKEN}&${query}`, {
    headers: {
      upgrade: "websocket",
      connection: "Upgrade",
      "sec-websocket-version": "13",
      "sec-websocket-key": "dGhlIHNhbXBsZSBub25jZQ==",
    },
  }).catch(() => undefined);
  if (response !== undefined && response.status !== 101) {
    await response.body?.cancel();
    return response.status;
  }
  await response?.body?.cancel();
  const ws = new WebSocket(`ws://127.0.0.1:${port}/tcp?token=${TOKEN}&${query}`);
  ws.binaryType = "arraybuffer";
  await new Promise<void>((resolve, reject) => {
    ws.onopen = () => resolve();
    ws.onerror = () => reject(new Error("WebSocket failed"));
  });
  return ws;
}

/** Collects what arrives until the close, and the close code. */
function collect(ws: WebSocket): Promise<{ data: Uint8Array; code: number; reason: string }> {
  const parts: Uint8Array[] = [];
  ws.onmessage = (event) => parts.push(new Uint8Array(event.data as ArrayBuffer));
  return new Promise((resolve) => {
    ws.onclose = (event) => resolve({ data: concat(parts), code: event.code, reason: event.reason });
  });
}

Deno.test("/tcp: target parsing (target wins; IPv6 in brackets; v=1 only)", () => {
  const q = (s: string) => parseTcpTarget(new URLSearchParams(s));
  assert.deepEqual(q("host=example.com&port=443"), { host: "example.com", port: 443 });
  assert.deepEqual(q("v=1&host=[::1]&port=80"), { host: "::1", port: 80 });
  assert.deepEqual(q("host=a.test&port=1&target=[2001:db8::1]:8080"), { host: "2001:db8::1", port: 8080 });
  assert.deepEqual(q("target=127.0.0.1:7"), { host: "127.0.0.1", port: 7 });
  for (
    const bad of [
      "v=2&host=a&port=1",
      "host=a",
      "port=1",
      "host=a&port=0",
      "host=a&port=65536",
      "target=::1:80",
      "target=a",
    ]
  ) {
    assert.ok("error" in q(bad), bad);
  }
});

Deno.test("/tcp: echo by host and port, and by target; text is forwarded as UTF-8", async () => {
  await using relay = startRelay();
  await using echo = startEchoServer();
  for (const query of [`v=1&host=127.0.0.1&port=${echo.port}`, `target=localhost:${echo.port}`]) {
    const ws = await openTcp(relay.port, query);
    assert.ok(ws instanceof WebSocket, `${query}: ${ws}`);
    const done = collect(ws);
    ws.send(new TextEncoder().encode("bin-"));
    ws.send("text");
    const want = "bin-text";
    const got: Uint8Array[] = [];
    await withTimeout(
      new Promise<void>((resolve) => {
        ws.onmessage = (event) => {
          got.push(new Uint8Array(event.data as ArrayBuffer));
          if (new TextDecoder().decode(concat(got)) === want) resolve();
        };
      }),
      5000,
      "the echo",
    );
    ws.close(1000);
    await done;
  }
});

Deno.test("/tcp: refused targets get an HTTP status before any WebSocket", async () => {
  await using relay = startRelay({ allowPrivateIps: false, allowCidrs: ["127.0.0.1/32"] });
  assert.equal(await openTcp(relay.port, "host=10.0.0.1&port=80"), 403);
  assert.equal(await openTcp(relay.port, "host=%5Bfe80%3A%3A1%5D&port=80"), 403);
  assert.equal(await openTcp(relay.port, "host=127.0.0.1&port=25"), 403);
  assert.equal(await openTcp(relay.port, "host=bad_name!&port=80"), 400);
  assert.equal(await openTcp(relay.port, "host=127.0.0.1"), 400);
  assert.equal(await openTcp(relay.port, "v=2&host=127.0.0.1&port=80"), 400);
});

Deno.test("/tcp: the target's close ends the WebSocket after its last byte (1000); a failed connect is 1011", async () => {
  await using relay = startRelay();
  await using target = startTcpServer(async (conn) => {
    await conn.write(new TextEncoder().encode("goodbye"));
  });
  const ws = await openTcp(relay.port, `host=127.0.0.1&port=${target.port}`);
  assert.ok(ws instanceof WebSocket);
  const { data, code } = await withTimeout(collect(ws), 5000, "the close");
  assert.equal(new TextDecoder().decode(data), "goodbye");
  assert.equal(code, 1000);

  const refused = await openTcp(relay.port, `host=127.0.0.1&port=${closedPort()}`);
  assert.ok(refused instanceof WebSocket);
  const closed = await withTimeout(collect(refused), 5000, "the close");
  assert.equal(closed.code, 1011);
  assert.match(closed.reason, /Cannot connect/);
});

Deno.test("/tcp: a request that could not become a session never costs a name lookup", async () => {
  let lookups = 0;
  const resolve = () => {
    lookups++;
    return Promise.resolve(["127.0.0.1"]);
  };
  await using echo = startEchoServer();
  await using relay = serveRelay(
    defaultConfig({
      port: 0,
      authTokens: [TOKEN],
      allowPrivateIps: true,
      logLevel: "warning",
      maxSessionsPerIp: 1,
    }),
    { resolve },
  );
  const held = await openTcp(relay.port, `host=echo.test&port=${echo.port}`);
  assert.ok(held instanceof WebSocket);
  // openTcp probes with a plain request before the WebSocket: each looked the name up once.
  const before = lookups;
  assert.ok(before >= 1);
  // Over the per-IP cap: 429 before any lookup; a broken handshake: 400 before any lookup.
  assert.equal(await openTcp(relay.port, `host=echo.test&port=${echo.port}`), 429);
  held.close();
  await new Promise((resolve) => held.onclose = resolve);
  const broken = await fetch(
    `http://127.0.0.1:${relay.port}/tcp?token=${TOKEN}&host=echo.test&port=${echo.port}`,
    {
      headers: { upgrade: "websocket", connection: "Upgrade", "sec-websocket-version": "13" },
    },
  );
  await broken.body?.cancel();
  assert.equal(broken.status, 400);
  assert.equal(lookups, before, "no lookup for a capped or broken request");
});
