/**
 * DNS over HTTPS on a live relay, with `fetch` and DNS messages built and read with `dns-packet`: GET and POST
 * shapes, `/dns-json`, answers filtered by the destination policy, FORMERR/413/415 for bad queries, 401/403,
 * CORS with preflight, and the per-client rate (429).
 */
import assert from "node:assert/strict";
import { Buffer } from "node:buffer";
// @ts-types="@types/dns-packet"
import dnsPacket from "dns-packet";
import { defaultConfig } from "../../src/config.ts";
import type { Resolver } from "../../src/core/target.ts";
import { type RunningRelay, serveRelay } from "../../src/server.ts";
import { delay, TOKEN } from "../_util.ts";

function startDohRelay(overrides: Record<string, unknown> = {}, resolve?: Resolver): RunningRelay {
  return serveRelay(
    defaultConfig({ port: 0, authTokens: [TOKEN], allowPrivateIps: true, logLevel: "error", ...overrides }),
    resolve === undefined ? {} : { resolve },
  );
}

/** What dns-packet decodes a response to (its types leave out `rcode`, and `data` varies by record type). */
interface Decoded {
  readonly id?: number;
  readonly rcode: string;
  readonly questions?: unknown[];
  readonly answers?: { type: string; data: unknown }[];
}

function query(name: string, type: "A" | "AAAA" | "MX", id = 4242): Uint8Array<ArrayBuffer> {
  return new Uint8Array(dnsPacket.encode({
    type: "query",
    id,
    flags: dnsPacket.RECURSION_DESIRED,
    questions: [{ type, name }],
  }));
}

const base64url = (bytes: Uint8Array) =>
  btoa(String.fromCharCode(...bytes)).replaceAll("+", "-").replaceAll("/", "_").replace(/=+$/, "");

async function ask(
  relay: RunningRelay,
  message: Uint8Array<ArrayBuffer>,
  method: "GET" | "POST" = "GET",
  headers: Record<string, string> = {},
): Promise<{ status: number; packet: Decoded; headers: Headers }> {
  const url = `http://127.0.0.1:${relay.port}/dns-query?token=${TOKEN}` +
    (method === "GET" ? `&dns=${base64url(message)}` : "");
  const response = await fetch(url, {
    method,
    headers: {
      accept: "application/dns-message",
      ...(method === "POST" ? { "content-type": "application/dns-message" } : {}),
      ...headers,
    },
    ...(method === "POST" ? { body: message } : {}),
  });
  assert.equal(response.headers.get("content-type"), "application/dns-message");
  const packet = dnsPacket.decode(Buffer.from(await response.arrayBuffer())) as unknown as Decoded;
  return { status: response.status, packet, headers: response.headers };
}

Deno.test("DoH GET and POST: localhost A and AAAA, the query's id and question echoed", async () => {
  await using relay = startDohRelay();
  for (const method of ["GET", "POST"] as const) {
    const a = await ask(relay, query("localhost", "A", 7), method);
    assert.equal(a.status, 200);
    assert.equal(a.packet.id, 7);
    assert.equal(a.packet.rcode, "NOERROR");
    assert.deepEqual(a.packet.questions, [{ name: "localhost", type: "A", class: "IN" }]);
    assert.deepEqual(a.packet.answers?.map((r) => [r.type, r.data]), [["A", "127.0.0.1"]]);
    assert.match(a.headers.get("cache-control") ?? "", /max-age=30/);
    const aaaa = await ask(relay, query("localhost", "AAAA", 8), method);
    assert.deepEqual(aaaa.packet.answers?.map((r) => [r.type, r.data]), [["AAAA", "::1"]]);
  }
  assert.equal((await ask(relay, query("localhost", "MX"))).packet.rcode, "NOTIMP");
});

Deno.test("DoH applies the destination policy to answers: internal names resolve to nothing", async () => {
  const resolve: Resolver = (name) =>
    name === "mixed.test"
      ? Promise.resolve(["10.1.2.3", "93.184.216.34", "fd00::1", "2606:4700::1111"])
      : name === "nowhere.test"
      ? Promise.reject(new Deno.errors.NotFound(name))
      : Promise.resolve(["127.0.0.1"]);
  await using relay = startDohRelay({ allowPrivateIps: false }, resolve);
  const internal = await ask(relay, query("internal.test", "A"));
  assert.equal(internal.packet.rcode, "NOERROR");
  assert.deepEqual(internal.packet.answers, []);
  const mixed = await ask(relay, query("mixed.test", "A"));
  assert.deepEqual(mixed.packet.answers?.map((r) => r.data), ["93.184.216.34"]);
  const mixed6 = await ask(relay, query("mixed.test", "AAAA"));
  assert.deepEqual(mixed6.packet.answers?.map((r) => r.data), ["2606:4700::1111"]);
  assert.equal((await ask(relay, query("nowhere.test", "A"))).packet.rcode, "NXDOMAIN");
  assert.equal(relay.relay.metrics.dohAddressesFiltered, 3);
  assert.equal(relay.relay.metrics.dohQueries.get("NXDOMAIN"), 1);
});

Deno.test("DoH errors: FORMERR 400 for garbage, 415 for a wrong type, 413 too large, 401/403 as JSON", async () => {
  await using relay = startDohRelay();
  const garbage = await ask(relay, Uint8Array.of(0x12, 0x34, 0xff), "POST");
  assert.equal(garbage.status, 400);
  assert.equal(garbage.packet.rcode, "FORMERR");
  assert.equal(garbage.packet.id, 0x1234);
  const wrongType = await ask(relay, query("localhost", "A"), "POST", { "content-type": "text/plain" });
  assert.equal(wrongType.status, 415);
  assert.equal(wrongType.packet.rcode, "FORMERR");
  const big = await ask(relay, new Uint8Array(5000), "POST");
  assert.equal(big.status, 413);
  const badParam = await fetch(`http://127.0.0.1:${relay.port}/dns-query?token=${TOKEN}&dns=***`);
  assert.equal(badParam.status, 400);
  await badParam.body?.cancel();
  for (
    const [url, status] of [[`/dns-query?dns=${base64url(query("localhost", "A"))}`, 401], [
      `/dns-json?name=localhost&token=nope`,
      403,
    ]] as const
  ) {
    const response = await fetch(`http://127.0.0.1:${relay.port}${url}`);
    assert.equal(response.status, status);
    assert.equal(response.headers.get("content-type"), "application/json");
    assert.ok(["unauthorized", "forbidden"].includes((await response.json()).error));
  }
});

Deno.test("DoH JSON: the Cloudflare-style shape for A and AAAA; a bad type is 400", async () => {
  await using relay = startDohRelay();
  const response = await fetch(
    `http://127.0.0.1:${relay.port}/dns-json?name=localhost&type=A&token=${TOKEN}`,
  );
  assert.equal(response.status, 200);
  assert.equal(response.headers.get("content-type"), "application/dns-json");
  assert.deepEqual(await response.json(), {
    Status: 0,
    TC: false,
    RD: true,
    RA: true,
    AD: false,
    CD: false,
    Question: [{ name: "localhost", type: 1 }],
    Answer: [{ name: "localhost", type: 1, TTL: 30, data: "127.0.0.1" }],
  });
  const v6 =
    await (await fetch(`http://127.0.0.1:${relay.port}/dns-json?name=localhost&type=28&token=${TOKEN}`))
      .json();
  assert.deepEqual(v6.Answer, [{ name: "localhost", type: 28, TTL: 30, data: "::1" }]);
  const bad = await fetch(`http://127.0.0.1:${relay.port}/dns-json?name=localhost&type=TXT&token=${TOKEN}`);
  assert.equal(bad.status, 400);
  await bad.body?.cancel();
});

Deno.test("DoH CORS: preflight and answers for allowed origins only; the rate per client is 429", async () => {
  await using relay = startDohRelay({ allowedOrigins: ["https://app.example"], dohQueriesPerSec: 1 });
  const preflight = await fetch(`http://127.0.0.1:${relay.port}/dns-query`, {
    method: "OPTIONS",
    headers: { origin: "https://app.example", "access-control-request-method": "POST" },
  });
  assert.equal(preflight.status, 204);
  assert.equal(preflight.headers.get("access-control-allow-origin"), "https://app.example");
  assert.match(preflight.headers.get("access-control-allow-methods") ?? "", /POST/);
  await preflight.body?.cancel();
  const evil = await fetch(`http://127.0.0.1:${relay.port}/dns-json?name=localhost&token=${TOKEN}`, {
    headers: { origin: "https://evil.example" },
  });
  assert.equal(evil.status, 403);
  assert.equal(evil.headers.get("access-control-allow-origin"), null);
  await evil.body?.cancel();
  const allowed = await ask(relay, query("localhost", "A"), "GET", { origin: "https://app.example" });
  assert.equal(allowed.headers.get("access-control-allow-origin"), "https://app.example");
  // A burst of two a second: the third query in a row is refused, still as a DNS message.
  await ask(relay, query("localhost", "A"));
  const limited = await ask(relay, query("localhost", "A", 99));
  assert.equal(limited.status, 429);
  assert.equal(limited.packet.rcode, "SERVFAIL");
  assert.equal(limited.packet.id, 99);
  assert.equal(relay.relay.metrics.dohQueries.get("rate_limited"), 1);
});

Deno.test("DoH shares the relay's cap on lookups in flight, honours the host rules, reads the aero_session cookie", async () => {
  const pending: (() => void)[] = [];
  // Names under stuck.test never answer until the end of the test; secret.test would answer, but is denied.
  const resolve: Resolver = (name) =>
    name.endsWith("stuck.test")
      ? new Promise((resolve) => pending.push(() => resolve(["93.184.216.34"])))
      : Promise.resolve(["93.184.216.34"]);
  await using relay = startDohRelay(
    { dohQueriesPerSec: 0, dnsTimeoutMs: 200, denyHosts: ["secret.test"] },
    resolve,
  );
  try {
    // Four waves of 50 (the listener takes at most 64 pending connections per address): the stuck lookups add up.
    const answers = [];
    for (let wave = 0; wave < 4; wave++) {
      answers.push(
        ...await Promise.all(
          Array.from({ length: 50 }, (_, i) => ask(relay, query(`n${wave}-${i}.stuck.test`, "A", i))),
        ),
      );
    }
    assert.ok(answers.every((a) => a.packet.rcode === "SERVFAIL"));
    assert.equal(relay.relay.lookupsInFlight, 128, "DoH lookups are not capped with the others");
    for (const release of pending.splice(0)) release();
    await delay(20);
    assert.equal(relay.relay.lookupsInFlight, 0);
    const secret = await ask(relay, query("secret.test", "A"));
    assert.equal(secret.packet.rcode, "NOERROR");
    assert.deepEqual(secret.packet.answers, []);
    const cookie = await fetch(`http://127.0.0.1:${relay.port}/dns-json?name=open.test`, {
      headers: { cookie: `theme=dark; aero_session=${TOKEN}` },
    });
    assert.equal(cookie.status, 200);
    assert.equal((await cookie.json()).Answer[0].data, "93.184.216.34");
    // A body over the query cap (up to the listener's 64 KiB) is still answered as a DNS message, with its id.
    const big = new Uint8Array(20_000);
    big.set([0xab, 0xcd]);
    const tooBig = await ask(relay, big, "POST");
    assert.equal(tooBig.status, 413);
    assert.equal(tooBig.packet.id, 0xabcd);
  } finally {
    for (const release of pending) release();
  }
});

Deno.test("DoH answers only standard queries in class IN: an update or class CH is NOTIMP", async () => {
  await using relay = startDohRelay();
  const update = new Uint8Array(dnsPacket.encode({
    type: "query",
    id: 5,
    flags: 5 << 11, // opcode 5, UPDATE (dns-packet encodes the opcode from the flags)
    questions: [{ type: "A", name: "localhost" }],
  }));
  assert.equal((await ask(relay, update)).packet.rcode, "NOTIMP");
  const chaos = new Uint8Array(dnsPacket.encode({
    type: "query",
    id: 6,
    questions: [{ type: "A", name: "localhost", class: "CH" }],
  }));
  assert.equal((await ask(relay, chaos)).packet.rcode, "NOTIMP");
});

Deno.test("DoH echoes the question byte for byte, even a label holding a dot", async () => {
  await using relay = startDohRelay({}, () => Promise.resolve(["93.184.216.34"]));
  // Question: one label "a.b" (with its dot), then "com"; type A, class IN.
  const query = Uint8Array.of(
    0x12,
    0x34,
    0x01,
    0x00,
    0,
    1,
    0,
    0,
    0,
    0,
    0,
    0,
    3,
    0x61,
    0x2e,
    0x62,
    3,
    0x63,
    0x6f,
    0x6d,
    0,
    0,
    1,
    0,
    1,
  );
  const response = await fetch(`http://127.0.0.1:${relay.port}/dns-query?token=${TOKEN}`, {
    method: "POST",
    headers: { "content-type": "application/dns-message" },
    body: query,
  });
  const bytes = new Uint8Array(await response.arrayBuffer());
  assert.equal(response.status, 200);
  assert.deepEqual([...bytes.subarray(12, query.byteLength)], [...query.subarray(12)]);
  assert.equal((dnsPacket.decode(Buffer.from(bytes)) as unknown as Decoded).id, 0x1234);
});
