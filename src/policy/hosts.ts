/**
 * Host policy: which names a target may be written as, judged before any resolution (spec section 5.2.1).
 * Compiled once from `AERO_PROXY_ALLOW_HOSTS`, `AERO_PROXY_DENY_HOSTS` and `AERO_PROXY_ALLOW_IP_LITERALS`.
 * The addresses a name resolves to are judged afterwards by the address policy (`policy.ts`).
 * @module
 */
import type { Decision } from "./policy.ts";

/** Longest host name, without a trailing dot (RFC 1035 section 2.3.4). */
export const MAX_HOSTNAME_LENGTH = 253;
/** Longest label (RFC 1035 section 2.3.4). */
export const MAX_LABEL_LENGTH = 63;

const LABEL = /^[a-z0-9]([a-z0-9-]*[a-z0-9])?$/;
/**
 * A last label that is all digits, or `0x` and hex digits, makes the WHATWG URL parser and `inet_aton` read the
 * whole name as an IPv4 address (`127.1`, `0x7f.1`, `2130706433`): such text is neither a name nor a plain
 * four-part decimal address, so it is refused rather than guessed at.
 */
const NUMERIC_LABEL = /^(0x[0-9a-f]*|[0-9]+)$/;

/** The outcome of {@linkcode validateHostname}: the lower-cased name without a trailing dot, or why not. */
export type HostnameResult = { readonly ok: true; readonly name: string } | {
  readonly ok: false;
  readonly reason: string;
};

/**
 * Validates a DNS host name: at most 253 characters, labels of 1 to 63 letters, digits and inner hyphens,
 * the last label not numeric. Returns it lower-cased. One trailing dot (the absolute form `example.com.`) is
 * removed, so that it cannot slip past a list entry written without it; an empty name, a lone dot, a leading
 * dot and empty labels (`a..b`, `a.b..`) are refused. Non-ASCII names must be written in punycode (`xn--`).
 */
export function validateHostname(text: string): HostnameResult {
  const quoted = JSON.stringify(text);
  const bad = (why: string): HostnameResult => ({ ok: false, reason: `Invalid host name ${quoted}: ${why}` });
  if (text === "") return bad("it is empty");
  if (/[^\x21-\x7e]/.test(text)) {
    return bad("only ASCII letters, digits, hyphens and dots are allowed (use punycode)");
  }
  const name = (text.endsWith(".") ? text.slice(0, -1) : text).toLowerCase();
  if (name === "") return bad("it has no labels");
  if (name.length > MAX_HOSTNAME_LENGTH) return bad(`it is longer than ${MAX_HOSTNAME_LENGTH} characters`);
  const labels = name.split(".");
  for (const label of labels) {
    if (label === "") return bad("it has an empty label");
    if (label.length > MAX_LABEL_LENGTH) return bad(`a label is longer than ${MAX_LABEL_LENGTH} characters`);
    if (!LABEL.test(label)) {
      return bad("labels are letters, digits and hyphens, with no hyphen at either end");
    }
  }
  if (NUMERIC_LABEL.test(labels[labels.length - 1]!)) {
    return bad("its last label is a number, so it would be read as an IPv4 address; write a.b.c.d");
  }
  return { ok: true, name };
}

/** A compiled host list entry: an exact name, or `*.domain` (any name below `domain`, not `domain` itself). */
export interface HostPattern {
  readonly text: string;
  readonly exact?: string;
  /** For `*.example.com`: `.example.com`. */
  readonly suffix?: string;
}

/**
 * Parses one list entry: an exact host name or `*.` followed by one. `undefined` for anything else (`*`,
 * `*example.com`, `a.*.com`, an IP address).
 */
export function parseHostPattern(text: string): HostPattern | undefined {
  const trimmed = text.trim();
  const wildcard = trimmed.startsWith("*.");
  const result = validateHostname(wildcard ? trimmed.slice(2) : trimmed);
  if (!result.ok) return undefined;
  return wildcard ? { text: trimmed, suffix: `.${result.name}` } : { text: trimmed, exact: result.name };
}

/** Whether a validated, lower-cased `name` matches `pattern`. */
export function matchesHostPattern(pattern: HostPattern, name: string): boolean {
  return pattern.exact !== undefined ? name === pattern.exact : name.endsWith(pattern.suffix!);
}

/** The host policy settings, a subset of the relay configuration. */
export interface HostPolicyOptions {
  /** Exact names and `*.domain` patterns; empty means any name. */
  readonly allowHosts: readonly string[];
  /** Exact names and `*.domain` patterns; always denied. */
  readonly denyHosts: readonly string[];
  /** Whether a target may be written as an IP address at all. */
  readonly allowIpLiterals: boolean;
}

/**
 * A compiled host policy. `kind: "name"` takes a name already through {@linkcode validateHostname};
 * `kind: "ip"` takes the text of an IP literal (only for the message).
 */
export type HostPolicy = (host: string, kind: "name" | "ip") => Decision;

function compile(texts: readonly string[]): HostPattern[] {
  return texts.map((text) => {
    const pattern = parseHostPattern(text);
    if (pattern === undefined) throw new RangeError(`Invalid host pattern ${JSON.stringify(text)}`);
    return pattern;
  });
}

/**
 * Compiles the host policy once. For a name: a `DENY_HOSTS` match is denied (deny wins), then a set
 * `ALLOW_HOSTS` that does not match is denied. For an IP literal: denied when `ALLOW_IP_LITERALS` is off, and
 * also when `ALLOW_HOSTS` is set (an allow list means only those names; an address would bypass it).
 * @throws {RangeError} for a pattern that does not parse (the configuration validates them first)
 */
export function createHostPolicy(options: HostPolicyOptions): HostPolicy {
  const deny = compile(options.denyHosts);
  const allow = options.allowHosts.length > 0 ? compile(options.allowHosts) : undefined;
  return (host, kind) => {
    if (kind === "ip") {
      if (!options.allowIpLiterals) {
        return {
          allowed: false,
          rule: "ip_literal",
          reason: `Destination ${host} denied: AERO_PROXY_ALLOW_IP_LITERALS=0 requires a host name`,
        };
      }
      if (allow !== undefined) {
        return {
          allowed: false,
          rule: "host_not_allowed",
          reason: `Destination ${host} denied: AERO_PROXY_ALLOW_HOSTS is set, so only the names it lists`,
        };
      }
      return { allowed: true };
    }
    const denied = deny.find((pattern) => matchesHostPattern(pattern, host));
    if (denied !== undefined) {
      return {
        allowed: false,
        rule: "deny_host",
        reason: `Destination ${host} denied: it matches ${
          JSON.stringify(denied.text)
        } in AERO_PROXY_DENY_HOSTS`,
      };
    }
    if (allow !== undefined && !allow.some((pattern) => matchesHostPattern(pattern, host))) {
      return {
        allowed: false,
        rule: "host_not_allowed",
        reason: `Destination ${host} denied: it is not in AERO_PROXY_ALLOW_HOSTS`,
      };
    }
    return { allowed: true };
  };
}
