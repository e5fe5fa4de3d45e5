/**
 * Counters of one relay, and their Prometheus exposition.
 *
 * The hot path only adds to plain number fields; prom-client reads them when `/metrics` is scraped. Histograms are
 * observed once per stream, never per frame.
 * @module
 */
import process from "node:process";
import client from "prom-client";

const DURATION_BUCKETS = [0.01, 0.1, 0.5, 1, 5, 15, 60, 300, 1800, 3600];
const CONNECT_BUCKETS = [0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10];

/** Figures that are read where they live rather than counted. */
export interface LiveFigures {
  /** Client connections open now, upgraded or not. */
  connections(): number;
  /** Connections that have not finished their request yet. */
  pendingConnections(): number;
  socketsUsed(): number;
  socketLimit(): number;
  /** Client bytes queued towards targets across all sessions. */
  queuedBytes(): number;
  /** Bytes of WebSocket messages (and aero-tcp-mux-v1 frames) still arriving, across all sessions. */
  assemblingBytes(): number;
  /** Name lookups running now. */
  lookupsInFlight(): number;
}

/** Counters and gauges of one relay instance. */
export class Metrics {
  sessionsActive = 0;
  sessionsTotal = 0;
  streamsActive = 0;
  streamsTotal = 0;
  framesFromClient = 0;
  framesToClient = 0;
  /** WebSocket message bytes, headers included. */
  bytesFromClient = 0;
  bytesToClient = 0;
  /** Stream payload bytes written to targets and read from targets. */
  bytesToTargets = 0;
  bytesFromTargets = 0;
  authFailures = 0;
  /** Times a stream's reader paused for the WebSocket send buffer to drain. */
  backpressurePauses = 0;
  /** Streams ended with ERROR 8 because their target did not read fast enough. */
  backpressureErrors = 0;
  readonly policyDenied = new Map<string, number>();
  /** Upgrade requests refused before a session existed (other than auth), by kind. */
  readonly rejectedUpgrades = new Map<string, number>();
  readonly rateLimited = new Map<string, number>();
  /** ERROR frames sent, by code. */
  readonly errorsSent = new Map<string, number>();
  /** Streams ended, by reason. */
  readonly streamsClosed = new Map<string, number>();
  /** Connections the listener turned away or dropped before their request was answered, by kind. */
  readonly connectionsRefused = new Map<string, number>();
  /** Failed `accept` calls (such as running out of descriptors), each retried after a backoff. */
  acceptErrors = 0;
  /** 1 while Redis answers, 0 while it does not, -1 when no Redis is configured (limits are per process). */
  redisUp = -1;
  /** Redis operations that failed or timed out (the relay decided on its local limits), by operation. */
  readonly redisErrors = new Map<string, number>();
  /** X-Forwarded-For values ignored because their last entry is not an IP address. */
  forwardedInvalid = 0;
  /** Bytes of OPEN metadata (aero-tcp-mux-v1) received; accepted and counted, never logged. */
  openMetadataBytes = 0;
  /** Times a session stopped reading its WebSocket because its upload queues were over budget. */
  uploadPauses = 0;
  /** UDP bindings open now. */
  udpBindingsActive = 0;
  /** Datagrams relayed, client to target and target to client. */
  datagramsToTargets = 0;
  datagramsFromTargets = 0;
  /** Datagrams dropped (too large, over the rate, WebSocket congested, ...), by reason. */
  readonly datagramsDropped = new Map<string, number>();
  /** Wisp CLOSE packets sent, by reason name. */
  readonly wispClosesSent = new Map<string, number>();
  /** DoH queries answered, by outcome (NOERROR, NXDOMAIN, FORMERR, SERVFAIL, NOTIMP, rate_limited). */
  readonly dohQueries = new Map<string, number>();
  /** Addresses left out of DoH answers because the relay would not dial them. */
  dohAddressesFiltered = 0;
  /** Sessions accepted, by protocol (seed, aero-tcp-mux-v1, tcp, wisp-v1, wisp-v2). */
  readonly sessionsByProtocol = new Map<string, number>();
  /** Live figures read at scrape time (set by the relay that owns the listener and the budgets). */
  live: LiveFigures | undefined;

  #registry: client.Registry | undefined;
  #connectSeconds: client.Histogram | undefined;
  #durationSeconds: client.Histogram | undefined;
  readonly #info: Record<string, string>;

  /** @param info labels of the `aero_proxy_info` gauge, e.g. the version */
  constructor(info: Record<string, string> = {}) {
    this.#info = info;
  }

  /** Adds one to a labelled counter. */
  static bump<K>(map: Map<K, number>, key: K): void {
    map.set(key, (map.get(key) ?? 0) + 1);
  }

  /** Records a finished stream: how long the connect took (if it connected) and how long the stream lived. */
  observeStream(reason: string, connectMs: number | undefined, durationMs: number): void {
    Metrics.bump(this.streamsClosed, reason);
    this.registry(); // builds the histograms on first use
    if (connectMs !== undefined) this.#connectSeconds!.observe(connectMs / 1000);
    this.#durationSeconds!.observe(durationMs / 1000);
  }

  /** The Prometheus text exposition of every metric. */
  exposition(): Promise<string> {
    return this.registry().metrics();
  }

  /** Every metric as prom-client's JSON, for a supervisor to aggregate over its workers. */
  json(): Promise<client.MetricObjectWithValues<client.MetricValue<string>>[]> {
    return this.registry().getMetricsAsJSON();
  }

  /** The content type of {@linkcode exposition}. */
  get contentType(): string {
    return this.registry().contentType;
  }

  /** The prom-client registry, built on first use. */
  registry(): client.Registry {
    if (this.#registry !== undefined) return this.#registry;
    const registry = new client.Registry();
    const registers = [registry];
    // deno-lint-ignore no-this-alias
    const m = this;
    // `aggregator` says how a supervisor combines the workers' values (prom-client's AggregatorRegistry):
    // counts sum to the host's total; a few gauges below say otherwise.
    const gauge = (name: string, help: string, read: () => number, aggregator: client.Aggregator = "sum") =>
      new client.Gauge({
        name,
        help,
        registers,
        aggregator,
        collect() {
          this.set(read());
        },
      });
    const counter = (name: string, help: string, read: () => number) =>
      new client.Counter({
        name,
        help,
        registers,
        collect() {
          this.reset();
          this.inc(read());
        },
      });
    const labelled = <K>(
      name: string,
      help: string,
      label: string,
      map: Map<K, number>,
      name2 = (k: K) => String(k),
    ) =>
      new client.Counter({
        name,
        help,
        labelNames: [label],
        registers,
        collect() {
          this.reset();
          for (const [key, value] of map) this.inc({ [label]: name2(key) }, value);
        },
      });
    const directed = (
      name: string,
      help: string,
      into: () => number,
      out: () => number,
      a: string,
      b: string,
    ) =>
      new client.Counter({
        name,
        help,
        labelNames: ["direction"],
        registers,
        collect() {
          this.reset();
          this.inc({ direction: a }, into());
          this.inc({ direction: b }, out());
        },
      });

    gauge("aero_proxy_sessions_active", "WebSocket sessions open now", () => m.sessionsActive);
    counter("aero_proxy_sessions_total", "WebSocket sessions accepted", () => m.sessionsTotal);
    gauge("aero_proxy_streams_active", "TCP streams open or connecting now", () => m.streamsActive);
    counter(
      "aero_proxy_streams_total",
      "TCP streams accepted (OPENs that passed policy and limits)",
      () => m.streamsTotal,
    );
    labelled("aero_proxy_streams_closed_total", "TCP streams ended, by reason", "reason", m.streamsClosed);
    directed(
      "aero_proxy_websocket_bytes_total",
      "WebSocket message bytes, headers included",
      () => m.bytesFromClient,
      () => m.bytesToClient,
      "from_client",
      "to_client",
    );
    directed(
      "aero_proxy_websocket_frames_total",
      "WebSocket messages (protocol frames)",
      () => m.framesFromClient,
      () => m.framesToClient,
      "from_client",
      "to_client",
    );
    directed(
      "aero_proxy_target_bytes_total",
      "Stream payload bytes exchanged with targets",
      () => m.bytesToTargets,
      () => m.bytesFromTargets,
      "to_target",
      "from_target",
    );
    counter(
      "aero_proxy_auth_failures_total",
      "Upgrades refused for a missing or wrong token",
      () => m.authFailures,
    );
    labelled(
      "aero_proxy_upgrades_rejected_total",
      "Upgrades refused by a rule or limit, by kind",
      "kind",
      m.rejectedUpgrades,
    );
    labelled(
      "aero_proxy_policy_denied_total",
      "OPENs denied by the destination policy, by rule",
      "rule",
      m.policyDenied,
    );
    labelled("aero_proxy_rate_limited_total", "Limits hit, by kind", "kind", m.rateLimited);
    gauge(
      "aero_proxy_redis_up",
      "1 while the Redis that shares the limits answers, 0 while it does not, -1 without Redis",
      () => m.redisUp,
      "min",
    );
    labelled(
      "aero_proxy_redis_errors_total",
      "Redis operations that failed or timed out (local limits decided), by operation",
      "operation",
      m.redisErrors,
    );
    labelled(
      "aero_proxy_errors_sent_total",
      "ERROR frames sent, by code name",
      "code",
      m.errorsSent,
    );
    counter(
      "aero_proxy_backpressure_pauses_total",
      "Times a stream stopped reading its target until the WebSocket drained",
      () => m.backpressurePauses,
    );
    counter(
      "aero_proxy_backpressure_errors_total",
      "Streams ended with ERROR 8 because their target did not keep up",
      () => m.backpressureErrors,
    );
    labelled(
      "aero_proxy_connections_refused_total",
      "Connections turned away or dropped before their request was answered, by kind",
      "kind",
      m.connectionsRefused,
    );
    counter(
      "aero_proxy_accept_errors_total",
      "Failed accepts (such as no descriptor left), retried after a backoff",
      () => m.acceptErrors,
    );
    counter(
      "aero_proxy_forwarded_invalid_total",
      "X-Forwarded-For headers ignored because the last entry is not an IP address",
      () => m.forwardedInvalid,
    );
    counter(
      "aero_proxy_open_metadata_bytes_total",
      "Bytes of OPEN metadata received (aero-tcp-mux-v1); counted, never logged",
      () => m.openMetadataBytes,
    );
    counter(
      "aero_proxy_upload_pauses_total",
      "Times a session stopped reading its WebSocket while its upload queues were over budget",
      () => m.uploadPauses,
    );
    gauge("aero_proxy_udp_bindings_active", "UDP bindings open now", () => m.udpBindingsActive);
    directed(
      "aero_proxy_udp_datagrams_total",
      "Datagrams relayed",
      () => m.datagramsToTargets,
      () => m.datagramsFromTargets,
      "to_target",
      "from_target",
    );
    labelled(
      "aero_proxy_udp_datagrams_dropped_total",
      "Datagrams dropped (UDP semantics: never queued), by reason",
      "reason",
      m.datagramsDropped,
    );
    labelled(
      "aero_proxy_wisp_closes_sent_total",
      "Wisp CLOSE packets sent, by reason",
      "reason",
      m.wispClosesSent,
    );
    labelled("aero_proxy_doh_queries_total", "DNS-over-HTTPS queries, by outcome", "outcome", m.dohQueries);
    counter(
      "aero_proxy_doh_addresses_filtered_total",
      "Addresses left out of DoH answers by the destination policy",
      () => m.dohAddressesFiltered,
    );
    labelled(
      "aero_proxy_sessions_by_protocol_total",
      "Sessions accepted, by protocol",
      "protocol",
      m.sessionsByProtocol,
    );
    gauge("aero_proxy_connections_open", "Client connections open now", () => m.live?.connections() ?? 0);
    gauge(
      "aero_proxy_connections_pending",
      "Client connections that have not finished their request",
      () => m.live?.pendingConnections() ?? 0,
    );
    gauge(
      "aero_proxy_sockets_used",
      "Sockets held: clients, targets, lingering",
      () => m.live?.socketsUsed() ?? 0,
    );
    gauge("aero_proxy_sockets_limit", "The socket budget", () => m.live?.socketLimit() ?? 0);
    gauge(
      "aero_proxy_queued_bytes",
      "Client bytes queued towards targets across all sessions",
      () => m.live?.queuedBytes() ?? 0,
    );
    gauge(
      "aero_proxy_assembling_bytes",
      "Bytes of WebSocket messages still arriving, across all sessions",
      () => m.live?.assemblingBytes() ?? 0,
    );
    gauge(
      "aero_proxy_lookups_in_flight",
      "Target name lookups running now (capped relay-wide)",
      () => m.live?.lookupsInFlight() ?? 0,
    );
    this.#connectSeconds = new client.Histogram({
      name: "aero_proxy_connect_duration_seconds",
      help: "Time from OPEN to an established TCP connection",
      buckets: CONNECT_BUCKETS,
      registers,
    });
    this.#durationSeconds = new client.Histogram({
      name: "aero_proxy_stream_duration_seconds",
      help: "Lifetime of TCP streams",
      buckets: DURATION_BUCKETS,
      registers,
    });
    // Process metrics: prom-client's own collectors read /proc, which Deno's sandbox keeps closed.
    const startSeconds = Math.round(Date.now() / 1000 - performance.now() / 1000);
    gauge("process_resident_memory_bytes", "Resident memory size in bytes", () => Deno.memoryUsage().rss);
    gauge("process_heap_bytes", "JavaScript heap in use, in bytes", () => Deno.memoryUsage().heapUsed);
    // Across workers: the oldest start (a restarted worker does not make the host look younger).
    gauge(
      "process_start_time_seconds",
      "Start time of the process since the Unix epoch",
      () => startSeconds,
      "min",
    );
    counter("process_cpu_seconds_total", "User and system CPU time spent, in seconds", () => {
      const { user, system } = process.cpuUsage();
      return (user + system) / 1e6;
    });
    new client.Gauge({
      name: "aero_proxy_info",
      help: "Build information",
      labelNames: ["version", "deno"],
      registers,
      // Every worker runs the same build: one series of 1, not the count of workers.
      aggregator: "first",
      collect() {
        this.set({ version: m.#info.version ?? "unknown", deno: Deno.version.deno }, 1);
      },
    });
    this.#registry = registry;
    return registry;
  }
}
