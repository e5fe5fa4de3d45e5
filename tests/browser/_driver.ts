/**
 * Drives a headless Debian Chromium with `playwright-core` for the browser tests, as a child process.
 *
 * Why a child: playwright-core probes `/proc` when it loads, which Deno allows only with `--allow-all`, and the
 * tests themselves must keep `--allow-net=127.0.0.0/8`. So the tests (relay, servers, assertions) stay in the
 * narrowed test process, and only this driver runs with `-A`. It opens no sockets itself: Playwright talks to
 * Chromium over a pipe. It reads one JSON request a line on stdin and answers one JSON line on stdout.
 *
 * The browser is fenced to 127.0.0.1: a request to any other host is aborted and recorded, and the host
 * resolver knows no names.
 * @module
 */
import { type BrowserContext, chromium, type Page } from "playwright-core";

/** Where the Debian package installs Chromium. */
const CHROMIUM_PATH = "/usr/bin/chromium";
const ARGS = [
  "--headless",
  "--no-sandbox",
  "--disable-gpu",
  "--disable-background-networking",
  "--disable-component-update",
  "--disable-sync",
  "--no-first-run",
  "--disable-quic",
  "--host-resolver-rules=MAP * ~NOTFOUND, EXCLUDE 127.0.0.1",
];
const TIMEOUT_MS = 30_000;

interface Request {
  readonly id: number;
  readonly method: string;
  readonly params: Record<string, unknown>;
}

const encoder = new TextEncoder();

function reply(message: Record<string, unknown>): void {
  Deno.stdout.writeSync(encoder.encode(`${JSON.stringify(message)}\n`));
}

async function handle(page: Page, fence: Fence, request: Request): Promise<unknown> {
  const p = request.params;
  switch (request.method) {
    case "goto":
      await page.goto(String(p.url));
      return null;
    case "waitForText":
      await page.locator(String(p.selector)).filter({ hasText: new RegExp(String(p.pattern)) }).waitFor();
      return null;
    case "evaluate": {
      // The test sends a function's source; rebuilding it here lets Playwright call it with its argument.
      const fn = new Function(`return (${String(p.source)});`)() as (arg: unknown) => unknown;
      return await page.evaluate(fn, p.arg);
    }
    case "fill":
      await page.fill(String(p.selector), String(p.value));
      return null;
    case "click":
      await page.click(String(p.selector));
      return null;
    case "textContent":
      return await page.textContent(String(p.selector));
    case "screenshot":
      await page.screenshot({ path: String(p.path), fullPage: true });
      return null;
    case "fence":
      return fence;
    default:
      throw new Error(`Unknown driver method ${JSON.stringify(request.method)}`);
  }
}

interface Fence {
  /** URLs the page tried to load from a host other than 127.0.0.1 (all aborted). */
  offHost: string[];
  /** Uncaught page errors and console errors. */
  pageErrors: string[];
}

async function main(): Promise<void> {
  const profile = await Deno.makeTempDir({ prefix: "aero-chromium-" });
  let context: BrowserContext | undefined;
  try {
    context = await chromium.launchPersistentContext(profile, {
      executablePath: CHROMIUM_PATH,
      headless: true,
      args: ARGS,
      timeout: TIMEOUT_MS,
    });
    const fence: Fence = { offHost: [], pageErrors: [] };
    await context.route("**/*", (route) => {
      const url = new URL(route.request().url());
      if (url.hostname === "127.0.0.1") return route.continue();
      fence.offHost.push(url.href);
      return route.abort("blockedbyclient");
    });
    const page = context.pages()[0] ?? await context.newPage();
    page.setDefaultTimeout(TIMEOUT_MS);
    page.on("pageerror", (err) => fence.pageErrors.push(`pageerror: ${err.message}`));
    page.on("console", (message) => {
      if (message.type() === "error") fence.pageErrors.push(`console: ${message.text()}`);
    });
    reply({ ready: true });

    let carry = "";
    for await (const text of Deno.stdin.readable.pipeThrough(new TextDecoderStream())) {
      carry += text;
      let newline;
      while ((newline = carry.indexOf("\n")) >= 0) {
        const request = JSON.parse(carry.slice(0, newline)) as Request;
        carry = carry.slice(newline + 1);
        if (request.method === "close") return;
        try {
          reply({ id: request.id, result: await handle(page, fence, request) });
        } catch (err: unknown) {
          reply({ id: request.id, error: err instanceof Error ? err.message : String(err) });
        }
      }
    }
  } finally {
    await context?.close();
    await Deno.remove(profile, { recursive: true });
  }
}

await main();
