/**
 * Process-wide budgets seen from outside: messages still arriving count against a shared byte budget, and a
 * socket in the middle of one stops reading while the budget is spent; the message deadline frees it.
 */
import assert from "node:assert/strict";
import { report, startRelay } from "../_util.ts";
import { encodeFrame, expectCloseThenEof, Opcode, RawClient, sleep } from "./_frames.ts";
import { MUX_TARGET } from "./_relay.ts";

const KIB = 1024;
/** The transport's largest read: a socket can take at most this much past the budget before it stops. */
const MAX_READ = 128 * KIB;

Deno.test("messages still arriving are held within the shared budget; the deadline frees them", async () => {
  const budget = 256 * KIB;
  const messageTimeoutMs = 1500;
  await using relay = startRelay({ totalQueueBytes: budget, maxFrameBytes: 1024 * KIB, messageTimeoutMs });
  const clients: RawClient[] = [];
  const writes: Promise<boolean>[] = [];
  try {
    for (let i = 0; i < 4; i++) {
      const { client } = await RawClient.upgrade(relay.port, MUX_TARGET);
      clients.push(client);
      // A header announcing 1 MiB, then 768 KiB of it: the message never completes. Without the budget the
      // relay would hold 3 MiB for these four sockets.
      const partial = encodeFrame({
        opcode: Opcode.BINARY,
        payload: new Uint8Array(768 * KIB),
        declaredLength: 1024 * KIB,
      });
      writes.push(client.tryWrite(partial, { timeoutMs: messageTimeoutMs + 3000 }));
    }
    await sleep(500);
    const held = relay.relay.assembly.used;
    report(`4 sockets sending 768 KiB of a 1 MiB message: ${held} bytes held against a budget of ${budget}`);
    assert.ok(held > 0, "partial messages are counted");
    assert.ok(held <= budget + clients.length * MAX_READ, `held ${held} bytes against a budget of ${budget}`);
    for (const client of clients) {
      await expectCloseThenEof(client, 1008, { withinMs: messageTimeoutMs + 3000 });
    }
    await Promise.all(writes);
    assert.equal(relay.relay.assembly.used, 0, "every held byte is given back");
  } finally {
    for (const client of clients) await client.close();
  }
});
