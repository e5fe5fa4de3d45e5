/**
 * The seed framing (`/tcp-mux` without a subprotocol, README "Protocol (v1)"): 5-byte header, OPEN to an IPv4
 * address, OPEN acknowledgement, DATA, CLOSE, ERROR with the seed's codes. Bytes in, core calls out; core
 * events in, frames out. Every answer is byte-for-byte what the seed clients expect.
 * @module
 */
import { getLogger } from "@logtape/logtape";
import {
  CLOSE_PROTOCOL_ERROR,
  CLOSE_TOO_BIG,
  type Refusal,
  type Session,
  type Wire,
} from "../core/session.ts";
import type { CloseReason } from "../core/stream.ts";
import { Metrics } from "../metrics.ts";
import {
  type ClientFrame,
  decodeClientFrame,
  encodeClose,
  encodeError,
  encodeOpenAck,
  ERROR_CODE_NAMES,
  ErrorCode,
  FrameType,
  HEADER_SIZE,
  ProtocolError,
  SESSION_ID,
  writeHeader,
} from "../protocol/mod.ts";

const logger = getLogger(["aero-net-proxy", "session"]);

/** The ERROR code for a stream that ends in error, by the core's reason. */
const ENDING_CODES: Readonly<Partial<Record<CloseReason, ErrorCode>>> = {
  "connect_failed": ErrorCode.CONNECT_FAILED,
  "policy_denied": ErrorCode.POLICY_DENIED,
  "socket_error": ErrorCode.SOCKET_ERROR,
  "backpressure": ErrorCode.BACKPRESSURE,
  "rate_limited": ErrorCode.RATE_LIMITED,
  "internal_error": ErrorCode.INTERNAL_ERROR,
};

/** The ERROR code for an OPEN the core refused. */
const REFUSAL_CODES: Readonly<Record<Refusal, ErrorCode>> = {
  "policy_denied": ErrorCode.POLICY_DENIED,
  "rate_limited": ErrorCode.RATE_LIMITED,
  "invalid": ErrorCode.INVALID_FRAME,
};

/** The seed framing, for one session. */
export class SeedWire implements Wire {
  readonly dataHeaderSize = HEADER_SIZE;
  readonly halfClose = false;
  readonly #session: Session;

  constructor(session: Session) {
    this.#session = session;
  }

  writeDataHeader(frame: Uint8Array, id: number): void {
    writeHeader(frame, FrameType.DATA, id);
  }

  receive(data: ArrayBuffer | string): void {
    const session = this.#session;
    if (typeof data === "string") {
      this.#violation("Invalid frame: text messages are not part of the protocol; send binary frames");
      return;
    }
    session.countInbound(data.byteLength);
    let frame: ClientFrame;
    try {
      frame = decodeClientFrame(new Uint8Array(data));
    } catch (err: unknown) {
      if (!(err instanceof ProtocolError)) throw err;
      if (err.scope === "session") {
        this.#violation(err.message);
        return;
      }
      // A malformed OPEN is a refused OPEN: what the client pipelined behind it is dropped quietly.
      const refusedOpen = data.byteLength > 0 && new Uint8Array(data, 0, 1)[0] === FrameType.OPEN;
      if (refusedOpen && err.connectionId !== SESSION_ID && !session.hasStream(err.connectionId)) {
        session.remember(err.connectionId);
      }
      this.#error(err.connectionId, err.code, err.message);
      return;
    }
    switch (frame.type) {
      case FrameType.OPEN:
        if (session.hasStream(frame.connectionId)) {
          const id = frame.connectionId;
          this.#error(id, ErrorCode.INVALID_FRAME, `Invalid OPEN frame: connection id ${id} is already open`);
          return;
        }
        session.open(frame.connectionId, frame.ip, frame.port);
        return;
      case FrameType.DATA:
        if (!session.data(frame.connectionId, frame.data)) this.#unknownId(frame.connectionId, "DATA");
        return;
      case FrameType.CLOSE:
        if (!session.clientClose(frame.connectionId)) this.#unknownId(frame.connectionId, "CLOSE");
        return;
    }
  }

  targetEnded(): void {
    // The seed framing has no half-close: the stream ends at the target's EOF.
  }

  streamOpened(id: number): void {
    this.#session.sendFrame(encodeOpenAck(id));
  }

  streamEnding(id: number, reason: CloseReason, message: string | undefined): void {
    if (message !== undefined) this.#error(id, ENDING_CODES[reason] ?? ErrorCode.INTERNAL_ERROR, message);
    this.#session.sendFrame(encodeClose(id));
  }

  openRefused(id: number, refusal: Refusal, message: string): void {
    this.#error(id, REFUSAL_CODES[refusal], message);
  }

  /** A message over the size limit is answered in the seed's terms too: ERROR 5 on id 0, before the 1009. */
  peerViolation(code: number, message: string): void {
    if (code !== CLOSE_TOO_BIG) return;
    this.#session.countLimit("frame_size", SESSION_ID, message);
    this.#error(
      SESSION_ID,
      ErrorCode.INVALID_FRAME,
      `Invalid frame: ${message[0]!.toLowerCase()}${message.slice(1)}`,
    );
  }

  internalError(): void {
    this.#error(SESSION_ID, ErrorCode.INTERNAL_ERROR, "Internal relay error");
  }

  #unknownId(id: number, kind: string): void {
    if (this.#session.isRecent(id)) return;
    this.#error(id, ErrorCode.INVALID_FRAME, `Invalid ${kind} frame: no open stream has connection id ${id}`);
  }

  /** A session-level violation: ERROR on id 0, then close with 1002. */
  #violation(message: string): void {
    this.#error(SESSION_ID, ErrorCode.INVALID_FRAME, message);
    this.#session.protocolViolation(message, CLOSE_PROTOCOL_ERROR);
  }

  #error(id: number, code: ErrorCode, message: string): void {
    const session = this.#session;
    if (!session.admitReply(id)) return;
    Metrics.bump(session.metrics.errorsSent, ERROR_CODE_NAMES[code] ?? String(code));
    logger.debug("error_sent", {
      event: "error",
      sessionId: session.sessionId,
      streamId: id,
      code,
      codeName: ERROR_CODE_NAMES[code],
      reason: message,
    });
    session.sendFrame(encodeError(id, code, message));
  }
}
