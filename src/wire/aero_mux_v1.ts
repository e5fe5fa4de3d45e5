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
  encodeWindow,
  MUX_CREDIT_INITIAL_WINDOW,
  MUX_CREDIT_MAX_WINDOW,
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

/** Upload credit of one stream under the credit extension, in payload bytes. */
interface UploadCredit {
  /** DATA payload bytes received. */
  received: number;
  /** Bytes the client may have sent in all: the initial window plus every WINDOW sent. */
  allowed: number;
  /** Bytes written to the target and already given back as credit. */
  returned: number;
}

/** `aero-tcp-mux-v1` (and its credit extension), for one session. */
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
  /** Credit extension: the relay's upload window per stream; undefined for plain aero-tcp-mux-v1. */
  readonly #uploadWindow: number | undefined;
  readonly #uploads = new Map<number, UploadCredit>();
  /** Upload credit held by the client or queued, over every stream: kept within the session's queue budget. */
  #outstanding = 0;

  /**
   * @param maxPayloadBytes largest frame payload (a header announcing more closes the session)
   * @param frameTimeoutMs how long a frame may take to arrive whole (0 = no limit)
   * @param uploadWindow the credit extension was negotiated: bytes each stream's client may have in flight
   */
  constructor(session: Session, maxPayloadBytes: number, frameTimeoutMs: number, uploadWindow?: number) {
    this.#session = session;
    this.#decoder = new MuxFrameDecoder({ maxPayloadBytes, credit: uploadWindow !== undefined });
    this.#frameTimeoutMs = frameTimeoutMs;
    this.#uploadWindow = uploadWindow;
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
          const window = this.#uploadWindow;
          if (window === undefined) {
            session.openTarget(id, frame.host, frame.port);
            continue;
          }
          // Credit extension: both directions start at the initial window; the relay then tops the client's
          // up to its configured window at once (no round trip before a large upload can start).
          const upload: UploadCredit = { received: 0, allowed: MUX_CREDIT_INITIAL_WINDOW, returned: 0 };
          this.#uploads.set(id, upload);
          this.#outstanding += MUX_CREDIT_INITIAL_WINDOW;
          session.openTarget(id, frame.host, frame.port, { downloadCredit: MUX_CREDIT_INITIAL_WINDOW });
          // The top-up is at most what is left of the session's budget: all the windows together can then be
          // queued without pausing the session (only the initial windows of very many streams could).
          // (A quarter of the budget stays free for the bookkeeping each queued chunk is charged.)
          const budget = Math.floor(session.sessionQueueBytes * 0.75);
          const topUp = Math.min(window - MUX_CREDIT_INITIAL_WINDOW, budget - this.#outstanding);
          if (session.hasStream(id) && topUp > 0) {
            this.#outstanding += topUp;
            this.#grant(id, upload, topUp);
          }
          continue;
        }
        case MuxMsgType.DATA: {
          const upload = this.#uploads.get(frame.streamId);
          if (upload !== undefined) {
            upload.received += frame.data.byteLength;
            if (upload.received > upload.allowed) {
              session.countLimit(
                "credit_overrun",
                frame.streamId,
                `Stream ${frame.streamId} sent ${upload.received} bytes; its window allowed ${upload.allowed}`,
              );
              this.#streamError(
                frame.streamId,
                MuxErrorCode.STREAM_BUFFER_OVERFLOW,
                `Window overrun: ${upload.received} bytes sent, ${upload.allowed} allowed`,
              );
              continue;
            }
          }
          if (!session.data(frame.streamId, frame.data) && !session.isRecent(frame.streamId)) {
            this.#error(frame.streamId, MuxErrorCode.UNKNOWN_STREAM, "unknown stream");
          }
          continue;
        }
        case MuxMsgType.WINDOW:
          // A grant for a stream that is gone crossed its end on the wire: nothing to do.
          if (!session.grantDownload(frame.streamId, frame.bytes)) continue;
          if (session.downloadCredit(frame.streamId)! > MUX_CREDIT_MAX_WINDOW) {
            this.#streamError(
              frame.streamId,
              MuxErrorCode.PROTOCOL_ERROR,
              `Window over ${MUX_CREDIT_MAX_WINDOW} bytes`,
            );
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

  /** Credit extension: gives back the bytes that reached the target, in WINDOWs of at least a quarter window. */
  uploadProgress(id: number, queuedBytes: number, bytesToTarget: number): void {
    const upload = this.#uploads.get(id);
    if (upload === undefined) return;
    const owed = bytesToTarget - upload.returned;
    if (owed <= 0) return;
    // Batched, so that a stream of small writes does not cost a WINDOW each; everything once the queue is empty.
    if (queuedBytes > 0 && owed < this.#uploadWindow! / 4) return;
    upload.returned = bytesToTarget;
    this.#grant(id, upload, owed);
  }

  /** Forgets a stream's upload credit; what it held no longer counts against the session. */
  #dropUpload(id: number): void {
    const upload = this.#uploads.get(id);
    if (upload === undefined) return;
    this.#uploads.delete(id);
    // Held: granted in all, less what has been written (credit given back was granted again one for one).
    this.#outstanding -= upload.allowed - upload.returned;
  }

  #grant(id: number, upload: UploadCredit, bytes: number): void {
    upload.allowed += bytes;
    this.#session.sendFrame(encodeWindow(id, bytes));
  }

  targetEnded(id: number): void {
    this.#finSent.add(id);
    this.#session.sendFrame(encodeClose(id, MuxCloseFlag.FIN));
  }

  streamEnding(id: number, reason: CloseReason, message: string | undefined): void {
    this.#dropUpload(id);
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
    this.#dropUpload(id);
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
