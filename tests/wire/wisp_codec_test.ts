/**
 * Unit tests of the Wisp codec: golden bytes worked out by hand from the specs (little-endian ids: stream 1 is
 * `01 00 00 00`), round trips, every truncation of every golden packet, trailing bytes where the layout is fixed,
 * unknown types, INFO extension lists, and the encoders' argument checks.
 */
import assert from "node:assert/strict";
import {
  decodeWispPacket,
  encodeWispClose,
  encodeWispConnect,
  encodeWispContinue,
  encodeWispData,
  encodeWispInfo,
  encodeWispRawPacket,
  WISP_CLOSE_REASON_NAMES,
  WISP_HEADER_SIZE,
  WISP_MAX_HOSTNAME_BYTES,
  WispCloseReason,
  type WispDecoded,
  type WispDecodeOptions,
  type WispEncodableExtension,
  type WispErrorScope,
  type WispExtension,
  WispExtensionId,
  WispKeyAlgorithm,
  type WispPacket,
  WispPacketType,
  type WispPasswordLayout,
  WispProtocolError,
  WispStreamType,
  writeWispDataHeader,
  writeWispHeader,
} from "../../src/wire/wisp_codec.ts";

// ---------------------------------------------------------------------------------------------------------------
// Helpers

const utf8 = new TextEncoder();

function bytes(...values: number[]): Uint8Array {
  return new Uint8Array(values);
}

function text(value: string): Uint8Array {
  return utf8.encode(value);
}

function concat(...parts: Uint8Array[]): Uint8Array {
  const out = new Uint8Array(parts.reduce((sum, p) => sum + p.byteLength, 0));
  let at = 0;
  for (const part of parts) {
    out.set(part, at);
    at += part.byteLength;
  }
  return out;
}

function fill(length: number, value: number): Uint8Array {
  return new Uint8Array(length).fill(value);
}

function decodeValid(packet: Uint8Array, options: WispDecodeOptions = {}): WispPacket {
  const decoded = decodeWispPacket(packet, options);
  if (decoded.type === "invalid") assert.fail(`expected a packet, got: ${decoded.error.message}`);
  return decoded;
}

function assertInvalid(
  decoded: WispDecoded,
  expected: { scope: WispErrorScope; streamId?: number; message: RegExp },
): void {
  if (decoded.type !== "invalid") assert.fail(`expected an invalid packet, got type ${decoded.type}`);
  const { error } = decoded;
  assert.ok(error instanceof WispProtocolError);
  assert.equal(error.name, "WispProtocolError");
  assert.equal(error.scope, expected.scope);
  const streamId = expected.scope === "session" ? 0 : expected.streamId;
  assert.equal(decoded.streamId, streamId);
  assert.equal(error.streamId, streamId);
  assert.equal(error.closeReason, WispCloseReason.INVALID_INFO);
  assert.match(error.message, expected.message);
}

/**
 * Re-encodes a decoded packet with the public encoders. Key authentication has no encoder, so its entries are
 * rebuilt by hand as raw extensions: that also checks the decoder split the payload at the right places.
 */
function reencode(packet: WispPacket, passwordLayout: WispPasswordLayout = "username-length"): Uint8Array {
  switch (packet.type) {
    case WispPacketType.CONNECT:
      return encodeWispConnect(packet.streamId, packet);
    case WispPacketType.DATA:
      return encodeWispData(packet.streamId, packet.data);
    case WispPacketType.CONTINUE:
      return encodeWispContinue(packet.streamId, packet.bufferRemaining);
    case WispPacketType.CLOSE:
      return encodeWispClose(packet.streamId, packet.reason);
    case WispPacketType.INFO:
      return encodeWispInfo({ ...packet, extensions: packet.extensions.map(toEncodable) }, {
        passwordLayout,
      });
  }
}

function toEncodable(extension: WispExtension): WispEncodableExtension {
  switch (extension.kind) {
    case "key-auth-offer":
      return {
        kind: "unknown",
        id: WispExtensionId.KEY_AUTH,
        payload: concat(bytes(extension.required ? 1 : 0, extension.algorithms), extension.challenge),
      };
    case "key-auth-response":
      return {
        kind: "unknown",
        id: WispExtensionId.KEY_AUTH,
        payload: concat(bytes(extension.algorithm), extension.publicKeyHash, extension.signature),
      };
    default:
      return extension;
  }
}

// ---------------------------------------------------------------------------------------------------------------
// Golden vectors, every byte written out from the spec tables

interface Vector {
  readonly name: string;
  readonly bytes: Uint8Array;
  readonly packet: WispPacket;
  /** The encoder call that must produce `bytes`; absent for packets only a client sends in a form we don't write. */
  readonly encode?: () => Uint8Array;
  readonly options?: WispDecodeOptions;
  /** Scope of the error a truncated (but header-complete) copy yields, unless the prefix is itself valid. */
  readonly truncatedScope: WispErrorScope;
  /** Whether a prefix of this length is itself a well-formed packet (no length field: Wisp cannot tell). */
  readonly validPrefix: (length: number) => boolean;
}

const never = () => false;

/** INFO prefixes are whole packets exactly where an extension entry (or the version) ends. */
function atBoundaries(...lengths: number[]): (length: number) => boolean {
  return (length) => lengths.includes(length);
}

const VECTORS: readonly Vector[] = [
  {
    name: "CONNECT TCP example.com:80 on stream 1",
    bytes: bytes(
      0x01, // CONNECT
      0x01,
      0x00,
      0x00,
      0x00, // stream 1, u32le
      0x01, // TCP
      0x50,
      0x00, // port 80, u16le
      0x65,
      0x78,
      0x61,
      0x6d,
      0x70,
      0x6c,
      0x65,
      0x2e,
      0x63,
      0x6f,
      0x6d, // "example.com"
    ),
    packet: { type: 0x01, streamId: 1, streamType: 0x01, port: 80, hostname: "example.com" },
    encode: () => encodeWispConnect(1, { streamType: WispStreamType.TCP, port: 80, hostname: "example.com" }),
    truncatedScope: "stream",
    // Header, stream type, port and at least one hostname byte.
    validPrefix: (length) => length >= 9,
  },
  {
    name: "CONNECT UDP 1.1.1.1:8443 on stream 0x12345678",
    bytes: bytes(
      0x01,
      0x78,
      0x56,
      0x34,
      0x12, // 0x12345678, least significant byte first
      0x02, // UDP
      0xfb,
      0x20, // 8443 = 0x20fb
      0x31,
      0x2e,
      0x31,
      0x2e,
      0x31,
      0x2e,
      0x31, // "1.1.1.1"
    ),
    packet: { type: 0x01, streamId: 0x1234_5678, streamType: 0x02, port: 8443, hostname: "1.1.1.1" },
    encode: () =>
      encodeWispConnect(0x1234_5678, { streamType: WispStreamType.UDP, port: 8443, hostname: "1.1.1.1" }),
    truncatedScope: "stream",
    validPrefix: (length) => length >= 9,
  },
  {
    name: 'DATA "hi" on stream 1',
    bytes: bytes(0x02, 0x01, 0x00, 0x00, 0x00, 0x68, 0x69),
    packet: { type: 0x02, streamId: 1, data: bytes(0x68, 0x69) },
    encode: () => encodeWispData(1, text("hi")),
    truncatedScope: "stream",
    validPrefix: (length) => length >= 5,
  },
  {
    name: "empty DATA on stream 0xffffffff",
    bytes: bytes(0x02, 0xff, 0xff, 0xff, 0xff),
    packet: { type: 0x02, streamId: 0xffff_ffff, data: bytes() },
    encode: () => encodeWispData(0xffff_ffff, bytes()),
    truncatedScope: "stream",
    validPrefix: never,
  },
  {
    name: "handshake CONTINUE with 128 buffered packets on stream 0",
    bytes: bytes(0x03, 0x00, 0x00, 0x00, 0x00, 0x80, 0x00, 0x00, 0x00),
    packet: { type: 0x03, streamId: 0, bufferRemaining: 128 },
    encode: () => encodeWispContinue(0, 128),
    truncatedScope: "session",
    validPrefix: never,
  },
  {
    name: "CONTINUE 0x01020304 on stream 0x0100 (256)",
    bytes: bytes(0x03, 0x00, 0x01, 0x00, 0x00, 0x04, 0x03, 0x02, 0x01),
    packet: { type: 0x03, streamId: 256, bufferRemaining: 0x0102_0304 },
    encode: () => encodeWispContinue(256, 0x0102_0304),
    truncatedScope: "stream",
    validPrefix: never,
  },
  {
    name: "CLOSE voluntary (0x02) on stream 1",
    bytes: bytes(0x04, 0x01, 0x00, 0x00, 0x00, 0x02),
    packet: { type: 0x04, streamId: 1, reason: 0x02 },
    encode: () => encodeWispClose(1, WispCloseReason.VOLUNTARY),
    truncatedScope: "stream",
    validPrefix: never,
  },
  {
    name: "CLOSE invalid info (0x41) on stream 7",
    bytes: bytes(0x04, 0x07, 0x00, 0x00, 0x00, 0x41),
    packet: { type: 0x04, streamId: 7, reason: 0x41 },
    encode: () => encodeWispClose(7, WispCloseReason.INVALID_INFO),
    truncatedScope: "stream",
    validPrefix: never,
  },
  {
    name: "handshake CLOSE incompatible extensions (0x04) on stream 0",
    bytes: bytes(0x04, 0x00, 0x00, 0x00, 0x00, 0x04),
    packet: { type: 0x04, streamId: 0, reason: 0x04 },
    encode: () => encodeWispClose(0, WispCloseReason.INCOMPATIBLE_EXTENSIONS),
    truncatedScope: "session",
    validPrefix: never,
  },
  {
    name: "INFO 2.0 without extensions",
    bytes: bytes(0x05, 0x00, 0x00, 0x00, 0x00, 0x02, 0x00),
    packet: { type: 0x05, streamId: 0, major: 2, minor: 0, extensions: [] },
    encode: () => encodeWispInfo({ major: 2, minor: 0, extensions: [] }),
    truncatedScope: "session",
    validPrefix: never,
  },
  {
    name: 'server INFO 2.0: UDP, password required, MOTD "hi", stream confirmation',
    bytes: bytes(
      0x05,
      0x00,
      0x00,
      0x00,
      0x00, // INFO, stream 0
      0x02,
      0x00, // version 2.0
      0x01,
      0x00,
      0x00,
      0x00,
      0x00, // UDP, empty
      0x02,
      0x01,
      0x00,
      0x00,
      0x00,
      0x01, // password, 1 byte: required
      0x04,
      0x02,
      0x00,
      0x00,
      0x00,
      0x68,
      0x69, // MOTD, 2 bytes: "hi"
      0x05,
      0x00,
      0x00,
      0x00,
      0x00, // stream confirmation, empty
    ),
    packet: {
      type: 0x05,
      streamId: 0,
      major: 2,
      minor: 0,
      extensions: [
        { kind: "udp" },
        { kind: "password-auth-offer", required: true },
        { kind: "motd", text: "hi" },
        { kind: "stream-confirmation" },
      ],
    },
    encode: () =>
      encodeWispInfo({
        major: 2,
        minor: 0,
        extensions: [
          { kind: "udp" },
          { kind: "password-auth-offer", required: true },
          { kind: "motd", text: "hi" },
          { kind: "stream-confirmation" },
        ],
      }),
    options: { sender: "server" },
    truncatedScope: "session",
    validPrefix: atBoundaries(7, 12, 18, 25),
  },
  {
    name: "client INFO 2.0: UDP, password bob/pw (draft 6 layout)",
    bytes: bytes(
      0x05,
      0x00,
      0x00,
      0x00,
      0x00,
      0x02,
      0x00,
      0x01,
      0x00,
      0x00,
      0x00,
      0x00, // UDP
      0x02,
      0x06,
      0x00,
      0x00,
      0x00, // password, 6 bytes
      0x03,
      0x62,
      0x6f,
      0x62, // username length 3, "bob"
      0x70,
      0x77, // "pw" to the end
    ),
    packet: {
      type: 0x05,
      streamId: 0,
      major: 2,
      minor: 0,
      extensions: [{ kind: "udp" }, { kind: "password-auth-credentials", username: "bob", password: "pw" }],
    },
    encode: () =>
      encodeWispInfo({
        major: 2,
        minor: 0,
        extensions: [{ kind: "udp" }, { kind: "password-auth-credentials", username: "bob", password: "pw" }],
      }),
    truncatedScope: "session",
    validPrefix: atBoundaries(7, 12),
  },
  {
    name: "client INFO 2.0: password bob/pw (both-lengths layout)",
    bytes: bytes(
      0x05,
      0x00,
      0x00,
      0x00,
      0x00,
      0x02,
      0x00,
      0x02,
      0x08,
      0x00,
      0x00,
      0x00, // password, 8 bytes
      0x03,
      0x02,
      0x00, // username length 3, password length 2 (u16le)
      0x62,
      0x6f,
      0x62,
      0x70,
      0x77, // "bob", "pw"
    ),
    packet: {
      type: 0x05,
      streamId: 0,
      major: 2,
      minor: 0,
      extensions: [{ kind: "password-auth-credentials", username: "bob", password: "pw" }],
    },
    encode: () =>
      encodeWispInfo(
        {
          major: 2,
          minor: 0,
          extensions: [{ kind: "password-auth-credentials", username: "bob", password: "pw" }],
        },
        { passwordLayout: "both-lengths" },
      ),
    options: { passwordLayout: "both-lengths" },
    truncatedScope: "session",
    validPrefix: atBoundaries(7),
  },
  {
    name: "server INFO 2.1: key auth offer (Ed25519, required, 4-byte challenge) and an unknown extension",
    bytes: bytes(
      0x05,
      0x00,
      0x00,
      0x00,
      0x00,
      0x02,
      0x01, // version 2.1
      0x03,
      0x06,
      0x00,
      0x00,
      0x00, // key auth, 6 bytes
      0x01,
      0x01, // required, Ed25519
      0xaa,
      0xbb,
      0xcc,
      0xdd, // challenge
      0x7f,
      0x02,
      0x00,
      0x00,
      0x00,
      0x01,
      0x02, // unknown 0x7f, 2 bytes
    ),
    packet: {
      type: 0x05,
      streamId: 0,
      major: 2,
      minor: 1,
      extensions: [
        {
          kind: "key-auth-offer",
          required: true,
          algorithms: 0x01,
          challenge: bytes(0xaa, 0xbb, 0xcc, 0xdd),
        },
        { kind: "unknown", id: 0x7f, payload: bytes(0x01, 0x02) },
      ],
    },
    options: { sender: "server" },
    truncatedScope: "session",
    validPrefix: atBoundaries(7, 18),
  },
  {
    name: "client INFO 2.0: key auth response (Ed25519, hash of 0x11s, 4-byte signature)",
    bytes: concat(
      bytes(0x05, 0x00, 0x00, 0x00, 0x00, 0x02, 0x00),
      bytes(0x03, 0x25, 0x00, 0x00, 0x00), // key auth, 37 = 1 + 32 + 4 bytes
      bytes(0x01), // Ed25519
      fill(32, 0x11), // SHA-256 of the public key
      bytes(0x5a, 0x5b, 0x5c, 0x5d), // signature
    ),
    packet: {
      type: 0x05,
      streamId: 0,
      major: 2,
      minor: 0,
      extensions: [{
        kind: "key-auth-response",
        algorithm: WispKeyAlgorithm.ED25519,
        publicKeyHash: fill(32, 0x11),
        signature: bytes(0x5a, 0x5b, 0x5c, 0x5d),
      }],
    },
    truncatedScope: "session",
    validPrefix: atBoundaries(7),
  },
];

function layoutOf(vector: Vector): WispPasswordLayout {
  const layout = vector.options?.passwordLayout;
  return layout === undefined || layout === "auto" ? "username-length" : layout;
}

Deno.test({ name: "password layout auto: reads both layouts a client may send", permissions: "none" }, () => {
  for (const layout of ["username-length", "both-lengths"] as const) {
    for (const [username, password] of [["guest", "s3cret"], ["", ""], ["u", "a much longer password"]]) {
      const packet = encodeWispInfo({
        major: 2,
        minor: 0,
        extensions: [{ kind: "password-auth-credentials", username: username!, password: password! }],
      }, { passwordLayout: layout });
      const decoded = decodeWispPacket(packet, { sender: "client", passwordLayout: "auto" });
      assert.ok(decoded.type === WispPacketType.INFO, `${layout} ${username}: ${JSON.stringify(decoded)}`);
      assert.deepEqual(decoded.extensions, [{ kind: "password-auth-credentials", username, password }]);
    }
  }
});

Deno.test(
  { name: "golden bytes: the encoders write the hand-derived bytes", permissions: "none" },
  async (t) => {
    for (const vector of VECTORS) {
      const encode = vector.encode;
      if (encode === undefined) continue;
      await t.step(vector.name, () => {
        assert.deepEqual(encode(), vector.bytes);
      });
    }
  },
);

Deno.test(
  { name: "golden bytes: decodeWispPacket() reads the hand-derived bytes", permissions: "none" },
  async (t) => {
    for (const vector of VECTORS) {
      await t.step(vector.name, () => {
        assert.deepEqual(decodeValid(vector.bytes, vector.options), vector.packet);
      });
    }
  },
);

Deno.test(
  { name: "golden bytes: decoded packets re-encode to the same bytes", permissions: "none" },
  async (t) => {
    for (const vector of VECTORS) {
      await t.step(vector.name, () => {
        assert.deepEqual(reencode(decodeValid(vector.bytes, vector.options), layoutOf(vector)), vector.bytes);
      });
    }
  },
);

Deno.test({
  name: "decodeWispPacket() rejects or shortens every truncation of every packet",
  permissions: "none",
}, async (t) => {
  for (const vector of VECTORS) {
    await t.step(vector.name, () => {
      for (let length = 0; length < vector.bytes.byteLength; length++) {
        const prefix = vector.bytes.slice(0, length);
        const decoded = decodeWispPacket(prefix, vector.options);
        const where = `prefix of ${length} bytes`;
        if (length < WISP_HEADER_SIZE) {
          assertInvalid(decoded, {
            scope: "session",
            message: /^Cannot decode packet: expected at least 5 bytes/,
          });
        } else if (vector.validPrefix(length)) {
          assert.notEqual(decoded.type, "invalid", where);
          if (decoded.type === "invalid") continue;
          assert.equal(decoded.type, vector.packet.type, where);
          assert.deepEqual(reencode(decoded, layoutOf(vector)), prefix, where);
        } else {
          assert.equal(decoded.type, "invalid", where);
          assertInvalid(decoded, {
            scope: vector.truncatedScope,
            streamId: vector.packet.streamId,
            message: /^Cannot decode (CONNECT|CONTINUE|CLOSE|INFO) packet: /,
          });
        }
      }
    });
  }
});

// ---------------------------------------------------------------------------------------------------------------
// Round trips

Deno.test(
  { name: "round trip: every packet the encoders write decodes to its fields", permissions: "none" },
  async (t) => {
    await t.step("CONNECT with edge ports, stream ids and a Unicode hostname", () => {
      const cases = [
        { streamId: 1, streamType: WispStreamType.TCP, port: 1, hostname: "a" },
        { streamId: 0xffff_ffff, streamType: WispStreamType.UDP, port: 65535, hostname: "::1" },
        { streamId: 0x8000_0000, streamType: WispStreamType.TCP, port: 443, hostname: "bücher.example" },
        {
          streamId: 42,
          streamType: WispStreamType.TCP,
          port: 22,
          hostname: "x".repeat(WISP_MAX_HOSTNAME_BYTES),
        },
      ] as const;
      for (const { streamId, ...target } of cases) {
        const packet = encodeWispConnect(streamId, target);
        assert.deepEqual(decodeValid(packet), { type: WispPacketType.CONNECT, streamId, ...target });
      }
    });
    await t.step("DATA of 0, 1 and 65536 bytes", () => {
      for (const size of [0, 1, 65536]) {
        const data = Uint8Array.from({ length: size }, (_, i) => (i * 7) & 0xff);
        assert.deepEqual(decodeValid(encodeWispData(9, data)), {
          type: WispPacketType.DATA,
          streamId: 9,
          data,
        });
      }
    });
    await t.step("CONTINUE with 0 and the largest u32", () => {
      for (const bufferRemaining of [0, 1, 0xffff_ffff]) {
        assert.deepEqual(decodeValid(encodeWispContinue(3, bufferRemaining)), {
          type: WispPacketType.CONTINUE,
          streamId: 3,
          bufferRemaining,
        });
      }
    });
    await t.step("CLOSE with every named reason and an unnamed one", () => {
      for (const reason of [...Object.values(WispCloseReason), 0x00, 0xff]) {
        assert.deepEqual(decodeValid(encodeWispClose(5, reason)), {
          type: WispPacketType.CLOSE,
          streamId: 5,
          reason,
        });
      }
    });
    await t.step("INFO credentials with Unicode, empty and longest fields, in both layouts", () => {
      const credentials = [
        { username: "", password: "" },
        { username: "名前", password: "pässwörd🔑" },
        { username: "u".repeat(255), password: "p".repeat(70_000) },
      ];
      for (const passwordLayout of ["username-length", "both-lengths"] as const) {
        for (const { username, password } of credentials) {
          if (passwordLayout === "both-lengths" && password.length > 0xffff) continue;
          const extensions = [{ kind: "password-auth-credentials", username, password }] as const;
          const packet = encodeWispInfo({ major: 2, minor: 0, extensions }, { passwordLayout });
          assert.deepEqual(decodeValid(packet, { passwordLayout }), {
            type: WispPacketType.INFO,
            streamId: 0,
            major: 2,
            minor: 0,
            extensions,
          });
        }
      }
    });
    await t.step("INFO from the server with every server extension and a long MOTD", () => {
      const extensions: WispEncodableExtension[] = [
        { kind: "stream-confirmation" },
        { kind: "motd", text: "Welcome 👋\n".repeat(1000) },
        { kind: "password-auth-offer", required: false },
        { kind: "unknown", id: 0xee, payload: fill(300, 0xee) },
        { kind: "udp" },
      ];
      const packet = encodeWispInfo({ major: 2, minor: 255, extensions });
      assert.deepEqual(decodeValid(packet, { sender: "server" }), {
        type: WispPacketType.INFO,
        streamId: 0,
        major: 2,
        minor: 255,
        extensions,
      });
    });
  },
);

Deno.test(
  { name: "writeWispDataHeader() frames a payload in place, without copying", permissions: "none" },
  () => {
    const buffer = new Uint8Array(64);
    buffer.set(text("payload"), WISP_HEADER_SIZE);
    const frame = buffer.subarray(0, WISP_HEADER_SIZE + 7);
    writeWispDataHeader(frame, 0x0a0b0c0d);
    assert.deepEqual(
      Array.from(frame),
      [0x02, 0x0d, 0x0c, 0x0b, 0x0a, ...text("payload")],
    );
    const decoded = decodeValid(frame);
    assert.equal(decoded.type, WispPacketType.DATA);
    if (decoded.type !== WispPacketType.DATA) return;
    assert.equal(decoded.data.buffer, buffer.buffer, "the payload is a view, not a copy");
    assert.equal(decoded.data.byteOffset, WISP_HEADER_SIZE);
    assert.equal(decoded.data.byteLength, 7);

    // A header-only frame is an empty DATA packet; the frame may sit anywhere in a larger buffer.
    const offset = new Uint8Array(16).subarray(3, 8);
    writeWispDataHeader(offset, 1);
    assert.deepEqual(offset, bytes(0x02, 0x01, 0x00, 0x00, 0x00));
  },
);

// ---------------------------------------------------------------------------------------------------------------
// Fixed layouts: trailing bytes

Deno.test({
  name: "decodeWispPacket() rejects a trailing byte where the layout is fixed",
  permissions: "none",
}, async (t) => {
  await t.step("CONTINUE with 5 payload bytes on a stream", () => {
    assertInvalid(decodeWispPacket(bytes(0x03, 0x01, 0x00, 0x00, 0x00, 0x80, 0x00, 0x00, 0x00, 0x00)), {
      scope: "stream",
      streamId: 1,
      message: /^Cannot decode CONTINUE packet: expected 4 payload bytes, got 5$/,
    });
  });
  await t.step("CONTINUE with 5 payload bytes on stream 0", () => {
    assertInvalid(decodeWispPacket(bytes(0x03, 0x00, 0x00, 0x00, 0x00, 0x80, 0x00, 0x00, 0x00, 0x00)), {
      scope: "session",
      message: /^Cannot decode CONTINUE packet: expected 4 payload bytes, got 5$/,
    });
  });
  await t.step("CLOSE with 2 payload bytes on a stream", () => {
    assertInvalid(decodeWispPacket(bytes(0x04, 0x02, 0x00, 0x00, 0x00, 0x02, 0x00)), {
      scope: "stream",
      streamId: 2,
      message: /^Cannot decode CLOSE packet: expected 1 payload byte, got 2$/,
    });
  });
  await t.step("CLOSE with 2 payload bytes on stream 0", () => {
    assertInvalid(decodeWispPacket(bytes(0x04, 0x00, 0x00, 0x00, 0x00, 0x04, 0x00)), {
      scope: "session",
      message: /^Cannot decode CLOSE packet: expected 1 payload byte, got 2$/,
    });
  });
  await t.step("INFO with one byte after the last extension", () => {
    assertInvalid(
      decodeWispPacket(bytes(0x05, 0x00, 0x00, 0x00, 0x00, 0x02, 0x00, 0x01, 0x00, 0x00, 0x00, 0x00, 0x01)),
      {
        scope: "session",
        message: /^Cannot decode INFO packet: expected a 5-byte extension header at offset 7, got 1 bytes$/,
      },
    );
  });
  const info = (...entry: number[]) => bytes(0x05, 0x00, 0x00, 0x00, 0x00, 0x02, 0x00, ...entry);
  await t.step("UDP extension with a payload byte", () => {
    assertInvalid(decodeWispPacket(info(0x01, 0x01, 0x00, 0x00, 0x00, 0x00)), {
      scope: "session",
      message: /^Cannot decode INFO packet: UDP extension expects 0 payload bytes, got 1$/,
    });
  });
  await t.step("stream confirmation extension with a payload byte", () => {
    assertInvalid(decodeWispPacket(info(0x05, 0x01, 0x00, 0x00, 0x00, 0x00)), {
      scope: "session",
      message: /^Cannot decode INFO packet: stream confirmation extension expects 0 payload bytes, got 1$/,
    });
  });
  await t.step("server password extension with 2 payload bytes", () => {
    assertInvalid(decodeWispPacket(info(0x02, 0x02, 0x00, 0x00, 0x00, 0x01, 0x00), { sender: "server" }), {
      scope: "session",
      message: /^Cannot decode INFO packet: password extension expects 1 payload bytes, got 2$/,
    });
  });
  await t.step("both-lengths credentials with a byte after the password", () => {
    const entry = [0x02, 0x09, 0x00, 0x00, 0x00, 0x03, 0x02, 0x00, 0x62, 0x6f, 0x62, 0x70, 0x77, 0x21];
    assertInvalid(decodeWispPacket(info(...entry), { passwordLayout: "both-lengths" }), {
      scope: "session",
      message:
        /^Cannot decode INFO packet: password extension length mismatch: password length is 2 but 3 bytes follow$/,
    });
  });
});

// ---------------------------------------------------------------------------------------------------------------
// Unknown types and short messages

Deno.test(
  { name: "decodeWispPacket() fails the session on an unknown packet type", permissions: "none" },
  async (t) => {
    for (const type of [0x00, 0x06, 0x7f, 0x80, 0xff]) {
      await t.step(`type 0x${type.toString(16).padStart(2, "0")}`, () => {
        for (const payload of [bytes(), bytes(0x01, 0x02, 0x03)]) {
          assertInvalid(decodeWispPacket(concat(bytes(type, 0x01, 0x00, 0x00, 0x00), payload)), {
            scope: "session",
            message: new RegExp(
              `^Invalid packet: unknown type 0x${type.toString(16).padStart(2, "0")} on stream 1$`,
            ),
          });
        }
      });
    }
  },
);

Deno.test({
  name: "decodeWispPacket() fails the session on a message shorter than the header",
  permissions: "none",
}, () => {
  for (let length = 0; length < WISP_HEADER_SIZE; length++) {
    assertInvalid(decodeWispPacket(fill(length, 0x02)), {
      scope: "session",
      message: new RegExp(`^Cannot decode packet: expected at least 5 bytes, got ${length}$`),
    });
  }
});

// ---------------------------------------------------------------------------------------------------------------
// CONNECT, DATA, INFO validation

function connect(streamId: number, ...payload: number[]): Uint8Array {
  return encodeWispRawPacket({ type: WispPacketType.CONNECT, streamId }, bytes(...payload));
}

Deno.test({ name: "decodeWispPacket() validates CONNECT", permissions: "none" }, async (t) => {
  const host = Array.from(text("example.com"));
  await t.step("stream id 0 fails the session", () => {
    assertInvalid(decodeWispPacket(connect(0, 0x01, 0x50, 0x00, ...host)), {
      scope: "session",
      message: /^Invalid CONNECT packet: stream id 0 is reserved for the handshake$/,
    });
  });
  await t.step("an unknown stream type closes the stream", () => {
    for (const streamType of [0x00, 0x03, 0xff]) {
      assertInvalid(decodeWispPacket(connect(4, streamType, 0x50, 0x00, ...host)), {
        scope: "stream",
        streamId: 4,
        message:
          /^Cannot decode CONNECT packet: stream type 0x[0-9a-f]{2} is not TCP \(0x01\) or UDP \(0x02\)$/,
      });
    }
  });
  await t.step("port 0 closes the stream", () => {
    assertInvalid(decodeWispPacket(connect(4, 0x01, 0x00, 0x00, ...host)), {
      scope: "stream",
      streamId: 4,
      message: /^Cannot decode CONNECT packet: port 0 is not a destination$/,
    });
  });
  await t.step("an empty hostname closes the stream", () => {
    assertInvalid(decodeWispPacket(connect(4, 0x01, 0x50, 0x00)), {
      scope: "stream",
      streamId: 4,
      message: /^Cannot decode CONNECT packet: hostname is empty$/,
    });
  });
  await t.step(`a hostname of ${WISP_MAX_HOSTNAME_BYTES} bytes passes, one more closes the stream`, () => {
    const longest = connect(4, 0x01, 0x50, 0x00, ...fill(WISP_MAX_HOSTNAME_BYTES, 0x61));
    assert.equal(decodeValid(longest).type, WispPacketType.CONNECT);
    assertInvalid(
      decodeWispPacket(connect(4, 0x01, 0x50, 0x00, ...fill(WISP_MAX_HOSTNAME_BYTES + 1, 0x61))),
      {
        scope: "stream",
        streamId: 4,
        message: /^Cannot decode CONNECT packet: hostname is 1025 bytes, over the 1024-byte limit$/,
      },
    );
  });
  await t.step("a hostname that is not UTF-8 closes the stream", () => {
    const cases = [
      [0xff], // never valid
      [0xc0, 0x80], // overlong NUL
      [0xed, 0xa0, 0x80], // UTF-16 surrogate
      [0x62, 0xc3], // "ü" cut after its first byte
      [0xf4, 0x90, 0x80, 0x80], // past U+10FFFF
    ];
    for (const hostname of cases) {
      assertInvalid(decodeWispPacket(connect(4, 0x01, 0x50, 0x00, ...hostname)), {
        scope: "stream",
        streamId: 4,
        message: /^Cannot decode CONNECT packet: hostname is not valid UTF-8$/,
      });
    }
  });
});

Deno.test({ name: "decodeWispPacket() fails the session on DATA for stream 0", permissions: "none" }, () => {
  assertInvalid(decodeWispPacket(bytes(0x02, 0x00, 0x00, 0x00, 0x00, 0x68, 0x69)), {
    scope: "session",
    message: /^Invalid DATA packet: stream id 0 is reserved for the handshake$/,
  });
});

function infoPacket(...payload: Uint8Array[]): Uint8Array {
  return encodeWispRawPacket(
    { type: WispPacketType.INFO, streamId: 0 },
    concat(bytes(0x02, 0x00), ...payload),
  );
}

function entry(id: number, payload: Uint8Array, length = payload.byteLength): Uint8Array {
  const header = new Uint8Array(5);
  header[0] = id;
  new DataView(header.buffer).setUint32(1, length, true);
  return concat(header, payload);
}

Deno.test({ name: "decodeWispPacket() reads INFO extension lists", permissions: "none" }, async (t) => {
  await t.step("several extensions, unknown ones kept in wire order", () => {
    const packet = infoPacket(
      entry(0x80, bytes()),
      entry(WispExtensionId.UDP, bytes()),
      entry(WispExtensionId.MOTD, text("")),
      entry(0x06, bytes(0x01, 0x02, 0x03)),
      entry(WispExtensionId.STREAM_CONFIRMATION, bytes()),
      entry(WispExtensionId.PASSWORD_AUTH, bytes(0x00)),
    );
    assert.deepEqual(decodeValid(packet, { sender: "server" }), {
      type: WispPacketType.INFO,
      streamId: 0,
      major: 2,
      minor: 0,
      extensions: [
        { kind: "unknown", id: 0x80, payload: bytes() },
        { kind: "udp" },
        { kind: "motd", text: "" },
        { kind: "unknown", id: 0x06, payload: bytes(0x01, 0x02, 0x03) },
        { kind: "stream-confirmation" },
        { kind: "password-auth-offer", required: false },
      ],
    });
  });
  await t.step("the sender picks the password and key layouts", () => {
    const packet = infoPacket(entry(WispExtensionId.PASSWORD_AUTH, bytes(0x01, 0x61, 0x62)));
    assert.deepEqual(decodeValid(packet), {
      type: WispPacketType.INFO,
      streamId: 0,
      major: 2,
      minor: 0,
      extensions: [{ kind: "password-auth-credentials", username: "a", password: "b" }],
    });
    assertInvalid(decodeWispPacket(packet, { sender: "server" }), {
      scope: "session",
      message: /^Cannot decode INFO packet: password extension expects 1 payload bytes, got 3$/,
    });
  });
  await t.step("a duplicate extension id fails the session", () => {
    assertInvalid(
      decodeWispPacket(infoPacket(entry(0x01, bytes()), entry(0x04, text("a")), entry(0x01, bytes()))),
      {
        scope: "session",
        message: /^Cannot decode INFO packet: extension 0x01 appears twice$/,
      },
    );
  });
  await t.step("an extension length past the packet fails the session", () => {
    for (const length of [1, 4, 0xffff_ffff]) {
      assertInvalid(decodeWispPacket(infoPacket(entry(WispExtensionId.MOTD, bytes(), length))), {
        scope: "session",
        message: new RegExp(
          `^Cannot decode INFO packet: extension 0x04 length ${length} overruns the 0 bytes left$`,
        ),
      });
    }
  });
  await t.step("INFO on a stream other than 0 fails the session", () => {
    const packet = encodeWispRawPacket({ type: WispPacketType.INFO, streamId: 1 }, bytes(0x02, 0x00));
    assertInvalid(decodeWispPacket(packet), {
      scope: "session",
      message: /^Invalid INFO packet: expected stream id 0, got 1$/,
    });
  });
  await t.step("bad extension payloads fail the session", () => {
    const cases: { payload: Uint8Array; options?: WispDecodeOptions; message: RegExp }[] = [
      { payload: entry(0x04, bytes(0xff)), message: /MOTD is not valid UTF-8$/ },
      {
        payload: entry(0x02, bytes()),
        message: /password extension expects at least 1 payload bytes, got 0$/,
      },
      { payload: entry(0x02, bytes(0x04, 0x61)), message: /username length 4 overruns the 2-byte payload$/ },
      { payload: entry(0x02, bytes(0x01, 0xff)), message: /username is not valid UTF-8$/ },
      { payload: entry(0x02, bytes(0x00, 0xc3)), message: /password is not valid UTF-8$/ },
      {
        payload: entry(0x02, bytes(0x01, 0x00)),
        options: { passwordLayout: "both-lengths" },
        message: /password extension expects at least 3 payload bytes, got 2$/,
      },
      {
        payload: entry(0x02, bytes(0x00, 0x05, 0x00, 0x61)),
        options: { passwordLayout: "both-lengths" },
        message: /password length is 5 but 1 bytes follow$/,
      },
      {
        payload: entry(0x02, bytes(0x02)),
        options: { sender: "server" },
        message: /password required flag 0x02 is not 0 or 1$/,
      },
      {
        payload: entry(0x03, bytes(0x01)),
        options: { sender: "server" },
        message: /key extension expects at least 2 payload bytes, got 1$/,
      },
      {
        payload: entry(0x03, bytes(0x02, 0x01)),
        options: { sender: "server" },
        message: /key required flag 0x02 is not 0 or 1$/,
      },
      {
        payload: entry(0x03, fill(32, 0x01)),
        message: /key extension expects at least 33 payload bytes, got 32$/,
      },
    ];
    for (const { payload, options, message } of cases) {
      assertInvalid(decodeWispPacket(infoPacket(payload), options), { scope: "session", message });
    }
  });
  await t.step("a key auth response may carry an empty signature; the verifier judges it", () => {
    const decoded = decodeValid(infoPacket(entry(0x03, concat(bytes(0x01), fill(32, 0x22)))));
    assert.equal(decoded.type, WispPacketType.INFO);
    if (decoded.type !== WispPacketType.INFO) return;
    assert.deepEqual(decoded.extensions, [{
      kind: "key-auth-response",
      algorithm: 0x01,
      publicKeyHash: fill(32, 0x22),
      signature: bytes(),
    }]);
  });
});

// ---------------------------------------------------------------------------------------------------------------
// Encoders refuse what they cannot write

Deno.test(
  { name: "encoders throw RangeError for values the wire cannot carry", permissions: "none" },
  async (t) => {
    const target = { streamType: WispStreamType.TCP, port: 80, hostname: "example.com" } as const;
    const cases: [string, () => unknown, RegExp][] = [
      [
        "CONNECT on stream 0",
        () => encodeWispConnect(0, target),
        /stream id 0 is reserved for the handshake/,
      ],
      [
        "CONNECT on stream 2^32",
        () => encodeWispConnect(2 ** 32, target),
        /stream id 4294967296 is not a u32/,
      ],
      ["CONNECT on stream 1.5", () => encodeWispConnect(1.5, target), /stream id 1.5 is not a u32/],
      ["CONNECT to port 0", () => encodeWispConnect(1, { ...target, port: 0 }), /port 0 is not in 1-65535/],
      ["CONNECT to port 65536", () => encodeWispConnect(1, { ...target, port: 65536 }), /port 65536/],
      ["CONNECT to an empty host", () => encodeWispConnect(1, { ...target, hostname: "" }), /got 0$/],
      [
        "CONNECT to a host of 1025 bytes",
        () => encodeWispConnect(1, { ...target, hostname: "é".repeat(513) }),
        /hostname must be 1 to 1024 UTF-8 bytes, got 1026$/,
      ],
      [
        "CONNECT with stream type 3",
        () => encodeWispConnect(1, { ...target, streamType: 3 as WispStreamType }),
        /stream type 3 is not TCP \(1\) or UDP \(2\)/,
      ],
      ["DATA on stream 0", () => encodeWispData(0, bytes()), /stream id 0 is reserved/],
      [
        "a DATA header in 4 bytes",
        () => writeWispDataHeader(bytes(0, 0, 0, 0), 1),
        /expected at least 5 bytes, got 4/,
      ],
      ["a header in 4 bytes", () => writeWispHeader(bytes(0, 0, 0, 0), { type: 1, streamId: 1 }), /got 4/],
      [
        "a header with type 256",
        () => encodeWispRawPacket({ type: 256, streamId: 1 }, bytes()),
        /type 256 is not a u8/,
      ],
      ["CONTINUE of -1", () => encodeWispContinue(1, -1), /buffer remaining -1 is not a u32/],
      ["CONTINUE of 2^32", () => encodeWispContinue(1, 2 ** 32), /buffer remaining 4294967296 is not a u32/],
      ["CLOSE reason 256", () => encodeWispClose(1, 256), /reason 256 is not a u8/],
      ["INFO major 256", () => encodeWispInfo({ major: 256, minor: 0, extensions: [] }), /major version 256/],
      ["INFO minor -1", () => encodeWispInfo({ major: 2, minor: -1, extensions: [] }), /minor version -1/],
      [
        "INFO with UDP twice",
        () => encodeWispInfo({ major: 2, minor: 0, extensions: [{ kind: "udp" }, { kind: "udp" }] }),
        /extension id 0x01 appears twice/,
      ],
      [
        "INFO with a raw entry duplicating a typed one",
        () =>
          encodeWispInfo({
            major: 2,
            minor: 0,
            extensions: [{ kind: "motd", text: "" }, { kind: "unknown", id: 0x04, payload: bytes() }],
          }),
        /extension id 0x04 appears twice/,
      ],
      [
        "INFO with extension id 256",
        () =>
          encodeWispInfo({
            major: 2,
            minor: 0,
            extensions: [{ kind: "unknown", id: 256, payload: bytes() }],
          }),
        /extension id 256 is not a u8/,
      ],
      [
        "a username of 256 bytes",
        () =>
          encodeWispInfo({
            major: 2,
            minor: 0,
            extensions: [{ kind: "password-auth-credentials", username: "u".repeat(256), password: "" }],
          }),
        /username is 256 UTF-8 bytes, over the 255 limit/,
      ],
      [
        "a password of 65536 bytes in the both-lengths layout",
        () =>
          encodeWispInfo(
            {
              major: 2,
              minor: 0,
              extensions: [{ kind: "password-auth-credentials", username: "", password: "p".repeat(65536) }],
            },
            { passwordLayout: "both-lengths" },
          ),
        /password is 65536 UTF-8 bytes, over the 65535 limit/,
      ],
    ];
    for (const [name, fn, message] of cases) {
      await t.step(name, () => {
        assert.throws(fn, (err: unknown) => {
          assert.ok(err instanceof RangeError, `expected RangeError, got ${err}`);
          assert.match(err.message, /^Cannot (encode|write) /);
          assert.match(err.message, message);
          return true;
        });
      });
    }
    await t.step("key authentication entries are decode-only (TypeError)", () => {
      const offer = { kind: "key-auth-offer", required: true, algorithms: 1, challenge: bytes() } as const;
      assert.throws(
        () =>
          encodeWispInfo({ major: 2, minor: 0, extensions: [offer as unknown as WispEncodableExtension] }),
        TypeError,
      );
    });
  },
);

// ---------------------------------------------------------------------------------------------------------------
// Constants

Deno.test({ name: "constants carry the spec's numbers and names", permissions: "none" }, () => {
  assert.deepEqual(WispPacketType, { CONNECT: 0x01, DATA: 0x02, CONTINUE: 0x03, CLOSE: 0x04, INFO: 0x05 });
  assert.deepEqual(WispStreamType, { TCP: 0x01, UDP: 0x02 });
  assert.deepEqual(WispExtensionId, {
    UDP: 0x01,
    PASSWORD_AUTH: 0x02,
    KEY_AUTH: 0x03,
    MOTD: 0x04,
    STREAM_CONFIRMATION: 0x05,
  });
  assert.deepEqual(WISP_CLOSE_REASON_NAMES, {
    0x01: "UNSPECIFIED",
    0x02: "VOLUNTARY",
    0x03: "NETWORK_ERROR",
    0x04: "INCOMPATIBLE_EXTENSIONS",
    0x41: "INVALID_INFO",
    0x42: "HOST_UNREACHABLE",
    0x43: "CONNECT_TIMEOUT",
    0x44: "CONNECTION_REFUSED",
    0x47: "TRANSFER_TIMEOUT",
    0x48: "HOST_BLOCKED",
    0x49: "THROTTLED",
    0x81: "CLIENT_ERROR",
    0xc0: "AUTH_BAD_PASSWORD",
    0xc1: "AUTH_BAD_SIGNATURE",
    0xc2: "AUTH_MISSING_CREDENTIALS",
  });
  assert.ok(Object.isFrozen(WISP_CLOSE_REASON_NAMES));
});
