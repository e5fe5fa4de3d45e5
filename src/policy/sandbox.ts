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

/** The CIDRs that cover `network/prefix` except the single address `hole`, largest first. */
export function cidrsExcept(network: number, prefix: number, hole: number): string[] {
  const blockMask = maskOf(prefix);
  if (((hole & blockMask) >>> 0) !== network) throw new RangeError("Cannot cut a hole outside the block");
  return toCidrs(subtract({ network, prefix }, [{ network: hole, prefix: 32 }]));
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

/** An IPv4 block as a network number and a prefix length. */
interface Block {
  readonly network: number;
  readonly prefix: number;
}

function maskOf(prefix: number): number {
  return prefix === 0 ? 0 : (0xffff_ffff << (32 - prefix)) >>> 0;
}

/** `block` without the parts that `holes` cover, as the fewest CIDRs that split it along prefix boundaries. */
function subtract(block: Block, holes: readonly Block[]): Block[] {
  const overlapping = holes.filter((hole) => {
    const mask = maskOf(Math.min(block.prefix, hole.prefix));
    return ((block.network & mask) >>> 0) === ((hole.network & mask) >>> 0);
  });
  if (overlapping.length === 0) return [block];
  if (overlapping.some((hole) => hole.prefix <= block.prefix)) return [];
  const prefix = block.prefix + 1;
  const upper = (block.network | (1 << (32 - prefix))) >>> 0;
  return [
    ...subtract({ network: block.network, prefix }, overlapping),
    ...subtract({ network: upper, prefix }, overlapping),
  ];
}

/** Blocks as CIDR text, largest first (the order the flag has always been written in). */
function toCidrs(blocks: Block[]): string[] {
  return blocks.sort((x, y) => x.prefix - y.prefix || x.network - y.network).map((b) =>
    toText(b.network, b.prefix)
  );
}

/**
 * Parses the `--except` list: IPv4 addresses or CIDRs that the sandbox must leave open (such as the address of a
 * Redis on a private network). Throws a RangeError naming a bad entry.
 */
export function parseExceptions(text: string): Block[] {
  return text.split(",").map((entry) => entry.trim()).filter((entry) => entry !== "").map((entry) => {
    const match = /^(\d{1,3})\.(\d{1,3})\.(\d{1,3})\.(\d{1,3})(?:\/(\d{1,2}))?$/.exec(entry);
    const octets = match?.slice(1, 5).map(Number);
    const prefix = match?.[5] === undefined ? 32 : Number(match[5]);
    if (octets === undefined || octets.some((o) => o > 255) || prefix > 32) {
      throw new RangeError(`Cannot leave ${JSON.stringify(entry)} open: not an IPv4 address or CIDR`);
    }
    const value = octets.reduce((acc, o) => ((acc << 8) | o) >>> 0, 0);
    // A typo must not open more than was meant: no host bits past the prefix, and no block wider than a /8.
    if (((value & maskOf(prefix)) >>> 0) !== value) {
      throw new RangeError(`Cannot leave ${JSON.stringify(entry)} open: it has bits set past the /${prefix}`);
    }
    if (prefix < 8) {
      throw new RangeError(`Cannot leave ${JSON.stringify(entry)} open: wider than a /8`);
    }
    return { network: value, prefix };
  });
}

/**
 * The `--deny-net` entries: the IPv4 table in order, then the IPv6 single addresses. The listen addresses are
 * always left open; `except` leaves more open (IPv4 blocks, see {@linkcode parseExceptions}).
 */
export function sandboxDenyList(except: readonly Block[] = []): string[] {
  const holes: Block[] = [
    ...LISTEN_ADDRESSES.filter((a) => !a.includes(":")).map((a) => ({ network: toU32(a), prefix: 32 })),
    ...except,
  ];
  const out: string[] = [];
  for (const range of SPECIAL_RANGES) {
    const prefix = 32 - Math.log2(((~range.mask) >>> 0) + 1);
    const kept = subtract({ network: range.network, prefix }, holes);
    if (kept.length === 1 && kept[0]!.prefix === prefix) out.push(range.text);
    else out.push(...toCidrs(kept));
  }
  out.push(...sandboxIpv6Entries());
  return out;
}

if (import.meta.main) {
  // `deno run src/policy/sandbox.ts` prints the flag for deno.json's sandboxed tasks; with `--except=CIDR,...`
  // the flag for a build that must reach those addresses (see tools/compile.ts).
  const exceptArg = Deno.args.find((arg) => arg.startsWith("--except="))?.slice("--except=".length) ?? "";
  // deno-lint-ignore no-console
  console.log(`--deny-net=${sandboxDenyList(parseExceptions(exceptArg)).join(",")}`);
}
