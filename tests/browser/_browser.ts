/**
 * The test side of the browser driver (`_driver.ts`): starts it, sends it requests, and saves a screenshot
 * when a step fails.
 * @module
 */
import { report, withTimeout } from "../_util.ts";

/** Where the Debian package installs Chromium. */
export const CHROMIUM_PATH = "/usr/bin/chromium";
/** Set by `.ci/run`: a missing Chromium fails the browser tests instead of skipping them. */
export const REQUIRE_ENV = "AERO_REQUIRE_BROWSER";
/** Screenshots of failed steps land here (ignored by git; CI can keep them as artifacts). */
export const SCREENSHOT_DIR = new URL("../../test-results/browser/", import.meta.url);

const DRIVER = new URL("./_driver.ts", import.meta.url).pathname;
const ROOT = new URL("../../", import.meta.url).pathname;
const CALL_TIMEOUT_MS = 60_000;

/** Why the browser tests cannot run here, or `undefined` when they can. Throws when CI requires them. */
export function browserMissing(): string | undefined {
  try {
    if (Deno.statSync(CHROMIUM_PATH).isFile) return undefined;
  } catch { /* not installed */ }
  const reason = `${CHROMIUM_PATH} is missing (apt-get install -y chromium)`;
  if (Deno.env.get(REQUIRE_ENV) === "1") throw new Error(`${REQUIRE_ENV}=1 but ${reason}`);
  return reason;
}

/** What the driver saw besides the answers: off-host requests (all aborted) and page errors. */
export interface Fence {
  readonly offHost: readonly string[];
  readonly pageErrors: readonly string[];
}

type Pending = { resolve: (value: unknown) => void; reject: (err: Error) => void };

/** One headless Chromium page, fenced to 127.0.0.1, in a fresh profile that is removed on disposal. */
export class BrowserPage implements AsyncDisposable {
  readonly #child: Deno.ChildProcess;
  readonly #stdin: WritableStreamDefaultWriter<Uint8Array>;
  readonly #pending = new Map<number, Pending>();
  readonly #reading: Promise<void>;
  readonly #stderr: Promise<string>;
  readonly #ready = Promise.withResolvers<void>();
  #nextId = 1;

  private constructor() {
    this.#child = new Deno.Command(Deno.execPath(), {
      args: ["run", "--allow-all", "--frozen", DRIVER],
      cwd: ROOT,
      env: { NO_COLOR: "1" },
      stdin: "piped",
      stdout: "piped",
      stderr: "piped",
    }).spawn();
    this.#stdin = this.#child.stdin.getWriter();
    this.#stderr = new Response(this.#child.stderr).text();
    this.#reading = this.#readReplies();
  }

  /** Launches Chromium through the driver. */
  static async open(): Promise<BrowserPage> {
    const page = new BrowserPage();
    try {
      await withTimeout(page.#ready.promise, CALL_TIMEOUT_MS, "Chromium to start");
    } catch (err) {
      await page[Symbol.asyncDispose]();
      throw err;
    }
    return page;
  }

  async #readReplies(): Promise<void> {
    let carry = "";
    for await (const text of this.#child.stdout.pipeThrough(new TextDecoderStream())) {
      carry += text;
      let newline;
      while ((newline = carry.indexOf("\n")) >= 0) {
        const message = JSON.parse(carry.slice(0, newline)) as Record<string, unknown>;
        carry = carry.slice(newline + 1);
        if (message.ready === true) this.#ready.resolve();
        const pending = this.#pending.get(message.id as number);
        if (pending === undefined) continue;
        this.#pending.delete(message.id as number);
        if ("error" in message) pending.reject(new Error(`Browser: ${String(message.error)}`));
        else pending.resolve(message.result);
      }
    }
    const stderr = await this.#stderr;
    const gone = new Error(`The browser driver exited: ${stderr.trim().split("\n").slice(-5).join("\n")}`);
    this.#ready.reject(gone);
    for (const pending of this.#pending.values()) pending.reject(gone);
    this.#pending.clear();
  }

  async #call(method: string, params: Record<string, unknown> = {}): Promise<unknown> {
    const id = this.#nextId++;
    const { promise, resolve, reject } = Promise.withResolvers<unknown>();
    this.#pending.set(id, { resolve, reject });
    await this.#stdin.write(new TextEncoder().encode(`${JSON.stringify({ id, method, params })}\n`));
    return await withTimeout(promise, CALL_TIMEOUT_MS, `the browser to answer ${method}`);
  }

  goto(url: string): Promise<unknown> {
    return this.#call("goto", { url });
  }

  /** Waits until `selector` matches an element whose text matches `pattern`. */
  waitForText(selector: string, pattern: RegExp): Promise<unknown> {
    return this.#call("waitForText", { selector, pattern: pattern.source });
  }

  fill(selector: string, value: string): Promise<unknown> {
    return this.#call("fill", { selector, value });
  }

  click(selector: string): Promise<unknown> {
    return this.#call("click", { selector });
  }

  async textContent(selector: string): Promise<string> {
    return String(await this.#call("textContent", { selector }) ?? "");
  }

  /**
   * Runs `fn(arg)` in the page and returns its JSON result. `fn` travels as source text: it must not use
   * anything from the test module's scope, only `arg` and the page's globals.
   */
  async evaluate<A, R>(fn: (arg: A) => Promise<R> | R, arg: A): Promise<R> {
    return await this.#call("evaluate", { source: fn.toString(), arg }) as R;
  }

  /** Off-host requests and page errors seen so far. */
  async fence(): Promise<Fence> {
    return await this.#call("fence") as Fence;
  }

  /** Runs `fn`; if it throws, saves a screenshot named after `name` and rethrows. */
  async screenshotOnFailure<T>(name: string, fn: () => Promise<T>): Promise<T> {
    try {
      return await fn();
    } catch (err) {
      await Deno.mkdir(SCREENSHOT_DIR, { recursive: true });
      const path = new URL(`${name.replace(/[^A-Za-z0-9]+/g, "-")}.png`, SCREENSHOT_DIR).pathname;
      await this.#call("screenshot", { path }).then(
        () => report(`screenshot of the failed step: ${path}`),
        (shotErr: unknown) => report(`could not take a screenshot: ${String(shotErr)}`),
      );
      throw err;
    }
  }

  async [Symbol.asyncDispose](): Promise<void> {
    try {
      await this.#stdin.write(new TextEncoder().encode(`${JSON.stringify({ id: 0, method: "close" })}\n`));
      await this.#stdin.close();
    } catch { /* the driver already exited */ }
    const timer = setTimeout(() => {
      try {
        this.#child.kill("SIGKILL");
      } catch { /* exited */ }
    }, 15_000);
    try {
      await this.#child.status;
      await this.#reading;
    } finally {
      clearTimeout(timer);
    }
  }
}
