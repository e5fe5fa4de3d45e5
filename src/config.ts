/**
 * Configuration: one table of options, read from defaults <- environment <- command-line flags, validated once,
 * returned frozen. Pure: the caller passes the environment and the arguments in.
 * @module
 */
import { parseArgs } from "node:util";
import ipaddr from "ipaddr.js";
import { parseHostPattern } from "./policy/hosts.ts";
import { parseAnyCidr, parseCidr, parseCidr6 } from "./policy/policy.ts";

/** Log levels accepted by `AERO_PROXY_LOG_LEVEL`. */
export const LOG_LEVELS = ["trace", "debug", "info", "warning", "error", "fatal"] as const;
export type LogLevel = typeof LOG_LEVELS[number];

/** The relay's resolved, validated configuration. */
export interface Config {
  readonly host: string;
  readonly port: number;
  /** Accepted tokens; empty means "generate one at startup". */
  readonly authTokens: readonly string[];
  /** File holding the token(s), one a line (Docker/Kubernetes secrets); read once at startup. */
  readonly authTokenFile: string;
  readonly allowWeakToken: boolean;
  /** Browser origins allowed to open sessions; `["*"]` allows any. */
  readonly allowedOrigins: readonly string[];
  readonly maxSessions: number;
  readonly maxSessionsPerIp: number;
  readonly maxUrlLength: number;
  /** Believe `X-Forwarded-For` for the client IP (only behind a trusted reverse proxy). */
  readonly trustProxy: boolean;
  readonly allowPrivateIps: boolean;
  /** Network addresses only (no host bits set); `none` in the environment gives the empty list. */
  readonly allowCidrs: readonly string[];
  /** Network addresses only (no host bits set); `none` in the environment gives the empty list. */
  readonly denyCidrs: readonly string[];
  /** Empty means every port not denied. */
  readonly allowPorts: readonly number[];
  /** Target names allowed (exact or `*.domain`); empty means any name not denied. Checked before resolution. */
  readonly allowHosts: readonly string[];
  /** Target names always denied (exact or `*.domain`); wins over `allowHosts`. */
  readonly denyHosts: readonly string[];
  /** Whether a target may be written as an IP address (false: names only). */
  readonly allowIpLiterals: boolean;
  /** How long resolving a target name may take. */
  readonly dnsTimeoutMs: number;
  /** Defaults to SMTP; only an explicit `none` empties it (a blank value is refused). */
  readonly denyPorts: readonly number[];
  readonly maxStreamsPerSession: number;
  /** OPEN frames per second per session; 0 means unlimited. */
  readonly openRate: number;
  readonly openBurst: number;
  /** How long an OPEN over the rate may wait for its turn before it is refused. */
  readonly openQueueMs: number;
  /** Client-to-target bytes per second per session; 0 means unlimited. */
  readonly clientBytesPerSec: number;
  /** Target-to-client bytes per second per session; 0 means unlimited. */
  readonly targetBytesPerSec: number;
  /** Largest WebSocket message accepted, header included. */
  readonly maxFrameBytes: number;
  readonly streamQueueBytes: number;
  readonly sessionQueueBytes: number;
  readonly connectTimeoutMs: number;
  /** A stream with no traffic for this long is closed; 0 = never. */
  readonly streamIdleMs: number;
  /** A session without streams for this long is closed; 0 = never. */
  readonly sessionIdleMs: number;
  /** WebSocket ping interval and pong deadline in seconds; 0 = off. */
  readonly wsKeepaliveS: number;
  readonly wsHighWatermark: number;
  readonly wsLowWatermark: number;
  readonly logLevel: LogLevel;
  readonly logFormat: "json" | "pretty";
  /** Separate listener for /metrics, /healthz and /readyz without a token; `undefined` = off. */
  readonly metricsPort: number | undefined;
  readonly metricsHost: string;
  /** How long open sessions may finish after SIGTERM/SIGINT before they are closed with 1001. */
  readonly shutdownGraceMs: number;
  /** PEM files for serving wss:// directly; both or neither. */
  readonly tlsCertFile: string;
  readonly tlsKeyFile: string;
  /** Serve the browser demo page at `/demo/`. */
  readonly demo: boolean;
  /**
   * Sockets held at once: client connections, target connections and lingering ones. `undefined` means
   * "auto": derive it from the open-file limit at startup (see {@linkcode autoMaxSockets}).
   */
  readonly maxSockets: number | undefined;
  /** Connections that have not finished their HTTP request or upgrade, in total (over: closed with 503). */
  readonly maxPendingConnections: number;
  /** Such pending connections per client IP (over: closed with 429). */
  readonly maxPendingPerIp: number;
  /** Time a new connection has to send its whole request head (over: 408 and close). */
  readonly headerTimeoutMs: number;
  /** Largest request head, request line and headers together (over: 431). */
  readonly maxHeaderBytes: number;
  /** Time a fragmented WebSocket message has to arrive whole (over: close 1008). */
  readonly messageTimeoutMs: number;
  /** Client bytes queued towards targets across all sessions; past it, sessions that add more are paused. */
  readonly totalQueueBytes: number;
  /** While its session is paused for a full queue, a stream whose target accepts nothing this long gets ERROR 8. */
  readonly uploadStallMs: number;
  /** Whether clients may open UDP bindings (Wisp UDP streams). */
  readonly allowUdp: boolean;
  /** Largest datagram payload relayed either way; larger ones are dropped and counted. */
  readonly udpMaxDatagramBytes: number;
  /** A UDP binding with no datagram either way for this long is closed. */
  readonly udpIdleMs: number;
  /** Datagrams per second per session, both directions together; 0 = unlimited. */
  readonly udpDatagramsPerSec: number;
  /** Datagram payload bytes per second per session, both directions together; 0 = unlimited. */
  readonly udpBytesPerSec: number;
  /** UDP bindings one session may hold at once. */
  readonly udpMaxBindings: number;
  /** Wisp: DATA packets a stream may have in flight towards the relay (the CONTINUE buffer size). */
  readonly wispBufferPackets: number;
  /** Wisp v2: the message of the day sent in INFO; empty = none. */
  readonly wispMotd: string;
  /** Wisp v2: accept the token as the password of the password extension when the upgrade carried none. */
  readonly wispPasswordAuth: boolean;
  /** Credit extension: bytes each stream's client may have in flight towards the relay (the upload window). */
  readonly creditWindowBytes: number;
  /** `/udp` (Aero's UDP relay): the largest datagram payload either way. */
  readonly udpRelayMaxPayloadBytes: number;
  /** DoH: queries per second per client IP (a burst of twice that); 0 = unlimited. */
  readonly dohQueriesPerSec: number;
  /** DoH: how long answers are cached, and the TTL they carry. */
  readonly dohTtlSeconds: number;
  /**
   * Relay processes on this host (`auto` resolved to the CPU count). Above 1, the process started is a
   * supervisor that serves no relay traffic itself (see src/supervisor.ts).
   */
  readonly workers: number;
  /** Redis that shares the per-IP and per-token limits across processes and replicas ("" = embedded counters). */
  readonly redisUrl: string;
  /** Prefix of every Redis key the relay writes. */
  readonly redisPrefix: string;
  /** How long a session's slot in Redis outlives a process that stopped renewing it. */
  readonly redisLeaseMs: number;
  /** How long one Redis command may take before the relay falls back to its local limits. */
  readonly redisTimeoutMs: number;
  /** Concurrent sessions per token (0 = unlimited). */
  readonly maxSessionsPerToken: number;
  /** Sustained OPENs per second per token, across its sessions (0 = unlimited). */
  readonly tokenOpenRate: number;
  /** OPENs a token may make at once before its rate applies. */
  readonly tokenOpenBurst: number;
  /** Stream payload bytes per token per period, both directions (0 = unlimited). */
  readonly tokenByteQuota: number;
  /** Length of a byte-quota period, in seconds (periods start at multiples of it since the Unix epoch). */
  readonly tokenQuotaPeriodS: number;
}

type Kind =
  | "host"
  | "redis"
  | "port"
  | "tokens"
  | "path"
  | "origins"
  | "bool"
  | "cidrs"
  | "ports"
  | "hosts"
  | "count"
  | "autocount"
  | "rate"
  | "level"
  | "format"
  | "optport"
  | "text"
  | "workers"
  | "switch";

/** One configuration option: its environment variable, its flag, its default and its meaning. */
export interface OptionSpec {
  readonly key: keyof Config;
  readonly env: string;
  readonly flag: string;
  readonly kind: Kind;
  /** The default, written as it would be in the environment. */
  readonly default: string;
  readonly description: string;
  /** Largest accepted value, for numbers with a hard ceiling (timers, Deno's message size). */
  readonly max?: number;
}

const KIB = 1024;
const MIB = 1024 * KIB;
/** JavaScript timers overflow past 2^31 - 1 ms (and then fire at once). */
const MAX_TIMER_MS = 2 ** 31 - 1;
/** Deno's WebSocket drops a connection whose message is larger than this before the relay sees it. */
const MAX_WEBSOCKET_MESSAGE = 64 * MIB;
/** Largest accepted request-head limit: beyond this a slow client could pin a lot of memory per socket. */
const MAX_HEADER_LIMIT = 1 * MIB;
/** Most worker processes: beyond this the per-process overhead outweighs any host's cores. */
export const MAX_WORKERS = 64;

/** Every option, in the order `--help` and the README list them. */
export const OPTIONS: readonly OptionSpec[] = [
  {
    key: "host",
    env: "AERO_PROXY_HOST",
    flag: "host",
    kind: "host",
    default: "127.0.0.1",
    description: "Address to listen on",
  },
  {
    key: "port",
    env: "AERO_PROXY_PORT",
    flag: "port",
    kind: "port",
    default: "8080",
    description: "TCP port to listen on (0 picks a free port)",
  },
  {
    key: "authTokens",
    env: "AERO_PROXY_AUTH_TOKEN",
    flag: "auth-token",
    kind: "tokens",
    default: "",
    description:
      "Accepted token(s), comma-separated; unset: a random token is generated and printed at startup",
  },
  {
    key: "authTokenFile",
    env: "AERO_PROXY_AUTH_TOKEN_FILE",
    flag: "auth-token-file",
    kind: "path",
    default: "",
    description:
      "File with the token(s), one per line (Docker/Kubernetes secrets); excludes AERO_PROXY_AUTH_TOKEN",
  },
  {
    key: "allowWeakToken",
    env: "AERO_PROXY_ALLOW_WEAK_TOKEN",
    flag: "allow-weak-token",
    kind: "bool",
    default: "0",
    description: "1 accepts tokens shorter than 16 bytes on a non-loopback listener",
  },
  {
    key: "allowedOrigins",
    env: "AERO_PROXY_ALLOWED_ORIGINS",
    flag: "allowed-origins",
    kind: "origins",
    default: "*",
    description:
      "Browser origins allowed to connect, comma-separated (* = any); requests without Origin are allowed",
  },
  {
    key: "maxSessions",
    env: "AERO_PROXY_MAX_SESSIONS",
    flag: "max-sessions",
    kind: "count",
    default: "10000",
    description: "Concurrent WebSocket sessions in total (over: HTTP 503)",
  },
  {
    key: "maxSessionsPerIp",
    env: "AERO_PROXY_MAX_SESSIONS_PER_IP",
    flag: "max-sessions-per-ip",
    kind: "count",
    default: "256",
    description: "Concurrent WebSocket sessions per client IP (over: HTTP 429)",
  },
  {
    key: "maxUrlLength",
    env: "AERO_PROXY_MAX_URL_LENGTH",
    flag: "max-url-length",
    kind: "count",
    default: "4096",
    description: "Longest request URL accepted (over: HTTP 414)",
  },
  {
    key: "trustProxy",
    env: "AERO_PROXY_TRUST_PROXY",
    flag: "trust-proxy",
    kind: "bool",
    default: "0",
    description:
      "1 takes the client IP from the last X-Forwarded-For entry (only behind your own reverse proxy)",
  },
  {
    key: "allowPrivateIps",
    env: "AERO_PROXY_ALLOW_PRIVATE_IPS",
    flag: "allow-private-ips",
    kind: "bool",
    default: "0",
    description: "1 allows private, loopback, link-local and other special IPv4 and IPv6 destinations",
  },
  {
    key: "allowCidrs",
    env: "AERO_PROXY_ALLOW_CIDRS",
    flag: "allow-cidrs",
    kind: "cidrs",
    default: "",
    description: "IPv4 or IPv6 CIDRs allowed even though they are in a denied special range",
  },
  {
    key: "denyCidrs",
    env: "AERO_PROXY_DENY_CIDRS",
    flag: "deny-cidrs",
    kind: "cidrs",
    default: "",
    description: "IPv4 or IPv6 CIDRs always denied, even with ALLOW_PRIVATE_IPS or ALLOW_CIDRS",
  },
  {
    key: "allowPorts",
    env: "AERO_PROXY_ALLOW_PORTS",
    flag: "allow-ports",
    kind: "ports",
    default: "",
    description: "If set, only these destination ports (comma-separated, ranges like 8000-8100)",
  },
  {
    key: "denyPorts",
    env: "AERO_PROXY_DENY_PORTS",
    flag: "deny-ports",
    kind: "ports",
    default: "25",
    description: "Destination ports always denied (default: SMTP)",
  },
  {
    key: "allowHosts",
    env: "AERO_PROXY_ALLOW_HOSTS",
    flag: "allow-hosts",
    kind: "hosts",
    default: "",
    description:
      "If set, only these target names (comma-separated, exact or *.domain); IP literals are then refused",
  },
  {
    key: "denyHosts",
    env: "AERO_PROXY_DENY_HOSTS",
    flag: "deny-hosts",
    kind: "hosts",
    default: "",
    description:
      "Target names always denied (comma-separated, exact or *.domain), even if ALLOW_HOSTS lists them",
  },
  {
    key: "allowIpLiterals",
    env: "AERO_PROXY_ALLOW_IP_LITERALS",
    flag: "allow-ip-literals",
    kind: "bool",
    default: "1",
    description: "0 refuses targets written as IP addresses (names only)",
  },
  {
    key: "dnsTimeoutMs",
    env: "AERO_PROXY_DNS_TIMEOUT_MS",
    flag: "dns-timeout-ms",
    kind: "count",
    default: "5000",
    description: "How long resolving a target name may take before the target is refused",
    max: MAX_TIMER_MS,
  },
  {
    key: "maxStreamsPerSession",
    env: "AERO_PROXY_MAX_STREAMS_PER_SESSION",
    flag: "max-streams-per-session",
    kind: "count",
    default: "1024",
    description: "Concurrent streams per WebSocket session",
  },
  {
    key: "openRate",
    env: "AERO_PROXY_OPEN_RATE",
    flag: "open-rate",
    kind: "rate",
    default: "100",
    description: "Sustained OPENs per second per session (0 = unlimited)",
  },
  {
    key: "openBurst",
    env: "AERO_PROXY_OPEN_BURST",
    flag: "open-burst",
    kind: "count",
    default: "1024",
    description: "OPENs a session may make at once before the rate applies",
  },
  {
    key: "openQueueMs",
    env: "AERO_PROXY_OPEN_QUEUE_MS",
    flag: "open-queue-ms",
    kind: "rate",
    default: "2000",
    description: "How long an OPEN over the rate waits for its turn before ERROR 4 (0 = refuse at once)",
    max: MAX_TIMER_MS,
  },
  {
    key: "clientBytesPerSec",
    env: "AERO_PROXY_CLIENT_BYTES_PER_SEC",
    flag: "client-bytes-per-sec",
    kind: "rate",
    default: "0",
    description:
      "Client-to-target bytes per second per session, shaped (0 = unlimited); see the README before setting it",
  },
  {
    key: "targetBytesPerSec",
    env: "AERO_PROXY_TARGET_BYTES_PER_SEC",
    flag: "target-bytes-per-sec",
    kind: "rate",
    default: "0",
    description: "Target-to-client bytes per second per session, shaped by delaying reads (0 = unlimited)",
  },
  {
    key: "maxFrameBytes",
    env: "AERO_PROXY_MAX_FRAME_BYTES",
    flag: "max-frame-bytes",
    kind: "count",
    default: String(2 * MIB),
    description: "Largest WebSocket message accepted, header included (over: ERROR 5 on id 0, close 1009)",
    max: MAX_WEBSOCKET_MESSAGE,
  },
  {
    key: "streamQueueBytes",
    env: "AERO_PROXY_STREAM_QUEUE_BYTES",
    flag: "stream-queue-bytes",
    kind: "count",
    default: String(1 * MIB),
    description: "Bytes queued for one slow target before its stream gets ERROR 8",
  },
  {
    key: "sessionQueueBytes",
    env: "AERO_PROXY_SESSION_QUEUE_BYTES",
    flag: "session-queue-bytes",
    kind: "count",
    default: String(16 * MIB),
    description: "Bytes queued for all targets of one session before the stream adding more gets ERROR 8",
  },
  {
    key: "connectTimeoutMs",
    env: "AERO_PROXY_CONNECT_TIMEOUT_MS",
    flag: "connect-timeout-ms",
    kind: "count",
    default: "10000",
    description: "TCP connect timeout; on expiry the stream gets ERROR 6",
    max: MAX_TIMER_MS,
  },
  {
    key: "streamIdleMs",
    env: "AERO_PROXY_STREAM_IDLE_MS",
    flag: "stream-idle-ms",
    kind: "rate",
    default: "3600000",
    description: "Close a stream with no traffic either way for this long (0 = never)",
    max: MAX_TIMER_MS,
  },
  {
    key: "sessionIdleMs",
    env: "AERO_PROXY_SESSION_IDLE_MS",
    flag: "session-idle-ms",
    kind: "rate",
    default: "900000",
    description: "Close a session that has had no streams for this long (0 = never)",
    max: MAX_TIMER_MS,
  },
  {
    key: "wsKeepaliveS",
    env: "AERO_PROXY_WS_KEEPALIVE_S",
    flag: "ws-keepalive-s",
    kind: "rate",
    default: "30",
    description: "WebSocket ping interval; a peer that does not answer in time is dropped (0 = off)",
    max: Math.floor(MAX_TIMER_MS / 1000),
  },
  {
    key: "wsHighWatermark",
    env: "AERO_PROXY_WS_HIGH_WATERMARK",
    flag: "ws-high-watermark",
    kind: "count",
    default: String(256 * KIB),
    description: "WebSocket send buffer size at which target reads pause",
  },
  {
    key: "wsLowWatermark",
    env: "AERO_PROXY_WS_LOW_WATERMARK",
    flag: "ws-low-watermark",
    kind: "count",
    default: String(64 * KIB),
    description: "WebSocket send buffer size below which paused target reads resume",
  },
  {
    key: "logLevel",
    env: "AERO_PROXY_LOG_LEVEL",
    flag: "log-level",
    kind: "level",
    default: "info",
    description: `Lowest log level written: ${LOG_LEVELS.join(", ")}`,
  },
  {
    key: "logFormat",
    env: "AERO_PROXY_LOG_FORMAT",
    flag: "log-format",
    kind: "format",
    default: "json",
    description: "json (one JSON object a line) or pretty (for humans)",
  },
  {
    key: "metricsPort",
    env: "AERO_PROXY_METRICS_PORT",
    flag: "metrics-port",
    kind: "optport",
    default: "",
    description: "Port of a separate listener for /metrics, /healthz, /readyz without a token (unset = off)",
  },
  {
    key: "metricsHost",
    env: "AERO_PROXY_METRICS_HOST",
    flag: "metrics-host",
    kind: "host",
    default: "127.0.0.1",
    description: "Address of the metrics listener",
  },
  {
    key: "shutdownGraceMs",
    env: "AERO_PROXY_SHUTDOWN_GRACE_MS",
    flag: "shutdown-grace-ms",
    kind: "rate",
    default: "10000",
    description: "After SIGTERM/SIGINT, how long open sessions may finish before they are closed with 1001",
    max: MAX_TIMER_MS,
  },
  {
    key: "tlsCertFile",
    env: "AERO_PROXY_TLS_CERT_FILE",
    flag: "tls-cert-file",
    kind: "path",
    default: "",
    description: "PEM certificate (chain) to serve wss:// directly; needs AERO_PROXY_TLS_KEY_FILE",
  },
  {
    key: "tlsKeyFile",
    env: "AERO_PROXY_TLS_KEY_FILE",
    flag: "tls-key-file",
    kind: "path",
    default: "",
    description: "PEM private key for AERO_PROXY_TLS_CERT_FILE",
  },
  {
    key: "demo",
    env: "AERO_PROXY_DEMO",
    flag: "demo",
    kind: "switch",
    default: "0",
    description: "Serve the browser demo page at /demo/ (1, or the bare flag --demo)",
  },
  {
    key: "maxSockets",
    env: "AERO_PROXY_MAX_SOCKETS",
    flag: "max-sockets",
    kind: "autocount",
    default: "auto",
    description: "Sockets held at once: client connections, target connections and lingering ones " +
      "(auto: 90 % of the open-file limit, less 64). Over: new connections get 503, new streams ERROR 4",
  },
  {
    key: "maxPendingConnections",
    env: "AERO_PROXY_MAX_PENDING",
    flag: "max-pending",
    kind: "count",
    default: "1024",
    description:
      "Connections that have not finished their HTTP request or upgrade, in total (over: closed with 503)",
  },
  {
    key: "maxPendingPerIp",
    env: "AERO_PROXY_MAX_PENDING_PER_IP",
    flag: "max-pending-per-ip",
    kind: "count",
    default: "64",
    description: "Such connections per client IP (over: closed with 429)",
  },
  {
    key: "headerTimeoutMs",
    env: "AERO_PROXY_HEADER_TIMEOUT_MS",
    flag: "header-timeout-ms",
    kind: "count",
    default: "10000",
    description: "Time a new connection has to send its whole request head (over: 408 and close)",
    max: MAX_TIMER_MS,
  },
  {
    key: "maxHeaderBytes",
    env: "AERO_PROXY_MAX_HEADER_BYTES",
    flag: "max-header-bytes",
    kind: "count",
    default: "16384",
    description: "Largest request head: request line and headers (over: 431)",
    max: MAX_HEADER_LIMIT,
  },
  {
    key: "messageTimeoutMs",
    env: "AERO_PROXY_MESSAGE_TIMEOUT_MS",
    flag: "message-timeout-ms",
    kind: "count",
    default: "30000",
    description: "Time a fragmented WebSocket message has to arrive whole (over: close 1008)",
    max: MAX_TIMER_MS,
  },
  {
    key: "totalQueueBytes",
    env: "AERO_PROXY_TOTAL_QUEUE_BYTES",
    flag: "total-queue-bytes",
    kind: "count",
    default: String(256 * MIB),
    description:
      "Client bytes queued towards targets across all sessions; over it, sessions that add more are paused",
  },
  {
    key: "uploadStallMs",
    env: "AERO_PROXY_UPLOAD_STALL_MS",
    flag: "upload-stall-ms",
    kind: "count",
    default: "1000",
    description:
      "While a session is paused for a full queue, a stream whose target accepts nothing for this long gets ERROR 8",
    max: MAX_TIMER_MS,
  },
  {
    key: "allowUdp",
    env: "AERO_PROXY_ALLOW_UDP",
    flag: "allow-udp",
    kind: "bool",
    default: "1",
    description: "Let clients open UDP bindings (Wisp UDP streams), under the same destination policy as TCP",
  },
  {
    key: "udpMaxDatagramBytes",
    env: "AERO_PROXY_UDP_MAX_DATAGRAM_BYTES",
    flag: "udp-max-datagram-bytes",
    kind: "count",
    default: "8192",
    description: "Largest datagram relayed either way; larger ones are dropped and counted",
    max: 65507,
  },
  {
    key: "udpIdleMs",
    env: "AERO_PROXY_UDP_IDLE_MS",
    flag: "udp-idle-ms",
    kind: "count",
    default: "60000",
    description: "A UDP binding with no datagram either way for this long is closed",
    max: MAX_TIMER_MS,
  },
  {
    key: "udpDatagramsPerSec",
    env: "AERO_PROXY_UDP_DATAGRAMS_PER_SEC",
    flag: "udp-datagrams-per-sec",
    kind: "rate",
    default: "2000",
    description:
      "Datagrams per second per session, both directions; over it they are dropped (0 = unlimited)",
  },
  {
    key: "udpBytesPerSec",
    env: "AERO_PROXY_UDP_BYTES_PER_SEC",
    flag: "udp-bytes-per-sec",
    kind: "rate",
    default: String(4 * MIB),
    description:
      "Datagram bytes per second per session, both directions; over it they are dropped (0 = unlimited)",
  },
  {
    key: "udpMaxBindings",
    env: "AERO_PROXY_UDP_MAX_BINDINGS",
    flag: "udp-max-bindings",
    kind: "count",
    default: "64",
    description: "UDP bindings one session may hold at once (each is a socket)",
  },
  {
    key: "creditWindowBytes",
    env: "AERO_PROXY_CREDIT_WINDOW_BYTES",
    flag: "credit-window-bytes",
    kind: "count",
    default: String(1 * MIB),
    description:
      "Credit extension (aero-tcp-mux-v1-credit): bytes a stream's client may send ahead of its target (below 65536: the initial 64 KiB)",
    max: 0x7fff_ffff,
  },
  {
    key: "udpRelayMaxPayloadBytes",
    env: "AERO_PROXY_UDP_RELAY_MAX_PAYLOAD_BYTES",
    flag: "udp-relay-max-payload-bytes",
    kind: "count",
    default: "1200",
    description:
      "/udp (Aero's UDP relay): largest datagram payload either way; larger ones are dropped and counted",
    max: 65507,
  },
  {
    key: "dohQueriesPerSec",
    env: "AERO_PROXY_DOH_QUERIES_PER_SEC",
    flag: "doh-queries-per-sec",
    kind: "rate",
    default: "50",
    description:
      "DoH (/dns-query, /dns-json): queries per second per client IP, a burst of twice that (0 = unlimited)",
  },
  {
    key: "dohTtlSeconds",
    env: "AERO_PROXY_DOH_TTL_SECONDS",
    flag: "doh-ttl-seconds",
    kind: "count",
    default: "30",
    description: "DoH: how long answers are cached, and the TTL they carry",
    max: 86_400,
  },
  {
    key: "wispBufferPackets",
    env: "AERO_PROXY_WISP_BUFFER_PACKETS",
    flag: "wisp-buffer-packets",
    kind: "count",
    default: "128",
    description: "Wisp: DATA packets a TCP stream may have in flight to the relay (the CONTINUE buffer size)",
    max: 65535,
  },
  {
    key: "wispMotd",
    env: "AERO_PROXY_WISP_MOTD",
    flag: "wisp-motd",
    kind: "text",
    default: "",
    description: "Wisp v2: message of the day sent to clients in INFO (empty = none)",
  },
  {
    key: "wispPasswordAuth",
    env: "AERO_PROXY_WISP_PASSWORD_AUTH",
    flag: "wisp-password-auth",
    kind: "bool",
    default: "0",
    description:
      "Wisp v2: offer password auth and accept the token as the password when the upgrade carried none",
  },
  {
    key: "workers",
    env: "AERO_PROXY_WORKERS",
    flag: "workers",
    kind: "workers",
    default: "1",
    description:
      `Relay processes sharing the port (Linux, SO_REUSEPORT): a positive integer up to ${MAX_WORKERS}, ` +
      "or auto (one per CPU); above 1 a supervisor starts and watches them (see the README)",
    max: MAX_WORKERS,
  },
  {
    key: "redisUrl",
    env: "AERO_PROXY_REDIS_URL",
    flag: "redis-url",
    kind: "redis",
    default: "",
    description:
      "redis:// or rediss:// URL of a Redis that shares the session, OPEN and byte limits across " +
      "workers and replicas (empty = each process counts alone)",
  },
  {
    key: "redisPrefix",
    env: "AERO_PROXY_REDIS_PREFIX",
    flag: "redis-prefix",
    kind: "text",
    default: "aero-net-proxy:",
    description: "Prefix of the relay's Redis keys (relays that share limits must share it)",
  },
  {
    key: "redisLeaseMs",
    env: "AERO_PROXY_REDIS_LEASE_MS",
    flag: "redis-lease-ms",
    kind: "count",
    default: "15000",
    description: "How long a session's shared slot outlives a relay that died (renewed every third of it)",
    max: MAX_TIMER_MS,
  },
  {
    key: "redisTimeoutMs",
    env: "AERO_PROXY_REDIS_TIMEOUT_MS",
    flag: "redis-timeout-ms",
    kind: "count",
    default: "250",
    description: "How long a Redis command may take before the relay decides on its local limits alone",
    max: MAX_TIMER_MS,
  },
  {
    key: "maxSessionsPerToken",
    env: "AERO_PROXY_MAX_SESSIONS_PER_TOKEN",
    flag: "max-sessions-per-token",
    kind: "rate",
    default: "0",
    description: "Concurrent sessions per token (over: HTTP 429; 0 = unlimited)",
  },
  {
    key: "tokenOpenRate",
    env: "AERO_PROXY_TOKEN_OPEN_RATE",
    flag: "token-open-rate",
    kind: "rate",
    default: "0",
    description: "Sustained OPENs per second per token, over all its sessions (over: ERROR 4; 0 = unlimited)",
  },
  {
    key: "tokenOpenBurst",
    env: "AERO_PROXY_TOKEN_OPEN_BURST",
    flag: "token-open-burst",
    kind: "count",
    default: "1024",
    description: "OPENs a token may make at once before AERO_PROXY_TOKEN_OPEN_RATE applies",
  },
  {
    key: "tokenByteQuota",
    env: "AERO_PROXY_TOKEN_BYTE_QUOTA",
    flag: "token-byte-quota",
    kind: "rate",
    default: "0",
    description: "Stream bytes (both directions) per token per period; over it, the token's sessions close " +
      "with 1008 and new ones get 429 until the next period (0 = unlimited)",
  },
  {
    key: "tokenQuotaPeriodS",
    env: "AERO_PROXY_TOKEN_QUOTA_PERIOD_S",
    flag: "token-quota-period-s",
    kind: "count",
    default: "86400",
    description:
      "Length of a byte-quota period in seconds (periods start at multiples of it since the epoch)",
  },
];

/** Bad configuration: the message names every offending variable or flag and what it accepts. */
export class ConfigError extends Error {
  override name = "ConfigError";
  readonly problems: readonly string[];
  constructor(problems: readonly string[]) {
    super(problems.join("; "));
    this.problems = problems;
  }
}

/** What the command line asked for. `warnings` are for the log: legal but worth an operator's attention. */
export type Command =
  | { kind: "run"; config: Config; warnings: readonly string[] }
  | { kind: "healthcheck"; config: Config; warnings: readonly string[] }
  | { kind: "help" }
  | { kind: "version" };

/** What parsing may need from the outside world; injected so that parsing stays pure. */
export interface ParseOptions {
  /** Reads a text file (for `AERO_PROXY_AUTH_TOKEN_FILE`). */
  readonly readFile?: (path: string) => string;
  /** The CPU count that `AERO_PROXY_WORKERS=auto` stands for (`navigator.hardwareConcurrency`). @default 1 */
  readonly cpuCount?: number;
}

/** Tokens shorter than this many bytes are weak. */
export const MIN_TOKEN_BYTES = 16;

/** Whether `host` only accepts connections from this machine. */
export function isLoopbackHost(host: string): boolean {
  return host === "localhost" || host === "::1" || host === "[::1]" || /^127\.\d+\.\d+\.\d+$/.test(host);
}

const DIGITS = /^[0-9]+$/;
const TOKEN_CHARS = /^[\x21-\x7e]+$/;

function parseInteger(text: string, min: number, max: number): number | undefined {
  if (!DIGITS.test(text)) return undefined;
  const value = Number(text);
  return Number.isSafeInteger(value) && value >= min && value <= max ? value : undefined;
}

/** Parses a comma-separated list of ports and port ranges such as `25,465-587`. */
export function parsePortList(text: string): number[] | undefined {
  const ports = new Set<number>();
  for (const part of text.split(",").map((p) => p.trim()).filter((p) => p !== "")) {
    const [first = "", last = first, extra] = part.split("-");
    if (extra !== undefined) return undefined;
    const low = parseInteger(first.trim(), 1, 65535);
    const high = parseInteger(last.trim(), 1, 65535);
    if (low === undefined || high === undefined || high < low) return undefined;
    for (let port = low; port <= high; port++) ports.add(port);
  }
  return [...ports].sort((a, b) => a - b);
}

function splitList(text: string): string[] {
  return text.split(",").map((p) => p.trim()).filter((p) => p !== "");
}

/** Whether `text` is the explicit empty list, `none` (any case). */
function isNone(text: string): boolean {
  return text.trim().toLowerCase() === "none";
}

function formatIpv4(value: number): string {
  return [value >>> 24, (value >>> 16) & 0xff, (value >>> 8) & 0xff, value & 0xff].join(".");
}

/**
 * The CIDR `text` names, if its address has host bits set (as in `10.0.0.1/8`): then the network address it
 * was probably meant to be (`10.0.0.0/8`). `undefined` for a CIDR without host bits or one that does not parse.
 */
export function cidrNetworkIfHostBitsSet(text: string): string | undefined {
  const cidr = parseCidr(text);
  if (cidr === undefined) return ipv6NetworkIfHostBitsSet(text);
  const [address = "", prefix = "32"] = cidr.text.split("/");
  const octets = ipaddr.IPv4.parse(address).octets;
  const value = ((octets[0]! << 24) | (octets[1]! << 16) | (octets[2]! << 8) | octets[3]!) >>> 0;
  return value === cidr.network ? undefined : `${formatIpv4(cidr.network)}/${Number(prefix)}`;
}

/** {@linkcode cidrNetworkIfHostBitsSet} for an IPv6 CIDR: `fc00::1/7` gives `fc00::/7`. */
function ipv6NetworkIfHostBitsSet(text: string): string | undefined {
  const cidr = parseCidr6(text);
  if (cidr === undefined) return undefined;
  const [address = ""] = cidr.text.split("/");
  const full = parseCidr6(address);
  if (full === undefined || full.network === cidr.network) return undefined;
  const bytes: number[] = [];
  for (let i = 15; i >= 0; i--) bytes.push(Number((cidr.network >> BigInt(i * 8)) & 0xffn));
  return `${ipaddr.fromByteArray(bytes).toString()}/${cidr.prefix}`;
}

/**
 * The `--max-sockets` value that `auto` stands for: 90 % of the process's open-file limit, less 64 for
 * the listener, log output and other descriptors the relay itself holds. At least 1.
 */
export function autoMaxSockets(openFileLimit: number): number {
  return Math.max(1, Math.floor(openFileLimit * 0.9) - 64);
}

/** Kinds that are lists and accept `none` for the empty list. */
const NONE_KINDS: ReadonlySet<Kind> = new Set(["cidrs", "ports", "hosts"]);

/** Converts one option's text to its value, or returns an error sentence. */
function convert(
  spec: OptionSpec,
  text: string,
  options: ParseOptions = {},
): { value: unknown } | { problem: string } {
  const bad = (accepted: string) => ({
    problem: `${spec.env} must be ${accepted}, got ${JSON.stringify(text)}`,
  });
  if (NONE_KINDS.has(spec.kind)) {
    if (isNone(text)) return { value: [] };
    // A blank value (or only commas) must not silently drop a safety default (AERO_PROXY_DENY_PORTS=25).
    if (splitList(text).length === 0 && splitList(spec.default).length > 0) {
      return {
        problem: `${spec.env} is empty, which would drop its default ${JSON.stringify(spec.default)}: ` +
          `write ${spec.env}=none to mean no entries`,
      };
    }
  }
  switch (spec.kind) {
    case "host":
      return text.trim() === "" || /\s/.test(text)
        ? bad("a host name or IP address")
        : { value: text.trim() };
    case "port": {
      const value = parseInteger(text.trim(), 0, 65535);
      return value === undefined ? bad("an integer from 0 to 65535") : { value };
    }
    case "tokens": {
      const tokens = splitList(text);
      if (text.trim() !== "" && tokens.length === 0) return bad("one or more tokens separated by commas");
      if (!tokens.every((t) => TOKEN_CHARS.test(t))) {
        return { problem: `${spec.env} must contain only printable ASCII characters without spaces` };
      }
      return { value: tokens };
    }
    case "path":
      return { value: text.trim() };
    case "redis": {
      const value = text.trim();
      if (value === "") return { value };
      let url: URL | undefined;
      try {
        url = new URL(value);
      } catch {
        url = undefined;
      }
      return url !== undefined && (url.protocol === "redis:" || url.protocol === "rediss:") &&
          url.hostname !== ""
        ? { value }
        : bad("a redis:// or rediss:// URL with a host (or empty)");
    }
    case "text": {
      const value = text.trim();
      // Sent to every client as it is: printable text of a bounded size, never control characters.
      // deno-lint-ignore no-control-regex
      if (value.length > 1024 || /[\x00-\x1f\x7f]/.test(value)) {
        return bad("printable text of at most 1024 characters");
      }
      return { value };
    }
    case "origins": {
      const origins = splitList(text);
      for (const origin of origins) {
        if (origin === "*") continue;
        let parsed: URL | undefined;
        try {
          parsed = new URL(origin);
        } catch { /* reported below */ }
        if (parsed === undefined || parsed.origin !== origin) {
          return bad(
            "* or comma-separated origins such as https://app.example.com (scheme, host, optional port)",
          );
        }
      }
      return { value: origins.length === 0 ? ["*"] : origins };
    }
    case "switch":
    case "bool": {
      const lower = text.trim().toLowerCase();
      if (lower === "1" || lower === "true") return { value: true };
      if (lower === "0" || lower === "false") return { value: false };
      return bad("1 or 0 (true or false)");
    }
    case "cidrs": {
      const cidrs = splitList(text);
      for (const cidr of cidrs) {
        if (parseAnyCidr(cidr) === undefined) {
          return bad("comma-separated IPv4 CIDRs such as 10.0.0.0/8 or IPv6 CIDRs such as fc00::/7, or none");
        }
        const network = cidrNetworkIfHostBitsSet(cidr);
        if (network !== undefined) {
          const [address = ""] = cidr.split("/");
          const single = `${address}/${address.includes(":") ? 128 : 32}`;
          return {
            problem:
              `${spec.env} must list network addresses, but ${JSON.stringify(cidr)} has host bits set: ` +
              `did you mean ${network}? (or ${single} for that one address)`,
          };
        }
      }
      return { value: cidrs };
    }
    case "hosts": {
      const patterns = splitList(text);
      for (const pattern of patterns) {
        if (parseHostPattern(pattern) === undefined) {
          return {
            problem: `${spec.env} must list host names or *.domain patterns (addresses belong in the CIDR ` +
              `lists), got ${JSON.stringify(pattern)}`,
          };
        }
      }
      return { value: patterns.map((p) => p.toLowerCase()) };
    }
    case "ports": {
      const ports = parsePortList(text);
      return ports === undefined
        ? bad("comma-separated ports or ranges from 1 to 65535, such as 25,8000-8100, or none")
        : {
          value: ports,
        };
    }
    case "count": {
      const max = spec.max ?? Number.MAX_SAFE_INTEGER;
      const value = parseInteger(text.trim(), 1, max);
      return value === undefined
        ? bad(`a positive integer${spec.max === undefined ? "" : ` up to ${max}`}`)
        : { value };
    }
    case "autocount": {
      if (text.trim().toLowerCase() === "auto") return { value: undefined };
      const value = parseInteger(text.trim(), 1, spec.max ?? Number.MAX_SAFE_INTEGER);
      return value === undefined
        ? bad(`auto or a positive integer${spec.max === undefined ? "" : ` up to ${spec.max}`}`)
        : { value };
    }
    case "workers": {
      const max = spec.max ?? MAX_WORKERS;
      if (text.trim().toLowerCase() === "auto") {
        const cpus = options.cpuCount ?? 1;
        return { value: Math.max(1, Math.min(max, Number.isSafeInteger(cpus) ? cpus : 1)) };
      }
      const value = parseInteger(text.trim(), 1, max);
      return value === undefined ? bad(`auto or a positive integer up to ${max}`) : { value };
    }
    case "rate": {
      const max = spec.max ?? Number.MAX_SAFE_INTEGER;
      const value = parseInteger(text.trim(), 0, max);
      return value === undefined
        ? bad(`a non-negative integer${spec.max === undefined ? "" : ` up to ${max}`} (0 = off or unlimited)`)
        : { value };
    }
    case "format": {
      const lower = text.trim().toLowerCase();
      return lower === "json" || lower === "pretty" ? { value: lower } : bad("json or pretty");
    }
    case "optport": {
      if (text.trim() === "") return { value: undefined };
      const value = parseInteger(text.trim(), 0, 65535);
      return value === undefined ? bad("empty (off) or an integer from 0 to 65535") : { value };
    }
    case "level": {
      const lower = text.trim().toLowerCase();
      return (LOG_LEVELS as readonly string[]).includes(lower)
        ? { value: lower }
        : bad(`one of ${LOG_LEVELS.join(", ")}`);
    }
  }
}

/** Switches are bare flags (`--demo`); every other option takes a value. */
function flagType(spec: OptionSpec): "boolean" | "string" {
  return spec.kind === "switch" ? "boolean" : "string";
}

/** The environment variables the relay reads; `main.ts` reads exactly these. */
export const ENV_NAMES: readonly string[] = OPTIONS.map((o) => o.env);

/**
 * Builds the configuration from defaults, then `env`, then `args` (flags win).
 *
 * @param env environment variables (only the `AERO_PROXY_*` names in {@linkcode OPTIONS} are read)
 * @param args command-line arguments, without the program name
 * @throws {ConfigError} naming every bad value; nothing is half-applied
 */
export function parseCommand(
  env: Readonly<Record<string, string | undefined>>,
  args: readonly string[],
  options: ParseOptions = {},
): Command {
  let parsed;
  try {
    parsed = parseArgs({
      args: [...args],
      strict: true,
      allowPositionals: false,
      options: {
        help: { type: "boolean", short: "h" },
        version: { type: "boolean", short: "V" },
        healthcheck: { type: "boolean" },
        ...Object.fromEntries(OPTIONS.map((o) => [o.flag, { type: flagType(o) }])),
      },
    });
  } catch (err: unknown) {
    throw new ConfigError([err instanceof Error ? err.message : String(err)]);
  }
  const flags = parsed.values as Record<string, string | boolean | undefined>;
  if (flags.help === true) return { kind: "help" };
  if (flags.version === true) return { kind: "version" };

  const values: Record<string, unknown> = {};
  const problems: string[] = [];
  for (const spec of OPTIONS) {
    const fromFlag = flags[spec.flag];
    // A bare switch (`--demo`) means "1".
    const flagText = fromFlag === true ? "1" : fromFlag;
    const text = typeof flagText === "string" ? flagText : env[spec.env] ?? spec.default;
    const result = convert(spec, text, options);
    if ("problem" in result) {
      problems.push(
        typeof fromFlag === "string" ? result.problem.replaceAll(spec.env, `--${spec.flag}`) : result.problem,
      );
    } else {
      values[spec.key] = result.value;
    }
  }
  if (problems.length === 0 && (values.wsLowWatermark as number) > (values.wsHighWatermark as number)) {
    problems.push("AERO_PROXY_WS_LOW_WATERMARK must not exceed AERO_PROXY_WS_HIGH_WATERMARK");
  }
  if (problems.length === 0 && (values.streamQueueBytes as number) > (values.sessionQueueBytes as number)) {
    problems.push("AERO_PROXY_STREAM_QUEUE_BYTES must not exceed AERO_PROXY_SESSION_QUEUE_BYTES");
  }
  if (
    problems.length === 0 &&
    (values.redisLeaseMs as number) < Math.max(1000, 3 * (values.redisTimeoutMs as number))
  ) {
    // Renewed every third of the lease, each renewal allowed the command timeout: a shorter lease runs out
    // between renewals and the shared caps stop counting live sessions.
    problems.push(
      "AERO_PROXY_REDIS_LEASE_MS must be at least 1000 and at least 3 x AERO_PROXY_REDIS_TIMEOUT_MS",
    );
  }
  if (problems.length === 0 && (values.tlsCertFile === "") !== (values.tlsKeyFile === "")) {
    problems.push("AERO_PROXY_TLS_CERT_FILE and AERO_PROXY_TLS_KEY_FILE must be set together");
  }
  const warnings: string[] = [];
  if (problems.length === 0) checkTokens(values, problems, warnings, options);
  if (problems.length > 0) throw new ConfigError(problems);
  const config = Object.freeze(values as unknown as Config);
  return { kind: flags.healthcheck === true ? "healthcheck" : "run", config, warnings };
}

const encoder = new TextEncoder();

/** Resolves the token file and refuses weak tokens where they could be guessed from the network. */
function checkTokens(
  values: Record<string, unknown>,
  problems: string[],
  warnings: string[],
  options: ParseOptions,
) {
  const file = values.authTokenFile as string;
  if (file !== "") {
    if ((values.authTokens as string[]).length > 0) {
      problems.push("Set AERO_PROXY_AUTH_TOKEN or AERO_PROXY_AUTH_TOKEN_FILE, not both");
      return;
    }
    let text: string;
    try {
      if (options.readFile === undefined) throw new Error("reading files is not available here");
      text = options.readFile(file);
    } catch (err: unknown) {
      problems.push(
        `AERO_PROXY_AUTH_TOKEN_FILE ${JSON.stringify(file)} cannot be read: ${
          err instanceof Error ? err.message : err
        }`,
      );
      return;
    }
    const tokens = text.split(/[\r\n,]+/).map((t) => t.trim()).filter((t) => t !== "");
    if (tokens.length === 0 || !tokens.every((t) => TOKEN_CHARS.test(t))) {
      problems.push(
        `AERO_PROXY_AUTH_TOKEN_FILE ${
          JSON.stringify(file)
        } must hold one or more tokens of printable ASCII, one a line`,
      );
      return;
    }
    values.authTokens = tokens;
  }
  const weak = (values.authTokens as string[]).filter((t) => encoder.encode(t).byteLength < MIN_TOKEN_BYTES);
  if (weak.length === 0 || values.allowWeakToken === true) return;
  const host = values.host as string;
  const what = `${
    weak.length === 1 ? "a token is" : `${weak.length} tokens are`
  } shorter than ${MIN_TOKEN_BYTES} bytes`;
  if (isLoopbackHost(host)) {
    warnings.push(`Weak token: ${what}; accepted only because the relay listens on loopback (${host})`);
  } else {
    problems.push(
      `AERO_PROXY_AUTH_TOKEN: ${what}, which is refused on a listener reachable from the network (${host}); ` +
        "use a longer token (e.g. openssl rand -hex 24) or set AERO_PROXY_ALLOW_WEAK_TOKEN=1",
    );
  }
}

/** The configuration with every default and the given overrides (for tests and embedding). */
export function defaultConfig(overrides: Partial<Config> = {}): Config {
  const command = parseCommand({}, []);
  if (command.kind !== "run") throw new Error("unreachable: no flags were given");
  return Object.freeze({ ...command.config, ...overrides });
}

/** The `--help` text: every option with its flag, environment variable and default. */
export function helpText(): string {
  const lines = [
    "aero-net-proxy: a WebSocket to TCP relay for browsers (tcp-mux protocol v1)",
    "",
    "Usage: aero-net-proxy [options]",
    "",
    "Every option can also be set by its environment variable; a flag wins over the variable.",
    "",
    "Options:",
  ];
  for (const o of OPTIONS) {
    lines.push(
      o.kind === "switch" ? `  --${o.flag}` : `  --${o.flag}=VALUE`,
      `      ${o.description}`,
      `      env ${o.env}, default ${o.default === "" ? "(none)" : o.default}`,
    );
  }
  lines.push(
    "  -h, --help",
    "      Print this help and exit",
    "  -V, --version",
    "      Print the version and exit",
  );
  return lines.join("\n");
}
