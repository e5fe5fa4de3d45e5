/**
 * The baseline every run measures beside the relay: the smallest seed-framing relay Deno allows, with
 * `Deno.serve` and `Deno.upgradeWebSocket`, no policy, limits, metrics or logs. Whatever our relay costs beyond
 * this is ours; what both cost is Deno's. Run as a subprocess: `deno run --allow-net=127.0.0.0/8
 * bench/_minimal_relay.ts PORT`.
 *
 * Seed framing only (5-byte header, OPEN to an IPv4 address answered with an empty OPEN, DATA, CLOSE), one
 * 64 KiB read per DATA frame, reads paused while the WebSocket holds more than 256 KiB.
 * @module
 */

const HEADER = 5;
const OPEN = 1;
const DATA = 2;
const CLOSE = 3;
const READ_SIZE = 64 * 1024;
const HIGH_WATER = 256 * 1024;

function frame(type: number, id: number, payloadBytes = 0): Uint8Array {
  const out = new Uint8Array(HEADER + payloadBytes);
  out[0] = type;
  new DataView(out.buffer).setUint32(1, id);
  return out;
}

function serveSocket(ws: WebSocket): void {
  ws.binaryType = "arraybuffer";
  const streams = new Map<number, Deno.TcpConn | Promise<Deno.TcpConn | undefined>>();
  const send = (bytes: Uint8Array) => {
    if (ws.readyState === WebSocket.OPEN) ws.send(bytes);
  };
  const drained = async () => {
    while (ws.readyState === WebSocket.OPEN && ws.bufferedAmount > HIGH_WATER) {
      await new Promise((resolve) => setTimeout(resolve, 1));
    }
  };
  const pump = async (id: number, conn: Deno.TcpConn) => {
    let buffer = new Uint8Array(HEADER + 1024);
    let want = 1024;
    try {
      for (;;) {
        await drained();
        if (buffer.byteLength < HEADER + want) buffer = new Uint8Array(HEADER + want);
        const n = await conn.read(buffer.subarray(HEADER, HEADER + want));
        if (n === null) break;
        buffer[0] = DATA;
        new DataView(buffer.buffer).setUint32(1, id);
        send(buffer.subarray(0, HEADER + n));
        if (n === want && want < READ_SIZE) want = Math.min(READ_SIZE, want * 4);
      }
    } catch { /* closed */ }
    if (streams.delete(id)) {
      send(frame(CLOSE, id));
      try {
        conn.close();
      } catch { /* closed */ }
    }
  };
  ws.onmessage = async (event) => {
    const bytes = new Uint8Array(event.data as ArrayBuffer);
    const id = new DataView(bytes.buffer).getUint32(1);
    if (bytes[0] === OPEN) {
      const port = (bytes[10]! << 8) | bytes[11]!;
      const dialing = Deno.connect({ hostname: [...bytes.subarray(6, 10)].join("."), port }).catch(() =>
        undefined
      );
      streams.set(id, dialing);
      const conn = await dialing;
      if (conn === undefined || !streams.has(id)) {
        conn?.close();
        streams.delete(id);
        send(frame(CLOSE, id));
        return;
      }
      streams.set(id, conn);
      send(frame(OPEN, id));
      void pump(id, conn);
      return;
    }
    const entry = streams.get(id);
    if (entry === undefined) return;
    const conn = await entry;
    if (conn === undefined) return;
    if (bytes[0] === DATA) {
      try {
        for (let at = HEADER; at < bytes.byteLength;) at += await conn.write(bytes.subarray(at));
      } catch { /* the pump reports the end */ }
    } else if (bytes[0] === CLOSE) {
      streams.delete(id);
      send(frame(CLOSE, id));
      conn.close();
    }
  };
  ws.onclose = () => {
    for (const entry of streams.values()) void Promise.resolve(entry).then((conn) => conn?.close());
    streams.clear();
  };
}

const port = Number(Deno.args[0] ?? "0");
Deno.serve({ hostname: "127.0.0.1", port, onListen: () => {} }, (request) => {
  if (request.headers.get("upgrade")?.toLowerCase() !== "websocket") return new Response("minimal relay\n");
  const { socket, response } = Deno.upgradeWebSocket(request);
  serveSocket(socket);
  return response;
});
