/**
 * RFC 6455 framing, server side: a state machine that turns client bytes into messages and control frames,
 * and the encoder for the frames the server sends. Pure: no I/O, no timers, no logging.
 *
 * Every rule a client frame can break is checked as soon as the bytes that show it have arrived, and a
 * message's size is checked at each frame header, before any of its payload is buffered.
 * @module
 */

/** Frame opcodes (RFC 6455, 5.2). */
export const Opcode = {
  CONTINUATION: 0x0,
  TEXT: 0x1,
  BINARY: 0x2,
  CLOSE: 0x8,
  PING: 0x9,
  PONG: 0xa,
} as const;
export type Opcode = typeof Opcode[keyof typeof Opcode];

/** Close codes the relay sends (RFC 6455, 7.4.1). */
export const CloseCode = {
  NORMAL: 1000,
  GOING_AWAY: 1001,
  PROTOCOL_ERROR: 1002,
  UNSUPPORTED_DATA: 1003,
  /** Never sent: stands for "no code" in a received close frame. */
  NO_STATUS: 1005,
  /** Never sent: stands for "the connection ended without a close frame". */
  ABNORMAL: 1006,
  INVALID_PAYLOAD: 1007,
  POLICY_VIOLATION: 1008,
  MESSAGE_TOO_BIG: 1009,
  INTERNAL_ERROR: 1011,
} as const;

/** Largest payload of a control frame (RFC 6455, 5.5). */
export const MAX_CONTROL_PAYLOAD = 125;

/** A rule of RFC 6455 (or a limit of ours) that the peer broke: the connection closes with `code`. */
export class WebSocketError extends Error {
  override name = "WebSocketError";
  /** The close code to send. */
  readonly code: number;
  constructor(code: number, message: string) {
    super(message);
    this.code = code;
  }
}

/** Whether a received close code may appear on the wire (RFC 6455, 7.4.1 and the IANA registry). */
export function isValidCloseCode(code: number): boolean {
  return (code >= 1000 && code <= 1003) || (code >= 1007 && code <= 1014) || (code >= 3000 && code <= 4999);
}

/** What the receiver reports, in order of arrival. */
export interface FrameEvents {
  /** A whole data message. `data` is a fresh buffer of exactly the message's bytes, owned by the callee. */
  message(data: ArrayBuffer, binary: boolean): void;
  ping(payload: Uint8Array): void;
  pong(payload: Uint8Array): void;
  /** A close frame; `code` is undefined when the frame carried none. */
  close(code: number | undefined, reason: string): void;
}

/** Limits of one receiver. */
export interface ReceiverOptions {
  /** Largest message, the sum of its fragments' payloads. */
  readonly maxMessageBytes: number;
}

const fatalDecoder = new TextDecoder("utf-8", { fatal: true });
const EMPTY = new Uint8Array(0);
/** The first buffer of a fragmented message; it doubles as fragments arrive. */
const FIRST_FRAGMENT_BUFFER = 4096;
const encoder = new TextEncoder();

/** Little-endian hosts read the four mask bytes as one 32-bit word in that order. */
const LITTLE_ENDIAN = new Uint8Array(new Uint32Array([1]).buffer)[0] === 1;

/**
 * XORs `data` in place with the 4-byte `mask`, where `data[0]` is the payload byte at `offset` (mod 4).
 * Whole 32-bit words where the buffer's alignment allows (a byte loop costs as much as the rest of the server).
 */
export function unmask(data: Uint8Array, mask: Uint8Array, offset = 0): void {
  const length = data.byteLength;
  let i = 0;
  // Bytes up to the first 4-aligned address, so the rest can go through a Uint32Array view.
  const lead = Math.min(length, (4 - (data.byteOffset & 3)) & 3);
  for (; i < lead; i++) data[i]! ^= mask[(offset + i) & 3]!;
  const words = (length - i) >>> 2;
  if (words > 0) {
    const m0 = mask[(offset + i) & 3]!;
    const m1 = mask[(offset + i + 1) & 3]!;
    const m2 = mask[(offset + i + 2) & 3]!;
    const m3 = mask[(offset + i + 3) & 3]!;
    const word = LITTLE_ENDIAN
      ? (m0 | (m1 << 8) | (m2 << 16) | (m3 << 24)) >>> 0
      : ((m0 << 24) | (m1 << 16) | (m2 << 8) | m3) >>> 0;
    const view = new Uint32Array(data.buffer, data.byteOffset + i, words);
    for (let w = 0; w < words; w++) view[w]! ^= word;
    i += words * 4;
  }
  for (; i < length; i++) data[i]! ^= mask[(offset + i) & 3]!;
}

const enum State {
  HEADER,
  PAYLOAD,
}

/**
 * Parses client frames from a byte stream. Feed it every chunk read from the socket with {@linkcode push};
 * it calls the events synchronously and throws {@linkcode WebSocketError} on the first violation, after which
 * it must not be used again.
 */
export class FrameReceiver {
  readonly #events: FrameEvents;
  readonly #maxMessageBytes: number;
  /** Header bytes of a header that arrived split across chunks. */
  readonly #header = new Uint8Array(14);
  #headerFilled = 0;
  #state = State.HEADER;

  // The frame being read.
  #fin = false;
  #opcode = 0;
  readonly #mask = new Uint8Array(4);
  /** Where the frame's payload goes: `#payloadLength` bytes of `#payload` from `#payloadStart`. */
  #payload: Uint8Array = new Uint8Array(0);
  #payloadStart = 0;
  #payloadLength = 0;
  #payloadFilled = 0;

  // The message being assembled from fragments.
  #messageOpcode = 0;
  #messageBytes = 0;
  /**
   * The fragments of a message, written one after the other into a buffer that doubles as needed (up to the
   * message limit): a message sent as a million 1-byte fragments holds about its own size, not a buffer each.
   */
  #message: Uint8Array = EMPTY;
  /** Streams text validation across fragments, so invalid UTF-8 fails at the fragment that carries it. */
  #textDecoder: TextDecoder | undefined;

  constructor(events: FrameEvents, options: ReceiverOptions) {
    this.#events = events;
    this.#maxMessageBytes = options.maxMessageBytes;
  }

  /** Whether a message has begun and not yet ended: a fragment seen, or a frame's payload half read. */
  get partial(): boolean {
    return this.#messageOpcode !== 0 || (this.#state === State.PAYLOAD && this.#opcode < Opcode.CLOSE);
  }

  /** Bytes of the unfinished message held so far (fragments plus the current frame's payload). */
  get heldBytes(): number {
    const single = this.#state === State.PAYLOAD && this.#payload !== this.#message;
    return this.#message.byteLength + (single ? this.#payloadFilled : 0);
  }

  /** Consumes one chunk of bytes from the socket. */
  push(chunk: Uint8Array): void {
    let at = 0;
    const end = chunk.byteLength;
    while (at < end) {
      if (this.#state === State.HEADER) {
        at = this.#readHeader(chunk, at);
      } else {
        const take = Math.min(end - at, this.#payloadLength - this.#payloadFilled);
        const to = this.#payloadStart + this.#payloadFilled;
        // Tiny payloads byte by byte: a view per fragment would cost more than the copy.
        if (take <= 16) { for (let i = 0; i < take; i++) this.#payload[to + i] = chunk[at + i]!; }
        else this.#payload.set(chunk.subarray(at, at + take), to);
        this.#payloadFilled += take;
        at += take;
        if (this.#payloadFilled === this.#payloadLength) this.#frameDone();
      }
    }
  }

  /**
   * Reads a header starting at `chunk[at]`. When the whole header is in the chunk, it is parsed in place;
   * otherwise the bytes are collected until it is complete. Returns the offset after what was consumed.
   */
  #readHeader(chunk: Uint8Array, at: number): number {
    let source = chunk;
    let start = at;
    let available = chunk.byteLength - at;
    if (this.#headerFilled > 0) {
      // Continue a split header: copy at most what it can still need.
      const take = Math.min(available, 14 - this.#headerFilled);
      this.#header.set(chunk.subarray(at, at + take), this.#headerFilled);
      source = this.#header;
      start = 0;
      available = this.#headerFilled + take;
      const used = this.#parseHeader(source, start, available);
      if (used === 0) {
        this.#headerFilled += take;
        return at + take;
      }
      const consumed = used - this.#headerFilled;
      this.#headerFilled = 0;
      return at + consumed;
    }
    const used = this.#parseHeader(source, start, available);
    if (used === 0) {
      this.#header.set(chunk.subarray(at), 0);
      this.#headerFilled = available;
      return chunk.byteLength;
    }
    return at + used;
  }

  /** Parses a header from `b[start..start+available)`; returns its length, or 0 if more bytes are needed. */
  #parseHeader(b: Uint8Array, start: number, available: number): number {
    if (available < 2) return 0;
    const b0 = b[start]!;
    const b1 = b[start + 1]!;
    let length = b1 & 0x7f;
    const headerLength = 2 + (length === 126 ? 2 : length === 127 ? 8 : 0) + 4;
    // Check what the first two bytes already show before waiting for the rest.
    const fin = (b0 & 0x80) !== 0;
    const opcode = b0 & 0x0f;
    this.#checkFirstBytes(b0, b1, fin, opcode);
    if (available < headerLength) {
      if (length === 127 && available >= 3 && (b[start + 2]! & 0x80) !== 0) {
        throw new WebSocketError(
          CloseCode.PROTOCOL_ERROR,
          "Invalid frame: 64-bit length has its top bit set",
        );
      }
      return 0;
    }
    let at = start + 2;
    if (length === 126) {
      length = (b[at]! << 8) | b[at + 1]!;
      at += 2;
    } else if (length === 127) {
      const high = ((b[at]! << 24) | (b[at + 1]! << 16) | (b[at + 2]! << 8) | b[at + 3]!) >>> 0;
      const low = ((b[at + 4]! << 24) | (b[at + 5]! << 16) | (b[at + 6]! << 8) | b[at + 7]!) >>> 0;
      if (high >= 0x8000_0000) {
        throw new WebSocketError(
          CloseCode.PROTOCOL_ERROR,
          "Invalid frame: 64-bit length has its top bit set",
        );
      }
      // Past 2^53 the length cannot be represented; any such frame is over every limit anyway.
      length = high >= 0x20_0000 ? Number.MAX_SAFE_INTEGER : high * 0x1_0000_0000 + low;
      at += 8;
    }
    this.#mask[0] = b[at]!;
    this.#mask[1] = b[at + 1]!;
    this.#mask[2] = b[at + 2]!;
    this.#mask[3] = b[at + 3]!;
    this.#fin = fin;
    this.#opcode = opcode;
    if (opcode >= Opcode.CLOSE) {
      if (length > MAX_CONTROL_PAYLOAD) {
        throw new WebSocketError(
          CloseCode.PROTOCOL_ERROR,
          `Invalid frame: control frame payload of ${length} bytes (the limit is ${MAX_CONTROL_PAYLOAD})`,
        );
      }
    } else {
      const total = this.#messageBytes + length;
      if (total > this.#maxMessageBytes) {
        throw new WebSocketError(
          CloseCode.MESSAGE_TOO_BIG,
          `Message of at least ${total} bytes exceeds the limit of ${this.#maxMessageBytes}`,
        );
      }
    }
    if (opcode < Opcode.CLOSE && (opcode === Opcode.CONTINUATION || !fin)) {
      // A fragment: its payload goes straight after the fragments before it.
      const need = this.#messageBytes + length;
      if (this.#message.byteLength < need) {
        const grown = new Uint8Array(
          Math.min(
            this.#maxMessageBytes,
            Math.max(need, 2 * this.#message.byteLength, FIRST_FRAGMENT_BUFFER),
          ),
        );
        grown.set(this.#message.subarray(0, this.#messageBytes));
        this.#message = grown;
      }
      this.#payload = this.#message;
      this.#payloadStart = this.#messageBytes;
    } else {
      this.#payload = new Uint8Array(length);
      this.#payloadStart = 0;
    }
    this.#payloadLength = length;
    this.#payloadFilled = 0;
    if (length === 0) this.#frameDone();
    else this.#state = State.PAYLOAD;
    return headerLength;
  }

  #checkFirstBytes(b0: number, b1: number, fin: boolean, opcode: number): void {
    if ((b0 & 0x70) !== 0) {
      throw new WebSocketError(CloseCode.PROTOCOL_ERROR, "Invalid frame: reserved bits set (no extension)");
    }
    if ((b1 & 0x80) === 0) {
      throw new WebSocketError(CloseCode.PROTOCOL_ERROR, "Invalid frame: client frames must be masked");
    }
    switch (opcode) {
      case Opcode.CONTINUATION:
        if (this.#messageOpcode === 0) {
          throw new WebSocketError(CloseCode.PROTOCOL_ERROR, "Invalid frame: continuation without a message");
        }
        return;
      case Opcode.TEXT:
      case Opcode.BINARY:
        if (this.#messageOpcode !== 0) {
          throw new WebSocketError(
            CloseCode.PROTOCOL_ERROR,
            "Invalid frame: new message before the fragmented one ended",
          );
        }
        return;
      case Opcode.CLOSE:
      case Opcode.PING:
      case Opcode.PONG:
        if (!fin) {
          throw new WebSocketError(CloseCode.PROTOCOL_ERROR, "Invalid frame: fragmented control frame");
        }
        return;
      default:
        throw new WebSocketError(CloseCode.PROTOCOL_ERROR, `Invalid frame: reserved opcode ${opcode}`);
    }
  }

  #frameDone(): void {
    this.#state = State.HEADER;
    const target = this.#payload;
    const start = this.#payloadStart;
    const length = this.#payloadLength;
    this.#payload = EMPTY;
    const fragment = target === this.#message;
    if (length <= 16) {
      for (let i = 0; i < length; i++) target[start + i]! ^= this.#mask[i & 3]!;
    } else {
      unmask(fragment ? target.subarray(start, start + length) : target, this.#mask);
    }
    const opcode = this.#opcode;
    if (opcode >= Opcode.CLOSE) {
      this.#control(opcode, target);
      return;
    }
    if (opcode !== Opcode.CONTINUATION) {
      this.#messageOpcode = opcode;
      if (opcode === Opcode.TEXT && !this.#fin) this.#textDecoder = new TextDecoder("utf-8", { fatal: true });
    }
    const binary = this.#messageOpcode === Opcode.BINARY;
    if (!binary) this.#checkText(fragment ? target.subarray(start, start + length) : target, this.#fin);
    if (!fragment) {
      // The common case: one frame, one message, its buffer handed over as it is.
      this.#messageOpcode = 0;
      this.#events.message(target.buffer as ArrayBuffer, binary);
      return;
    }
    this.#messageBytes += length;
    if (!this.#fin) return;
    const whole = this.#message.byteLength === this.#messageBytes
      ? this.#message
      : this.#message.slice(0, this.#messageBytes);
    this.#message = EMPTY;
    this.#messageOpcode = 0;
    this.#messageBytes = 0;
    this.#events.message(whole.buffer as ArrayBuffer, binary);
  }

  #checkText(payload: Uint8Array, fin: boolean): void {
    try {
      if (this.#textDecoder !== undefined) {
        this.#textDecoder.decode(payload, { stream: !fin });
        if (fin) this.#textDecoder = undefined;
      } else {
        fatalDecoder.decode(payload);
      }
    } catch {
      throw new WebSocketError(CloseCode.INVALID_PAYLOAD, "Invalid frame: text message is not valid UTF-8");
    }
  }

  #control(opcode: number, payload: Uint8Array): void {
    if (opcode === Opcode.PING) {
      this.#events.ping(payload);
    } else if (opcode === Opcode.PONG) {
      this.#events.pong(payload);
    } else {
      if (payload.byteLength === 0) {
        this.#events.close(undefined, "");
        return;
      }
      if (payload.byteLength === 1) {
        throw new WebSocketError(CloseCode.PROTOCOL_ERROR, "Invalid close frame: 1-byte payload");
      }
      const code = (payload[0]! << 8) | payload[1]!;
      if (!isValidCloseCode(code)) {
        throw new WebSocketError(CloseCode.PROTOCOL_ERROR, `Invalid close frame: code ${code}`);
      }
      let reason: string;
      try {
        reason = fatalDecoder.decode(payload.subarray(2));
      } catch {
        throw new WebSocketError(CloseCode.INVALID_PAYLOAD, "Invalid close frame: reason is not valid UTF-8");
      }
      this.#events.close(code, reason);
    }
  }
}

/** Length of a server frame header for a payload of `length` bytes (server frames are not masked). */
export function headerLength(length: number): number {
  return length < 126 ? 2 : length < 0x1_0000 ? 4 : 10;
}

/** Writes a server frame header (FIN set) for `opcode` and `length` at `out[0]`; returns its length. */
export function writeHeader(out: Uint8Array, opcode: number, length: number): number {
  out[0] = 0x80 | opcode;
  if (length < 126) {
    out[1] = length;
    return 2;
  }
  if (length < 0x1_0000) {
    out[1] = 126;
    out[2] = length >>> 8;
    out[3] = length & 0xff;
    return 4;
  }
  out[1] = 127;
  const high = Math.floor(length / 0x1_0000_0000);
  const low = length >>> 0;
  out[2] = high >>> 24;
  out[3] = (high >>> 16) & 0xff;
  out[4] = (high >>> 8) & 0xff;
  out[5] = high & 0xff;
  out[6] = low >>> 24;
  out[7] = (low >>> 16) & 0xff;
  out[8] = (low >>> 8) & 0xff;
  out[9] = low & 0xff;
  return 10;
}

/** One whole server frame: header and payload in one buffer (the one copy of the send path). */
export function encodeFrame(opcode: number, payload: Uint8Array): Uint8Array {
  const frame = new Uint8Array(headerLength(payload.byteLength) + payload.byteLength);
  frame.set(payload, writeHeader(frame, opcode, payload.byteLength));
  return frame;
}

/**
 * The payload of a close frame: the code and a reason cut to fit the 125-byte control limit on a character
 * boundary. `undefined` code gives an empty payload.
 */
export function closePayload(code: number | undefined, reason = ""): Uint8Array {
  if (code === undefined) return new Uint8Array(0);
  let text = encoder.encode(reason);
  if (text.byteLength > MAX_CONTROL_PAYLOAD - 2) {
    let cut = MAX_CONTROL_PAYLOAD - 2;
    // Back up over continuation bytes (10xxxxxx) so the reason stays valid UTF-8.
    while (cut > 0 && (text[cut]! & 0xc0) === 0x80) cut--;
    text = text.subarray(0, cut);
  }
  const payload = new Uint8Array(2 + text.byteLength);
  payload[0] = code >>> 8;
  payload[1] = code & 0xff;
  payload.set(text, 2);
  return payload;
}
