import assert from "node:assert/strict";
import { createHostPolicy, parseHostPattern, validateHostname } from "../../src/policy/hosts.ts";

const anyHost = { allowHosts: [], denyHosts: [], allowIpLiterals: true };

Deno.test(
  { name: "validateHostname() accepts DNS names and lower-cases them", permissions: "none" },
  async (t) => {
    const good: [string, string][] = [
      ["example.com", "example.com"],
      ["Example.COM", "example.com"],
      ["localhost", "localhost"],
      ["a", "a"],
      ["xn--bcher-kva.example", "xn--bcher-kva.example"],
      ["a-b.c-d.e", "a-b.c-d.e"],
      ["1.2.3.example", "1.2.3.example"],
      ["example.com.", "example.com"],
      ["3com.com", "3com.com"],
      [`${"a".repeat(63)}.com`, `${"a".repeat(63)}.com`],
      [Array(4).fill("a".repeat(62)).join(".") + ".b", Array(4).fill("a".repeat(62)).join(".") + ".b"],
    ];
    for (const [text, name] of good) {
      await t.step(JSON.stringify(text).slice(0, 40), () => {
        assert.deepEqual(validateHostname(text), { ok: true, name });
      });
    }
    assert.equal(good.at(-1)![1].length, 253);
  },
);

Deno.test({ name: "validateHostname() refuses what is not a DNS name", permissions: "none" }, async (t) => {
  const bad: [string, RegExp][] = [
    ["", /empty/],
    [".", /no labels/],
    ["..", /empty label/],
    ["example.com..", /empty label/],
    [".example.com", /empty label/],
    ["a..b", /empty label/],
    [`${"a".repeat(64)}.com`, /longer than 63/],
    [Array(4).fill("a".repeat(62)).join(".") + ".bc", /longer than 253/],
    ["-a.com", /hyphen/],
    ["a-.com", /hyphen/],
    ["a_b.com", /letters, digits and hyphens/],
    ["*.example.com", /letters, digits and hyphens/],
    ["exa mple.com", /ASCII/],
    ["bücher.example", /punycode/],
    ["example.com:443", /letters, digits/],
    ["127.1", /last label is a number/],
    ["0x7f.1", /last label is a number/],
    ["2130706433", /last label is a number/],
    ["1.2.3.4", /last label is a number/],
    ["0x7f000001", /last label is a number/],
    ["example.123", /last label is a number/],
    ["::1", /letters, digits/],
  ];
  for (const [text, pattern] of bad) {
    await t.step(JSON.stringify(text).slice(0, 40), () => {
      const result = validateHostname(text);
      assert.equal(result.ok, false);
      if (!result.ok) assert.match(result.reason, pattern);
    });
  }
});

Deno.test({ name: "host patterns: exact names and *.domain", permissions: "none" }, () => {
  assert.deepEqual(parseHostPattern("Example.com"), { text: "Example.com", exact: "example.com" });
  assert.deepEqual(parseHostPattern(" *.example.com "), { text: "*.example.com", suffix: ".example.com" });
  for (
    const bad of ["*", "*.", "*example.com", "a.*.com", "**.example.com", "*.*.com", "10.0.0.1", "::1", ""]
  ) {
    assert.equal(parseHostPattern(bad), undefined, bad);
  }
});

Deno.test(
  { name: "createHostPolicy() applies deny, then allow, before resolution", permissions: "none" },
  async (t) => {
    await t.step("no lists: any name and any literal", () => {
      const policy = createHostPolicy(anyHost);
      assert.deepEqual(policy("example.com", "name"), { allowed: true });
      assert.deepEqual(policy("1.1.1.1", "ip"), { allowed: true });
    });
    await t.step("*.domain matches names below it, not the domain itself", () => {
      const policy = createHostPolicy({ ...anyHost, allowHosts: ["*.example.com"] });
      assert.equal(policy("sub.example.com", "name").allowed, true);
      assert.equal(policy("a.b.example.com", "name").allowed, true);
      const d = policy("example.com", "name");
      assert.ok(
        !d.allowed && d.rule === "host_not_allowed" && /not in AERO_PROXY_ALLOW_HOSTS/.test(d.reason),
      );
      assert.equal(policy("badexample.com", "name").allowed, false);
      assert.equal(policy("example.com.evil.net", "name").allowed, false);
    });
    await t.step("exact names match only themselves", () => {
      const policy = createHostPolicy({ ...anyHost, allowHosts: ["example.com"] });
      assert.equal(policy("example.com", "name").allowed, true);
      assert.equal(policy("www.example.com", "name").allowed, false);
    });
    await t.step("deny wins over allow", () => {
      const policy = createHostPolicy({
        ...anyHost,
        allowHosts: ["*.example.com", "example.com"],
        denyHosts: ["admin.example.com", "*.internal.example.com"],
      });
      assert.equal(policy("www.example.com", "name").allowed, true);
      const d = policy("admin.example.com", "name");
      assert.ok(!d.allowed && d.rule === "deny_host" && d.reason.includes('"admin.example.com"'));
      assert.equal(policy("db.internal.example.com", "name").allowed, false);
      assert.equal(policy("internal.example.com", "name").allowed, true);
    });
    await t.step("a deny list alone leaves every other name allowed", () => {
      const policy = createHostPolicy({ ...anyHost, denyHosts: ["*.corp"] });
      assert.equal(policy("host.corp", "name").allowed, false);
      assert.equal(policy("example.com", "name").allowed, true);
    });
    await t.step("ALLOW_IP_LITERALS=0 refuses literals, names still pass", () => {
      const policy = createHostPolicy({ ...anyHost, allowIpLiterals: false });
      const d = policy("1.1.1.1", "ip");
      assert.ok(!d.allowed && d.rule === "ip_literal" && /ALLOW_IP_LITERALS=0/.test(d.reason));
      assert.equal(policy("example.com", "name").allowed, true);
    });
    await t.step("an allow list refuses literals too (only those names)", () => {
      const policy = createHostPolicy({ ...anyHost, allowHosts: ["example.com"] });
      const d = policy("93.184.216.34", "ip");
      assert.ok(!d.allowed && d.rule === "host_not_allowed");
    });
    await t.step("a bad pattern is a RangeError", () => {
      assert.throws(() => createHostPolicy({ ...anyHost, denyHosts: ["a.*.com"] }), RangeError);
    });
  },
);
