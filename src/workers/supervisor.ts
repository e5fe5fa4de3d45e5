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
/** How often every worker is asked for its metrics even without a scrape: a liveness check, and last values. */
const HEARTBEAT_MS = 2000;
/** Heartbeats in a row a worker may miss before it is taken for hung, killed and replaced. */
const HEARTBEAT_MISSES = 3;
/** After SIGTERM, how much longer than the drain grace the workers get before SIGKILL. */
const STOP_MARGIN_MS = 5000;
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
  /**
   * `Deno.permissions.querySync({ name }).partial`: the whole of a permission is granted but for a deny list
   * (`--allow-net --deny-net=...`), which the permission API cannot show.
   */
  readonly partial: (name: "net" | "read" | "env") => boolean;
}

/** The facts of the running process. */
export function currentProcess(): ProcessFacts {
  return {
    standalone: Deno.build.standalone,
    execPath: Deno.execPath(),
    mainModule: Deno.mainModule,
    args: Deno.args,
    query: (descriptor) => Deno.permissions.querySync(descriptor).state,
    partial: (name) => Deno.permissions.querySync({ name }).partial === true,
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
 *   sandboxed task carries, from src/policy/sandbox.ts) when it holds a deny list and that list checks out
 *   as the sandbox's (any other deny list is refused: Deno cannot show it); or `--allow-net=127.0.0.0/8`
 *   when it holds exactly loopback (how the tests and the bench run relays). Any other narrowed grant cannot
 *   be read back, and is refused.
 * - environment: `--allow-env` or `--allow-env=AERO_PROXY_*`, whichever it holds (`--deny-env`, `--deny-read`:
 *   refused).
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
    if (facts.partial("net")) {
      // A deny list cannot be read back; the one list a worker can be given is the sandbox's, checked here
      // range by range (an operator's own list, or the sandbox with exceptions, is refused, not dropped).
      if (!holdsSandboxList(net)) {
        throw new WorkerSetupError(
          `AERO_PROXY_WORKERS=${config.workers} can pass on the sandbox's --deny-net list (deno task ` +
            "start:sandboxed) but not another deny list; compile a binary with it instead (its workers carry " +
            "its embedded permissions)",
        );
      }
      flags.push(`--deny-net=${sandboxDenyList().join(",")}`);
    }
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
  for (const name of ["read", "env"] as const) {
    if (facts.partial(name)) {
      throw new WorkerSetupError(
        `AERO_PROXY_WORKERS=${config.workers} cannot pass a --deny-${name} list on to its workers`,
      );
    }
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

/** IPv4 text of a 32-bit address. */
function ipv4(value: number): string {
  return [value >>> 24, (value >>> 16) & 255, (value >>> 8) & 255, value & 255].join(".");
}

/**
 * Whether the network permission denies what the sandbox's list denies, probed at both ends of every range and
 * just outside them: the list of `deno task start:sandboxed`, not one built with exceptions or another one.
 */
function holdsSandboxList(net: (host: string) => Deno.PermissionState): boolean {
  const list = sandboxDenyList();
  const ranges = list.filter((entry) => !entry.startsWith("[")).map((entry) => {
    const [address, prefix] = entry.split("/");
    const start = address!.split(".").reduce((acc, octet) => ((acc << 8) | Number(octet)) >>> 0, 0);
    return { start, end: start + 2 ** (32 - Number(prefix)) - 1 };
  });
  const inList = (value: number) => ranges.some((r) => value >= r.start && value <= r.end);
  for (const { start, end } of ranges) {
    if (net(ipv4(start)) !== "denied" || net(ipv4(end)) !== "denied") return false;
    for (const outside of [start - 1, end + 1]) {
      if (outside >= 0 && outside <= 0xffff_ffff && !inList(outside) && net(ipv4(outside)) === "denied") {
        return false;
      }
    }
  }
  return list.filter((entry) => entry.startsWith("[")).every((entry) => net(entry) === "denied");
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
  /** Whether the process in the slot now has listened. */
  listened: boolean;
  /** Whether the process in the slot said it is draining (it does not come back to ready). */
  draining: boolean;
  /** Whether any process in the slot ever listened: after that, exit code 2 is a crash like any other. */
  everListened: boolean;
  /** Collections in a row this worker did not answer. */
  misses: number;
  /** Its metrics at the last collection it answered (a worker that misses one is shown with these). */
  last: unknown[] | undefined;
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
  /**
   * Counters and histograms of workers that have exited, summed: the host's totals never go down when a worker
   * is replaced (Prometheus would read that as a counter reset).
   */
  #retired: object[] = [];
  /** The last update of {@linkcode #retired}, which every aggregation waits for. */
  #retiring: Promise<void> = Promise.resolve();
  /** The aggregation running now: concurrent scrapes share it. */
  #inflight: Promise<string> | undefined;
  #heartbeat: ReturnType<typeof setInterval> | undefined;
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
      draining: false,
      everListened: false,
      misses: 0,
      last: undefined,
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
    this.#heartbeat = setInterval(() => void this.#beat(), HEARTBEAT_MS);
  }

  /** Asks every listening worker for its metrics; one that misses HEARTBEAT_MISSES in a row is killed. */
  async #beat(): Promise<void> {
    const id = this.#nextId++;
    await Promise.all(this.#slots.map((slot) => this.#collect(slot, id)));
    for (const slot of this.#slots) {
      if (slot.child === undefined || slot.misses < HEARTBEAT_MISSES || this.#stopping) continue;
      logger.error("worker_unresponsive", {
        event: "worker_unresponsive",
        worker: slot.index,
        pid: slot.pid ?? null,
        missedMs: slot.misses * COLLECT_TIMEOUT_MS,
      });
      this.#signal(slot, "SIGKILL");
    }
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
    slot.draining = false;
    slot.misses = 0;
    slot.last = undefined;
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
        slot.everListened = true;
        this.#updateFleet(slot);
        return;
      case "draining":
        slot.ready = false;
        slot.draining = true;
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
    // The pipe to a dead worker is closed, or every restart would keep one descriptor.
    slot.stdin?.abort().catch(() => {});
    slot.stdin = undefined;
    slot.ready = false;
    this.#retire(slot.last);
    slot.last = undefined;
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
    if (status.code === EXIT_USAGE && !slot.everListened) {
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
      if (metrics === undefined) {
        // A worker that does not answer takes no new sessions' worth of trust: not ready until it answers.
        slot.misses++;
        if (slot.ready) {
          slot.ready = false;
          this.#updateFleet();
        }
      } else {
        slot.misses = 0;
        slot.last = metrics;
        if (!slot.ready && slot.listened && !slot.draining && !this.#stopping && slot.child !== undefined) {
          slot.ready = true;
          this.#updateFleet(slot);
        }
      }
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
  exposition(): Promise<string> {
    this.#inflight ??= this.#aggregate().finally(() => this.#inflight = undefined);
    return this.#inflight;
  }

  /** Adds an exited worker's counters and histograms (its last values) to the retired totals. */
  #retire(metrics: unknown[] | undefined): void {
    if (metrics === undefined) return;
    const lasting = (metrics as { type?: string }[]).filter((m) =>
      m.type === "counter" || m.type === "histogram"
    );
    this.#retiring = this.#retiring.then(async () => {
      const registry = client.AggregatorRegistry.aggregate([this.#retired, lasting]);
      this.#retired = await registry.getMetricsAsJSON();
    }).catch(() => {});
  }

  async #aggregate(): Promise<string> {
    const id = this.#nextId++;
    const answers = await Promise.all(this.#slots.map((slot) => this.#collect(slot, id)));
    await this.#retiring;
    this.#workerSessions.reset();
    const collected: object[] = [];
    if (this.#retired.length > 0) collected.push(this.#retired);
    answers.forEach((answer, index) => {
      // A worker that did not answer in time is shown with its last values rather than left out.
      const metrics = answer ??
        (this.#slots[index]!.child === undefined ? undefined : this.#slots[index]!.last);
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
    clearInterval(this.#heartbeat);
    this.#updateFleet();
    for (const slot of this.#slots) {
      clearTimeout(slot.restartTimer);
      slot.restartTimer = undefined;
      this.#signal(slot, "SIGTERM");
    }
    // A worker that has not finished its drain well after the grace (hung) is killed.
    const force = setTimeout(() => {
      for (const slot of this.#slots) this.#signal(slot, "SIGKILL");
    }, this.#config.shutdownGraceMs + STOP_MARGIN_MS);
    await Promise.all(this.#slots.map((s) => s.done));
    clearTimeout(force);
  }

  /** Forced stop: SIGKILL to every worker. */
  kill(): void {
    this.#stopping = true;
    clearInterval(this.#heartbeat);
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
