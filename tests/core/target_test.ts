import assert from "node:assert/strict";
import {
  limitLookups,
  type Resolver,
  resolveTarget,
  type ResolveTargetDeps,
  systemResolver,
} from "../../src/core/target.ts";
import { createHostPolicy, type HostPolicyOptions } from "../../src/policy/hosts.ts";
import { createPolicy, type PolicyOptions } from "../../src/policy/policy.ts";

const POLICY: PolicyOptions = {
  allowPrivateIps: false,
  allowCidrs: [],
  denyCidrs: [],
  allowPorts: [],
  denyPorts: [25],
};
const HOSTS: HostPolicyOptions = { allowHosts: [], denyHosts: [], allowIpLiterals: true };

/** A resolver backed by a table; it counts its calls so that tests can see a name is resolved once. */
function tableResolver(table: Record<string, string[]>) {
  const calls: string[] = [];
  const resolve: Resolver = (name) => {
    calls.push(name);
    const answer = table[name];
    return answer === undefined
      ? Promise.reject(new Error(`no such host "${name}"`))
      : Promise.resolve(answer);
  };
  return { resolve, calls };
}

function deps(
  resolve: Resolver,
  options: { policy?: Partial<PolicyOptions>; hosts?: Partial<HostPolicyOptions>; timeoutMs?: number } = {},
): ResolveTargetDeps {
  return {
    addressPolicy: createPolicy({ ...POLICY, ...options.policy }),
    hostPolicy: createHostPolicy({ ...HOSTS, ...options.hosts }),
    resolve,
    timeoutMs: options.timeoutMs ?? 1000,
  };
}

const neverCalled: Resolver = () => {
  throw new Error("the resolver must not be called");
};

Deno.test(
  { name: "resolveTarget() resolves a name once and returns checked addresses", permissions: "none" },
  async () => {
    const { resolve, calls } = tableResolver({
      "example.com": [
        "2606:2800:220:1:248:1893:25c8:1946",
        "93.184.216.34",
        "93.184.216.34",
        "::ffff:93.184.216.35",
      ],
    });
    const result = await resolveTarget({ host: "Example.COM.", port: 443 }, deps(resolve));
    assert.deepEqual(result, {
      ok: true,
      host: "example.com",
      addresses: ["93.184.216.34", "93.184.216.35", "2606:2800:220:1:248:1893:25c8:1946"],
    });
    assert.deepEqual(calls, ["example.com"]);
  },
);

Deno.test({ name: "resolveTarget() takes IP literals without resolving", permissions: "none" }, async (t) => {
  const cases: [string, string][] = [
    ["93.184.216.34", "93.184.216.34"],
    ["2606:4700:4700::1111", "2606:4700:4700::1111"],
    ["[2606:4700:4700::1111]", "2606:4700:4700::1111"],
    ["[2606:4700:4700:0:0:0:0:1111]", "2606:4700:4700::1111"],
    ["::ffff:1.1.1.1", "1.1.1.1"],
    ["64:ff9b::1.1.1.1", "64:ff9b::101:101"],
  ];
  for (const [host, address] of cases) {
    await t.step(host, async () => {
      const result = await resolveTarget({ host, port: 443 }, deps(neverCalled));
      assert.ok(result.ok, JSON.stringify(result));
      assert.deepEqual(result.addresses, [address]);
    });
  }
});

Deno.test(
  { name: "resolveTarget() refuses invalid targets before anything else", permissions: "none" },
  async (t) => {
    const hosts = [
      "",
      "[93.184.216.34]",
      "[example.com]",
      "[::1",
      "::1]",
      "fe80::1%eth0",
      "[fe80::1%25eth0]",
      "127.1",
      "0x7f000001",
      "2130706433",
      "0177.0.0.1",
      "exa_mple.com",
      "example.com:443",
      "a".repeat(64) + ".com",
      "..",
    ];
    for (const host of hosts) {
      await t.step(JSON.stringify(host).slice(0, 30), async () => {
        const result = await resolveTarget({ host, port: 443 }, deps(neverCalled));
        assert.ok(!result.ok && result.kind === "invalid", JSON.stringify(result));
        assert.ok(!result.ok && result.reason.length > 0);
      });
    }
    for (const port of [0, 65536, -1, 1.5, Number.NaN]) {
      await t.step(`port ${port}`, async () => {
        const result = await resolveTarget({ host: "example.com", port }, deps(neverCalled));
        assert.ok(!result.ok && result.kind === "invalid" && /Invalid port/.test(result.reason));
      });
    }
  },
);

Deno.test(
  { name: "resolveTarget() applies port and host policy before resolving", permissions: "none" },
  async (t) => {
    await t.step("a denied port", async () => {
      const result = await resolveTarget({ host: "example.com", port: 25 }, deps(neverCalled));
      assert.ok(!result.ok && result.kind === "denied" && result.rule === "deny_port");
    });
    await t.step("a port outside ALLOW_PORTS", async () => {
      const result = await resolveTarget(
        { host: "example.com", port: 22 },
        deps(neverCalled, { policy: { allowPorts: [443] } }),
      );
      assert.ok(!result.ok && result.kind === "denied" && result.rule === "port_not_allowed");
    });
    await t.step("DENY_HOSTS", async () => {
      const result = await resolveTarget(
        { host: "Metadata.Google.Internal", port: 80 },
        deps(neverCalled, { hosts: { denyHosts: ["*.google.internal"] } }),
      );
      assert.ok(!result.ok && result.kind === "denied" && result.rule === "deny_host");
    });
    await t.step("ALLOW_HOSTS", async () => {
      const result = await resolveTarget(
        { host: "evil.net", port: 443 },
        deps(neverCalled, { hosts: { allowHosts: ["*.example.com"] } }),
      );
      assert.ok(!result.ok && result.kind === "denied" && result.rule === "host_not_allowed");
    });
    await t.step("ALLOW_IP_LITERALS=0", async () => {
      for (const host of ["1.1.1.1", "[2606:4700:4700::1111]"]) {
        const result = await resolveTarget(
          { host, port: 443 },
          deps(neverCalled, { hosts: { allowIpLiterals: false } }),
        );
        assert.ok(!result.ok && result.kind === "denied" && result.rule === "ip_literal", host);
      }
    });
    await t.step("a literal in a special range", async () => {
      for (const host of ["169.254.169.254", "[::1]", "::ffff:127.0.0.1", "fd00::1", "[2001:db8::1]"]) {
        const result = await resolveTarget({ host, port: 80 }, deps(neverCalled));
        assert.ok(!result.ok && result.kind === "denied" && result.rule === "special_range", host);
      }
    });
  },
);

Deno.test({
  name: "resolveTarget() denies a name if any address it resolves to is denied",
  permissions: "none",
}, async (t) => {
  const { resolve } = tableResolver({
    "mixed.example": ["93.184.216.34", "10.0.0.5"],
    "v6private.example": ["2606:4700:4700::1111", "fd00::5"],
    "mapped.example": ["::ffff:169.254.169.254"],
    "nat64.example": ["64:ff9b::10.0.0.1"],
    "denied.example": ["8.8.8.8"],
  });
  const cases: [string, string, RegExp][] = [
    ["mixed.example", "special_range", /resolves to 10\.0\.0\.5\. .*private range 10\.0\.0\.0\/8/],
    ["v6private.example", "special_range", /resolves to fd00::5\. .*unique local/],
    ["mapped.example", "special_range", /resolves to 169\.254\.169\.254\. .*link-local/],
    ["nat64.example", "special_range", /resolves to 64:ff9b::a00:1\. .*as NAT64/],
    ["denied.example", "deny_cidr", /8\.8\.0\.0\/16 is in AERO_PROXY_DENY_CIDRS/],
  ];
  for (const [host, rule, pattern] of cases) {
    await t.step(host, async () => {
      const result = await resolveTarget(
        { host, port: 443 },
        deps(resolve, { policy: { denyCidrs: ["8.8.0.0/16"] } }),
      );
      assert.ok(!result.ok && result.kind === "denied" && result.rule === rule, JSON.stringify(result));
      assert.ok(!result.ok && result.reason.startsWith(`Destination ${host}:443 denied: `), result.reason);
      assert.match(!result.ok ? result.reason : "", pattern);
    });
  }
  await t.step("ALLOW_CIDRS opens a resolved private address", async () => {
    const result = await resolveTarget(
      { host: "mixed.example", port: 443 },
      deps(resolve, { policy: { allowCidrs: ["10.0.0.0/24"] } }),
    );
    assert.deepEqual(result, { ok: true, host: "mixed.example", addresses: ["93.184.216.34", "10.0.0.5"] });
  });
});

Deno.test({ name: "resolveTarget() reports names that do not resolve", permissions: "none" }, async (t) => {
  const cases: [string, Resolver, RegExp][] = [
    [
      "a rejection",
      () => Promise.reject(new Error("no such host")),
      /Cannot resolve nx\.example: no such host/,
    ],
    ["an empty answer", () => Promise.resolve([]), /no addresses/],
    ["a resolver that throws", () => {
      throw new Error("boom");
    }, /boom/],
    [
      "garbage in the answer",
      () => Promise.resolve(["93.184.216.34", "not-an-ip"]),
      /"not-an-ip", which is not an IP/,
    ],
    ["a zone id in the answer", () => Promise.resolve(["fe80::1%eth0"]), /not an IP address/],
  ];
  for (const [name, resolve, pattern] of cases) {
    await t.step(name, async () => {
      const result = await resolveTarget({ host: "nx.example", port: 443 }, deps(resolve));
      assert.ok(!result.ok && result.kind === "unresolved", JSON.stringify(result));
      assert.match(!result.ok ? result.reason : "", pattern);
    });
  }
});

Deno.test(
  { name: "resolveTarget() gives up after the timeout and aborts the resolver", permissions: "none" },
  async () => {
    let seen: AbortSignal | undefined;
    const hanging: Resolver = (_name, signal) => {
      seen = signal;
      return new Promise((_resolve, reject) => signal.addEventListener("abort", () => reject(signal.reason)));
    };
    const started = performance.now();
    const result = await resolveTarget({ host: "slow.example", port: 443 }, deps(hanging, { timeoutMs: 30 }));
    assert.ok(!result.ok && result.kind === "timeout" && /no answer within 30 ms/.test(result.reason));
    assert.ok(performance.now() - started < 1000);
    assert.equal(seen?.aborted, true);
  },
);

Deno.test(
  { name: "resolveTarget() stops waiting when the caller's signal aborts", permissions: "none" },
  async () => {
    const controller = new AbortController();
    const hanging: Resolver = (_name, signal) =>
      new Promise((_resolve, reject) => signal.addEventListener("abort", () => reject(signal.reason)));
    const pending = resolveTarget(
      { host: "slow.example", port: 443 },
      { ...deps(hanging, { timeoutMs: 60_000 }), signal: controller.signal },
    );
    controller.abort();
    const result = await pending;
    assert.ok(!result.ok && result.kind === "unresolved" && /cancelled/.test(result.reason));
  },
);

Deno.test({
  name: "rebinding: a name that turns private is denied; the earlier answer is all the dialer gets",
  permissions: "none",
}, async () => {
  const answers = [["93.184.216.34"], ["127.0.0.1"]];
  const calls: string[] = [];
  const rebinding: Resolver = (name) => {
    calls.push(name);
    return Promise.resolve(answers[Math.min(calls.length - 1, answers.length - 1)]!);
  };
  const d = deps(rebinding);
  const first = await resolveTarget({ host: "rebind.example", port: 80 }, d);
  assert.deepEqual(first, { ok: true, host: "rebind.example", addresses: ["93.184.216.34"] });
  assert.equal(calls.length, 1, "one resolution per target");
  // The dialer connects to first.addresses[0]; the name is never looked up again for this stream. A new
  // target (a second OPEN) resolves afresh and is judged afresh:
  const second = await resolveTarget({ host: "rebind.example", port: 80 }, d);
  assert.ok(!second.ok && second.kind === "denied" && second.rule === "special_range");
  assert.match(!second.ok ? second.reason : "", /resolves to 127\.0\.0\.1\. .*loopback/);
  assert.equal(calls.length, 2);
});

Deno.test({ name: "systemResolver answers localhost without a lookup", permissions: "none" }, async () => {
  const signal = new AbortController().signal;
  assert.deepEqual(await systemResolver("localhost", signal), ["127.0.0.1", "::1"]);
  assert.deepEqual(await systemResolver("app.LOCALHOST", signal), ["127.0.0.1", "::1"]);
  const result = await resolveTarget(
    { host: "localhost", port: 8080 },
    {
      ...deps(systemResolver),
      addressPolicy: createPolicy({ ...POLICY, allowCidrs: ["127.0.0.0/8", "::1/128"] }),
    },
  );
  assert.deepEqual(result, { ok: true, host: "localhost", addresses: ["127.0.0.1", "::1"] });
  const denied = await resolveTarget({ host: "localhost", port: 8080 }, deps(systemResolver));
  assert.ok(!denied.ok && denied.kind === "denied" && denied.rule === "special_range");
});

Deno.test({
  name: "systemResolver rejects a name Deno may not resolve, without a query",
  permissions: "none",
}, async () => {
  // With no net permission for the name, node:dns fails before any packet is sent.
  const aborted = AbortSignal.abort();
  await assert.rejects(systemResolver("example.com", aborted));
  await assert.rejects(
    systemResolver("aero-test.invalid", new AbortController().signal),
    /no net permission/,
  );
});

Deno.test("limitLookups: at most N lookups run at once; a lookup counts until the resolver answers", async () => {
  const pending: (() => void)[] = [];
  const slow: Resolver = () => new Promise((resolve) => pending.push(() => resolve(["192.0.2.1"])));
  const limited = limitLookups(slow, 2);
  const signal = new AbortController().signal;
  const first = limited("a.test", signal);
  const second = limited("b.test", signal);
  assert.equal(limited.inFlight, 2);
  await assert.rejects(limited("c.test", signal), /too many name lookups/);
  pending.shift()!();
  await first;
  assert.equal(limited.inFlight, 1);
  assert.deepEqual(
    await Promise.race([limited("d.test", signal).then(() => "answered"), Promise.resolve("waiting")]),
    "waiting",
  );
  for (const answer of pending.splice(0)) answer();
  await second;
});
