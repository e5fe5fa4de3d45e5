/**
 * Process-wide budgets that every session draws from: sockets (descriptors) and bytes queued towards targets.
 * Protocol-neutral; the listener, sessions and streams take and give back units.
 * @module
 */

/** One unit taken from a budget, given back once. */
export interface Counter {
  release(): void;
  released: boolean;
}

/**
 * Sockets the process holds: client connections, target connections, lingering ones. Kept below the
 * descriptor limit with headroom, so running out is a clear refusal (503, ERROR 4), never EMFILE.
 */
export interface SocketBudget {
  readonly limit: number;
  readonly used: number;
  /** Takes one socket; false when the budget is spent. */
  tryAcquire(): boolean;
  release(): void;
}

/** A socket budget of `limit`. */
export function socketBudget(limit: number): SocketBudget {
  let used = 0;
  return {
    limit,
    get used() {
      return used;
    },
    tryAcquire() {
      if (used >= limit) return false;
      used++;
      return true;
    },
    release() {
      if (used > 0) used--;
    },
  };
}

/** A budget that never refuses (tests and tools that run a listener alone). */
export function unlimitedSockets(): SocketBudget {
  return socketBudget(Number.MAX_SAFE_INTEGER);
}

/**
 * Bytes queued towards targets across all sessions. Sessions add and remove bytes as they queue and write;
 * while the total is over the limit, sessions that want to add more wait (their WebSocket reads pause) and
 * are woken, oldest first, as the total falls back under it.
 */
export class QueueBudget {
  readonly limit: number;
  #used = 0;
  #waiters = new Set<() => void>();
  readonly #overListeners = new Set<() => void>();

  constructor(limit: number) {
    this.limit = limit;
  }

  get used(): number {
    return this.#used;
  }

  get over(): boolean {
    return this.#used > this.limit;
  }

  add(bytes: number): void {
    const was = this.#used;
    this.#used += bytes;
    if (was <= this.limit && this.#used > this.limit) {
      for (const listener of [...this.#overListeners]) listener();
    }
  }

  /** Calls `listener` each time the total goes over the limit; returns a function that unsubscribes. */
  onOver(listener: () => void): () => void {
    this.#overListeners.add(listener);
    return () => this.#overListeners.delete(listener);
  }

  remove(bytes: number): void {
    this.#used -= bytes;
    if (this.#used <= this.limit && this.#waiters.size > 0) {
      const waiters = [...this.#waiters];
      this.#waiters.clear();
      for (const wake of waiters) wake();
    }
  }

  /** Calls `wake` once the total is back under the limit; returns a function that cancels the wait. */
  whenUnder(wake: () => void): () => void {
    this.#waiters.add(wake);
    return () => this.#waiters.delete(wake);
  }
}

/** The most descriptors {@linkcode probeOpenFiles} opens: beyond this it reports this many. */
export const OPEN_FILES_PROBE_MAX = 16_384;

/**
 * How many more descriptors this process can open now, found by opening `/dev/null` until the kernel refuses
 * (or {@linkcode OPEN_FILES_PROBE_MAX}), then closing them all: about 1 KiB of memory and 13 µs a descriptor,
 * once. Needs `--allow-read=/dev/null`; undefined without it. The fallback of {@linkcode openFileLimit}.
 */
export function probeOpenFiles(): number | undefined {
  const held: Deno.FsFile[] = [];
  try {
    while (held.length < OPEN_FILES_PROBE_MAX) held.push(Deno.openSync("/dev/null"));
  } catch (err: unknown) {
    if (err instanceof Deno.errors.NotCapable || err instanceof Deno.errors.PermissionDenied) {
      if (held.length === 0) return undefined;
    }
  } finally {
    for (const file of held) file.close();
  }
  return held.length === 0 ? undefined : held.length;
}

/**
 * The soft open-file limit of this process (`ulimit -n`). Deno has no getrlimit, and its file API keeps
 * `/proc/self/limits` behind `--allow-all`; a text import of that file needs only
 * `--allow-read=/proc/self/limits`. Where that fails (no procfs, a compiled binary that cannot import from
 * disk), the descriptors left are probed instead. Undefined when neither is permitted.
 */
export async function openFileLimit(): Promise<number | undefined> {
  try {
    const url = "file:///proc/self/limits";
    const limits = await import(url, { with: { type: "text" } });
    const match = /^Max open files\s+(\d+|unlimited)/m.exec(String(limits.default));
    if (match?.[1] !== undefined && match[1] !== "unlimited") return Number(match[1]);
  } catch { /* fall back to probing */ }
  return probeOpenFiles();
}
