/**
 * Operating the relay: health, readiness, metrics, graceful shutdown, TLS, the healthcheck command, log formats,
 * the single binary and the Docker image's shape.
 */
import assert from "node:assert/strict";
import denoJson from "../deno.json" with { type: "json" };
import { OPTIONS } from "../src/config.ts";
import { encodeOpen, FrameType } from "../src/protocol/mod.ts";
import { runToEnd, spawnRelay, startCommand } from "./_process.ts";
import { RawWebSocket } from "./_raw_ws.ts";
import {
  delay,
  LOOPBACK,
  makeCertificate,
  MuxClient,
  muxUrl,
  report,
  startEchoServer,
  startRelay,
  TOKEN,
  withTimeout,
} from "./_util.ts";

async function get(
  url: string,
  init: RequestInit = {},
): Promise<{ status: number; body: string; type: string }> {
  const response = await fetch(url, init);
  return {
    status: response.status,
    body: await response.text(),
    type: response.headers.get("content-type") ?? "",
  };
}

/** The value of one sample line of a Prometheus exposition, e.g. `aero_proxy_sessions_total`. */
function sample(exposition: string, series: string): number | undefined {
  const line = exposition.split("\n").find((l) => l.startsWith(`${series} `));
  return line === undefined ? undefined : Number(line.slice(series.length + 1));
}

Deno.test("health, readiness and token-protected metrics on the main listener", async (t) => {
  await using echo = startEchoServer();
  await using relay = startRelay({ allowPrivateIps: false, allowCidrs: ["127.0.0.1/32"] });
  const base = `http://127.0.0.1:${relay.port}`;
  await t.step("healthz and readyz", async () => {
    assert.deepEqual(await get(`${base}/healthz`), {
      status: 200,
      body: "ok\n",
      type: "text/plain; charset=utf-8",
    });
    assert.equal((await get(`${base}/readyz`)).status, 200);
    assert.equal((await get(`${base}/nothing-here`)).status, 404);
    assert.equal((await get(`${base}/healthz`, { method: "POST" })).status, 405);
  });
  await t.step("metrics need the token as a Bearer header", async () => {
    assert.equal((await get(`${base}/metrics`)).status, 401);
    assert.equal((await get(`${base}/metrics`, { headers: { authorization: "Bearer wrong" } })).status, 403);
    assert.equal((await get(`${base}/metrics?token=${TOKEN}`)).status, 401, "no query tokens for metrics");
  });
  await t.step("metrics count what happened", async () => {
    {
      await using client = await MuxClient.connect(muxUrl(relay.port));
      await client.open(1, echo.port);
      client.sendData(1, new Uint8Array(100));
      await client.readBytes(1, 100);
      client.sendClose(1);
      await client.next(1);
      client.send(encodeOpen(2, [10, 0, 0, 1], 80));
      assert.equal((await client.next(2)).type, FrameType.ERROR);
    }
    await withTimeout(
      (async () => {
        while (relay.relay.metrics.sessionsActive > 0) await delay(10);
      })(),
      2000,
      "the session to end",
    );
    const { status, body, type } = await get(`${base}/metrics`, {
      headers: { authorization: `Bearer ${TOKEN}` },
    });
    assert.equal(status, 200);
    assert.match(type, /^text\/plain; version=0\.0\.4/);
    assert.equal(sample(body, "aero_proxy_sessions_total"), 1);
    assert.equal(sample(body, "aero_proxy_sessions_active"), 0);
    assert.equal(sample(body, "aero_proxy_streams_total"), 1);
    assert.equal(sample(body, 'aero_proxy_streams_closed_total{reason="client_close"}'), 1);
    assert.equal(sample(body, 'aero_proxy_target_bytes_total{direction="to_target"}'), 100);
    assert.equal(sample(body, 'aero_proxy_target_bytes_total{direction="from_target"}'), 100);
    assert.equal(sample(body, 'aero_proxy_policy_denied_total{rule="special_range"}'), 1);
    assert.equal(sample(body, 'aero_proxy_errors_sent_total{code="POLICY_DENIED"}'), 1);
    assert.equal(sample(body, "aero_proxy_connect_duration_seconds_count"), 1);
    assert.equal(sample(body, "aero_proxy_stream_duration_seconds_count"), 1);
    assert.equal(sample(body, "aero_proxy_auth_failures_total"), 3, "the refused metrics scrapes count too");
    assert.ok((sample(body, "process_resident_memory_bytes") ?? 0) > 1_000_000);
    assert.ok((sample(body, 'aero_proxy_websocket_frames_total{direction="from_client"}') ?? 0) >= 4);
  });
});

Deno.test("a separate metrics listener serves /metrics, /healthz and /readyz without a token", async () => {
  await using relay = startRelay({ metricsPort: 0 });
  assert.ok(relay.metricsPort !== undefined && relay.metricsPort !== relay.port);
  const base = `http://127.0.0.1:${relay.metricsPort}`;
  const metrics = await get(`${base}/metrics`);
  assert.equal(metrics.status, 200);
  assert.match(metrics.body, /^aero_proxy_sessions_active 0$/m);
  assert.equal((await get(`${base}/healthz`)).status, 200);
  assert.equal(
    (await get(`${base}/tcp-mux?token=${TOKEN}`)).status,
    404,
    "no sessions on the metrics listener",
  );
  assert.equal((await get(`http://127.0.0.1:${relay.port}/metrics`)).status, 401);
});

Deno.test("graceful shutdown: SIGTERM refuses new sessions, lets open streams finish, then closes with 1001", async () => {
  await using echo = startEchoServer();
  const grace = 1500;
  await using relay = await spawnRelay({
    AERO_PROXY_AUTH_TOKEN: TOKEN,
    AERO_PROXY_ALLOW_PRIVATE_IPS: "1",
    AERO_PROXY_SHUTDOWN_GRACE_MS: String(grace),
  });
  const client = await MuxClient.connect(muxUrl(relay.port));
  await client.open(1, echo.port);
  const signalled = performance.now();
  relay.kill("SIGTERM");
  await withTimeout(
    (async () => {
      while ((await get(`http://127.0.0.1:${relay.port}/readyz`)).status !== 503) await delay(20);
    })(),
    3000,
    "readyz to turn 503",
  );
  assert.equal(
    (await get(`http://127.0.0.1:${relay.port}/healthz`)).status,
    200,
    "still alive while draining",
  );
  await assert.rejects(MuxClient.connect(muxUrl(relay.port)), /WebSocket failed/, "new sessions are refused");
  // The open stream keeps working during the grace period.
  for (let i = 0; i < 5; i++) {
    client.sendData(1, new Uint8Array([i]));
    assert.deepEqual(await client.readBytes(1, 1), new Uint8Array([i]));
    await delay(100);
  }
  const event = await withTimeout(client.closed, grace + 5000, "the session to be closed");
  const closedAfter = performance.now() - signalled;
  assert.equal(event.code, 1001);
  assert.ok(closedAfter >= grace - 100, `closed after ${closedAfter.toFixed(0)} ms, before the grace period`);
  const status = await withTimeout(relay.status, 5000, "the relay to exit");
  assert.equal(status.code, 0);
  report(
    `graceful shutdown: session closed with 1001 after ${
      closedAfter.toFixed(0)
    } ms (grace ${grace} ms), exit 0`,
  );
});

Deno.test("graceful shutdown ends early when the last session leaves; a second signal exits at once", async (t) => {
  await t.step("early end", async () => {
    await using relay = await spawnRelay({
      AERO_PROXY_AUTH_TOKEN: TOKEN,
      AERO_PROXY_SHUTDOWN_GRACE_MS: "30000",
    });
    const client = await MuxClient.connect(muxUrl(relay.port));
    relay.kill("SIGTERM");
    await delay(200);
    const started = performance.now();
    client.ws.close();
    await client.closed;
    assert.equal((await withTimeout(relay.status, 5000, "exit")).code, 0);
    assert.ok(performance.now() - started < 5000);
  });
  await t.step("second signal", async () => {
    await using relay = await spawnRelay({
      AERO_PROXY_AUTH_TOKEN: TOKEN,
      AERO_PROXY_SHUTDOWN_GRACE_MS: "30000",
    });
    await using _client = await MuxClient.connect(muxUrl(relay.port));
    relay.kill("SIGTERM");
    await delay(300);
    relay.kill("SIGINT");
    assert.equal((await withTimeout(relay.status, 5000, "a forced exit")).code, 130);
  });
});

Deno.test("TLS: wss:// and https:// with a certificate made at test time", async (t) => {
  await using tls = await makeCertificate("aero-tls-");
  if (tls === undefined) return;
  const { cert } = tls;
  await using echo = startEchoServer();
  await using relay = await spawnRelay(
    {
      AERO_PROXY_AUTH_TOKEN: TOKEN,
      AERO_PROXY_ALLOW_PRIVATE_IPS: "1",
      AERO_PROXY_TLS_CERT_FILE: tls.certFile,
      AERO_PROXY_TLS_KEY_FILE: tls.keyFile,
    },
    [],
    { denoFlags: [`--allow-read=${tls.dir}`] },
  );
  const listening = relay.logs.find((r) => (r.properties as Record<string, unknown>).event === "listening");
  assert.match(String((listening?.properties as Record<string, unknown>).url), /^wss:\/\//);
  await t.step("https /healthz", async () => {
    using client = Deno.createHttpClient({ caCerts: [cert] });
    const response = await fetch(`https://127.0.0.1:${relay.port}/healthz`, { client });
    assert.equal(await response.text(), "ok\n");
  });
  await t.step("a wss:// session relays", async () => {
    await using ws = await RawWebSocket.connect(relay.port, `/tcp-mux?token=${TOKEN}`, {}, {
      tls: { caCerts: [cert] },
    });
    await ws.send(encodeOpen(1, LOOPBACK, echo.port));
    assert.equal((await ws.read())?.payload[0], FrameType.OPEN);
    await ws.send(new Uint8Array([2, 0, 0, 0, 1, 42]));
    const data = await ws.read();
    assert.deepEqual(data?.payload, new Uint8Array([2, 0, 0, 0, 1, 42]));
  });
  await t.step("plain ws:// to the TLS port fails", async () => {
    await assert.rejects(RawWebSocket.connect(relay.port, `/tcp-mux?token=${TOKEN}`));
  });
});

Deno.test("TLS needs both files, readable", async () => {
  const one = await runToEnd({ AERO_PROXY_TLS_CERT_FILE: "/nonexistent/cert.pem" });
  assert.equal(one.code, 2);
  assert.match(one.stderr, /AERO_PROXY_TLS_CERT_FILE and AERO_PROXY_TLS_KEY_FILE must be set together/);
  const unreadable = await runToEnd({
    AERO_PROXY_TLS_CERT_FILE: "/nonexistent/cert.pem",
    AERO_PROXY_TLS_KEY_FILE: "/nonexistent/key.pem",
  });
  assert.equal(unreadable.code, 2);
  assert.match(unreadable.stderr, /AERO_PROXY_TLS_CERT_FILE "\/nonexistent\/cert\.pem" cannot be read/);
});

Deno.test("--healthcheck exits 0 against a live relay and 1 against nothing", async () => {
  await using relay = await spawnRelay({ AERO_PROXY_AUTH_TOKEN: TOKEN });
  const live = await runToEnd({ AERO_PROXY_PORT: String(relay.port) }, ["--healthcheck"]);
  assert.equal(live.code, 0, live.stderr);
  const { closedPort } = await import("./_util.ts");
  const dead = await runToEnd({ AERO_PROXY_PORT: String(closedPort()) }, ["--healthcheck"]);
  assert.equal(dead.code, 1);
  assert.match(dead.stderr, /unhealthy/);
});

Deno.test("--log-format=pretty writes readable lines instead of JSON", async () => {
  const { cmd, args } = startCommand();
  const child = new Deno.Command(cmd, {
    args: [...args, "--log-format=pretty", "--port=0"],
    env: { AERO_PROXY_AUTH_TOKEN: TOKEN, NO_COLOR: "1" },
    stdout: "piped",
    stderr: "null",
  }).spawn();
  const reader = child.stdout.pipeThrough(new TextDecoderStream()).getReader();
  let text = "";
  try {
    await withTimeout(
      (async () => {
        while (!text.includes("\n")) {
          const { value, done } = await reader.read();
          if (done) break;
          text += value;
        }
      })(),
      20_000,
      "the first log line",
    );
  } finally {
    child.kill("SIGTERM");
    await reader.cancel();
    await child.status;
  }
  const line = text.split("\n")[0]!;
  assert.throws(() => JSON.parse(line), "a pretty line is not JSON");
  assert.match(line, /INF.*listening.*port=\d+/);
  assert.ok(!line.includes(TOKEN));
});

Deno.test("README documents every option, its flag and its default", async () => {
  const readme = await Deno.readTextFile(new URL("../README.md", import.meta.url));
  for (const option of OPTIONS) {
    const row = readme.split("\n").find((line) => line.startsWith(`| \`${option.env}\``));
    assert.ok(row !== undefined, `README has no row for ${option.env}`);
    assert.ok(row.includes(`\`--${option.flag}\``), `README row for ${option.env} lacks --${option.flag}`);
    if (option.default !== "") {
      assert.ok(row.includes(`\`${option.default}\``), `README row for ${option.env} lacks its default`);
    }
  }
});

Deno.test("the Dockerfile builds with pinned Deno 2.9.6, runs the binary as non-root, with a HEALTHCHECK", async () => {
  // Continuation lines joined, so that each instruction is one line.
  const dockerfile = (await Deno.readTextFile(new URL("../Dockerfile", import.meta.url))).replaceAll(
    "\\\n",
    " ",
  );
  const stages = dockerfile.split("\n").filter((l) => /^FROM /i.test(l));
  assert.ok(stages.length >= 2, "multi-stage");
  assert.match(stages[0]!, /^FROM denoland\/deno:2\.9\.6 AS build$/);
  // `deno task compile`'s own command, with private addresses left open only when SANDBOX_EXCEPT names some.
  assert.match(dockerfile, /^ARG SANDBOX_EXCEPT=""$/m);
  assert.match(
    dockerfile,
    /^RUN deno run --allow-read --allow-run tools\/compile\.ts --sandbox-except="\$\{SANDBOX_EXCEPT\}"$/m,
  );
  assert.match(dockerfile, /^COPY --from=build \/app\/dist\/aero-net-proxy /m);
  const user = /^USER (\S+)$/m.exec(dockerfile)?.[1];
  assert.ok(user !== undefined && user !== "root" && user !== "0", "runs as a non-root user");
  assert.match(dockerfile, /AERO_PROXY_HOST=0\.0\.0\.0/);
  assert.match(dockerfile, /^EXPOSE 8080$/m);
  assert.match(dockerfile, /^HEALTHCHECK .*--healthcheck/m);
  assert.match(dockerfile, /^ENTRYPOINT \["\/usr\/local\/bin\/aero-net-proxy"\]$/m);
  assert.ok(denoJson.tasks.compile.includes("--output dist/aero-net-proxy"));
});

Deno.test("the compiled binary runs with its embedded permissions (needs DENORT_BIN)", async (t) => {
  // Read only if this run may read it (deno task test grants it), so that any other run skips instead of failing.
  const readable = Deno.permissions.querySync({ name: "env", variable: "DENORT_BIN" }).state === "granted";
  const denort = readable ? Deno.env.get("DENORT_BIN") : undefined;
  if (denort === undefined || denort === "") {
    report(
      "skipped: deno compile downloads its denort runtime from a host this machine cannot reach; " +
        "set DENORT_BIN to a denort binary to run this test",
    );
    return;
  }
  const dir = await Deno.makeTempDir({ prefix: "aero-compile-" });
  try {
    // The compile task's exact flags, with the network narrowed to loopback as every relay in a test is.
    const words = denoJson.tasks.compile.split(/\s+/).map((w) => w.replaceAll("'", ""));
    const args = words.slice(1).map((w) => (w === "--allow-net" ? "--allow-net=127.0.0.0/8" : w))
      .map((w) => (w === "dist/aero-net-proxy" ? `${dir}/aero-net-proxy` : w));
    const built = await new Deno.Command(Deno.execPath(), {
      args,
      env: { DENORT_BIN: denort },
      stderr: "piped",
    })
      .output();
    assert.ok(built.success, new TextDecoder().decode(built.stderr));
    const binary = `${dir}/aero-net-proxy`;
    await t.step("--version and --help", async () => {
      const version = await new Deno.Command(binary, { args: ["--version"], stdout: "piped" }).output();
      assert.match(
        new TextDecoder().decode(version.stdout),
        new RegExp(`aero-net-proxy ${denoJson.version}`),
      );
      const help = await new Deno.Command(binary, { args: ["--help"], stdout: "piped" }).output();
      assert.match(new TextDecoder().decode(help.stdout), /AERO_PROXY_AUTH_TOKEN/);
    });
    await t.step("it relays, and its sandbox refuses 127.0.0.2", async () => {
      await using echo = startEchoServer();
      const child = new Deno.Command(binary, {
        env: { AERO_PROXY_AUTH_TOKEN: TOKEN, AERO_PROXY_PORT: "0", AERO_PROXY_ALLOW_PRIVATE_IPS: "1" },
        stdout: "piped",
        stderr: "null",
      }).spawn();
      const reader = child.stdout.pipeThrough(new TextDecoderStream()).getReader();
      let port = 0;
      let text = "";
      while (port === 0) {
        const { value, done } = await reader.read();
        if (done) break;
        text += value;
        port = Number(/"event":"listening".*?"port":(\d+)/.exec(text)?.[1] ?? 0);
      }
      try {
        await using client = await MuxClient.connect(muxUrl(port));
        await client.open(1, echo.port);
        client.send(encodeOpen(2, [127, 0, 0, 2], echo.port));
        assert.equal((await client.next(2)).type, FrameType.ERROR);
      } finally {
        child.kill("SIGTERM");
        await reader.cancel();
        await child.status;
      }
    });
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
});
