/**
 * Destination policy: which IPv4 addresses and ports a stream may connect to. Compiled once from the
 * configuration; every OPEN is judged by its four address bytes and its port.
 * @module
 */
import ipaddr from "ipaddr.js";

/** A compiled IPv4 CIDR. */
export interface Cidr {
  readonly text: string;
  readonly network: number;
  readonly mask: number;
}

/** One named special-purpose range, denied unless the operator allows it. */
export interface SpecialRange extends Cidr {
  readonly name: string;
}

/** Parses `a.b.c.d/n` (four-part decimal only); `undefined` for anything else. */
export function parseCidr(text: string): Cidr | undefined {
  const trimmed = text.trim();
  const [address, prefixText, extra] = trimmed.split("/");
  if (address === undefined || extra !== undefined || !ipaddr.IPv4.isValidFourPartDecimal(address)) {
    return undefined;
  }
  const prefix = prefixText === undefined ? 32 : /^[0-9]{1,2}$/.test(prefixText) ? Number(prefixText) : -1;
  if (prefix < 0 || prefix > 32) return undefined;
  const mask = prefix === 0 ? 0 : (0xffff_ffff << (32 - prefix)) >>> 0;
  return { text: trimmed, network: (toU32(ipaddr.IPv4.parse(address).octets) & mask) >>> 0, mask };
}

function toU32(bytes: ArrayLike<number>): number {
  return ((bytes[0]! << 24) | (bytes[1]! << 16) | (bytes[2]! << 8) | bytes[3]!) >>> 0;
}

function contains(cidr: Cidr, address: number): boolean {
  return ((address & cidr.mask) >>> 0) === cidr.network;
}

function special(text: string, name: string): SpecialRange {
  const cidr = parseCidr(text);
  if (cidr === undefined) throw new Error(`unreachable: bad built-in CIDR ${text}`);
  return Object.freeze({ ...cidr, name });
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

/** ipaddr.js range names that are ordinary public unicast; anything else it names is special. */
const PUBLIC_RANGE_NAMES = new Set(["unicast", "as112", "amt"]);

/** What the policy says of one destination. `rule` is a stable label for metrics. */
export type Decision =
  | { readonly allowed: true }
  | { readonly allowed: false; readonly rule: string; readonly reason: string };

/** The policy settings, a subset of the relay configuration. */
export interface PolicyOptions {
  readonly allowPrivateIps: boolean;
  readonly allowCidrs: readonly string[];
  readonly denyCidrs: readonly string[];
  readonly allowPorts: readonly number[];
  readonly denyPorts: readonly number[];
}

/** A compiled destination policy. */
export type Policy = (ip: readonly number[], port: number) => Decision;

function compile(texts: readonly string[]): Cidr[] {
  return texts.map((text) => {
    const cidr = parseCidr(text);
    if (cidr === undefined) throw new RangeError(`Invalid CIDR ${JSON.stringify(text)}`);
    return cidr;
  });
}

/** Names the special range `ip` falls in, or `undefined` for public unicast. Fails closed. */
export function specialRangeOf(ip: readonly number[]): string | undefined {
  const address = toU32(ip);
  const match = SPECIAL_RANGES.find((range) => contains(range, address));
  if (match !== undefined) return `${match.name} range ${match.text}`;
  // Belt and braces: if ipaddr.js knows of a special range the table lacks, deny it too.
  const name = ipaddr.fromByteArray([...ip]).range();
  return PUBLIC_RANGE_NAMES.has(name) ? undefined : `${name} range`;
}

/**
 * Compiles the policy once; the result judges a destination in a few comparisons.
 * @throws {RangeError} for a CIDR that does not parse (the configuration validates them first)
 */
export function createPolicy(options: PolicyOptions): Policy {
  const allow = compile(options.allowCidrs);
  const deny = compile(options.denyCidrs);
  const deniedPorts = new Set(options.denyPorts);
  const allowedPorts = options.allowPorts.length > 0 ? new Set(options.allowPorts) : undefined;

  return (ip, port) => {
    const dst = `${ip.join(".")}:${port}`;
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
    const address = toU32(ip);
    const denied = deny.find((cidr) => contains(cidr, address));
    if (denied !== undefined) {
      return {
        allowed: false,
        rule: "deny_cidr",
        reason: `Destination ${dst} denied: ${denied.text} is in AERO_PROXY_DENY_CIDRS`,
      };
    }
    const range = specialRangeOf(ip);
    if (range === undefined || options.allowPrivateIps || allow.some((cidr) => contains(cidr, address))) {
      return { allowed: true };
    }
    return {
      allowed: false,
      rule: "special_range",
      reason: `Destination ${dst} denied: ${range} is not public`,
    };
  };
}
