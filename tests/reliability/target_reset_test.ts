/**
 * Target reset mid-stream (issue 7): the target's connection ends with a TCP RST. The stream gets ERROR 7
 * (SOCKET_ERROR) then CLOSE, and no other stream of the session notices.
 *
 * Deno cannot send a RST (no SO_LINGER; closing a socket with unread bytes sends FIN first, so the relay
 * sees a clean end), so two small targets in other languages do it: Node.js `socket.resetAndDestroy()` (Node is
 * all CI has) and Python with SO_LINGER 0. Each sends 64 KiB, waits for one byte, then resets.
 */
import assert from "node:assert/strict";
import { ErrorCode, FrameType, type ServerFrame } from "../../src/protocol/mod.ts";
import {
  describeFrame,
  MuxClient,
  muxUrl,
  report,
  startEchoServer,
  startRelay,
  withTimeout,
} from "../_util.ts";

const NODE_TARGET = `
const net = require("node:net");
const server = net.createServer((socket) => {
  socket.write(Buffer.alloc(65536, 0x72));
  socket.once("data", () => {
    socket.resetAndDestroy();
    server.close();
  });
});
server.listen(0, "127.0.0.1", () => console.log(server.address().port));
`;

const PYTHON_TARGET = `
import socket, struct
server = socket.socket()
server.bind(("127.0.0.1", 0))
server.listen(1)
print(server.getsockname()[1], flush=True)
conn, _ = server.accept()
conn.sendall(b"r" * 65536)
conn.recv(1)
conn.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
conn.close()
`;

interface ResetTarget {
  readonly name: string;
  readonly program: string;
  readonly args: readonly string[];
}

const RESET_TARGETS: readonly ResetTarget[] = [
  { name: "Node.js resetAndDestroy()", program: "node", args: ["-e", NODE_TARGET] },
  { name: "Python SO_LINGER 0", program: "python3", args: ["-c", PYTHON_TARGET] },
];

async function available(program: string): Promise<boolean> {
  try {
    const { success } = await new Deno.Command(program, {
      args: ["--version"],
      stdout: "null",
      stderr: "null",
    })
      .output();
    return success;
  } catch {
    return false;
  }
}

/** Starts a one-connection resetting target and resolves its port once it listens. */
async function startResetTarget(target: ResetTarget): Promise<{ port: number } & AsyncDisposable> {
  const child = new Deno.Command(target.program, {
    args: [...target.args],
    stdin: "null",
    stdout: "piped",
    stderr: "inherit",
  }).spawn();
  let output = "";
  const { promise: portLine, resolve } = Promise.withResolvers<void>();
  const reading = (async () => {
    for await (const text of child.stdout.pipeThrough(new TextDecoderStream())) {
      output += text;
      if (output.includes("\n")) resolve();
    }
    resolve();
  })();
  const dispose = async () => {
    try {
      child.kill("SIGKILL");
    } catch { /* already exited */ }
    await child.status;
    await reading;
  };
  await withTimeout(portLine, 10_000, `the ${target.program} target to listen`).catch(async (err) => {
    await dispose();
    throw err;
  });
  const port = Number(output.trim());
  assert.ok(port > 0, `the ${target.program} target printed ${JSON.stringify(output)}`);
  return { port, [Symbol.asyncDispose]: dispose };
}

/** Frames on `id` up to and including CLOSE. */
async function framesUntilClose(client: MuxClient, id: number): Promise<ServerFrame[]> {
  const frames: ServerFrame[] = [];
  for (;;) {
    const frame = await client.next(id, 10_000);
    frames.push(frame);
    if (frame.type === FrameType.CLOSE) return frames;
  }
}

/** The frame kinds after the DATA: exactly ERROR 7, then CLOSE. */
function assertResetEnding(frames: ServerFrame[]): void {
  const tail = frames.filter((f) => f.type !== FrameType.DATA).map(describeFrame).map(({ type, code }) => ({
    type,
    code,
  }));
  assert.deepEqual(tail, [{ type: "ERROR", code: ErrorCode.SOCKET_ERROR }, {
    type: "CLOSE",
    code: undefined,
  }]);
  assert.equal(frames.at(-1)?.type, FrameType.CLOSE);
}

/** The sibling stream still echoes and closes normally. */
async function assertSiblingAlive(client: MuxClient, id: number): Promise<void> {
  const ping = new TextEncoder().encode(`sibling ${id}`);
  client.sendData(id, ping);
  assert.deepEqual(await client.readBytes(id, ping.byteLength), ping);
  assert.deepEqual(client.pending(0), [], "nothing at session level");
}

Deno.test("target reset mid-stream: ERROR 7 then CLOSE on that stream only", async (t) => {
  await using relay = startRelay();
  await using echo = startEchoServer();
  await using client = await MuxClient.connect(muxUrl(relay.port));
  await client.open(100, echo.port);

  for (const [index, target] of RESET_TARGETS.entries()) {
    await t.step({
      name: target.name,
      ignore: !(await available(target.program)),
      fn: async () => {
        const id = index + 1;
        await using resetting = await startResetTarget(target);
        await client.open(id, resetting.port);
        assert.equal((await client.readBytes(id, 65536)).byteLength, 65536);
        client.sendData(id, new Uint8Array([1]));
        const started = performance.now();
        const frames = await framesUntilClose(client, id);
        const error = frames.find((f) => f.type === FrameType.ERROR);
        report(
          `target reset (${target.name}): ${
            error?.type === FrameType.ERROR ? `ERROR ${error.code} "${error.message}"` : "no ERROR"
          } then CLOSE, ${(performance.now() - started).toFixed(1)} ms after the trigger`,
        );
        assertResetEnding(frames);
        await assertSiblingAlive(client, 100);
      },
    });
  }

  client.sendClose(100);
  assert.equal((await client.next(100)).type, FrameType.CLOSE);
});
