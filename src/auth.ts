/**
 * Token checks for the upgrade request, in constant time.
 * @module
 */
import { createHash, timingSafeEqual } from "node:crypto";
import { TOKEN_SUBPROTOCOL_PREFIX } from "./protocol/mod.ts";

function digest(text: string): Uint8Array {
  return createHash("sha256").update(text).digest();
}

/** Holds the accepted tokens as digests and compares candidates against all of them in constant time. */
export class TokenSet {
  readonly #digests: readonly Uint8Array[];

  constructor(tokens: readonly string[]) {
    if (tokens.length === 0) throw new RangeError("Cannot create TokenSet: no tokens");
    this.#digests = tokens.map(digest);
  }

  /** Whether `candidate` is one of the tokens. Compares digests, so neither length nor prefix leaks. */
  matches(candidate: string): boolean {
    const probe = digest(candidate);
    let found = false;
    for (const known of this.#digests) found = timingSafeEqual(probe, known) || found;
    return found;
  }
}

/**
 * A name for a token that per-token limits (and Redis keys) can carry without the token itself: 16 hex digits of
 * a hash that differs from the one compared above. The same token gives the same name on every replica.
 */
export function tokenId(token: string): string {
  return createHash("sha256").update("aero-net-proxy token id\0").update(token).digest("hex").slice(0, 16);
}

/** The subprotocols a WebSocket request offers, in order. */
export function offeredSubprotocols(headers: Headers): string[] {
  const header = headers.get("sec-websocket-protocol");
  return header === null ? [] : header.split(",").map((p) => p.trim()).filter((p) => p !== "");
}

/**
 * The token a request carries: `?token=` on the URL, else `Authorization: Bearer`, else a subprotocol entry
 * `aero-token.<token>` (browsers cannot set headers; this keeps the token out of URLs and access logs).
 */
export function tokenFromRequest(url: URL, headers: Headers): string | undefined {
  const fromQuery = url.searchParams.get("token");
  if (fromQuery !== null && fromQuery !== "") return fromQuery;
  const authorization = headers.get("authorization");
  const match = authorization === null ? null : /^Bearer[ ]+(\S+)\s*$/i.exec(authorization);
  if (match?.[1] !== undefined) return match[1];
  const offered = offeredSubprotocols(headers).find((p) => p.startsWith(TOKEN_SUBPROTOCOL_PREFIX));
  const fromProtocol = offered?.slice(TOKEN_SUBPROTOCOL_PREFIX.length);
  return fromProtocol === "" ? undefined : fromProtocol;
}

/** A random token: 32 bytes, base64url. */
export function generateToken(): string {
  const bytes = crypto.getRandomValues(new Uint8Array(32));
  return btoa(String.fromCharCode(...bytes)).replaceAll("+", "-").replaceAll("/", "_").replace(/=+$/, "");
}
