/**
 * The `--deny-net` list for the sandboxed task and binary: every special range of the policy table, so that Deno
 * itself refuses them even if the policy code had a bug. Deno's deny list also blocks listening, so the two
 * IPv4 addresses the relay may listen on (127.0.0.1 and 0.0.0.0) are carved out of their /8 blocks.
 *
 * IPv6: Deno 2.9.6 accepts only single bracketed IPv6 addresses in `--deny-net` (`[::1]`). It refuses every
 * IPv6 CIDR form (`fc00::/7`: "ipv6 addresses must be enclosed in square brackets"; `[fc00::]/7`: "invalid
 * host"; `[fc00::/7]`: "invalid IPv6 address"), so the sandbox can hold only the one-address IPv6 ranges:
 * `::1` (and `::`, which is left open like 0.0.0.0 because the relay may listen on it). The IPv6 prefixes
 * rely on the policy code alone. IPv4-mapped addresses need no entry: Deno checks `::ffff:a.b.c.d` as
 * `a.b.c.d`, which the IPv4 list covers.
 * @module
 */
import { formatAddress, SPECIAL_RANGES, SPECIAL_RANGES_V6 } from "./policy.ts";

/** Addresses the relay may need to bind; everything else in their ranges stays denied. */
export const LISTEN_ADDRESSES: readonly string[] = ["0.0.0.0", "127.0.0.1", "::"];

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

/** The single IPv6 addresses of the table (its /128 ranges), bracketed as Deno wants them, listen addresses left out. */
export function sandboxIpv6Entries(): string[] {
  return SPECIAL_RANGES_V6
    .filter((range) => range.prefix === 128 && range.embeds === undefined)
    .map((range) => formatAddress(bytesOf128(range.network)))
    .filter((address) => !LISTEN_ADDRESSES.includes(address))
    .map((address) => `[${address}]`);
}

function bytesOf128(value: bigint): number[] {
  const bytes: number[] = [];
  for (let i = 15; i >= 0; i--) bytes.push(Number((value >> BigInt(i * 8)) & 0xffn));
  return bytes;
}

/** The `--deny-net` entries: the IPv4 table in order, then the IPv6 single addresses. */
export function sandboxDenyList(): string[] {
  const holes = LISTEN_ADDRESSES.filter((a) => !a.includes(":")).map(toU32);
  const out: string[] = [];
  for (const range of SPECIAL_RANGES) {
    const prefix = 32 - Math.log2(((~range.mask) >>> 0) + 1);
    const hole = holes.find((h) => ((h & range.mask) >>> 0) === range.network);
    if (hole === undefined) out.push(range.text);
    else out.push(...cidrsExcept(range.network, prefix, hole));
  }
  out.push(...sandboxIpv6Entries());
  return out;
}

if (import.meta.main) {
  // `deno run src/policy/sandbox.ts` prints the flag for deno.json's sandboxed tasks.
  // deno-lint-ignore no-console
  console.log(`--deny-net=${sandboxDenyList().join(",")}`);
}
