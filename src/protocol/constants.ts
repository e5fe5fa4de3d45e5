/**
 * Wire constants of the tcp-mux protocol, version 1.
 *
 * Every number here is part of the contract with existing browser clients: never renumber.
 * @module
 */

/** Frame type byte, the first byte of every binary WebSocket message. */
export const FrameType = {
  OPEN: 1,
  DATA: 2,
  CLOSE: 3,
  ERROR: 4,
} as const;
export type FrameType = typeof FrameType[keyof typeof FrameType];

/** Error codes carried in ERROR frames. */
export const ErrorCode = {
  AUTH_REQUIRED: 1,
  AUTH_INVALID: 2,
  POLICY_DENIED: 3,
  RATE_LIMITED: 4,
  INVALID_FRAME: 5,
  CONNECT_FAILED: 6,
  SOCKET_ERROR: 7,
  BACKPRESSURE: 8,
  INTERNAL_ERROR: 9,
} as const;
export type ErrorCode = typeof ErrorCode[keyof typeof ErrorCode];

/** Names of the error codes, for logs and metrics labels. */
export const ERROR_CODE_NAMES: Readonly<Record<number, string>> = Object.freeze(
  Object.fromEntries(Object.entries(ErrorCode).map(([name, code]) => [code, name])),
);

/** `type` (u8) + `connection_id` (u32be). */
export const HEADER_SIZE = 5;
/** OPEN from the client: ip_version (u8) + IPv4 address (4 bytes) + port (u16be). */
export const OPEN_PAYLOAD_SIZE = 7;
/** ERROR payload before the message: code (u16be) + msg_len (u16be). */
export const ERROR_PREFIX_SIZE = 4;
/** The only address family protocol v1 carries. */
export const IP_VERSION_4 = 4;
/** Connection id 0 is reserved for session-level errors. */
export const SESSION_ID = 0;
/** Largest connection id (u32). */
export const MAX_CONNECTION_ID = 0xffff_ffff;
/** Longest ERROR message, in UTF-8 bytes (msg_len is a u16). */
export const MAX_ERROR_MESSAGE_BYTES = 0xffff;

/** The path on which the relay accepts WebSocket sessions. */
export const MUX_PATH = "/tcp-mux";

/**
 * The seed framing's own subprotocol name: what a client offers beside the token entry (a browser fails a
 * handshake that selects nothing it offered, and the relay never echoes the secret entry). Until 0.2 this was
 * `aero-tcp-mux-v1`, which is Aero's different framing; see README "Migrating from aero-tcp-mux-v1".
 */
export const MUX_SUBPROTOCOL = "aero-seed-mux-v1";
/** Aero's `aero-tcp-mux-v1` framing (src/wire/aero_mux_v1.ts). */
export const AERO_MUX_SUBPROTOCOL = "aero-tcp-mux-v1";
/** Prefix of the subprotocol entry that carries the token: `aero-token.<token>`. */
export const TOKEN_SUBPROTOCOL_PREFIX = "aero-token.";
