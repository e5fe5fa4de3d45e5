/**
 * `AERO_PROXY_WORKERS=N` (N > 1): the supervisor. It serves no relay traffic; it starts N copies of this
 * program as workers that listen on the same port (`SO_REUSEPORT`, the kernel spreads connections over them),
 * restarts a worker that dies (with a backoff), forwards SIGTERM to all of them on shutdown, aggregates their
 * metrics for any scrape and tells each one whether all of them are ready.
 *
 * Deno cannot tell a program its own permission flags, so {@linkcode workerCommand} rebuilds them from what
 * the supervisor holds (see its comment); a worker never gets `--allow-run`, and revokes it anyway.
 * @module
 */
import { getLogger } from "@logtape/logtape";
import client from "prom-client";
import type { Config } from "../config.ts";
import { sandboxDenyList } from "../policy/sandbox.ts";
import {
  decodeWorkerMessage,
  encodeSupervisorMessage,
  ipcText,
  isIpcLine,
  readLines,
  type SupervisorMessage,
  WORKER_INDEX_ENV,
  type WorkerMessage,
} from "./ipc.ts";

const logger = getLogger(["aero-net-proxy", "supervisor"]);

/** A restart waits this long after the first crash, doubling with each crash in a row up to the cap. */
const RESTART_FIRST_MS = 100;
const RESTART_MAX_MS = 10_000;
/** A worker that ran this long before it died starts the backoff afresh. */
const HEALTHY_RUN_MS = 30_000;
/** How long a scrape waits for each worker's metrics: a hung worker is left out, not waited for. */
const COLLECT_TIMEOUT_MS = 2000;
/** Exit code of a worker (and this supervisor) for bad usage or configuration, as in main.ts. */
const EXIT_USAGE = 2;
/** Files the start tasks and the binary may read; a worker gets the ones the supervisor may read. */
const KNOWN_READS = ["/run/secrets", "/etc/aero-net-proxy", "/proc/self/limits", "/dev/null"];

/** What {@linkcode workerCommand} needs to know about this process; injected so that it stays testable. */
export interface ProcessFacts {
  /** `Deno.build.standalone`: a `deno compile`d binary. */
  readonly standalone: boolean;
  /** `Deno.execPath()`. */
  readonly execPath: string;
  /** `Deno.mainModule`. */
  readonly mainModule: string;
  /** `Deno.args`. */
  readonly args: readonly string[];
  /** `Deno.permissions.querySync(...).state`. */
  readonly query: (descriptor: Deno.PermissionDescriptor) => Deno.PermissionState;
}

/** The facts of the running process. */
export function currentProcess(): ProcessFacts {
  return {
    standalone: Deno.build.standalone,
    execPath: Deno.execPath(),
    mainModule: Deno.mainModule,
    args: Deno.args,
    query: (descriptor) => Deno.permissions.querySync(descriptor).state,
  };
}

/** Workers cannot be started with the permissions this process holds; the message says what is missing. */
export class WorkerSetupError extends Error {
  override name = "WorkerSetupError";
}

/** A worker's command line, less the per-worker flags {@linkcode Supervisor} appends. */
export interface WorkerCommand {
  readonly cmd: string;
  readonly args: readonly string[];
}

/**
 * The command that starts a worker: the compiled binary itself (its permissions, `--unstable-net` included,
 * are embedded), or `deno run` with flags rebuilt from what this process holds:
 *
 * - network: `--allow-net` if it holds all of it, plus the sandbox's `--deny-net` list (the one deno.json's
 *   sandboxed task carries, from src/policy/sandbox.ts) when 10.0.0.1 is denied; or `--allow-net=127.0.0.0/8`
 *   when it holds exactly loopback (how the tests and the bench run relays). Any other narrowed grant cannot
 *   be read back, and is refused.
 * - environment: `--allow-env` or `--allow-env=AERO_PROXY_*`, whichever it holds.
 * - files: `--allow-read`, or those of the start tasks' files and the configured token and TLS files that it
 *   may read.
 * - never `--allow-run`; always `--unstable-net` (for `reusePort`).
 *
 * The program is this Deno (`Deno.execPath()`) if `--allow-run` names it, else `deno` from PATH if that is
 * what `--allow-run=deno` granted (`deno task start` under npx sees the npx wrapper path, not the binary).
 * @throws {WorkerSetupError} when a permission is missing or cannot be rebuilt
 */
export function workerCommand(config: Config, facts: ProcessFacts): WorkerCommand {
  const { query } = facts;
  if (facts.standalone) {
    if (query({ name: "run", command: facts.execPath }) !== "granted") {
      throw new WorkerSetupError(
        `AERO_PROXY_WORKERS=${config.workers} needs the binary compiled with --allow-run=${facts.execPath} ` +
          "(deno task compile grants /usr/local/bin/aero-net-proxy, where the Docker image puts it)",
      );
    }
    return { cmd: facts.execPath, args: [...facts.args] };
  }
  let cmd: string;
  if (query({ name: "run", command: facts.execPath }) === "granted") cmd = facts.execPath;
  else if (query({ name: "run", command: "deno" }) === "granted") cmd = "deno";
  else {
    throw new WorkerSetupError(
      `AERO_PROXY_WORKERS=${config.workers} needs --allow-run=deno (or --allow-run=${facts.execPath}) ` +
        "to start its workers; deno task start grants it",
    );
  }
  const flags = ["run", "--unstable-net"];
  const net = (host?: string) => query(host === undefined ? { name: "net" } : { name: "net", host });
  if (net() === "granted") {
    flags.push("--allow-net");
    if (net("10.0.0.1") === "denied") flags.push(`--deny-net=${sandboxDenyList().join(",")}`);
  } else if (
    ["127.0.0.1", "127.1.2.3", "127.255.255.254"].every((h) => net(h) === "granted") &&
    ["128.0.0.1", "126.255.255.255", "8.8.8.8"].every((h) => net(h) !== "granted")
  ) {
    flags.push("--allow-net=127.0.0.0/8");
  } else {
    throw new WorkerSetupError(
      `AERO_PROXY_WORKERS=${config.workers} can pass on --allow-net (with or without the sandbox's ` +
        "--deny-net) or --allow-net=127.0.0.0/8, not another narrowed network permission",
    );
  }
  if (query({ name: "env" }) === "granted") flags.push("--allow-env");
  else if (query({ name: "env", variable: WORKER_INDEX_ENV }) === "granted") {
    flags.push("--allow-env=AERO_PROXY_*");
  } else throw new WorkerSetupError(`AERO_PROXY_WORKERS=${config.workers} needs --allow-env='AERO_PROXY_*'`);
  if (query({ name: "read" }) === "granted") flags.push("--allow-read");
  else {
    const paths = [...KNOWN_READS, config.authTokenFile, config.tlsCertFile, config.tlsKeyFile]
      .filter((path) => path !== "" && !path.includes(",") && query({ name: "read", path }) === "granted");
    if (paths.length > 0) flags.push(`--allow-read=${[...new Set(paths)].join(",")}`);
  }
  const main = decodeURIComponent(new URL(facts.mainModule).pathname);
  return { cmd, args: [...flags, main, ...facts.args] };
}

/** Settings of a {@linkcode Supervisor}. */
export interface SupervisorOptions {
  readonly command: WorkerCommand;
  /** Extra environment for every worker (the generated token, when there is one). */
  readonly env?: Readonly<Record<string, string>>;
  /** Writes a worker's log line, newline included, to this process's stdout. */
  readonly passThrough?: (line: Uint8Array) => void;
}

/** One worker slot: the process in it now, and its history. */
interface Slot {
  readonly index: number;
  child: Deno.ChildProcess | undefined;
  stdin: WritableStreamDefaultWriter<Uint8Array> | undefined;
  pid: number | undefined;
  ready: boolean;
  listened: boolean;
  startedAt: number;
  /** Crashes in a row (reset by a run of HEALTHY_RUN_MS). */
  crashes: number;
  /** Settles when the process has exited and its stdout is read. */
  done: Promise<void> | undefined;
  restartTimer: ReturnType<typeof setTimeout> | undefined;
  /** Metric collections waiting for this worker, by id. */
  readonly collects: Map<number, (metrics: unknown[] | undefined) => void>;
}

const newline = new Uint8Array([0x0a]);

function writeStdout(line: Uint8Array): void {
  for (let offset = 0; offset < line.byteLength;) offset += Deno.stdout.writeSync(line.subarray(offset));
}

/** Starts, watches and stops the workers. */
export class Supervisor {
  readonly #config: Config;
  readonly #options: SupervisorOptions;
  readonly #slots: Slot[];
  readonly #passThrough: (line: Uint8Array) => void;
  #stopping = false;
  #fleetReady = false;
  #nextId = 1;
  /** Settles with an exit code when the supervisor cannot go on (a worker refused the configuration). */
  readonly #fatal = Promise.withResolvers<number>();
  readonly #registry = new client.Registry();
  readonly #restarts: client.Counter;
  readonly #workerSessions: client.Gauge;

  constructor(config: Config, options: SupervisorOptions) {
    this.#config = config;
    this.#options = options;
    this.#passThrough = options.passThrough ?? writeStdout;
    this.#slots = Array.from({ length: config.workers }, (_, index) => ({
      index,
      child: undefined,
      stdin: undefined,
      pid: undefined,
      ready: false,
      listened: false,
      startedAt: 0,
      crashes: 0,
      done: undefined,
      restartTimer: undefined,
      collects: new Map(),
    }));
    const registers = [this.#registry];
    // deno-lint-ignore no-this-alias
    const self = this;
    new client.Gauge({
      name: "aero_proxy_workers",
      help: "Worker processes running now (AERO_PROXY_WORKERS)",
      registers,
      collect() {
        this.set(self.#slots.filter((s) => s.child !== undefined).length);
      },
    });
    this.#restarts = new client.Counter({
      name: "aero_proxy_worker_restarts_total",
      help: "Workers started again after they died",
      registers,
    });
    this.#workerSessions = new client.Gauge({
      name: "aero_proxy_worker_sessions_active",
      help: "WebSocket sessions open now, per worker (the balance of the kernel's spreading)",
      labelNames: ["worker"],
      registers,
    });
  }

  /** Process ids of the workers running now, by index (`undefined` for a slot waiting to restart). */
  get pids(): (number | undefined)[] {
    return this.#slots.map((s) => s.pid);
  }

  /** Settles with an exit code if the supervisor has to give up (a worker exited with the usage code). */
  get fatal(): Promise<number> {
    return this.#fatal.promise;
  }

  /** Starts every worker. */
  start(): void {
    for (const slot of this.#slots) this.#spawn(slot);
  }

  /** Whether every worker is ready and none is shutting down. */
  ready(): boolean {
    return this.#fleetReady;
  }

  #spawn(slot: Slot): void {
    slot.restartTimer = undefined;
    if (this.#stopping) return;
    const { cmd, args } = this.#options.command;
    let child: Deno.ChildProcess;
    try {
      child = new Deno.Command(cmd, {
        args: [...args, `--port=${this.#config.port}`, "--metrics-port="],
        env: { ...this.#options.env, [WORKER_INDEX_ENV]: String(slot.index) },
        stdin: "piped",
        stdout: "piped",
        stderr: "inherit",
        // A process group of its own: a terminal's Ctrl-C reaches the supervisor, which forwards SIGTERM once
        // (a worker that got both would take the second as "force").
        detached: true,
      }).spawn();
    } catch (err: unknown) {
      logger.error("worker_spawn_failed", {
        event: "worker_spawn_failed",
        worker: slot.index,
        reason: err instanceof Error ? `${err.name}: ${err.message}` : String(err),
      });
      this.#scheduleRestart(slot);
      return;
    }
    slot.child = child;
    slot.pid = child.pid;
    slot.stdin = child.stdin.getWriter();
    slot.ready = false;
    slot.listened = false;
    slot.startedAt = performance.now();
    logger.info("worker_started", { event: "worker_started", worker: slot.index, pid: child.pid });
    const reading = readLines(child.stdout, (line) => this.#line(slot, line), {
      onOverlong: () =>
        logger.warn("worker_line_dropped", { event: "worker_line_dropped", worker: slot.index }),
    }).catch(() => {});
    slot.done = Promise.all([child.status, reading]).then(([status]) => this.#exited(slot, child, status));
  }

  #line(slot: Slot, line: Uint8Array): void {
    if (!isIpcLine(line)) {
      const out = new Uint8Array(line.byteLength + 1);
      out.set(line);
      out.set(newline, line.byteLength);
      this.#passThrough(out);
      return;
    }
    const message = decodeWorkerMessage(ipcText(line));
    if (message !== undefined) this.#receive(slot, message);
  }

  #receive(slot: Slot, message: WorkerMessage): void {
    switch (message.type) {
      case "ready":
        slot.ready = true;
        slot.listened = true;
        this.#updateFleet(slot);
        return;
      case "draining":
        slot.ready = false;
        this.#updateFleet();
        return;
      case "scrape": {
        const id = message.id;
        this.exposition().then(
          (text) => this.#send(slot, { type: "scraped", id, text }),
          () => this.#send(slot, { type: "scraped", id, text: null }),
        );
        return;
      }
      case "metrics":
        slot.collects.get(message.id)?.(message.metrics);
        slot.collects.delete(message.id);
        return;
    }
  }

  #send(slot: Slot, message: SupervisorMessage): void {
    // A worker that has exited cannot be written to; its slot's writer then rejects, which is fine.
    slot.stdin?.write(encodeSupervisorMessage(message)).catch(() => {});
  }

  /** Recomputes the fleet's readiness; tells everyone when it changed, and `joined` (just ready) in any case. */
  #updateFleet(joined?: Slot): void {
    const ready = !this.#stopping && this.#slots.every((s) => s.ready);
    if (ready !== this.#fleetReady) {
      this.#fleetReady = ready;
      logger.info("workers_ready", { event: "workers_ready", ready });
      for (const slot of this.#slots) this.#send(slot, { type: "fleet", ready });
    } else if (joined !== undefined) {
      this.#send(joined, { type: "fleet", ready });
    }
  }

  #exited(slot: Slot, child: Deno.ChildProcess, status: Deno.CommandStatus): void {
    if (slot.child !== child) return;
    slot.child = undefined;
    slot.pid = undefined;
    slot.stdin = undefined;
    slot.ready = false;
    for (const settle of slot.collects.values()) settle(undefined);
    slot.collects.clear();
    this.#updateFleet();
    if (this.#stopping) {
      logger.info("worker_stopped", {
        event: "worker_stopped",
        worker: slot.index,
        pid: child.pid,
        code: status.code,
        signal: status.signal,
      });
      return;
    }
    if (status.code === EXIT_USAGE && !slot.listened) {
      // The same configuration would fail again: give up instead of restarting for ever.
      logger.fatal("worker_refused_configuration", {
        event: "worker_refused_configuration",
        worker: slot.index,
        code: status.code,
      });
      this.#fatal.resolve(EXIT_USAGE);
      return;
    }
    const ranMs = performance.now() - slot.startedAt;
    if (ranMs >= HEALTHY_RUN_MS) slot.crashes = 0;
    logger.error("worker_exited", {
      event: "worker_exited",
      worker: slot.index,
      pid: child.pid,
      code: status.code,
      signal: status.signal,
      ranMs: Math.round(ranMs),
    });
    this.#scheduleRestart(slot);
  }

  #scheduleRestart(slot: Slot): void {
    if (this.#stopping) return;
    const delayMs = Math.min(RESTART_MAX_MS, RESTART_FIRST_MS * 2 ** slot.crashes);
    slot.crashes = Math.min(slot.crashes + 1, 30);
    this.#restarts.inc();
    logger.info("worker_restarting", { event: "worker_restarting", worker: slot.index, delayMs });
    slot.restartTimer = setTimeout(() => this.#spawn(slot), delayMs);
  }

  /** Asks one worker for its metrics; `undefined` if it does not answer within the timeout or exits. */
  #collect(slot: Slot, id: number): Promise<unknown[] | undefined> {
    if (slot.child === undefined || !slot.listened) return Promise.resolve(undefined);
    const { promise, resolve } = Promise.withResolvers<unknown[] | undefined>();
    const timer = setTimeout(() => settle(undefined), COLLECT_TIMEOUT_MS);
    const settle = (metrics: unknown[] | undefined) => {
      clearTimeout(timer);
      slot.collects.delete(id);
      resolve(metrics);
    };
    slot.collects.set(id, settle);
    this.#send(slot, { type: "collect", id });
    return promise;
  }

  /**
   * The Prometheus exposition of the whole host: every live worker's metrics combined by prom-client's
   * `AggregatorRegistry` (each metric's own aggregator: counters, gauges and histograms sum; build info and
   * start time do not), plus the supervisor's own: workers running, restarts, sessions per worker.
   */
  async exposition(): Promise<string> {
    const id = this.#nextId++;
    const answers = await Promise.all(this.#slots.map((slot) => this.#collect(slot, id)));
    this.#workerSessions.reset();
    const collected: object[] = [];
    answers.forEach((metrics, index) => {
      if (metrics === undefined) return;
      collected.push(metrics);
      const sessions = (metrics as client.MetricObjectWithValues<client.MetricValue<string>>[])
        .find((m) => m.name === "aero_proxy_sessions_active")?.values[0]?.value;
      if (typeof sessions === "number") this.#workerSessions.set({ worker: String(index) }, sessions);
    });
    collected.push(await this.#registry.getMetricsAsJSON());
    return client.AggregatorRegistry.aggregate(collected).metrics();
  }

  /** The content type of {@linkcode exposition}. */
  get contentType(): string {
    return this.#registry.contentType;
  }

  /**
   * Graceful stop: SIGTERM to every worker (each drains as a single relay does), then waits for all of them.
   * Restarts stop at once.
   */
  async stop(): Promise<void> {
    this.#stopping = true;
    this.#updateFleet();
    for (const slot of this.#slots) {
      clearTimeout(slot.restartTimer);
      slot.restartTimer = undefined;
      this.#signal(slot, "SIGTERM");
    }
    await Promise.all(this.#slots.map((s) => s.done));
  }

  /** Forced stop: SIGKILL to every worker. */
  kill(): void {
    this.#stopping = true;
    for (const slot of this.#slots) {
      clearTimeout(slot.restartTimer);
      this.#signal(slot, "SIGKILL");
    }
  }

  #signal(slot: Slot, signal: Deno.Signal): void {
    try {
      slot.child?.kill(signal);
    } catch { /* already exited */ }
  }

  /**
   * `/healthz`, `/readyz` and `/metrics` of the supervisor's metrics listener (AERO_PROXY_METRICS_PORT):
   * the host's aggregate and the fleet's readiness. Every other path is 404.
   */
  operationsHandler = async (request: Request): Promise<Response> => {
    const { pathname } = new URL(request.url);
    const plain = (status: number, body: string, headers: Record<string, string> = {}) =>
      new Response(`${body}\n`, {
        status,
        headers: { "content-type": "text/plain; charset=utf-8", ...headers },
      });
    if (pathname !== "/healthz" && pathname !== "/readyz" && pathname !== "/metrics") {
      return plain(404, "Not Found");
    }
    if (request.method !== "GET" && request.method !== "HEAD") {
      return plain(405, "Method Not Allowed", { allow: "GET, HEAD" });
    }
    if (pathname === "/healthz") return plain(200, "ok");
    if (pathname === "/readyz") {
      return this.#stopping
        ? plain(503, "draining")
        : this.#fleetReady
        ? plain(200, "ready")
        : plain(503, "workers starting");
    }
    return new Response(await this.exposition(), {
      headers: { "content-type": this.contentType, "cache-control": "no-store" },
    });
  };
}
