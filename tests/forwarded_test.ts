import assert from "node:assert/strict";
import { forwardedClientIp, MAX_INVALID_LENGTH, parseIpLiteral } from "../src/forwarded.ts";

Deno.test(
  { name: "forwardedClientIp() takes the last entry when it is an IP", permissions: "none" },
  async (t) => {
    const cases: [string, string][] = [
      ["203.0.113.7", "203.0.113.7"],
      ["  203.0.113.7\t", "203.0.113.7"],
      ["10.9.9.9, 198.51.100.1", "198.51.100.1"],
      ["evil.example, 198.51.100.1", "198.51.100.1"],
      ["198.51.100.1,2001:db8::1", "2001:db8::1"],
      ["2001:DB8:0:0:0:0:0:1", "2001:db8::1"],
      ["[2001:db8::1]", "2001:db8::1"],
      ["::1", "::1"],
      ["::ffff:192.0.2.1", "192.0.2.1"],
      ["::FFFF:c000:0201", "192.0.2.1"],
      ["[::ffff:192.0.2.1]", "192.0.2.1"],
      ["0.0.0.0", "0.0.0.0"],
      ["255.255.255.255", "255.255.255.255"],
    ];
    for (const [header, ip] of cases) {
      await t.step(JSON.stringify(header), () => assert.deepEqual(forwardedClientIp(header), { ip }));
    }
  },
);

Deno.test(
  { name: "forwardedClientIp() reports anything else as invalid", permissions: "none" },
  async (t) => {
    const cases: [string, string][] = [
      ["", ""],
      ["   ", ""],
      ["198.51.100.1,", ""],
      ["198.51.100.1, unknown", "unknown"],
      ["localhost", "localhost"],
      ["relay.example.com", "relay.example.com"],
      ["203.0.113.7:8080", "203.0.113.7:8080"],
      ["[2001:db8::1]:8080", "[2001:db8::1]:8080"],
      ["[203.0.113.7]", "[203.0.113.7]"],
      ["2001:db8::1]", "2001:db8::1]"],
      ["fe80::1%eth0", "fe80::1%eth0"],
      ["010.0.0.1", "010.0.0.1"],
      ["0x7f.0.0.1", "0x7f.0.0.1"],
      ["127.1", "127.1"],
      ["2130706433", "2130706433"],
      ["256.0.0.1", "256.0.0.1"],
      ["::ffff:010.0.0.1", "::ffff:010.0.0.1"],
      ["1::2::3", "1::2::3"],
      ["1:2:3:4:5:6:7:8:9", "1:2:3:4:5:6:7:8:9"],
      ["12345::1", "12345::1"],
      ["203.0.113.7\x00", "203.0.113.7\x00"],
      ["203.0.113.7\u00a0", "203.0.113.7\u00a0"],
      ["203.0.113.7 198.51.100.1", "203.0.113.7 198.51.100.1"],
      ["203.0.113.\u0667", "203.0.113.\u0667"],
    ];
    for (const [header, invalid] of cases) {
      await t.step(JSON.stringify(header), () => assert.deepEqual(forwardedClientIp(header), { invalid }));
    }
    await t.step("a long entry is cut for the log", () => {
      const entry = "x".repeat(1000);
      assert.deepEqual(forwardedClientIp(`1.2.3.4, ${entry}`), {
        invalid: entry.slice(0, MAX_INVALID_LENGTH),
      });
    });
  },
);

Deno.test({ name: "forwardedClientIp() without a header", permissions: "none" }, () => {
  assert.equal(forwardedClientIp(null), undefined);
});

Deno.test({ name: "parseIpLiteral() returns canonical text", permissions: "none" }, () => {
  assert.equal(parseIpLiteral("2001:0db8:0000:0000:0000:0000:0000:0001"), "2001:db8::1");
  assert.equal(parseIpLiteral("::"), "::");
  assert.equal(parseIpLiteral("::ffff:0:0"), "0.0.0.0");
  assert.equal(parseIpLiteral("64:ff9b::192.0.2.1"), "64:ff9b::c000:201");
  assert.equal(parseIpLiteral(" 1.2.3.4"), undefined, "the caller trims");
});
