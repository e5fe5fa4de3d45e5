/**
 * The errors a client caller catches: the relay's ERROR frames, a stream the relay reset, and the loss of the
 * whole session.
 * @module
 */
import { MUX_CONNECTION_STREAM_ID, MUX_ERROR_CODE_NAMES } from "../wire/aero_mux_v1_codec.ts";

/**
 * An ERROR frame from the relay (or a stream the client itself had to give up on), with its
 * `aero-tcp-mux-v1` code ({@linkcode MuxErrorCode}).
 */
export class RelayError extends Error {
  override name = "RelayError";
  /** The protocol's error code, e.g. `1` (`POLICY_DENIED`) or `2` (`DIAL_FAILED`). */
  readonly code: number;
  /** The code's name from the protocol table, e.g. `"POLICY_DENIED"`. */
  readonly codeName: string;
  /** The stream the error belongs to; `0` for the session. */
  readonly connectionId: number;

  constructor(code: number, message: string, options: { connectionId?: number; cause?: unknown } = {}) {
    super(message, options.cause === undefined ? undefined : { cause: options.cause });
    this.code = code;
    this.codeName = MUX_ERROR_CODE_NAMES[code] ?? `UNKNOWN_${code}`;
    this.connectionId = options.connectionId ?? MUX_CONNECTION_STREAM_ID;
  }
}

/**
 * The relay reset the stream (`CLOSE` with the RST flag): it ended without the target's end of stream, e.g.
 * an idle timeout or the relay shutting down, so bytes the target sent may be missing.
 */
export class StreamResetError extends Error {
  override name = "StreamResetError";
  /** The stream that was reset. */
  readonly connectionId: number;

  constructor(message: string, options: { connectionId: number }) {
    super(message);
    this.connectionId = options.connectionId;
  }
}

/**
 * The WebSocket session ended (or never opened): every stream of the session fails with this error.
 * `cause` holds the relay's session-level `RelayError` when it sent one before closing.
 */
export class SessionClosedError extends Error {
  override name = "SessionClosedError";
  /** The WebSocket close code (`1006` when the connection dropped or never opened). */
  readonly closeCode: number;
  /** The WebSocket close reason, possibly empty. */
  readonly reason: string;

  constructor(message: string, options: { closeCode: number; reason: string; cause?: unknown }) {
    super(message, options.cause === undefined ? undefined : { cause: options.cause });
    this.closeCode = options.closeCode;
    this.reason = options.reason;
  }
}
