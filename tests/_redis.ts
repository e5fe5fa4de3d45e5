/**
 * A real Redis for the tests: Debian's `redis-server`, started by the test on a free loopback port with no
 * persistence, so every start is empty. Where it is not installed the tests skip with the reason, unless
 * AERO_REQUIRE_REDIS=1 (set by .ci/run), where its absence fails them.
 * @module
 */
import { hasCommand } from "./_util.ts";

/** A redis-server subprocess on 127.0.0.1. */
export class RedisServer implements AsyncDisposable {
  readonly port: number;
  #child: Deno.ChildProcess | undefined;

  private constructor(port: number) {
    this.port = port;
  }

  get url(): string {
    return `redis://127.0.0.1:${this.port}`;
  }

  /** Starts one on a free port; resolves once it answers PING. */
  static async start(): Promise<RedisServer> {
    const probe = Deno.listen({ hostname: "127.0.0.1", port: 0 });
    const port = (probe.addr as Deno.NetAddr).port;
    probe.close();
    const server = new RedisServer(port);
    await server.restart();
    return server;
  }

  /** Whether it runs now. */
  get running(): boolean {
    return this.#child !== undefined;
  }

  /** Starts the server again on the same port (after `stop`): it comes back empty, as after a crash. */
  async restart(): Promise<void> {
    if (this.#child !== undefined) throw new Error("redis-server is already running");
    this.#child = new Deno.Command("redis-server", {
      args: [
        "--port",
        String(this.port),
        "--bind",
        "127.0.0.1",
        "--save",
        "",
        "--appendonly",
        "no",
        "--protected-mode",
        "no",
      ],
      stdin: "null",
      stdout: "null",
      stderr: "null",
    }).spawn();
    const deadline = performance.now() + 10_000;
    while (performance.now() < deadline) {
      if (await this.ping()) return;
      await new Promise((resolve) => setTimeout(resolve, 25));
    }
    await this.stop();
    throw new Error(`redis-server did not answer on port ${this.port} within 10 s`);
  }

  /** One command through `redis-cli` (from redis-tools, which redis-server depends on); its output. */
  async command(...words: string[]): Promise<string> {
    const output = await new Deno.Command("redis-cli", {
      args: ["-h", "127.0.0.1", "-p", String(this.port), ...words],
      stdin: "null",
      stdout: "piped",
      stderr: "piped",
    }).output();
    return new TextDecoder().decode(output.stdout).trim();
  }

  async ping(): Promise<boolean> {
    try {
      return (await this.command("PING")) === "PONG";
    } catch {
      return false;
    }
  }

  /** Sends `signal` to the server (SIGSTOP hangs it as a stuck host would, SIGCONT resumes it). */
  signal(signal: Deno.Signal): void {
    this.#child?.kill(signal);
  }

  /** Stops the server (SIGKILL: no chance to save, as in a crash); resolves when it has exited. */
  async stop(): Promise<void> {
    const child = this.#child;
    if (child === undefined) return;
    this.#child = undefined;
    try {
      child.kill("SIGKILL");
    } catch {
      // Already gone.
    }
    await child.status;
  }

  async [Symbol.asyncDispose](): Promise<void> {
    await this.stop();
  }
}

/** Why the Redis tests of `what` cannot run here (printed), or undefined when they can. */
export async function redisUnavailable(what: string): Promise<string | undefined> {
  if (await hasCommand("redis-server")) return undefined;
  const reason = "redis-server is not installed (apt-get install redis-server)";
  if (Deno.env.get("AERO_REQUIRE_REDIS") === "1") throw new Error(`AERO_REQUIRE_REDIS=1 but ${reason}`);
  // deno-lint-ignore no-console
  console.log(`SKIP ${what}: ${reason}`);
  return reason;
}
