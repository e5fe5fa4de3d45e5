/**
 * The UDP binding on its own, with a real node:dgram socket and a recording session: whatever moment it is
 * finished at (while resolving, binding or connecting), its task settles and its socket goes back to the budget.
 */
import assert from "node:assert/strict";
import { socketBudget } from "../../src/budget.ts";
import { type DatagramHost, UdpStream } from "../../src/core/datagram.ts";
import { startUdpEcho } from "../wire/_udp.ts";

function recordingHost(sockets = socketBudget(4)): DatagramHost & { readonly events: string[] } {
  const events: string[] = [];
  return {
    events,
    sessionId: "s-test",
    sockets,
    datagramHeaderSize: () => 0,
    congested: false,
    maxDatagramBytes: 8192,
    datagramIdleMs: 60_000,
    resolveTarget: (target) => Promise.resolve({ ok: true, host: target.host, addresses: [target.host] }),
    admitDatagram: () => true,
    datagramDropped: (reason) => events.push(`dropped:${reason}`),
    datagramRelayed: (direction) => events.push(direction),
    writeDataHeader: () => {},
    sendFrame: () => events.push("frame"),
    streamOpened: () => events.push("opened"),
    streamEnding: (_stream, reason) => events.push(`ending:${reason}`),
    streamFinished: () => events.push("finished"),
    observeStream: () => {},
  };
}

Deno.test("UdpStream: finished at any point of its setup, the task settles and the socket is released", async () => {
  await using echo = await startUdpEcho();
  for (const ticks of [0, 1, 2, 3, 5, 8, 12, 20, 40, 100]) {
    const sockets = socketBudget(4);
    const host = recordingHost(sockets);
    const stream = new UdpStream(host, 1, { host: "127.0.0.1", port: echo.port, resolve: true });
    const task = stream.start();
    for (let i = 0; i < ticks; i++) await Promise.resolve();
    stream.finish("client_close");
    let timer: ReturnType<typeof setTimeout> | undefined;
    const settled = await Promise.race([
      task.then(() => true),
      new Promise<boolean>((resolve) => timer = setTimeout(() => resolve(false), 2000)),
    ]);
    clearTimeout(timer);
    assert.ok(settled, `finished after ${ticks} microtasks: the task never settled`);
    assert.equal(sockets.used, 0, `finished after ${ticks} microtasks: a socket is still held`);
    assert.equal(host.events.filter((e) => e === "finished").length, 1);
  }
  // Let node:dgram finish closing the sockets before the sanitizers look.
  await new Promise((resolve) => setTimeout(resolve, 50));
});

Deno.test("UdpStream: datagrams sent while it is being set up wait (bounded), then go out in order", async () => {
  await using echo = await startUdpEcho();
  const host = recordingHost();
  let release: (() => void) | undefined;
  const slow: DatagramHost = {
    ...host,
    resolveTarget: (target) =>
      new Promise((resolve) =>
        release = () => resolve({ ok: true, host: target.host, addresses: [target.host] })
      ),
  };
  const stream = new UdpStream(slow, 1, { host: "127.0.0.1", port: echo.port, resolve: true });
  const task = stream.start();
  for (let i = 0; i < 20; i++) stream.enqueue(new Uint8Array(1000));
  // 16 KiB of datagrams may wait: 16 of 1,000 bytes fit, the other 4 are dropped.
  assert.equal(host.events.filter((e) => e === "dropped:not_ready").length, 4);
  release!();
  for (let i = 0; i < 200 && echo.received < 16; i++) await new Promise((r) => setTimeout(r, 5));
  assert.equal(echo.received, 16);
  stream.finish("client_close");
  await task;
  await new Promise((resolve) => setTimeout(resolve, 50));
});
