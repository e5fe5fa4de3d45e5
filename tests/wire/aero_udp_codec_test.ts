/**
 * Aero's UDP relay frames against the spec's golden vectors (`../shared/spec/vectors/aero-udp-relay.json`):
 * every valid vector decodes to its fields and encodes back to its bytes; every error vector is refused with
 * the words the vector names.
 */
import assert from "node:assert/strict";
import {
  decodeUdpFrame,
  encodeUdpFrame,
  ipToBytes,
  ipToText,
  udpHeaderBytes,
} from "../../src/wire/aero_udp_codec.ts";

interface Vector {
  readonly name: string;
  readonly "frame_b64": string;
  readonly version?: 1 | 2;
  readonly guestPort?: number;
  readonly remoteIp?: string;
  readonly remotePort?: number;
  readonly "payload_b64"?: string;
  readonly expectError?: boolean;
  readonly errorContains?: string;
}

const file = new URL("../../../shared/spec/vectors/aero-udp-relay.json", import.meta.url);
const vectors = JSON.parse(await Deno.readTextFile(file)) as { schema: number; vectors: Vector[] };
const fromBase64 = (text: string) => Uint8Array.from(atob(text), (c) => c.charCodeAt(0));

Deno.test(
  { name: "aero UDP vectors: decode and encode both ways", permissions: { read: true } },
  async (t) => {
    assert.equal(vectors.schema, 1);
    assert.ok(vectors.vectors.length >= 9);
    for (const vector of vectors.vectors) {
      await t.step(vector.name, () => {
        const bytes = fromBase64(vector.frame_b64);
        const decoded = decodeUdpFrame(bytes);
        if (vector.expectError) {
          assert.ok("error" in decoded, `${vector.name} decoded: ${JSON.stringify(decoded)}`);
          assert.match(decoded.error, new RegExp(vector.errorContains!));
          return;
        }
        assert.ok(!("error" in decoded), `${vector.name}: ${JSON.stringify(decoded)}`);
        assert.equal(decoded.version, vector.version);
        assert.equal(decoded.guestPort, vector.guestPort);
        assert.equal(ipToText(decoded.remoteIp), vector.remoteIp);
        assert.equal(decoded.remotePort, vector.remotePort);
        assert.deepEqual([...decoded.payload], [...fromBase64(vector.payload_b64!)]);
        assert.deepEqual([...encodeUdpFrame(decoded)], [...bytes]);
      });
    }
  },
);

Deno.test({ name: "aero UDP codec: addresses, header sizes, v1 refuses IPv6", permissions: "none" }, () => {
  assert.deepEqual([...ipToBytes("192.0.2.1")!], [192, 0, 2, 1]);
  assert.equal(ipToText(ipToBytes("2001:db8::1")!), "2001:db8::1");
  assert.equal(ipToText(ipToBytes("::1")!), "::1");
  assert.equal(ipToBytes("256.0.0.1"), undefined);
  assert.equal(ipToBytes("example.com"), undefined);
  assert.equal(udpHeaderBytes(1, 4), 8);
  assert.equal(udpHeaderBytes(2, 4), 12);
  assert.equal(udpHeaderBytes(2, 16), 24);
  assert.throws(() => udpHeaderBytes(1, 16), /IPv6 needs v2/);
  // A v1 frame whose first bytes happen to be A2 02 is read as v2: that is the spec's rule.
  const v2 = decodeUdpFrame(Uint8Array.of(0xa2, 0x02, 0x04, 0x00, 0, 53, 127, 0, 0, 1, 0, 53, 9));
  assert.ok(!("error" in v2) && v2.version === 2 && v2.payload.byteLength === 1);
});
