/**
 * Token bucket over an injected clock; no timers. Callers decide whether to wait or refuse.
 * @module
 */

/** A token bucket: `rate` tokens a second, holding at most `burst`. */
export class TokenBucket {
  readonly #rate: number;
  readonly #burst: number;
  readonly #now: () => number;
  #tokens: number;
  #last: number;

  /**
   * @param rate tokens added per second
   * @param burst capacity, and the starting balance
   * @param now clock in milliseconds
   */
  constructor(rate: number, burst: number, now: () => number = performance.now.bind(performance)) {
    if (!(rate > 0) || !(burst > 0)) {
      throw new RangeError(`Cannot create token bucket: rate ${rate}, burst ${burst}`);
    }
    this.#rate = rate;
    this.#burst = burst;
    this.#now = now;
    this.#tokens = burst;
    this.#last = now();
  }

  #refill(): void {
    const now = this.#now();
    const elapsed = now - this.#last;
    this.#last = now;
    if (elapsed > 0) this.#tokens = Math.min(this.#burst, this.#tokens + (elapsed * this.#rate) / 1000);
  }

  /** Takes `n` tokens if the bucket holds them now; otherwise takes nothing. */
  tryTake(n = 1): boolean {
    this.#refill();
    if (this.#tokens < n) return false;
    this.#tokens -= n;
    return true;
  }

  /**
   * Milliseconds until `n` tokens will be available, without taking any (0 = now).
   */
  waitFor(n = 1): number {
    this.#refill();
    return this.#tokens >= n ? 0 : ((n - this.#tokens) * 1000) / this.#rate;
  }

  /**
   * Takes `n` tokens now, going into debt if needed, and returns the milliseconds the caller should wait
   * before using them (0 = at once). Later callers queue behind the debt, which shapes a flow to `rate`.
   */
  reserve(n: number): number {
    this.#refill();
    this.#tokens -= n;
    return this.#tokens >= 0 ? 0 : (-this.#tokens * 1000) / this.#rate;
  }
}
