import assert from "node:assert/strict";
import denoJson from "../../deno.json" with { type: "json" };
import { createPolicy, parseAddress, parseCidr, SPECIAL_RANGES_V6 } from "../../src/policy/policy.ts";
import { cidrsExcept, LISTEN_ADDRESSES, sandboxDenyList } from "../../src/policy/sandbox.ts";

const ip = (text: string) => text.split(".").map(Number);
/** Whether an IPv4 address is covered by the IPv4 entries of `list` (IPv6 entries are bracketed addresses). */
const inList = (list: string[], address: string) => {
  const value = ip(address).reduce((acc, b) => ((acc << 8) | b) >>> 0, 0);
  return list.filter((text) => !text.startsWith("[")).some((text) => {
    const cidr = parseCidr(text)!;
    return ((value & cidr.mask) >>> 0) === cidr.network;
  });
};

Deno.test({
  name: "the sandboxed task and the binary deny exactly the policy's special ranges",
  permissions: "none",
}, () => {
  const flag = `--deny-net=${sandboxDenyList().join(",")}`;
  assert.ok(
    denoJson.tasks["start:sandboxed"].includes(` ${flag} `),
    "start:sandboxed is out of date: run deno run src/policy/sandbox.ts",
  );
  assert.ok(
    denoJson.tasks.compile.includes(` ${flag} `),
    "compile is out of date: run deno run src/policy/sandbox.ts",
  );
});

Deno.test({
  name: "sandboxDenyList() covers every denied address but the listen addresses",
  permissions: "none",
}, () => {
  const list = sandboxDenyList();
  const policy = createPolicy({
    allowPrivateIps: false,
    allowCidrs: [],
    denyCidrs: [],
    allowPorts: [],
    denyPorts: [],
  });
  // A deterministic sweep over the address space, plus the edges of every range.
  let x = 0x12345678;
  const samples = [
    "127.0.0.0",
    "127.0.0.2",
    "127.255.255.255",
    "0.0.0.1",
    "0.255.255.255",
    "169.254.169.254",
    "8.8.8.8",
  ];
  for (let i = 0; i < 20_000; i++) {
    x ^= x << 13;
    x ^= x >>> 17;
    x ^= x << 5;
    const v = x >>> 0;
    samples.push([v >>> 24, (v >>> 16) & 255, (v >>> 8) & 255, v & 255].join("."));
  }
  for (const address of samples) {
    if (LISTEN_ADDRESSES.includes(address)) continue;
    const denied = !policy(ip(address), 443).allowed;
    assert.equal(inList(list, address), denied, address);
  }
  for (const address of LISTEN_ADDRESSES.filter((a) => !a.includes(":"))) {
    assert.equal(inList(list, address), false, address);
  }
});

Deno.test({
  name: "sandboxDenyList() holds the single-address IPv6 ranges as bracketed addresses, and no IPv6 CIDR",
  permissions: "none",
}, () => {
  const v6 = sandboxDenyList().filter((text) => text.includes(":"));
  // Deno 2.9.6 refuses IPv6 CIDRs in --deny-net; only `[addr]` works. `::` is a listen address, left open.
  assert.deepEqual(v6, ["[::1]"]);
  for (const entry of v6) {
    assert.match(entry, /^\[[0-9a-f:]+\]$/);
    assert.ok(parseAddress(entry.slice(1, -1)) !== undefined, entry);
  }
  assert.ok(LISTEN_ADDRESSES.includes("::"));
  const singles = SPECIAL_RANGES_V6.filter((r) => r.prefix === 128).map((r) => r.text);
  assert.deepEqual(singles, ["::/128", "::1/128"]);
});

Deno.test({ name: "cidrsExcept() leaves exactly one hole", permissions: "none" }, () => {
  const list = cidrsExcept(0x7f000000, 8, 0x7f000001);
  assert.equal(list.length, 24);
  assert.ok(!inList(list, "127.0.0.1"));
  for (const address of ["127.0.0.0", "127.0.0.2", "127.0.0.3", "127.1.0.0", "127.255.255.255"]) {
    assert.ok(inList(list, address), address);
  }
  assert.ok(!inList(list, "128.0.0.0"));
});
