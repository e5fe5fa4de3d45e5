/**
 * The workloads, each as a raw-TCP baseline and through the relay. Every loop is bounded by a count and by a
 * time limit; a stalled transfer fails the run instead of hanging.
 * @module
 */
import { RelayClient } from "../src/client/mod.ts";
import { FrameType, HEADER_SIZE, MUX_PATH } from "../src/protocol/mod.ts";
import { RawWebSocket } from "../tests/_raw_ws.ts";
import {
  dataFrame,
  dial,
  type Framing,
  header,
  MuxSession,
  sizeRequest,
  type StreamHandler,
  writeAll,
} from "./_client.ts";
import { deadline, delay, memoryAfterGc, percentile, sampleKernelQueue, sampleRss } from "./_measure.ts";
import { BENCH_TOKEN, type RelayUnderTest } from "./_relay.ts";
import { ACK_UNIT } from "./_targets.ts";

const MIB = 1024 * 1024;
/** A transfer that makes no progress for this long has stalled. */
const STALL_MS = 10_000;
/** No single transfer may take longer than this. */
const TRANSFER_MS = 120_000;
/**
 * Unacknowledged upload bytes the client allows by default: below the relay's default 1 MiB stream queue, as
 * a client must stay (the protocol has no flow control towards the relay, so a client that sends more than
 * the queue holds gets ERROR 8 from a slow target).
 */
export const UPLOAD_WINDOW = 7 * ACK_UNIT;

/** Ports of the targets. */
export interface Targets {
  readonly source: number;
  readonly sink: number;
  readonly echo: number;
  readonly stalled: number;
}

export type Metrics = Record<string, number>;

/** A watchdog: rejects `failed` when progress stops for STALL_MS or the whole thing takes TRANSFER_MS. */
function watchdog(what: string): { progress(): void; failed: Promise<never>; stop(): void } {
  const started = performance.now();
  let last = started;
  const { promise: failed, reject } = Promise.withResolvers<never>();
  failed.catch(() => {});
  const timer = setInterval(() => {
    const now = performance.now();
    if (now - last > STALL_MS) reject(new Error(`${what} stalled: no progress for ${STALL_MS} ms`));
    else if (now - started > TRANSFER_MS) reject(new Error(`${what} took longer than ${TRANSFER_MS} ms`));
  }, 250);
  return {
    progress: () => last = performance.now(),
    failed,
    stop: () => clearInterval(timer),
  };
}

// --- W1 download --------------------------------------------------------------------------------------

async function rawDownload(targets: Targets, total: number): Promise<Metrics> {
  const conn = await dial(targets.source);
  const dog = watchdog("raw download");
  const started = performance.now();
  let got = 0;
  try {
    await writeAll(conn, sizeRequest(total));
    const buf = new Uint8Array(64 * 1024);
    const reading = (async () => {
      for (let reads = 0; reads < total; reads++) {
        const n = await conn.read(buf);
        if (n === null) return;
        got += n;
        dog.progress();
      }
    })();
    await Promise.race([reading, dog.failed]);
  } finally {
    dog.stop();
    conn.close();
  }
  if (got !== total) throw new Error(`raw download: got ${got} of ${total} bytes`);
  return { mibPerSec: total / MIB / ((performance.now() - started) / 1000) };
}

/** Downloads `total` bytes on stream `id`; resolves when the relay's CLOSE arrives. */
function muxDownload(
  session: MuxSession,
  targets: Targets,
  id: number,
  total: number,
  onBytes?: (got: number) => void,
): Promise<{ seconds: number }> {
  const dog = watchdog("relay download");
  const started = performance.now();
  let got = 0;
  const { promise, resolve, reject } = Promise.withResolvers<{ seconds: number }>();
  session.open(id, targets.source, {
    onData(payload) {
      got += payload.byteLength;
      dog.progress();
      onBytes?.(got);
    },
    onClose() {
      if (got === total) resolve({ seconds: (performance.now() - started) / 1000 });
      else reject(new Error(`relay download: CLOSE after ${got} of ${total} bytes`));
    },
    onError: (code, message) => reject(new Error(`relay download: ERROR ${code} ${message}`)),
  });
  session.sendData(id, sizeRequest(total));
  return Promise.race([promise, dog.failed]).finally(() => dog.stop());
}

async function relayDownload(
  relay: RelayUnderTest,
  targets: Targets,
  total: number,
  framing: Framing,
): Promise<Metrics> {
  await using session = await MuxSession.connect(relay.port, BENCH_TOKEN, framing);
  const { seconds } = await muxDownload(session, targets, 1, total);
  return { mibPerSec: total / MIB / seconds };
}

export function download(
  relay: RelayUnderTest | undefined,
  targets: Targets,
  total: number,
  framing: Framing = "seed",
) {
  return relay === undefined ? rawDownload(targets, total) : relayDownload(relay, targets, total, framing);
}

/**
 * W1x8: `sessions` sessions at once, each downloading `each` bytes on one stream (raw TCP: as many
 * connections). The figure is the aggregate: all bytes over the time until the last one finished.
 */
export async function parallelDownload(
  relay: RelayUnderTest | undefined,
  targets: Targets,
  sessions: number,
  each: number,
): Promise<Metrics> {
  const started = performance.now();
  const one = async () => {
    if (relay === undefined) {
      await rawDownload(targets, each);
      return;
    }
    await using session = await MuxSession.connect(relay.port, BENCH_TOKEN, "seed");
    await muxDownload(session, targets, 1, each);
  };
  await Promise.all(Array.from({ length: sessions }, one));
  const seconds = (performance.now() - started) / 1000;
  return { mibPerSec: (sessions * each) / MIB / seconds };
}

// --- W2 upload ----------------------------------------------------------------------------------------

async function rawUpload(targets: Targets, total: number, frameSize: number): Promise<Metrics> {
  const conn = await dial(targets.sink);
  const dog = watchdog("raw upload");
  const started = performance.now();
  const chunk = new Uint8Array(frameSize).fill(0x61);
  let acked = 0;
  try {
    const writing = (async () => {
      for (let sent = 0; sent < total; sent += frameSize) await writeAll(conn, chunk);
    })();
    const reading = (async () => {
      const buf = new Uint8Array(1024);
      for (let reads = 0; acked < total && reads < total; reads++) {
        const n = await conn.read(buf);
        if (n === null) return;
        acked += n * ACK_UNIT;
        dog.progress();
      }
    })();
    await Promise.race([Promise.all([writing, reading]), dog.failed]);
  } finally {
    dog.stop();
    conn.close();
  }
  if (acked !== total) throw new Error(`raw upload: ${acked} of ${total} bytes acknowledged`);
  return { mibPerSec: total / MIB / ((performance.now() - started) / 1000) };
}

async function relayUpload(
  relay: RelayUnderTest,
  targets: Targets,
  total: number,
  frameSize: number,
  window: number,
  framing: Framing,
): Promise<Metrics> {
  await using session = await MuxSession.connect(relay.port, BENCH_TOKEN, framing);
  const id = 1;
  const frame = session.dataFrame(id, frameSize);
  const dog = watchdog("relay upload");
  let acked = 0;
  let wake: (() => void) | undefined;
  let failure: Error | undefined;
  const handler: StreamHandler = {
    onData(payload) {
      acked += payload.byteLength * ACK_UNIT;
      dog.progress();
      wake?.();
    },
    onError(code, message) {
      failure = new Error(`relay upload: ERROR ${code} ${message}`);
      wake?.();
    },
  };
  const started = performance.now();
  session.open(id, targets.sink, handler);
  try {
    let sent = 0;
    for (let rounds = 0; acked < total && rounds < total; rounds++) {
      // Under the credit extension the relay's window paces the client; otherwise the sink's acknowledgements.
      while (sent < total && sent - acked + frameSize <= window && session.sendCredit(id) >= frameSize) {
        session.sendFrame(frame);
        sent += frameSize;
      }
      const { promise, resolve } = Promise.withResolvers<void>();
      wake = resolve;
      const credit = framing === "credit" ? session.creditChanged() : promise;
      await Promise.race([promise, credit, dog.failed]);
      if (failure !== undefined) throw failure;
    }
  } finally {
    dog.stop();
  }
  if (acked !== total) throw new Error(`relay upload: ${acked} of ${total} bytes acknowledged`);
  const seconds = (performance.now() - started) / 1000;
  session.sendClose(id);
  return { mibPerSec: total / MIB / seconds };
}

export function upload(
  relay: RelayUnderTest | undefined,
  targets: Targets,
  total: number,
  frameSize: number,
  window = UPLOAD_WINDOW,
  framing: Framing = "seed",
) {
  return relay === undefined
    ? rawUpload(targets, total, frameSize)
    : relayUpload(relay, targets, total, frameSize, window, framing);
}

// --- W3 RTT, also used by W6 and W7 ---------------------------------------------------------------------

const PING_SIZE = 64;

/** Something that sends 64 bytes and resolves when they came back. */
interface Pinger {
  ping(): Promise<void>;
  close(): void;
}

async function rawPinger(port: number): Promise<Pinger> {
  const conn = await dial(port);
  const out = new Uint8Array(PING_SIZE).fill(0x70);
  const buf = new Uint8Array(PING_SIZE);
  return {
    async ping() {
      await writeAll(conn, out);
      for (let have = 0; have < PING_SIZE;) {
        const n = await conn.read(buf.subarray(have));
        if (n === null) throw new Error("raw ping: the echo server closed the connection");
        have += n;
      }
    },
    close: () => conn.close(),
  };
}

async function muxPinger(session: MuxSession, port: number, id: number): Promise<Pinger> {
  const frame = session.dataFrame(id, PING_SIZE, 0x70);
  let have = 0;
  let done: (() => void) | undefined;
  let fail: ((err: Error) => void) | undefined;
  const { promise: opened, resolve: openedResolve, reject: openedReject } = Promise.withResolvers<void>();
  session.open(id, port, {
    onOpen: () => openedResolve(),
    onData(payload) {
      have += payload.byteLength;
      if (have >= PING_SIZE) {
        have -= PING_SIZE;
        done?.();
      }
    },
    onError(code, message) {
      const err = new Error(`ping stream: ERROR ${code} ${message}`);
      openedReject(err);
      fail?.(err);
    },
  });
  await deadline(opened, 10_000, "ping stream OPEN");
  return {
    ping() {
      const { promise, resolve, reject } = Promise.withResolvers<void>();
      done = resolve;
      fail = reject;
      session.sendFrame(frame);
      return promise;
    },
    close: () => session.sendClose(id),
  };
}

/** Pings until `count` round trips, `maxMs` elapsed or `until()` is true; returns each RTT in ms. */
async function pingLoop(
  pinger: Pinger,
  options: { count: number; maxMs: number; until?: () => boolean },
): Promise<number[]> {
  const rtts: number[] = [];
  const started = performance.now();
  for (let i = 0; i < options.count; i++) {
    if (performance.now() - started > options.maxMs || options.until?.() === true) break;
    const t0 = performance.now();
    await deadline(pinger.ping(), STALL_MS, "ping");
    rtts.push(performance.now() - t0);
  }
  return rtts;
}

function rttMetrics(rtts: readonly number[]): Metrics {
  return { p50Ms: percentile(rtts, 50), p99Ms: percentile(rtts, 99), pings: rtts.length };
}

const WARMUP_PINGS = 100;

export async function rtt(
  relay: RelayUnderTest | undefined,
  targets: Targets,
  count: number,
  framing: Framing = "seed",
) {
  if (relay === undefined) {
    const pinger = await rawPinger(targets.echo);
    try {
      await pingLoop(pinger, { count: WARMUP_PINGS, maxMs: 5000 });
      return rttMetrics(await pingLoop(pinger, { count, maxMs: 60_000 }));
    } finally {
      pinger.close();
    }
  }
  await using session = await MuxSession.connect(relay.port, BENCH_TOKEN, framing);
  const pinger = await muxPinger(session, targets.echo, 1);
  await pingLoop(pinger, { count: WARMUP_PINGS, maxMs: 5000 });
  const result = rttMetrics(await pingLoop(pinger, { count, maxMs: 60_000 }));
  pinger.close();
  return result;
}

// --- W4 many streams ----------------------------------------------------------------------------------

const ECHO_ROUNDS = 10;
const ECHO_SIZE = 1024;

async function rawManyStreams(targets: Targets, streams: number): Promise<Metrics> {
  const payload = new Uint8Array(ECHO_SIZE).fill(0x65);
  const connectMs: number[] = [];
  const started = performance.now();
  const one = async () => {
    const t0 = performance.now();
    const conn = await dial(targets.echo);
    connectMs.push(performance.now() - t0);
    try {
      const buf = new Uint8Array(ECHO_SIZE);
      for (let round = 0; round < ECHO_ROUNDS; round++) {
        await writeAll(conn, payload);
        for (let have = 0; have < ECHO_SIZE;) {
          const n = await conn.read(buf.subarray(have));
          if (n === null) throw new Error("raw echo: closed early");
          have += n;
        }
      }
    } finally {
      conn.close();
    }
  };
  await deadline(Promise.all(Array.from({ length: streams }, one)), TRANSFER_MS, "raw 1,000 streams");
  return {
    totalMs: performance.now() - started,
    openP50Ms: percentile(connectMs, 50),
    openP99Ms: percentile(connectMs, 99),
  };
}

async function relayManyStreams(
  relay: RelayUnderTest,
  targets: Targets,
  streams: number,
  framing: Framing,
): Promise<Metrics> {
  await using session = await MuxSession.connect(relay.port, BENCH_TOKEN, framing);
  const ackMs: number[] = [];
  let finished = 0;
  const { promise: allDone, resolve, reject } = Promise.withResolvers<void>();
  const started = performance.now();
  for (let id = 1; id <= streams; id++) {
    const frame = session.dataFrame(id, ECHO_SIZE, 0x65);
    const opened = performance.now();
    let rounds = 0;
    let have = 0;
    session.open(id, targets.echo, {
      onOpen() {
        ackMs.push(performance.now() - opened);
        session.sendFrame(frame);
      },
      onData(payload) {
        have += payload.byteLength;
        if (have < ECHO_SIZE) return;
        have -= ECHO_SIZE;
        if (++rounds < ECHO_ROUNDS) session.sendFrame(frame);
        else session.sendClose(id);
      },
      onClose() {
        if (rounds !== ECHO_ROUNDS) reject(new Error(`stream ${id} closed after ${rounds} rounds`));
        if (++finished === streams) resolve();
      },
      onError: (code, message) => reject(new Error(`stream ${id}: ERROR ${code} ${message}`)),
    });
  }
  await deadline(allDone, TRANSFER_MS, "relay 1,000 streams");
  return {
    totalMs: performance.now() - started,
    openP50Ms: percentile(ackMs, 50),
    openP99Ms: percentile(ackMs, 99),
  };
}

export function manyStreams(
  relay: RelayUnderTest | undefined,
  targets: Targets,
  streams: number,
  framing: Framing = "seed",
) {
  return relay === undefined
    ? rawManyStreams(targets, streams)
    : relayManyStreams(relay, targets, streams, framing);
}

// --- W5 memory ----------------------------------------------------------------------------------------

/** Opens `streams` streams to the target that never sends, and waits until the relay has acknowledged all. */
async function openIdleStreams(session: MuxSession, targets: Targets, streams: number): Promise<void> {
  let acked = 0;
  const { promise, resolve, reject } = Promise.withResolvers<void>();
  for (let id = 1; id <= streams; id++) {
    session.open(id, targets.stalled, {
      onOpen: () => ++acked === streams && resolve(),
      onError: (code, message) => reject(new Error(`idle stream ${id}: ERROR ${code} ${message}`)),
    });
  }
  await deadline(promise, TRANSFER_MS, `${streams} idle streams`);
}

/** RSS with 1,000 idle streams (OPENed to a target that never sends), per stream. */
export async function idleStreamsMemory(
  relay: RelayUnderTest,
  targets: Targets,
  streams: number,
): Promise<Metrics> {
  await using session = await MuxSession.connect(relay.port, BENCH_TOKEN);
  await delay(200);
  const before = await relay.rss();
  await openIdleStreams(session, targets, streams);
  await delay(500);
  const after = await relay.rss();
  return { rssWithStreamsMiB: after / MIB, kibPerStream: (after - before) / 1024 / streams };
}

/**
 * Where an idle stream's memory goes, with the relay in this process: V8 heap in use and off-heap buffers
 * per stream after a full GC (needs `--v8-flags=--expose-gc`). The load generator's own
 * per-stream bookkeeping (a handler each) is included, so the heap figure is an upper bound for the relay.
 */
export async function idleStreamsHeap(
  relay: RelayUnderTest,
  targets: Targets,
  streams: number,
): Promise<Metrics> {
  await using session = await MuxSession.connect(relay.port, BENCH_TOKEN);
  const before = await memoryAfterGc();
  await openIdleStreams(session, targets, streams);
  await delay(300);
  const after = await memoryAfterGc();
  // RSS and the reserved heap are left out: in this process they also move with the load generator and
  // with what earlier runs freed.
  const perStream = (key: "heapUsed" | "external") => (after[key] - before[key]) / 1024 / streams;
  return {
    heapUsedKiB: perStream("heapUsed"),
    externalKiB: perStream("external"),
  };
}

/** Deno's own cost per idle socket (`_socket_floor.ts` in a fresh process): the floor under W5. */
export async function socketFloor(targets: Targets, sockets: number): Promise<Metrics> {
  const output = await new Deno.Command(Deno.execPath(), {
    args: [
      "run",
      "--allow-net=127.0.0.0/8",
      "--v8-flags=--expose-gc",
      new URL("./_socket_floor.ts", import.meta.url).pathname,
      String(targets.stalled),
      String(sockets),
    ],
    stdin: "null",
    stdout: "piped",
    stderr: "piped",
    signal: AbortSignal.timeout(TRANSFER_MS),
  }).output();
  const text = new TextDecoder().decode(output.stdout).trim();
  if (!output.success) {
    throw new Error(`socket floor probe failed: ${new TextDecoder().decode(output.stderr).trim()}`);
  }
  return JSON.parse(text) as Metrics;
}

/**
 * Downloads `total` bytes with a raw WebSocket client that stops reading for `pauseMs` after a quarter of the
 * bytes; samples the relay's RSS all along.
 */
export async function stalledClientMemory(
  relay: RelayUnderTest,
  targets: Targets,
  total: number,
  pauseMs: number,
): Promise<Metrics> {
  await using ws = await RawWebSocket.connect(relay.port, `/tcp-mux?token=${BENCH_TOKEN}`);
  await delay(200);
  const before = await relay.rss();
  const sampler = sampleRss(() => relay.rss(), { everyMs: 50, maxSamples: 10_000 });
  const open = header(new Uint8Array(HEADER_SIZE + 7), FrameType.OPEN, 1);
  open.set([4, 127, 0, 0, 1, targets.source >>> 8, targets.source & 0xff], HEADER_SIZE);
  await ws.send(open);
  const request = header(new Uint8Array(HEADER_SIZE + 4), FrameType.DATA, 1);
  request.set(sizeRequest(total), HEADER_SIZE);
  await ws.send(request);
  const started = performance.now();
  let got = 0;
  let paused = false;
  let closed = false;
  try {
    const reading = (async () => {
      for (let frames = 0; frames < total && !closed; frames++) {
        const frame = await ws.read();
        if (frame === null) throw new Error("stalled-client download: the relay closed the WebSocket");
        const type = frame.payload[0];
        if (type === FrameType.DATA) got += frame.payload.byteLength - HEADER_SIZE;
        else if (type === FrameType.CLOSE) closed = true;
        else if (type === FrameType.ERROR) throw new Error("stalled-client download: ERROR from the relay");
        if (!paused && got >= total / 4) {
          paused = true;
          await delay(pauseMs);
        }
      }
    })();
    await deadline(reading, TRANSFER_MS, "stalled-client download");
  } finally {
    ws.abort();
  }
  const peak = await sampler.stop();
  if (got !== total) throw new Error(`stalled-client download: got ${got} of ${total} bytes`);
  return {
    rssBeforeMiB: before / MIB,
    peakGrowthMiB: (peak - before) / MIB,
    completedSec: (performance.now() - started) / 1000,
  };
}

// --- W6 RTT on stream B while stream A downloads -------------------------------------------------------

export async function rttUnderDownload(
  relay: RelayUnderTest | undefined,
  targets: Targets,
  total: number,
  count: number,
  sampleQueue = false,
  framing: Framing = "seed",
): Promise<Metrics> {
  let downloadDone = false;
  let got = 0;
  if (relay === undefined) {
    const pinger = await rawPinger(targets.echo);
    const conn = await dial(targets.source);
    try {
      await writeAll(conn, sizeRequest(total));
      const started = performance.now();
      const reading = (async () => {
        const buf = new Uint8Array(64 * 1024);
        for (let reads = 0; reads < total; reads++) {
          const n = await conn.read(buf);
          if (n === null) break;
          got += n;
        }
        downloadDone = true;
      })();
      await deadline(waitFor(() => got >= 4 * MIB || downloadDone), STALL_MS, "download start");
      const queue = sampleQueue ? sampleKernelQueue(targets.source, KERNEL_QUEUE_SAMPLING) : undefined;
      const rtts = await pingLoop(pinger, { count, maxMs: 60_000, until: () => downloadDone });
      const queued = await queue?.stop();
      await deadline(reading, TRANSFER_MS, "raw download");
      const aMiBPerSec = total / MIB / ((performance.now() - started) / 1000);
      return { ...rttMetrics(rtts), aMiBPerSec, ...queueMetrics(queued, aMiBPerSec) };
    } finally {
      pinger.close();
      conn.close();
    }
  }
  await using session = await MuxSession.connect(relay.port, BENCH_TOKEN, framing);
  const pinger = await muxPinger(session, targets.echo, 2);
  const downloading = muxDownload(session, targets, 1, total, (n) => got = n);
  downloading.catch(() => {});
  await deadline(waitFor(() => got >= 4 * MIB), STALL_MS, "download start");
  // Only the client <-> relay connection: what waits there is ahead of B's reply. (The relay's own send
  // buffer, bufferedAmount, is not visible from outside; it stays under the high watermark.)
  const queue = sampleQueue ? sampleKernelQueue(relay.port, KERNEL_QUEUE_SAMPLING) : undefined;
  const rtts = await pingLoop(pinger, { count, maxMs: 60_000, until: () => got >= total });
  const queued = await queue?.stop();
  const { seconds } = await downloading;
  pinger.close();
  const aMiBPerSec = total / MIB / seconds;
  return { ...rttMetrics(rtts), aMiBPerSec, ...queueMetrics(queued, aMiBPerSec) };
}

/** Often enough for a download of a few tenths of a second; each sample runs `ss` (about 2 ms of CPU). */
const KERNEL_QUEUE_SAMPLING = { everyMs: 10, maxSamples: 6000 };

/**
 * The median bytes the kernel held between A's sender and the load generator while B pinged, and how long
 * a reply queued behind them waits at A's rate: if that wait is most of B's RTT, the queue is the cause.
 */
function queueMetrics(queued: number | undefined, aMiBPerSec: number): Metrics {
  if (queued === undefined) return {};
  const queueMiB = queued / MIB;
  return { kernelQueueMiB: queueMiB, queueWaitMs: (queueMiB / aMiBPerSec) * 1000 };
}

async function waitFor(condition: () => boolean): Promise<void> {
  for (let i = 0; i < 100_000 && !condition(); i++) await delay(1);
}

// --- W7 a target that stops reading on stream A, pings on stream B --------------------------------------

const FLOOD_FRAME = 64 * 1024;
const FLOOD_MAX = 64 * MIB;

export async function rttBesideStalledTarget(
  relay: RelayUnderTest | undefined,
  targets: Targets,
  seconds: number,
): Promise<Metrics> {
  const maxMs = seconds * 1000;
  if (relay === undefined) {
    const pinger = await rawPinger(targets.echo);
    const conn = await dial(targets.stalled);
    const chunk = new Uint8Array(FLOOD_FRAME);
    let stop = false;
    try {
      // Writes block once the kernel buffers are full; closing the connection ends the pending write.
      const flooding = (async () => {
        for (let sent = 0; sent < FLOOD_MAX && !stop; sent += FLOOD_FRAME) await writeAll(conn, chunk);
      })().catch(() => {});
      await delay(100);
      const rtts = await pingLoop(pinger, { count: 1_000_000, maxMs });
      stop = true;
      conn.close();
      await flooding;
      return { pings: rtts.length, p50Ms: percentile(rtts, 50) };
    } finally {
      pinger.close();
      try {
        conn.close();
      } catch { /* closed above */ }
    }
  }
  await using session = await MuxSession.connect(relay.port, BENCH_TOKEN);
  const pinger = await muxPinger(session, targets.echo, 2);
  await pingLoop(pinger, { count: WARMUP_PINGS, maxMs: 5000 });
  const unloaded = await pingLoop(pinger, { count: 1_000_000, maxMs });

  const before = await relay.rss();
  const sampler = sampleRss(() => relay.rss(), { everyMs: 50, maxSamples: 10_000 });
  let aError = 0;
  let aClosed = false;
  let sent = 0;
  session.open(1, targets.stalled, {
    onError: (code) => aError = code,
    onClose: () => aClosed = true,
  });
  const frame = dataFrame(1, FLOOD_FRAME);
  const started = performance.now();
  const flooding = (async () => {
    while (!aClosed && sent < FLOOD_MAX && performance.now() - started < maxMs) {
      if (session.ws.bufferedAmount < MIB) {
        session.sendFrame(frame);
        sent += FLOOD_FRAME;
      } else {
        await delay(1);
      }
      if ((sent / FLOOD_FRAME) % 16 === 0) await delay(0);
    }
  })();
  const loaded = await pingLoop(pinger, { count: 1_000_000, maxMs });
  await flooding;
  const peak = await sampler.stop();
  pinger.close();
  return {
    pings: loaded.length,
    p50Ms: percentile(loaded, 50),
    unloadedPings: unloaded.length,
    unloadedP50Ms: percentile(unloaded, 50),
    rateRatio: loaded.length / Math.max(1, unloaded.length),
    aErrorCode: aError,
    aSentMiB: sent / MIB,
    rssGrowthMiB: (peak - before) / MIB,
  };
}

// --- The same through RelayClient (web streams), the library browser apps use ---------------------------

function clientFor(relay: RelayUnderTest): RelayClient {
  return new RelayClient(`ws://127.0.0.1:${relay.port}${MUX_PATH}`, { token: BENCH_TOKEN });
}

/** W1c: W1's download read through `RelayClient`'s `ReadableStream`. */
async function clientDownload(relay: RelayUnderTest, targets: Targets, total: number): Promise<Metrics> {
  await using client = clientFor(relay);
  const started = performance.now();
  const stream = await client.connect("127.0.0.1", targets.source);
  const dog = watchdog("client download");
  let got = 0;
  try {
    const writer = stream.writable.getWriter();
    await writer.write(sizeRequest(total));
    writer.releaseLock();
    const reading = (async () => {
      for await (const chunk of stream.readable) {
        got += chunk.byteLength;
        dog.progress();
      }
    })();
    await Promise.race([reading, dog.failed]);
  } finally {
    dog.stop();
  }
  if (got !== total) throw new Error(`client download: got ${got} of ${total} bytes`);
  return { mibPerSec: total / MIB / ((performance.now() - started) / 1000) };
}

export function clientOrRawDownload(relay: RelayUnderTest | undefined, targets: Targets, total: number) {
  return relay === undefined ? rawDownload(targets, total) : clientDownload(relay, targets, total);
}

/** W3c: W3's pings written and read through `RelayClient`'s web streams. */
async function clientPinger(client: RelayClient, port: number): Promise<Pinger> {
  const stream = await client.connect("127.0.0.1", port);
  const writer = stream.writable.getWriter();
  const reader = stream.readable.getReader();
  const out = new Uint8Array(PING_SIZE).fill(0x70);
  return {
    async ping() {
      await writer.write(out);
      for (let have = 0; have < PING_SIZE;) {
        const { value, done } = await reader.read();
        if (done) throw new Error("client ping: the stream ended");
        have += value.byteLength;
      }
    },
    close() {
      writer.releaseLock();
      reader.releaseLock();
      void stream.close().catch(() => {});
    },
  };
}

export async function clientOrRawRtt(relay: RelayUnderTest | undefined, targets: Targets, count: number) {
  if (relay === undefined) return rtt(undefined, targets, count);
  await using client = clientFor(relay);
  const pinger = await clientPinger(client, targets.echo);
  try {
    await pingLoop(pinger, { count: WARMUP_PINGS, maxMs: 5000 });
    return rttMetrics(await pingLoop(pinger, { count, maxMs: 60_000 }));
  } finally {
    pinger.close();
  }
}
