import assert from "node:assert/strict";
import { TokenBucket } from "../src/rate_limit.ts";

Deno.test({ name: "TokenBucket refills at its rate up to its burst", permissions: "none" }, () => {
  let now = 0;
  const bucket = new TokenBucket(10, 3, () => now);
  assert.equal(bucket.tryTake(), true);
  assert.equal(bucket.tryTake(), true);
  assert.equal(bucket.tryTake(), true);
  assert.equal(bucket.tryTake(), false);
  assert.equal(bucket.waitFor(1), 100);
  now = 100;
  assert.equal(bucket.tryTake(), true);
  now = 10_000;
  assert.equal(bucket.tryTake(3), true);
  assert.equal(bucket.tryTake(), false);
});

Deno.test({ name: "TokenBucket.reserve() shapes a flow by handing out waits", permissions: "none" }, () => {
  let now = 0;
  const bucket = new TokenBucket(1000, 1000, () => now);
  assert.equal(bucket.reserve(1000), 0);
  assert.equal(bucket.reserve(500), 500);
  assert.equal(bucket.reserve(500), 1000);
  now = 1000;
  assert.equal(bucket.reserve(0), 0);
});

Deno.test({ name: "TokenBucket refuses a non-positive rate", permissions: "none" }, () => {
  assert.throws(() => new TokenBucket(0, 1), RangeError);
});
