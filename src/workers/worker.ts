/**
 * A worker's side of the IPC with its supervisor: reports readiness and drain, answers metric collections,
 * and asks for the host's aggregated metrics and readiness on behalf of its own /metrics and /readyz.
 * @module
 */
import type { Fleet } from "../server.ts";
import type { Metrics } from "../metrics.ts";
import {
  decodeSupervisorMessage,
  encodeWorkerMessage,
  readLines,
  type SupervisorMessage,
  type WorkerMessage,
} from "./ipc.ts";

const decoder = new TextDecoder();

/** Settings of a {@linkcode WorkerLink}. */
export interface WorkerLinkOptions {
  /** Writes one IPC line (the default writes to stdout, where the log lines go too). */
  readonly write?: (bytes: Uint8Array) => void;
  /** How long a scrape waits for the supervisor's aggregate. @default 5000 */
  readonly scrapeTimeoutMs?: number;
}

/** Writes all of `bytes` to stdout, in the same synchronous way as the log sink, so lines never interleave. */
function writeStdout(bytes: Uint8Array): void {
  for (let offset = 0; offset < bytes.byteLength;) offset += Deno.stdout.writeSync(bytes.subarray(offset));
}

/** The link from a worker to its supervisor; it is the worker relay's {@linkcode Fleet}. */
export class WorkerLink implements Fleet {
  readonly #metrics: Metrics;
  readonly #write: (bytes: Uint8Array) => void;
  readonly #scrapeTimeoutMs: number;
  readonly #scrapes = new Map<number, (text: string | null) => void>();
  #nextId = 1;
  #fleetReady = false;

  constructor(metrics: Metrics, options: WorkerLinkOptions = {}) {
    this.#metrics = metrics;
    this.#write = options.write ?? writeStdout;
    this.#scrapeTimeoutMs = options.scrapeTimeoutMs ?? 5000;
  }

  /** Sends one message to the supervisor. */
  send(message: WorkerMessage): void {
    this.#write(encodeWorkerMessage(message));
  }

  /**
   * Reads the supervisor's messages from `input` (the worker's stdin) until it ends, which means the
   * supervisor is gone. Pending scrapes then fail.
   */
  async serve(input: ReadableStream<Uint8Array>): Promise<void> {
    try {
      await readLines(input, (line) => {
        const message = decodeSupervisorMessage(decoder.decode(line));
        if (message !== undefined) this.#receive(message);
      });
    } finally {
      this.#fleetReady = false;
      for (const settle of this.#scrapes.values()) settle(null);
      this.#scrapes.clear();
    }
  }

  #receive(message: SupervisorMessage): void {
    switch (message.type) {
      case "fleet":
        this.#fleetReady = message.ready;
        return;
      case "collect": {
        const id = message.id;
        // Answered even if reading fails, so that the supervisor's scrape does not wait for its timeout.
        this.#metrics.json().then(
          (metrics) => this.send({ type: "metrics", id, metrics }),
          () => this.send({ type: "metrics", id, metrics: [] }),
        );
        return;
      }
      case "scraped":
        this.#scrapes.get(message.id)?.(message.text);
        this.#scrapes.delete(message.id);
        return;
    }
  }

  /** Whether the supervisor last reported every worker ready. */
  ready(): boolean {
    return this.#fleetReady;
  }

  /** The host's metrics, aggregated by the supervisor over every live worker. */
  exposition(): Promise<string> {
    const id = this.#nextId++;
    const { promise, resolve, reject } = Promise.withResolvers<string>();
    const timer = setTimeout(() => settle(null), this.#scrapeTimeoutMs);
    const settle = (text: string | null) => {
      clearTimeout(timer);
      this.#scrapes.delete(id);
      if (text === null) reject(new Error("The supervisor did not answer with the workers' metrics"));
      else resolve(text);
    };
    this.#scrapes.set(id, settle);
    this.send({ type: "scrape", id });
    return promise;
  }
}
