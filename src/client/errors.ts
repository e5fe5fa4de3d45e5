/**
 * The errors a client caller catches: the relay's ERROR frames, and the loss of the whole session.
 * @module
 */
import { ERROR_CODE_NAMES, SESSION_ID } from "../protocol/mod.ts";

/** An ERROR frame from the relay (or a stream the client itself had to give up on), with its protocol code. */
export class RelayError extends Error {
  override name = "RelayError";
  /** The protocol's error code, e.g. `3` (`POLICY_DENIED`) or `6` (`CONNECT_FAILED`). */
  readonly code: number;
  /** The code's name from the protocol table, e.g. `"POLICY_DENIED"`. */
  readonly codeName: string;
  /** The stream the error belongs to; `0` for the session. */
  readonly connectionId: number;

  constructor(code: number, message: string, options: { connectionId?: number; cause?: unknown } = {}) {
    super(message, options.cause === undefined ? undefined : { cause: options.cause });
    this.code = code;
    this.codeName = ERROR_CODE_NAMES[code] ?? `UNKNOWN_${code}`;
    this.connectionId = options.connectionId ?? SESSION_ID;
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
