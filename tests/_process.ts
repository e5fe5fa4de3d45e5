/**
 * Runs the relay as a subprocess through the real `deno task start` command line, with the network permission
 * narrowed to loopback so that nothing a test does can leave the machine.
 * @module
 */
import denoJson from "../deno.json" with { type: "json" };

/** The tasks that start the relay. */
export type StartTask = "start" | "start:sandboxed";

/** How to start a relay subprocess. */
export interface SpawnOptions {
  readonly task?: StartTask;
  /** Extra Deno flags, such as `--deny-net=127.0.0.2`. */
  readonly denoFlags?: string[];
  /**
   * Runs the start command as `sh -c 'ulimit -n N && exec "$0" "$@"' deno args...`: only the relay runs with this
   * open-file limit (soft and hard), and its pid stays the relay's own (`exec` replaces the shell).
   */
  readonly openFiles?: number;
  /** The checkout whose `main.ts` runs (the working directory of the relay). @default this one */
  readonly relayDir?: string | undefined;
  /** Keeps only the most recent log lines (between half this and this many): a flood must not grow the test. */
  readonly maxLogLines?: number;
  /** Keeps only the last this many characters of stderr. */
  readonly maxStderrChars?: number;
}

/**
 * A start task's words with `--allow-net` narrowed to 127.0.0.0/8, `deno` replaced by this binary (also in
 * `--allow-run`), and
 * `denoFlags` added before the entry point.
 */
export function startCommand(
  task: StartTask = "start",
  denoFlags: string[] = [],
): { cmd: string; args: string[] } {
  const words = denoJson.tasks[task].split(/\s+/).map((w) => w.replaceAll("'", ""));
  const [program, ...rest] = words;
  if (program !== "deno") {
    throw new Error(`The ${task} task does not start with deno: ${denoJson.tasks[task]}`);
  }
  // `--allow-run=deno` names deno on PATH; the relay's workers are started with this very binary.
  const args = rest.map((w) => (w === "--allow-net" ? "--allow-net=127.0.0.0/8" : w))
    .map((w) => (w === "--allow-run=deno" ? `--allow-run=${Deno.execPath()}` : w));
  args.splice(args.indexOf("main.ts"), 0, ...denoFlags);
  return { cmd: Deno.execPath(), args };
}

export interface RelayProcess extends AsyncDisposable {
  readonly pid: number;
  readonly port: number;
  /** JSON log lines read from stdout so far. */
  readonly logs: Record<string, unknown>[];
  /** Everything written to stderr so far. */
  stderr(): string;
  kill(signal?: Deno.Signal): void;
  readonly status: Promise<Deno.CommandStatus>;
  /** The exit status once the process ended, `undefined` while it runs. */
  exited(): Deno.CommandStatus | undefined;
}

/** Everything a finished process printed. */
export interface Finished {
  readonly code: number;
  readonly stdout: string;
  readonly stderr: string;
}

/** Runs the start command to completion (for --help, --version and bad configuration). */
export async function runToEnd(env: Record<string, string>, args: string[] = []): Promise<Finished> {
  const { cmd, args: base } = startCommand();
  const output = await new Deno.Command(cmd, {
    args: [...base, ...args],
    env: { NO_COLOR: "1", ...env },
    stdin: "null",
    stdout: "piped",
    stderr: "piped",
  }).output();
  const decoder = new TextDecoder();
  return { code: output.code, stdout: decoder.decode(output.stdout), stderr: decoder.decode(output.stderr) };
}

/** Starts the relay and resolves once it logged `listening`. */
export async function spawnRelay(
  env: Record<string, string>,
  args: string[] = [],
  options: SpawnOptions = {},
): Promise<RelayProcess> {
  const { cmd, args: base } = startCommand(options.task, options.denoFlags);
  const { openFiles, relayDir, maxLogLines = Infinity, maxStderrChars = Infinity } = options;
  if (openFiles !== undefined && (!Number.isInteger(openFiles) || openFiles < 64)) {
    throw new RangeError(`Cannot limit the relay to ${openFiles} descriptors: expected an integer >= 64`);
  }
  const child = new Deno.Command(openFiles === undefined ? cmd : "sh", {
    args: openFiles === undefined
      ? [...base, ...args]
      : ["-c", `ulimit -n ${openFiles} && exec "$0" "$@"`, cmd, ...base, ...args],
    ...(relayDir === undefined ? {} : { cwd: relayDir }),
    env: { NO_COLOR: "1", AERO_PROXY_PORT: "0", ...env },
    stdin: "null",
    stdout: "piped",
    stderr: "piped",
  }).spawn();
  const logs: Record<string, unknown>[] = [];
  let stderrText = "";
  let exitStatus: Deno.CommandStatus | undefined;
  const { promise: listening, resolve, reject } = Promise.withResolvers<number>();
  const readStdout = (async () => {
    let carry = "";
    for await (const text of child.stdout.pipeThrough(new TextDecoderStream())) {
      carry += text;
      let newline;
      while ((newline = carry.indexOf("\n")) >= 0) {
        const line = carry.slice(0, newline);
        carry = carry.slice(newline + 1);
        try {
          const record = JSON.parse(line) as Record<string, unknown>;
          if (logs.length >= maxLogLines) logs.splice(0, Math.ceil(maxLogLines / 2));
          logs.push(record);
          const props = record.properties as Record<string, unknown> | undefined;
          if (props?.event === "listening") resolve(props.port as number);
        } catch { /* not JSON */ }
      }
    }
  })();
  const readStderr = (async () => {
    for await (const text of child.stderr.pipeThrough(new TextDecoderStream())) {
      stderrText += text;
      if (stderrText.length > maxStderrChars) stderrText = stderrText.slice(-maxStderrChars);
    }
  })();
  const status = child.status.then(async (s) => {
    exitStatus = s;
    await Promise.all([readStdout, readStderr]);
    reject(new Error(`Relay exited with ${s.code} before listening: ${stderrText}`));
    return s;
  });
  const timer = setTimeout(() => reject(new Error("Relay did not start within 20 s")), 20_000);
  let port: number;
  try {
    port = await listening;
  } catch (err) {
    try {
      child.kill("SIGKILL");
    } catch { /* exited */ }
    await status;
    throw err;
  } finally {
    clearTimeout(timer);
  }
  let killed = false;
  const kill = (signal: Deno.Signal = "SIGTERM") => {
    try {
      child.kill(signal);
      // SIGSTOP and SIGCONT pause and resume; disposal must still terminate the process.
      if (signal !== "SIGSTOP" && signal !== "SIGCONT") killed = true;
    } catch { /* already exited */ }
  };
  const relay: RelayProcess = {
    pid: child.pid,
    port,
    logs,
    stderr: () => stderrText,
    status,
    kill,
    exited: () => exitStatus,
    async [Symbol.asyncDispose]() {
      if (!killed) kill("SIGTERM");
      const timeout = setTimeout(() => kill("SIGKILL"), 5000);
      await status;
      clearTimeout(timeout);
    },
  };
  return relay;
}
