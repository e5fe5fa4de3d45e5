/**
 * The demo page is served only with `--demo`, with the same-origin browser build of the client.
 */
import assert from "node:assert/strict";
import { parseCommand } from "../../src/config.ts";
import { startRelay } from "../_util.ts";

async function get(
  url: string,
  init: RequestInit = {},
): Promise<{ status: number; headers: Headers; body: string }> {
  const response = await fetch(url, { redirect: "manual", ...init });
  return { status: response.status, headers: response.headers, body: await response.text() };
}

Deno.test("--demo and AERO_PROXY_DEMO switch the demo on; it is off by default", () => {
  const demoOf = (env: Record<string, string>, args: string[]) => {
    const command = parseCommand(env, args);
    assert.equal(command.kind, "run");
    return command.kind === "run" ? command.config.demo : undefined;
  };
  assert.equal(demoOf({}, []), false);
  assert.equal(demoOf({}, ["--demo"]), true);
  assert.equal(demoOf({ AERO_PROXY_DEMO: "1" }, []), true);
  assert.equal(demoOf({ AERO_PROXY_DEMO: "0" }, []), false);
  assert.throws(() => parseCommand({ AERO_PROXY_DEMO: "yes" }, []), /AERO_PROXY_DEMO must be 1 or 0/);
});

Deno.test("without --demo every demo path is 404", async () => {
  await using relay = startRelay();
  for (const path of ["/demo", "/demo/", "/demo/aero_client.js"]) {
    assert.equal((await get(`http://127.0.0.1:${relay.port}${path}`)).status, 404, path);
  }
});

Deno.test("with --demo the page, its script and the client build are served with a strict CSP", async () => {
  await using relay = startRelay({ demo: true });
  const base = `http://127.0.0.1:${relay.port}`;
  const redirect = await get(`${base}/demo`);
  assert.equal(redirect.status, 308);
  assert.equal(redirect.headers.get("location"), "/demo/");

  const page = await get(`${base}/demo/`);
  assert.equal(page.status, 200);
  assert.match(page.headers.get("content-type") ?? "", /^text\/html/);
  assert.match(page.headers.get("content-security-policy") ?? "", /connect-src 'self'/);
  assert.match(page.body, /<script type="module" src="page.js"><\/script>/);

  const client = await get(`${base}/demo/aero_client.js`);
  assert.equal(client.status, 200);
  assert.match(client.headers.get("content-type") ?? "", /^text\/javascript/);
  const onDisk = await Deno.readTextFile(new URL("../../src/client/aero_client.js", import.meta.url));
  assert.equal(client.body, onDisk);
  assert.match(client.body, /export \{[^}]*RelayClient/);

  assert.equal((await get(`${base}/demo/../deno.json`)).status, 404);
  assert.equal((await get(`${base}/demo/nope.js`)).status, 404);
  assert.equal((await get(`${base}/demo/`, { method: "POST" })).status, 405);
  // The relay endpoint is unchanged.
  assert.equal((await get(`${base}/tcp-mux`)).status, 401);
});
