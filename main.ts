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

async function main(): Promise<void> {
  let command;
  try {
    command = parseCommand(readEnv(), Deno.args, { readFile: (path) => Deno.readTextFileSync(path) });
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
  let running: RunningRelay;
  try {
    running = serveRelay(
      config,
      { metrics: new Metrics({ version: denoJson.version }), sockets },
      tls ? { tls } : {},
    );
  } catch (err: unknown) {
    fail(`cannot listen on ${config.host}:${config.port}: ${errorText(err)}`);
  }
  const scheme = tls === undefined ? "ws" : "wss";
  const host = running.hostname.includes(":") ? `[${running.hostname}]` : running.hostname;
  const base = `${scheme}://${host}:${running.port}${MUX_PATH}`;
  if (generated !== undefined) {
    // Printed once, to stderr, never to the log stream: this is the only place the token appears.
    // deno-lint-ignore no-console
    console.error(
      `aero-net-proxy: AERO_PROXY_AUTH_TOKEN is not set; generated a token for this run.\n` +
        `Connect to: ${base}?token=${generated}`,
    );
  }
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
  });

  const { promise: stop, resolve } = Promise.withResolvers<string>();
  let stopping = false;
  for (const signal of ["SIGINT", "SIGTERM"] as const) {
    Deno.addSignalListener(signal, () => {
      if (!stopping) {
        stopping = true;
        resolve(signal);
        return;
      }
      logger.warn("forced_exit", { event: "forced_exit", signal });
      Deno.exit(EXIT_FORCED[signal] ?? 1);
    });
  }
  const signal = await stop;
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
