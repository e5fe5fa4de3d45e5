/**
 * Codec of the `aero-tcp-mux-v1` subprotocol (spec section 3.5). Pure functions and one incremental decoder over
 * bytes: no I/O, no clock, no logger.
 *
 * Every frame is a 9-byte header, `msg_type` u8, `stream_id` u32be, `length` u32be, then `length` payload bytes.
 * Frames are a byte stream: one WebSocket message may hold several frames, and a frame may be split across
 * messages, so the decoder is incremental ({@linkcode MuxFrameDecoder}).
 * @module
 */

/** `msg_type`, the first byte of every frame. Never renumber: these are the spec's numbers. */
export const MuxMsgType = {
  OPEN: 1,
  DATA: 2,
  CLOSE: 3,
  ERROR: 4,
  PING: 5,
  PONG: 6,
  /**
   * The credit extension only (subprotocol {@linkcode MUX_CREDIT_SUBPROTOCOL}, README "Credit extension"):
   * the sender lets the receiver send `bytes` more on the stream. Outside the extension it is an unknown type.
   */
  WINDOW: 0x10,
} as const;
export type MuxMsgType = typeof MuxMsgType[keyof typeof MuxMsgType];

/** Codes carried in ERROR payloads, as the spec numbers them. */
export const MuxErrorCode = {
  POLICY_DENIED: 1,
  DIAL_FAILED: 2,
  PROTOCOL_ERROR: 3,
  UNKNOWN_STREAM: 4,
  STREAM_LIMIT_EXCEEDED: 5,
  STREAM_BUFFER_OVERFLOW: 6,
} as const;
export type MuxErrorCode = typeof MuxErrorCode[keyof typeof MuxErrorCode];

/** Names of the error codes, for logs and metrics labels. */
export const MUX_ERROR_CODE_NAMES: Readonly<Record<number, string>> = Object.freeze(
  Object.fromEntries(Object.entries(MuxErrorCode).map(([name, code]) => [code, name])),
);

/** Bits of the CLOSE payload's `flags` byte. */
export const MuxCloseFlag = {
  /** The sender will send no more DATA on the stream (half-close). */
  FIN: 0x01,
  /** Abort the stream now (full close). Wins over FIN when both are set. */
  RST: 0x02,
} as const;
export type MuxCloseFlag = typeof MuxCloseFlag[keyof typeof MuxCloseFlag];
/** Every defined CLOSE flag bit; any other bit makes a CLOSE invalid. */
export const MUX_CLOSE_FLAGS_MASK = MuxCloseFlag.FIN | MuxCloseFlag.RST;

/** The WebSocket subprotocol a client must offer. */
export const MUX_V1_SUBPROTOCOL = "aero-tcp-mux-v1";
/**
 * aero-tcp-mux-v1 with per-stream byte windows both ways (this project's extension): the same frames plus
 * WINDOW. A client offers it before `aero-tcp-mux-v1`; a relay without it picks the plain one.
 */
export const MUX_CREDIT_SUBPROTOCOL = "aero-tcp-mux-v1-credit";
/** Under the credit extension each stream starts with this window in both directions, before any WINDOW. */
export const MUX_CREDIT_INITIAL_WINDOW = 64 * 1024;
/** A WINDOW payload is exactly `bytes` u32be. */
export const MUX_WINDOW_PAYLOAD_BYTES = 4;
/** Most credit a stream may hold in one direction: a grant past it is a protocol error. */
export const MUX_CREDIT_MAX_WINDOW = 0x7fff_ffff;
/** `msg_type` (u8) + `stream_id` (u32be) + `length` (u32be). */
export const MUX_HEADER_SIZE = 9;
/** Stream id 0 carries connection-level messages (PING/PONG, session-wide ERROR), never a stream. */
export const MUX_CONNECTION_STREAM_ID = 0;
/** Largest stream id (u32). */
export const MUX_MAX_STREAM_ID = 0xffff_ffff;
/**
 * Default for {@linkcode MuxDecoderOptions.maxPayloadBytes}: 1 MiB. Aero's browser client sends DATA in 16 KiB
 * chunks and OPEN payloads of at most a few KiB, so this leaves room while bounding what one session can make
 * the relay buffer.
 */
export const MUX_DEFAULT_MAX_PAYLOAD_BYTES = 1024 * 1024;
/** OPEN payload without host and metadata: `host_len` u16be + `port` u16be + `metadata_len` u16be. */
export const MUX_OPEN_FIXED_BYTES = 6;
/** Longest OPEN host in UTF-8 bytes (DNS names are at most 253; the slack is Aero's gateway's cap). */
export const MUX_MAX_OPEN_HOST_BYTES = 1024;
/** Longest OPEN metadata blob in bytes. */
export const MUX_MAX_OPEN_METADATA_BYTES = 4 * 1024;
/** Longest OPEN payload that can be valid. */
export const MUX_MAX_OPEN_PAYLOAD_BYTES = MUX_OPEN_FIXED_BYTES + MUX_MAX_OPEN_HOST_BYTES +
  MUX_MAX_OPEN_METADATA_BYTES;
/** A CLOSE payload is exactly the `flags` byte. */
export const MUX_CLOSE_PAYLOAD_BYTES = 1;
/** ERROR payload before the message: `code` u16be + `message_len` u16be. */
export const MUX_ERROR_PREFIX_BYTES = 4;
/** Longest ERROR message the wire can carry (`message_len` is a u16). */
export const MUX_MAX_ERROR_MESSAGE_BYTES = 0xffff;
/** Longest ERROR message this codec writes by default (Aero's gateway-side decoder refuses longer ones). */
export const MUX_DEFAULT_ERROR_MESSAGE_BYTES = 1024;

/** OPEN (client to relay): dial `host:port`. */
export interface MuxOpenFrame {
  readonly type: typeof MuxMsgType.OPEN;
  readonly streamId: number;
  /** UTF-8 hostname or IP literal, as sent (not yet checked against any policy). */
  readonly host: string;
  readonly port: number;
  /** Valid UTF-8 (typically JSON), possibly empty; a view into the decoded bytes. */
  readonly metadata: Uint8Array;
}

/** DATA: raw TCP bytes for a stream. */
export interface MuxDataFrame {
  readonly type: typeof MuxMsgType.DATA;
  readonly streamId: number;
  /** A view into the pushed bytes when the frame arrived whole, else a buffer of its own. */
  readonly data: Uint8Array;
}

/** CLOSE: half-close (FIN) or abort (RST) a stream. */
export interface MuxCloseFrame {
  readonly type: typeof MuxMsgType.CLOSE;
  readonly streamId: number;
  /** Non-zero, only {@linkcode MUX_CLOSE_FLAGS_MASK} bits. */
  readonly flags: number;
}

/** ERROR: a stream failed (or, on stream 0, the connection). */
export interface MuxErrorFrame {
  readonly type: typeof MuxMsgType.ERROR;
  readonly streamId: number;
  readonly code: number;
  readonly message: string;
}

/** PING: the peer answers with a PONG carrying the same stream id and payload. */
export interface MuxPingFrame {
  readonly type: typeof MuxMsgType.PING;
  readonly streamId: number;
  readonly payload: Uint8Array;
}

/** WINDOW (credit extension): the receiver may send `bytes` more on the stream. */
export interface MuxWindowFrame {
  readonly type: typeof MuxMsgType.WINDOW;
  readonly streamId: number;
  /** 1 to {@linkcode MUX_CREDIT_MAX_WINDOW}. */
  readonly bytes: number;
}

/** PONG: the answer to a PING. */
export interface MuxPongFrame {
  readonly type: typeof MuxMsgType.PONG;
  readonly streamId: number;
  readonly payload: Uint8Array;
}

/** Every well-formed frame. */
export type MuxFrame =
  | MuxOpenFrame
  | MuxDataFrame
  | MuxCloseFrame
  | MuxErrorFrame
  | MuxPingFrame
  | MuxPongFrame
  | MuxWindowFrame;

/**
 * Bytes that break the protocol, in wire order among the frames.
 *
 * - `error.scope === "stream"`: the header was readable; the decoder has stepped over the payload and goes on
 *   with the next frame. The relay answers with an ERROR on `streamId`.
 * - `error.scope === "session"`: always the last item; the decoder accepts nothing more. `streamId` is 0.
 */
export interface MuxInvalidFrame {
  readonly type: "invalid";
  readonly streamId: number;
  readonly error: MuxProtocolError;
}

/** What {@linkcode MuxFrameDecoder.push} yields, in wire order. */
export type MuxDecoded = MuxFrame | MuxInvalidFrame;

/**
 * Where a protocol violation is answered.
 *
 * - `"stream"`: an ERROR on the frame's stream id; the connection lives on.
 * - `"session"`: the byte stream can no longer be trusted; ERROR on stream 0, then close the WebSocket (1002).
 */
export type MuxErrorScope = "stream" | "session";

/** Bytes that break `aero-tcp-mux-v1`. */
export class MuxProtocolError extends Error {
  override name = "MuxProtocolError";
  /** The ERROR code to answer with. */
  readonly code: MuxErrorCode;
  /** Whether only one stream or the whole connection is affected. */
  readonly scope: MuxErrorScope;
  /** The stream id to answer on: the frame's for stream errors, 0 for session errors. */
  readonly streamId: number;

  constructor(message: string, options: { scope: MuxErrorScope; streamId?: number; code?: MuxErrorCode }) {
    super(message);
    this.scope = options.scope;
    this.streamId = options.scope === "session"
      ? MUX_CONNECTION_STREAM_ID
      : options.streamId ?? MUX_CONNECTION_STREAM_ID;
    this.code = options.code ?? MuxErrorCode.PROTOCOL_ERROR;
  }
}

const encoder = new TextEncoder();
const decoder = new TextDecoder("utf-8", { fatal: true });

function viewOf(bytes: Uint8Array): DataView {
  return new DataView(bytes.buffer, bytes.byteOffset, bytes.byteLength);
}

function streamError(streamId: number, message: string): MuxProtocolError {
  return new MuxProtocolError(message, { scope: "stream", streamId });
}

function isU16(value: number): boolean {
  return Number.isInteger(value) && value >= 0 && value <= 0xffff;
}

function checkStreamId(what: string, streamId: number, allowZero: boolean): void {
  if (!Number.isInteger(streamId) || streamId < 0 || streamId > MUX_MAX_STREAM_ID) {
    throw new RangeError(`Cannot encode ${what}: stream id ${streamId} is not a u32`);
  }
  if (!allowZero && streamId === MUX_CONNECTION_STREAM_ID) {
    throw new RangeError(`Cannot encode ${what}: stream id 0 is reserved for connection-level messages`);
  }
}

function isValidUtf8(bytes: Uint8Array): boolean {
  try {
    decoder.decode(bytes);
    return true;
  } catch {
    return false;
  }
}

function isValidCloseFlags(flags: number): boolean {
  return flags !== 0 && (flags & ~MUX_CLOSE_FLAGS_MASK) === 0;
}

/**
 * Writes a 9-byte header into `target` at offset 0. Low level: checks that the fields fit, not that they make
 * sense together.
 */
export function writeMuxHeader(
  target: Uint8Array,
  header: { readonly type: number; readonly streamId: number; readonly length: number },
): void {
  const { type, streamId, length } = header;
  if (!Number.isInteger(type) || type < 0 || type > 0xff) {
    throw new RangeError(`Cannot write frame header: msg_type ${type} is not a u8`);
  }
  checkStreamId("frame header", streamId, true);
  if (!Number.isInteger(length) || length < 0 || length > 0xffff_ffff) {
    throw new RangeError(`Cannot write frame header: length ${length} is not a u32`);
  }
  if (target.byteLength < MUX_HEADER_SIZE) {
    throw new RangeError(
      `Cannot write frame header: expected room for ${MUX_HEADER_SIZE} bytes, got ${target.byteLength}`,
    );
  }
  target[0] = type;
  const view = viewOf(target);
  view.setUint32(1, streamId);
  view.setUint32(5, length);
}

/**
 * Turns `frame` into a DATA frame in place: writes the header over its first 9 bytes, the payload being
 * `frame.subarray(9)`. Zero copies: read target bytes into `buffer.subarray(9)`, then pass
 * `buffer.subarray(0, 9 + bytesRead)` and send it.
 */
export function writeDataHeader(frame: Uint8Array, streamId: number): void {
  checkStreamId("DATA frame", streamId, false);
  if (frame.byteLength < MUX_HEADER_SIZE) {
    throw new RangeError(
      `Cannot write DATA header: expected at least ${MUX_HEADER_SIZE} bytes, got ${frame.byteLength}`,
    );
  }
  writeMuxHeader(frame, { type: MuxMsgType.DATA, streamId, length: frame.byteLength - MUX_HEADER_SIZE });
}

/**
 * Encodes any header and payload, valid or not (tests, fuzzers, hostile clients). Prefer the typed encoders.
 */
export function encodeRawFrame(
  header: { readonly type: number; readonly streamId: number },
  payload: Uint8Array,
): Uint8Array {
  const frame = new Uint8Array(MUX_HEADER_SIZE + payload.byteLength);
  writeMuxHeader(frame, { type: header.type, streamId: header.streamId, length: payload.byteLength });
  frame.set(payload, MUX_HEADER_SIZE);
  return frame;
}

/** What {@linkcode encodeOpen} dials. */
export interface MuxOpenTarget {
  /** Hostname or IP literal; 1 to {@linkcode MUX_MAX_OPEN_HOST_BYTES} UTF-8 bytes. */
  readonly host: string;
  /** 1 to 65535. */
  readonly port: number;
  /**
   * Optional metadata, at most {@linkcode MUX_MAX_OPEN_METADATA_BYTES} bytes of UTF-8.
   * @default empty
   */
  readonly metadata?: string | Uint8Array;
}

/** Encodes an OPEN frame (sent by clients; here for the client library and tests). */
export function encodeOpen(streamId: number, target: MuxOpenTarget): Uint8Array {
  checkStreamId("OPEN frame", streamId, false);
  const host = encoder.encode(target.host);
  if (host.byteLength === 0 || host.byteLength > MUX_MAX_OPEN_HOST_BYTES) {
    throw new RangeError(
      `Cannot encode OPEN frame: host must be 1 to ${MUX_MAX_OPEN_HOST_BYTES} UTF-8 bytes, got ${host.byteLength}`,
    );
  }
  if (!isU16(target.port) || target.port === 0) {
    throw new RangeError(`Cannot encode OPEN frame: port ${target.port} is not in 1-65535`);
  }
  const metadata = typeof target.metadata === "string"
    ? encoder.encode(target.metadata)
    : target.metadata ?? new Uint8Array(0);
  if (metadata.byteLength > MUX_MAX_OPEN_METADATA_BYTES) {
    throw new RangeError(
      `Cannot encode OPEN frame: metadata is ${metadata.byteLength} bytes, over the ${MUX_MAX_OPEN_METADATA_BYTES} limit`,
    );
  }
  if (!isValidUtf8(metadata)) throw new RangeError("Cannot encode OPEN frame: metadata is not valid UTF-8");
  const length = MUX_OPEN_FIXED_BYTES + host.byteLength + metadata.byteLength;
  const frame = new Uint8Array(MUX_HEADER_SIZE + length);
  writeMuxHeader(frame, { type: MuxMsgType.OPEN, streamId, length });
  const view = viewOf(frame);
  let at = MUX_HEADER_SIZE;
  view.setUint16(at, host.byteLength);
  frame.set(host, at + 2);
  at += 2 + host.byteLength;
  view.setUint16(at, target.port);
  view.setUint16(at + 2, metadata.byteLength);
  frame.set(metadata, at + 4);
  return frame;
}

/** Encodes a DATA frame; copies `data` once into the new frame. See {@linkcode writeDataHeader} for no copy. */
export function encodeData(streamId: number, data: Uint8Array): Uint8Array {
  const frame = new Uint8Array(MUX_HEADER_SIZE + data.byteLength);
  frame.set(data, MUX_HEADER_SIZE);
  writeDataHeader(frame, streamId);
  return frame;
}

/** Encodes a CLOSE frame; `flags` is FIN, RST or both ({@linkcode MuxCloseFlag}). */
export function encodeClose(streamId: number, flags: number): Uint8Array {
  checkStreamId("CLOSE frame", streamId, false);
  if (!Number.isInteger(flags) || !isValidCloseFlags(flags)) {
    throw new RangeError(`Cannot encode CLOSE frame: flags ${flags} must be FIN (1), RST (2) or both`);
  }
  const frame = new Uint8Array(MUX_HEADER_SIZE + MUX_CLOSE_PAYLOAD_BYTES);
  writeMuxHeader(frame, { type: MuxMsgType.CLOSE, streamId, length: MUX_CLOSE_PAYLOAD_BYTES });
  frame[MUX_HEADER_SIZE] = flags;
  return frame;
}

/** What {@linkcode encodeError} reports. */
export interface MuxErrorReport {
  /** A {@linkcode MuxErrorCode} (any u16 is encodable). */
  readonly code: number;
  readonly message: string;
  /**
   * Longest message to write, in UTF-8 bytes; a longer one is cut at a character boundary.
   * @default {MUX_DEFAULT_ERROR_MESSAGE_BYTES}
   */
  readonly maxMessageBytes?: number;
}

/**
 * Encodes an ERROR frame. Stream id 0 reports a connection-level error. The message is cut to fit without
 * splitting a character; lone surrogates become U+FFFD, so the bytes are always valid UTF-8.
 */
export function encodeError(streamId: number, report: MuxErrorReport): Uint8Array {
  checkStreamId("ERROR frame", streamId, true);
  if (!isU16(report.code)) {
    throw new RangeError(`Cannot encode ERROR frame: code ${report.code} is not a u16`);
  }
  const limit = report.maxMessageBytes ?? MUX_DEFAULT_ERROR_MESSAGE_BYTES;
  if (!isU16(limit)) {
    throw new RangeError(`Cannot encode ERROR frame: maxMessageBytes ${limit} is not in 0-65535`);
  }
  let text = encoder.encode(report.message);
  if (text.byteLength > limit) {
    let end = limit;
    // Back up over continuation bytes (10xxxxxx): the cut lands on the first byte of a character.
    while (end > 0 && ((text[end] ?? 0) & 0xc0) === 0x80) end--;
    text = text.subarray(0, end);
  }
  const length = MUX_ERROR_PREFIX_BYTES + text.byteLength;
  const frame = new Uint8Array(MUX_HEADER_SIZE + length);
  writeMuxHeader(frame, { type: MuxMsgType.ERROR, streamId, length });
  const view = viewOf(frame);
  view.setUint16(MUX_HEADER_SIZE, report.code);
  view.setUint16(MUX_HEADER_SIZE + 2, text.byteLength);
  frame.set(text, MUX_HEADER_SIZE + MUX_ERROR_PREFIX_BYTES);
  return frame;
}

/** Encodes a PING; connection-level pings use stream id 0. */
export function encodePing(streamId: number, payload: Uint8Array = new Uint8Array(0)): Uint8Array {
  return encodeRawFrame({ type: MuxMsgType.PING, streamId }, payload);
}

/** Encodes the PONG answering a PING: pass the PING's stream id and payload. */
export function encodePong(streamId: number, payload: Uint8Array = new Uint8Array(0)): Uint8Array {
  return encodeRawFrame({ type: MuxMsgType.PONG, streamId }, payload);
}

/** Encodes a WINDOW (credit extension): the peer may send `bytes` more on stream `streamId`. */
export function encodeWindow(streamId: number, bytes: number): Uint8Array {
  if (!Number.isInteger(bytes) || bytes < 1 || bytes > MUX_CREDIT_MAX_WINDOW) {
    throw new RangeError(`Cannot encode WINDOW: ${bytes} bytes is not from 1 to ${MUX_CREDIT_MAX_WINDOW}`);
  }
  if (streamId === MUX_CONNECTION_STREAM_ID) throw new RangeError("Cannot encode WINDOW: stream id 0");
  const payload = new Uint8Array(MUX_WINDOW_PAYLOAD_BYTES);
  viewOf(payload).setUint32(0, bytes);
  return encodeRawFrame({ type: MuxMsgType.WINDOW, streamId }, payload);
}

/** Encodes any well-formed frame value (the inverse of the decoder). */
export function encodeFrame(frame: MuxFrame): Uint8Array {
  switch (frame.type) {
    case MuxMsgType.OPEN:
      return encodeOpen(frame.streamId, frame);
    case MuxMsgType.DATA:
      return encodeData(frame.streamId, frame.data);
    case MuxMsgType.CLOSE:
      return encodeClose(frame.streamId, frame.flags);
    case MuxMsgType.ERROR:
      return encodeError(frame.streamId, { ...frame, maxMessageBytes: MUX_MAX_ERROR_MESSAGE_BYTES });
    case MuxMsgType.PING:
      return encodePing(frame.streamId, frame.payload);
    case MuxMsgType.PONG:
      return encodePong(frame.streamId, frame.payload);
    case MuxMsgType.WINDOW:
      return encodeWindow(frame.streamId, frame.bytes);
  }
}

/**
 * Decodes an OPEN payload.
 *
 * @throws {MuxProtocolError} stream-scoped, for an empty or over-long host, a length field that overruns the
 * payload, trailing bytes, invalid UTF-8, port 0 or metadata over {@linkcode MUX_MAX_OPEN_METADATA_BYTES}
 */
export function decodeOpenPayload(streamId: number, payload: Uint8Array): MuxOpenFrame {
  const fail = (reason: string) => streamError(streamId, `Cannot decode OPEN payload: ${reason}`);
  if (payload.byteLength < MUX_OPEN_FIXED_BYTES) {
    throw fail(`expected at least ${MUX_OPEN_FIXED_BYTES} bytes, got ${payload.byteLength}`);
  }
  const view = viewOf(payload);
  const hostLength = view.getUint16(0);
  if (hostLength === 0) throw fail("host is empty");
  if (hostLength > MUX_MAX_OPEN_HOST_BYTES) {
    throw fail(`host_len ${hostLength} is over the ${MUX_MAX_OPEN_HOST_BYTES}-byte limit`);
  }
  const portAt = 2 + hostLength;
  if (payload.byteLength < portAt + 4) {
    throw fail(`host_len ${hostLength} overruns the ${payload.byteLength}-byte payload`);
  }
  let host: string;
  try {
    host = decoder.decode(payload.subarray(2, portAt));
  } catch {
    throw fail("host is not valid UTF-8");
  }
  const port = view.getUint16(portAt);
  if (port === 0) throw fail("port 0 is not a destination");
  const metadataLength = view.getUint16(portAt + 2);
  if (metadataLength > MUX_MAX_OPEN_METADATA_BYTES) {
    throw fail(`metadata_len ${metadataLength} is over the ${MUX_MAX_OPEN_METADATA_BYTES}-byte limit`);
  }
  const metadataAt = portAt + 4;
  const following = payload.byteLength - metadataAt;
  if (following !== metadataLength) {
    throw fail(`length mismatch: metadata_len is ${metadataLength} but ${following} bytes follow`);
  }
  const metadata = payload.subarray(metadataAt);
  if (!isValidUtf8(metadata)) throw fail("metadata is not valid UTF-8");
  return { type: MuxMsgType.OPEN, streamId, host, port, metadata };
}

/**
 * Decodes a CLOSE payload.
 *
 * @throws {MuxProtocolError} stream-scoped, unless the payload is one byte of non-zero, known flags
 */
export function decodeClosePayload(streamId: number, payload: Uint8Array): MuxCloseFrame {
  if (payload.byteLength !== MUX_CLOSE_PAYLOAD_BYTES) {
    throw streamError(
      streamId,
      `Cannot decode CLOSE payload: expected ${MUX_CLOSE_PAYLOAD_BYTES} byte, got ${payload.byteLength}`,
    );
  }
  const flags = payload[0]!;
  if (!isValidCloseFlags(flags)) {
    throw streamError(
      streamId,
      `Invalid CLOSE frame: flags 0x${
        flags.toString(16).padStart(2, "0")
      } must be FIN (0x01), RST (0x02) or both`,
    );
  }
  return { type: MuxMsgType.CLOSE, streamId, flags };
}

/**
 * Decodes an ERROR payload.
 *
 * @throws {MuxProtocolError} stream-scoped, when `message_len` disagrees with the payload or the message is not
 * valid UTF-8
 */
export function decodeErrorPayload(streamId: number, payload: Uint8Array): MuxErrorFrame {
  if (payload.byteLength < MUX_ERROR_PREFIX_BYTES) {
    throw streamError(
      streamId,
      `Cannot decode ERROR payload: expected at least ${MUX_ERROR_PREFIX_BYTES} bytes, got ${payload.byteLength}`,
    );
  }
  const view = viewOf(payload);
  const code = view.getUint16(0);
  const messageLength = view.getUint16(2);
  const following = payload.byteLength - MUX_ERROR_PREFIX_BYTES;
  if (following !== messageLength) {
    throw streamError(
      streamId,
      `Cannot decode ERROR payload: length mismatch: message_len is ${messageLength} but ${following} bytes follow`,
    );
  }
  let message: string;
  try {
    message = decoder.decode(payload.subarray(MUX_ERROR_PREFIX_BYTES));
  } catch {
    throw streamError(streamId, "Cannot decode ERROR payload: message is not valid UTF-8");
  }
  return { type: MuxMsgType.ERROR, streamId, code, message };
}

function reservedStreamId(what: string): MuxProtocolError {
  return streamError(
    MUX_CONNECTION_STREAM_ID,
    `Invalid ${what} frame: stream id 0 is reserved for connection-level messages`,
  );
}

/**
 * Checks a header before any of its payload is buffered. Returns the stream-scoped problem, if any; the
 * oversize check (session-scoped) is the decoder's.
 */
function checkHeader(
  type: number,
  streamId: number,
  length: number,
  credit: boolean,
): MuxProtocolError | undefined {
  switch (type) {
    case MuxMsgType.WINDOW:
      if (!credit) return streamError(streamId, `Invalid frame: unknown msg_type ${type}`);
      if (streamId === MUX_CONNECTION_STREAM_ID) return reservedStreamId("WINDOW");
      if (length !== MUX_WINDOW_PAYLOAD_BYTES) {
        return streamError(
          streamId,
          `Cannot decode WINDOW payload: expected ${MUX_WINDOW_PAYLOAD_BYTES} bytes, got ${length}`,
        );
      }
      return undefined;
    case MuxMsgType.OPEN:
      if (streamId === MUX_CONNECTION_STREAM_ID) {
        return reservedStreamId("OPEN");
      }
      if (length < MUX_OPEN_FIXED_BYTES || length > MUX_MAX_OPEN_PAYLOAD_BYTES) {
        return streamError(
          streamId,
          `Invalid OPEN frame: payload length ${length} is not in ${MUX_OPEN_FIXED_BYTES}-${MUX_MAX_OPEN_PAYLOAD_BYTES}`,
        );
      }
      return undefined;
    case MuxMsgType.DATA:
      if (streamId === MUX_CONNECTION_STREAM_ID) {
        return reservedStreamId("DATA");
      }
      return undefined;
    case MuxMsgType.CLOSE:
      if (streamId === MUX_CONNECTION_STREAM_ID) {
        return reservedStreamId("CLOSE");
      }
      if (length !== MUX_CLOSE_PAYLOAD_BYTES) {
        return streamError(
          streamId,
          `Cannot decode CLOSE payload: expected ${MUX_CLOSE_PAYLOAD_BYTES} byte, got ${length}`,
        );
      }
      return undefined;
    case MuxMsgType.ERROR:
      if (length < MUX_ERROR_PREFIX_BYTES || length > MUX_ERROR_PREFIX_BYTES + MUX_MAX_ERROR_MESSAGE_BYTES) {
        return streamError(
          streamId,
          `Cannot decode ERROR payload: length ${length} is not in ${MUX_ERROR_PREFIX_BYTES}-${
            MUX_ERROR_PREFIX_BYTES + MUX_MAX_ERROR_MESSAGE_BYTES
          }`,
        );
      }
      return undefined;
    case MuxMsgType.PING:
    case MuxMsgType.PONG:
      return undefined;
    default:
      return streamError(streamId, `Invalid frame: unknown msg_type ${type}`);
  }
}

/** Decodes the payload of a frame whose header passed {@linkcode checkHeader}. */
function decodeBody(type: number, streamId: number, payload: Uint8Array): MuxDecoded {
  try {
    switch (type) {
      case MuxMsgType.OPEN:
        return decodeOpenPayload(streamId, payload);
      case MuxMsgType.DATA:
        return { type: MuxMsgType.DATA, streamId, data: payload };
      case MuxMsgType.CLOSE:
        return decodeClosePayload(streamId, payload);
      case MuxMsgType.ERROR:
        return decodeErrorPayload(streamId, payload);
      case MuxMsgType.PING:
        return { type: MuxMsgType.PING, streamId, payload };
      case MuxMsgType.WINDOW: {
        const bytes = viewOf(payload).getUint32(0);
        if (bytes === 0 || bytes > MUX_CREDIT_MAX_WINDOW) {
          throw streamError(
            streamId,
            `Invalid WINDOW: ${bytes} bytes is not from 1 to ${MUX_CREDIT_MAX_WINDOW}`,
          );
        }
        return { type: MuxMsgType.WINDOW, streamId, bytes };
      }
      default:
        return { type: MuxMsgType.PONG, streamId, payload };
    }
  } catch (err: unknown) {
    if (!(err instanceof MuxProtocolError)) throw err;
    return { type: "invalid", streamId, error: err };
  }
}

/** Options of {@linkcode MuxFrameDecoder}. */
export interface MuxDecoderOptions {
  /**
   * Largest payload accepted; a header announcing more is a session error before any payload is buffered.
   * @default {MUX_DEFAULT_MAX_PAYLOAD_BYTES}
   */
  readonly maxPayloadBytes?: number;
  /**
   * Accept WINDOW frames (the credit extension was negotiated); otherwise they are an unknown type.
   * @default {false}
   */
  readonly credit?: boolean;
}

/**
 * Incremental decoder of the client-to-relay byte stream. Feed it each binary WebSocket message in order.
 *
 * - Frames entirely inside one pushed chunk are decoded in place: DATA, PING and PONG payloads and OPEN metadata
 *   are views into that chunk, so the caller must not reuse its buffer while holding them. Only a payload that
 *   spans chunks is copied, once, into a buffer of exactly its length.
 * - It holds at most one partial frame: {@linkcode MuxFrameDecoder.bufferedBytes} never exceeds
 *   9 + `maxPayloadBytes`.
 * - A frame that breaks the protocol for its stream only (unknown type, stream id 0 where a stream is needed, bad
 *   OPEN/CLOSE/ERROR payload) comes out in order as a {@linkcode MuxInvalidFrame}. When the header alone shows
 *   the frame is invalid, its payload is skipped without being buffered.
 * - A header announcing a payload over `maxPayloadBytes` is a session-scoped {@linkcode MuxInvalidFrame}, the
 *   last item of that push: the frames before it are still returned, so the output never depends on how the
 *   bytes were chunked. The connection must then be closed; a later `push` throws the same error.
 */
export class MuxFrameDecoder {
  readonly #maxPayloadBytes: number;
  readonly #credit: boolean;
  readonly #header = new Uint8Array(MUX_HEADER_SIZE);
  readonly #headerView = viewOf(this.#header);
  /** Bytes of a split header received so far. */
  #headerFill = 0;
  /** The payload being reassembled across chunks, with its header's fields. */
  #payload: Uint8Array | undefined;
  #payloadFill = 0;
  #type = 0;
  #streamId = 0;
  /** Payload bytes of an invalid frame still to step over. */
  #skip = 0;
  #failure: MuxProtocolError | undefined;

  constructor(options: MuxDecoderOptions = {}) {
    const max = options.maxPayloadBytes ?? MUX_DEFAULT_MAX_PAYLOAD_BYTES;
    if (!Number.isSafeInteger(max) || max < 0 || max > 0xffff_ffff) {
      throw new RangeError(`Cannot create decoder: maxPayloadBytes ${max} is not a u32`);
    }
    this.#maxPayloadBytes = max;
    this.#credit = options.credit ?? false;
  }

  /** Bytes of the partial frame held (header and payload so far). */
  get bufferedBytes(): number {
    return this.#headerFill + this.#payloadFill + (this.#payload === undefined ? 0 : MUX_HEADER_SIZE);
  }

  /** The largest payload this decoder accepts. */
  get maxPayloadBytes(): number {
    return this.#maxPayloadBytes;
  }

  /**
   * Decodes the next chunk of the byte stream.
   *
   * @returns the frames and invalid frames completed by `chunk`, in wire order
   * @throws {MuxProtocolError} the session error already returned, when called after it
   */
  push(chunk: Uint8Array): MuxDecoded[] {
    if (this.#failure !== undefined) throw this.#failure;
    const out: MuxDecoded[] = [];
    const end = chunk.byteLength;
    let view: DataView | undefined;
    let at = 0;
    while (at < end) {
      if (this.#skip > 0) {
        const n = Math.min(this.#skip, end - at);
        this.#skip -= n;
        at += n;
        continue;
      }
      const partial = this.#payload;
      if (partial !== undefined) {
        const n = Math.min(partial.byteLength - this.#payloadFill, end - at);
        partial.set(chunk.subarray(at, at + n), this.#payloadFill);
        this.#payloadFill += n;
        at += n;
        if (this.#payloadFill === partial.byteLength) {
          this.#payload = undefined;
          this.#payloadFill = 0;
          out.push(decodeBody(this.#type, this.#streamId, partial));
        }
        continue;
      }
      let type: number;
      let streamId: number;
      let length: number;
      if (this.#headerFill === 0 && end - at >= MUX_HEADER_SIZE) {
        view ??= viewOf(chunk);
        type = chunk[at]!;
        streamId = view.getUint32(at + 1);
        length = view.getUint32(at + 5);
        at += MUX_HEADER_SIZE;
      } else {
        const n = Math.min(MUX_HEADER_SIZE - this.#headerFill, end - at);
        this.#header.set(chunk.subarray(at, at + n), this.#headerFill);
        this.#headerFill += n;
        at += n;
        if (this.#headerFill < MUX_HEADER_SIZE) break;
        this.#headerFill = 0;
        type = this.#header[0]!;
        streamId = this.#headerView.getUint32(1);
        length = this.#headerView.getUint32(5);
      }
      if (length > this.#maxPayloadBytes) {
        this.#failure = new MuxProtocolError(
          `Invalid frame: payload length ${length} (msg_type ${type}, stream ${streamId}) is over the ${this.#maxPayloadBytes}-byte limit`,
          { scope: "session" },
        );
        out.push({ type: "invalid", streamId: MUX_CONNECTION_STREAM_ID, error: this.#failure });
        break;
      }
      const problem = checkHeader(type, streamId, length, this.#credit);
      if (problem !== undefined) {
        out.push({ type: "invalid", streamId, error: problem });
        this.#skip = length;
        continue;
      }
      if (end - at >= length) {
        out.push(decodeBody(type, streamId, chunk.subarray(at, at + length)));
        at += length;
        continue;
      }
      const payload = new Uint8Array(length);
      const n = end - at;
      payload.set(chunk.subarray(at, end));
      at = end;
      this.#payload = payload;
      this.#payloadFill = n;
      this.#type = type;
      this.#streamId = streamId;
    }
    return out;
  }

  /**
   * Call when the byte stream ends (WebSocket closed).
   *
   * @throws {MuxProtocolError} session-scoped, when a frame was left incomplete (or the session already failed)
   */
  finish(): void {
    if (this.#failure !== undefined) throw this.#failure;
    let held = this.#headerFill;
    let missing = 0;
    if (this.#payload !== undefined) {
      held = MUX_HEADER_SIZE + this.#payloadFill;
      missing = this.#payload.byteLength - this.#payloadFill;
    } else if (this.#skip > 0) {
      missing = this.#skip;
    } else if (held > 0) {
      missing = MUX_HEADER_SIZE - held;
    }
    if (missing > 0) {
      throw new MuxProtocolError(
        `Cannot finish: truncated tcp-mux frame stream (${held} pending bytes, ${missing} more expected)`,
        { scope: "session" },
      );
    }
  }
}
