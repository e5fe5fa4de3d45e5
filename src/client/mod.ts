/**
 * A typed `aero-tcp-mux-v1` client for browsers and Deno: one {@linkcode RelayClient} per relay session, one
 * {@linkcode RelayStream} (web streams, with half-close) per TCP connection. Dependency-free; `aero_client.js`
 * beside this file is the same code bundled for browsers (`deno task bundle`).
 * @module
 */
export {
  type Host,
  type Ipv4Address,
  parseIpv4,
  RelayClient,
  type RelayClientOptions,
  RelayStream,
  type TokenPlacement,
} from "./relay_client.ts";
export { RelayError, SessionClosedError, StreamResetError } from "./errors.ts";
export {
  MUX_ERROR_CODE_NAMES,
  MUX_V1_SUBPROTOCOL as AERO_MUX_SUBPROTOCOL,
  MuxErrorCode,
} from "../wire/aero_mux_v1_codec.ts";
