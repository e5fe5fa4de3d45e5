/**
 * The HTTP side: routes requests, checks the token, upgrades `GET /tcp-mux` to a WebSocket session.
 * @module
 */
import { getLogger } from "@logtape/logtape";
import { offeredSubprotocols, tokenFromRequest, tokenId, TokenSet } from "./auth.ts";
import { QueueBudget, type SocketBudget, socketBudget } from "./budget.ts";
import { autoMaxSockets, type Config } from "./config.ts";
import { demoResponse, isDemoPath } from "./demo/mod.ts";
import { forwardedClientIp } from "./forwarded.ts";
import { Metrics } from "./metrics.ts";
import { TokenLimits } from "./core/quota.ts";
import { type SharedLease, SharedLimits } from "./core/shared_limits.ts";
import { createHostPolicy } from "./policy/hosts.ts";
import { createPolicy } from "./policy/policy.ts";
import {
  limitLookups,
  type Resolver,
  resolveTarget,
  systemResolver,
  type Target,
  type TargetResult,
} from "./core/target.ts";
import { AERO_MUX_SUBPROTOCOL, MUX_PATH, MUX_SUBPROTOCOL, TOKEN_SUBPROTOCOL_PREFIX } from "./protocol/mod.ts";
import { CLOSE_GOING_AWAY, CLOSE_POLICY_VIOLATION, Session, type Wire } from "./core/session.ts";
import type { Dial } from "./core/stream.ts";
import {
  checkUpgrade,
  type ConnInfo,
  HandshakeError,
  listen,
  upgradeWebSocket,
} from "./transport/listener.ts";
import { AeroMuxWire } from "./wire/aero_mux_v1.ts";
import { MUX_CREDIT_SUBPROTOCOL } from "./wire/aero_mux_v1_codec.ts";
import { SeedWire } from "./wire/seed_v1.ts";
import { parseWispRequest, WISP_PATH, WispWire } from "./wire/wisp.ts";
import { AeroUdpWire, UDP_PATH, UDP_TARGET_ID } from "./wire/aero_udp.ts";
import { Doh, DOH_JSON_PATH, DOH_PATH, jsonResponse } from "./doh/doh.ts";
import { AeroTcpWire, parseTcpTarget, TCP_PATH, TCP_STREAM_ID } from "./wire/aero_tcp.ts";

const logger = getLogger(["aero-net-proxy", "server"]);

/**
 * How long a closing WebSocket waits for the client's close frame (and for its unsent data to drain) before
 * the connection is dropped; also how long a shutdown waits for the close frames to reach clients.
 */
const CLOSE_HANDSHAKE_MS = 2000;
/** Name lookups that may run at once across the relay (each holds a blocking thread until it answers). */
const MAX_LOOKUPS = 128;
/**
 * Sessions that are open but not yet authenticated (multiplexed `/udp` waiting for its auth message, Wisp v2
 * waiting for its password), in total and per client IP: a client without a token can hold no more than this
 * (each for at most the header deadline), so it cannot fill the relay's session slots.
 */
const MAX_UNAUTHENTICATED = 256;
const MAX_UNAUTHENTICATED_PER_IP = 8;
/** Socket budget when the open-file limit is unknown (and in tests that start relays in-process). */
const FALLBACK_MAX_SOCKETS = 4096;

/** Optional collaborators; production uses the defaults. */
export interface RelayDeps {
  readonly metrics?: Metrics;
  readonly dial?: Dial;
  /** Resolves target names; default: the system resolver (tests use a seam to make names say anything). */
  readonly resolve?: Resolver;
  /** The socket budget; default: `config.maxSockets`, or a fixed fallback when that is auto. */
  readonly sockets?: SocketBudget;
  /** A worker's view of its supervisor (AERO_PROXY_WORKERS > 1); default: this process is the whole relay. */
  readonly fleet?: Fleet;
}

/** What a worker asks its supervisor for: the readiness and the metrics of every worker on the host. */
export interface Fleet {
  /** Whether the supervisor reports every worker ready. */
  ready(): boolean;
  /** The Prometheus exposition aggregated over every live worker; rejects when the supervisor does not answer. */
  exposition(): Promise<string>;
}

/**
 * The socket budget `config` asks for: its number, or (auto) one derived from the process's open-file limit
 * (see `openFileLimit` in budget.ts), or a fixed fallback where that limit is unknown.
 */
export function socketLimitFor(config: Config, openFileLimit: number | undefined): number {
  if (config.maxSockets !== undefined) return config.maxSockets;
  return openFileLimit === undefined ? FALLBACK_MAX_SOCKETS : autoMaxSockets(openFileLimit);
}

function text(status: number, body: string, headers: Record<string, string> = {}): Response {
  return new Response(`${body}\n`, {
    status,
    headers: { "content-type": "text/plain; charset=utf-8", ...headers },
  });
}

/** Adds `delta` to a per-key count, dropping keys that reach 0. */
function bumpCount(map: Map<string, number>, key: string, delta: number): void {
  const next = (map.get(key) ?? 0) + delta;
  if (next > 0) map.set(key, next);
  else map.delete(key);
}

/** Per-session settings of `#startSession`. */
interface SessionOptions {
  readonly maxDatagramBytes?: number;
  /** The token given with the upgrade (undefined for sessions that authenticate in band). */
  readonly token?: string | undefined;
  /** Gives back a place among sessions still to authenticate (called whenever no session starts, and at the end). */
  readonly held?: (() => void) | undefined;
  /** Filled with a function that binds the token a session authenticates with in band to its limits. */
  readonly inBand?: { bind?: (token: string) => boolean } | undefined;
}

/** The token whose limits a session counts against (a token id, see `tokenId`), once known. */
interface TokenBinding {
  token: string | undefined;
}

/** The close reason of a session whose token has spent its byte quota for the period. */
const QUOTA_EXHAUSTED = "byte quota of this token exhausted for this period";

/** Turns `info.remoteAddr` into a printable client IP. */
function peerIpOf(info: ConnInfo): string {
  return typeof info.remoteAddr.hostname === "string" ? info.remoteAddr.hostname : "unknown";
}

/**
 * Lets through at most `perSecond` events a second and counts the rest, so that a flood of rejected requests
 * cannot flood the log. The count of suppressed events is reported with the next event let through.
 */
class LogLimiter {
  readonly #perSecond: number;
  #windowStart = 0;
  #inWindow = 0;
  #suppressed = 0;
  constructor(perSecond: number) {
    this.#perSecond = perSecond;
  }
  /** Returns the number of events suppressed since the last one let through, or -1 to suppress this one. */
  take(now: number): number {
    if (now - this.#windowStart >= 1000) {
      this.#windowStart = now;
      this.#inWindow = 0;
    }
    if (this.#inWindow >= this.#perSecond) {
      this.#suppressed++;
      return -1;
    }
    this.#inWindow++;
    const suppressed = this.#suppressed;
    this.#suppressed = 0;
    return suppressed;
  }
}

/** A relay without a listener: a request handler plus the sessions it owns. */
export class Relay {
  readonly config: Config;
  readonly metrics: Metrics;
  readonly #tokens: TokenSet;
  readonly #policy;
  readonly #dial: Dial;
  /** Name lookups, capped relay-wide. */
  readonly #lookups: ReturnType<typeof limitLookups>;
  readonly #resolveTarget: (target: Target, signal: AbortSignal) => Promise<TargetResult>;
  readonly #sessions = new Set<Session>();
  readonly #sessionsPerIp = new Map<string, number>();
  /** Sockets of sessions the relay has ended whose close handshake is still pending, per IP and in total. */
  readonly #closingPerIp = new Map<string, number>();
  #closingTotal = 0;
  /** Settles when a session's WebSocket has finished closing (the close handshake, or the peer going away). */
  readonly #socketsClosed = new Map<Session, Promise<void>>();
  readonly #allowAnyOrigin: boolean;
  readonly #origins: ReadonlySet<string>;
  readonly #rejectionLog = new LogLimiter(10);
  readonly #sockets: SocketBudget;
  readonly #queue: QueueBudget;
  /** Bytes of WebSocket messages still arriving, across all sessions (a budget of its own, the same size). */
  readonly #assembly: QueueBudget;
  #draining = false;
  readonly #doh: Doh;
  #unauthenticated = 0;
  readonly #unauthenticatedPerIp = new Map<string, number>();
  /** Per-token sessions, OPEN rate and bytes counted in this process (the floor under the shared limits). */
  readonly #tokenLimits: TokenLimits;
  /** Limits counted with the other relays through Redis, when configured. */
  readonly #shared: SharedLimits | undefined;
  /** Sessions past the local caps whose upgrade waits for Redis's answer. */
  #starting = 0;
  /** Live sessions by token id, for ending a token's sessions when its byte quota runs out. */
  readonly #sessionsByToken = new Map<string, Set<Session>>();
  readonly #fleet: Fleet | undefined;

  constructor(config: Config, deps: RelayDeps = {}) {
    this.config = config;
    this.#fleet = deps.fleet;
    this.metrics = deps.metrics ?? new Metrics();
    this.#tokens = new TokenSet(config.authTokens);
    this.#tokenLimits = new TokenLimits(config);
    this.#shared = config.redisUrl === "" ? undefined : new SharedLimits(config, {
      onError: (operation) => Metrics.bump(this.metrics.redisErrors, operation),
      onHealth: (up) => this.metrics.redisUp = up ? 1 : 0,
      onExhausted: (token) => {
        this.#tokenLimits.markExhausted(token);
        this.#quotaExhausted(token);
      },
    });
    if (this.#shared !== undefined) this.metrics.redisUp = this.#shared.up ? 1 : 0;
    this.#policy = createPolicy(config);
    this.#lookups = limitLookups(deps.resolve ?? systemResolver, MAX_LOOKUPS);
    const hostPolicy = createHostPolicy(config);
    const targetDeps = {
      addressPolicy: this.#policy,
      hostPolicy,
      resolve: this.#lookups,
      timeoutMs: config.dnsTimeoutMs,
    };
    this.#resolveTarget = (target, signal) => resolveTarget(target, { ...targetDeps, signal });
    this.#dial = deps.dial ?? ((options) => Deno.connect({ ...options, transport: "tcp" }));
    this.#allowAnyOrigin = config.allowedOrigins.includes("*");
    this.#origins = new Set(config.allowedOrigins);
    this.#sockets = deps.sockets ?? socketBudget(socketLimitFor(config, undefined));
    this.#queue = new QueueBudget(config.totalQueueBytes);
    this.#assembly = new QueueBudget(config.totalQueueBytes);
    // DoH resolves through the same capped lookups as stream targets: no client can hold more of the
    // resolver's threads through DoH than through OPENs.
    const lookups = this.#lookups;
    this.#doh = new Doh({
      policy: this.#policy,
      hostPolicy,
      resolve: (name, _family, signal) => lookups(name, signal),
      timeoutMs: config.dnsTimeoutMs,
      ttlSeconds: config.dohTtlSeconds,
      queriesPerSec: config.dohQueriesPerSec,
      onQuery: (outcome) => Metrics.bump(this.metrics.dohQueries, outcome),
      onFiltered: (count) => this.metrics.dohAddressesFiltered += count,
    });
  }

  /** The budget of sockets shared by client and target connections. */
  get sockets(): SocketBudget {
    return this.#sockets;
  }

  /** Client bytes queued towards targets, across all sessions. */
  get queue(): QueueBudget {
    return this.#queue;
  }

  /** Name lookups running now (each holds a blocking thread until the resolver answers). */
  get lookupsInFlight(): number {
    return this.#lookups.inFlight;
  }

  /** Bytes of WebSocket messages still arriving, across all sessions. */
  get assembly(): QueueBudget {
    return this.#assembly;
  }

  /**
   * The client's IP: the TCP peer, or with `trustProxy` the last `X-Forwarded-For` entry when it is an IP
   * address (anything else is ignored and counted).
   */
  #clientIp(request: Request, info: ConnInfo, count = false): string {
    if (this.config.trustProxy) {
      const forwarded = forwardedClientIp(request.headers.get("x-forwarded-for"));
      if (forwarded !== undefined && "ip" in forwarded) return forwarded.ip;
      if (forwarded !== undefined && count) {
        this.metrics.forwardedInvalid++;
        const suppressed = this.#rejectionLog.take(performance.now());
        if (suppressed >= 0) {
          logger.warn("forwarded_invalid", {
            event: "forwarded_invalid",
            clientIp: peerIpOf(info),
            reason: `X-Forwarded-For ends in ${JSON.stringify(forwarded.invalid)}, not an IP address`,
          });
        }
      }
    }
    return peerIpOf(info);
  }

  /** Live sessions. */
  get sessions(): ReadonlySet<Session> {
    return this.#sessions;
  }

  /**
   * The `Deno.serve` handler. Every refusal is a plain response decided from the request line and headers,
   * before any WebSocket or session state exists.
   */
  handler = (request: Request, info: ConnInfo): Response | Promise<Response> => {
    if (request.url.length > this.config.maxUrlLength) {
      return this.#refuse(request, info, 414, "url_too_long");
    }
    const url = new URL(request.url);
    // --demo only: the browser demo page (src/demo/). Off by default.
    if (this.config.demo && isDemoPath(url.pathname)) return demoResponse(request, url);
    if (url.pathname.startsWith(WISP_PATH)) return this.#wispUpgrade(request, info, url);
    if (url.pathname === UDP_PATH) return this.#udpUpgrade(request, info, url);
    if (url.pathname === DOH_PATH || url.pathname === DOH_JSON_PATH) {
      return this.#dohRequest(request, info, url);
    }
    if (url.pathname !== MUX_PATH && url.pathname !== TCP_PATH) {
      if (url.pathname === "/metrics") {
        const bearer = /^Bearer[ ]+(\S+)\s*$/i.exec(request.headers.get("authorization") ?? "")?.[1];
        if (bearer === undefined) return this.#authFailed(request, info, 401, "missing (metrics)");
        if (!this.#tokens.matches(bearer)) return this.#authFailed(request, info, 403, "invalid (metrics)");
      }
      return this.operationsHandler(request);
    }
    const refused = this.#upgradeRefusal(request, info);
    if (refused !== undefined) return refused;
    const token = tokenFromRequest(url, request.headers);
    if (token === undefined) return this.#authFailed(request, info, 401, "missing");
    if (!this.#tokens.matches(token)) return this.#authFailed(request, info, 403, "invalid");

    if (request.headers.get("upgrade")?.toLowerCase() !== "websocket") {
      return text(426, "Upgrade Required: this endpoint speaks WebSocket", { upgrade: "websocket" });
    }
    const offered = offeredSubprotocols(request.headers);
    const tokenInProtocol = offered.some((p) => p.startsWith(TOKEN_SUBPROTOCOL_PREFIX));
    // Which framing: the seed's subprotocol (or none at all) is the seed framing; aero-tcp-mux-v1 is Aero's.
    let framing: "seed" | "aero" | "aero-credit" = "seed";
    let protocol: string | undefined;
    if (offered.includes(MUX_SUBPROTOCOL)) {
      protocol = MUX_SUBPROTOCOL;
    } else if (offered.includes(MUX_CREDIT_SUBPROTOCOL) && !tokenInProtocol) {
      // The credit extension wins over plain aero-tcp-mux-v1 when a client offers both.
      framing = "aero-credit";
      protocol = MUX_CREDIT_SUBPROTOCOL;
    } else if (offered.includes(AERO_MUX_SUBPROTOCOL) && !tokenInProtocol) {
      framing = "aero";
      protocol = AERO_MUX_SUBPROTOCOL;
    } else if (tokenInProtocol) {
      // The relay never echoes the secret entry, and a browser fails a handshake that selects nothing it offered.
      // Clients before 0.2 paired the token with aero-tcp-mux-v1 while speaking the seed framing; that name now
      // means Aero's framing, so they are told to upgrade rather than be answered in the wrong protocol.
      return text(400, `Bad Request: offer the "${MUX_SUBPROTOCOL}" subprotocol beside the token`);
    }

    if (url.pathname === TCP_PATH) {
      if (protocol !== undefined && protocol !== MUX_SUBPROTOCOL) protocol = undefined;
      return this.#tcpUpgrade(request, info, url, protocol, token);
    }
    return this.#startSession(
      request,
      info,
      framing === "seed" ? "seed" : framing === "aero" ? "aero-tcp-mux-v1" : "aero-tcp-mux-v1-credit",
      protocol,
      (session) =>
        framing === "seed" ? new SeedWire(session) : new AeroMuxWire(
          session,
          this.config.maxFrameBytes,
          this.config.messageTimeoutMs,
          framing === "aero-credit" ? this.config.creditWindowBytes : undefined,
        ),
      undefined,
      { token },
    );
  };

  /**
   * `/wisp/`: Wisp v2 when the upgrade offers any subprotocol (the first one offered is echoed, as browsers and
   * the `ws` library require), v1 otherwise. The token comes from `Authorization: Bearer`, the path
   * (`/wisp/<token>/`) or the query; with `wispPasswordAuth`, a v2 upgrade without one may authenticate with the
   * token as the password extension's password instead.
   */
  #wispUpgrade(request: Request, info: ConnInfo, url: URL): Response | Promise<Response> {
    const parsed = parseWispRequest(url);
    if (parsed.kind === "not_found") return text(404, "Not Found");
    if (parsed.kind === "wsproxy") {
      return text(
        400,
        "Bad Request: the wsproxy form (/wisp/host:port) is not served; Wisp clients connect to /wisp/ " +
          "(with the trailing slash)",
      );
    }
    const refused = this.#upgradeRefusal(request, info);
    if (refused !== undefined) return refused;
    const offered = offeredSubprotocols(request.headers);
    const echoed = offered.find((p) => !p.startsWith(TOKEN_SUBPROTOCOL_PREFIX));
    if (offered.length > 0 && echoed === undefined) {
      // The relay never echoes the token entry, and a 101 that selects none of the offered subprotocols fails
      // in browsers; nor may a client that offers only that entry be taken for v1 (any subprotocol means v2).
      return text(
        400,
        "Bad Request: offer a Wisp subprotocol such as wisp-v2 beside the token, or put the token in the URL",
      );
    }
    const v2 = request.headers.has("sec-websocket-protocol");
    const fromHeaders = tokenFromRequest(new URL("http://relay/"), request.headers);
    const candidates = fromHeaders === undefined ? parsed.tokens : [fromHeaders, ...parsed.tokens];
    const tokens = this.#tokens;
    let password: { required: boolean; check(password: string): boolean; settled?(): void } | undefined;
    let token: string | undefined;
    let held: (() => void) | undefined;
    const inBand: { bind?: (token: string) => boolean } = {};
    if (candidates.length > 0) {
      // Every candidate is checked (digests, constant time each), so which one matched does not leak by timing.
      for (const candidate of candidates) {
        if (tokens.matches(candidate)) token ??= candidate;
      }
      if (token === undefined) return this.#authFailed(request, info, 403, "invalid");
    } else if (v2 && this.config.wispPasswordAuth) {
      const release = this.#holdUnauthenticated(request, info);
      if (release instanceof Response) return release;
      held = release;
      password = {
        required: true,
        check: (candidate) => tokens.matches(candidate) && (inBand.bind?.(candidate) ?? true),
        settled: release,
      };
    } else {
      return this.#authFailed(request, info, 401, "missing");
    }
    if (request.headers.get("upgrade")?.toLowerCase() !== "websocket") {
      held?.();
      return text(426, "Upgrade Required: this endpoint speaks WebSocket", { upgrade: "websocket" });
    }
    let wire: WispWire | undefined;
    const config = this.config;
    return this.#startSession(
      request,
      info,
      v2 ? "wisp-v2" : "wisp-v1",
      v2 ? echoed : undefined,
      (session) =>
        wire = new WispWire(session, {
          version: v2 ? 2 : 1,
          bufferPackets: config.wispBufferPackets,
          motd: config.wispMotd,
          udp: config.allowUdp,
          handshakeTimeoutMs: config.headerTimeoutMs,
          ...(password === undefined ? {} : { password }),
        }),
      () => wire?.start(),
      { token, held, inBand },
    );
  }

  /**
   * A place among the sessions still to authenticate, for a client without a token: a function that gives it
   * back (once; call it when the session authenticates or ends), or the refusal when the pool is full.
   */
  #holdUnauthenticated(request: Request, info: ConnInfo): (() => void) | Response {
    const ip = this.#clientIp(request, info);
    if (this.#unauthenticated >= MAX_UNAUTHENTICATED) {
      return this.#refuse(request, info, 503, "unauthenticated_total", { "retry-after": "5" });
    }
    if ((this.#unauthenticatedPerIp.get(ip) ?? 0) >= MAX_UNAUTHENTICATED_PER_IP) {
      return this.#refuse(request, info, 429, "unauthenticated_per_ip", { "retry-after": "5" });
    }
    this.#unauthenticated++;
    bumpCount(this.#unauthenticatedPerIp, ip, 1);
    let held = true;
    return () => {
      if (!held) return;
      held = false;
      this.#unauthenticated--;
      bumpCount(this.#unauthenticatedPerIp, ip, -1);
    };
  }

  /** The checks every WebSocket endpoint makes first, from the request line and headers: method, drain, Origin. */
  #upgradeRefusal(request: Request, info: ConnInfo): Response | undefined {
    if (request.method !== "GET") return text(405, "Method Not Allowed", { allow: "GET" });
    if (this.#draining) {
      return text(503, "Service Unavailable: the relay is shutting down", { "retry-after": "5" });
    }
    const origin = request.headers.get("origin");
    if (origin !== null && !this.#allowAnyOrigin && !this.#origins.has(origin)) {
      return this.#refuse(request, info, 403, "origin_not_allowed");
    }
    return undefined;
  }

  /**
   * `/tcp`: the target comes from the URL (`target=host:port` wins over `host` and `port`) and is resolved and
   * checked before the upgrade, so that a refusal is an HTTP status (400 bad target, 403 policy, 502 a name
   * that does not resolve); then one stream to the checked address, raw bytes both ways.
   */
  async #tcpUpgrade(
    request: Request,
    info: ConnInfo,
    url: URL,
    protocol: string | undefined,
    token: string,
  ): Promise<Response> {
    const checked = await this.#urlTarget(request, info, url.searchParams);
    if (checked instanceof Response) return checked;
    const { target, address } = checked;
    return this.#startSession(
      request,
      info,
      "tcp",
      protocol,
      (session) => new AeroTcpWire(session),
      (session) => session.openChecked(TCP_STREAM_ID, address, target.port),
      { token },
    );
  }

  /**
   * A target named in the URL (`/tcp`, `/udp?host=`), checked before the upgrade with everything cheap first
   * (a request that could not become a session never costs a name lookup): the target and the address to
   * dial, or the refusal as an HTTP status.
   */
  async #urlTarget(
    request: Request,
    info: ConnInfo,
    params: URLSearchParams,
  ): Promise<{ target: Target; address: string } | Response> {
    const target = parseTcpTarget(params);
    if ("error" in target) return text(400, `Bad Request: ${target.error}`);
    const refused = this.#capsRefusal(request, info);
    if (refused !== undefined) return refused;
    try {
      checkUpgrade(request);
    } catch (err: unknown) {
      if (!(err instanceof HandshakeError)) throw err;
      return text(err.status, err.message, { ...err.headers });
    }
    const address = await this.#checkTarget(target);
    return address instanceof Response ? address : { target, address };
  }

  /**
   * Resolves and checks a target named in a URL before the upgrade: the address to use, or the refusal as an
   * HTTP status (403 policy, 400 invalid, 502 a name that does not resolve).
   */
  async #checkTarget(target: Target): Promise<string | Response> {
    const checked = await this.#resolveTarget(target, AbortSignal.timeout(this.config.dnsTimeoutMs + 1000));
    if (checked.ok) return checked.addresses[0]!;
    if (checked.kind === "denied") {
      Metrics.bump(this.metrics.policyDenied, checked.rule ?? "denied");
      return text(403, `Forbidden: ${checked.reason}`);
    }
    if (checked.kind === "invalid") return text(400, `Bad Request: ${checked.reason}`);
    return text(502, `Bad Gateway: cannot resolve ${target.host}: ${checked.reason}`);
  }

  /**
   * `/udp`: Aero's UDP relay. With `host` and `port` (or `target`) in the URL, one binding to that target,
   * checked before the upgrade like `/tcp`; without, the multiplexed v1/v2 frames. The token comes from
   * `?token=`/`?apiKey=` (equal when both are given) or `Authorization: Bearer`; the multiplexed form also
   * accepts it in a first `{"type":"auth"}` message.
   */
  async #udpUpgrade(request: Request, info: ConnInfo, url: URL): Promise<Response> {
    const refused = this.#upgradeRefusal(request, info);
    if (refused !== undefined) return refused;
    const params = url.searchParams;
    const fromQuery = params.get("token") || undefined;
    const apiKey = params.get("apiKey") || undefined;
    if (fromQuery !== undefined && apiKey !== undefined && fromQuery !== apiKey) {
      return this.#authFailed(request, info, 403, "invalid (token and apiKey differ)");
    }
    const bearer = /^Bearer[ ]+(\S+)\s*$/i.exec(request.headers.get("authorization") ?? "")?.[1];
    const token = fromQuery ?? apiKey ?? bearer;
    const valid = token !== undefined && this.#tokens.matches(token);
    const perTarget = params.has("host") || params.has("port") || params.has("target");
    if (perTarget && token === undefined) return this.#authFailed(request, info, 401, "missing");
    if (perTarget && !valid) return this.#authFailed(request, info, 403, "invalid");
    if (request.headers.get("upgrade")?.toLowerCase() !== "websocket") {
      return text(426, "Upgrade Required: this endpoint speaks WebSocket", { upgrade: "websocket" });
    }
    const tokens = this.#tokens;
    const config = this.config;
    const limits = { maxDatagramBytes: config.udpRelayMaxPayloadBytes };
    if (!perTarget) {
      // Multiplexed: without a valid token the session opens all the same, as the spec has it (Aero's client
      // authenticates with its first message, or hears {"type":"error","code":"unauthorized"} and 1008), but
      // only within the pool of sessions still to authenticate.
      let auth:
        | { check(token: string): boolean; timeoutMs: number; rejected?: string; settled(): void }
        | undefined;
      const inBand: { bind?: (token: string) => boolean } = {};
      if (!valid) {
        const release = this.#holdUnauthenticated(request, info);
        if (release instanceof Response) return release;
        auth = {
          check: (candidate: string) => tokens.matches(candidate) && (inBand.bind?.(candidate) ?? true),
          timeoutMs: config.headerTimeoutMs,
          settled: release,
          ...(token === undefined ? {} : { rejected: "the token is not valid" }),
        };
      }
      let wire: AeroUdpWire | undefined;
      return this.#startSession(
        request,
        info,
        "udp",
        undefined,
        (session) =>
          wire = new AeroUdpWire(session, { perTarget: false, ...(auth === undefined ? {} : { auth }) }),
        () => wire?.start(),
        { ...limits, token: valid ? token : undefined, held: auth?.settled, inBand },
      );
    }
    const checked = await this.#urlTarget(request, info, params);
    if (checked instanceof Response) return checked;
    const { target, address } = checked;
    return this.#startSession(
      request,
      info,
      "udp",
      undefined,
      (session) => new AeroUdpWire(session, { perTarget: true }),
      (session) => session.openDatagram(UDP_TARGET_ID, address, target.port, false),
      { ...limits, token },
    );
  }

  /**
   * `/dns-query` and `/dns-json`: CORS for allowed origins only (with preflight, which carries no token), then
   * the token (`?token=` or Bearer), then the client's query rate, then the answer.
   */
  async #dohRequest(request: Request, info: ConnInfo, url: URL): Promise<Response> {
    const origin = request.headers.get("origin");
    const originAllowed = origin === null || this.#allowAnyOrigin || this.#origins.has(origin);
    const cors: Record<string, string> = origin !== null && originAllowed
      ? { "access-control-allow-origin": origin, "vary": "origin" }
      : {};
    const withCors = (response: Response) => {
      for (const [name, value] of Object.entries(cors)) response.headers.set(name, value);
      return response;
    };
    if (!originAllowed) {
      Metrics.bump(this.metrics.rejectedUpgrades, "origin_not_allowed");
      return jsonResponse(403, { error: "origin_not_allowed", message: "this origin is not allowed" });
    }
    if (request.method === "OPTIONS") {
      return new Response(null, {
        status: 204,
        headers: {
          ...cors,
          "access-control-allow-methods": "GET, POST, OPTIONS",
          "access-control-allow-headers": "accept, authorization, content-type",
          "access-control-max-age": "600",
        },
      });
    }
    if (this.#draining) {
      return withCors(jsonResponse(503, { error: "draining", message: "the relay is shutting down" }));
    }
    const bearer = /^Bearer[ ]+(\S+)\s*$/i.exec(request.headers.get("authorization") ?? "")?.[1];
    // Aero's gateway authenticates DoH with its `aero_session` cookie: a page on the relay's origin can set it
    // to the token, so that Aero's client works unchanged.
    const cookie = /(?:^|;\s*)aero_session=([^;\s]+)/.exec(request.headers.get("cookie") ?? "")?.[1];
    const token = url.searchParams.get("token") || bearer || cookie;
    if (token === undefined) {
      this.metrics.authFailures++;
      this.#logRejection("auth_failed", request, info, "token missing (DoH)");
      return withCors(jsonResponse(401, { error: "unauthorized", message: "a token is required" }));
    }
    if (!this.#tokens.matches(token)) {
      this.metrics.authFailures++;
      this.#logRejection("auth_failed", request, info, "token invalid (DoH)");
      return withCors(jsonResponse(403, { error: "forbidden", message: "the token is not valid" }));
    }
    const limited = !this.#doh.admit(this.#clientIp(request, info));
    const response = url.pathname === DOH_PATH
      ? await this.#doh.query(request, url, limited)
      : request.method === "GET"
      ? await this.#doh.json(url, limited)
      : new Response("Method Not Allowed\n", { status: 405, headers: { allow: "GET, OPTIONS" } });
    return withCors(response);
  }

  /** The refusal for a new session over a cap (or while draining), if any. */
  #capsRefusal(request: Request, info: ConnInfo): Response | undefined {
    if (this.#draining) {
      return text(503, "Service Unavailable: the relay is shutting down", { "retry-after": "5" });
    }
    const clientIp = this.#clientIp(request, info);
    // Sessions the relay has closed but whose peer has not finished the close handshake still hold a socket;
    // they count against twice the limit, so that peers that never answer cannot pile up sockets either.
    const active = this.#sessions.size + this.#starting;
    if (active >= this.config.maxSessions || active + this.#closingTotal >= 2 * this.config.maxSessions) {
      return this.#refuse(request, info, 503, "sessions_total", { "retry-after": "5" });
    }
    const fromIp = this.#sessionsPerIp.get(clientIp) ?? 0;
    const closingFromIp = this.#closingPerIp.get(clientIp) ?? 0;
    if (
      fromIp >= this.config.maxSessionsPerIp || fromIp + closingFromIp >= 2 * this.config.maxSessionsPerIp
    ) {
      return this.#refuse(request, info, 429, "sessions_per_ip", { "retry-after": "5" });
    }

    return undefined;
  }

  /**
   * Session caps, the upgrade, and a session speaking `wire` (started with `begin`, if given). `options.token` is
   * the token the request carried (undefined for sessions that authenticate in band, which the per-token limits
   * do not see). With Redis, the fleet's caps are asked after the local ones, holding the local slot meanwhile.
   */
  #startSession(
    request: Request,
    info: ConnInfo,
    kind: string,
    protocol: string | undefined,
    wire: (session: Session) => Wire,
    begin?: (session: Session) => void,
    options: SessionOptions = {},
  ): Response | Promise<Response> {
    // A place in the pool of sessions still to authenticate is given back whenever no session starts.
    const refuse = (response: Response) => {
      options.held?.();
      return response;
    };
    const refused = this.#capsRefusal(request, info);
    if (refused !== undefined) return refuse(refused);
    const clientIp = this.#clientIp(request, info, true);
    const token = options.token === undefined ? undefined : tokenId(options.token);
    if (token !== undefined) {
      const leftMs = this.#tokenLimits.exhaustedFor(token);
      if (leftMs > 0) return refuse(this.#quotaRefusal(request, info, leftMs));
      if (!this.#tokenLimits.sessionAllowed(token)) {
        return refuse(this.#refuse(request, info, 429, "sessions_per_token", { "retry-after": "5" }));
      }
    }
    // The slot is taken now and given back if the session never starts: requests that overlap while Redis
    // answers cannot all pass the local caps at once.
    bumpCount(this.#sessionsPerIp, clientIp, 1);
    if (token !== undefined) this.#tokenLimits.addSession(token);
    // The session's token: known now, or once it authenticates in band (see #bindToken).
    const binding: TokenBinding = { token };
    let reserved = true;
    const unreserve = () => {
      if (!reserved) return;
      reserved = false;
      bumpCount(this.#sessionsPerIp, clientIp, -1);
      if (binding.token !== undefined) this.#tokenLimits.removeSession(binding.token);
      options.held?.();
    };
    const start = (lease: SharedLease | undefined): Response => {
      try {
        return this.#upgrade(
          request,
          kind,
          protocol,
          wire,
          begin,
          options,
          clientIp,
          binding,
          lease,
          unreserve,
        );
      } catch (err: unknown) {
        unreserve();
        lease?.release();
        throw err;
      }
    };
    const shared = this.#shared;
    if (shared === undefined) return start(undefined);
    // Counted among the live sessions while Redis answers, so that overlapping upgrades cannot pass the total cap.
    this.#starting++;
    return shared.acquire(clientIp, token).then((lease) => {
      this.#starting--;
      if (typeof lease !== "string") {
        // The relay may have begun to drain, or the token spent its quota, while Redis answered.
        const leftMs = token === undefined ? 0 : this.#tokenLimits.exhaustedFor(token);
        if (!this.#draining && leftMs === 0) return start(lease);
        lease.release();
        unreserve();
        return leftMs > 0
          ? this.#quotaRefusal(request, info, leftMs)
          : text(503, "Service Unavailable: the relay is shutting down", { "retry-after": "5" });
      }
      unreserve();
      if (lease === "token_quota") {
        return this.#quotaRefusal(request, info, this.#tokenLimits.exhaustedFor(token!) || 5000);
      }
      return this.#refuse(request, info, 429, lease, { "retry-after": "5" });
    });
  }

  /** 429 for a token over its byte quota, with the seconds left in the period. */
  #quotaRefusal(request: Request, info: ConnInfo, leftMs: number): Response {
    return this.#refuse(request, info, 429, "token_quota", {
      "retry-after": String(Math.ceil(leftMs / 1000)),
    });
  }

  /** The upgrade itself, once every cap has let the session in (its slots are already counted). */
  #upgrade(
    request: Request,
    kind: string,
    protocol: string | undefined,
    wire: (session: Session) => Wire,
    begin: ((session: Session) => void) | undefined,
    options: SessionOptions,
    clientIp: string,
    binding: TokenBinding,
    lease: SharedLease | undefined,
    unreserve: () => void,
  ): Response {
    let upgraded;
    try {
      upgraded = upgradeWebSocket(request, {
        maxMessageBytes: this.config.maxFrameBytes,
        messageTimeoutMs: this.config.messageTimeoutMs,
        keepaliveMs: this.config.wsKeepaliveS * 1000,
        closeTimeoutMs: CLOSE_HANDSHAKE_MS,
        heldBudget: this.#assembly,
        ...(protocol === undefined ? {} : { protocol }),
      });
    } catch (err: unknown) {
      if (!(err instanceof HandshakeError)) throw err;
      unreserve();
      lease?.release();
      return text(err.status, err.message, { ...err.headers });
    }
    const { socket, response } = upgraded;

    let socketOpen = true;
    let countedAsClosing = false;
    const socketClosed = Promise.withResolvers<void>();
    // The session has ended (whoever ended it): its slot is free at once.
    const released = () => {
      const token = binding.token;
      this.#sessions.delete(session);
      unreserve();
      lease?.release();
      if (token !== undefined) this.#sessionsByToken.get(token)?.delete(session);
      if (token !== undefined && this.#sessionsByToken.get(token)?.size === 0) {
        this.#sessionsByToken.delete(token);
      }
      if (socketOpen) {
        countedAsClosing = true;
        this.#closingTotal++;
        bumpCount(this.#closingPerIp, clientIp, 1);
      }
    };
    const shared = this.#shared;
    const tokenLimits = this.#tokenLimits;
    const session: Session = new Session(socket, {
      config: this.config,
      policy: this.#policy,
      metrics: this.metrics,
      dial: this.#dial,
      clientIp,
      sockets: this.#sockets,
      queue: this.#queue,
      assembly: this.#assembly,
      resolveTarget: this.#resolveTarget,
      wire,
      onClose: released,
      ...(options.maxDatagramBytes === undefined ? {} : { maxDatagramBytes: options.maxDatagramBytes }),
      ...(!tokenLimits.active ? {} : {
        admitOpen: () => {
          const token = binding.token;
          if (token === undefined) return true;
          if (!tokenLimits.takeOpen(token)) return false;
          return shared === undefined || this.config.tokenOpenRate === 0 ? true : shared.takeOpen(token);
        },
        countBytes: (bytes: number) => {
          const token = binding.token;
          if (token === undefined) return;
          const usage = tokenLimits.addBytes(token, bytes);
          shared?.addBytes(token, bytes);
          // The first session over the quota ends them all; one that started meanwhile ends on its next bytes.
          if (usage === "crossed") this.#quotaExhausted(token);
          else if (usage === "over") session.close(CLOSE_POLICY_VIOLATION, QUOTA_EXHAUSTED);
        },
      }),
    });
    this.#sessions.add(session);
    if (binding.token !== undefined) this.#trackToken(binding.token, session);
    if (options.inBand !== undefined) {
      options.inBand.bind = (raw) => this.#bindToken(session, binding, raw);
    }
    Metrics.bump(this.metrics.sessionsByProtocol, kind);
    this.#socketsClosed.set(session, socketClosed.promise);
    socket.onmessage = (event) => session.receive(event.data);
    socket.onviolation = (code, message) => session.peerViolation(code, message);
    // The socket has closed (handshake done, or the peer went away).
    const socketEnded = (code?: number, reason?: string) => {
      if (!socketOpen) return;
      socketOpen = false;
      session.close(code, reason); // a no-op if the relay closed the session first
      if (countedAsClosing) {
        this.#closingTotal--;
        bumpCount(this.#closingPerIp, clientIp, -1);
      }
      socketClosed.resolve();
      this.#socketsClosed.delete(session);
    };
    socket.onclose = (event) => socketEnded(event.code, event.reason === "" ? undefined : event.reason);
    if (begin !== undefined) socket.onopen = () => begin(session);
    return response;
  }

  #trackToken(token: string, session: Session): void {
    const byToken = this.#sessionsByToken.get(token);
    if (byToken === undefined) this.#sessionsByToken.set(token, new Set([session]));
    else byToken.add(session);
  }

  /**
   * A session that authenticated in band (the `/udp` auth message, Wisp's password) takes on its token's limits
   * from then on; false when the token may not start another session (its cap, or its quota spent), which the
   * wire answers as a failed authentication. The fleet's per-token session count (Redis) sees only tokens
   * given with the upgrade; these count in this process.
   */
  #bindToken(session: Session, binding: TokenBinding, raw: string): boolean {
    if (binding.token !== undefined) return true;
    const token = tokenId(raw);
    const refusal = this.#tokenLimits.exhaustedFor(token) > 0
      ? "token_quota"
      : !this.#tokenLimits.sessionAllowed(token)
      ? "sessions_per_token"
      : undefined;
    if (refusal !== undefined) {
      Metrics.bump(this.metrics.rejectedUpgrades, refusal);
      return false;
    }
    binding.token = token;
    this.#tokenLimits.addSession(token);
    this.#trackToken(token, session);
    return true;
  }

  /** A token went over its byte quota (here or across the fleet): its sessions end with 1008. */
  #quotaExhausted(token: string): void {
    const sessions = this.#sessionsByToken.get(token);
    Metrics.bump(this.metrics.rateLimited, "token_quota");
    if (sessions === undefined) return;
    for (const session of [...sessions]) {
      session.close(CLOSE_POLICY_VIOLATION, QUOTA_EXHAUSTED);
    }
  }

  #authFailed(request: Request, info: ConnInfo, status: 401 | 403, why: string): Response {
    this.metrics.authFailures++;
    this.#logRejection("auth_failed", request, info, `token ${why}`);
    return status === 401
      ? text(401, "Unauthorized: a token is required", {
        "www-authenticate": 'Bearer realm="aero-net-proxy"',
      })
      : text(403, "Forbidden: the token is not valid");
  }

  /** Refuses an upgrade for a limit or a rule; counted by kind, logged with a flood guard. */
  #refuse(
    request: Request,
    info: ConnInfo,
    status: number,
    kind: string,
    headers: Record<string, string> = {},
  ): Response {
    Metrics.bump(this.metrics.rejectedUpgrades, kind);
    this.#logRejection("upgrade_refused", request, info, kind);
    const body: Record<number, string> = {
      403: "Forbidden: this origin is not allowed",
      414: "URI Too Long",
      429: "Too Many Requests: too many sessions from this address",
      503: "Service Unavailable: the relay is at its session limit",
    };
    return text(status, body[status] ?? "Refused", headers);
  }

  #logRejection(event: string, request: Request, info: ConnInfo, reason: string): void {
    const suppressed = this.#rejectionLog.take(performance.now());
    if (suppressed < 0) return;
    logger.warn(event, {
      event,
      clientIp: this.#clientIp(request, info),
      reason,
      ...(suppressed > 0 ? { suppressedSinceLast: suppressed } : {}),
    });
  }

  /**
   * `/healthz`, `/readyz` and `/metrics` without any token check: the main listener checks the token for
   * `/metrics` first; the separate metrics listener serves this handler as it is. Every other path is 404.
   */
  operationsHandler = async (request: Request): Promise<Response> => {
    const { pathname } = new URL(request.url);
    const known = pathname === "/healthz" || pathname === "/readyz" || pathname === "/metrics";
    if (!known) return text(404, "Not Found");
    if (request.method !== "GET" && request.method !== "HEAD") {
      return text(405, "Method Not Allowed", { allow: "GET, HEAD" });
    }
    if (pathname === "/healthz") return text(200, "ok");
    if (pathname === "/readyz") {
      if (this.#draining) return text(503, "draining");
      // A worker is ready only when its supervisor reports every worker of the host ready.
      return this.#fleet === undefined || this.#fleet.ready()
        ? text(200, "ready")
        : text(503, "workers starting");
    }
    let body: string;
    try {
      body = await (this.#fleet?.exposition() ?? this.metrics.exposition());
    } catch (err: unknown) {
      if (this.#fleet === undefined) throw err;
      return text(503, "Service Unavailable: the supervisor did not answer with the workers' metrics");
    }
    return new Response(body, {
      headers: { "content-type": this.metrics.contentType, "cache-control": "no-store" },
    });
  };

  /** Stops sharing limits: gives back what Redis still counts for this process, then disconnects. */
  async disconnect(): Promise<void> {
    await this.#shared?.close();
  }

  /** Whether the relay is shutting down (new sessions refused, `/readyz` answers 503). */
  get draining(): boolean {
    return this.#draining;
  }

  /**
   * Starts a graceful shutdown: new sessions get 503, `/readyz` 503; open sessions may go on for `graceMs`, then
   * whatever is left is closed with 1001. Resolves when every session and stream has ended.
   */
  async drain(graceMs: number): Promise<void> {
    this.#draining = true;
    const deadline = performance.now() + graceMs;
    while (this.#sessions.size > 0 && performance.now() < deadline) {
      await new Promise((resolve) =>
        setTimeout(resolve, Math.min(50, Math.max(1, deadline - performance.now())))
      );
    }
    await this.closeAll(CLOSE_GOING_AWAY, "relay shutting down");
  }

  /**
   * Closes every session (WebSocket code `code`), waits until all their streams have ended, and gives the close
   * frames up to {@linkcode CLOSE_HANDSHAKE_MS} to reach clients that are still reading: a close frame queued
   * behind buffered DATA is lost if the process exits first.
   */
  async closeAll(code: number, reason: string): Promise<void> {
    const sessions = [...this.#sessions];
    for (const session of sessions) session.close(code, reason);
    await Promise.all(sessions.map((s) => s.settled()));
    const handshakes = sessions.map((s) => this.#socketsClosed.get(s)).filter((p) => p !== undefined);
    if (handshakes.length === 0) return;
    let timer: ReturnType<typeof setTimeout> | undefined;
    const bound = new Promise<void>((resolve) => timer = setTimeout(resolve, CLOSE_HANDSHAKE_MS));
    await Promise.race([Promise.all(handshakes), bound]);
    clearTimeout(timer);
  }
}

/** A relay bound to a port. */
export interface RunningRelay extends AsyncDisposable {
  readonly relay: Relay;
  readonly port: number;
  readonly hostname: string;
  /** Port of the separate metrics listener, if one was configured. */
  readonly metricsPort: number | undefined;
  /**
   * Graceful stop: refuse new sessions, let open ones finish for `graceMs` (default: the configured grace), then
   * close the rest with 1001, stop listening and wait for everything to end.
   */
  shutdown(graceMs?: number): Promise<void>;
  /** Immediate stop: `shutdown(0)`. */
  close(): Promise<void>;
}

/** Extra listener settings that are not plain configuration values. */
export interface ServeOptions {
  /** PEM certificate and key: serve `wss://` and `https://`. */
  readonly tls?: { readonly cert: string; readonly key: string };
  /** Share the port with the other workers (`SO_REUSEPORT`; needs `--unstable-net`). @default false */
  readonly reusePort?: boolean;
}

/** Starts a relay listening on `config.host:config.port` (and the metrics listener, if configured). */
export function serveRelay(config: Config, deps: RelayDeps = {}, options: ServeOptions = {}): RunningRelay {
  const relay = new Relay(config, deps);
  const metrics = relay.metrics;
  const acceptLog = new LogLimiter(1);
  const server = listen({
    hostname: config.host,
    port: config.port,
    ...(options.tls === undefined ? {} : { tls: options.tls }),
    ...(options.reusePort === true ? { reusePort: true } : {}),
    handler: relay.handler,
    sockets: relay.sockets,
    maxPending: config.maxPendingConnections,
    maxPendingPerIp: config.maxPendingPerIp,
    headerTimeoutMs: config.headerTimeoutMs,
    maxHeaderBytes: config.maxHeaderBytes,
    maxUrlLength: config.maxUrlLength,
    onRefused: (kind) => Metrics.bump(metrics.connectionsRefused, kind),
    onAcceptError: (err, retryMs) => {
      metrics.acceptErrors++;
      const suppressed = acceptLog.take(performance.now());
      if (suppressed < 0) return;
      logger.error("accept_failed", {
        event: "accept_failed",
        reason: err instanceof Error ? `${err.name}: ${err.message}` : String(err),
        retryMs,
        ...(suppressed > 0 ? { suppressedSinceLast: suppressed } : {}),
      });
    },
    onHandlerError: (err) => {
      logger.error("internal_error", {
        event: "error",
        reason: err instanceof Error ? `${err.name}: ${err.message}` : String(err),
        stack: err instanceof Error ? err.stack ?? null : null,
      });
    },
  });
  metrics.live = {
    connections: () => server.connections,
    pendingConnections: () => server.pending,
    socketsUsed: () => relay.sockets.used,
    socketLimit: () => relay.sockets.limit,
    queuedBytes: () => relay.queue.used,
    assemblingBytes: () => relay.assembly.used,
    lookupsInFlight: () => relay.lookupsInFlight,
  };
  // The metrics listener is for the operator's network only; Deno's server is enough there.
  const abort = new AbortController();
  const metricsServer = config.metricsPort === undefined ? undefined : Deno.serve(
    { hostname: config.metricsHost, port: config.metricsPort, signal: abort.signal, onListen: () => {} },
    relay.operationsHandler,
  );
  let closing: Promise<void> | undefined;
  const shutdown = (graceMs = config.shutdownGraceMs) =>
    closing ??= (async () => {
      await relay.drain(graceMs);
      await relay.disconnect();
      abort.abort();
      await Promise.all([server.close(), metricsServer?.finished]);
    })();
  const close = () => shutdown(0);
  return {
    relay,
    port: server.addr.port,
    hostname: server.addr.hostname,
    metricsPort: metricsServer?.addr.port,
    shutdown,
    close,
    [Symbol.asyncDispose]: close,
  };
}
