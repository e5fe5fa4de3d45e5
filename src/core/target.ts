/**
 * The dialer's front half: turns a target as a client wrote it (`host`, `port`) into the addresses the
 * dialer may connect to, or into a refusal. Steps (spec sections 3 and 5.2.1-5.3):
 *
 * 1. parse: a port from 1 to 65535; a host that is a four-part decimal IPv4 address, an IPv6 address (bare or
 *    in brackets, no zone id) or a valid DNS name;
 * 2. port rules, then the host policy (names: allow/deny lists; literals: `ALLOW_IP_LITERALS`), before any
 *    resolution, so a refused name never reaches a resolver;
 * 3. a name is resolved once (A and AAAA), through the injected {@linkcode Resolver}, under a timeout;
 * 4. every address is judged by the address policy; if any is denied, the whole target is denied.
 *
 * Rebinding: the caller must dial exactly the addresses returned here and never resolve the name again. A
 * resolver that answers a public address now and a private one later cannot then move an allowed stream.
 *
 * Order of the addresses returned: IPv4 first, then IPv6, each family in the resolver's order, duplicates
 * removed. Many hosts (containers in particular) have no IPv6 route, so a dialer that tries them in turn
 * does best starting with IPv4. An IPv4-mapped answer (`::ffff:a.b.c.d`) is returned as `a.b.c.d`.
 * @module
 */
import { promises as dns } from "node:dns";
import type { HostPolicy } from "../policy/hosts.ts";
import { validateHostname } from "../policy/hosts.ts";
import type { AddressPolicy } from "../policy/policy.ts";
import { formatAddress, parseAddress } from "../policy/policy.ts";

/** Resolves a host name to IP address texts (A and AAAA), or rejects. Should stop work when `signal` aborts. */
export type Resolver = (name: string, signal: AbortSignal) => Promise<string[]>;

/** A target as a client wrote it. */
export interface Target {
  /** A DNS name, a four-part decimal IPv4 address, or an IPv6 address, bare or in brackets. */
  readonly host: string;
  readonly port: number;
}

/** What {@linkcode resolveTarget} needs. */
export interface ResolveTargetDeps {
  readonly addressPolicy: AddressPolicy;
  readonly hostPolicy: HostPolicy;
  readonly resolve: Resolver;
  /** How long resolution may take (`AERO_PROXY_DNS_TIMEOUT_MS`). */
  readonly timeoutMs: number;
  /** Cancels resolution (e.g. the session closed); the result is then `unresolved`. */
  readonly signal?: AbortSignal;
}

/** Why a target was refused. */
export type TargetFailureKind = "invalid" | "denied" | "unresolved" | "timeout";

/** The outcome of {@linkcode resolveTarget}; a value, never an exception. */
export type TargetResult =
  | {
    readonly ok: true;
    /** The host lower-cased and without brackets or trailing dot (for logs). */
    readonly host: string;
    /** Checked addresses, IPv4 first; dial these, in this order, and nothing else. */
    readonly addresses: readonly string[];
  }
  | {
    readonly ok: false;
    readonly kind: TargetFailureKind;
    /** The policy rule, for `denied` (a stable label for metrics). */
    readonly rule?: string;
    readonly reason: string;
  };

/** A refused target. */
export type TargetFailure = Extract<TargetResult, { readonly ok: false }>;

function failure(kind: TargetFailureKind, reason: string, rule?: string): TargetFailure {
  return rule === undefined ? { ok: false, kind, reason } : { ok: false, kind, rule, reason };
}

function errorText(err: unknown): string {
  return err instanceof Error ? err.message : String(err);
}

/** The host as written, parsed: an IP literal (bytes) or a validated name. */
type ParsedHost =
  | { readonly kind: "ip"; readonly ip: number[]; readonly text: string }
  | { readonly kind: "name"; readonly name: string }
  | { readonly kind: "invalid"; readonly reason: string };

function parseHost(host: string): ParsedHost {
  if (host.startsWith("[") || host.endsWith("]")) {
    const inner = host.startsWith("[") && host.endsWith("]") ? host.slice(1, -1) : "";
    const ip = inner.includes(":") ? parseAddress(inner) : undefined;
    return ip === undefined
      ? {
        kind: "invalid",
        reason: `Invalid host ${JSON.stringify(host)}: brackets must hold an IPv6 address`,
      }
      : { kind: "ip", ip, text: formatAddress(ip) };
  }
  if (host.includes(":")) {
    const ip = parseAddress(host);
    return ip === undefined
      ? {
        kind: "invalid",
        reason: `Invalid host ${JSON.stringify(host)}: not an IPv6 address (zone ids are not accepted)`,
      }
      : { kind: "ip", ip, text: formatAddress(ip) };
  }
  const ip = parseAddress(host);
  if (ip !== undefined) return { kind: "ip", ip, text: formatAddress(ip) };
  const name = validateHostname(host);
  return name.ok ? { kind: "name", name: name.name } : { kind: "invalid", reason: name.reason };
}

/** Dotted IPv4 for an IPv4-mapped address, so that Deno, the sandbox and the logs all see the IPv4 form. */
function unmapped(ip: number[]): number[] {
  const mapped = ip.length === 16 && ip.slice(0, 10).every((b) => b === 0) && ip[10] === 0xff &&
    ip[11] === 0xff;
  return mapped ? ip.slice(12) : ip;
}

function display(host: string, port: number): string {
  return host.includes(":") ? `[${host}]:${port}` : `${host}:${port}`;
}

/**
 * Parses, checks and resolves a target; see the module documentation for the steps and the order of the
 * addresses. Never throws and never resolves a name twice.
 * @param target the host and port as the client wrote them
 * @param deps the policies, the resolver and the timeout
 * @returns `{ ok: true, host, addresses }` or `{ ok: false, kind, rule?, reason }`
 */
export async function resolveTarget(target: Target, deps: ResolveTargetDeps): Promise<TargetResult> {
  const { port } = target;
  if (!Number.isInteger(port) || port < 1 || port > 65535) {
    return failure("invalid", `Invalid port ${JSON.stringify(port)}: expected an integer from 1 to 65535`);
  }
  if (typeof target.host !== "string") return failure("invalid", "Invalid host: expected a string");
  const host = parseHost(target.host);
  if (host.kind === "invalid") return failure("invalid", host.reason);

  const portDecision = deps.addressPolicy.judgePort(port);
  if (!portDecision.allowed) return failure("denied", portDecision.reason, portDecision.rule);

  if (host.kind === "ip") {
    const hostDecision = deps.hostPolicy(host.text, "ip");
    if (!hostDecision.allowed) return failure("denied", hostDecision.reason, hostDecision.rule);
    const ip = unmapped(host.ip);
    const decision = deps.addressPolicy(ip, port);
    if (!decision.allowed) return failure("denied", decision.reason, decision.rule);
    return { ok: true, host: host.text, addresses: [formatAddress(ip)] };
  }

  const name = host.name;
  const hostDecision = deps.hostPolicy(name, "name");
  if (!hostDecision.allowed) return failure("denied", hostDecision.reason, hostDecision.rule);

  const answer = await resolveOnce(name, deps);
  if ("ok" in answer) return answer;

  const v4: string[] = [];
  const v6: string[] = [];
  for (const text of answer.addresses) {
    const parsed = typeof text === "string" ? parseAddress(text) : undefined;
    if (parsed === undefined) {
      // Fail closed: an answer we cannot read could be anything.
      return failure(
        "unresolved",
        `Cannot resolve ${name}: the resolver returned ${JSON.stringify(text)}, which is not an IP address`,
      );
    }
    const ip = unmapped(parsed);
    const decision = deps.addressPolicy(ip, port);
    if (!decision.allowed) {
      return failure(
        "denied",
        `Destination ${display(name, port)} denied: it resolves to ${formatAddress(ip)}. ${decision.reason}`,
        decision.rule,
      );
    }
    const list = ip.length === 4 ? v4 : v6;
    const formatted = formatAddress(ip);
    if (!list.includes(formatted)) list.push(formatted);
  }
  return { ok: true, host: name, addresses: [...v4, ...v6] };
}

/** Calls the resolver once, under the timeout and the caller's signal. */
async function resolveOnce(
  name: string,
  deps: ResolveTargetDeps,
): Promise<{ readonly addresses: readonly unknown[] } | TargetFailure> {
  const controller = new AbortController();
  const { promise: stopped, resolve: stop } = Promise.withResolvers<"timeout" | "cancelled">();
  const timer = setTimeout(() => stop("timeout"), deps.timeoutMs);
  const onAbort = () => stop("cancelled");
  deps.signal?.addEventListener("abort", onAbort, { once: true });
  if (deps.signal?.aborted) onAbort();
  try {
    let pending: Promise<string[]>;
    try {
      pending = deps.resolve(name, controller.signal);
    } catch (err: unknown) {
      pending = Promise.reject(err);
    }
    // A resolver that ignores the signal may settle after we stopped waiting; its outcome is dropped.
    pending.catch(() => {});
    const outcome = await Promise.race([
      pending.then((addresses) => ({ addresses }), (err: unknown) => ({ error: err })),
      stopped,
    ]);
    if (outcome === "timeout" || outcome === "cancelled") {
      controller.abort(
        new DOMException(`Resolving ${name} ${outcome === "timeout" ? "timed out" : "was cancelled"}`),
      );
      return outcome === "timeout"
        ? failure("timeout", `Cannot resolve ${name}: no answer within ${deps.timeoutMs} ms`)
        : failure("unresolved", `Cannot resolve ${name}: cancelled`);
    }
    if ("error" in outcome) {
      return failure("unresolved", `Cannot resolve ${name}: ${errorText(outcome.error)}`);
    }
    if (!Array.isArray(outcome.addresses) || outcome.addresses.length === 0) {
      return failure("unresolved", `Cannot resolve ${name}: no addresses`);
    }
    return { addresses: outcome.addresses };
  } finally {
    clearTimeout(timer);
    deps.signal?.removeEventListener("abort", onAbort);
  }
}

/** Names that are loopback by definition (RFC 6761 section 6.3): answered without asking anyone. */
function isLocalhostName(name: string): boolean {
  return name === "localhost" || name.endsWith(".localhost");
}

/**
 * The system resolver: `getaddrinfo` through `node:dns` `lookup({ all: true, verbatim: true })`, so that
 * `/etc/hosts` and the system's resolver configuration apply. Under Deno it needs net permission for the
 * name being looked up (`--allow-net` or `--allow-net=<name>`); without it the lookup fails with
 * `getaddrinfo EPERM <name>`. `localhost` and `*.localhost` are answered here with `127.0.0.1` and `::1`
 * (RFC 6761 section 6.3), with no lookup and so no permission.
 *
 * `getaddrinfo` cannot be cancelled: on abort this rejects at once and the lookup finishes in the background.
 */
export const systemResolver: Resolver = async (name, signal) => {
  signal.throwIfAborted();
  if (isLocalhostName(name.toLowerCase())) return ["127.0.0.1", "::1"];
  const lookup = dns.lookup(name, { all: true, verbatim: true });
  lookup.catch(() => {});
  const { promise: aborted, reject } = Promise.withResolvers<never>();
  const onAbort = () => reject(signal.reason);
  signal.addEventListener("abort", onAbort, { once: true });
  try {
    const answers = await Promise.race([lookup, aborted]);
    return answers.map((answer) => answer.address);
  } catch (err: unknown) {
    const code = (err as { code?: unknown } | null)?.code;
    if (code === "ENOTFOUND") throw new Error(`no such host ${JSON.stringify(name)}`, { cause: err });
    if (code === "EPERM") {
      throw new Error(`no net permission to resolve ${JSON.stringify(name)} (Deno --allow-net)`, {
        cause: err,
      });
    }
    throw err;
  } finally {
    signal.removeEventListener("abort", onAbort);
  }
};

/**
 * A resolver that lets at most `max` lookups run at once, relay-wide, and fails the rest at once. A lookup
 * counts until the system resolver itself answers, even after its caller stopped waiting (`getaddrinfo`
 * cannot be cancelled and holds one of the runtime's blocking threads), so clients that ask for names whose
 * servers never answer cannot take every thread, nor turn the relay into a free source of DNS queries.
 */
export function limitLookups(resolve: Resolver, max: number): Resolver & { readonly inFlight: number } {
  let inFlight = 0;
  const limited = (name: string, signal: AbortSignal): Promise<string[]> => {
    if (inFlight >= max) {
      return Promise.reject(new Error(`too many name lookups in flight (${max}); try again`));
    }
    inFlight++;
    const lookup = resolve(name, signal);
    void lookup.then(() => inFlight--, () => inFlight--);
    return lookup;
  };
  return Object.defineProperty(limited, "inFlight", { get: () => inFlight }) as Resolver & {
    readonly inFlight: number;
  };
}
