/**
 * Measuring helpers: percentiles and summaries, process RSS and CPU time (through `ps` and `cat` in a
 * subprocess, because Deno lets only --allow-all read /proc), and a bounded RSS sampler.
 * @module
 */
import process from "node:process";

/** Nearest-rank percentile of `values` (`p` from 0 to 100); NaN for no values. */
export function percentile(values: readonly number[], p: number): number {
  if (values.length === 0) return NaN;
  const sorted = [...values].sort((a, b) => a - b);
  const rank = Math.min(sorted.length - 1, Math.max(0, Math.ceil((p / 100) * sorted.length) - 1));
  return sorted[rank]!;
}

/** Median, minimum and maximum of a set of runs. */
export interface Summary {
  readonly median: number;
  readonly min: number;
  readonly max: number;
  readonly runs: readonly number[];
}

export function summarize(runs: readonly number[]): Summary {
  return { median: percentile(runs, 50), min: Math.min(...runs), max: Math.max(...runs), runs };
}

async function shell(script: string): Promise<string> {
  const output = await new Deno.Command("sh", { args: ["-c", script], stdout: "piped", stderr: "piped" })
    .output();
  if (!output.success) {
    throw new Error(`Cannot run ${JSON.stringify(script)}: ${new TextDecoder().decode(output.stderr)}`);
  }
  return new TextDecoder().decode(output.stdout);
}

/** Resident set size of process `pid`, in bytes. */
export async function rssOf(pid: number): Promise<number> {
  const kib = Number((await shell(`ps -o rss= -p ${pid}`)).trim());
  if (!Number.isFinite(kib)) throw new Error(`Cannot read the RSS of process ${pid}`);
  return kib * 1024;
}

/** CPU time (user + system) of process `pid`, in seconds, from /proc/PID/stat (10 ms resolution). */
export async function cpuSecondsOf(pid: number): Promise<number> {
  const stat = await shell(`cat /proc/${pid}/stat`);
  // Fields after the parenthesised command name: state is field 3, utime 14, stime 15.
  const fields = stat.slice(stat.lastIndexOf(")") + 2).split(" ");
  const ticks = Number(fields[11]) + Number(fields[12]);
  if (!Number.isFinite(ticks)) throw new Error(`Cannot read the CPU time of process ${pid}`);
  return ticks / 100;
}

/**
 * CPU seconds of `pid` and of its children running now (a supervisor and its workers). Through `cat`, as
 * above: Deno asks for every permission to read /proc directly.
 */
export async function treeCpuSeconds(pid: number): Promise<number> {
  const children = await shell(`cat /proc/${pid}/task/*/children`);
  let total = await cpuSecondsOf(pid);
  for (const child of children.split(/\s+/).filter((w) => w !== "").map(Number)) {
    total += await cpuSecondsOf(child).catch(() => 0);
  }
  return total;
}

/** CPU time of this process (the load generator and the targets), in seconds. */
export function ownCpuSeconds(): number {
  const { user, system } = process.cpuUsage();
  return (user + system) / 1e6;
}

/**
 * Samples a process's RSS every `everyMs` until stopped (at most `maxSamples` samples); `stop()` returns the
 * highest value seen.
 */
export function sampleRss(
  rss: () => Promise<number>,
  options: { everyMs: number; maxSamples: number },
): { stop(): Promise<number> } {
  let peak = 0;
  let running = true;
  const loop = (async () => {
    for (let i = 0; i < options.maxSamples && running; i++) {
      peak = Math.max(peak, await rss());
      if (running) await new Promise((resolve) => setTimeout(resolve, options.everyMs));
    }
  })();
  return {
    async stop() {
      running = false;
      await loop;
      peak = Math.max(peak, await rss());
      return peak;
    },
  };
}

/**
 * Bytes the kernel holds in the TCP connections to or from loopback `port` (Recv-Q plus Send-Q of both ends,
 * read with `ss`), sampled every `everyMs` until stopped (at most `maxSamples`). `stop()` returns the median
 * sample, or `undefined` where `ss` is missing: the benchmark then reports no figure rather than a wrong one.
 */
export function sampleKernelQueue(
  port: number,
  options: { everyMs: number; maxSamples: number },
): { stop(): Promise<number | undefined> } {
  const samples: number[] = [];
  let running = true;
  let available = true;
  const filter = `( sport = :${port} or dport = :${port} )`;
  const loop = (async () => {
    for (let i = 0; i < options.maxSamples && running && available; i++) {
      try {
        const text = await shell(`ss -tnH state established '${filter}'`);
        let bytes = 0;
        for (const line of text.split("\n")) {
          // With a state filter, ss prints: Recv-Q Send-Q Local-Address:Port Peer-Address:Port
          const [recvQ, sendQ] = line.trim().split(/\s+/);
          if (recvQ !== undefined && sendQ !== undefined) {
            bytes += (Number(recvQ) || 0) + (Number(sendQ) || 0);
          }
        }
        samples.push(bytes);
      } catch {
        available = false;
      }
      if (running) await delay(options.everyMs);
    }
  })();
  return {
    async stop() {
      running = false;
      await loop;
      return samples.length === 0 ? undefined : percentile(samples, 50);
    },
  };
}

/** This process's memory after three full GCs a little apart; needs `--v8-flags=--expose-gc`. */
export async function memoryAfterGc(): Promise<Deno.MemoryUsage> {
  const gc = (globalThis as { gc?: () => void }).gc;
  if (gc === undefined) throw new Error("memory after GC needs --v8-flags=--expose-gc");
  for (let i = 0; i < 3; i++) {
    gc();
    await delay(50);
  }
  return Deno.memoryUsage();
}

export function delay(ms: number): Promise<void> {
  return new Promise((resolve) => setTimeout(resolve, ms));
}

/** Rejects with `what` after `ms` unless `promise` settles first; the timer never outlives the race. */
export async function deadline<T>(promise: Promise<T>, ms: number, what: string): Promise<T> {
  let timer: ReturnType<typeof setTimeout> | undefined;
  try {
    return await Promise.race([
      promise,
      new Promise<never>((_, reject) => {
        timer = setTimeout(() => reject(new Error(`${what}: no result within ${ms} ms`)), ms);
      }),
    ]);
  } finally {
    clearTimeout(timer);
  }
}
