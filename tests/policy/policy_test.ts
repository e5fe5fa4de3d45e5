import assert from "node:assert/strict";
import { createPolicy, parseCidr, SPECIAL_RANGES, specialRangeOf } from "../../src/policy/policy.ts";

const base = { allowPrivateIps: false, allowCidrs: [], denyCidrs: [], allowPorts: [], denyPorts: [25] };
const ip = (text: string) => text.split(".").map(Number);

Deno.test({ name: "the default policy denies every special IPv4 range", permissions: "none" }, async (t) => {
  const policy = createPolicy(base);
  const denied = [
    "0.0.0.0",
    "0.255.255.255",
    "10.0.0.1",
    "100.64.0.1",
    "100.127.255.254",
    "127.0.0.1",
    "127.255.255.255",
    "169.254.169.254",
    "172.16.0.1",
    "172.31.255.255",
    "192.0.0.8",
    "192.0.2.1",
    "192.88.99.1",
    "192.168.1.1",
    "198.18.0.1",
    "198.19.255.255",
    "198.51.100.7",
    "203.0.113.9",
    "224.0.0.1",
    "239.255.255.250",
    "240.0.0.1",
    "255.255.255.255",
  ];
  for (const address of denied) {
    await t.step(address, () => {
      const decision = createPolicy(base)(ip(address), 443);
      assert.equal(decision.allowed, false);
      if (!decision.allowed) {
        assert.equal(decision.rule, "special_range");
        assert.match(decision.reason, new RegExp(`${address.replaceAll(".", "\\.")}:443`));
      }
    });
  }
  await t.step("public unicast neighbours of the ranges are allowed", () => {
    for (
      const address of [
        "1.1.1.1",
        "9.255.255.255",
        "11.0.0.0",
        "100.63.255.255",
        "100.128.0.0",
        "172.15.255.255",
        "172.32.0.0",
        "192.0.1.1",
        "198.17.255.255",
        "198.20.0.0",
        "223.255.255.255",
        "93.184.216.34",
      ]
    ) {
      assert.deepEqual(policy(ip(address), 443), { allowed: true }, address);
    }
  });
  await t.step("the reason names the range", () => {
    const decision = policy(ip("169.254.169.254"), 80);
    assert.ok(!decision.allowed && /link-local range 169\.254\.0\.0\/16/.test(decision.reason));
  });
});

Deno.test({ name: "allow and deny lists combine as documented", permissions: "none" }, async (t) => {
  await t.step("ALLOW_PRIVATE_IPS lifts the special ranges", () => {
    assert.equal(createPolicy({ ...base, allowPrivateIps: true })(ip("10.1.2.3"), 80).allowed, true);
  });
  await t.step("ALLOW_CIDRS makes exceptions, the rest stays denied", () => {
    const policy = createPolicy({ ...base, allowCidrs: ["10.1.0.0/16"] });
    assert.equal(policy(ip("10.1.2.3"), 80).allowed, true);
    assert.equal(policy(ip("10.2.0.1"), 80).allowed, false);
  });
  await t.step("DENY_CIDRS wins even over ALLOW_PRIVATE_IPS", () => {
    const policy = createPolicy({
      ...base,
      allowPrivateIps: true,
      denyCidrs: ["127.0.0.2/32", "8.8.0.0/16"],
    });
    const decision = policy(ip("127.0.0.2"), 80);
    assert.ok(!decision.allowed && decision.rule === "deny_cidr");
    assert.equal(policy(ip("8.8.8.8"), 53).allowed, false);
    assert.equal(policy(ip("127.0.0.1"), 80).allowed, true);
  });
  await t.step("denied ports", () => {
    const decision = createPolicy({ ...base, allowPrivateIps: true })(ip("1.1.1.1"), 25);
    assert.ok(!decision.allowed && decision.rule === "deny_port" && /port 25/.test(decision.reason));
  });
  await t.step("allowed ports", () => {
    const policy = createPolicy({ ...base, allowPorts: [80, 443] });
    assert.equal(policy(ip("1.1.1.1"), 443).allowed, true);
    const decision = policy(ip("1.1.1.1"), 22);
    assert.ok(!decision.allowed && decision.rule === "port_not_allowed");
  });
});

Deno.test({ name: "parseCidr() accepts four-part decimal CIDRs only", permissions: "none" }, () => {
  assert.deepEqual(parseCidr("10.0.0.0/8"), { text: "10.0.0.0/8", network: 0x0a000000, mask: 0xff000000 });
  assert.equal(parseCidr("10.0.0.7/8")?.network, 0x0a000000);
  assert.equal(parseCidr("1.2.3.4")?.mask, 0xffffffff);
  assert.equal(parseCidr("0.0.0.0/0")?.mask, 0);
  for (const bad of ["10/8", "0x0a.0.0.0/8", "10.0.0.0/33", "10.0.0.0/-1", "::1/128", "10.0.0.0/8/8", ""]) {
    assert.equal(parseCidr(bad), undefined, bad);
  }
});

Deno.test({
  name: "the special range table matches ipaddr.js wherever both name a range",
  permissions: "none",
}, () => {
  for (const range of SPECIAL_RANGES) {
    const first = [
      range.network >>> 24,
      (range.network >>> 16) & 255,
      (range.network >>> 8) & 255,
      range.network & 255,
    ];
    assert.ok(specialRangeOf(first) !== undefined, range.text);
  }
  assert.equal(specialRangeOf([8, 8, 8, 8]), undefined);
});
