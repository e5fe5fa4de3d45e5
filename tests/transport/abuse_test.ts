/**
 * Abuse of the transport found in review, each kept as a case: pings without reading, connections reset
 * before accept or before their 101, and TLS handshakes that never finish. Each must cost the relay nothing
 * lasting and must not slow other clients down.
 */
import assert from "node:assert/strict";
import { defaultConfig } from "../../src/config.ts";
import { serveRelay } from "../../src/server.ts";
import { hasCommand, makeCertificate, report, startRelay, TOKEN } from "../_util.ts";
import { encodeFrame, Opcode, RawClient, sleep, upgradeRequest } from "./_frames.ts";
import { MUX_TARGET } from "./_relay.ts";

/** Runs a Python snippet that resets connections with SO_LINGER 0 (Deno cannot set it). */
async function python(script: string, ...args: string[]): Promise<void> {
  const output = await new Deno.Command("python3", {
    args: ["-c", script, ...args],
    stdout: "null",
    stderr: "piped",
  }).output();
  assert.ok(output.success, new TextDecoder().decode(output.stderr));
}

/** Connects N times and resets each connection; with a request head first when `head` is given. */
const RESET_SCRIPT = `
import socket, struct, sys, time
port, n, head = int(sys.argv[1]), int(sys.argv[2]), sys.argv[3]
for i in range(n):
    s = socket.create_connection(("127.0.0.1", port))
    if head:
        time.sleep(0.01)
        s.sendall(head.encode())
        time.sleep(0.001 * (i % 3))
    s.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    s.close()
`;

async function healthzMs(port: number): Promise<number> {
  const started = performance.now();
  const response = await fetch(`http://127.0.0.1:${port}/healthz`, { signal: AbortSignal.timeout(5000) });
  await response.body?.cancel();
  assert.equal(response.status, 200);
  return performance.now() - started;
}

Deno.test("a peer that pings without reading gets at most one pong queued, for the latest ping", async () => {
  await using relay = startRelay();
  const { client } = await RawClient.upgrade(relay.port, MUX_TARGET);
  await using _ = client;
  const pings = 20_000;
  const batch: Uint8Array[] = [];
  for (let i = 0; i < pings; i++) {
    batch.push(encodeFrame({ opcode: Opcode.PING, payload: String(i) }));
  }
  // 20,000 pings in a few writes, nothing read meanwhile.
  for (let i = 0; i < batch.length; i += 2000) await client.write(batch.slice(i, i + 2000));
  await sleep(300);
  const pongs: string[] = [];
  for (;;) {
    const frame = await client.readFrame(300).catch(() => null);
    if (frame === null) break;
    assert.equal(frame.opcode, Opcode.PONG);
    pongs.push(new TextDecoder().decode(frame.payload));
  }
  report(`${pings} pings unread: ${pongs.length} pongs came back, the last for ping ${pongs.at(-1)}`);
  assert.ok(pongs.length > 0 && pongs.length < pings / 10, `${pongs.length} pongs for ${pings} pings`);
  assert.equal(pongs.at(-1), String(pings - 1), "the last pong answers the last ping");
});

Deno.test("connections reset before accept returns do not hold the listener back", async (t) => {
  if (!(await hasCommand("python3"))) {
    report("skipped: python3 is not installed");
    return;
  }
  await using relay = startRelay();
  await t.step("bare connect + reset, 200 times", async () => {
    await python(RESET_SCRIPT, String(relay.port), "200", "");
    const ms = await healthzMs(relay.port);
    report(
      `after 200 connect+reset: /healthz in ${
        ms.toFixed(1)
      } ms, accept errors ${relay.relay.metrics.acceptErrors}`,
    );
    assert.ok(ms < 500, `/healthz took ${ms.toFixed(0)} ms`);
  });
  await t.step("upgrade request + reset before the 101: no session slot is kept", async () => {
    const head = new TextDecoder().decode(upgradeRequest(relay.port, MUX_TARGET).head);
    await python(RESET_SCRIPT, String(relay.port), "150", head);
    // Every session the relay set up for them ends, and their slots and counts are given back.
    const deadline = performance.now() + 5000;
    while (relay.relay.sessions.size > 0 && performance.now() < deadline) await sleep(20);
    assert.equal(relay.relay.sessions.size, 0);
    assert.equal(relay.relay.metrics.sessionsActive, 0);
    const { client } = await RawClient.upgrade(relay.port, MUX_TARGET);
    await client.close();
  });
});

Deno.test("over TLS, a client that never finishes its handshake is dropped at the header deadline", async () => {
  await using tls = await makeCertificate("aero-tls-stall-");
  if (tls === undefined) return;
  const { cert, key } = tls;
  await using relay = serveRelay(
    defaultConfig({
      port: 0,
      authTokens: [TOKEN],
      logLevel: "error",
      headerTimeoutMs: 300,
      maxPendingPerIp: 3,
    }),
    {},
    { tls: { cert, key } },
  );
  const live = relay.relay.metrics.live!;
  const stalled = await Promise.all(
    [1, 2, 3].map(() => Deno.connect({ hostname: "127.0.0.1", port: relay.port })),
  );
  try {
    await sleep(1300);
    assert.equal(live.pendingConnections(), 0, "stalled handshakes are no longer pending");
    const conn = await Deno.connectTls({ hostname: "127.0.0.1", port: relay.port, caCerts: [cert] });
    try {
      await conn.write(new TextEncoder().encode("GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n"));
      const buffer = new Uint8Array(512);
      const n = await conn.read(buffer);
      assert.match(new TextDecoder().decode(buffer.subarray(0, n ?? 0)), /^HTTP\/1\.1 200 /);
    } finally {
      conn.close();
    }
  } finally {
    for (const conn of stalled) conn.close();
  }
});
