/**
 * Property tests of the address policy (issue 7): no special-purpose address is ever allowed unless the
 * operator said so, and an IPv4 address is judged by its four bytes however it was written.
 */
import assert from "node:assert/strict";
import fc from "fast-check";
import ipaddr from "ipaddr.js";
import { createPolicy, parseCidr, type PolicyOptions } from "../../src/policy/policy.ts";
import { decodeClientFrame, encodeOpen, FrameType } from "../../src/protocol/mod.ts";

const RUNS = 5_000;

/**
 * The special-purpose ranges, written out again here (network as four bytes, prefix length) so that the test
 * does not trust the table it checks. Source: the README's range table (IANA IPv4 special-purpose registry).
 */
const REFERENCE_RANGES: readonly (readonly [number, number, number, number, number])[] = [
  [0, 0, 0, 0, 8],
  [10, 0, 0, 0, 8],
  [100, 64, 0, 0, 10],
  [127, 0, 0, 0, 8],
  [169, 254, 0, 0, 16],
  [172, 16, 0, 0, 12],
  [192, 0, 0, 0, 24],
  [192, 0, 2, 0, 24],
  [192, 88, 99, 0, 24],
  [192, 168, 0, 0, 16],
  [198, 18, 0, 0, 15],
  [198, 51, 100, 0, 24],
  [203, 0, 113, 0, 24],
  [224, 0, 0, 0, 4],
  [240, 0, 0, 0, 4],
];

function u32(bytes: readonly number[]): number {
  return bytes.reduce((acc, b) => acc * 256 + b, 0);
}

function bytesOf(address: number): [number, number, number, number] {
  return [address >>> 24, (address >>> 16) & 0xff, (address >>> 8) & 0xff, address & 0xff];
}

function isSpecial(address: number): boolean {
  return REFERENCE_RANGES.some(([a, b, c, d, prefix]) => {
    const size = 2 ** (32 - prefix);
    const network = u32([a, b, c, d]);
    return address >= network && address < network + size;
  });
}

const address = fc.integer({ min: 0, max: 0xffff_ffff });
/** An address inside one of the special ranges, anywhere in it. */
const specialAddress = fc.tuple(
  fc.constantFrom(...REFERENCE_RANGES),
  fc.integer({ min: 0, max: 0xffff_ffff }),
)
  .map(([[a, b, c, d, prefix], host]) => u32([a, b, c, d]) + (host % 2 ** (32 - prefix)));
const port = fc.integer({ min: 1, max: 0xffff });
const cidrText = fc.tuple(address, fc.integer({ min: 0, max: 32 })).map(([a, prefix]) =>
  `${bytesOf(a).join(".")}/${prefix}`
);
const ports = fc.array(port, { maxLength: 4 });

/** A configuration that does not allow special ranges (no ALLOW_PRIVATE_IPS, no ALLOW_CIDRS) but is otherwise arbitrary. */
const strictOptions: fc.Arbitrary<PolicyOptions> = fc.record({
  allowPrivateIps: fc.constant(false),
  allowCidrs: fc.constant([]),
  denyCidrs: fc.array(cidrText, { maxLength: 3 }),
  allowPorts: ports,
  denyPorts: ports,
});

function inCidr(address: number, text: string): boolean {
  const [ip, prefixText] = text.split("/");
  const prefix = Number(prefixText);
  const size = 2 ** (32 - prefix);
  const network = Math.floor(u32(ip!.split(".").map(Number)) / size) * size;
  return address >= network && address < network + size;
}

Deno.test(
  { name: "property: no special-purpose address is allowed by a strict policy", permissions: "none" },
  () => {
    fc.assert(
      fc.property(strictOptions, specialAddress, port, (options, a, p) => {
        assert.equal(createPolicy(options)(bytesOf(a), p).allowed, false, `${bytesOf(a).join(".")}:${p}`);
      }),
      { numRuns: RUNS },
    );
  },
);

Deno.test({ name: "property: ALLOW_CIDRS opens only the addresses it covers", permissions: "none" }, () => {
  fc.assert(
    fc.property(
      fc.array(cidrText, { minLength: 1, maxLength: 3 }),
      specialAddress,
      port,
      (allowCidrs, a, p) => {
        const policy = createPolicy({
          allowPrivateIps: false,
          allowCidrs,
          denyCidrs: [],
          allowPorts: [],
          denyPorts: [],
        });
        const covered = allowCidrs.some((cidr) => inCidr(a, cidr));
        assert.equal(policy(bytesOf(a), p).allowed, covered, `${bytesOf(a).join(".")} with ${allowCidrs}`);
      },
    ),
    { numRuns: RUNS },
  );
});

Deno.test(
  { name: "property: DENY_CIDRS wins over ALLOW_PRIVATE_IPS and ALLOW_CIDRS", permissions: "none" },
  () => {
    fc.assert(
      fc.property(fc.array(cidrText, { minLength: 1, maxLength: 3 }), address, port, (denyCidrs, a, p) => {
        const policy = createPolicy({
          allowPrivateIps: true,
          allowCidrs: ["0.0.0.0/0"],
          denyCidrs,
          allowPorts: [],
          denyPorts: [],
        });
        const denied = denyCidrs.some((cidr) => inCidr(a, cidr));
        assert.equal(policy(bytesOf(a), p).allowed, !denied);
      }),
      { numRuns: RUNS },
    );
  },
);

Deno.test({
  name: "property: the default policy allows exactly the public unicast addresses",
  permissions: "none",
}, () => {
  const policy = createPolicy({
    allowPrivateIps: false,
    allowCidrs: [],
    denyCidrs: [],
    allowPorts: [],
    denyPorts: [],
  });
  fc.assert(
    fc.property(fc.oneof(address, specialAddress), port, (a, p) => {
      const decision = policy(bytesOf(a), p);
      if (isSpecial(a)) assert.equal(decision.allowed, false);
      // ipaddr.js knows a few more special blocks than the README table (the policy's second opinion).
      else if (!decision.allowed) assert.match(decision.reason, /range/);
    }),
    { numRuns: RUNS * 4 },
  );
});

/**
 * The textual forms an IPv4 address takes in URLs and in `inet_aton`: dotted decimal, octal and hex parts,
 * three- and two-part forms whose last part spans the remaining bytes, and one 32-bit number.
 */
function writtenFormOf(addresses: fc.Arbitrary<number>): fc.Arbitrary<{ address: number; text: string }> {
  const radixes = fc.array(fc.constantFrom("dec", "oct", "hex"), { minLength: 4, maxLength: 4 });
  return fc.tuple(addresses, fc.integer({ min: 0, max: 3 }), radixes).map(([a, parts, radixes]) => {
    const b = bytesOf(a);
    const values = parts === 0
      ? [b[0], b[1], b[2], b[3]]
      : parts === 1
      ? [b[0], b[1], b[2] * 256 + b[3]]
      : parts === 2
      ? [b[0], b[1] * 65536 + b[2] * 256 + b[3]]
      : [a];
    const text = values.map((v, i) => {
      switch (radixes[i]) {
        case "oct":
          return `0${v.toString(8)}`;
        case "hex":
          return `0x${v.toString(16)}`;
        default:
          return String(v);
      }
    }).join(".");
    return { address: a, text };
  });
}
const writtenForm = writtenFormOf(address);

Deno.test({
  name: "property: an IPv4 address is judged by its 4 bytes in any written form",
  permissions: "none",
}, () => {
  const policies = [
    createPolicy({ allowPrivateIps: false, allowCidrs: [], denyCidrs: [], allowPorts: [], denyPorts: [25] }),
    createPolicy({
      allowPrivateIps: true,
      allowCidrs: [],
      denyCidrs: ["10.0.0.0/8"],
      allowPorts: [],
      denyPorts: [],
    }),
  ];
  fc.assert(
    fc.property(
      fc.oneof(writtenForm, writtenFormOf(specialAddress)),
      port,
      ({ address: a, text }, p) => {
        // The written form reaches the relay through a client: a browser's URL parser (WHATWG, as
        // `new URL` here) and ipaddr.js both turn it into the same four bytes.
        const expected = bytesOf(a);
        if (u32(expected) !== a) throw new Error("unreachable");
        const fromUrl = new URL(`http://${text}/`).hostname.split(".").map(Number);
        const fromIpaddr = ipaddr.IPv4.parse(text).octets;
        assert.deepEqual(fromUrl, expected, text);
        assert.deepEqual(fromIpaddr, expected, text);
        const frame = decodeClientFrame(encodeOpen(1, fromUrl, p));
        assert.equal(frame.type, FrameType.OPEN);
        if (frame.type !== FrameType.OPEN) return;
        for (const policy of policies) assert.deepEqual(policy(frame.ip, p), policy(expected, p), text);
        // The configuration parser accepts only the four-part decimal form, and then means the same bytes.
        const cidr = parseCidr(`${text}/32`);
        if (cidr !== undefined) assert.equal(cidr.network, a, `${text}/32 parsed as ${cidr.network}`);
      },
    ),
    { numRuns: RUNS },
  );
});

Deno.test({ name: "property: ambiguous written forms never reach a CIDR rule", permissions: "none" }, () => {
  fc.assert(
    fc.property(writtenForm, ({ text }) => {
      const canonical = /^(0|[1-9][0-9]{0,2})(\.(0|[1-9][0-9]{0,2})){3}$/.test(text);
      assert.equal(parseCidr(`${text}/8`) !== undefined, canonical, text);
    }),
    { numRuns: RUNS },
  );
});

/**
 * IPv6 (issue 12): the special-purpose ranges written out again, as (first 16-bit groups, prefix length), so
 * that the test does not trust the table it checks. Source: the IANA IPv6 special-purpose registry.
 */
const REFERENCE_RANGES_V6: readonly (readonly [readonly number[], number])[] = [
  [[0x64, 0xff9b, 0x1], 48],
  [[0x100, 0, 0, 0], 64],
  [[0x2001, 0], 23],
  [[0x2001, 0xdb8], 32],
  [[0x2002], 16],
  [[0x3fff], 20],
  [[0xfc00], 7],
  [[0xfe80], 10],
  [[0xfec0], 10],
  [[0xff00], 8],
];

/** 16 bytes from eight 16-bit groups. */
function bytesOfGroups(groups: readonly number[]): number[] {
  return groups.flatMap((g) => [g >>> 8, g & 0xff]);
}

const group = fc.integer({ min: 0, max: 0xffff });
const groups = fc.array(group, { minLength: 8, maxLength: 8 });
/** An address inside one of the IPv6 special ranges: the range's prefix bits, random host bits. */
const specialAddressV6 = fc.tuple(fc.constantFrom(...REFERENCE_RANGES_V6), groups).map(
  ([[head, prefix], rest]) => {
    const out = [...rest];
    for (let bit = 0; bit < prefix; bit++) {
      const i = Math.floor(bit / 16);
      const mask = 0x8000 >>> (bit % 16);
      const want = ((head[i] ?? 0) & mask) !== 0;
      out[i] = want ? out[i]! | mask : out[i]! & ~mask & 0xffff;
    }
    return bytesOfGroups(out);
  },
);

Deno.test({
  name: "property: no special-purpose IPv6 address is allowed by a strict policy",
  permissions: "none",
}, () => {
  fc.assert(
    fc.property(strictOptions, specialAddressV6, port, (options, bytes, p) => {
      assert.equal(createPolicy(options)(bytes, p).allowed, false, bytes.join(","));
    }),
    { numRuns: RUNS },
  );
});

Deno.test({
  name: "property: an IPv4 address written as mapped, compatible or NAT64 IPv6 is judged as the IPv4 address",
  permissions: "none",
}, () => {
  const policies = [
    createPolicy({ allowPrivateIps: false, allowCidrs: [], denyCidrs: [], allowPorts: [], denyPorts: [25] }),
    createPolicy({
      allowPrivateIps: true,
      allowCidrs: [],
      denyCidrs: ["10.0.0.0/8"],
      allowPorts: [],
      denyPorts: [],
    }),
    createPolicy({
      allowPrivateIps: false,
      allowCidrs: ["192.168.0.0/16"],
      denyCidrs: ["8.8.0.0/16"],
      allowPorts: [],
      denyPorts: [],
    }),
  ];
  const prefixes = [
    [0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0xff, 0xff],
    [0, 0x64, 0xff, 0x9b, 0, 0, 0, 0, 0, 0, 0, 0],
  ];
  fc.assert(
    fc.property(fc.oneof(address, specialAddress), port, fc.constantFrom(...prefixes), (a, p, prefix) => {
      const v4 = bytesOf(a);
      const v6 = [...prefix, ...v4];
      for (const policy of policies) assert.equal(policy(v6, p).allowed, policy(v4, p).allowed, v4.join("."));
      // IPv4-compatible (::a.b.c.d) too, except :: and ::1, which are denied as themselves.
      const compat = [...new Array(12).fill(0), ...v4];
      if (a > 1) {
        for (const policy of policies) {
          assert.equal(policy(compat, p).allowed, policy(v4, p).allowed, `::${v4.join(".")}`);
        }
      }
    }),
    { numRuns: RUNS },
  );
});
