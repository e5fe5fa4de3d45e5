/**
 * Entry point: configuration -> logging -> relay -> wait for a signal -> shut down.
 * The only module that reads the environment, writes to the console or exits.
 * @module
 */
import { configure, getLogger, jsonLinesFormatter, type LogRecord } from "@logtape/logtape";
import denoJson from "./deno.json" with { type: "json" };
import { generateToken } from "./src/auth.ts";
import { type Config, ConfigError, ENV_NAMES, helpText, parseCommand } from "./src/config.ts";
import { MUX_PATH } from "./src/protocol/mod.ts";
import { serveRelay } from "./src/server.ts";

/** Exit code for bad usage or configuration. */
const EXIT_USAGE = 2;

function readEnv(): Record<string, string | undefined> {
  return Object.fromEntries(ENV_NAMES.map((name) => [name, Deno.env.get(name)]));
}

function fail(message: string): never {
  // deno-lint-ignore no-console
  console.error(`aero-net-proxy: ${message}`);
  Deno.exit(EXIT_USAGE);
}

/**
 * Under `start:sandboxed` Deno itself refuses the special ranges; an operator who also allows some of them in the
 * policy should hear that the sandbox wins.
 */
function warnAboutSandbox(config: Config, logger: ReturnType<typeof getLogger>): void {
  const probes = config.allowPrivateIps ? ["10.0.0.1", "192.168.0.1", "169.254.169.254"] : [];
  probes.push(...config.allowCidrs.map((cidr) => cidr.split("/")[0]!));
  const denied = probes.filter((host) =>
    Deno.permissions.querySync({ name: "net", host }).state === "denied"
  );
  if (denied.length > 0) {
    logger.warn("config_warning", {
      event: "config_warning",
      reason: `Deno's --deny-net sandbox refuses ${denied.join(", ")} although the policy allows them; ` +
        "such OPENs get ERROR 3 (use deno task start instead of start:sandboxed to lift it)",
    });
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
    console.log(`aero-net-proxy ${denoJson.version}`);
    return;
  }

  let config: Config = command.config;
  let generated: string | undefined;
  if (config.authTokens.length === 0) {
    generated = generateToken();
    config = Object.freeze({ ...config, authTokens: [generated] });
  }

  await configure({
    // Every level goes to stdout as one JSON object a line (a console sink would send warnings to stderr).
    // deno-lint-ignore no-console
    sinks: { console: (record: LogRecord) => console.log(jsonLinesFormatter(record).trimEnd()) },
    loggers: [
      { category: ["aero-net-proxy"], lowestLevel: config.logLevel, sinks: ["console"] },
      { category: ["logtape", "meta"], lowestLevel: "warning", sinks: ["console"] },
    ],
  });
  const logger = getLogger(["aero-net-proxy", "main"]);
  for (const warning of command.warnings) {
    logger.warn("config_warning", { event: "config_warning", reason: warning });
  }
  warnAboutSandbox(config, logger);

  let running;
  try {
    running = serveRelay(config);
  } catch (err: unknown) {
    fail(
      `cannot listen on ${config.host}:${config.port}: ${err instanceof Error ? err.message : String(err)}`,
    );
  }
  const base = `ws://${
    running.hostname.includes(":") ? `[${running.hostname}]` : running.hostname
  }:${running.port}${MUX_PATH}`;
  logger.info("listening", {
    event: "listening",
    host: running.hostname,
    port: running.port,
    url: base,
    version: denoJson.version,
  });
  if (generated !== undefined) {
    // Printed once, to stderr, never to the log stream: this is the only place the token appears.
    // deno-lint-ignore no-console
    console.error(
      `aero-net-proxy: AERO_PROXY_AUTH_TOKEN is not set; generated a token for this run.\n` +
        `Connect to: ${base}?token=${generated}`,
    );
  }

  const { promise: stop, resolve } = Promise.withResolvers<string>();
  for (const signal of ["SIGINT", "SIGTERM"] as const) Deno.addSignalListener(signal, () => resolve(signal));
  const signal = await stop;
  logger.info("shutting_down", { event: "shutting_down", signal });
  await running.close();
  Deno.exit(0);
}

await main();
