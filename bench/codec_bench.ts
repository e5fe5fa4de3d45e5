/**
 * Codec micro-benchmarks: encode/decode of DATA frames against a hand-written DataView baseline.
 * Run with `deno task bench`.
 */
import { decodeClientFrame, encodeData, FrameType, HEADER_SIZE, writeHeader } from "../src/protocol/mod.ts";

for (const size of [64, 16 * 1024, 64 * 1024]) {
  const payload = new Uint8Array(size).fill(7);
  const encoded = encodeData(42, payload);
  const scratch = new Uint8Array(HEADER_SIZE + size);

  Deno.bench({
    group: `encode DATA ${size} B`,
    name: "DataView baseline (alloc + header + copy)",
    baseline: true,
  }, () => {
    const frame = new Uint8Array(HEADER_SIZE + size);
    const view = new DataView(frame.buffer);
    view.setUint8(0, FrameType.DATA);
    view.setUint32(1, 42);
    frame.set(payload, HEADER_SIZE);
  });
  Deno.bench({ group: `encode DATA ${size} B`, name: "encodeData()" }, () => {
    encodeData(42, payload);
  });
  Deno.bench({
    group: `encode DATA ${size} B`,
    name: "writeHeader() into a reused read buffer (relay hot path)",
  }, () => {
    writeHeader(scratch, FrameType.DATA, 42);
  });

  Deno.bench({
    group: `decode DATA ${size} B`,
    name: "DataView baseline (type + id + subarray)",
    baseline: true,
  }, () => {
    const view = new DataView(encoded.buffer, encoded.byteOffset, encoded.byteLength);
    if (view.getUint8(0) !== FrameType.DATA) throw new Error("bad type");
    view.getUint32(1);
    encoded.subarray(HEADER_SIZE);
  });
  Deno.bench({ group: `decode DATA ${size} B`, name: "decodeClientFrame()" }, () => {
    decodeClientFrame(encoded);
  });
}
