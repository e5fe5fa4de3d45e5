/**
 * End-to-end relay benchmark (`deno task bench`): starts the relay (a subprocess of main.ts for the headline
 * figures, and in this process for comparison), loopback targets and a load generator, runs every workload
 * several times against raw TCP and the relay, prints medians (min-max) with ratios to raw TCP measured in
 * the same run, and writes a JSON file with every run.
 *
 * Options: `--quick` (smaller sizes), `--runs=N` (default 3), `--only=W1,W3` (W1x8: 8 parallel downloads
 * through 1 and 2 workers), `--out=FILE`,
 * `--profile=DIR` (V8 CPU profile of the subprocess relay), `--relay-env=NAME=VALUE` (repeatable, e.g.
 * watermarks), `--upload-window=KiB` (W2's unacknowledged bytes), `--receive-window=KiB` (the credit
 * extension's download window per stream in W6x, default 256), `--relay-dir=DIR` (run the subprocess relay
 * from another checkout, for A/B comparisons), `--deno-flag=FLAG` (repeatable, e.g. `--v8-flags=...` for the
 * subprocess relay), `--no-in-process`.
 * @module
 */
import { parseArgs } from "node:util";
import { cpuSecondsOf, delay, ownCpuSeconds, summarize, type Summary } from "./_measure.ts";
import {
  BENCH_ENV,
  type RelayUnderTest,
  spawnMinimalRelay,
  spawnRelay,
  startInProcessRelay,
} from "./_relay.ts";
import { spawnTargets } from "./_targets.ts";
import { MuxSession } from "./_client.ts";
import {
  clientOrRawDownload,
  clientOrRawRtt,
  download,
  idleStreamsHeap,
  idleStreamsMemory,
  manyStreams,
  type Metrics,
  parallelDownload,
  rtt,
  rttBesideStalledTarget,
  rttUnderDownload,
  socketFloor,
  stalledClientMemory,
  type Targets,
  upload,
  UPLOAD_WINDOW,
} from "./_workloads.ts";

const MIB = 1024 * 1024;

/** The one place this program writes to the console. */
function say(line = ""): void {
  // deno-lint-ignore no-console
  console.log(line);
}

const { values: flags } = parseArgs({
  args: Deno.args,
  strict: true,
  options: {
    quick: { type: "boolean", default: false },
    runs: { type: "string", default: "3" },
    only: { type: "string" },
    out: { type: "string", default: "bench/results/latest.json" },
    profile: { type: "string" },
    "relay-env": { type: "string", multiple: true },
    "no-in-process": { type: "boolean", default: false },
    "upload-window": { type: "string" },
    "receive-window": { type: "string" },
    "relay-dir": { type: "string" },
    "deno-flag": { type: "string", multiple: true },
  },
});

const runs = Math.max(1, Math.min(20, Number(flags.runs) || 3));
const quick = flags.quick === true;
const sizes = {
  download: (quick ? 64 : 256) * MIB,
  upload: (quick ? 64 : 256) * MIB,
  pings: quick ? 1000 : 5000,
  streams: 1000,
  stalledPauseMs: 3000,
  w6Pings: quick ? 1000 : 5000,
  w7Seconds: quick ? 1 : 3,
};
const receiveWindow = flags["receive-window"] === undefined
  ? 256 * 1024
  : Number(flags["receive-window"]) * 1024;
if (!Number.isInteger(receiveWindow) || receiveWindow < 1024) {
  throw new Error("--receive-window expects KiB, at least 1");
}
MuxSession.creditWindow = receiveWindow;
const uploadWindow = flags["upload-window"] === undefined
  ? UPLOAD_WINDOW
  : Number(flags["upload-window"]) * 1024;
if (!Number.isSafeInteger(uploadWindow) || uploadWindow < 64 * 1024) {
  throw new Error("--upload-window expects KiB, at least 64");
}
const only = flags.only === undefined ? undefined : new Set(flags.only.split(",").map((w) => w.trim()));
const relayEnv: Record<string, string> = {};
for (const pair of flags["relay-env"] ?? []) {
  const eq = pair.indexOf("=");
  if (eq <= 0 || !pair.startsWith("AERO_PROXY_")) {
    throw new Error(`--relay-env expects AERO_PROXY_NAME=VALUE`);
  }
  relayEnv[pair.slice(0, eq)] = pair.slice(eq + 1);
}
const spawnOptions = {
  env: relayEnv,
  ...(flags.profile === undefined ? {} : { profileDir: flags.profile }),
  ...(flags["relay-dir"] === undefined ? {} : { relayDir: flags["relay-dir"] }),
  denoFlags: flags["deno-flag"] ?? [],
};

type Variant = "raw" | "relay" | "inproc" | "minimal" | "workers2";
/** Every measured value: workload -> variant -> metric -> one value per run. */
const results: Record<string, Partial<Record<Variant | "cpu", Record<string, number[]>>>> = {};
const failures: string[] = [];
let targetsPid: number | undefined;

function record(workload: string, variant: Variant | "cpu", metrics: Metrics): void {
  const byVariant = results[workload] ??= {};
  const byMetric = byVariant[variant] ??= {};
  for (const [name, value] of Object.entries(metrics)) (byMetric[name] ??= []).push(value);
}

/** Workloads also run against the minimal relay (seed framing, no W5/W7 extras it does not have). */
const BASELINED = new Set(["W1", "W3", "W4", "W6"]);

function wanted(workload: string): boolean {
  return only === undefined || only.has(workload);
}

/** Runs `fn` and records its metrics; for the subprocess relay also the CPU shares of both processes. */
async function measure(
  workload: string,
  variant: Variant,
  relay: RelayUnderTest | undefined,
  fn: () => Promise<Metrics>,
): Promise<void> {
  const wall0 = performance.now();
  const own0 = ownCpuSeconds();
  const relay0 = relay?.kind === "subprocess" ? await relay.cpuSeconds() : 0;
  const targets0 = targetsPid === undefined ? 0 : await cpuSecondsOf(targetsPid);
  let metrics: Metrics;
  try {
    metrics = await fn();
  } catch (err: unknown) {
    const message = `${workload} ${variant}: ${err instanceof Error ? err.message : String(err)}`;
    failures.push(message);
    say(`  FAILED ${message}`);
    return;
  }
  const wall = (performance.now() - wall0) / 1000;
  const ownCpu = ownCpuSeconds() - own0;
  const targetsCpu = targetsPid === undefined ? 0 : (await cpuSecondsOf(targetsPid)) - targets0;
  const ownPct = (ownCpu / wall) * 100;
  const targetsPct = (targetsCpu / wall) * 100;
  record(workload, variant, metrics);
  if (variant === "workers2" && relay !== undefined) {
    record(workload, "cpu", { workersCpuSeconds: (await relay.cpuSeconds()) - relay0 });
  } else if (variant === "minimal" && relay !== undefined) {
    record(workload, "cpu", { minimalRelayCpuSeconds: (await relay.cpuSeconds()) - relay0 });
  } else if (relay?.kind === "subprocess") {
    const relayCpu = (await relay.cpuSeconds()) - relay0;
    record(workload, "cpu", {
      relayOnlyCpuSeconds: relayCpu,
      loadgenPct: ownPct,
      relayPct: (relayCpu / wall) * 100,
      targetsPct,
      relayCpuSeconds: ownCpu + relayCpu + targetsCpu,
    });
  } else if (variant === "raw") {
    record(workload, "cpu", {
      rawLoadgenPct: ownPct,
      rawTargetsPct: targetsPct,
      rawCpuSeconds: ownCpu + targetsCpu,
    });
  }
  const shown = Object.entries(metrics).map(([k, v]) => `${k}=${round(v)}`).join(" ");
  say(`  ${workload} ${variant.padEnd(6)} ${shown}`);
  await delay(100);
}

function round(value: number): string {
  if (!Number.isFinite(value)) return String(value);
  const abs = Math.abs(value);
  return abs >= 100
    ? value.toFixed(0)
    : abs >= 10
    ? value.toFixed(1)
    : abs >= 1
    ? value.toFixed(2)
    : value.toFixed(3);
}

// --- Run ------------------------------------------------------------------------------------------------

const startedAt = new Date();
const wallStart = performance.now();
say(`aero-net-proxy relay benchmark: ${runs} runs${quick ? ", quick sizes" : ""}, Deno ${Deno.version.deno}`);
say(`relay env: ${Object.entries({ ...BENCH_ENV, ...relayEnv }).map(([k, v]) => `${k}=${v}`).join(" ")}`);

{
  await using targetsProcess = await spawnTargets();
  targetsPid = targetsProcess.pid;
  const targets: Targets = targetsProcess.ports;

  {
    await using relay = await spawnRelay(spawnOptions);
    await using inproc = flags["no-in-process"] ? undefined : startInProcessRelay();
    // The baseline: the smallest relay Deno allows, measured on the same workloads (seed framing ones).
    await using minimal = await spawnMinimalRelay();
    const withInProcess = async (
      workload: string,
      fn: (r: RelayUnderTest | undefined) => Promise<Metrics>,
    ) => {
      for (let run = 1; run <= runs; run++) {
        await measure(workload, "raw", undefined, () => fn(undefined));
        await measure(workload, "relay", relay, () => fn(relay));
        if (inproc !== undefined) await measure(workload, "inproc", inproc, () => fn(inproc));
        if (BASELINED.has(workload)) await measure(workload, "minimal", minimal, () => fn(minimal));
      }
    };
    const subprocessOnly = async (
      workload: string,
      fn: (r: RelayUnderTest | undefined) => Promise<Metrics>,
    ) => {
      for (let run = 1; run <= runs; run++) {
        await measure(workload, "raw", undefined, () => fn(undefined));
        await measure(workload, "relay", relay, () => fn(relay));
        if (BASELINED.has(workload)) await measure(workload, "minimal", minimal, () => fn(minimal));
      }
    };

    if (wanted("W1")) {
      say(`W1 download ${sizes.download / MIB} MiB on one stream`);
      await withInProcess("W1", (r) => download(r, targets, sizes.download));
    }
    if (wanted("W2")) {
      say(`W2 upload ${sizes.upload / MIB} MiB in 16 KiB frames`);
      await subprocessOnly("W2-16K", (r) => upload(r, targets, sizes.upload, 16 * 1024, uploadWindow));
      say(`W2 upload ${sizes.upload / MIB} MiB in 64 KiB frames`);
      await withInProcess("W2-64K", (r) => upload(r, targets, sizes.upload, 64 * 1024, uploadWindow));
    }
    if (wanted("W3")) {
      say(`W3 64-byte echo RTT x ${sizes.pings}`);
      await withInProcess("W3", (r) => rtt(r, targets, sizes.pings));
    }
    if (wanted("W1c")) {
      say(`W1c: W1 through RelayClient's web streams`);
      await subprocessOnly("W1c", (r) => clientOrRawDownload(r, targets, sizes.download));
    }
    if (wanted("W3c")) {
      say(`W3c: W3 through RelayClient's web streams`);
      await subprocessOnly("W3c", (r) => clientOrRawRtt(r, targets, sizes.pings));
    }
    if (wanted("W4")) {
      say(`W4 ${sizes.streams} streams x 10 x 1 KiB echo in one session`);
      await subprocessOnly("W4", (r) => manyStreams(r, targets, sizes.streams));
    }
    if (wanted("W6")) {
      // B's echo server runs in a process of its own: sharing the targets' event loop with A's source
      // delayed raw TCP's pongs by up to 100 ms (1 to 50 pings per run), which made the baseline meaningless.
      await using echoProcess = await spawnTargets();
      const apart: Targets = { ...targets, echo: echoProcess.ports.echo };
      say(`W6 64-byte RTT on stream B while stream A downloads ${sizes.download / MIB} MiB`);
      await subprocessOnly("W6", (r) => rttUnderDownload(r, apart, sizes.download, sizes.w6Pings));
      // Separate runs, so that running `ss` every 10 ms does not touch the figures above.
      say(`W6q: W6 again, sampling the kernel's socket queues with ss`);
      await subprocessOnly("W6q", (r) => rttUnderDownload(r, apart, sizes.download, sizes.w6Pings, true));
    }
    if (wanted("Wisp")) {
      // The same workloads over Wisp v2 (the load generator's own minimal Wisp client), against the same relay
      // and raw TCP in the same run, so Wisp's cost beside the seed framing's shows in the ratios.
      await using echoProcess = await spawnTargets();
      const apart: Targets = { ...targets, echo: echoProcess.ports.echo };
      say(`W1w: W1 over Wisp`);
      await subprocessOnly("W1w", (r) => download(r, targets, sizes.download, "wisp"));
      say(`W3w: W3 over Wisp`);
      await subprocessOnly("W3w", (r) => rtt(r, targets, sizes.pings, "wisp"));
      say(`W4w: W4 over Wisp (open = the stream confirmation CONTINUE)`);
      await subprocessOnly("W4w", (r) => manyStreams(r, targets, sizes.streams, "wisp"));
      say(`W6w: W6 over Wisp`);
      await subprocessOnly(
        "W6w",
        (r) => rttUnderDownload(r, apart, sizes.download, sizes.w6Pings, false, "wisp"),
      );
    }
    if (wanted("Credit")) {
      // aero-tcp-mux-v1 with the credit extension: B's pings beside A's download (each stream's window is
      // --receive-window, default 256 KiB), and W2 paced by the relay's window alone (no application window).
      await using echoProcess = await spawnTargets();
      const apart: Targets = { ...targets, echo: echoProcess.ports.echo };
      say(`W6x: W6 with the credit extension, receive window ${receiveWindow / 1024} KiB`);
      await subprocessOnly(
        "W6x",
        (r) => rttUnderDownload(r, apart, sizes.download, sizes.w6Pings, false, "credit"),
      );
      say(`W2x: W2 (64 KiB frames) paced only by the relay's window`);
      await subprocessOnly(
        "W2x",
        (r) => upload(r, targets, sizes.upload, 64 * 1024, Number.MAX_SAFE_INTEGER, "credit"),
      );
    }
    if (wanted("W1x8")) {
      // The same relay settings with AERO_PROXY_WORKERS=2: a supervisor and two workers on one port.
      await using workers = await spawnRelay({
        ...spawnOptions,
        env: { ...spawnOptions.env, AERO_PROXY_WORKERS: "2" },
      });
      const each = sizes.download / 2;
      say(
        `W1x8: 8 sessions at once, each downloading ${each / MIB} MiB on one stream; 1 worker and 2 workers`,
      );
      for (let run = 1; run <= runs; run++) {
        await measure("W1x8", "raw", undefined, () => parallelDownload(undefined, targets, 8, each));
        await measure("W1x8", "relay", relay, () => parallelDownload(relay, targets, 8, each));
        await measure("W1x8", "workers2", workers, () => parallelDownload(workers, targets, 8, each));
      }
    }
    if (wanted("W5") && inproc !== undefined) {
      say(`W5 where an idle stream's memory goes (in-process relay, after GC)`);
      for (let run = 1; run <= runs; run++) {
        await measure("W5-heap", "inproc", inproc, () => idleStreamsHeap(inproc, targets, sizes.streams));
      }
    }
    if (wanted("W7")) {
      say(`W7 pings on stream B for ${sizes.w7Seconds} s while stream A's target stops reading`);
      await subprocessOnly("W7", (r) => rttBesideStalledTarget(r, targets, sizes.w7Seconds));
    }
  }

  if (wanted("W5")) {
    say(`W5 relay memory (a fresh subprocess relay per run)`);
    for (let run = 1; run <= runs; run++) {
      await using relay = await spawnRelay(spawnOptions);
      await delay(300);
      const idle = await relay.rss();
      record("W5", "relay", { idleRssMiB: idle / MIB });
      await measure("W5", "relay", relay, () => idleStreamsMemory(relay, targets, sizes.streams));
      await delay(300);
      await measure(
        "W5",
        "relay",
        relay,
        () => stalledClientMemory(relay, targets, sizes.download, sizes.stalledPauseMs),
      );
      await measure("W5-floor", "raw", undefined, () => socketFloor(targets, sizes.streams));
      // The same idle streams through the minimal relay, also fresh: what any Deno relay pays per stream.
      await using minimal = await spawnMinimalRelay();
      await delay(300);
      await measure("W5", "minimal", minimal, () => idleStreamsMemory(minimal, targets, sizes.streams));
    }
  }
}

// --- Report ---------------------------------------------------------------------------------------------

function get(workload: string, variant: Variant | "cpu", metric: string): Summary | undefined {
  const values = results[workload]?.[variant]?.[metric];
  return values === undefined || values.length === 0 ? undefined : summarize(values);
}

function show(s: Summary | undefined, unit = ""): string {
  if (s === undefined) return "-";
  return `${round(s.median)}${unit} (${round(s.min)}-${round(s.max)})`;
}

interface Row {
  workload: string;
  what: string;
  metric: string;
  unit: string;
  /** Ratio relay/raw; for throughput higher is better, for times lower is better. */
  ratio: boolean;
  target?: {
    text: string;
    check: (relay: number, raw: number | undefined, ratio: number | undefined) => boolean;
  };
}

const rows: Row[] = [
  {
    workload: "W1",
    what: `download ${sizes.download / MIB} MiB, one stream`,
    metric: "mibPerSec",
    unit: " MiB/s",
    ratio: true,
    target: { text: ">= 0.35x, no stall", check: (_v, _r, x) => x !== undefined && x >= 0.35 },
  },
  {
    workload: "W2-16K",
    what: `upload ${sizes.upload / MIB} MiB, 16 KiB frames`,
    metric: "mibPerSec",
    unit: " MiB/s",
    ratio: true,
  },
  {
    workload: "W2-64K",
    what: `upload ${sizes.upload / MIB} MiB, 64 KiB frames`,
    metric: "mibPerSec",
    unit: " MiB/s",
    ratio: true,
    target: { text: ">= 0.60x", check: (_v, _r, x) => x !== undefined && x >= 0.6 },
  },
  {
    workload: "W3",
    what: `64 B echo RTT p50 (x${sizes.pings})`,
    metric: "p50Ms",
    unit: " ms",
    ratio: true,
    target: { text: "<= 3x", check: (_v, _r, x) => x !== undefined && x <= 3 },
  },
  {
    workload: "W3",
    what: "64 B echo RTT p99",
    metric: "p99Ms",
    unit: " ms",
    ratio: true,
    target: { text: "<= 3.5x", check: (_v, _r, x) => x !== undefined && x <= 3.5 },
  },
  {
    workload: "W1c",
    what: `W1 through RelayClient (web streams)`,
    metric: "mibPerSec",
    unit: " MiB/s",
    ratio: true,
  },
  {
    workload: "W3c",
    what: "W3 through RelayClient, p50",
    metric: "p50Ms",
    unit: " ms",
    ratio: true,
  },
  {
    workload: "W3c",
    what: "W3 through RelayClient, p99",
    metric: "p99Ms",
    unit: " ms",
    ratio: true,
  },
  {
    workload: "W4",
    what: `${sizes.streams} streams x 10 x 1 KiB echo, total`,
    metric: "totalMs",
    unit: " ms",
    ratio: true,
    target: { text: "<= 1.0x", check: (_v, _r, x) => x !== undefined && x <= 1 },
  },
  { workload: "W4", what: "OPEN->ack (raw: connect) p50", metric: "openP50Ms", unit: " ms", ratio: true },
  {
    workload: "W4",
    what: "OPEN->ack (raw: connect) p99",
    metric: "openP99Ms",
    unit: " ms",
    ratio: true,
    target: { text: "<= 1.5x", check: (_v, _r, x) => x !== undefined && x <= 1.5 },
  },
  { workload: "W5", what: "relay RSS idle", metric: "idleRssMiB", unit: " MiB", ratio: false },
  {
    workload: "W5",
    what: `relay memory per idle stream (${sizes.streams})`,
    metric: "kibPerStream",
    unit: " KiB",
    ratio: false,
    target: { text: "<= 10 KiB", check: (v) => v <= 10 },
  },
  {
    workload: "W5",
    what: `peak RSS growth, client stops reading ${sizes.stalledPauseMs / 1000} s`,
    metric: "peakGrowthMiB",
    unit: " MiB",
    ratio: false,
    target: { text: "<= 16 MiB", check: (v) => v <= 16 },
  },
  ...([
    ["rssKiB", "RSS"],
    ["heapUsedKiB", "V8 heap in use"],
    ["heapTotalKiB", "V8 heap reserved"],
  ] as const).map(([metric, what]): Row => ({
    workload: "W5-floor",
    what: `Deno alone: one socket with a pending 1 KiB read, per socket: ${what}`,
    metric,
    unit: " KiB",
    ratio: false,
  })),
  ...([
    ["heapUsedKiB", "V8 heap in use"],
    ["externalKiB", "off-heap buffers"],
  ] as const).map(([metric, what]): Row => ({
    workload: "W5-heap",
    what: `per idle stream, in-process, after GC: ${what}`,
    metric,
    unit: " KiB",
    ratio: false,
  })),
  {
    workload: "W6",
    what: "B RTT p50 while A downloads",
    metric: "p50Ms",
    unit: " ms",
    ratio: true,
    target: { text: "<= 1 ms", check: (v) => v <= 1 },
  },
  {
    workload: "W6",
    what: "B RTT p99 while A downloads",
    metric: "p99Ms",
    unit: " ms",
    ratio: true,
    target: { text: "<= 3 ms", check: (v) => v <= 3 },
  },
  { workload: "W6", what: "A download during W6", metric: "aMiBPerSec", unit: " MiB/s", ratio: true },
  {
    workload: "W6x",
    what: "W6 with the credit extension, B p50",
    metric: "p50Ms",
    unit: " ms",
    ratio: true,
    target: { text: "<= 1 ms", check: (v) => v <= 1 },
  },
  {
    workload: "W6x",
    what: "W6 with the credit extension, B p99",
    metric: "p99Ms",
    unit: " ms",
    ratio: true,
    target: { text: "<= 5 ms", check: (v) => v <= 5 },
  },
  {
    workload: "W6x",
    what: "W6 with the credit extension, A download",
    metric: "aMiBPerSec",
    unit: " MiB/s",
    ratio: true,
    target: { text: ">= 0.35x", check: (_v, _r, x) => x !== undefined && x >= 0.35 },
  },
  {
    workload: "W2x",
    what: "W2 64 KiB frames paced by the relay's window",
    metric: "mibPerSec",
    unit: " MiB/s",
    ratio: true,
    target: { text: ">= 0.40x", check: (_v, _r, x) => x !== undefined && x >= 0.4 },
  },
  {
    workload: "W1x8",
    what: `8 sessions downloading ${sizes.download / 2 / MIB} MiB each at once, aggregate, 1 worker`,
    metric: "mibPerSec",
    unit: " MiB/s",
    ratio: true,
  },
  { workload: "W1w", what: "W1 over Wisp v2", metric: "mibPerSec", unit: " MiB/s", ratio: true },
  { workload: "W3w", what: "W3 over Wisp v2, p50", metric: "p50Ms", unit: " ms", ratio: true },
  { workload: "W3w", what: "W3 over Wisp v2, p99", metric: "p99Ms", unit: " ms", ratio: true },
  { workload: "W4w", what: "W4 over Wisp v2, total", metric: "totalMs", unit: " ms", ratio: true },
  {
    workload: "W4w",
    what: "W4 over Wisp v2, CONNECT->CONTINUE p50",
    metric: "openP50Ms",
    unit: " ms",
    ratio: true,
  },
  { workload: "W6w", what: "W6 over Wisp v2, B p50", metric: "p50Ms", unit: " ms", ratio: true },
  { workload: "W6w", what: "W6 over Wisp v2, B p99", metric: "p99Ms", unit: " ms", ratio: true },
  { workload: "W6w", what: "W6 over Wisp v2, A download", metric: "aMiBPerSec", unit: " MiB/s", ratio: true },
  {
    workload: "W6q",
    what: "W6 with ss sampling: B RTT p50",
    metric: "p50Ms",
    unit: " ms",
    ratio: true,
  },
  {
    workload: "W6q",
    what: "kernel bytes queued on the connection carrying A (median)",
    metric: "kernelQueueMiB",
    unit: " MiB",
    ratio: false,
  },
  {
    workload: "W6q",
    what: "that queue / A's rate (relay: B's reply waits behind it)",
    metric: "queueWaitMs",
    unit: " ms",
    ratio: false,
  },
  {
    workload: "W7",
    what: `B pings in ${sizes.w7Seconds} s, A's target stalled`,
    metric: "pings",
    unit: "",
    ratio: true,
  },
  {
    workload: "W7",
    what: "B pings unloaded (same session)",
    metric: "unloadedPings",
    unit: "",
    ratio: false,
  },
  {
    workload: "W7",
    what: "B loaded / unloaded rate",
    metric: "rateRatio",
    unit: "",
    ratio: false,
    target: { text: ">= 0.5", check: (v) => v >= 0.5 },
  },
  { workload: "W7", what: "B RTT p50, A's target stalled", metric: "p50Ms", unit: " ms", ratio: true },
  {
    workload: "W7",
    what: "A's ERROR code (8 = BACKPRESSURE)",
    metric: "aErrorCode",
    unit: "",
    ratio: false,
    target: { text: "8 (or resumes)", check: (v) => v === 8 },
  },
  { workload: "W7", what: "relay RSS growth during W7", metric: "rssGrowthMiB", unit: " MiB", ratio: false },
];

const table: Record<string, unknown>[] = [];
const lines = [
  "| Workload | What | raw TCP | relay (subprocess) | relay / raw | relay (in-process) | Target | Met |",
  "| -------- | ---- | ------: | -----------------: | ----------: | -----------------: | ------ | --- |",
];
for (const row of rows) {
  const raw = get(row.workload, "raw", row.metric);
  const relay = get(row.workload, "relay", row.metric);
  const inproc = get(row.workload, "inproc", row.metric);
  if (relay === undefined && inproc === undefined && raw === undefined) continue;
  const ratio = row.ratio && raw !== undefined && relay !== undefined && raw.median !== 0
    ? relay.median / raw.median
    : undefined;
  const stalls = failures.some((f) => f.startsWith(`${row.workload} relay`));
  const met = row.target === undefined || relay === undefined
    ? undefined
    : !stalls && row.target.check(relay.median, raw?.median, ratio);
  const inprocRatio = row.ratio && raw !== undefined && inproc !== undefined
    ? inproc.median / raw.median
    : undefined;
  lines.push(
    `| ${row.workload} | ${row.what} | ${show(raw, row.unit)} | ${show(relay, row.unit)} | ${
      ratio === undefined ? "" : `${ratio.toFixed(2)}x`
    } | ${show(inproc, row.unit)}${inprocRatio === undefined ? "" : ` = ${inprocRatio.toFixed(2)}x`} | ${
      row.target?.text ?? ""
    } | ${met === undefined ? "" : met ? "met" : "**not met**"} |`,
  );
  table.push({ ...row, target: row.target?.text, raw, relay, inproc, ratio, inprocRatio, met });
}

const cpuLines = [
  "| Workload | raw TCP run: load generator | targets | CPU-s, all processes | relay run: load generator | relay | targets | CPU-s, all processes | relay / raw CPU-s |",
  "| -------- | --------------------------: | ------: | -------------------: | ------------------------: | ----: | ------: | -------------------: | ----------------: |",
];
for (const workload of Object.keys(results)) {
  const raw = get(workload, "cpu", "rawLoadgenPct");
  const loadgen = get(workload, "cpu", "loadgenPct");
  const relay = get(workload, "cpu", "relayPct");
  if (loadgen === undefined) continue;
  const rawTargets = get(workload, "cpu", "rawTargetsPct");
  const targets = get(workload, "cpu", "targetsPct");
  const rawSeconds = get(workload, "cpu", "rawCpuSeconds");
  const relaySeconds = get(workload, "cpu", "relayCpuSeconds");
  const cpuRatio = rawSeconds !== undefined && relaySeconds !== undefined && rawSeconds.median > 0
    ? `${(relaySeconds.median / rawSeconds.median).toFixed(2)}x`
    : "";
  cpuLines.push(
    `| ${workload} | ${show(raw, "%")} | ${show(rawTargets, "%")} | ${show(rawSeconds, " s")} | ${
      show(loadgen, "%")
    } | ${show(relay, "%")} | ${show(targets, "%")} | ${show(relaySeconds, " s")} | ${cpuRatio} |`,
  );
}

const baselineLines = [
  "| Workload | What | relay (subprocess) | minimal relay | relay / minimal |",
  "| -------- | ---- | -----------------: | ------------: | --------------: |",
];
for (const row of rows) {
  const relay = get(row.workload, "relay", row.metric);
  const minimal = get(row.workload, "minimal", row.metric);
  if (relay === undefined || minimal === undefined) continue;
  const ratio = minimal.median === 0 ? "" : `${(relay.median / minimal.median).toFixed(2)}x`;
  baselineLines.push(
    `| ${row.workload} | ${row.what} | ${show(relay, row.unit)} | ${show(minimal, row.unit)} | ${ratio} |`,
  );
}
for (const workload of BASELINED) {
  const ours = get(workload, "cpu", "relayOnlyCpuSeconds");
  const theirs = get(workload, "cpu", "minimalRelayCpuSeconds");
  if (ours === undefined || theirs === undefined) continue;
  baselineLines.push(
    `| ${workload} | relay process CPU seconds | ${show(ours, " s")} | ${show(theirs, " s")} | ${
      theirs.median === 0 ? "" : `${(ours.median / theirs.median).toFixed(2)}x`
    } |`,
  );
}

const oneWorker = get("W1x8", "relay", "mibPerSec");
const twoWorkers = get("W1x8", "workers2", "mibPerSec");
const workerLines: string[] = [];
if (oneWorker !== undefined && twoWorkers !== undefined) {
  const cpu1 = get("W1x8", "cpu", "relayOnlyCpuSeconds");
  const cpu2 = get("W1x8", "cpu", "workersCpuSeconds");
  workerLines.push(
    "| W1x8 aggregate | AERO_PROXY_WORKERS=1 | AERO_PROXY_WORKERS=2 | 2 / 1 |",
    "| -------------- | -------------------: | -------------------: | ----: |",
    `| throughput | ${show(oneWorker, " MiB/s")} | ${show(twoWorkers, " MiB/s")} | ${
      (twoWorkers.median / oneWorker.median).toFixed(2)
    }x |`,
    `| relay CPU seconds (workers summed) | ${show(cpu1, " s")} | ${show(cpu2, " s")} | ${
      cpu1 === undefined || cpu2 === undefined || cpu1.median === 0
        ? ""
        : `${(cpu2.median / cpu1.median).toFixed(2)}x`
    } |`,
  );
}

const totalSeconds = (performance.now() - wallStart) / 1000;
say();
say(`Medians of ${runs} runs (min-max); ratios are relay median / raw TCP median from this run.`);
say(lines.join("\n"));
say();
say(
  "CPU share, % of one core (2 cores in all), and CPU seconds summed over every process of a run " +
    "(the work a run costs), median (min-max) over the runs:",
);
say(cpuLines.join("\n"));
say();
if (baselineLines.length > 2) {
  say("Beside the minimal Deno relay (bench/_minimal_relay.ts, seed framing, no limits), same runs:");
  say(baselineLines.join("\n"));
  say();
}
if (workerLines.length > 0) {
  say("One relay process against a supervisor with two workers on the same port, same runs:");
  say(workerLines.join("\n"));
  say();
}
say(`Upload window: ${uploadWindow / 1024} KiB unacknowledged. Total time ${totalSeconds.toFixed(0)} s.`);
if (failures.length > 0) say(`Failures:\n${failures.map((f) => `  - ${f}`).join("\n")}`);

const out = flags.out ?? "bench/results/latest.json";
await Deno.mkdir(out.slice(0, Math.max(0, out.lastIndexOf("/"))) || ".", { recursive: true });
await Deno.writeTextFile(
  out,
  JSON.stringify(
    {
      startedAt: startedAt.toISOString(),
      deno: Deno.version.deno,
      cpus: navigator.hardwareConcurrency,
      runs,
      quick,
      sizes,
      relayEnv: { ...BENCH_ENV, ...relayEnv },
      totalSeconds,
      table,
      results,
      failures,
    },
    null,
    2,
  ) + "\n",
);
say(`Results written to ${out}`);
if (failures.length > 0) Deno.exitCode = 1;
