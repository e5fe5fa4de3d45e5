/** UDP helpers for tests: a real `node:dgram` echo server on loopback. */
import dgram from "node:dgram";

export interface UdpEcho extends AsyncDisposable {
  readonly port: number;
  /** Datagrams received so far. */
  readonly received: number;
}

/** Echoes every datagram back to its sender (`family` 6: on ::1). */
export async function startUdpEcho(family: 4 | 6 = 4): Promise<UdpEcho> {
  const socket = dgram.createSocket(family === 6 ? "udp6" : "udp4");
  let received = 0;
  socket.on("message", (message, remote) => {
    received++;
    socket.send(message, remote.port, remote.address);
  });
  await new Promise<void>((resolve) => socket.bind(0, family === 6 ? "::1" : "127.0.0.1", resolve));
  return {
    port: socket.address().port,
    get received() {
      return received;
    },
    async [Symbol.asyncDispose]() {
      await new Promise<void>((resolve) => socket.close(() => resolve()));
    },
  };
}
