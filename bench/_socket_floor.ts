/**
 * What Deno itself needs per idle TCP socket, the floor under W5's figure: a fresh process connects `N`
 * sockets to loopback `PORT` (the stalled target), keeps a 1 KiB read pending on each (as the relay does on
 * an idle stream), and prints one JSON line with its RSS and V8 heap growth per socket after a full GC.
 * Run by relay_bench.ts as `deno run --allow-net=127.0.0.0/8 --v8-flags=--expose-gc _socket_floor.ts PORT N`.
 * @module
 */
import { delay, memoryAfterGc } from "./_measure.ts";

const port = Number(Deno.args[0]);
const count = Math.min(10_000, Number(Deno.args[1]));
if (!Number.isInteger(port) || !Number.isInteger(count) || count < 1) {
  throw new Error("usage: _socket_floor.ts PORT COUNT");
}
const before = await memoryAfterGc();
const conns: Deno.TcpConn[] = [];
const loops: Promise<void>[] = [];
for (let i = 0; i < count; i++) {
  const conn = await Deno.connect({ hostname: "127.0.0.1", port });
  conns.push(conn);
  loops.push(
    (async () => {
      const buf = new Uint8Array(1024);
      for (let reads = 0; reads < 1_000_000; reads++) {
        if (await conn.read(buf) === null) return;
      }
    })().catch(() => {}),
  );
}
await delay(300);
const after = await memoryAfterGc();
const perSocket = (key: "rss" | "heapUsed" | "heapTotal") => (after[key] - before[key]) / 1024 / count;
for (const conn of conns) conn.close();
await Promise.all(loops);
// deno-lint-ignore no-console
console.log(JSON.stringify({
  rssKiB: perSocket("rss"),
  heapUsedKiB: perSocket("heapUsed"),
  heapTotalKiB: perSocket("heapTotal"),
}));
