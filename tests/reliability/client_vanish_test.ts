/**
 * Client vanishes (issue 7): the client's TCP connection goes away without a WebSocket close. Every TCP
 * socket of that session is closed within 2 s, and the relay's counters show it.
 */
import assert from "node:assert/strict";
import { decodeServerFrame, encodeOpen, FrameType } from "../../src/protocol/mod.ts";
import { RawWebSocket } from "../_raw_ws.ts";
import {
  delay,
  LOOPBACK,
  report,
  startRelay,
  startTcpServer,
  TOKEN,
  waitUntil,
  withTimeout,
} from "../_util.ts";

const STREAMS = 50;
const LIMIT_MS = 2000;

const VARIANTS = [
  { name: "FIN without a close frame", unreadBytes: 0 },
  // Bytes the client never read make its kernel answer the close with RST.
  { name: "RST (the client left bytes unread)", unreadBytes: 1024 },
] as const;

Deno.test("client vanishes: every TCP socket of the session is closed within 2 s; the counters say so", async (t) => {
  for (const variant of VARIANTS) {
    await t.step(variant.name, async () => {
      await using relay = startRelay();
      const { metrics } = relay.relay;
      const endedAt: number[] = [];
      await using target = startTcpServer(async (conn) => {
        try {
          if (variant.unreadBytes > 0) await conn.write(new Uint8Array(variant.unreadBytes));
          const buf = new Uint8Array(1024);
          while ((await conn.read(buf)) !== null) { /* discard */ }
        } finally {
          endedAt.push(performance.now());
        }
      });

      const ws = await RawWebSocket.connect(relay.port, `/tcp-mux?token=${TOKEN}`);
      let vanishedAt = 0;
      try {
        for (let id = 1; id <= STREAMS; id++) await ws.send(encodeOpen(id, LOOPBACK, target.port));
        let acks = 0;
        await withTimeout(
          (async () => {
            while (acks < STREAMS) {
              const raw = await ws.read();
              if (raw === null) throw new Error("The relay closed the WebSocket");
              if (raw.opcode === 0x2 && decodeServerFrame(raw.payload).type === FrameType.OPEN) acks++;
            }
          })(),
          10_000,
          "the OPEN acknowledgements",
        );
        // Let the targets' bytes reach the client's socket, where nobody reads them.
        await delay(200);
        assert.equal(metrics.sessionsActive, 1);
        assert.equal(metrics.streamsActive, STREAMS);
        assert.equal(target.accepted, STREAMS);
      } finally {
        vanishedAt = performance.now();
        ws.abort();
      }

      const allEnded = await waitUntil(
        () => endedAt.length === STREAMS && metrics.streamsActive === 0 && metrics.sessionsActive === 0,
        { timeoutMs: LIMIT_MS, intervalMs: 5 },
      );
      const countersAt = performance.now();
      const slowest = Math.max(...endedAt) - vanishedAt;
      report(
        `client vanishes (${variant.name}): ${endedAt.length}/${STREAMS} target sockets closed, the last ` +
          `${slowest.toFixed(1)} ms after the client vanished; counters (sessionsActive ` +
          `${metrics.sessionsActive}, streamsActive ${metrics.streamsActive}) at 0 after ` +
          `${(countersAt - vanishedAt).toFixed(1)} ms`,
      );
      assert.ok(
        allEnded,
        `after ${LIMIT_MS} ms: ${endedAt.length} sockets closed, ${metrics.streamsActive} active`,
      );
      assert.ok(slowest < LIMIT_MS);
      assert.equal(relay.relay.sessions.size, 0);
    });
  }
});
