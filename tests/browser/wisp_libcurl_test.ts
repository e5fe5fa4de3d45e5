/**
 * libcurl.js (npm, pinned in deno.json) in a real headless Chromium, unchanged: libcurl and its TLS run as
 * WebAssembly in the page, and every TCP connection goes through the relay's `/wisp/` to an HTTPS server on
 * 127.0.0.1 whose certificate a test CA signed.
 *
 * libcurl.js has no option to trust another CA: its bundle is compiled in, and curl reads it in place (a blob it
 * does not copy) for every handshake. `libcurl.get_cacert()` is the only API that touches it, and its WebAssembly
 * export `get_cacert` returns where the bundle lives. So the page captures the module's exports as the runtime
 * instantiates it, and writes the test CA's PEM over the bundle (padded with newlines to the same length).
 * Before that, the same fetch must fail verification: TLS really is checked end to end.
 */
import assert from "node:assert/strict";
import { makeTestCa, report, startRelay, TOKEN } from "../_util.ts";
import { browserMissing, BrowserPage } from "./_browser.ts";

const missing = browserMissing();

/** Where Deno keeps the libcurl.js package (fetching it into the cache if needed). */
async function libcurlDir(): Promise<string> {
  const output = await new Deno.Command(Deno.execPath(), {
    args: ["info", "--json", "npm:libcurl.js@0.7.4"],
    stdout: "piped",
    stderr: "null",
  }).output();
  const info = JSON.parse(new TextDecoder().decode(output.stdout)) as {
    npmPackages: Record<string, { localPath: string }>;
  };
  const dir = info.npmPackages["libcurl.js@0.7.4"]?.localPath;
  assert.ok(dir !== undefined, "deno info did not list libcurl.js@0.7.4");
  return dir;
}

const PAGE =
  `<!doctype html><meta charset="utf-8"><title>libcurl.js over Wisp</title><p id="status">loaded</p>`;

Deno.test({
  name: "libcurl.js in Chromium fetches HTTPS through /wisp/, with TLS verified against a test CA",
  ignore: missing !== undefined,
}, async () => {
  await using ca = await makeTestCa();
  if (ca === undefined) return;
  const dir = await libcurlDir();
  const files: Record<string, [string, string]> = {
    "/": [PAGE, "text/html; charset=utf-8"],
    "/libcurl.mjs": [await Deno.readTextFile(`${dir}/libcurl.mjs`), "text/javascript"],
  };
  const wasm = await Deno.readFile(`${dir}/libcurl.wasm`);
  const abort = new AbortController();
  const pages = Deno.serve(
    { hostname: "127.0.0.1", port: 0, signal: abort.signal, onListen: () => {} },
    (req) => {
      const path = new URL(req.url).pathname;
      if (path === "/libcurl.wasm") {
        return new Response(wasm, { headers: { "content-type": "application/wasm" } });
      }
      const file = files[path];
      return file === undefined
        ? new Response("not found", { status: 404 })
        : new Response(file[0], { headers: { "content-type": file[1] } });
    },
  );
  const https = Deno.serve(
    { hostname: "127.0.0.1", port: 0, cert: ca.cert, key: ca.key, signal: abort.signal, onListen: () => {} },
    (req) => new Response(`hello over TLS, ${req.method} ${new URL(req.url).pathname}`),
  );
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
