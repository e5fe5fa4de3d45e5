/**
 * A typed tcp-mux v1 client for browsers and Deno: one {@linkcode RelayClient} per relay session, one
 * {@linkcode RelayStream} (web streams) per TCP connection. Dependency-free; `aero_client.js` beside this file
 * is the same code bundled for browsers (`deno task bundle`).
 * @module
 */
export {
  type Ipv4Address,
  parseIpv4,
  RelayClient,
  type RelayClientOptions,
  RelayStream,
  type TokenPlacement,
} from "./relay_client.ts";
export { RelayError, SessionClosedError } from "./errors.ts";
export { ErrorCode, MUX_SUBPROTOCOL, TOKEN_SUBPROTOCOL_PREFIX } from "../protocol/mod.ts";
