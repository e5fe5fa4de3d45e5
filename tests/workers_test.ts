/**
 * AERO_PROXY_WORKERS=2: the supervisor and its workers as real processes, started through the `deno task start`
 * command line (network narrowed to loopback, as every relay in the tests).
 */
import assert from "node:assert/strict";
import { RelayClient } from "../src/client/mod.ts";
import { type RelayProcess, runToEnd, spawnRelay } from "./_process.ts";
import { MuxClient, muxUrl, startEchoServer, TOKEN, waitUntil, withTimeout } from "./_util.ts";

const WORKERS_ENV = {
  AERO_PROXY_AUTH_TOKEN: TOKEN,
  AERO_PROXY_ALLOW_PRIVATE_IPS: "1",
  AERO_PROXY_WORKERS: "2",
};

type Props = Record<string, unknown>;

function events(relay: RelayProcess, event: string): Props[] {
  return relay.logs.map((r) => r.properties as Props).filter((p) => p?.event === event);
}

/** The pid of the process now in worker slot `index`, from the supervisor's `worker_started` lines. */
function workerPid(relay: RelayProcess, index: number): number | undefined {
  return events(relay, "worker_started").filter((p) => p.worker === index).at(-1)?.pid as number | undefined;
}

async function get(port: number, path: string, token?: string): Promise<{ status: number; body: string }> {
  const response = await fetch(`http://127.0.0.1:${port}${path}`, {
    headers: token === undefined ? {} : { authorization: `Bearer ${token}` },
    signal: AbortSignal.timeout(10_000),
  });
  return { status: response.status, body: await response.text() };
}

/** The value of one series in an exposition (`name` with its labels, as written), or `undefined`. */
function sample(exposition: string, series: string): number | undefined {
  const line = exposition.split("\n").find((l) => l.startsWith(`${series} `));
  return line === undefined ? undefined : Number(line.slice(series.length + 1));
}

async function scrape(port: number): Promise<string> {
  const { status, body } = await get(port, "/metrics", TOKEN);
  assert.equal(status, 200, body);
  return body;
}

async function waitReady(port: number, what: string): Promise<void> {
  const ready = await waitUntil(async () => (await get(port, "/readyz")).status === 200, {
    timeoutMs: 20_000,
    intervalMs: 50,
  });
  assert.ok(ready, `${what}: /readyz never answered 200`);
}

/** Proves a session relays: one stream to the echo server, 3 bytes there and back. */
async function echoThrough(client: MuxClient, id: number, echoPort: number): Promise<void> {
  await client.open(id, echoPort);
  client.sendData(id, new Uint8Array([id, 2, 3]));
  assert.deepEqual(await client.readBytes(id, 3), new Uint8Array([id, 2, 3]));
}

Deno.test("workers: both processes take sessions, and one scrape of either port shows the sum", async () => {
  await using echo = startEchoServer();
  await using relay = await spawnRelay({ ...WORKERS_ENV, AERO_PROXY_METRICS_PORT: "0" });
  await waitReady(relay.port, "start");
  const supervisor = events(relay, "supervising")[0];
  assert.ok(supervisor !== undefined, "the supervisor logs supervising");
  const metricsPort = supervisor.metricsPort as number;
  const pids = [workerPid(relay, 0), workerPid(relay, 1)];
  assert.ok(pids.every((pid) => pid !== undefined && pid !== relay.pid), `two worker pids: ${pids}`);
  assert.notEqual(pids[0], pids[1]);
  const listening = events(relay, "listening");
  assert.deepEqual(listening.map((p) => p.port), [relay.port, relay.port], "both listen on the same port");

  // Each session is a connection of its own; the kernel spreads them by their 4-tuple (1 in 2^15 that one
  // worker gets all 16).
  const sessions = 16;
  const clients: MuxClient[] = [];
  try {
    for (let i = 0; i < sessions; i++) {
      const client = await MuxClient.connect(muxUrl(relay.port));
      clients.push(client);
      await echoThrough(client, i + 1, echo.port);
    }
    for (const port of [relay.port, metricsPort]) {
      const text = port === metricsPort ? (await get(port, "/metrics")).body : await scrape(port);
      assert.equal(sample(text, "aero_proxy_sessions_active"), sessions, text);
      assert.equal(sample(text, "aero_proxy_sessions_total"), sessions);
      assert.equal(sample(text, "aero_proxy_streams_total"), sessions);
      assert.equal(sample(text, "aero_proxy_workers"), 2);
      assert.equal(sample(text, "aero_proxy_worker_restarts_total"), 0);
      // Build information is one series of 1, not one per worker.
      assert.match(text, /^aero_proxy_info\{version="[^"]+",deno="[^"]+"\} 1$/m);
      const perWorker = [0, 1].map((w) => sample(text, `aero_proxy_worker_sessions_active{worker="${w}"}`));
      assert.ok(
        perWorker.every((n) => n !== undefined && n > 0),
        `both workers serve sessions: ${perWorker}`,
      );
      assert.equal(perWorker[0]! + perWorker[1]!, sessions);
    }
    assert.equal((await get(metricsPort, "/readyz")).status, 200);
    // The token still guards /metrics on the relay port.
    assert.equal((await get(relay.port, "/metrics")).status, 401);
  } finally {
    for (const client of clients) await client[Symbol.asyncDispose]();
  }
});

Deno.test("workers: a killed worker is replaced, counted, and the relay keeps serving", async () => {
  await using echo = startEchoServer();
  await using relay = await spawnRelay(WORKERS_ENV);
  await waitReady(relay.port, "start");
  const victim = workerPid(relay, 0)!;
  const survivor = workerPid(relay, 1)!;
  Deno.kill(victim, "SIGKILL");
  const replaced = await waitUntil(() => (workerPid(relay, 0) ?? victim) !== victim, {
    timeoutMs: 20_000,
    intervalMs: 20,
  });
  assert.ok(replaced, "worker 0 started again");
  assert.notEqual(workerPid(relay, 0), survivor);
  const exited = events(relay, "worker_exited").find((p) => p.pid === victim);
  assert.equal(exited?.signal, "SIGKILL");
  await waitReady(relay.port, "after the restart");
  for (let i = 0; i < 8; i++) {
    await using client = await MuxClient.connect(muxUrl(relay.port));
    await echoThrough(client, 1, echo.port);
  }
  const text = await scrape(relay.port);
  assert.equal(sample(text, "aero_proxy_worker_restarts_total"), 1);
  assert.equal(sample(text, "aero_proxy_workers"), 2);
  assert.equal(relay.exited(), undefined, "the supervisor runs on");
});

Deno.test("workers: SIGTERM to the supervisor drains every worker (readyz 503, sessions closed 1001), exit 0", async () => {
  await using relay = await spawnRelay({
    ...WORKERS_ENV,
    AERO_PROXY_SHUTDOWN_GRACE_MS: "1500",
    AERO_PROXY_METRICS_PORT: "0",
  });
  await waitReady(relay.port, "start");
  const metricsPort = events(relay, "supervising")[0]!.metricsPort as number;
  const clients: RelayClient[] = [];
  for (let i = 0; i < 6; i++) {
    const client = new RelayClient(muxUrl(relay.port, null), { token: TOKEN });
    clients.push(client);
    await client.ready;
  }
  relay.kill("SIGTERM");
  const draining = await waitUntil(async () => (await get(relay.port, "/readyz")).status === 503, {
    timeoutMs: 1000,
    intervalMs: 20,
  });
  assert.ok(draining, "a worker's /readyz answers 503 while it drains");
  assert.equal((await get(metricsPort, "/readyz")).status, 503);
  for (const client of clients) {
    const ended = await withTimeout(client.closed, 10_000, "the session to close");
    assert.equal(ended.closeCode, 1001);
  }
  assert.equal((await relay.status).code, 0);
  const stopped = events(relay, "worker_stopped");
  assert.deepEqual(stopped.map((p) => p.worker).sort(), [0, 1]);
  assert.ok(stopped.every((p) => p.code === 0), JSON.stringify(stopped));
  assert.equal(events(relay, "worker_exited").length, 0, "no worker counted as crashed");
});

Deno.test("workers: a bad AERO_PROXY_WORKERS exits 2 naming it; a worker that cannot listen stops the supervisor with 2", async () => {
  const bad = await runToEnd({ AERO_PROXY_WORKERS: "0" });
  assert.equal(bad.code, 2);
  assert.match(bad.stderr, /AERO_PROXY_WORKERS must be auto or a positive integer up to 64, got "0"/);
  const taken = Deno.listen({ hostname: "127.0.0.1", port: 0 });
  try {
    const busy = await runToEnd({ ...WORKERS_ENV, AERO_PROXY_PORT: String(taken.addr.port) });
    assert.equal(busy.code, 2, busy.stderr);
    assert.match(busy.stderr, /cannot listen on 127\.0\.0\.1:\d+/);
    assert.match(busy.stdout, /"event":"worker_refused_configuration"/);
  } finally {
    taken.close();
  }
});
