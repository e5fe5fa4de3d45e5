/**
 * Helpers for reading the client's web streams in tests.
 * @module
 */
import { createHash } from "node:crypto";
import { concat } from "../_util.ts";

/** Reads `readable` to its end. */
export async function readAll(readable: ReadableStream<Uint8Array>): Promise<Uint8Array> {
  const parts: Uint8Array[] = [];
  for await (const chunk of readable) parts.push(chunk);
  return concat(parts);
}

/** Reads exactly `length` bytes, then releases the reader (the stream stays open). */
export async function readExactly(readable: ReadableStream<Uint8Array>, length: number): Promise<Uint8Array> {
  const reader = readable.getReader();
  const parts: Uint8Array[] = [];
  let have = 0;
  try {
    while (have < length) {
      const { value, done } = await reader.read();
      if (done) throw new Error(`Stream ended after ${have} of ${length} bytes`);
      parts.push(value);
      have += value.byteLength;
    }
  } finally {
    reader.releaseLock();
  }
  return concat(parts);
}

/** SHA-256 (hex) and length of everything `readable` yields. */
export async function digestOf(
  readable: ReadableStream<Uint8Array>,
): Promise<{ hex: string; bytes: number }> {
  const hash = createHash("sha256");
  let bytes = 0;
  for await (const chunk of readable) {
    hash.update(chunk);
    bytes += chunk.byteLength;
  }
  return { hex: hash.digest("hex"), bytes };
}
