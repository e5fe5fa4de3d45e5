/**
 * DNS over HTTPS for the guest (`../shared/spec/aero-gateway-net-api.md` section 4): RFC 8484 `GET` and `POST`
 * on `/dns-query`, and the JSON subset on `/dns-json`, answered from the system resolver through a timeout and a
 * small TTL-bounded cache.
 *
 * The answers go through the destination policy: an address the relay would refuse to dial is left out, and
 * when nothing is left the answer is NOERROR with no data, so internal names never leak to the guest. Messages
 * are parsed and built with `dns-packet`. Malformed queries get FORMERR with HTTP 400, over-size ones 413, a
 * wrong content type 415, a client over its rate 429 with SERVFAIL: always a DNS message the client can read the
 * id from. Only A and AAAA are resolved (and CNAME on `/dns-json` when the resolver can say); other types get
 * NOTIMP.
 * @module
 */
// @ts-types="@types/dns-packet"
import dnsPacket from "dns-packet";
import { Buffer } from "node:buffer";
import type { HostPolicy } from "../policy/hosts.ts";
import type { AddressPolicy } from "../policy/policy.ts";
import { parseAddress } from "../policy/policy.ts";
import { TokenBucket } from "../rate_limit.ts";

export const DOH_PATH = "/dns-query";
export const DOH_JSON_PATH = "/dns-json";
/** Largest DNS message accepted, in a POST body or decoded from `?dns=` (RFC 8484 allows 65,535; queries are small). */
export const DOH_MAX_QUERY_BYTES = 4096;

/** DNS response codes used here (RFC 1035 4.1.1). */
const RCODE = { NOERROR: 0, FORMERR: 1, SERVFAIL: 2, NXDOMAIN: 3, NOTIMP: 4 } as const;
const RCODE_NAMES: Record<number, string> = {
  0: "NOERROR",
  1: "FORMERR",
  2: "SERVFAIL",
  3: "NXDOMAIN",
  4: "NOTIMP",
};
const TYPE_NUMBERS: Record<string, number> = { A: 1, CNAME: 5, AAAA: 28 };

/**
 * Looks `name` up for one address family (answers of the other family are ignored): throws `Deno.errors.NotFound`
 * when there is no such name, returns an empty list when the name has no address of that family.
 */
export type DohResolver = (name: string, family: 4 | 6, signal: AbortSignal) => Promise<string[]>;
/** CNAME targets of `name`, when the resolver can tell (the system resolver cannot, through getaddrinfo). */
export type CnameResolver = (name: string, signal: AbortSignal) => Promise<string[]>;

/** What the DoH endpoints need. */
export interface DohOptions {
  readonly policy: AddressPolicy;
  /** The host name rules (`ALLOW_HOSTS`, `DENY_HOSTS`): a name the relay would not dial is not resolved. */
  readonly hostPolicy: HostPolicy;
  readonly resolve: DohResolver;
  readonly resolveCname?: CnameResolver;
  readonly timeoutMs: number;
  /** Answers are cached this long, and this is the TTL they carry (getaddrinfo gives none). */
  readonly ttlSeconds: number;
  /** Queries per second per client IP (a burst of twice that); 0 = unlimited. */
  readonly queriesPerSec: number;
  /** Called for each query, with its outcome, for the metrics. */
  readonly onQuery?: (outcome: string) => void;
  /** Called with the number of addresses the policy left out of an answer. */
  readonly onFiltered?: (count: number) => void;
}

/** A question the endpoints answer. */
interface Question {
  readonly name: string;
  readonly type: string;
}

/** An answer to one question. */
interface Answer {
  readonly rcode: number;
  readonly records: readonly { name: string; type: string; ttl: number; data: string }[];
}

const CACHE_MAX = 1024;
const RATE_MAX_CLIENTS = 10_000;

/** The DoH endpoints of one relay. */
export class Doh {
  readonly #options: DohOptions;
  readonly #cache = new Map<string, { expires: number; answer: Answer }>();
  readonly #buckets = new Map<string, TokenBucket>();

  constructor(options: DohOptions) {
    this.#options = options;
  }

  /** Whether the client at `ip` may ask one more question now. */
  admit(ip: string): boolean {
    const rate = this.#options.queriesPerSec;
    if (rate <= 0) return true;
    let bucket = this.#buckets.get(ip);
    if (bucket === undefined) {
      // Bounded: the oldest client's bucket goes first (it refills to full anyway).
      if (this.#buckets.size >= RATE_MAX_CLIENTS) this.#buckets.delete(this.#buckets.keys().next().value!);
      bucket = new TokenBucket(rate, 2 * rate);
      this.#buckets.set(ip, bucket);
    }
    return bucket.tryTake(1);
  }

  /** `/dns-query`, GET or POST (the caller has checked auth, origin and rate). */
  async query(request: Request, url: URL, limited: boolean): Promise<Response> {
    let bytes: Uint8Array | undefined;
    if (request.method === "GET") {
      const param = url.searchParams.get("dns");
      if (param === null || param === "") return this.#formerr(400, 0, "missing the dns parameter");
      if (param.length > Math.ceil(DOH_MAX_QUERY_BYTES * 4 / 3)) {
        return this.#formerr(413, 0, "query too large");
      }
      bytes = decodeBase64Url(param);
      if (bytes === undefined) return this.#formerr(400, 0, "the dns parameter is not base64url");
    } else if (request.method === "POST") {
      const type = request.headers.get("content-type")?.split(";")[0]?.trim().toLowerCase();
      if (type !== "application/dns-message") {
        return this.#formerr(415, 0, "expected application/dns-message");
      }
      bytes = new Uint8Array(await request.arrayBuffer());
      if (bytes.byteLength > DOH_MAX_QUERY_BYTES) return this.#formerr(413, idOf(bytes), "query too large");
    } else {
      return new Response("Method Not Allowed\n", { status: 405, headers: { allow: "GET, POST, OPTIONS" } });
    }
    let packet: dnsPacket.Packet;
    try {
      packet = dnsPacket.decode(Buffer.from(bytes));
    } catch {
      return this.#formerr(400, idOf(bytes), "malformed DNS message");
    }
    const id = packet.id ?? 0;
    if (packet.type !== "query" || (packet.questions?.length ?? 0) !== 1) {
      return this.#formerr(400, id, "expected a query with one question");
    }
    const question = packet.questions![0]!;
    const rd = ((packet.flags ?? 0) & dnsPacket.RECURSION_DESIRED) !== 0;
    if (limited) {
      this.#options.onQuery?.("rate_limited");
      return this.#message(429, id, rd, question, { rcode: RCODE.SERVFAIL, records: [] }, bytes);
    }
    // Only standard queries in class IN are answered; anything else (an update, a notify, class CH) is NOTIMP.
    const opcode = (packet as { opcode?: string }).opcode ?? "QUERY";
    const answer = opcode !== "QUERY" || (question.class ?? "IN") !== "IN"
      ? { rcode: RCODE.NOTIMP, records: [] }
      : await this.#answer({ name: question.name, type: question.type }, false);
    this.#options.onQuery?.(RCODE_NAMES[answer.rcode] ?? String(answer.rcode));
    return this.#message(200, id, rd, question, answer, bytes);
  }

  /** `/dns-json?name=&type=` (the caller has checked auth, origin and rate). */
  async json(url: URL, limited: boolean): Promise<Response> {
    const name = url.searchParams.get("name")?.replace(/\.$/, "") ?? "";
    const typeParam = (url.searchParams.get("type") ?? "A").toUpperCase();
    const type = /^\d+$/.test(typeParam)
      ? Object.keys(TYPE_NUMBERS).find((key) => TYPE_NUMBERS[key] === Number(typeParam))
      : typeParam in TYPE_NUMBERS
      ? typeParam
      : undefined;
    if (name === "" || name.length > 253 || type === undefined) {
      return jsonResponse(400, {
        error: "bad_request",
        message: "name and a type of A, AAAA or CNAME are required",
      });
    }
    if (limited) {
      this.#options.onQuery?.("rate_limited");
      return jsonResponse(429, { error: "rate_limited", message: "too many queries from this address" });
    }
    const answer = await this.#answer({ name, type }, true);
    this.#options.onQuery?.(RCODE_NAMES[answer.rcode] ?? String(answer.rcode));
    return jsonResponse(200, {
      Status: answer.rcode,
      TC: false,
      RD: true,
      RA: true,
      AD: false,
      CD: false,
      Question: [{ name, type: TYPE_NUMBERS[type] }],
      ...(answer.records.length === 0 ? {} : {
        Answer: answer.records.map((r) => ({
          name: r.name,
          type: TYPE_NUMBERS[r.type],
          TTL: r.ttl,
          data: r.data,
        })),
      }),
    }, "application/dns-json");
  }

  /** Resolves a question (cached), keeping only addresses the relay would dial. */
  async #answer(question: Question, cnames: boolean): Promise<Answer> {
    const { name, type } = question;
    if (type !== "A" && type !== "AAAA" && !(type === "CNAME" && cnames)) {
      return { rcode: RCODE.NOTIMP, records: [] };
    }
    const key = `${type}|${name.toLowerCase()}`;
    const now = performance.now();
    const cached = this.#cache.get(key);
    if (cached !== undefined && cached.expires > now) return cached.answer;
    const answer = await this.#lookup(name, type);
    if (answer.rcode !== RCODE.SERVFAIL) {
      if (this.#cache.size >= CACHE_MAX) this.#cache.delete(this.#cache.keys().next().value!);
      this.#cache.set(key, { expires: now + this.#options.ttlSeconds * 1000, answer });
    }
    return answer;
  }

  async #lookup(name: string, type: string): Promise<Answer> {
    const { timeoutMs, ttlSeconds } = this.#options;
    // A name the relay would refuse to dial is answered like one whose addresses are all refused.
    if (!this.#options.hostPolicy(name.replace(/\.$/, "").toLowerCase(), "name").allowed) {
      return { rcode: RCODE.NOERROR, records: [] };
    }
    const signal = AbortSignal.timeout(timeoutMs);
    let found: string[];
    try {
      const pending = type === "CNAME"
        ? (this.#options.resolveCname ?? (() => Promise.resolve([])))(name, signal)
        : this.#options.resolve(name, type === "A" ? 4 : 6, signal);
      found = await Promise.race([
        pending,
        new Promise<never>((_, reject) => signal.addEventListener("abort", () => reject(signal.reason))),
      ]);
    } catch (err: unknown) {
      if (isNoSuchName(err)) return { rcode: RCODE.NXDOMAIN, records: [] };
      return { rcode: RCODE.SERVFAIL, records: [] };
    }
    if (type === "CNAME") {
      return { rcode: RCODE.NOERROR, records: found.map((data) => ({ name, type, ttl: ttlSeconds, data })) };
    }
    const records = [];
    let filtered = 0;
    for (const address of new Set(found)) {
      const ip = parseAddress(address);
      const family = ip?.length === 4 ? "A" : "AAAA";
      if (ip === undefined || family !== type) continue;
      if (!this.#options.policy.judgeIp(ip).allowed) {
        filtered++;
        continue;
      }
      records.push({ name, type, ttl: ttlSeconds, data: address });
    }
    if (filtered > 0) this.#options.onFiltered?.(filtered);
    // Everything left out by the policy (or no address of this family) is NOERROR with no data.
    return { rcode: RCODE.NOERROR, records };
  }

  #message(
    status: number,
    id: number,
    rd: boolean,
    question: dnsPacket.Question,
    answer: Answer,
    query: Uint8Array,
  ): Response {
    const ttl = answer.records.reduce((min, r) => Math.min(min, r.ttl), this.#options.ttlSeconds);
    const encoded = dnsPacket.encode({
      type: "response",
      id,
      // QR is set by dns-packet for responses; RD echoes the query's, RA says recursion is offered.
      flags: (rd ? dnsPacket.RECURSION_DESIRED : 0) | dnsPacket.RECURSION_AVAILABLE | answer.rcode,
      questions: [question],
      answers: answer.records.map((r) => ({ name: r.name, type: r.type as "A", ttl: r.ttl, data: r.data })),
    });
    // The question goes back byte for byte as the client sent it (stub resolvers compare it): dns-packet would
    // re-encode the name, and a label holding a "." or bytes that are not UTF-8 would not survive that.
    const bytes = withQuestionOf(new Uint8Array(encoded), query);
    return new Response(bytes, {
      status,
      headers: {
        "content-type": "application/dns-message",
        "cache-control": status === 200 ? `max-age=${ttl}` : "no-store",
      },
    });
  }

  /** FORMERR (or, for 413/415, the same) as a DNS message the client can still read, with HTTP `status`. */
  #formerr(status: number, id: number, why: string): Response {
    this.#options.onQuery?.("FORMERR");
    const bytes = dnsPacket.encode({ type: "response", id, flags: RCODE.FORMERR, questions: [] });
    return new Response(new Uint8Array(bytes), {
      status,
      headers: { "content-type": "application/dns-message", "cache-control": "no-store", "x-doh-error": why },
    });
  }
}

/** Whether a resolver's failure means the name does not exist (rather than that the lookup failed). */
function isNoSuchName(err: unknown): boolean {
  if (err instanceof Deno.errors.NotFound) return true;
  const failure = err as { cause?: { code?: unknown }; code?: unknown } | null;
  return failure?.code === "ENOTFOUND" || failure?.cause?.code === "ENOTFOUND";
}

/** A JSON response (errors, and `/dns-json` answers). */
export function jsonResponse(status: number, body: unknown, type = "application/json"): Response {
  return new Response(`${JSON.stringify(body)}\n`, {
    status,
    headers: { "content-type": type, "cache-control": "no-store" },
  });
}

/** End of the one question of a DNS message (after its type and class), or -1 if it does not parse. */
function questionEnd(message: Uint8Array): number {
  let at = 12;
  while (at < message.byteLength) {
    const length = message[at]!;
    if (length === 0) return at + 5 <= message.byteLength ? at + 5 : -1;
    if ((length & 0xc0) === 0xc0) return at + 6 <= message.byteLength ? at + 6 : -1;
    at += 1 + length;
  }
  return -1;
}

/** `response` with its question section replaced by `query`'s, byte for byte. */
function withQuestionOf(response: Uint8Array<ArrayBuffer>, query: Uint8Array): Uint8Array<ArrayBuffer> {
  const theirs = questionEnd(query);
  const ours = questionEnd(response);
  if (theirs < 0 || ours < 0) return response;
  const out = new Uint8Array(response.byteLength - ours + theirs);
  out.set(response.subarray(0, 12));
  out.set(query.subarray(12, theirs), 12);
  out.set(response.subarray(ours), theirs);
  return out;
}

/** The id a DNS message starts with (0 when it is too short to have one). */
function idOf(bytes: Uint8Array): number {
  return bytes.byteLength >= 2 ? (bytes[0]! << 8) | bytes[1]! : 0;
}

/** base64url without padding (RFC 8484 4.1), or undefined for anything else. */
function decodeBase64Url(text: string): Uint8Array | undefined {
  if (!/^[A-Za-z0-9_-]+$/.test(text)) return undefined;
  const padded = text.replaceAll("-", "+").replaceAll("_", "/").padEnd(Math.ceil(text.length / 4) * 4, "=");
  try {
    return Uint8Array.from(atob(padded), (c) => c.charCodeAt(0));
  } catch {
    return undefined;
  }
}
