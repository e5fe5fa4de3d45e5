/**
 * The HTTP side: routes requests, checks the token, upgrades `GET /tcp-mux` to a WebSocket session.
 * @module
 */
import { getLogger } from "@logtape/logtape";
import { tokenFromRequest, TokenSet } from "./auth.ts";
import type { Config } from "./config.ts";
import { demoResponse, isDemoPath } from "./demo/mod.ts";
import { Metrics } from "./metrics.ts";
import { createPolicy } from "./policy/policy.ts";
import { MUX_PATH } from "./protocol/mod.ts";
import { Session } from "./session.ts";
import type { Dial } from "./tcp_stream.ts";

const logger = getLogger(["aero-net-proxy", "server"]);

/** Optional collaborators; production uses the defaults. */
export interface RelayDeps {
  readonly metrics?: Metrics;
  readonly dial?: Dial;
}

function text(status: number, body: string, headers: Record<string, string> = {}): Response {
  return new Response(`${body}\n`, {
    status,
    headers: { "content-type": "text/plain; charset=utf-8", ...headers },
  });
}

/** Turns `info.remoteAddr` into a printable client IP. */
function clientIpOf(info: Deno.ServeHandlerInfo): string {
  try {
    const addr = info.remoteAddr as Deno.NetAddr;
    return typeof addr.hostname === "string" ? addr.hostname : "unknown";
  } catch {
    // Deno throws here once the client has already gone away.
    return "unknown";
  }
}

/** A relay without a listener: a request handler plus the sessions it owns. */
export class Relay {
  readonly config: Config;
  readonly metrics: Metrics;
  readonly #tokens: TokenSet;
  readonly #policy;
  readonly #dial: Dial;
  readonly #sessions = new Set<Session>();

  constructor(config: Config, deps: RelayDeps = {}) {
    this.config = config;
    this.metrics = deps.metrics ?? new Metrics();
    this.#tokens = new TokenSet(config.authTokens);
    this.#policy = createPolicy(config);
    this.#dial = deps.dial ?? ((options) => Deno.connect({ ...options, transport: "tcp" }));
  }

  /** Live sessions. */
  get sessions(): ReadonlySet<Session> {
    return this.#sessions;
  }

  /** The `Deno.serve` handler. */
  handler = (request: Request, info: Deno.ServeHandlerInfo): Response => {
    const url = new URL(request.url);
    // --demo only: the browser demo page (src/demo/). Off by default.
    if (this.config.demo && isDemoPath(url.pathname)) return demoResponse(request, url);
    if (url.pathname !== MUX_PATH) return text(404, "Not Found");
    if (request.method !== "GET") return text(405, "Method Not Allowed", { allow: "GET" });

    const token = tokenFromRequest(url, request.headers);
    if (token === undefined) return this.#authFailed(info, 401, "missing");
    if (!this.#tokens.matches(token)) return this.#authFailed(info, 403, "invalid");

    if (request.headers.get("upgrade")?.toLowerCase() !== "websocket") {
      return text(426, "Upgrade Required: this endpoint speaks WebSocket", { upgrade: "websocket" });
    }
    let upgraded;
    try {
      upgraded = Deno.upgradeWebSocket(request);
    } catch (err: unknown) {
      return text(400, `Bad Request: ${err instanceof Error ? err.message : "invalid WebSocket upgrade"}`);
    }
    const { socket, response } = upgraded;
    socket.binaryType = "arraybuffer";
    const session = new Session(socket, {
      config: this.config,
      policy: this.#policy,
      metrics: this.metrics,
      dial: this.#dial,
      clientIp: clientIpOf(info),
    });
    this.#sessions.add(session);
    socket.onmessage = (event) => session.handleMessage(event.data);
    const end = (code?: number, reason?: string) => {
      // The socket is already closed here, so close() only records the code and ends the streams.
      session.close(code, reason);
      this.#sessions.delete(session);
    };
    socket.onclose = (event) => end(event.code, event.reason === "" ? undefined : event.reason);
    socket.onerror = () => end(undefined, "WebSocket error");
    return response;
  };

  #authFailed(info: Deno.ServeHandlerInfo, status: 401 | 403, why: string): Response {
    this.metrics.authFailures++;
    logger.warn("auth_failed", { event: "auth_failed", clientIp: clientIpOf(info), reason: `token ${why}` });
    return status === 401
      ? text(401, "Unauthorized: a token is required", {
        "www-authenticate": 'Bearer realm="aero-net-proxy"',
      })
      : text(403, "Forbidden: the token is not valid");
  }

  /** Closes every session (WebSocket code `code`) and waits until all their streams have ended. */
  async closeAll(code: number, reason: string): Promise<void> {
    const sessions = [...this.#sessions];
    for (const session of sessions) session.close(code, reason);
    await Promise.all(sessions.map((s) => s.settled()));
  }
}

/** A relay bound to a port. */
export interface RunningRelay extends AsyncDisposable {
  readonly relay: Relay;
  readonly port: number;
  readonly hostname: string;
  /** Stops listening, closes every session with 1001 and waits for everything to end. */
  close(): Promise<void>;
}

/** Starts a relay listening on `config.host:config.port`. */
export function serveRelay(config: Config, deps: RelayDeps = {}): RunningRelay {
  const relay = new Relay(config, deps);
  const abort = new AbortController();
  const server = Deno.serve(
    { hostname: config.host, port: config.port, signal: abort.signal, onListen: () => {} },
    relay.handler,
  );
  let closing: Promise<void> | undefined;
  const close = () =>
    closing ??= (async () => {
      abort.abort();
      await relay.closeAll(1001, "relay shutting down");
      await server.finished;
    })();
  return {
    relay,
    port: server.addr.port,
    hostname: server.addr.hostname,
    close,
    [Symbol.asyncDispose]: close,
  };
}
