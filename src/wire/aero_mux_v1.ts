/**
 * Aero's `aero-tcp-mux-v1` (`/tcp-mux` with that subprotocol; ../shared/spec/aero-gateway-net-api.md 3.5) as
 * a wire of the stream core: a byte stream of 9-byte-header frames, split across or packed into WebSocket
 * messages; OPEN to a host name or address, no acknowledgement; DATA; CLOSE with FIN (half-close) or RST;
 * ERROR with the protocol's own codes, terminal for the stream (no CLOSE after it, as Aero's client expects);
 * PING answered with PONG.
 * @module
 */
import {
  CLOSE_POLICY_VIOLATION,
  CLOSE_PROTOCOL_ERROR,
  type Refusal,
  type Session,
  type Wire,
} from "../core/session.ts";
import type { CloseReason } from "../core/stream.ts";
import { Metrics } from "../metrics.ts";
import {
  encodeClose,
  encodeError,
  encodePong,
  MUX_ERROR_CODE_NAMES,
  MUX_HEADER_SIZE,
  MuxCloseFlag,
  MuxErrorCode,
  MuxFrameDecoder,
  MuxMsgType,
  writeDataHeader,
} from "./aero_mux_v1_codec.ts";

/** The ERROR code for a stream that ends in error, by the core's reason. */
const ENDING_CODES: Readonly<Partial<Record<CloseReason, MuxErrorCode>>> = {
  "connect_failed": MuxErrorCode.DIAL_FAILED,
  "socket_error": MuxErrorCode.DIAL_FAILED,
  "policy_denied": MuxErrorCode.POLICY_DENIED,
  "invalid_target": MuxErrorCode.PROTOCOL_ERROR,
  "backpressure": MuxErrorCode.STREAM_BUFFER_OVERFLOW,
  "rate_limited": MuxErrorCode.STREAM_LIMIT_EXCEEDED,
  "internal_error": MuxErrorCode.PROTOCOL_ERROR,
};

/** The ERROR code for an OPEN the core refused. */
const REFUSAL_CODES: Readonly<Record<Refusal, MuxErrorCode>> = {
  "policy_denied": MuxErrorCode.POLICY_DENIED,
  "rate_limited": MuxErrorCode.STREAM_LIMIT_EXCEEDED,
  "invalid": MuxErrorCode.PROTOCOL_ERROR,
};

/** `aero-tcp-mux-v1`, for one session. */
export class AeroMuxWire implements Wire {
  readonly dataHeaderSize = MUX_HEADER_SIZE;
  readonly halfClose = true;
  readonly #session: Session;
  readonly #decoder: MuxFrameDecoder;
  /** Streams whose target's FIN has been sent as CLOSE FIN. */
  readonly #finSent = new Set<number>();
  readonly #frameTimeoutMs: number;
  /** Runs while a frame is half received: a frame must arrive whole within the message deadline. */
  #frameTimer: ReturnType<typeof setTimeout> | undefined;

  /**
   * @param maxPayloadBytes largest frame payload (a header announcing more closes the session)
   * @param frameTimeoutMs how long a frame may take to arrive whole (0 = no limit)
   */
  constructor(session: Session, maxPayloadBytes: number, frameTimeoutMs: number) {
    this.#session = session;
    this.#decoder = new MuxFrameDecoder({ maxPayloadBytes });
    this.#frameTimeoutMs = frameTimeoutMs;
  }

  writeDataHeader(frame: Uint8Array, id: number): void {
    writeDataHeader(frame, id);
  }

  receive(data: ArrayBuffer | string): void {
    const session = this.#session;
    const bytes = session.binaryMessage(data, "aero-tcp-mux-v1");
    if (bytes === undefined) return;
    const frames = this.#decoder.push(bytes);
    this.#watchPartialFrame();
    for (const frame of frames) {
      if (session.closed) return;
      switch (frame.type) {
        case "invalid":
          if (frame.error.scope === "session") {
            this.#error(0, frame.error.code, frame.error.message);
            session.protocolViolation(frame.error.message, CLOSE_PROTOCOL_ERROR);
            return;
          }
          this.#streamError(frame.streamId, frame.error.code, frame.error.message);
          continue;
        case MuxMsgType.OPEN: {
          const id = frame.streamId;
          // Ids are never reused on one connection. The relay remembers the live ones and the last 4,096 that
          // ended (memory stays bounded however many OPENs a client sends); a reuse within that is refused.
          if (session.hasStream(id) || session.isRecent(id)) {
            const live = session.hasStream(id);
            this.#streamError(
              id,
              MuxErrorCode.PROTOCOL_ERROR,
              live ? "stream_id already exists" : "stream_id reused",
            );
            continue;
          }
          session.metrics.openMetadataBytes += frame.metadata.byteLength;
          session.openTarget(id, frame.host, frame.port);
          continue;
        }
        case MuxMsgType.DATA:
          if (!session.data(frame.streamId, frame.data) && !session.isRecent(frame.streamId)) {
            this.#error(frame.streamId, MuxErrorCode.UNKNOWN_STREAM, "unknown stream");
          }
          continue;
        case MuxMsgType.CLOSE:
          // A CLOSE for a stream that is gone is ignored: it crossed the end on the wire.
          if ((frame.flags & MuxCloseFlag.RST) !== 0) session.abortStream(frame.streamId);
          else session.clientClose(frame.streamId);
          continue;
        case MuxMsgType.PING:
          // A PONG echoes its payload: replies are charged by size, so a client that pings without reading
          // is cut off before the relay holds more than about 1 MiB of them.
          if (session.admitReply(frame.streamId, frame.payload.byteLength)) {
            session.sendFrame(encodePong(frame.streamId, frame.payload));
          }
          continue;
        case MuxMsgType.PONG:
        case MuxMsgType.ERROR:
          // Clients do not send ERROR in v1; a PONG answers nothing we asked.
          continue;
      }
    }
  }

  streamOpened(): void {
    // No OPEN acknowledgement in v1: success is implicit.
  }

  targetEnded(id: number): void {
    this.#finSent.add(id);
    this.#session.sendFrame(encodeClose(id, MuxCloseFlag.FIN));
  }

  streamEnding(id: number, reason: CloseReason, message: string | undefined): void {
    // After CLOSE FIN the client considers the stream over: a late error would be a second terminal frame.
    if (this.#finSent.delete(id)) return;
    if (message !== undefined) {
      this.#error(id, ENDING_CODES[reason] ?? MuxErrorCode.PROTOCOL_ERROR, message);
      return;
    }
    // Ended without the target's FIN (idle, the client's RST, the relay's own end): the stream is gone.
    if (reason !== "client_reset") this.#session.sendFrame(encodeClose(id, MuxCloseFlag.RST));
  }

  openRefused(id: number, refusal: Refusal, message: string): void {
    this.#error(id, REFUSAL_CODES[refusal], message);
  }

  peerViolation(): void {
    // WebSocket-level violations close the connection; the protocol has nothing to add.
  }

  /**
   * An ERROR for one stream. ERROR is terminal for Aero's client, so a live stream it names is aborted too:
   * the relay never keeps a stream the client has given up on.
   */
  #streamError(id: number, code: MuxErrorCode, message: string): void {
    this.#error(id, code, message);
    this.#session.abortStream(id);
  }

  /** Starts or stops the deadline of a half-received frame. */
  #watchPartialFrame(): void {
    this.#session.holdPartial(this.#decoder.bufferedBytes);
    if (this.#decoder.bufferedBytes === 0) {
      if (this.#frameTimer !== undefined) clearTimeout(this.#frameTimer);
      this.#frameTimer = undefined;
      return;
    }
    if (this.#frameTimer !== undefined || this.#frameTimeoutMs === 0) return;
    this.#frameTimer = setTimeout(() => {
      this.#frameTimer = undefined;
      if (this.#session.closed || this.#decoder.bufferedBytes === 0) return;
      this.#error(0, MuxErrorCode.PROTOCOL_ERROR, `Frame not completed within ${this.#frameTimeoutMs} ms`);
      this.#session.protocolViolation("aero-tcp-mux-v1 frame not completed in time", CLOSE_POLICY_VIOLATION);
    }, this.#frameTimeoutMs);
  }

  /** The session ended: no deadline outlives it. */
  sessionClosed(): void {
    if (this.#frameTimer !== undefined) clearTimeout(this.#frameTimer);
    this.#frameTimer = undefined;
  }

  internalError(): void {
    this.#error(0, MuxErrorCode.PROTOCOL_ERROR, "Internal relay error");
  }

  #error(id: number, code: MuxErrorCode, message: string): void {
    const session = this.#session;
    if (!session.admitReply(id)) return;
    Metrics.bump(session.metrics.errorsSent, MUX_ERROR_CODE_NAMES[code] ?? String(code));
    session.sendFrame(encodeError(id, { code, message }));
  }
}
