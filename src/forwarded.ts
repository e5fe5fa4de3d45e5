/**
 * The client address a trusted reverse proxy reports in `X-Forwarded-For`. Pure: header text in, address out.
 *
 * Only the last entry counts: it is the one the nearest proxy (the operator's own) appended, while earlier
 * entries come from the client and prove nothing. It must be a plain IP literal; anything else is reported
 * as invalid, and the caller falls back to the TCP peer.
 * @module
 */
import ipaddr from "ipaddr.js";

/** What `X-Forwarded-For` says of the client: its canonical IP, or the entry that is not one. */
export type ForwardedClientIp =
  | { readonly ip: string }
  /** The offending last entry, trimmed and cut to {@linkcode MAX_INVALID_LENGTH} characters (for a log line). */
  | { readonly invalid: string };

/** How much of an invalid entry {@linkcode forwardedClientIp} hands back. */
export const MAX_INVALID_LENGTH = 64;

/** Characters an IPv6 literal may hold (no zone index: `%` is refused). */
const IPV6_CHARS = /^[0-9a-f:.]+$/i;
/** Optional whitespace around a header list element (RFC 9110 OWS): spaces and tabs only. */
const OWS = /^[ \t]+|[ \t]+$/g;

/**
 * Parses a plain IP literal: dotted-decimal IPv4 (`192.0.2.1`, no octal, hex or short forms) or IPv6,
 * optionally in brackets (`[2001:db8::1]`), without a port or zone index.
 *
 * @returns the canonical text (IPv4 dotted decimal; IPv6 as RFC 5952, an IPv4-mapped IPv6 address as its
 * IPv4 address), or `undefined` if `text` is anything else
 */
export function parseIpLiteral(text: string): string | undefined {
  if (ipaddr.IPv4.isValidFourPartDecimal(text)) return ipaddr.IPv4.parse(text).toString();
  const inner = text.startsWith("[") && text.endsWith("]") ? text.slice(1, -1) : text;
  if (!IPV6_CHARS.test(inner) || !inner.includes(":")) return undefined;
  // An embedded IPv4 tail (`::ffff:192.0.2.1`) must be dotted decimal too: ipaddr.js reads `010` as 10.
  const tail = inner.slice(inner.lastIndexOf(":") + 1);
  if (tail.includes(".") && !ipaddr.IPv4.isValidFourPartDecimal(tail)) return undefined;
  if (!ipaddr.IPv6.isValid(inner)) return undefined;
  const address = ipaddr.IPv6.parse(inner);
  return address.isIPv4MappedAddress() ? address.toIPv4Address().toString() : address.toString();
}

/**
 * The client IP from an `X-Forwarded-For` header value (several headers arrive joined with commas).
 *
 * @param header the header value, or `null` when the request has none
 * @returns `undefined` without a header; `{ ip }` when the last entry is an IP literal; `{ invalid }` otherwise
 * (an empty header or entry, a host name, `ip:port`, text with control characters, ...)
 */
export function forwardedClientIp(header: string | null): ForwardedClientIp | undefined {
  if (header === null) return undefined;
  const entry = header.slice(header.lastIndexOf(",") + 1).replace(OWS, "");
  const ip = parseIpLiteral(entry);
  return ip === undefined ? { invalid: entry.slice(0, MAX_INVALID_LENGTH) } : { ip };
}
