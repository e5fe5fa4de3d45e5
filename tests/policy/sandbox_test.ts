import assert from "node:assert/strict";
import denoJson from "../../deno.json" with { type: "json" };
import { createPolicy, parseAddress, parseCidr, SPECIAL_RANGES_V6 } from "../../src/policy/policy.ts";
import { cidrsExcept, LISTEN_ADDRESSES, parseExceptions, sandboxDenyList } from "../../src/policy/sandbox.ts";
import { compileArgs } from "../../tools/compile.ts";

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

Deno.test({
  name:
    "sandboxDenyList(except): the given IPv4 blocks are left open, every other denied address stays denied",
  permissions: "none",
}, () => {
  const plain = sandboxDenyList();
  const except = parseExceptions("10.96.0.10, 192.168.4.0/22,8.8.8.8/32");
  const list = sandboxDenyList(except);
  const opened = (address: string) =>
    address === "10.96.0.10" || address.startsWith("192.168.4.") || address.startsWith("192.168.5.") ||
    address.startsWith("192.168.6.") || address.startsWith("192.168.7.");
  let x = 0x9e3779b9;
  const samples = ["10.96.0.9", "10.96.0.10", "10.96.0.11", "192.168.3.255", "192.168.4.0", "192.168.7.255"];
  samples.push("192.168.8.0", "10.0.0.0", "10.255.255.255", "127.0.0.2", "8.8.8.8");
  for (let i = 0; i < 20_000; i++) {
    x ^= x << 13;
    x ^= x >>> 17;
    x ^= x << 5;
    const v = x >>> 0;
    // Half the samples inside 10/8 and 192.168/16, where the holes are.
    const a = i % 4 === 0 ? 10 : i % 4 === 1 ? 192 : v >>> 24;
    const b = i % 4 === 1 ? 168 : (v >>> 16) & 255;
    samples.push([a, b, (v >>> 8) & 255, v & 255].join("."));
  }
  for (const address of samples) {
    assert.equal(inList(list, address), inList(plain, address) && !opened(address), address);
  }
  // A public exception changes nothing; the IPv6 entries are kept.
  assert.deepEqual(sandboxDenyList(parseExceptions("8.8.8.8")), plain);
  assert.deepEqual(list.filter((e) => e.startsWith("[")), ["[::1]"]);
});

Deno.test({ name: "parseExceptions() names a bad entry", permissions: "none" }, () => {
  assert.deepEqual(parseExceptions(""), []);
  assert.deepEqual(parseExceptions("10.0.0.0/8"), [{ network: 0x0a000000, prefix: 8 }]);
  assert.throws(() => parseExceptions("10.1.2.3/8"), /bits set past the \/8/);
  assert.throws(() => parseExceptions("0.0.0.0/0"), /wider than a \/8/);
  for (const bad of ["10.0.0.256", "10.0.0.0/33", "fd00::1", "redis", "10.0.0"]) {
    assert.throws(
      () => parseExceptions(bad),
      new RegExp(`Cannot leave "${bad.replaceAll(".", "\\.")}" open`),
    );
  }
});

Deno.test({
  name: "tools/compile.ts: the compile task's command with only the --deny-net list rebuilt",
  permissions: { read: true },
}, () => {
  const task = denoJson.tasks.compile.split(/\s+/).map((w) => w.replaceAll("'", "")).slice(1);
  assert.deepEqual(compileArgs(""), task, "no exceptions: exactly the task");
  const args = compileArgs("10.96.0.0/12");
  assert.equal(args.length, task.length);
  const deny = args.find((w) => w.startsWith("--deny-net="))!;
  assert.ok(
    !deny.includes(",10.0.0.0/8,") && deny.includes(",10.128.0.0/9,10.0.0.0/10,10.64.0.0/11,10.112.0.0/12,"),
  );
  assert.deepEqual(
    args.filter((w) => !w.startsWith("--deny-net=")),
    task.filter((w) => !w.startsWith("--deny-net=")),
  );
});
