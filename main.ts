/**
 * Entry point: configuration -> logging -> relay -> wait for a signal -> graceful shutdown.
 * The only module that reads the environment, writes to the console or exits.
 * @module
 */
import { getLogger } from "@logtape/logtape";
import denoJson from "./deno.json" with { type: "json" };
import { generateToken } from "./src/auth.ts";
import { type Config, ConfigError, ENV_NAMES, helpText, parseCommand } from "./src/config.ts";
import { configureLogging } from "./src/logging.ts";
import { Metrics } from "./src/metrics.ts";
import { MUX_PATH } from "./src/protocol/mod.ts";
import { type RunningRelay, serveRelay, socketLimitFor } from "./src/server.ts";
import { openFileLimit, socketBudget } from "./src/budget.ts";
import { WORKER_INDEX_ENV } from "./src/workers/ipc.ts";
import { currentProcess, Supervisor, workerCommand, WorkerSetupError } from "./src/workers/supervisor.ts";
import { WorkerLink } from "./src/workers/worker.ts";

/** Exit code for bad usage or configuration. */
const EXIT_USAGE = 2;
/** Exit codes for a second signal during shutdown, as shells report them (128 + signal number). */
const EXIT_FORCED: Record<string, number> = { SIGINT: 130, SIGTERM: 143 };

function readEnv(): Record<string, string | undefined> {
  return Object.fromEntries(ENV_NAMES.map((name) => [name, Deno.env.get(name)]));
}

function fail(message: string): never {
  // deno-lint-ignore no-console
  console.error(`aero-net-proxy: ${message}`);
  Deno.exit(EXIT_USAGE);
}

function errorText(err: unknown): string {
  return err instanceof Error ? err.message : String(err);
}

/** Reads a file named by the configuration; a failure is a configuration error (exit 2). */
function readConfigFile(variable: string, path: string): string {
  try {
    return Deno.readTextFileSync(path);
  } catch (err: unknown) {
    fail(`invalid configuration: ${variable} ${JSON.stringify(path)} cannot be read: ${errorText(err)}`);
  }
}

/**
 * Under `start:sandboxed` Deno itself refuses the special ranges; an operator who also allows some of them in the
 * policy should hear that the sandbox wins.
 */
function warnAboutSandbox(config: Config, logger: ReturnType<typeof getLogger>): void {
  const probes = config.allowPrivateIps ? ["10.0.0.1", "192.168.0.1", "169.254.169.254"] : [];
  probes.push(...config.allowCidrs.map((cidr) => cidr.split("/")[0]!));
  // Deno's permission API wants IPv6 addresses in brackets.
  const denied = probes.filter((host) =>
    Deno.permissions.querySync({ name: "net", host: host.includes(":") ? `[${host}]` : host }).state ===
      "denied"
  );
  if (denied.length > 0) {
    logger.warn("config_warning", {
      event: "config_warning",
      reason: `Deno's --deny-net sandbox refuses ${denied.join(", ")} although the policy allows them; ` +
        "such OPENs get ERROR 3 (use deno task start instead of start:sandboxed to lift it)",
    });
  }
}

/** `--healthcheck`: probe the relay that the same settings describe (for Docker's HEALTHCHECK). */
async function healthcheck(config: Config): Promise<number> {
  const local = (host: string) => (host === "0.0.0.0" || host === "::" ? "127.0.0.1" : host);
  try {
    if (config.metricsPort !== undefined || config.tlsCertFile === "") {
      const [host, port] = config.metricsPort !== undefined
        ? [local(config.metricsHost), config.metricsPort]
        : [local(config.host), config.port];
      const response = await fetch(`http://${host}:${port}/healthz`, { signal: AbortSignal.timeout(3000) });
      await response.body?.cancel();
      if (!response.ok) throw new Error(`/healthz answered ${response.status}`);
    } else {
      // With TLS on the main port and no metrics listener, an accepted connection is the best local check.
      const conn = await Deno.connect({ hostname: local(config.host), port: config.port });
      conn.close();
    }
    return 0;
  } catch (err: unknown) {
    // deno-lint-ignore no-console
    console.error(`aero-net-proxy: unhealthy: ${errorText(err)}`);
    return 1;
  }
}

/**
 * The relay's URL; with a token generated for this run, also tells it once, to stderr, never to the log stream:
 * this is the only place that token appears.
 */
function announce(tls: boolean, hostname: string, port: number, generated: string | undefined): string {
  const host = hostname.includes(":") ? `[${hostname}]` : hostname;
  const base = `${tls ? "wss" : "ws"}://${host}:${port}${MUX_PATH}`;
  if (generated !== undefined) {
    // deno-lint-ignore no-console
    console.error(
      `aero-net-proxy: AERO_PROXY_AUTH_TOKEN is not set; generated a token for this run.\n` +
        `Connect to: ${base}?token=${generated}`,
    );
  }
  return base;
}

/** Resolves with the first SIGINT or SIGTERM; a second one exits at once (after `onForce`). */
function firstSignal(logger: ReturnType<typeof getLogger>, onForce: () => void = () => {}): Promise<string> {
  const { promise, resolve } = Promise.withResolvers<string>();
  let stopping = false;
  for (const signal of ["SIGINT", "SIGTERM"] as const) {
    Deno.addSignalListener(signal, () => {
      if (!stopping) {
        stopping = true;
        resolve(signal);
        return;
      }
      logger.warn("forced_exit", { event: "forced_exit", signal });
      onForce();
      Deno.exit(EXIT_FORCED[signal] ?? 1);
    });
  }
  return promise;
}

/**
 * AERO_PROXY_WORKERS > 1: this process supervises the workers and serves no relay traffic itself (only the
 * metrics listener, if configured, with the host's aggregate). See src/workers/supervisor.ts.
 */
async function supervise(initial: Config): Promise<void> {
  let config = initial;
  let generated: string | undefined;
  if (config.authTokens.length === 0) generated = generateToken();
  await configureLogging(config.logLevel, config.logFormat);
  const logger = getLogger(["aero-net-proxy", "main"]);
  let command;
  try {
    command = workerCommand(config, currentProcess());
  } catch (err: unknown) {
    if (err instanceof WorkerSetupError) fail(err.message);
    throw err;
  }
  if (config.port === 0) {
    // Every worker must listen on the same port: the supervisor picks a free one for all of them.
    try {
      const probe = Deno.listen({ hostname: config.host, port: 0 });
      config = Object.freeze({ ...config, port: probe.addr.port });
      probe.close();
    } catch (err: unknown) {
      fail(`cannot listen on ${config.host}:0: ${errorText(err)}`);
    }
  }
  const supervisor = new Supervisor(config, {
    command,
    env: generated === undefined ? {} : { AERO_PROXY_AUTH_TOKEN: generated },
  });
  const abort = new AbortController();
  let metricsServer: Deno.HttpServer<Deno.NetAddr> | undefined;
  try {
    metricsServer = config.metricsPort === undefined ? undefined : Deno.serve(
      { hostname: config.metricsHost, port: config.metricsPort, signal: abort.signal, onListen: () => {} },
      supervisor.operationsHandler,
    );
  } catch (err: unknown) {
    fail(`cannot listen on ${config.metricsHost}:${config.metricsPort}: ${errorText(err)}`);
  }
  supervisor.start();
  announce(config.tlsCertFile !== "", config.host, config.port, generated);
  logger.info("supervising", {
    event: "supervising",
    workers: config.workers,
    host: config.host,
    port: config.port,
    metricsPort: metricsServer?.addr.port ?? null,
    pid: Deno.pid,
    version: denoJson.version,
  });
  const outcome = await Promise.race([
    firstSignal(logger, () => supervisor.kill()).then((signal) => ({ signal, code: 0 })),
    supervisor.fatal.then((code) => ({ signal: undefined, code })),
  ]);
  logger.info("shutting_down", {
    event: "shutting_down",
    signal: outcome.signal ?? null,
    graceMs: config.shutdownGraceMs,
    workers: supervisor.pids.filter((pid) => pid !== undefined).length,
  });
  await supervisor.stop();
  abort.abort();
  await metricsServer?.finished;
  logger.info("stopped", { event: "stopped" });
  Deno.exit(outcome.code);
}

async function main(): Promise<void> {
  // A worker handles untrusted traffic: it gives up --allow-run (which only its supervisor needs) first.
  const workerText = Deno.env.get(WORKER_INDEX_ENV);
  if (workerText !== undefined) Deno.permissions.revokeSync({ name: "run" });
  // A worker's stdin is its supervisor's pipe; the variable set by hand (copied between environments) would
  // otherwise make a plain relay share its port silently and never be ready.
  if (workerText !== undefined && Deno.stdin.isTerminal()) {
    fail(`${WORKER_INDEX_ENV} is set by the supervisor only; unset it (AERO_PROXY_WORKERS sets the count)`);
  }
  let command;
  try {
    command = parseCommand(readEnv(), Deno.args, {
      readFile: (path) => Deno.readTextFileSync(path),
      cpuCount: navigator.hardwareConcurrency,
    });
  } catch (err: unknown) {
    if (err instanceof ConfigError) fail(`invalid configuration: ${err.message} (see --help)`);
    throw err;
  }
  if (command.kind === "help") {
    // deno-lint-ignore no-console
    console.log(helpText());
    return;
  }
  if (command.kind === "version") {
    // deno-lint-ignore no-console
    console.log(`aero-net-proxy ${denoJson.version} (deno ${Deno.version.deno})`);
    return;
  }
  if (command.kind === "healthcheck") Deno.exit(await healthcheck(command.config));
  if (command.config.workers > 1 && workerText === undefined) return await supervise(command.config);
  // Only a supervisor spawns processes; a single relay gives the permission up before it listens.
  Deno.permissions.revokeSync({ name: "run" });
  const worker = workerText === undefined ? undefined : Number(workerText);

  let config: Config = command.config;
  let generated: string | undefined;
  if (config.authTokens.length === 0) {
    generated = generateToken();
    config = Object.freeze({ ...config, authTokens: [generated] });
  }
  const tls = config.tlsCertFile === "" ? undefined : {
    cert: readConfigFile("AERO_PROXY_TLS_CERT_FILE", config.tlsCertFile),
    key: readConfigFile("AERO_PROXY_TLS_KEY_FILE", config.tlsKeyFile),
  };

  await configureLogging(config.logLevel, config.logFormat);
  const logger = getLogger(["aero-net-proxy", "main"]);
  for (const warning of command.warnings) {
    logger.warn("config_warning", { event: "config_warning", reason: warning });
  }
  warnAboutSandbox(config, logger);

  const fileLimit = await openFileLimit();
  const sockets = socketBudget(socketLimitFor(config, fileLimit));
  const metrics = new Metrics({ version: denoJson.version });
  const link = worker === undefined ? undefined : new WorkerLink(metrics);
  let running: RunningRelay;
  try {
    running = serveRelay(
      config,
      { metrics, sockets, ...(link === undefined ? {} : { fleet: link }) },
      { ...(tls ? { tls } : {}), ...(link === undefined ? {} : { reusePort: true }) },
    );
  } catch (err: unknown) {
    fail(`cannot listen on ${config.host}:${config.port}: ${errorText(err)}`);
  }
  const base = announce(tls !== undefined, running.hostname, running.port, generated);
  logger.info("listening", {
    event: "listening",
    host: running.hostname,
    port: running.port,
    url: base,
    tls: tls !== undefined,
    metricsPort: running.metricsPort ?? null,
    socketLimit: sockets.limit,
    openFileLimit: fileLimit ?? null,
    version: denoJson.version,
    ...(worker === undefined ? {} : { worker, pid: Deno.pid }),
  });

  const stop = [firstSignal(logger)];
  if (link !== undefined) {
    link.send({ type: "ready" });
    // The supervisor's end of stdin closes when it is gone: nobody watches this worker any more.
    stop.push(link.serve(Deno.stdin.readable).then(() => "supervisor_gone"));
  }
  const signal = await Promise.race(stop);
  link?.send({ type: "draining" });
  logger.info("shutting_down", {
    event: "shutting_down",
    signal,
    graceMs: config.shutdownGraceMs,
    sessions: running.relay.sessions.size,
  });
  await running.shutdown();
  logger.info("stopped", { event: "stopped" });
  Deno.exit(0);
}

await main();
