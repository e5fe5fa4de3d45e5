/**
 * Seed-protocol helpers on top of the raw WebSocket client: the relay's upgrade target, configuration keys that
 * are not in src/config.ts yet, and a reader of seed frames that answers pings and records pongs.
 * @module
 */
import assert from "node:assert/strict";
import { type Config, defaultConfig } from "../../src/config.ts";
import {
  decodeServerFrame,
  encodeData,
  encodeOpen,
  ErrorCode,
  FrameType,
  MUX_PATH,
  type ServerFrame,
  SESSION_ID,
} from "../../src/protocol/mod.ts";
import { concat, describeFrame, LOOPBACK, TOKEN } from "../_util.ts";
import {
  describeWsFrame,
  expectCloseThenEof,
  frame,
  Opcode,
  RawClient,
  TimeoutError,
  type WsFrame,
} from "./_frames.ts";

/** Request target of the relay's WebSocket endpoint, with the test token. */
export const MUX_TARGET = `${MUX_PATH}?token=${encodeURIComponent(TOKEN)}`;

/** Configuration keys the new transport adds; src/config.ts may not have them yet. */
export interface PendingKeys {
  /** Largest request head accepted (over: 431). */
  readonly maxHeaderBytes?: number;
  /** How long a client may take to send its request head (over: 408, then close). */
  readonly headerTimeoutMs?: number;
  /** How long a fragmented message may stay unfinished (over: close 1008). */
  readonly messageTimeoutMs?: number;
}

/**
 * Relay overrides including keys src/config.ts may not define yet. They pass through `startRelay`'s spread
 * unchanged; the cast goes once the keys exist.
 */
export function relayOverrides(overrides: Partial<Config> & PendingKeys): Partial<Config> {
  return overrides as Partial<Config>;
}

/** Which of the pending keys today's configuration lacks (for test output). */
export function missingConfigKeys(): string[] {
  const config = defaultConfig() as unknown as Record<string, unknown>;
  return ["maxHeaderBytes", "headerTimeoutMs", "messageTimeoutMs"].filter((key) => !(key in config));
}

export function openBytes(id: number, port: number): Uint8Array {
  return encodeOpen(id, LOOPBACK, port);
}

export function dataBytes(id: number, data: Uint8Array): Uint8Array {
  return encodeData(id, data);
}

/** Upgrades a fresh connection to the relay. */
export async function connectMux(port: number): Promise<RawClient> {
  return (await RawClient.upgrade(port, MUX_TARGET)).client;
}

/**
 * Reads seed frames from a raw client: server messages are assembled from fragments and decoded; pings are
 * answered with a pong of the same payload; pongs are recorded. A Close or EOF is an error.
 */
export class SeedReader {
  readonly client: RawClient;
  readonly pongs: Uint8Array[] = [];
  pingsAnswered = 0;
  #parts: Uint8Array[] = [];
  #queue: ServerFrame[] = [];

  constructor(client: RawClient) {
    this.client = client;
  }

  /** The next seed frame from the relay. */
  async next(timeoutMs = 5000): Promise<ServerFrame> {
    const queued = this.#queue.shift();
    if (queued !== undefined) return queued;
    const deadline = performance.now() + timeoutMs;
    for (;;) {
      let f: WsFrame | null;
      try {
        f = await this.client.readFrame(Math.max(0, deadline - performance.now()));
      } catch (err: unknown) {
        if (err instanceof TimeoutError) throw new TimeoutError(`No seed frame within ${timeoutMs} ms`);
        throw err;
      }
      if (f === null) throw new Error("The relay closed the connection while a seed frame was expected");
      assert.equal(f.masked, false, `the server masked a frame: ${describeWsFrame(f)}`);
      assert.equal(f.rsv, 0, `the server set RSV bits: ${describeWsFrame(f)}`);
      switch (f.opcode) {
        case Opcode.PING:
          this.pingsAnswered++;
          await this.client.tryWrite(frame.pong(f.payload));
          continue;
        case Opcode.PONG:
          this.pongs.push(f.payload);
          continue;
        case Opcode.CLOSE:
          throw new Error(
            `The relay closed the WebSocket while a seed frame was expected: ${describeWsFrame(f)}`,
          );
        case Opcode.BINARY:
        case Opcode.CONTINUATION:
          this.#parts.push(f.payload);
          if (!f.fin) continue;
          break;
        default:
          assert.fail(`unexpected frame from the relay: ${describeWsFrame(f)}`);
      }
      const message = concat(this.#parts);
      this.#parts = [];
      return decodeServerFrame(message);
    }
  }

  /** Reads until `count` pongs have arrived in all; a seed frame meanwhile is an error. */
  async waitPongs(count: number, timeoutMs: number): Promise<void> {
    const deadline = performance.now() + timeoutMs;
    while (this.pongs.length < count) {
      const left = deadline - performance.now();
      if (left <= 0) assert.fail(`expected ${count} pongs within ${timeoutMs} ms, got ${this.pongs.length}`);
      let f: ServerFrame;
      try {
        f = await this.next(left);
      } catch (err: unknown) {
        if (err instanceof TimeoutError) continue;
        throw err;
      }
      assert.fail(`unexpected seed frame while waiting for pongs: ${JSON.stringify(describeFrame(f))}`);
    }
  }

  /** Expects the OPEN acknowledgement for `id`. */
  async expectAck(id: number, timeoutMs = 5000): Promise<void> {
    const f = await this.next(timeoutMs);
    assert.ok(
      f.type === FrameType.OPEN && f.connectionId === id,
      `expected OPEN ack on id ${id}, got ${JSON.stringify(describeFrame(f))}`,
    );
  }

  /** Reads DATA on `id` until `length` bytes arrived (other ids are an error). */
  async readData(id: number, length: number, timeoutMs = 10_000): Promise<Uint8Array> {
    const parts: Uint8Array[] = [];
    let have = 0;
    const deadline = performance.now() + timeoutMs;
    while (have < length) {
      const f = await this.next(Math.max(0, deadline - performance.now()));
      assert.ok(
        f.type === FrameType.DATA && f.connectionId === id,
        `expected DATA on id ${id}, got ${JSON.stringify(describeFrame(f))}`,
      );
      if (f.type !== FrameType.DATA) break;
      parts.push(f.data);
      have += f.data.byteLength;
    }
    return concat(parts);
  }

  /**
   * Collects acks and DATA for several ids until every id in `expected` is acknowledged and has its byte count.
   */
  async collect(expected: ReadonlyMap<number, number>, timeoutMs = 10_000): Promise<Map<number, Uint8Array>> {
    const acked = new Set<number>();
    const parts = new Map<number, Uint8Array[]>();
    const have = new Map<number, number>();
    const deadline = performance.now() + timeoutMs;
    const done = () => [...expected].every(([id, n]) => acked.has(id) && (have.get(id) ?? 0) >= n);
    while (!done()) {
      const f = await this.next(Math.max(0, deadline - performance.now()));
      if (f.type === FrameType.OPEN) acked.add(f.connectionId);
      else if (f.type === FrameType.DATA) {
        assert.ok(acked.has(f.connectionId), `DATA on id ${f.connectionId} before its ack`);
        parts.set(f.connectionId, [...(parts.get(f.connectionId) ?? []), f.data]);
        have.set(f.connectionId, (have.get(f.connectionId) ?? 0) + f.data.byteLength);
      } else assert.fail(`unexpected seed frame: ${JSON.stringify(describeFrame(f))}`);
    }
    return new Map([...expected.keys()].map((id) => [id, concat(parts.get(id) ?? [])]));
  }
}

/** Decodes the binary frames among `frames` as seed frames. */
export function seedFramesOf(frames: readonly WsFrame[]): ServerFrame[] {
  return frames.filter((f) => f.opcode === Opcode.BINARY && f.fin).map((f) => decodeServerFrame(f.payload));
}

/** Asserts that `frames` hold the seed ERROR 5 on connection id 0. */
export function assertSessionError(frames: readonly WsFrame[]): void {
  const errors = seedFramesOf(frames).filter((f) =>
    f.type === FrameType.ERROR && f.connectionId === SESSION_ID
  );
  assert.ok(
    errors.some((f) => f.type === FrameType.ERROR && f.code === ErrorCode.INVALID_FRAME),
    `expected ERROR ${ErrorCode.INVALID_FRAME} on id 0 before the Close; got ${
      JSON.stringify(seedFramesOf(frames).map(describeFrame))
    }`,
  );
}

/**
 * A fresh client upgrades, opens a stream to the echo server, gets its bytes back, and closes cleanly: proof
 * that the relay still serves.
 */
export async function assertRelayEchoes(
  relayPort: number,
  echoPort: number,
  timeoutMs = 5000,
): Promise<void> {
  await using client = await connectMux(relayPort);
  const reader = new SeedReader(client);
  const payload = new TextEncoder().encode(`alive ${crypto.randomUUID()}`);
  await client.write(
    concat([frame.binary(openBytes(1, echoPort)), frame.binary(dataBytes(1, payload))]),
  );
  await reader.expectAck(1, timeoutMs);
  assert.deepEqual(await reader.readData(1, payload.byteLength, timeoutMs), payload);
  await client.write(frame.close(1000));
  await expectCloseThenEof(client, 1000, { withinMs: timeoutMs });
}
