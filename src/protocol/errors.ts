import { ErrorCode, SESSION_ID } from "./constants.ts";

/**
 * Where a protocol violation is answered.
 *
 * - `"stream"`: an ERROR on the frame's connection id; the session lives on.
 * - `"session"`: an ERROR on id 0, then the WebSocket is closed with 1002.
 */
export type ProtocolErrorScope = "stream" | "session";

/** A frame that breaks protocol v1; the session turns it into an ERROR frame. */
export class ProtocolError extends Error {
  override name = "ProtocolError";
  /** The ERROR code to answer with. */
  readonly code: ErrorCode;
  /** Whether only the stream or the whole session is affected. */
  readonly scope: ProtocolErrorScope;
  /** The connection id to answer on (0 for session-level errors). */
  readonly connectionId: number;

  constructor(
    message: string,
    options: { scope: ProtocolErrorScope; connectionId?: number; code?: ErrorCode },
  ) {
    super(message);
    this.scope = options.scope;
    this.connectionId = options.scope === "session" ? SESSION_ID : options.connectionId ?? SESSION_ID;
    this.code = options.code ?? ErrorCode.INVALID_FRAME;
  }
}
