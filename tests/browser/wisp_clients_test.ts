/**
 * Wisp's browser clients from npm (pinned in deno.json) in a real headless Chromium, unchanged, through the
 * relay's `/wisp/` to servers on 127.0.0.1: an HTTPS server whose certificate a test CA signed, and a UDP echo.
 *
 * - libcurl.js (curl and mbedTLS in WebAssembly, Wisp v1) has no option to trust another CA: its bundle is
 *   compiled in, and curl reads it in place (a blob it does not copy) for every handshake. `libcurl.get_cacert()`
 *   is the only API that touches it, and its WebAssembly export `get_cacert` returns where the bundle lives. So
 *   the page captures the module's exports as the runtime instantiates it, and writes the test CA's PEM over the
 *   bundle (padded with newlines to the same length). Before that, the same fetch must fail verification: TLS
 *   really is checked end to end.
 * - epoxy-tls (rustls in WebAssembly, Wisp v2 with the UDP extension required) takes the CA in
 *   `EpoxyClientOptions.pem_files`.
 */
import assert from "node:assert/strict";
import { makeTestCa, report, startRelay, TOKEN } from "../_util.ts";
import { startUdpEcho } from "../wire/_udp.ts";
import { browserMissing, BrowserPage } from "./_browser.ts";

const missing = browserMissing();

/** Where Deno keeps npm package `name@version` (fetching it into the cache if needed). */
async function packageDir(name: string, version: string): Promise<string> {
  const output = await new Deno.Command(Deno.execPath(), {
    args: ["info", "--json", `npm:${name}@${version}`],
    stdout: "piped",
    stderr: "null",
  }).output();
  const info = JSON.parse(new TextDecoder().decode(output.stdout)) as {
    npmPackages: Record<string, { localPath: string }>;
  };
  const dir = info.npmPackages[`${name}@${version}`]?.localPath;
  assert.ok(dir !== undefined, `deno info did not list ${name}@${version}`);
  return dir;
}

/** Serves `files` (path -> body and content type) on 127.0.0.1 until `signal` aborts. */
function serveFiles(
  files: Record<string, readonly [BodyInit, string]>,
  signal: AbortSignal,
): Deno.HttpServer<Deno.NetAddr> {
  return Deno.serve({ hostname: "127.0.0.1", port: 0, signal, onListen: () => {} }, (req) => {
    const file = files[new URL(req.url).pathname];
    return file === undefined
      ? new Response("not found", { status: 404 })
      : new Response(file[0], { headers: { "content-type": file[1] } });
  });
}

/** An HTTPS server with the test CA's certificate, answering with its method and path. */
function serveHttps(cert: string, key: string, signal: AbortSignal): Deno.HttpServer<Deno.NetAddr> {
  return Deno.serve(
    { hostname: "127.0.0.1", port: 0, cert, key, signal, onListen: () => {} },
    (req) => new Response(`hello over TLS, ${req.method} ${new URL(req.url).pathname}`),
  );
}

const PAGE = `<!doctype html><meta charset="utf-8"><title>Wisp clients</title><p id="status">loaded</p>`;

Deno.test({
  name: "libcurl.js in Chromium fetches HTTPS through /wisp/, with TLS verified against a test CA",
  ignore: missing !== undefined,
}, async () => {
  await using ca = await makeTestCa();
  if (ca === undefined) return;
  const dir = await packageDir("libcurl.js", "0.7.4");
  const abort = new AbortController();
  const pages = serveFiles({
    "/": [PAGE, "text/html; charset=utf-8"],
    "/libcurl.mjs": [await Deno.readTextFile(`${dir}/libcurl.mjs`), "text/javascript"],
    "/libcurl.wasm": [await Deno.readFile(`${dir}/libcurl.wasm`), "application/wasm"],
  }, abort.signal);
  const https = serveHttps(ca.cert, ca.key, abort.signal);
  try {
    await using relay = startRelay();
    await using page = await BrowserPage.open();
    await page.goto(`http://127.0.0.1:${pages.addr.port}/`);
    const result = await page.screenshotOnFailure(
      "libcurl over wisp",
      () =>
        page.evaluate(async ({ wispUrl, target, caPem }) => {
          // Keep the exports of the module libcurl.js instantiates (its memory and get_cacert).
          let exports: WebAssembly.Exports | undefined;
          const keep = <T extends { instance: WebAssembly.Instance }>(result: T) => {
            exports = result.instance.exports;
            return result;
          };
          const instantiate = WebAssembly.instantiate;
          const instantiateStreaming = WebAssembly.instantiateStreaming;
          // deno-lint-ignore no-explicit-any
          (WebAssembly as any).instantiate = (...args: any[]) =>
            // deno-lint-ignore no-explicit-any
            (instantiate as any)(...args).then((r: any) => (r.instance ? keep(r) : r));
          // deno-lint-ignore no-explicit-any
          (WebAssembly as any).instantiateStreaming = (...args: any[]) =>
            // deno-lint-ignore no-explicit-any
            (instantiateStreaming as any)(...args).then(keep);
          // deno-lint-ignore no-explicit-any
          const { libcurl } = await import("/libcurl.mjs" as string) as any;
          libcurl.set_websocket(wispUrl);
          await libcurl.load_wasm("/libcurl.wasm");

          let before = "";
          try {
            await libcurl.fetch(target);
            before = "fetched without the CA";
          } catch (err) {
            before = `refused: ${String(err)}`;
          }

          // Write the test CA over the compiled-in bundle, in place.
          if (exports === undefined) {
            throw new Error("libcurl.js did not instantiate through WebAssembly.instantiate*");
          }
          const memory = exports.memory as WebAssembly.Memory;
          const where = (exports.get_cacert as () => number)();
          const heap = new Uint8Array(memory.buffer);
          let end = where;
          while (heap[end] !== 0) end++;
          const pem = new TextEncoder().encode(caPem);
          if (pem.byteLength > end - where) throw new Error("the CA does not fit over the bundle");
          heap.fill(0x0a, where, end);
          heap.set(pem, where);

          const response = await libcurl.fetch(target);
          return { before, status: response.status as number, body: await response.text() as string };
        }, {
          wispUrl: `ws://127.0.0.1:${relay.port}/wisp/${TOKEN}/`,
          target: `https://127.0.0.1:${https.addr.port}/over-wisp`,
          caPem: ca.caCert,
        }),
    );
    report(`libcurl.js: before the CA ${result.before}`);
    assert.match(result.before, /^refused: /);
    assert.equal(result.status, 200);
    assert.equal(result.body, "hello over TLS, GET /over-wisp");
    assert.ok((relay.relay.metrics.sessionsByProtocol.get("wisp-v1") ?? 0) >= 1);
    const fence = await page.fence();
    assert.deepEqual(fence.offHost, []);
  } finally {
    abort.abort();
    await Promise.all([pages.finished, https.finished]);
  }
});

Deno.test({
  name: "epoxy-tls in Chromium: HTTPS (CA in pem_files) and UDP echo through /wisp/ with Wisp v2",
  ignore: missing !== undefined,
}, async () => {
  await using ca = await makeTestCa();
  if (ca === undefined) return;
  const dir = await packageDir("@mercuryworkshop/epoxy-tls", "2.1.19-1");
  const abort = new AbortController();
  const pages = serveFiles({
    "/": [PAGE, "text/html; charset=utf-8"],
    "/epoxy.js": [await Deno.readTextFile(`${dir}/full/epoxy.js`), "text/javascript"],
    "/epoxy.wasm": [await Deno.readFile(`${dir}/full/epoxy.wasm`), "application/wasm"],
  }, abort.signal);
  const https = serveHttps(ca.cert, ca.key, abort.signal);
  try {
    await using udp = await startUdpEcho();
    await using relay = startRelay();
    await using page = await BrowserPage.open();
    await page.goto(`http://127.0.0.1:${pages.addr.port}/`);
    const result = await page.screenshotOnFailure(
      "epoxy over wisp",
      () =>
        page.evaluate(async ({ wispUrl, target, udpTarget, caPem }) => {
          // deno-lint-ignore no-explicit-any
          const epoxy = await import("/epoxy.js" as string) as any;
          await epoxy.default({ module_or_path: "/epoxy.wasm" });
          const options = new epoxy.EpoxyClientOptions();
          options.wisp_v2 = true;
          options.udp_extension_required = true;
          options.pem_files = [caPem];
          const client = new epoxy.EpoxyClient(wispUrl, options);
          const response = await client.fetch(target, {});
          const body = await response.text() as string;

          const socket = await client.connect_udp(udpTarget);
          const writer = socket.write.getWriter();
          const reader = socket.read.getReader();
          await writer.write(new TextEncoder().encode("datagram via epoxy"));
          const { value } = await reader.read();
          const echoed = new TextDecoder().decode(value);
          reader.releaseLock();
          writer.releaseLock();
          return { status: response.status as number, body, echoed };
        }, {
          wispUrl: `ws://127.0.0.1:${relay.port}/wisp/${TOKEN}/`,
          target: `https://127.0.0.1:${https.addr.port}/over-epoxy`,
          udpTarget: `udp://127.0.0.1:${udp.port}`,
          caPem: ca.caCert,
        }),
    );
    assert.equal(result.status, 200);
    assert.equal(result.body, "hello over TLS, GET /over-epoxy");
    assert.equal(result.echoed, "datagram via epoxy");
    assert.ok((relay.relay.metrics.sessionsByProtocol.get("wisp-v2") ?? 0) >= 1);
    assert.ok(relay.relay.metrics.datagramsFromTargets >= 1);
    assert.deepEqual((await page.fence()).offHost, []);
  } finally {
    abort.abort();
    await Promise.all([pages.finished, https.finished]);
  }
});
