import assert from "node:assert/strict";
import {
  createPolicy,
  embeddedIpv4,
  formatAddress,
  judgeAddress,
  parseAddress,
  parseAnyCidr,
  parseCidr6,
  type PolicyOptions,
  SPECIAL_RANGES_V6,
  specialRangeOf,
} from "../../src/policy/policy.ts";

const base: PolicyOptions = {
  allowPrivateIps: false,
  allowCidrs: [],
  denyCidrs: [],
  allowPorts: [],
  denyPorts: [25],
};
const v6 = (text: string) => {
  const bytes = parseAddress(text);
  if (bytes === undefined || bytes.length !== 16) throw new Error(`not IPv6: ${text}`);
  return bytes;
};

/** Every IPv6 range the issue names (and a few the IANA registry adds), with an address at each end. */
const DENIED_V6: readonly [string, string, string][] = [
  ["::/128", "::", "::"],
  ["::1/128", "::1", "::1"],
  ["64:ff9b:1::/48", "64:ff9b:1::", "64:ff9b:1:ffff:ffff:ffff:ffff:ffff"],
  ["100::/64", "100::", "100::ffff:ffff:ffff:ffff"],
  ["100:0:0:1::/64", "100:0:0:1::", "100:0:0:1:ffff:ffff:ffff:ffff"],
  ["2001::/23", "2001::", "2001:1ff:ffff:ffff:ffff:ffff:ffff:ffff"],
  ["2001:db8::/32", "2001:db8::", "2001:db8:ffff:ffff:ffff:ffff:ffff:ffff"],
  ["2002::/16", "2002::", "2002:808:808:ffff:ffff:ffff:ffff:ffff"],
  ["3fff::/20", "3fff::", "3fff:fff:ffff:ffff:ffff:ffff:ffff:ffff"],
  ["5f00::/16", "5f00::", "5f00:ffff:ffff:ffff:ffff:ffff:ffff:ffff"],
  ["fc00::/7", "fc00::", "fdff:ffff:ffff:ffff:ffff:ffff:ffff:ffff"],
  ["fe80::/10", "fe80::", "febf:ffff:ffff:ffff:ffff:ffff:ffff:ffff"],
  ["fec0::/10", "fec0::", "feff:ffff:ffff:ffff:ffff:ffff:ffff:ffff"],
  ["ff00::/8", "ff00::", "ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff"],
];

Deno.test({ name: "the default policy denies every special IPv6 range", permissions: "none" }, async (t) => {
  const policy = createPolicy(base);
  for (const [range, first, last] of DENIED_V6) {
    await t.step(range, () => {
      assert.ok(SPECIAL_RANGES_V6.some((r) => r.text === range), `${range} is in the table`);
      for (const address of [first, last]) {
        const decision = policy(v6(address), 443);
        assert.equal(decision.allowed, false, address);
        if (!decision.allowed) {
          assert.equal(decision.rule, "special_range");
          assert.ok(decision.reason.includes(`[${formatAddress(v6(address))}]:443`), decision.reason);
          assert.ok(decision.reason.includes(range), decision.reason);
        }
      }
    });
  }
  await t.step("addresses outside global unicast 2000::/3 are reserved", () => {
    for (const address of ["1::1", "4000::1", "8000::", "e000::1", "1fff:ffff::1"]) {
      const decision = policy(v6(address), 443);
      assert.ok(
        !decision.allowed && /reserved range \(outside global unicast 2000::\/3\)/.test(decision.reason),
      );
    }
  });
  await t.step("public IPv6 unicast is allowed", () => {
    for (
      const address of [
        "2606:4700:4700::1111",
        "2a00:1450:4001:81c::200e",
        "2001:200::1", // first address past 2001::/23
        "2001:db7:ffff::1",
        "2001:db9::1",
        "2003::1",
        "3fff:1000::1", // past 3fff::/20
        "3ffe::1",
      ]
    ) {
      assert.deepEqual(policy(v6(address), 443), { allowed: true }, address);
    }
  });
  await t.step("judgeAddress() takes text", () => {
    const decision = judgeAddress(policy, "2001:db8::1", 443);
    assert.ok(!decision.allowed && /documentation range 2001:db8::\/32/.test(decision.reason));
    assert.deepEqual(judgeAddress(policy, "2606:4700:4700::1111", 443), { allowed: true });
    assert.deepEqual(judgeAddress(policy, "1.1.1.1", 443), { allowed: true });
    for (
      const bad of ["[::1]", "fe80::1%eth0", "127.1", "0x7f.0.0.1", "::ffff:0x7f.0.0.1", "example.com", ""]
    ) {
      const d = judgeAddress(policy, bad, 443);
      assert.ok(!d.allowed && d.rule === "invalid_address", bad);
    }
  });
  await t.step("addresses of other lengths are denied (fail closed)", () => {
    for (const bytes of [[], [1, 2, 3], [1, 1, 1, 1, 1], new Array(15).fill(1), [1, 1, 1, 256]]) {
      const d = policy(bytes, 443);
      assert.ok(!d.allowed && d.rule === "invalid_address", JSON.stringify(bytes));
    }
  });
  await t.step("ports apply to IPv6 as to IPv4", () => {
    const d = policy(v6("2606:4700:4700::1111"), 25);
    assert.ok(!d.allowed && d.rule === "deny_port" && d.reason.includes("[2606:4700:4700::1111]:25"));
  });
});

Deno.test({
  name: "IPv6 forms that embed an IPv4 address are judged by that IPv4 address",
  permissions: "none",
}, async (t) => {
  const policy = createPolicy(base);
  const forms: [string, (v4: string) => string][] = [
    ["IPv4-mapped", (v4) => `::ffff:${v4}`],
    ["IPv4-compatible", (v4) => `::${v4}`],
    ["NAT64", (v4) => `64:ff9b::${v4}`],
  ];
  for (const [form, write] of forms) {
    await t.step(form, () => {
      for (
        const v4 of ["127.0.0.1", "10.1.2.3", "169.254.169.254", "192.168.0.1", "100.64.0.1", "224.0.0.1"]
      ) {
        const decision = policy(v6(write(v4)), 80);
        assert.ok(!decision.allowed && decision.rule === "special_range", write(v4));
        if (!decision.allowed) assert.ok(decision.reason.includes(`as ${form}`), decision.reason);
        assert.equal(embeddedIpv4(v6(write(v4)))?.via.embeds, form);
        assert.deepEqual(embeddedIpv4(v6(write(v4)))?.ipv4, v4.split(".").map(Number));
      }
      for (const v4 of ["1.1.1.1", "93.184.216.34", "8.8.8.8"]) {
        assert.deepEqual(policy(v6(write(v4)), 80), { allowed: true }, write(v4));
      }
    });
  }
  await t.step("the same bytes written in hex are the same address", () => {
    assert.deepEqual(v6("::ffff:7f00:1"), v6("::ffff:127.0.0.1"));
    assert.equal(policy(v6("::ffff:a9fe:a9fe"), 80).allowed, false);
    assert.equal(policy(v6("0:0:0:0:0:ffff:0101:0101"), 80).allowed, true);
  });
  await t.step("::a.b.c.d is IPv4-compatible (RFC 4291), not mapped as ipaddr.js reads it", () => {
    assert.deepEqual(v6("::1.2.3.4"), [...new Array(12).fill(0), 1, 2, 3, 4]);
  });
  await t.step("IPv4 CIDR rules apply to the embedded address", () => {
    const p = createPolicy({ ...base, allowCidrs: ["10.1.0.0/16"], denyCidrs: ["8.8.0.0/16"] });
    assert.equal(p(v6("::ffff:10.1.2.3"), 80).allowed, true);
    assert.equal(p(v6("64:ff9b::10.1.2.3"), 80).allowed, true);
    assert.equal(p(v6("::ffff:10.2.0.1"), 80).allowed, false);
    const d = p(v6("64:ff9b::8.8.8.8"), 53);
    assert.ok(!d.allowed && d.rule === "deny_cidr" && d.reason.includes("8.8.0.0/16"));
    const open = createPolicy({ ...base, allowPrivateIps: true, denyCidrs: ["127.0.0.0/8"] });
    assert.equal(open(v6("::ffff:127.0.0.1"), 80).allowed, false);
    assert.equal(open(v6("::ffff:10.0.0.1"), 80).allowed, true);
  });
  await t.step("specialRangeOf() names the embedded range", () => {
    assert.match(
      specialRangeOf(v6("::ffff:169.254.169.254"))!,
      /^link-local range 169\.254\.0\.0\/16 \(as IPv4-mapped/,
    );
    assert.equal(specialRangeOf(v6("64:ff9b::1.1.1.1")), undefined);
    assert.match(specialRangeOf(v6("::"))!, /^unspecified/);
    assert.match(specialRangeOf(v6("::1"))!, /^loopback/);
  });
  await t.step("6to4 is denied outright, whatever IPv4 address it carries", () => {
    assert.equal(policy(v6("2002:0808:0808::1"), 443).allowed, false);
    assert.equal(policy(v6("2002:7f00:0001::1"), 443).allowed, false);
  });
});

Deno.test({ name: "IPv6 CIDRs in the allow and deny lists", permissions: "none" }, async (t) => {
  await t.step("ALLOW_PRIVATE_IPS lifts the IPv6 special ranges", () => {
    const p = createPolicy({ ...base, allowPrivateIps: true });
    for (const address of ["::1", "fe80::1", "fd00::1", "ff02::1"]) {
      assert.equal(p(v6(address), 80).allowed, true);
    }
  });
  await t.step("ALLOW_CIDRS makes IPv6 exceptions, the rest stays denied", () => {
    const p = createPolicy({ ...base, allowCidrs: ["fd12:3456::/32", "::1/128"] });
    assert.equal(p(v6("fd12:3456::7"), 80).allowed, true);
    assert.equal(p(v6("::1"), 80).allowed, true);
    assert.equal(p(v6("fd12:3457::7"), 80).allowed, false);
    assert.equal(p(v6("fe80::1"), 80).allowed, false);
  });
  await t.step("DENY_CIDRS wins for IPv6 too, also over an embedded public IPv4", () => {
    const p = createPolicy({
      ...base,
      allowPrivateIps: true,
      allowCidrs: ["::/0"],
      denyCidrs: ["2606:4700::/32", "64:ff9b::/96", "::1/128"],
    });
    const d = p(v6("2606:4700:4700::1111"), 443);
    assert.ok(!d.allowed && d.rule === "deny_cidr" && d.reason.includes("2606:4700::/32"));
    assert.equal(p(v6("64:ff9b::1.1.1.1"), 443).allowed, false);
    assert.equal(p(v6("::1"), 443).allowed, false);
    assert.equal(p(v6("2a00::1"), 443).allowed, true);
    assert.equal(p([1, 1, 1, 1], 443).allowed, true, "an IPv6 deny list does not touch IPv4");
  });
  await t.step("an IPv4 deny list does not touch native IPv6", () => {
    const p = createPolicy({ ...base, denyCidrs: ["0.0.0.0/0"] });
    assert.equal(p(v6("2606:4700:4700::1111"), 443).allowed, true);
    assert.equal(p(v6("::ffff:1.1.1.1"), 443).allowed, false);
  });
  await t.step("a bad CIDR is a RangeError", () => {
    assert.throws(() => createPolicy({ ...base, denyCidrs: ["fe80::1%eth0/64"] }), RangeError);
  });
});

Deno.test({ name: "parseCidr6() and parseAnyCidr() are strict", permissions: "none" }, () => {
  const c = parseCidr6("fc00::/7")!;
  assert.equal(c.prefix, 7);
  assert.equal(c.network, 0xfcn << 120n);
  assert.equal(parseCidr6("fc00::1/7")?.network, 0xfcn << 120n, "host bits are masked off");
  assert.equal(parseCidr6("::1")?.prefix, 128);
  assert.equal(parseCidr6("::/0")?.mask, 0n);
  assert.equal(parseCidr6("::ffff:10.0.0.0/104")?.prefix, 104);
  for (
    const bad of [
      "fc00::/129",
      "fc00::/-1",
      "fc00::/07x",
      "[fc00::]/7",
      "fe80::%eth0/10",
      "fc00::/7/7",
      "::ffff:010.0.0.0/104",
      "::ffff:10.0.0/104",
      "10.0.0.0/8",
      "",
      "fc00:::/7",
      "12345::/16",
    ]
  ) {
    assert.equal(parseCidr6(bad), undefined, bad);
  }
  assert.equal(parseAnyCidr("10.0.0.0/8")?.family, 4);
  assert.equal(parseAnyCidr("2001:db8::/32")?.family, 6);
  assert.equal(parseAnyCidr("10/8"), undefined);
});

Deno.test({ name: "formatAddress() writes RFC 5952 text", permissions: "none" }, () => {
  assert.equal(formatAddress(v6("2001:0DB8:0000:0000:0000:0000:0000:0001")), "2001:db8::1");
  assert.equal(formatAddress(v6("::ffff:7f00:1")), "::ffff:127.0.0.1");
  assert.equal(formatAddress(v6("::")), "::");
  assert.equal(formatAddress([10, 0, 0, 1]), "10.0.0.1");
});
