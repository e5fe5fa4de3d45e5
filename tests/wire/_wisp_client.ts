/**
 * The real wisp-js client (npm `@mercuryworkshop/wisp-js`, pinned in deno.json), wrapped in promises for tests.
 * Nothing here speaks Wisp itself: every byte on the wire is the client library's.
 */
import { client, extensions } from "@mercuryworkshop/wisp-js";
import { concat, withTimeout } from "../_util.ts";

/** One stream of a wisp-js connection, its DATA collected and its CLOSE reason awaited. */
export interface WispJsStream {
  readonly raw: {
    send(data: Uint8Array): void;
    close(reason?: number): void;
    "buffer_size": number;
    "send_buffer": Uint8Array[];
  };
  readonly chunks: Uint8Array[];
  /** Total DATA bytes received. */
  readonly received: () => number;
  /** The CLOSE reason the relay sent (or 0x03 when the connection went away). */
  readonly closed: Promise<number>;
  /** Resolves once at least `bytes` have arrived. */
  until(bytes: number, ms?: number): Promise<Uint8Array>;
}

/** A wisp-js ClientConnection that has finished its handshake. */
export interface WispJsConnection extends AsyncDisposable {
  readonly conn: {
    "wisp_version": number;
    "server_motd": string | null;
    "udp_enabled": boolean;
    "max_buffer_size": number;
    close(): void;
  };
  open(host: string, port: number, type?: "tcp" | "udp"): WispJsStream;
}

/** Options passed through to wisp-js's ClientConnection. */
export interface WispJsOptions {
  readonly version?: 1 | 2;
  /** v2 only: credentials sent with the password extension. */
  readonly password?: { readonly username: string; readonly password: string };
}

/** Connects wisp-js to `url` and waits for the handshake (the CONTINUE on stream 0). */
export async function connectWispJs(url: string, options: WispJsOptions = {}): Promise<WispJsConnection> {
  const version = options.version ?? 2;
  const wispExtensions = options.password === undefined ? undefined : [
    new extensions.UDPExtension({ client_config: {} }),
    new extensions.PasswordAuthExtension({ client_config: options.password }),
  ];
  // deno-lint-ignore no-explicit-any
  const conn: any = new client.ClientConnection(url, {
    wisp_version: version,
    ...(wispExtensions === undefined ? {} : { wisp_extensions: wispExtensions }),
  });
  const closed = Promise.withResolvers<void>();
  await withTimeout(
    new Promise<void>((resolve, reject) => {
      conn.onopen = resolve;
      conn.onclose = () => {
        closed.resolve();
        reject(new Error("wisp-js connection closed before the handshake finished"));
      };
      conn.onerror = () => reject(new Error("wisp-js connection failed"));
    }),
    10_000,
    "the wisp-js handshake",
  );
  conn.onclose = () => closed.resolve();
  return {
    conn,
    open(host, port, type = "tcp") {
      const raw = conn.create_stream(host, port, type);
      const chunks: Uint8Array[] = [];
      let received = 0;
      let waiter: (() => void) | undefined;
      const closedWith = Promise.withResolvers<number>();
      raw.onmessage = (data: Uint8Array) => {
        chunks.push(new Uint8Array(data));
        received += data.byteLength;
        waiter?.();
      };
      raw.onclose = (reason: number) => {
        closedWith.resolve(reason);
        waiter?.();
      };
      return {
        raw,
        chunks,
        received: () => received,
        closed: closedWith.promise,
        async until(bytes, ms = 10_000) {
          const deadline = performance.now() + ms;
          while (received < bytes) {
            const left = deadline - performance.now();
            if (left <= 0) throw new Error(`Timed out with ${received} of ${bytes} bytes`);
            let timer: ReturnType<typeof setTimeout> | undefined;
            await new Promise<void>((resolve) => {
              waiter = resolve;
              timer = setTimeout(resolve, Math.min(left, 200));
            });
            clearTimeout(timer);
            waiter = undefined;
          }
          return concat(chunks);
        },
      };
    },
    async [Symbol.asyncDispose]() {
      conn.close();
      await withTimeout(closed.promise, 5000, "the wisp-js connection to close");
    },
  };
}
