/**
 * Seeded, bounded fuzzing of a live relay's Wisp adapter (in its own process, so descriptors can be counted):
 * random and mutated packets over v1 and v2 sessions. The relay must never crash or leak a descriptor, must
 * answer every CONNECT with a CLOSE (no fuzzed destination is allowed), must close the WebSocket exactly when
 * the codec calls a packet a session error, and must still relay for a fresh session afterwards. Same seed,
 * same packets: a failure is reproducible with FUZZ_SEED.
 */
import assert from "node:assert/strict";
import {
  decodeWispPacket,
  encodeWispClose,
  encodeWispConnect,
  encodeWispContinue,
  encodeWispData,
  encodeWispInfo,
  type WispDecoded,
  WispPacketType,
} from "../../src/wire/wisp_codec.ts";
import { spawnRelay } from "../_process.ts";
import { delay, FuzzRng, procStats, report, startEchoServer, TOKEN, withTimeout } from "../_util.ts";

const SESSIONS = 40;
const PACKETS_PER_SESSION = 250;
const MAX_FRAME = 64 * 1024;
const HOSTS = [
  "localhost",
  "127.0.0.1",
  "::1",
  "[::1]",
  "10.0.0.1",
  "example.invalid",
  "a..b",
  "x".repeat(300),
];
/** Every reason the relay may send on a stream the fuzzer opened. */
const STREAM_REASONS = new Set([0x01, 0x02, 0x03, 0x41, 0x42, 0x43, 0x44, 0x47, 0x48, 0x49]);

/** The fuzz's random source, with the ids it favours: 0, the largest, and a few small ones. */
class Rng extends FuzzRng {
  id(): number {
    const pick = this.below(10);
    return pick === 0 ? 0 : pick === 1 ? 0xffff_ffff : 1 + this.below(24);
  }
}

function generate(rng: Rng, avoidPort: number): Uint8Array | string {
  // Per 10,000: session-level violations are rare, so that most sessions see most of their packets.
  const kind = rng.below(10_000) / 10;
  const id = rng.id() || 1;
  let port = 1 + rng.below(65535);
  if (port === avoidPort) port++;
  const connect = () =>
    encodeWispConnect(id, {
      streamType: rng.below(4) === 0 ? 0x02 : 0x01,
      port,
      hostname: rng.below(5) === 0
        ? new TextDecoder().decode(rng.bytes(1 + rng.below(20))) || "h"
        : HOSTS[rng.below(HOSTS.length)]!,
    });
  if (kind < 0.3) return "text";
  if (kind < 0.6) return encodeWispData(id, new Uint8Array(MAX_FRAME + 1 + rng.below(100)));
  if (kind < 2) return rng.bytes(rng.below(12));
  if (kind < 300) return connect();
  if (kind < 550) return encodeWispData(id, rng.bytes(rng.below(200)));
  if (kind < 650) return encodeWispClose(id, rng.below(256));
  if (kind < 680) return encodeWispContinue(id, rng.next());
  if (kind < 700) return encodeWispInfo({ major: 2, minor: 0, extensions: [] });
  if (kind < 850) {
    const whole = connect();
    return whole.slice(0, 5 + rng.below(whole.byteLength - 4));
  }
  const packet = connect();
  const at = 1 + rng.below(packet.byteLength - 1);
  packet[at] = packet[at]! ^ (1 << rng.below(8));
  if (packet[0] === WispPacketType.CONNECT && packet.byteLength >= 8) {
    // Keep the bit flip away from the one allowed port.
    const flipped = packet[6]! | (packet[7]! << 8);
    if (flipped === avoidPort) packet[6] = packet[6]! ^ 1;
  }
  return packet;
}

/** Whether the relay must close the session for `message`, by the codec's own verdict. */
function isSessionError(message: Uint8Array | string): boolean {
  if (typeof message === "string" || message.byteLength > MAX_FRAME) return true;
  const decoded = decodeWispPacket(message, { sender: "client", passwordLayout: "auto" });
  return decoded.type === "invalid" && decoded.error.scope === "session";
}

Deno.test("wisp fuzz: random and mutated packets never crash, leak, open or go unanswered", async () => {
  const seed = Number(Deno.env.get("FUZZ_SEED") ?? "20261130");
  await using echo = startEchoServer();
  await using relay = await spawnRelay({
    AERO_PROXY_AUTH_TOKEN: TOKEN,
    // Only localhost (both its addresses) on the echo server's port; every other name is denied before any
    // lookup, so no fuzzed name ever leaves the machine as a DNS query.
    AERO_PROXY_ALLOW_CIDRS: "127.0.0.1/32,::1/128",
    AERO_PROXY_ALLOW_PORTS: String(echo.port),
    AERO_PROXY_ALLOW_HOSTS: "localhost",
    AERO_PROXY_MAX_FRAME_BYTES: String(MAX_FRAME),
  });
  const url = `ws://127.0.0.1:${relay.port}/wisp/${TOKEN}/`;
  const open = async (version: 1 | 2) => {
    const ws = new WebSocket(url, version === 2 ? ["wisp-v2"] : undefined);
    ws.binaryType = "arraybuffer";
    const packets: WispDecoded[] = [];
    ws.onmessage = (e) => packets.push(decodeWispPacket(new Uint8Array(e.data), { sender: "server" }));
    const closed = new Promise<CloseEvent>((resolve) => ws.onclose = resolve);
    await new Promise((resolve) => ws.onopen = resolve);
    const ready = async () => {
      const deadline = performance.now() + 5000;
      while (!packets.some((p) => p.type === WispPacketType.CONTINUE && p.streamId === 0)) {
        if (performance.now() > deadline) throw new Error("no handshake CONTINUE");
        if (
          version === 2 && packets.some((p) => p.type === WispPacketType.INFO) && !ws.extensions.includes("x")
        ) {
          if (!packets.some((p) => p.type === "invalid")) {
            packets.splice(packets.findIndex((p) => p.type === WispPacketType.INFO), 1);
            ws.send(encodeWispInfo({ major: 2, minor: 0, extensions: [{ kind: "udp" }] }));
          }
        }
        await delay(5);
      }
      packets.splice(packets.findIndex((p) => p.type === WispPacketType.CONTINUE), 1);
    };
    await ready();
    return { ws, packets, closed };
  };
  {
    // Warm up once so lazily created runtime resources are part of the baseline.
    const { ws, closed } = await open(2);
    ws.close();
    await closed;
  }
  await delay(300);
  const before = await procStats(relay.pid);
  const rng = new Rng(seed);
  let sent = 0;
  let closes = 0;
  let violations = 0;
  for (let s = 0; s < SESSIONS; s++) {
    const { ws, packets, closed } = await open(s % 2 === 0 ? 1 : 2);
    const connected = new Set<number>();
    let sessionError = false;
    for (let i = 0; i < PACKETS_PER_SESSION && !sessionError; i++) {
      const message = generate(rng, echo.port);
      sessionError = isSessionError(message);
      if (!sessionError && typeof message !== "string") {
        const decoded = decodeWispPacket(message, { sender: "client" });
        if (decoded.type === WispPacketType.CONNECT) connected.add(decoded.streamId);
        // The client's own CLOSE ends the stream: the relay owes it no answer then.
        if (decoded.type === WispPacketType.CLOSE) connected.delete(decoded.streamId);
      }
      ws.send(message);
      sent++;
    }
    if (sessionError) {
      const event = await withTimeout(closed, 10_000, `session ${s} to be closed`);
      assert.ok([1002, 1003, 1009].includes(event.code), `session ${s}: close code ${event.code}`);
      violations++;
    } else {
      // Every CONNECT is refused (no fuzzed destination is allowed) with a CLOSE on its id.
      const deadline = performance.now() + 10_000;
      const answered = () =>
        new Set(packets.filter((p) => p.type === WispPacketType.CLOSE).map((p) => p.streamId));
      while ([...connected].some((id) => !answered().has(id)) && performance.now() < deadline) {
        await delay(10);
      }
      const missing = [...connected].filter((id) => !answered().has(id));
      assert.deepEqual(missing, [], `session ${s}: CONNECTs never answered`);
      ws.close();
      await closed;
    }
    for (const packet of packets) {
      assert.ok(
        packet.type === WispPacketType.CLOSE || packet.type === WispPacketType.CONTINUE,
        `session ${s}: ${packet.type}`,
      );
      if (packet.type === WispPacketType.CLOSE) {
        assert.ok(STREAM_REASONS.has(packet.reason), `session ${s}: reason ${packet.reason}`);
        closes++;
      }
    }
  }
  let after = await procStats(relay.pid);
  for (let i = 0; i < 60 && after.fds > before.fds; i++) {
    await delay(50);
    after = await procStats(relay.pid);
  }
  report(
    `wisp fuzz seed ${seed}: ${sent} packets over ${SESSIONS} sessions, ${closes} CLOSE answers, ` +
      `${violations} sessions closed for violations; relay fds ${before.fds} -> ${after.fds}`,
  );
  assert.ok(sent >= 2000, `only ${sent} packets were sent`);
  assert.equal(echo.accepted, 0, "a fuzzed CONNECT reached the one allowed destination");
  assert.ok(after.fds <= before.fds, `relay holds ${after.fds - before.fds} more descriptors than before`);
  // And it still relays.
  const { ws, packets, closed } = await open(1);
  ws.send(encodeWispConnect(1, { streamType: 0x01, port: echo.port, hostname: "localhost" }));
  ws.send(encodeWispData(1, new TextEncoder().encode("still here")));
  const deadline = performance.now() + 5000;
  while (!packets.some((p) => p.type === WispPacketType.DATA) && performance.now() < deadline) {
    await delay(10);
  }
  const data = packets.find((p) => p.type === WispPacketType.DATA);
  assert.ok(
    data?.type === WispPacketType.DATA && new TextDecoder().decode(data.data) === "still here",
    JSON.stringify(packets),
  );
  ws.close();
  await closed;
});
