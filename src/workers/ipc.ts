/**
 * The supervisor and its workers talk over the workers' standard streams. A worker's stdout carries its log
 * lines as they are, and IPC messages as lines that begin with {@linkcode IPC_MARK} (a character no log line
 * starts with: JSON lines start with `{`, pretty lines with a digit); the supervisor writes NDJSON messages to
 * the worker's stdin. stderr is the terminal's, untouched.
 * @module
 */

/** The first byte of an IPC line on a worker's stdout: ASCII RS, the record separator. */
export const IPC_MARK = "\x1e";
/** The environment variable that makes a process a worker, holding its index (0 to workers - 1). */
export const WORKER_INDEX_ENV = "AERO_PROXY_WORKER_INDEX";
/** The longest line either side reads; a longer one is dropped whole (metrics of one worker are far below). */
export const MAX_LINE_BYTES = 16 * 1024 * 1024;

/** A worker to its supervisor. */
export type WorkerMessage =
  /** Listening and serving. */
  | { readonly type: "ready" }
  /** Shutting down: no longer ready. */
  | { readonly type: "draining" }
  /** Someone scraped this worker's /metrics: asks for the aggregate of every worker. */
  | { readonly type: "scrape"; readonly id: number }
  /** The answer to `collect`: this worker's metrics as prom-client JSON. */
  | { readonly type: "metrics"; readonly id: number; readonly metrics: unknown[] };

/** The supervisor to a worker. */
export type SupervisorMessage =
  /** Whether every worker is ready; sent when that changes, and to each worker once it is ready. */
  | { readonly type: "fleet"; readonly ready: boolean }
  /** Asks for this worker's metrics (answered with `metrics` and the same id). */
  | { readonly type: "collect"; readonly id: number }
  /** The answer to `scrape`: the aggregated exposition, or `null` when it could not be built. */
  | { readonly type: "scraped"; readonly id: number; readonly text: string | null };

const encoder = new TextEncoder();
const decoder = new TextDecoder();

/** One IPC line from a worker, newline included. */
export function encodeWorkerMessage(message: WorkerMessage): Uint8Array {
  return encoder.encode(`${IPC_MARK}${JSON.stringify(message)}\n`);
}

/** One NDJSON line from the supervisor, newline included. */
export function encodeSupervisorMessage(message: SupervisorMessage): Uint8Array {
  return encoder.encode(`${JSON.stringify(message)}\n`);
}

function isRecord(value: unknown): value is Record<string, unknown> {
  return typeof value === "object" && value !== null && !Array.isArray(value);
}

function parseJson(text: string): unknown {
  try {
    return JSON.parse(text);
  } catch {
    return undefined;
  }
}

/** A worker's IPC line (without the mark), or `undefined` for anything malformed. */
export function decodeWorkerMessage(text: string): WorkerMessage | undefined {
  const value = parseJson(text);
  if (!isRecord(value)) return undefined;
  switch (value.type) {
    case "ready":
    case "draining":
      return { type: value.type };
    case "scrape":
      return Number.isSafeInteger(value.id) ? { type: "scrape", id: value.id as number } : undefined;
    case "metrics":
      return Number.isSafeInteger(value.id) && Array.isArray(value.metrics)
        ? { type: "metrics", id: value.id as number, metrics: value.metrics }
        : undefined;
  }
  return undefined;
}

/** A supervisor's NDJSON line, or `undefined` for anything malformed. */
export function decodeSupervisorMessage(text: string): SupervisorMessage | undefined {
  const value = parseJson(text);
  if (!isRecord(value)) return undefined;
  switch (value.type) {
    case "fleet":
      return typeof value.ready === "boolean" ? { type: "fleet", ready: value.ready } : undefined;
    case "collect":
      return Number.isSafeInteger(value.id) ? { type: "collect", id: value.id as number } : undefined;
    case "scraped":
      return Number.isSafeInteger(value.id) && (typeof value.text === "string" || value.text === null)
        ? { type: "scraped", id: value.id as number, text: value.text }
        : undefined;
  }
  return undefined;
}

/** Whether a line of a worker's stdout is an IPC message rather than a log line. */
export function isIpcLine(line: Uint8Array): boolean {
  return line[0] === 0x1e;
}

/** The text of an IPC line after its mark. */
export function ipcText(line: Uint8Array): string {
  return decoder.decode(line.subarray(1));
}

/**
 * Reads `stream` to its end and calls `onLine` with every line, without its newline (a last line without one
 * included); the line may be a view of the stream's chunk, valid during the call only. A line longer than
 * `maxBytes` is dropped whole and reported to `onOverlong`.
 */
export async function readLines(
  stream: ReadableStream<Uint8Array>,
  onLine: (line: Uint8Array) => void,
  options: { maxBytes?: number; onOverlong?: () => void } = {},
): Promise<void> {
  const maxBytes = options.maxBytes ?? MAX_LINE_BYTES;
  let parts: Uint8Array[] = [];
  let held = 0;
  let skipping = false;
  const flush = (tail: Uint8Array) => {
    if (skipping) {
      skipping = false;
      return;
    }
    if (held + tail.byteLength > maxBytes) {
      parts = [];
      held = 0;
      options.onOverlong?.();
      return;
    }
    if (parts.length === 0) {
      onLine(tail);
      return;
    }
    const line = new Uint8Array(held + tail.byteLength);
    let offset = 0;
    for (const part of parts) {
      line.set(part, offset);
      offset += part.byteLength;
    }
    line.set(tail, offset);
    parts = [];
    held = 0;
    onLine(line);
  };
  for await (const chunk of stream) {
    let start = 0;
    for (let newline = chunk.indexOf(0x0a); newline >= 0; newline = chunk.indexOf(0x0a, start)) {
      flush(chunk.subarray(start, newline));
      start = newline + 1;
    }
    if (start < chunk.byteLength && !skipping) {
      // Copied: the stream may reuse its chunk.
      parts.push(chunk.slice(start));
      held += chunk.byteLength - start;
      if (held > maxBytes) {
        parts = [];
        held = 0;
        skipping = true;
        options.onOverlong?.();
      }
    }
  }
  if (held > 0) flush(new Uint8Array(0));
}
