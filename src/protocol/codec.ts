/**
 * Encoding and decoding of protocol v1 frames. Pure functions over bytes: no I/O, no clock, no logger.
 *
 * A frame is one binary WebSocket message: `type` u8, `connection_id` u32be, then the payload.
 * @module
 */
import {
  ERROR_PREFIX_SIZE,
  FrameType,
  HEADER_SIZE,
  IP_VERSION_4,
  MAX_CONNECTION_ID,
  MAX_ERROR_MESSAGE_BYTES,
  OPEN_PAYLOAD_SIZE,
  SESSION_ID,
} from "./constants.ts";
import { ProtocolError } from "./errors.ts";

/** OPEN sent by a client: connect to `ip:port` (IPv4). */
export interface OpenFrame {
  readonly type: typeof FrameType.OPEN;
  readonly connectionId: number;
  /** Four address bytes, most significant first. */
  readonly ip: readonly [number, number, number, number];
  readonly port: number;
}

/** OPEN sent by the relay: the TCP connection is established. Empty payload. */
export interface OpenAckFrame {
  readonly type: typeof FrameType.OPEN;
  readonly connectionId: number;
  readonly ack: true;
}

/** DATA: raw stream bytes. */
export interface DataFrame {
  readonly type: typeof FrameType.DATA;
  readonly connectionId: number;
  /** A view into the decoded message, not a copy. */
  readonly data: Uint8Array;
}

/** CLOSE: the stream is finished. Empty payload. */
export interface CloseFrame {
  readonly type: typeof FrameType.CLOSE;
  readonly connectionId: number;
}

/** ERROR: `code` u16be, `msg_len` u16be, UTF-8 message. */
export interface ErrorFrame {
  readonly type: typeof FrameType.ERROR;
  readonly connectionId: number;
  readonly code: number;
  readonly message: string;
}

/** Every frame a client may legally send. */
export type ClientFrame = OpenFrame | DataFrame | CloseFrame;
/** Every frame the relay may send. */
export type ServerFrame = OpenAckFrame | DataFrame | CloseFrame | ErrorFrame;

const encoder = new TextEncoder();
const decoder = new TextDecoder("utf-8", { fatal: true });

function viewOf(bytes: Uint8Array): DataView {
  return new DataView(bytes.buffer, bytes.byteOffset, bytes.byteLength);
}

function checkConnectionId(connectionId: number): void {
  if (!Number.isInteger(connectionId) || connectionId < 0 || connectionId > MAX_CONNECTION_ID) {
    throw new RangeError(`Cannot encode frame: connection id ${connectionId} is not a u32`);
  }
}

/** Writes a frame header into `target` at offset 0. `target` must have room for 5 bytes. */
export function writeHeader(target: Uint8Array, type: FrameType, connectionId: number): void {
  checkConnectionId(connectionId);
  target[0] = type;
  viewOf(target).setUint32(1, connectionId);
}

function encodeEmpty(type: FrameType, connectionId: number): Uint8Array {
  const frame = new Uint8Array(HEADER_SIZE);
  writeHeader(frame, type, connectionId);
  return frame;
}

/** Encodes a client OPEN for `ip:port`; `ip` is four bytes. */
export function encodeOpen(connectionId: number, ip: ArrayLike<number>, port: number): Uint8Array {
  if (ip.length !== 4 || !Array.from(ip).every((b) => Number.isInteger(b) && b >= 0 && b <= 255)) {
    throw new RangeError(`Cannot encode OPEN frame: expected 4 address bytes, got [${Array.from(ip)}]`);
  }
  if (!Number.isInteger(port) || port < 0 || port > 0xffff) {
    throw new RangeError(`Cannot encode OPEN frame: port ${port} is not a u16`);
  }
  const frame = new Uint8Array(HEADER_SIZE + OPEN_PAYLOAD_SIZE);
  writeHeader(frame, FrameType.OPEN, connectionId);
  frame[HEADER_SIZE] = IP_VERSION_4;
  frame.set(ip, HEADER_SIZE + 1);
  viewOf(frame).setUint16(HEADER_SIZE + 5, port);
  return frame;
}

/** Encodes the relay's OPEN acknowledgement (empty payload). */
export function encodeOpenAck(connectionId: number): Uint8Array {
  return encodeEmpty(FrameType.OPEN, connectionId);
}

/** Encodes a DATA frame; copies `data` once into the new message. */
export function encodeData(connectionId: number, data: Uint8Array): Uint8Array {
  const frame = new Uint8Array(HEADER_SIZE + data.byteLength);
  writeHeader(frame, FrameType.DATA, connectionId);
  frame.set(data, HEADER_SIZE);
  return frame;
}

/** Encodes a CLOSE frame (empty payload). */
export function encodeClose(connectionId: number): Uint8Array {
  return encodeEmpty(FrameType.CLOSE, connectionId);
}

/**
 * Encodes an ERROR frame. A message longer than 65,535 UTF-8 bytes is cut at a character boundary.
 */
export function encodeError(connectionId: number, code: number, message: string): Uint8Array {
  if (!Number.isInteger(code) || code < 0 || code > 0xffff) {
    throw new RangeError(`Cannot encode ERROR frame: code ${code} is not a u16`);
  }
  let text = encoder.encode(message);
  if (text.byteLength > MAX_ERROR_MESSAGE_BYTES) {
    let end = MAX_ERROR_MESSAGE_BYTES;
    // Back up over UTF-8 continuation bytes (10xxxxxx) so the cut never splits a character.
    while (end > 0 && ((text[end] ?? 0) & 0xc0) === 0x80) end--;
    text = text.subarray(0, end);
  }
  const frame = new Uint8Array(HEADER_SIZE + ERROR_PREFIX_SIZE + text.byteLength);
  writeHeader(frame, FrameType.ERROR, connectionId);
  const view = viewOf(frame);
  view.setUint16(HEADER_SIZE, code);
  view.setUint16(HEADER_SIZE + 2, text.byteLength);
  frame.set(text, HEADER_SIZE + ERROR_PREFIX_SIZE);
  return frame;
}

interface Header {
  type: number;
  connectionId: number;
  payload: Uint8Array;
}

function decodeHeader(bytes: Uint8Array): Header {
  if (bytes.byteLength < HEADER_SIZE) {
    throw new ProtocolError(
      `Cannot decode frame: expected at least ${HEADER_SIZE} bytes, got ${bytes.byteLength}`,
      { scope: "session" },
    );
  }
  const type = bytes[0]!;
  if (type < FrameType.OPEN || type > FrameType.ERROR) {
    throw new ProtocolError(`Cannot decode frame: unknown frame type ${type}`, { scope: "session" });
  }
  return { type, connectionId: viewOf(bytes).getUint32(1), payload: bytes.subarray(HEADER_SIZE) };
}

function streamError(connectionId: number, message: string): ProtocolError {
  return new ProtocolError(message, { scope: "stream", connectionId });
}

/** OPEN acknowledgements and CLOSE frames carry nothing. */
function requireEmpty(what: string, connectionId: number, payload: Uint8Array): void {
  if (payload.byteLength !== 0) {
    throw streamError(
      connectionId,
      `Cannot decode ${what}: expected an empty payload, got ${payload.byteLength} bytes`,
    );
  }
}

function decodeErrorPayload(connectionId: number, payload: Uint8Array): ErrorFrame {
  if (payload.byteLength < ERROR_PREFIX_SIZE) {
    throw streamError(
      connectionId,
      `Cannot decode ERROR frame: expected at least ${ERROR_PREFIX_SIZE} payload bytes, got ${payload.byteLength}`,
    );
  }
  const view = viewOf(payload);
  const code = view.getUint16(0);
  const length = view.getUint16(2);
  if (payload.byteLength !== ERROR_PREFIX_SIZE + length) {
    throw streamError(
      connectionId,
      `Cannot decode ERROR frame: msg_len is ${length} but ${
        payload.byteLength - ERROR_PREFIX_SIZE
      } message bytes follow`,
    );
  }
  let message: string;
  try {
    message = decoder.decode(payload.subarray(ERROR_PREFIX_SIZE));
  } catch {
    throw streamError(connectionId, "Cannot decode ERROR frame: message is not valid UTF-8");
  }
  return { type: FrameType.ERROR, connectionId, code, message };
}

/**
 * Decodes a frame sent by a client.
 *
 * @param bytes one binary WebSocket message
 * @returns the frame; DATA payloads are views into `bytes`
 * @throws {ProtocolError} for every input that is not a legal client frame, and nothing else
 */
export function decodeClientFrame(bytes: Uint8Array): ClientFrame {
  const { type, connectionId, payload } = decodeHeader(bytes);
  switch (type) {
    case FrameType.OPEN: {
      if (connectionId === SESSION_ID) {
        throw streamError(connectionId, "Invalid OPEN frame: connection id 0 is reserved");
      }
      if (payload.byteLength === 0) {
        throw streamError(connectionId, "Invalid OPEN frame: an empty OPEN is the relay's acknowledgement");
      }
      if (payload.byteLength !== OPEN_PAYLOAD_SIZE) {
        throw streamError(
          connectionId,
          `Cannot decode OPEN frame: expected ${OPEN_PAYLOAD_SIZE} payload bytes, got ${payload.byteLength}`,
        );
      }
      const version = payload[0]!;
      if (version !== IP_VERSION_4) {
        throw streamError(
          connectionId,
          `Invalid OPEN frame: ip_version ${version} is not supported (only 4)`,
        );
      }
      const port = viewOf(payload).getUint16(5);
      if (port === 0) throw streamError(connectionId, "Invalid OPEN frame: port 0 is not a destination");
      return {
        type: FrameType.OPEN,
        connectionId,
        ip: [payload[1]!, payload[2]!, payload[3]!, payload[4]!],
        port,
      };
    }
    case FrameType.DATA:
      if (connectionId === SESSION_ID) {
        throw streamError(connectionId, "Invalid DATA frame: connection id 0 is reserved");
      }
      return { type: FrameType.DATA, connectionId, data: payload };
    case FrameType.CLOSE:
      if (connectionId === SESSION_ID) {
        throw streamError(connectionId, "Invalid CLOSE frame: connection id 0 is reserved");
      }
      requireEmpty("CLOSE frame", connectionId, payload);
      return { type: FrameType.CLOSE, connectionId };
    default:
      // Only FrameType.ERROR is left: decodeHeader rejected every other type byte.
      throw streamError(connectionId, "Invalid frame: clients must not send ERROR frames");
  }
}

/**
 * Decodes a frame sent by the relay (used by clients and tests).
 *
 * @throws {ProtocolError} for every input that is not a legal relay frame, and nothing else
 */
export function decodeServerFrame(bytes: Uint8Array): ServerFrame {
  const { type, connectionId, payload } = decodeHeader(bytes);
  switch (type) {
    case FrameType.OPEN:
      requireEmpty("OPEN acknowledgement", connectionId, payload);
      return { type: FrameType.OPEN, connectionId, ack: true };
    case FrameType.DATA:
      return { type: FrameType.DATA, connectionId, data: payload };
    case FrameType.CLOSE:
      requireEmpty("CLOSE frame", connectionId, payload);
      return { type: FrameType.CLOSE, connectionId };
    default:
      return decodeErrorPayload(connectionId, payload);
  }
}
