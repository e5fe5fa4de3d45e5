/**
 * The `--deny-net` list for the sandboxed task and binary: every special range of the policy table, so that Deno
 * itself refuses them even if the policy code had a bug. Deno's deny list also blocks listening, so the two
 * addresses the relay may listen on (127.0.0.1 and 0.0.0.0) are carved out of their /8 blocks.
 * @module
 */
import { SPECIAL_RANGES } from "./policy.ts";

/** Addresses the relay may need to bind; everything else in their ranges stays denied. */
export const LISTEN_ADDRESSES: readonly string[] = ["0.0.0.0", "127.0.0.1"];

function toText(address: number, prefix: number): string {
  const octets = [address >>> 24, (address >>> 16) & 255, (address >>> 8) & 255, address & 255];
  return `${octets.join(".")}/${prefix}`;
}

function toU32(text: string): number {
  return text.split(".").reduce((acc, part) => ((acc << 8) | Number(part)) >>> 0, 0);
}

/** The CIDRs that cover `network/prefix` except the single address `hole`. */
export function cidrsExcept(network: number, prefix: number, hole: number): string[] {
  const blockMask = prefix === 0 ? 0 : (0xffff_ffff << (32 - prefix)) >>> 0;
  if (((hole & blockMask) >>> 0) !== network) throw new RangeError("Cannot cut a hole outside the block");
  const out: string[] = [];
  for (let bits = prefix + 1; bits <= 32; bits++) {
    const mask = bits === 0 ? 0 : (0xffff_ffff << (32 - bits)) >>> 0;
    // The sibling of the hole's /bits block: same prefix, the last prefix bit flipped.
    const sibling = ((hole ^ (1 << (32 - bits))) & mask) >>> 0;
    out.push(toText(sibling, bits));
  }
  return out;
}

/** The `--deny-net` entries, in table order. */
export function sandboxDenyList(): string[] {
  const holes = LISTEN_ADDRESSES.map(toU32);
  const out: string[] = [];
  for (const range of SPECIAL_RANGES) {
    const prefix = 32 - Math.log2(((~range.mask) >>> 0) + 1);
    const hole = holes.find((h) => ((h & range.mask) >>> 0) === range.network);
    if (hole === undefined) out.push(range.text);
    else out.push(...cidrsExcept(range.network, prefix, hole));
  }
  return out;
}

if (import.meta.main) {
  // `deno run src/policy/sandbox.ts` prints the flag for deno.json's sandboxed tasks.
  // deno-lint-ignore no-console
  console.log(`--deny-net=${sandboxDenyList().join(",")}`);
}
