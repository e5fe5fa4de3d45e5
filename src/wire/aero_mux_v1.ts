/**
 * Aero's `aero-tcp-mux-v1` (`/tcp-mux` with that subprotocol; ../shared/spec/aero-gateway-net-api.md 3.5) as
 * a wire of the stream core: a byte stream of 9-byte-header frames, split across or packed into WebSocket
 * messages; OPEN to a host name or address, no acknowledgement; DATA; CLOSE with FIN (half-close) or RST;
 * ERROR with the protocol's own codes, terminal for the stream (no CLOSE after it, as Aero's client expects);
 * PING answered with PONG.
 * @module
 */
import { CLOSE_PROTOCOL_ERROR, type Refusal, type Session, type Wire } from "../core/session.ts";
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

/** WebSocket close code for a text message on a binary protocol (RFC 6455 7.4.1), as Aero's gateway sends. */
const CLOSE_UNSUPPORTED_DATA = 1003;

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
  /** Every stream id the client has used: ids are never reused on one connection. */
  readonly #used = new Set<number>();
  /** Streams whose target's FIN has been sent as CLOSE FIN. */
  readonly #finSent = new Set<number>();

  constructor(session: Session, maxPayloadBytes: number) {
    this.#session = session;
    this.#decoder = new MuxFrameDecoder({ maxPayloadBytes });
  }

  writeDataHeader(frame: Uint8Array, id: number): void {
    writeDataHeader(frame, id);
  }

  receive(data: ArrayBuffer | string): void {
    const session = this.#session;
    if (typeof data === "string") {
      session.protocolViolation("Text message on aero-tcp-mux-v1, which is binary", CLOSE_UNSUPPORTED_DATA);
      return;
    }
    session.countInbound(data.byteLength);
    for (const frame of this.#decoder.push(new Uint8Array(data))) {
      if (session.closed) return;
      switch (frame.type) {
        case "invalid":
          if (frame.error.scope === "session") {
            this.#error(0, frame.error.code, frame.error.message);
            session.protocolViolation(frame.error.message, CLOSE_PROTOCOL_ERROR);
            return;
          }
          this.#error(frame.streamId, frame.error.code, frame.error.message);
          continue;
        case MuxMsgType.OPEN: {
          const id = frame.streamId;
          if (this.#used.has(id)) {
            const live = session.hasStream(id);
            this.#error(
              id,
              MuxErrorCode.PROTOCOL_ERROR,
              live ? "stream_id already exists" : "stream_id reused",
            );
            continue;
          }
          this.#used.add(id);
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
          if (session.admitReply(frame.streamId)) {
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
    const finSent = this.#finSent.delete(id);
    if (message !== undefined) {
      this.#error(id, ENDING_CODES[reason] ?? MuxErrorCode.PROTOCOL_ERROR, message);
      return;
    }
    if (finSent) return;
    // Ended without the target's FIN (idle, the client's RST, the relay's own end): the stream is gone.
    if (reason !== "client_reset") this.#session.sendFrame(encodeClose(id, MuxCloseFlag.RST));
  }

  openRefused(id: number, refusal: Refusal, message: string): void {
    this.#error(id, REFUSAL_CODES[refusal], message);
  }

  peerViolation(): void {
    // WebSocket-level violations close the connection; the protocol has nothing to add.
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
