/**
 * Destination policy: which IP addresses and ports a stream may connect to. Compiled once from the
 * configuration; every destination is judged by its address bytes (4 for IPv4, 16 for IPv6) and its port.
 *
 * IPv6 addresses that carry an IPv4 address (IPv4-mapped `::ffff:a.b.c.d`, IPv4-compatible `::a.b.c.d` and
 * NAT64 `64:ff9b::a.b.c.d`) are judged by that IPv4 address, so that no IPv4 rule can be dodged by writing the
 * address the IPv6 way. Spec: aero-gateway-net-api.md section 5.3.
 * @module
 */
import ipaddr from "ipaddr.js";

/** A compiled IPv4 CIDR. */
export interface Cidr {
  readonly text: string;
  readonly network: number;
  readonly mask: number;
}

/** A compiled IPv6 CIDR: the 128-bit network and mask as bigints. */
export interface Cidr6 {
  readonly text: string;
  readonly network: bigint;
  readonly mask: bigint;
  readonly prefix: number;
}

/** One named special-purpose range, denied unless the operator allows it. */
export interface SpecialRange extends Cidr {
  readonly name: string;
}

/** How an IPv6 range that embeds an IPv4 address carries it (its last 32 bits). */
export type Ipv4Embedding = "IPv4-mapped" | "IPv4-compatible" | "NAT64";

/**
 * One named special-purpose IPv6 range. A range with `embeds` is not denied as a whole: its addresses are
 * judged by the IPv4 address in their last 32 bits.
 */
export interface SpecialRange6 extends Cidr6 {
  readonly name: string;
  readonly embeds?: Ipv4Embedding;
}

/** Parses `a.b.c.d/n` (four-part decimal only); `undefined` for anything else. */
export function parseCidr(text: string): Cidr | undefined {
  const trimmed = text.trim();
  const [address, prefixText, extra] = trimmed.split("/");
  if (address === undefined || extra !== undefined || !ipaddr.IPv4.isValidFourPartDecimal(address)) {
    return undefined;
  }
  const prefix = parsePrefix(prefixText, 32);
  if (prefix === undefined) return undefined;
  const mask = prefix === 0 ? 0 : (0xffff_ffff << (32 - prefix)) >>> 0;
  return { text: trimmed, network: (toU32(ipaddr.IPv4.parse(address).octets) & mask) >>> 0, mask };
}

/**
 * Parses an IPv6 CIDR such as `fc00::/7` (no prefix means `/128`); `undefined` for anything else, including
 * zone ids and an embedded IPv4 part that is not four-part decimal.
 */
export function parseCidr6(text: string): Cidr6 | undefined {
  const trimmed = text.trim();
  const [address, prefixText, extra] = trimmed.split("/");
  if (address === undefined || extra !== undefined) return undefined;
  const bytes = parseIpv6(address);
  const prefix = parsePrefix(prefixText, 128);
  if (bytes === undefined || prefix === undefined) return undefined;
  const mask = prefixMask6(prefix);
  return { text: trimmed, network: toU128(bytes) & mask, mask, prefix };
}

/** An IPv4 or IPv6 CIDR, as the configuration lists them. */
export type AnyCidr = { readonly family: 4; readonly cidr: Cidr } | {
  readonly family: 6;
  readonly cidr: Cidr6;
};

/** Parses an IPv4 CIDR (four-part decimal) or an IPv6 CIDR; `undefined` for anything else. */
export function parseAnyCidr(text: string): AnyCidr | undefined {
  const v4 = parseCidr(text);
  if (v4 !== undefined) return { family: 4, cidr: v4 };
  const v6 = parseCidr6(text);
  return v6 === undefined ? undefined : { family: 6, cidr: v6 };
}

function parsePrefix(text: string | undefined, max: number): number | undefined {
  if (text === undefined) return max;
  if (!(max === 32 ? /^[0-9]{1,2}$/ : /^[0-9]{1,3}$/).test(text)) return undefined;
  const prefix = Number(text);
  return prefix <= max ? prefix : undefined;
}

/**
 * Parses an IPv6 address to 16 bytes, strictly: hexadecimal groups, optionally ending in a four-part decimal
 * IPv4 address; no zone id (`%eth0`), no brackets. `undefined` for anything else.
 *
 * The embedded IPv4 part is rewritten as two hex groups before ipaddr.js sees it, because ipaddr.js reads
 * `::a.b.c.d` as the IPv4-mapped `::ffff:a.b.c.d` (RFC 4291 section 2.5.5.1 says IPv4-compatible) and accepts
 * octal and hex parts in it.
 */
export function parseIpv6(text: string): number[] | undefined {
  if (!text.includes(":") || text.includes("%") || /\s/.test(text)) return undefined;
  let hex = text;
  const lastColon = text.lastIndexOf(":");
  const tail = text.slice(lastColon + 1);
  if (tail.includes(".")) {
    if (!ipaddr.IPv4.isValidFourPartDecimal(tail)) return undefined;
    const [a, b, c, d] = ipaddr.IPv4.parse(tail).octets as [number, number, number, number];
    hex = `${text.slice(0, lastColon + 1)}${((a << 8) | b).toString(16)}:${((c << 8) | d).toString(16)}`;
  }
  if (!ipaddr.IPv6.isValid(hex)) return undefined;
  const address = ipaddr.IPv6.parse(hex);
  return address.zoneId === undefined ? address.toByteArray() : undefined;
}

/** Parses an IP address written as text: four-part decimal IPv4 (4 bytes) or IPv6 (16 bytes). */
export function parseAddress(text: string): number[] | undefined {
  if (ipaddr.IPv4.isValidFourPartDecimal(text)) return ipaddr.IPv4.parse(text).toByteArray();
  return parseIpv6(text);
}

/**
 * Writes an address the way the dialer and the logs want it: dotted IPv4, RFC 5952 IPv6 (an IPv4-mapped
 * address as `::ffff:a.b.c.d`). No brackets.
 */
export function formatAddress(ip: readonly number[]): string {
  if (ip.length === 4) return ip.join(".");
  const address = ipaddr.fromByteArray([...ip]);
  if (address.kind() === "ipv6" && (address as ipaddr.IPv6).isIPv4MappedAddress()) {
    return `::ffff:${ip.slice(12).join(".")}`;
  }
  return address.toString();
}

/** `a.b.c.d:port` or `[v6]:port`. */
function formatDestination(ip: readonly number[], port: number): string {
  return ip.length === 16 ? `[${formatAddress(ip)}]:${port}` : `${formatAddress(ip)}:${port}`;
}

function toU32(bytes: ArrayLike<number>): number {
  return ((bytes[0]! << 24) | (bytes[1]! << 16) | (bytes[2]! << 8) | bytes[3]!) >>> 0;
}

function toU128(bytes: ArrayLike<number>): bigint {
  let value = 0n;
  for (let i = 0; i < 16; i++) value = (value << 8n) | BigInt(bytes[i]!);
  return value;
}

const ALL_ONES_128 = (1n << 128n) - 1n;

function prefixMask6(prefix: number): bigint {
  return prefix === 0 ? 0n : (ALL_ONES_128 >> BigInt(128 - prefix)) << BigInt(128 - prefix);
}

function contains(cidr: Cidr, address: number): boolean {
  return ((address & cidr.mask) >>> 0) === cidr.network;
}

function contains6(cidr: Cidr6, address: bigint): boolean {
  return (address & cidr.mask) === cidr.network;
}

function special(text: string, name: string): SpecialRange {
  const cidr = parseCidr(text);
  if (cidr === undefined) throw new Error(`unreachable: bad built-in CIDR ${text}`);
  return Object.freeze({ ...cidr, name });
}

function special6(text: string, name: string, embeds?: Ipv4Embedding): SpecialRange6 {
  const cidr = parseCidr6(text);
  if (cidr === undefined) throw new Error(`unreachable: bad built-in CIDR ${text}`);
  return Object.freeze(embeds === undefined ? { ...cidr, name } : { ...cidr, name, embeds });
}

/**
 * Every IPv4 range that is not public unicast, denied by default. The first match names the rule, so the
 * broadcast address comes before the reserved block that contains it.
 */
export const SPECIAL_RANGES: readonly SpecialRange[] = Object.freeze([
  special("0.0.0.0/8", "unspecified"),
  special("10.0.0.0/8", "private"),
  special("100.64.0.0/10", "carrier-grade NAT"),
  special("127.0.0.0/8", "loopback"),
  special("169.254.0.0/16", "link-local"),
  special("172.16.0.0/12", "private"),
  special("192.0.0.0/24", "IETF protocol assignments"),
  special("192.0.2.0/24", "documentation"),
  special("192.88.99.0/24", "6to4 relay anycast"),
  special("192.168.0.0/16", "private"),
  special("198.18.0.0/15", "benchmarking"),
  special("198.51.100.0/24", "documentation"),
  special("203.0.113.0/24", "documentation"),
  special("224.0.0.0/4", "multicast"),
  special("255.255.255.255/32", "broadcast"),
  special("240.0.0.0/4", "reserved"),
]);

/**
 * The IANA IPv6 special-purpose ranges, denied by default; the first match decides, so `::` and `::1` come
 * before the IPv4-compatible block that contains them. Ranges with `embeds` are judged by their IPv4 address.
 *
 * 6to4 (`2002::/16`) also carries an IPv4 address (bits 16-47), but it is denied outright: it reaches that host
 * through a 6to4 relay, relays are deprecated (RFC 7526), and no target we should serve needs it.
 * Teredo (`2001::/32`, inside `2001::/23`) carries an obfuscated one and is denied with its block.
 */
export const SPECIAL_RANGES_V6: readonly SpecialRange6[] = Object.freeze([
  special6("::/128", "unspecified"),
  special6("::1/128", "loopback"),
  special6("::ffff:0:0/96", "IPv4-mapped", "IPv4-mapped"),
  special6("::/96", "IPv4-compatible (deprecated)", "IPv4-compatible"),
  special6("64:ff9b::/96", "NAT64 well-known prefix", "NAT64"),
  special6("64:ff9b:1::/48", "local-use IPv4/IPv6 translation"),
  special6("100::/64", "discard-only"),
  special6("100:0:0:1::/64", "dummy prefix"),
  special6("2001::/23", "IETF protocol assignments"),
  special6("2001:db8::/32", "documentation"),
  special6("2002::/16", "6to4"),
  special6("3fff::/20", "documentation"),
  special6("5f00::/16", "segment routing SIDs"),
  special6("fc00::/7", "unique local (private)"),
  special6("fe80::/10", "link-local"),
  special6("fec0::/10", "site-local (deprecated)"),
  special6("ff00::/8", "multicast"),
]);

/** Global unicast space (RFC 4291); every IPv6 address outside it and outside the table is reserved. */
const GLOBAL_UNICAST_V6 = parseCidr6("2000::/3")!;

/** ipaddr.js range names that are ordinary public unicast; anything else it names is special. */
const PUBLIC_RANGE_NAMES = new Set(["unicast", "as112", "amt", "as112v6"]);

/** What the policy says of one destination. `rule` is a stable label for metrics. */
export type Decision =
  | { readonly allowed: true }
  | { readonly allowed: false; readonly rule: string; readonly reason: string };

/** The policy settings, a subset of the relay configuration. */
export interface PolicyOptions {
  readonly allowPrivateIps: boolean;
  /** IPv4 and IPv6 CIDRs. */
  readonly allowCidrs: readonly string[];
  /** IPv4 and IPv6 CIDRs. */
  readonly denyCidrs: readonly string[];
  readonly allowPorts: readonly number[];
  readonly denyPorts: readonly number[];
}

/** A compiled destination policy: `ip` is 4 bytes (IPv4) or 16 bytes (IPv6); any other length is denied. */
export type Policy = (ip: readonly number[], port: number) => Decision;

/** What {@linkcode createPolicy} returns: a {@linkcode Policy} that can also judge a port on its own. */
export interface AddressPolicy extends Policy {
  /** The port rules alone, so that a caller can refuse a port before it resolves a name. */
  readonly judgePort: (port: number) => Decision;
  /** The address rules alone (DNS answers have no port): whether the relay would dial `ip` at all. */
  readonly judgeIp: (ip: readonly number[]) => Decision;
}

interface CompiledCidrs {
  readonly v4: readonly Cidr[];
  readonly v6: readonly Cidr6[];
}

function compile(texts: readonly string[]): CompiledCidrs {
  const v4: Cidr[] = [];
  const v6: Cidr6[] = [];
  for (const text of texts) {
    const parsed = parseAnyCidr(text);
    if (parsed === undefined) throw new RangeError(`Invalid CIDR ${JSON.stringify(text)}`);
    if (parsed.family === 4) v4.push(parsed.cidr);
    else v6.push(parsed.cidr);
  }
  return { v4, v6 };
}

/** The IPv4 address an IPv6 address carries, and how, if it falls in one of the embedding ranges. */
export function embeddedIpv4(ip: readonly number[]): { ipv4: number[]; via: SpecialRange6 } | undefined {
  if (ip.length !== 16) return undefined;
  const address = toU128(ip);
  const range = SPECIAL_RANGES_V6.find((r) => contains6(r, address));
  return range?.embeds === undefined ? undefined : { ipv4: ip.slice(12), via: range };
}

function specialRangeOf4(ip: readonly number[]): string | undefined {
  const address = toU32(ip);
  const match = SPECIAL_RANGES.find((range) => contains(range, address));
  if (match !== undefined) return `${match.name} range ${match.text}`;
  // Belt and braces: if ipaddr.js knows of a special range the table lacks, deny it too.
  const name = ipaddr.fromByteArray([...ip]).range();
  return PUBLIC_RANGE_NAMES.has(name) ? undefined : `${name} range`;
}

/**
 * Names the special range `ip` (4 or 16 bytes) falls in, or `undefined` for public unicast. Fails closed: an
 * address of any other length is special. An IPv6 address that embeds an IPv4 address is special exactly when
 * that IPv4 address is.
 */
export function specialRangeOf(ip: readonly number[]): string | undefined {
  if (ip.length === 4) return specialRangeOf4(ip);
  if (ip.length !== 16) return `invalid address of ${ip.length} bytes`;
  const address = toU128(ip);
  const match = SPECIAL_RANGES_V6.find((range) => contains6(range, address));
  if (match?.embeds !== undefined) {
    const inner = specialRangeOf4(ip.slice(12));
    return inner === undefined ? undefined : `${inner} (as ${match.embeds} ${match.text})`;
  }
  if (match !== undefined) return `${match.name} range ${match.text}`;
  if (!contains6(GLOBAL_UNICAST_V6, address)) return "reserved range (outside global unicast 2000::/3)";
  const name = ipaddr.fromByteArray([...ip]).range();
  return PUBLIC_RANGE_NAMES.has(name) ? undefined : `${name} range`;
}

function isByteArray(ip: readonly number[]): boolean {
  return (ip.length === 4 || ip.length === 16) && ip.every((b) => Number.isInteger(b) && b >= 0 && b <= 255);
}

/**
 * Compiles the policy once; the result judges a destination in a few comparisons, in this order: denied
 * port, port not allowed, address in DENY_CIDRS, address in a special range (unless ALLOW_PRIVATE_IPS or an
 * ALLOW_CIDRS entry covers it). For an IPv6 address that embeds an IPv4 address, the CIDR lists of both
 * families apply: its own IPv6 form and the embedded IPv4 address.
 * @throws {RangeError} for a CIDR that does not parse (the configuration validates them first)
 */
export function createPolicy(options: PolicyOptions): AddressPolicy {
  const allow = compile(options.allowCidrs);
  const deny = compile(options.denyCidrs);
  const deniedPorts = new Set(options.denyPorts);
  const allowedPorts = options.allowPorts.length > 0 ? new Set(options.allowPorts) : undefined;

  const judgePort = (port: number, dst = `port ${port}`): Decision => {
    if (deniedPorts.has(port)) {
      return {
        allowed: false,
        rule: "deny_port",
        reason: `Destination ${dst} denied: port ${port} is in AERO_PROXY_DENY_PORTS`,
      };
    }
    if (allowedPorts !== undefined && !allowedPorts.has(port)) {
      return {
        allowed: false,
        rule: "port_not_allowed",
        reason: `Destination ${dst} denied: port ${port} is not in AERO_PROXY_ALLOW_PORTS`,
      };
    }
    return { allowed: true };
  };

  /** The CIDR of `list` that covers `ip`, looking through an IPv6 address at the IPv4 address it embeds. */
  const covering = (list: CompiledCidrs, ip: readonly number[]): string | undefined => {
    if (ip.length === 4) {
      const address = toU32(ip);
      return list.v4.find((cidr) => contains(cidr, address))?.text;
    }
    const address = toU128(ip);
    const own = list.v6.find((cidr) => contains6(cidr, address))?.text;
    if (own !== undefined) return own;
    const embedded = embeddedIpv4(ip);
    return embedded === undefined ? undefined : covering(list, embedded.ipv4);
  };

  const policy = (ip: readonly number[], port: number): Decision => {
    if (!isByteArray(ip)) {
      return {
        allowed: false,
        rule: "invalid_address",
        reason: `Destination denied: an address must be 4 or 16 bytes, got ${ip.length}`,
      };
    }
    const dst = formatDestination(ip, port);
    const portDecision = judgePort(port, dst);
    if (!portDecision.allowed) return portDecision;
    return judgeIp(ip, dst);
  };

  const judgeIp = (ip: readonly number[], dst = formatAddress(ip)): Decision => {
    if (!isByteArray(ip)) {
      return {
        allowed: false,
        rule: "invalid_address",
        reason: `Destination denied: an address must be 4 or 16 bytes, got ${ip.length}`,
      };
    }
    const denied = covering(deny, ip);
    if (denied !== undefined) {
      return {
        allowed: false,
        rule: "deny_cidr",
        reason: `Destination ${dst} denied: ${denied} is in AERO_PROXY_DENY_CIDRS`,
      };
    }
    const range = specialRangeOf(ip);
    if (range === undefined || options.allowPrivateIps || covering(allow, ip) !== undefined) {
      return { allowed: true };
    }
    return {
      allowed: false,
      rule: "special_range",
      reason: `Destination ${dst} denied: ${range} is not public`,
    };
  };
  return Object.assign(policy, {
    judgePort: (port: number) => judgePort(port),
    judgeIp: (ip: readonly number[]) => judgeIp(ip),
  });
}

/**
 * Judges an address written as text (four-part decimal IPv4 or IPv6, without brackets or zone id).
 * Text that does not parse is denied with rule `invalid_address`.
 * @example
 * ```ts
 * judgeAddress(policy, "2001:db8::1", 443); // denied: documentation range 2001:db8::/32 is not public
 * ```
 */
export function judgeAddress(policy: Policy, text: string, port: number): Decision {
  const ip = parseAddress(text);
  if (ip === undefined) {
    return {
      allowed: false,
      rule: "invalid_address",
      reason: `Destination ${JSON.stringify(text)} denied: not a four-part decimal IPv4 or an IPv6 address`,
    };
  }
  return policy(ip, port);
}
