/**
 * The client in a real headless Chromium: the page comes from the relay's `--demo` files, the client is the
 * same-origin `aero_client.js`, and every byte goes through the real relay to servers on 127.0.0.1.
 */
import assert from "node:assert/strict";
import { patternDigest, report, startEchoServer, startRelay, startSourceServer, TOKEN } from "../_util.ts";
import { browserMissing, BrowserPage } from "./_browser.ts";

type ClientModule = typeof import("../../src/client/mod.ts");

const CLIENT_URL = "/demo/aero_client.js";
const DOWNLOAD_BYTES = 8 * 1024 * 1024;
const missing = browserMissing();
if (missing !== undefined) {
  // deno-lint-ignore no-console
  console.log(`  [skipped] the browser tests: ${missing}`);
}

Deno.test({
  name:
    "in headless Chromium the client fetches over HTTP, by name, downloads 8 MiB, half-closes, reports RelayError 1",
  ignore: missing !== undefined,
}, async (t) => {
  await using echo = startEchoServer();
  await using source = startSourceServer(DOWNLOAD_BYTES, 88);
  await using http = startHttpServer();
  // Loopback targets are allowed (both of localhost's addresses), every other special range is denied.
  await using relay = startRelay({
    demo: true,
    allowPrivateIps: false,
    allowCidrs: ["127.0.0.0/8", "::1/128"],
  });
  await using page = await BrowserPage.open();

  await t.step("the demo page loads from the relay with its client", async () => {
    await page.screenshotOnFailure("demo page loads", async () => {
      await page.goto(`http://127.0.0.1:${relay.port}/demo/#token=${TOKEN}`);
      await page.waitForText("#status", /^Ready$/);
    });
  });

  await t.step("an HTTP GET through the relay returns the server's response", async () => {
    const response = await page.screenshotOnFailure(
      "http get",
      () =>
        page.evaluate(async ({ clientUrl, token, port }) => {
          const { RelayClient } = (await import(clientUrl)) as ClientModule;
          const client = new RelayClient(`ws://${location.host}/tcp-mux`, { token });
          try {
            const stream = await client.connect("127.0.0.1", port);
            const writer = stream.writable.getWriter();
            await writer.write(
              new TextEncoder().encode(
                `GET /hello HTTP/1.1\r\nHost: 127.0.0.1:${port}\r\nConnection: close\r\n\r\n`,
              ),
            );
            writer.releaseLock();
            let text = "";
            const decoder = new TextDecoder();
            for await (const chunk of stream.readable) text += decoder.decode(chunk, { stream: true });
            return text;
          } finally {
            await client.close();
          }
        }, { clientUrl: CLIENT_URL, token: TOKEN, port: http.port }),
    );
    assert.match(response, /^HTTP\/1\.1 200 OK\r\n/);
    assert.match(response, /\r\n\r\nhello from 127\.0\.0\.1, GET \/hello$/);
  });

  await t.step("an 8 MiB download arrives intact (SHA-256 by crypto.subtle in the page)", async () => {
    const result = await page.screenshotOnFailure(
      "download 8 MiB",
      () =>
        page.evaluate(async ({ clientUrl, token, port }) => {
          const { RelayClient } = (await import(clientUrl)) as ClientModule;
          const client = new RelayClient(`ws://${location.host}/tcp-mux`, { token });
          try {
            const started = performance.now();
            const stream = await client.connect("127.0.0.1", port);
            const chunks: Uint8Array[] = [];
            let bytes = 0;
            for await (const chunk of stream.readable) {
              chunks.push(chunk);
              bytes += chunk.byteLength;
            }
            const all = new Uint8Array(bytes);
            let offset = 0;
            for (const chunk of chunks) {
              all.set(chunk, offset);
              offset += chunk.byteLength;
            }
            const digest = new Uint8Array(await crypto.subtle.digest("SHA-256", all));
            return {
              bytes,
              ms: performance.now() - started,
              sha256: Array.from(digest, (b) => b.toString(16).padStart(2, "0")).join(""),
            };
          } finally {
            await client.close();
          }
        }, { clientUrl: CLIENT_URL, token: TOKEN, port: source.port }),
    );
    report(`8 MiB download in Chromium: ${result.ms.toFixed(0)} ms`);
    assert.equal(result.bytes, DOWNLOAD_BYTES);
    assert.equal(result.sha256, patternDigest(DOWNLOAD_BYTES, 88));
  });

  await t.step(
    "by name, with half-close: the target's answer after the client's FIN still arrives",
    async () => {
      const echoed = await page.screenshotOnFailure(
        "half-close by name",
        () =>
          page.evaluate(async ({ clientUrl, token, port }) => {
            const { RelayClient } = (await import(clientUrl)) as ClientModule;
            const client = new RelayClient(`ws://${location.host}/tcp-mux`, { token });
            try {
              const stream = await client.connect("localhost", port);
              const writer = stream.writable.getWriter();
              await writer.write(new TextEncoder().encode("half-closed in Chromium"));
              await writer.close();
              let text = "";
              const decoder = new TextDecoder();
              for await (const chunk of stream.readable) text += decoder.decode(chunk, { stream: true });
              await stream.closed;
              return { remote: stream.remote, text };
            } finally {
              await client.close();
            }
          }, { clientUrl: CLIENT_URL, token: TOKEN, port: echo.port }),
      );
      assert.deepEqual(echoed, { remote: `localhost:${echo.port}`, text: "half-closed in Chromium" });
    },
  );

  await t.step("a denied destination surfaces as a RelayError with code 1 on the stream", async () => {
    const caught = await page.screenshotOnFailure(
      "denied destination",
      () =>
        page.evaluate(async ({ clientUrl, token }) => {
          const { RelayClient, RelayError } = (await import(clientUrl)) as ClientModule;
          const client = new RelayClient(`ws://${location.host}/tcp-mux`, { token });
          try {
            // No OPEN acknowledgement: connect() resolves, and the refusal ends the stream.
            const stream = await client.connect("10.0.0.1", 80);
            await stream.closed;
            return { resolved: true };
          } catch (err) {
            return {
              resolved: false,
              isRelayError: err instanceof RelayError,
              name: (err as Error).name,
              code: (err as { code?: unknown }).code,
              codeName: (err as { codeName?: unknown }).codeName,
              message: (err as Error).message,
            };
          } finally {
            await client.close();
          }
        }, { clientUrl: CLIENT_URL, token: TOKEN }),
    );
    assert.deepEqual(
      { ...caught, message: undefined },
      {
        resolved: false,
        isRelayError: true,
        name: "RelayError",
        code: 1,
        codeName: "POLICY_DENIED",
        message: undefined,
      },
    );
    assert.match(String(caught.message), /10\.0\.0\.1:80 denied/);
    assert.equal(relay.relay.metrics.errorsSent.get("POLICY_DENIED"), 1);
  });

  await t.step("the demo form sends a line and shows the reply", async () => {
    await page.screenshotOnFailure("demo form", async () => {
      await page.fill("#target", `127.0.0.1:${echo.port}`);
      await page.fill("#line", "hello from the demo form");
      await page.click("#send");
      await page.waitForText("#status", /^Done/);
      // The page stops reading at the first newline, so the blank line behind it may or may not be shown.
      assert.match(await page.textContent("#reply"), /^hello from the demo form\r\n/);
    });
  });

  const fence = await page.fence();
  assert.deepEqual(fence.offHost, [], "the page tried to load something from a host other than 127.0.0.1");
  assert.deepEqual(fence.pageErrors, []);
});

/** A tiny HTTP server on 127.0.0.1 that names the request it got. */
function startHttpServer(): AsyncDisposable & { readonly port: number } {
  const server = Deno.serve(
    { hostname: "127.0.0.1", port: 0, onListen: () => {} },
    (request) => new Response(`hello from 127.0.0.1, ${request.method} ${new URL(request.url).pathname}`),
  );
  return {
    port: server.addr.port,
    async [Symbol.asyncDispose]() {
      await server.shutdown();
    },
  };
}
