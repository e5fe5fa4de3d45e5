/**
 * Codec of Aero's UDP relay datagram frames (`../shared/spec/aero-udp-relay.md`, "Binary datagram frames"):
 * one frame per binary WebSocket message, big-endian.
 *
 * - v1 (IPv4 only): `guest_port` u16, `remote_ipv4` 4 bytes, `remote_port` u16, payload; 8-byte header.
 * - v2: `0xA2`, `0x02`, address family (`0x04`/`0x06`), type (`0x00`, datagram; anything else is rejected),
 *   `guest_port` u16, `remote_ip` (4 or 16 bytes), `remote_port` u16, payload; 12 or 24-byte header.
 *
 * A message is v2 when it starts with `A2 02`, v1 otherwise. Pure functions: no I/O.
 * @module
 */

/** v2's first two bytes. */
export const UDP_V2_MAGIC = 0xa2;
export const UDP_V2_VERSION = 0x02;
/** v2 address families. */
export const UDP_AF_INET = 0x04;
export const UDP_AF_INET6 = 0x06;
/** The only v2 message type: a datagram. */
export const UDP_V2_TYPE_DATAGRAM = 0x00;
/** Header sizes. */
export const UDP_V1_HEADER_BYTES = 8;
export const UDP_V2_IPV4_HEADER_BYTES = 12;
export const UDP_V2_IPV6_HEADER_BYTES = 24;
/** The spec's default payload cap (a size QUIC uses to avoid fragmentation). */
export const UDP_DEFAULT_MAX_PAYLOAD_BYTES = 1200;

/** One datagram frame, either way. */
export interface UdpFrame {
  readonly version: 1 | 2;
  /** The guest's UDP port: the source of an outbound datagram, the destination of an inbound one. */
  readonly guestPort: number;
  /** The remote address as bytes: 4 (IPv4) or 16 (IPv6, v2 only). */
  readonly remoteIp: Uint8Array;
  readonly remotePort: number;
  /** A view into the decoded message. */
  readonly payload: Uint8Array;
}

/** A message that is no frame; `message` says why (the words follow the spec's golden vectors). */
export interface UdpFrameError {
  readonly error: string;
}

/** Decodes one binary message; never throws. */
export function decodeUdpFrame(bytes: Uint8Array): UdpFrame | UdpFrameError {
  const view = new DataView(bytes.buffer, bytes.byteOffset, bytes.byteLength);
  if (bytes.byteLength >= 2 && bytes[0] === UDP_V2_MAGIC && bytes[1] === UDP_V2_VERSION) {
    if (bytes.byteLength < 4) return { error: "frame too short for a v2 header" };
    const family = bytes[2]!;
    if (family !== UDP_AF_INET && family !== UDP_AF_INET6) {
      return { error: `unknown address family 0x${family.toString(16).padStart(2, "0")}` };
    }
    const type = bytes[3]!;
    if (type !== UDP_V2_TYPE_DATAGRAM) {
      return { error: `unsupported message type 0x${type.toString(16).padStart(2, "0")}` };
    }
    const ipBytes = family === UDP_AF_INET ? 4 : 16;
    const header = 6 + ipBytes + 2;
    if (bytes.byteLength < header) {
      return { error: `frame too short: ${bytes.byteLength} bytes, header is ${header}` };
    }
    return {
      version: 2,
      guestPort: view.getUint16(4),
      remoteIp: bytes.subarray(6, 6 + ipBytes),
      remotePort: view.getUint16(6 + ipBytes),
      payload: bytes.subarray(header),
    };
  }
  if (bytes.byteLength < UDP_V1_HEADER_BYTES) {
    return { error: `frame too short: ${bytes.byteLength} bytes, a v1 header is ${UDP_V1_HEADER_BYTES}` };
  }
  return {
    version: 1,
    guestPort: view.getUint16(0),
    remoteIp: bytes.subarray(2, 6),
    remotePort: view.getUint16(6),
    payload: bytes.subarray(UDP_V1_HEADER_BYTES),
  };
}

/** Header size of a frame of `version` for an address of `ipBytes` (4 or 16). */
export function udpHeaderBytes(version: 1 | 2, ipBytes: number): number {
  if (version === 1) {
    if (ipBytes !== 4) throw new RangeError("Cannot frame an IPv6 datagram in v1: IPv6 needs v2");
    return UDP_V1_HEADER_BYTES;
  }
  return ipBytes === 4 ? UDP_V2_IPV4_HEADER_BYTES : UDP_V2_IPV6_HEADER_BYTES;
}

/** Writes a frame header at `frame[0]` (the payload follows it). */
export function writeUdpHeader(
  frame: Uint8Array,
  version: 1 | 2,
  guestPort: number,
  remoteIp: Uint8Array,
  remotePort: number,
): void {
  const view = new DataView(frame.buffer, frame.byteOffset, frame.byteLength);
  if (version === 1) {
    if (remoteIp.byteLength !== 4) throw new RangeError("Cannot frame an IPv6 datagram in v1: IPv6 needs v2");
    view.setUint16(0, guestPort);
    frame.set(remoteIp, 2);
    view.setUint16(6, remotePort);
    return;
  }
  if (remoteIp.byteLength !== 4 && remoteIp.byteLength !== 16) {
    throw new RangeError(`Cannot frame a datagram: ${remoteIp.byteLength}-byte address`);
  }
  frame[0] = UDP_V2_MAGIC;
  frame[1] = UDP_V2_VERSION;
  frame[2] = remoteIp.byteLength === 4 ? UDP_AF_INET : UDP_AF_INET6;
  frame[3] = UDP_V2_TYPE_DATAGRAM;
  view.setUint16(4, guestPort);
  frame.set(remoteIp, 6);
  view.setUint16(6 + remoteIp.byteLength, remotePort);
}

/** Encodes a whole frame. */
export function encodeUdpFrame(
  frame: Omit<UdpFrame, "payload"> & { readonly payload: Uint8Array },
): Uint8Array {
  const header = udpHeaderBytes(frame.version, frame.remoteIp.byteLength);
  const out = new Uint8Array(header + frame.payload.byteLength);
  writeUdpHeader(out, frame.version, frame.guestPort, frame.remoteIp, frame.remotePort);
  out.set(frame.payload, header);
  return out;
}

/** An address as text (dotted quad, or IPv6 in its canonical compressed form) from 4 or 16 bytes. */
export function ipToText(ip: Uint8Array): string {
  if (ip.byteLength === 4) return ip.join(".");
  const words: string[] = [];
  for (let i = 0; i < 16; i += 2) words.push(((ip[i]! << 8) | ip[i + 1]!).toString(16));
  // The URL parser compresses the longest run of zero words, as RFC 5952 asks.
  return new URL(`http://[${words.join(":")}]/`).hostname.slice(1, -1);
}

/** Bytes of an address written as text (IPv4 dotted quad or IPv6); undefined for anything else. */
export function ipToBytes(text: string): Uint8Array | undefined {
  const quad = /^(\d{1,3})\.(\d{1,3})\.(\d{1,3})\.(\d{1,3})$/.exec(text);
  if (quad !== null) {
    const parts = quad.slice(1).map(Number);
    return parts.every((p) => p <= 255) ? Uint8Array.from(parts) : undefined;
  }
  if (!text.includes(":")) return undefined;
  let canonical: string;
  try {
    canonical = new URL(`http://[${text}]/`).hostname.slice(1, -1);
  } catch {
    return undefined;
  }
  const [head = "", tail] = canonical.split("::");
  const headWords = head === "" ? [] : head.split(":");
  const tailWords = tail === undefined || tail === "" ? [] : tail.split(":");
  const zeros = tail === undefined ? 0 : 8 - headWords.length - tailWords.length;
  const words = [...headWords, ...Array<string>(zeros).fill("0"), ...tailWords];
  if (words.length !== 8) return undefined;
  const out = new Uint8Array(16);
  words.forEach((word, i) => {
    const value = parseInt(word, 16);
    out[2 * i] = value >> 8;
    out[2 * i + 1] = value & 0xff;
  });
  return out;
}
