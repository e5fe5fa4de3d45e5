/**
 * Codec of Wisp: v1.2 (`../shared/spec/wisp-v1.md`) and the v2 draft 6 additions (`../shared/spec/wisp-v2.md`).
 * Pure functions over bytes: no I/O, no clock, no logger.
 *
 * Every packet is exactly one binary WebSocket message: `type` u8, `stream_id` u32, then the payload, which runs to
 * the end of the message (Wisp has no length field, the WebSocket frames the packet). Wisp is little-endian
 * throughout ("all data types are little-endian", both specs, "Packet format"), so unlike the house default every
 * multi-byte read and write here passes `littleEndian: true` on purpose.
 *
 * Stream id 0 is the connection itself: the handshake CONTINUE and INFO, and a CLOSE rejecting the handshake
 * (v2 "Handshake Steps"). It never names a stream, which is why a malformed packet on stream 0 is a session error.
 * @module
 */

/** The packet type, the first byte of every packet. Never renumber: these are the spec's numbers. */
export const WispPacketType = {
  CONNECT: 0x01,
  DATA: 0x02,
  CONTINUE: 0x03,
  CLOSE: 0x04,
  /** v2 only: the handshake packet; a v1 session must treat it as unknown. */
  INFO: 0x05,
} as const;
export type WispPacketType = typeof WispPacketType[keyof typeof WispPacketType];

/** The CONNECT packet's stream type. */
export const WispStreamType = {
  TCP: 0x01,
  /** Mandatory in v1, optional in v2 (negotiated with {@linkcode WispExtensionId.UDP}). */
  UDP: 0x02,
} as const;
export type WispStreamType = typeof WispStreamType[keyof typeof WispStreamType];

/** CLOSE reasons of v1 and v2 (spec section "CLOSE", "Close Reasons"). */
export const WispCloseReason = {
  /** Either side: unspecified or unknown; a more specific reason is preferred. */
  UNSPECIFIED: 0x01,
  /** Either side: voluntary closure, like one side resetting the connection. */
  VOLUNTARY: 0x02,
  /** Either side: the stream broke on a network error. */
  NETWORK_ERROR: 0x03,
  /** v2, either side, handshake only (stream 0): the peer's extensions are incompatible. */
  INCOMPATIBLE_EXTENSIONS: 0x04,
  /** Server: stream creation failed on invalid information (bad CONNECT, reserved address, bad port). */
  INVALID_INFO: 0x41,
  /** Server: the destination host is unreachable (for instance, the name does not resolve). */
  HOST_UNREACHABLE: 0x42,
  /** Server: the destination did not answer in time. */
  CONNECT_TIMEOUT: 0x43,
  /** Server: the destination refused the connection. */
  CONNECTION_REFUSED: 0x44,
  /** Server: a TCP transfer timed out. */
  TRANSFER_TIMEOUT: 0x47,
  /** Server: the destination is blocked by the proxy's policy. */
  HOST_BLOCKED: 0x48,
  /** Server: the connection is throttled. */
  THROTTLED: 0x49,
  /** Client: an unexpected error; the client can receive no more data. */
  CLIENT_ERROR: 0x81,
  /** v2 password extension: wrong username or password. */
  AUTH_BAD_PASSWORD: 0xc0,
  /** v2 key extension: the signature did not verify. */
  AUTH_BAD_SIGNATURE: 0xc1,
  /** v2 auth extensions: authentication is required and the client sent no credentials. */
  AUTH_MISSING_CREDENTIALS: 0xc2,
} as const;
export type WispCloseReason = typeof WispCloseReason[keyof typeof WispCloseReason];

/** Names of the close reasons, for logs and metrics labels. */
export const WISP_CLOSE_REASON_NAMES: Readonly<Record<number, string>> = Object.freeze(
  Object.fromEntries(Object.entries(WispCloseReason).map(([name, reason]) => [reason, name])),
);

/** v2 protocol extension ids (v2 "Protocol Extensions"). */
export const WispExtensionId = {
  UDP: 0x01,
  PASSWORD_AUTH: 0x02,
  KEY_AUTH: 0x03,
  MOTD: 0x04,
  STREAM_CONFIRMATION: 0x05,
} as const;
export type WispExtensionId = typeof WispExtensionId[keyof typeof WispExtensionId];

/** Signature algorithm bits of the key authentication extension. */
export const WispKeyAlgorithm = {
  ED25519: 0b0000_0001,
} as const;
export type WispKeyAlgorithm = typeof WispKeyAlgorithm[keyof typeof WispKeyAlgorithm];

/** `type` (u8) + `stream_id` (u32le). */
export const WISP_HEADER_SIZE = 5;
/** The connection-level stream id: handshake CONTINUE, INFO and handshake CLOSE. */
export const WISP_HANDSHAKE_STREAM_ID = 0;
/** Largest stream id (u32). */
export const WISP_MAX_STREAM_ID = 0xffff_ffff;
/** CONNECT payload before the hostname: stream type u8 + port u16le. */
export const WISP_CONNECT_FIXED_BYTES = 3;
/**
 * Longest CONNECT hostname in UTF-8 bytes. An ASCII DNS name is at most 253 bytes, but Wisp carries the name as
 * UTF-8, and a Unicode name (a U-label) can take several times the bytes of its punycode form, so the cap is the one
 * `aero-tcp-mux-v1` uses (`MUX_MAX_OPEN_HOST_BYTES`); the policy and the resolver judge the name itself.
 */
export const WISP_MAX_HOSTNAME_BYTES = 1024;
/** A CONTINUE payload is exactly `buffer_remaining` u32le. */
export const WISP_CONTINUE_PAYLOAD_BYTES = 4;
/** A CLOSE payload is exactly the reason byte. */
export const WISP_CLOSE_PAYLOAD_BYTES = 1;
/** INFO payload before the extensions: major u8 + minor u8. */
export const WISP_INFO_FIXED_BYTES = 2;
/** Each extension entry starts with `id` u8 + `payload_length` u32le. */
export const WISP_EXTENSION_HEADER_BYTES = 5;
/** Longest username of the password extension (its length is a u8). */
export const WISP_MAX_USERNAME_BYTES = 0xff;
/** Longest password in the `"both-lengths"` layout (its length is a u16). */
export const WISP_MAX_PASSWORD_BYTES = 0xffff;
/** Length of the key extension's public key hash: a SHA-256 digest. */
export const WISP_KEY_HASH_BYTES = 32;

/** CONNECT (client to server): open a stream to `hostname:port`. */
export interface WispConnectPacket {
  readonly type: typeof WispPacketType.CONNECT;
  /** Never 0. */
  readonly streamId: number;
  readonly streamType: WispStreamType;
  /** 1 to 65535. */
  readonly port: number;
  /** Non-empty, valid UTF-8 on the wire, as sent (not yet checked against any policy). */
  readonly hostname: string;
}

/** DATA: bytes for a stream, possibly none. */
export interface WispDataPacket {
  readonly type: typeof WispPacketType.DATA;
  /** Never 0. */
  readonly streamId: number;
  /** A view into the decoded message: do not reuse its buffer while holding this. */
  readonly data: Uint8Array;
}

/** CONTINUE (server to client): how many more DATA packets the server can buffer for the stream. */
export interface WispContinuePacket {
  readonly type: typeof WispPacketType.CONTINUE;
  /** 0 for the handshake CONTINUE carrying the initial buffer size. */
  readonly streamId: number;
  readonly bufferRemaining: number;
}

/** CLOSE: the stream is closed (on stream 0 in v2: the handshake is rejected). */
export interface WispClosePacket {
  readonly type: typeof WispPacketType.CLOSE;
  readonly streamId: number;
  /** Any u8: the reason is informational, so unknown ones are kept, not rejected ({@linkcode WispCloseReason}). */
  readonly reason: number;
}

/** UDP extension (0x01): no payload; its presence says UDP streams are supported. */
export interface WispUdpExtension {
  readonly kind: "udp";
}

/** Password extension (0x02), server message: password auth is allowed, and maybe required. */
export interface WispPasswordAuthOffer {
  readonly kind: "password-auth-offer";
  readonly required: boolean;
}

/** Password extension (0x02), client message: the credentials. */
export interface WispPasswordAuthCredentials {
  readonly kind: "password-auth-credentials";
  /** At most {@linkcode WISP_MAX_USERNAME_BYTES} UTF-8 bytes; may be empty (the authenticator judges it). */
  readonly username: string;
  readonly password: string;
}

/** Key extension (0x03), server message. Decoded only: this codec never offers key auth. */
export interface WispKeyAuthOffer {
  readonly kind: "key-auth-offer";
  readonly required: boolean;
  /** Bit mask of {@linkcode WispKeyAlgorithm}. */
  readonly algorithms: number;
  /** The random challenge; a view into the decoded message. */
  readonly challenge: Uint8Array;
}

/** Key extension (0x03), client message. Decoded only. */
export interface WispKeyAuthResponse {
  readonly kind: "key-auth-response";
  /** The one {@linkcode WispKeyAlgorithm} bit the client chose (not checked here). */
  readonly algorithm: number;
  /** SHA-256 of the public key, {@linkcode WISP_KEY_HASH_BYTES} bytes; a view into the decoded message. */
  readonly publicKeyHash: Uint8Array;
  /** The signature of the challenge (the rest of the payload); a view into the decoded message. */
  readonly signature: Uint8Array;
}

/** MOTD extension (0x04): the server's welcome message (a client announces support with empty text). */
export interface WispMotdExtension {
  readonly kind: "motd";
  readonly text: string;
}

/** Stream open confirmation extension (0x05): no payload; the server sends a CONTINUE once a stream is connected. */
export interface WispStreamConfirmationExtension {
  readonly kind: "stream-confirmation";
}

/** An extension this codec does not know, kept raw: by the spec it is simply not supported. */
export interface WispUnknownExtension {
  readonly kind: "unknown";
  /** Any u8. The encoder writes known ids too, which makes malformed known extensions for tests. */
  readonly id: number;
  /** A view into the decoded message. */
  readonly payload: Uint8Array;
}

/** Every extension entry an INFO packet can carry, by direction where the spec gives two layouts. */
export type WispExtension =
  | WispUdpExtension
  | WispPasswordAuthOffer
  | WispPasswordAuthCredentials
  | WispKeyAuthOffer
  | WispKeyAuthResponse
  | WispMotdExtension
  | WispStreamConfirmationExtension
  | WispUnknownExtension;

/** The extensions {@linkcode encodeWispInfo} writes (key authentication is decode-only). */
export type WispEncodableExtension = Exclude<WispExtension, WispKeyAuthOffer | WispKeyAuthResponse>;

/** INFO (v2 handshake, both directions, always on stream 0): version and extensions. */
export interface WispInfoPacket {
  readonly type: typeof WispPacketType.INFO;
  readonly streamId: typeof WISP_HANDSHAKE_STREAM_ID;
  readonly major: number;
  readonly minor: number;
  /** In wire order; no two share an id. */
  readonly extensions: readonly WispExtension[];
}

/** Every well-formed packet. */
export type WispPacket =
  | WispConnectPacket
  | WispDataPacket
  | WispContinuePacket
  | WispClosePacket
  | WispInfoPacket;

/**
 * Where a protocol violation is answered.
 *
 * - `"stream"`: send CLOSE with {@linkcode WispProtocolError.closeReason} (0x41) on the packet's stream and drop
 *   the stream; the session lives on.
 * - `"session"`: the connection can no longer be trusted (unreadable header, unknown type, a malformed packet on
 *   stream 0, a malformed INFO): close the WebSocket.
 */
export type WispErrorScope = "stream" | "session";

/** Bytes that break Wisp. */
export class WispProtocolError extends Error {
  override name = "WispProtocolError";
  /** Whether only one stream or the whole connection is affected. */
  readonly scope: WispErrorScope;
  /** The stream to answer on: the packet's for stream errors, 0 for session errors. */
  readonly streamId: number;
  /** The reason for the CLOSE answering a stream error. */
  readonly closeReason: WispCloseReason = WispCloseReason.INVALID_INFO;

  constructor(message: string, options: { scope: WispErrorScope; streamId?: number }) {
    super(message);
    this.scope = options.scope;
    this.streamId = options.scope === "session"
      ? WISP_HANDSHAKE_STREAM_ID
      : options.streamId ?? WISP_HANDSHAKE_STREAM_ID;
  }
}

/** A message that is not a well-formed packet; `streamId` and `error.streamId` agree. */
export interface WispInvalidPacket {
  readonly type: "invalid";
  readonly streamId: number;
  readonly error: WispProtocolError;
}

/** What {@linkcode decodeWispPacket} returns. */
export type WispDecoded = WispPacket | WispInvalidPacket;

/**
 * Layout of the password extension's client message.
 *
 * - `"username-length"`: v2 draft 6 as written: `username_len` u8, username, then the password to the end.
 * - `"both-lengths"`: the earlier drafts' layout that wisp-js and epoxy still send: `username_len` u8,
 *   `password_len` u16le, username, password, nothing after.
 */
export type WispPasswordLayout = "username-length" | "both-lengths";

/**
 * What a server accepts: `"auto"` reads the `"both-lengths"` layout when its password length accounts for exactly
 * the bytes that follow the username (which is what wisp-js and epoxy send), and the draft's layout otherwise.
 */
export type WispPasswordLayoutOption = WispPasswordLayout | "auto";

/** Options of {@linkcode decodeWispPacket}. */
export interface WispDecodeOptions {
  /**
   * Who sent the bytes; it picks the layout of the password and key extensions in INFO.
   * @default {"client"}
   */
  readonly sender?: "client" | "server";
  /**
   * Layout of password credentials from a client.
   * @default {"username-length"}
   */
  readonly passwordLayout?: WispPasswordLayoutOption;
}

/** Options of {@linkcode encodeWispInfo}. */
export interface WispEncodeInfoOptions {
  /**
   * Layout of {@linkcode WispPasswordAuthCredentials}.
   * @default {"username-length"}
   */
  readonly passwordLayout?: WispPasswordLayout;
}

const encoder = new TextEncoder();
const decoder = new TextDecoder("utf-8", { fatal: true });
/** Wisp's byte order, named so no call site passes a bare `true`. */
const LITTLE_ENDIAN = true;

function viewOf(bytes: Uint8Array): DataView {
  return new DataView(bytes.buffer, bytes.byteOffset, bytes.byteLength);
}

function hex(value: number): string {
  return `0x${value.toString(16).padStart(2, "0")}`;
}

function isUint(value: number, max: number): boolean {
  return Number.isInteger(value) && value >= 0 && value <= max;
}

function checkU8(what: string, field: string, value: number): void {
  if (!isUint(value, 0xff)) throw new RangeError(`Cannot encode ${what}: ${field} ${value} is not a u8`);
}

function checkStreamId(what: string, streamId: number, allowZero: boolean): void {
  if (!isUint(streamId, WISP_MAX_STREAM_ID)) {
    throw new RangeError(`Cannot encode ${what}: stream id ${streamId} is not a u32`);
  }
  if (!allowZero && streamId === WISP_HANDSHAKE_STREAM_ID) {
    throw new RangeError(`Cannot encode ${what}: stream id 0 is reserved for the handshake`);
  }
}

function decodeText(bytes: Uint8Array): string | undefined {
  try {
    return decoder.decode(bytes);
  } catch {
    return undefined;
  }
}

/**
 * Writes a 5-byte header into `target` at offset 0. Low level: checks that the fields fit, not that they make sense
 * together.
 */
export function writeWispHeader(
  target: Uint8Array,
  header: { readonly type: number; readonly streamId: number },
): void {
  checkU8("packet header", "type", header.type);
  checkStreamId("packet header", header.streamId, true);
  if (target.byteLength < WISP_HEADER_SIZE) {
    throw new RangeError(
      `Cannot write packet header: expected room for ${WISP_HEADER_SIZE} bytes, got ${target.byteLength}`,
    );
  }
  target[0] = header.type;
  viewOf(target).setUint32(1, header.streamId, LITTLE_ENDIAN);
}

/**
 * Turns `frame` into a DATA packet in place: writes the header over its first 5 bytes, the payload being
 * `frame.subarray(5)`. Zero copies: read target bytes into `buffer.subarray(5)`, then send
 * `buffer.subarray(0, 5 + bytesRead)`.
 *
 * @example Good
 * ```ts
 * const buffer = new Uint8Array(WISP_HEADER_SIZE + 16 * 1024);
 * const n = await conn.read(buffer.subarray(WISP_HEADER_SIZE));
 * const frame = buffer.subarray(0, WISP_HEADER_SIZE + n!);
 * writeWispDataHeader(frame, streamId);
 * socket.send(frame);
 * ```
 * @example Bad: the header lands on the payload's first bytes
 * ```ts
 * const n = await conn.read(buffer);
 * writeWispDataHeader(buffer.subarray(0, n!), streamId);
 * ```
 */
export function writeWispDataHeader(frame: Uint8Array, streamId: number): void {
  checkStreamId("DATA packet", streamId, false);
  if (frame.byteLength < WISP_HEADER_SIZE) {
    throw new RangeError(
      `Cannot write DATA header: expected at least ${WISP_HEADER_SIZE} bytes, got ${frame.byteLength}`,
    );
  }
  writeWispHeader(frame, { type: WispPacketType.DATA, streamId });
}

/** Encodes any header and payload, valid or not (tests, fuzzers, hostile clients). Prefer the typed encoders. */
export function encodeWispRawPacket(
  header: { readonly type: number; readonly streamId: number },
  payload: Uint8Array,
): Uint8Array {
  const packet = new Uint8Array(WISP_HEADER_SIZE + payload.byteLength);
  writeWispHeader(packet, header);
  packet.set(payload, WISP_HEADER_SIZE);
  return packet;
}

/** What {@linkcode encodeWispConnect} opens. */
export interface WispConnectTarget {
  readonly streamType: WispStreamType;
  /** 1 to 65535. */
  readonly port: number;
  /** 1 to {@linkcode WISP_MAX_HOSTNAME_BYTES} UTF-8 bytes. */
  readonly hostname: string;
}

/** Encodes a CONNECT packet (sent by clients; here for the client library and tests). */
export function encodeWispConnect(streamId: number, target: WispConnectTarget): Uint8Array {
  checkStreamId("CONNECT packet", streamId, false);
  if (target.streamType !== WispStreamType.TCP && target.streamType !== WispStreamType.UDP) {
    throw new RangeError(
      `Cannot encode CONNECT packet: stream type ${target.streamType} is not TCP (1) or UDP (2)`,
    );
  }
  if (!isUint(target.port, 0xffff) || target.port === 0) {
    throw new RangeError(`Cannot encode CONNECT packet: port ${target.port} is not in 1-65535`);
  }
  const hostname = encoder.encode(target.hostname);
  if (hostname.byteLength === 0 || hostname.byteLength > WISP_MAX_HOSTNAME_BYTES) {
    throw new RangeError(
      `Cannot encode CONNECT packet: hostname must be 1 to ${WISP_MAX_HOSTNAME_BYTES} UTF-8 bytes, got ${hostname.byteLength}`,
    );
  }
  const packet = new Uint8Array(WISP_HEADER_SIZE + WISP_CONNECT_FIXED_BYTES + hostname.byteLength);
  writeWispHeader(packet, { type: WispPacketType.CONNECT, streamId });
  packet[WISP_HEADER_SIZE] = target.streamType;
  viewOf(packet).setUint16(WISP_HEADER_SIZE + 1, target.port, LITTLE_ENDIAN);
  packet.set(hostname, WISP_HEADER_SIZE + WISP_CONNECT_FIXED_BYTES);
  return packet;
}

/** Encodes a DATA packet; copies `data` once. See {@linkcode writeWispDataHeader} for no copy. */
export function encodeWispData(streamId: number, data: Uint8Array): Uint8Array {
  const packet = new Uint8Array(WISP_HEADER_SIZE + data.byteLength);
  packet.set(data, WISP_HEADER_SIZE);
  writeWispDataHeader(packet, streamId);
  return packet;
}

/** Encodes a CONTINUE packet; stream id 0 is the handshake CONTINUE carrying the initial buffer size. */
export function encodeWispContinue(streamId: number, bufferRemaining: number): Uint8Array {
  checkStreamId("CONTINUE packet", streamId, true);
  if (!isUint(bufferRemaining, 0xffff_ffff)) {
    throw new RangeError(`Cannot encode CONTINUE packet: buffer remaining ${bufferRemaining} is not a u32`);
  }
  const packet = new Uint8Array(WISP_HEADER_SIZE + WISP_CONTINUE_PAYLOAD_BYTES);
  writeWispHeader(packet, { type: WispPacketType.CONTINUE, streamId });
  viewOf(packet).setUint32(WISP_HEADER_SIZE, bufferRemaining, LITTLE_ENDIAN);
  return packet;
}

/** Encodes a CLOSE packet; on stream id 0 (v2) it rejects the handshake. `reason` is any u8. */
export function encodeWispClose(streamId: number, reason: number): Uint8Array {
  checkStreamId("CLOSE packet", streamId, true);
  checkU8("CLOSE packet", "reason", reason);
  const packet = new Uint8Array(WISP_HEADER_SIZE + WISP_CLOSE_PAYLOAD_BYTES);
  writeWispHeader(packet, { type: WispPacketType.CLOSE, streamId });
  packet[WISP_HEADER_SIZE] = reason;
  return packet;
}

/** What {@linkcode encodeWispInfo} announces. */
export interface WispInfo {
  /** u8; 2 for this draft. */
  readonly major: number;
  /** u8. */
  readonly minor: number;
  /** Written in order; no two may share an id. */
  readonly extensions: readonly WispEncodableExtension[];
}

function extensionEntry(
  extension: WispEncodableExtension,
  layout: WispPasswordLayout,
): { id: number; payload: Uint8Array } {
  const what = "INFO packet";
  switch (extension.kind) {
    case "udp":
      return { id: WispExtensionId.UDP, payload: new Uint8Array(0) };
    case "stream-confirmation":
      return { id: WispExtensionId.STREAM_CONFIRMATION, payload: new Uint8Array(0) };
    case "motd":
      return { id: WispExtensionId.MOTD, payload: encoder.encode(extension.text) };
    case "password-auth-offer":
      return { id: WispExtensionId.PASSWORD_AUTH, payload: Uint8Array.of(extension.required ? 1 : 0) };
    case "password-auth-credentials": {
      const username = encoder.encode(extension.username);
      const password = encoder.encode(extension.password);
      if (username.byteLength > WISP_MAX_USERNAME_BYTES) {
        throw new RangeError(
          `Cannot encode ${what}: username is ${username.byteLength} UTF-8 bytes, over the ${WISP_MAX_USERNAME_BYTES} limit`,
        );
      }
      if (layout === "username-length") {
        const payload = new Uint8Array(1 + username.byteLength + password.byteLength);
        payload[0] = username.byteLength;
        payload.set(username, 1);
        payload.set(password, 1 + username.byteLength);
        return { id: WispExtensionId.PASSWORD_AUTH, payload };
      }
      if (password.byteLength > WISP_MAX_PASSWORD_BYTES) {
        throw new RangeError(
          `Cannot encode ${what}: password is ${password.byteLength} UTF-8 bytes, over the ${WISP_MAX_PASSWORD_BYTES} limit`,
        );
      }
      const payload = new Uint8Array(3 + username.byteLength + password.byteLength);
      payload[0] = username.byteLength;
      viewOf(payload).setUint16(1, password.byteLength, LITTLE_ENDIAN);
      payload.set(username, 3);
      payload.set(password, 3 + username.byteLength);
      return { id: WispExtensionId.PASSWORD_AUTH, payload };
    }
    case "unknown":
      checkU8(what, "extension id", extension.id);
      return { id: extension.id, payload: extension.payload };
    default:
      // Key authentication values come from the decoder; there is no encoder for them on purpose.
      throw new TypeError(
        `Cannot encode ${what}: extension kind "${(extension as { kind: unknown }).kind}" is not encodable`,
      );
  }
}

/** Encodes an INFO packet (always stream 0): the version, then one entry per extension. */
export function encodeWispInfo(info: WispInfo, options: WispEncodeInfoOptions = {}): Uint8Array {
  checkU8("INFO packet", "major version", info.major);
  checkU8("INFO packet", "minor version", info.minor);
  const layout = options.passwordLayout ?? "username-length";
  const entries = info.extensions.map((extension) => extensionEntry(extension, layout));
  const seen = new Set<number>();
  let length = WISP_INFO_FIXED_BYTES;
  for (const { id, payload } of entries) {
    if (seen.has(id)) {
      throw new RangeError(`Cannot encode INFO packet: extension id ${hex(id)} appears twice`);
    }
    seen.add(id);
    length += WISP_EXTENSION_HEADER_BYTES + payload.byteLength;
  }
  const packet = new Uint8Array(WISP_HEADER_SIZE + length);
  writeWispHeader(packet, { type: WispPacketType.INFO, streamId: WISP_HANDSHAKE_STREAM_ID });
  const view = viewOf(packet);
  packet[WISP_HEADER_SIZE] = info.major;
  packet[WISP_HEADER_SIZE + 1] = info.minor;
  let at = WISP_HEADER_SIZE + WISP_INFO_FIXED_BYTES;
  for (const { id, payload } of entries) {
    packet[at] = id;
    view.setUint32(at + 1, payload.byteLength, LITTLE_ENDIAN);
    packet.set(payload, at + WISP_EXTENSION_HEADER_BYTES);
    at += WISP_EXTENSION_HEADER_BYTES + payload.byteLength;
  }
  return packet;
}

/**
 * A payload problem. On a stream, the stream pays (CLOSE 0x41); on stream 0 there is no stream to close, so the
 * session does.
 */
function payloadError(streamId: number, message: string): WispProtocolError {
  return streamId === WISP_HANDSHAKE_STREAM_ID
    ? new WispProtocolError(message, { scope: "session" })
    : new WispProtocolError(message, { scope: "stream", streamId });
}

function sessionError(message: string): WispProtocolError {
  return new WispProtocolError(message, { scope: "session" });
}

function decodeConnect(streamId: number, payload: Uint8Array): WispConnectPacket {
  if (streamId === WISP_HANDSHAKE_STREAM_ID) {
    // Answering CLOSE on stream 0 would read as a handshake rejection, so this one costs the session.
    throw sessionError("Invalid CONNECT packet: stream id 0 is reserved for the handshake");
  }
  const fail = (reason: string) => payloadError(streamId, `Cannot decode CONNECT packet: ${reason}`);
  if (payload.byteLength < WISP_CONNECT_FIXED_BYTES) {
    throw fail(`expected at least ${WISP_CONNECT_FIXED_BYTES} payload bytes, got ${payload.byteLength}`);
  }
  const streamType = payload[0]!;
  if (streamType !== WispStreamType.TCP && streamType !== WispStreamType.UDP) {
    throw fail(`stream type ${hex(streamType)} is not TCP (0x01) or UDP (0x02)`);
  }
  const port = viewOf(payload).getUint16(1, LITTLE_ENDIAN);
  if (port === 0) throw fail("port 0 is not a destination");
  const hostnameLength = payload.byteLength - WISP_CONNECT_FIXED_BYTES;
  if (hostnameLength === 0) throw fail("hostname is empty");
  if (hostnameLength > WISP_MAX_HOSTNAME_BYTES) {
    throw fail(`hostname is ${hostnameLength} bytes, over the ${WISP_MAX_HOSTNAME_BYTES}-byte limit`);
  }
  const hostname = decodeText(payload.subarray(WISP_CONNECT_FIXED_BYTES));
  if (hostname === undefined) throw fail("hostname is not valid UTF-8");
  return { type: WispPacketType.CONNECT, streamId, streamType, port, hostname };
}

function decodeData(streamId: number, payload: Uint8Array): WispDataPacket {
  if (streamId === WISP_HANDSHAKE_STREAM_ID) {
    throw sessionError("Invalid DATA packet: stream id 0 is reserved for the handshake");
  }
  return { type: WispPacketType.DATA, streamId, data: payload };
}

function decodeContinue(streamId: number, payload: Uint8Array): WispContinuePacket {
  if (payload.byteLength !== WISP_CONTINUE_PAYLOAD_BYTES) {
    throw payloadError(
      streamId,
      `Cannot decode CONTINUE packet: expected ${WISP_CONTINUE_PAYLOAD_BYTES} payload bytes, got ${payload.byteLength}`,
    );
  }
  const bufferRemaining = viewOf(payload).getUint32(0, LITTLE_ENDIAN);
  return { type: WispPacketType.CONTINUE, streamId, bufferRemaining };
}

function decodeClose(streamId: number, payload: Uint8Array): WispClosePacket {
  if (payload.byteLength !== WISP_CLOSE_PAYLOAD_BYTES) {
    throw payloadError(
      streamId,
      `Cannot decode CLOSE packet: expected ${WISP_CLOSE_PAYLOAD_BYTES} payload byte, got ${payload.byteLength}`,
    );
  }
  return { type: WispPacketType.CLOSE, streamId, reason: payload[0]! };
}

function decodeBoolean(name: string, value: number): boolean {
  if (value > 1) throw sessionError(`Cannot decode INFO packet: ${name} flag ${hex(value)} is not 0 or 1`);
  return value === 1;
}

/** Whether `payload` reads as the `"both-lengths"` layout: its u16 length covers exactly what follows the name. */
function fitsBothLengths(payload: Uint8Array): boolean {
  if (payload.byteLength < 3) return false;
  const following = payload.byteLength - 3 - payload[0]!;
  return following >= 0 && viewOf(payload).getUint16(1, LITTLE_ENDIAN) === following;
}

function decodePasswordCredentials(
  payload: Uint8Array,
  option: WispPasswordLayoutOption,
): WispPasswordAuthCredentials {
  const layout: WispPasswordLayout = option !== "auto"
    ? option
    : fitsBothLengths(payload)
    ? "both-lengths"
    : "username-length";
  const fail = (reason: string) => sessionError(`Cannot decode INFO packet: password extension ${reason}`);
  const fixed = layout === "username-length" ? 1 : 3;
  if (payload.byteLength < fixed) {
    throw fail(`expects at least ${fixed} payload bytes, got ${payload.byteLength}`);
  }
  const usernameLength = payload[0]!;
  const usernameEnd = fixed + usernameLength;
  if (usernameEnd > payload.byteLength) {
    throw fail(`username length ${usernameLength} overruns the ${payload.byteLength}-byte payload`);
  }
  if (layout === "both-lengths") {
    const passwordLength = viewOf(payload).getUint16(1, LITTLE_ENDIAN);
    const following = payload.byteLength - usernameEnd;
    if (following !== passwordLength) {
      throw fail(`length mismatch: password length is ${passwordLength} but ${following} bytes follow`);
    }
  }
  const username = decodeText(payload.subarray(fixed, usernameEnd));
  const password = decodeText(payload.subarray(usernameEnd));
  if (username === undefined) throw fail("username is not valid UTF-8");
  if (password === undefined) throw fail("password is not valid UTF-8");
  return { kind: "password-auth-credentials", username, password };
}

function decodeExtension(id: number, payload: Uint8Array, options: WispDecodeOptions): WispExtension {
  const fromServer = options.sender === "server";
  const exact = (name: string, bytes: number) => {
    if (payload.byteLength !== bytes) {
      throw sessionError(
        `Cannot decode INFO packet: ${name} extension expects ${bytes} payload bytes, got ${payload.byteLength}`,
      );
    }
  };
  switch (id) {
    case WispExtensionId.UDP:
      exact("UDP", 0);
      return { kind: "udp" };
    case WispExtensionId.STREAM_CONFIRMATION:
      exact("stream confirmation", 0);
      return { kind: "stream-confirmation" };
    case WispExtensionId.MOTD: {
      const text = decodeText(payload);
      if (text === undefined) throw sessionError("Cannot decode INFO packet: MOTD is not valid UTF-8");
      return { kind: "motd", text };
    }
    case WispExtensionId.PASSWORD_AUTH:
      if (fromServer) {
        exact("password", 1);
        return { kind: "password-auth-offer", required: decodeBoolean("password required", payload[0]!) };
      }
      return decodePasswordCredentials(payload, options.passwordLayout ?? "username-length");
    case WispExtensionId.KEY_AUTH:
      if (fromServer) {
        if (payload.byteLength < 2) {
          throw sessionError(
            `Cannot decode INFO packet: key extension expects at least 2 payload bytes, got ${payload.byteLength}`,
          );
        }
        return {
          kind: "key-auth-offer",
          required: decodeBoolean("key required", payload[0]!),
          algorithms: payload[1]!,
          challenge: payload.subarray(2),
        };
      }
      if (payload.byteLength < 1 + WISP_KEY_HASH_BYTES) {
        throw sessionError(
          `Cannot decode INFO packet: key extension expects at least ${
            1 + WISP_KEY_HASH_BYTES
          } payload bytes, got ${payload.byteLength}`,
        );
      }
      return {
        kind: "key-auth-response",
        algorithm: payload[0]!,
        publicKeyHash: payload.subarray(1, 1 + WISP_KEY_HASH_BYTES),
        signature: payload.subarray(1 + WISP_KEY_HASH_BYTES),
      };
    default:
      return { kind: "unknown", id, payload };
  }
}

function decodeInfo(streamId: number, payload: Uint8Array, options: WispDecodeOptions): WispInfoPacket {
  if (streamId !== WISP_HANDSHAKE_STREAM_ID) {
    throw sessionError(`Invalid INFO packet: expected stream id 0, got ${streamId}`);
  }
  if (payload.byteLength < WISP_INFO_FIXED_BYTES) {
    throw sessionError(
      `Cannot decode INFO packet: expected at least ${WISP_INFO_FIXED_BYTES} payload bytes, got ${payload.byteLength}`,
    );
  }
  const view = viewOf(payload);
  const extensions: WispExtension[] = [];
  const seen = new Set<number>();
  let at = WISP_INFO_FIXED_BYTES;
  while (at < payload.byteLength) {
    const left = payload.byteLength - at;
    if (left < WISP_EXTENSION_HEADER_BYTES) {
      throw sessionError(
        `Cannot decode INFO packet: expected a ${WISP_EXTENSION_HEADER_BYTES}-byte extension header at offset ${at}, got ${left} bytes`,
      );
    }
    const id = payload[at]!;
    const length = view.getUint32(at + 1, LITTLE_ENDIAN);
    const start = at + WISP_EXTENSION_HEADER_BYTES;
    if (length > payload.byteLength - start) {
      throw sessionError(
        `Cannot decode INFO packet: extension ${hex(id)} length ${length} overruns the ${
          payload.byteLength - start
        } bytes left`,
      );
    }
    // Two entries for one id could disagree; which one counts is nowhere specified, so neither does.
    if (seen.has(id)) throw sessionError(`Cannot decode INFO packet: extension ${hex(id)} appears twice`);
    seen.add(id);
    extensions.push(decodeExtension(id, payload.subarray(start, start + length), options));
    at = start + length;
  }
  return {
    type: WispPacketType.INFO,
    streamId: WISP_HANDSHAKE_STREAM_ID,
    major: payload[0]!,
    minor: payload[1]!,
    extensions,
  };
}

/**
 * Decodes one packet: one whole binary WebSocket message. Payload views (`data`, key challenge and signature,
 * unknown extension payloads) point into `bytes`, so the caller must not reuse its buffer while holding them.
 *
 * The codec does not know the session's state: the caller still rejects INFO in a v1 session, CONTINUE from a
 * client, packets for unknown streams, and so on.
 *
 * @param bytes the message
 * @param options who sent it, and the password layout
 * @returns the packet, or a {@linkcode WispInvalidPacket} saying whether one stream or the session pays
 */
export function decodeWispPacket(bytes: Uint8Array, options: WispDecodeOptions = {}): WispDecoded {
  if (bytes.byteLength < WISP_HEADER_SIZE) {
    const error = sessionError(
      `Cannot decode packet: expected at least ${WISP_HEADER_SIZE} bytes, got ${bytes.byteLength}`,
    );
    return { type: "invalid", streamId: error.streamId, error };
  }
  const type = bytes[0]!;
  const streamId = viewOf(bytes).getUint32(1, LITTLE_ENDIAN);
  const payload = bytes.subarray(WISP_HEADER_SIZE);
  try {
    switch (type) {
      case WispPacketType.CONNECT:
        return decodeConnect(streamId, payload);
      case WispPacketType.DATA:
        return decodeData(streamId, payload);
      case WispPacketType.CONTINUE:
        return decodeContinue(streamId, payload);
      case WispPacketType.CLOSE:
        return decodeClose(streamId, payload);
      case WispPacketType.INFO:
        return decodeInfo(streamId, payload, options);
      default:
        // Without a known type the stream id field may not even name a stream: fail the session.
        throw sessionError(`Invalid packet: unknown type ${hex(type)} on stream ${streamId}`);
    }
  } catch (err: unknown) {
    if (!(err instanceof WispProtocolError)) throw err;
    return { type: "invalid", streamId: err.streamId, error: err };
  }
}
