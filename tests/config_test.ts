import assert from "node:assert/strict";
import {
  autoMaxSockets,
  cidrNetworkIfHostBitsSet,
  ConfigError,
  defaultConfig,
  helpText,
  OPTIONS,
  parseCommand,
  parsePortList,
} from "../src/config.ts";

function config(env: Record<string, string>, args: string[] = []) {
  const command = parseCommand(env, args);
  assert.equal(command.kind, "run");
  return command.kind === "run" ? command.config : assert.fail("unreachable");
}

function problem(env: Record<string, string>, args: string[] = []): string {
  try {
    parseCommand(env, args);
  } catch (err: unknown) {
    assert.ok(err instanceof ConfigError);
    return err.message;
  }
  return assert.fail("expected a ConfigError");
}

Deno.test({ name: "parseCommand() applies the documented defaults", permissions: "none" }, () => {
  const c = defaultConfig();
  assert.equal(c.host, "127.0.0.1");
  assert.equal(c.port, 8080);
  assert.deepEqual(c.authTokens, []);
  assert.equal(c.allowPrivateIps, false);
  assert.deepEqual(c.denyPorts, [25]);
  assert.equal(c.maxStreamsPerSession, 1024);
  assert.equal(c.streamQueueBytes, 1024 * 1024);
  assert.equal(c.connectTimeoutMs, 10_000);
  assert.ok(Object.isFrozen(c));
});

Deno.test({ name: "parseCommand() reads the environment and lets flags win", permissions: "none" }, () => {
  const c = config(
    {
      AERO_PROXY_PORT: "9000",
      AERO_PROXY_HOST: "0.0.0.0",
      AERO_PROXY_AUTH_TOKEN: "a, b",
      AERO_PROXY_ALLOW_PRIVATE_IPS: "1",
      AERO_PROXY_ALLOW_WEAK_TOKEN: "1",
    },
    ["--port=9100"],
  );
  assert.equal(c.port, 9100);
  assert.equal(c.host, "0.0.0.0");
  assert.deepEqual(c.authTokens, ["a", "b"]);
  assert.equal(c.allowPrivateIps, true);
  assert.equal(config({ AERO_PROXY_ALLOW_PRIVATE_IPS: "false" }).allowPrivateIps, false);
  assert.deepEqual(config({ AERO_PROXY_DENY_PORTS: "25, 465-467" }).denyPorts, [25, 465, 466, 467]);
  assert.deepEqual(config({ AERO_PROXY_DENY_PORTS: "none" }).denyPorts, []);
});

Deno.test({
  name: "parseCommand() names the variable and the accepted values for bad input",
  permissions: "none",
}, async (t) => {
  const cases: [Record<string, string>, RegExp][] = [
    [{ AERO_PROXY_PORT: "abc" }, /^AERO_PROXY_PORT must be an integer from 0 to 65535, got "abc"$/],
    [{ AERO_PROXY_PORT: "65536" }, /AERO_PROXY_PORT must be an integer/],
    [
      { AERO_PROXY_ALLOW_PRIVATE_IPS: "maybe" },
      /^AERO_PROXY_ALLOW_PRIVATE_IPS must be 1 or 0 \(true or false\), got "maybe"$/,
    ],
    [
      { AERO_PROXY_MAX_STREAMS_PER_SESSION: "-1" },
      /AERO_PROXY_MAX_STREAMS_PER_SESSION must be a positive integer, got "-1"/,
    ],
    [{ AERO_PROXY_CONNECT_TIMEOUT_MS: "0" }, /AERO_PROXY_CONNECT_TIMEOUT_MS must be a positive integer/],
    [{ AERO_PROXY_OPEN_RATE: "1.5" }, /AERO_PROXY_OPEN_RATE must be a non-negative integer/],
    [{ AERO_PROXY_ALLOW_CIDRS: "10.0.0.0/33" }, /AERO_PROXY_ALLOW_CIDRS must be comma-separated IPv4 CIDRs/],
    [{ AERO_PROXY_DENY_PORTS: "0" }, /AERO_PROXY_DENY_PORTS must be comma-separated ports/],
    [{ AERO_PROXY_LOG_LEVEL: "loud" }, /AERO_PROXY_LOG_LEVEL must be one of trace, debug/],
    [{ AERO_PROXY_AUTH_TOKEN: "has space" }, /AERO_PROXY_AUTH_TOKEN must contain only printable ASCII/],
    [
      { AERO_PROXY_WS_LOW_WATERMARK: "10", AERO_PROXY_WS_HIGH_WATERMARK: "5" },
      /LOW_WATERMARK must not exceed/,
    ],
    [
      { AERO_PROXY_CONNECT_TIMEOUT_MS: "3000000000" },
      /CONNECT_TIMEOUT_MS must be a positive integer up to 2147483647/,
    ],
    [{ AERO_PROXY_WS_KEEPALIVE_S: "2147484" }, /WS_KEEPALIVE_S must be a non-negative integer up to 2147483/],
    [{ AERO_PROXY_MAX_FRAME_BYTES: "67108865" }, /MAX_FRAME_BYTES must be a positive integer up to 67108864/],
  ];
  for (const [env, pattern] of cases) {
    await t.step(JSON.stringify(env), () => assert.match(problem(env), pattern));
  }
  await t.step("every problem is listed", () => {
    const message = problem({ AERO_PROXY_PORT: "x", AERO_PROXY_HOST: " " });
    assert.match(message, /AERO_PROXY_HOST/);
    assert.match(message, /AERO_PROXY_PORT/);
  });
  await t.step(
    "a bad flag is named as a flag",
    () => assert.match(problem({}, ["--port=x"]), /^--port must be/),
  );
  await t.step("an unknown flag", () => assert.match(problem({}, ["--nope"]), /nope/));
});

Deno.test({ name: "--help lists every option with its variable and default", permissions: "none" }, () => {
  assert.deepEqual(parseCommand({}, ["--help"]), { kind: "help" });
  assert.deepEqual(parseCommand({}, ["--version"]), { kind: "version" });
  const help = helpText();
  for (const option of OPTIONS) {
    assert.ok(
      help.includes(option.kind === "switch" ? `--${option.flag}\n` : `--${option.flag}=`),
      option.flag,
    );
    assert.ok(help.includes(option.env), option.env);
  }
});

Deno.test(
  { name: "parsePortList() accepts ports and ranges and refuses the rest", permissions: "none" },
  () => {
    assert.deepEqual(parsePortList("80,443,8000-8002"), [80, 443, 8000, 8001, 8002]);
    assert.deepEqual(parsePortList(" "), []);
    assert.equal(parsePortList("9-1"), undefined);
    assert.equal(parsePortList("1-2-3"), undefined);
    assert.equal(parsePortList("http"), undefined);
  },
);

const STRONG = "0123456789abcdef0123";

Deno.test({ name: "tokens: rotation list, token file, and weak tokens", permissions: "none" }, async (t) => {
  await t.step("several tokens at once", () => {
    assert.deepEqual(config({ AERO_PROXY_AUTH_TOKEN: `${STRONG},${STRONG}x` }).authTokens, [
      STRONG,
      `${STRONG}x`,
    ]);
  });
  await t.step("a token file holds one token a line", () => {
    const files: Record<string, string> = { "/run/secrets/relay": `${STRONG}\n\n${STRONG}y\r\n` };
    const command = parseCommand({ AERO_PROXY_AUTH_TOKEN_FILE: "/run/secrets/relay" }, [], {
      readFile: (path) => files[path] ?? assert.fail(`unexpected read of ${path}`),
    });
    assert.ok(command.kind === "run");
    assert.deepEqual(command.config.authTokens, [STRONG, `${STRONG}y`]);
  });
  await t.step("an unreadable token file is a configuration error naming it", () => {
    const message = (() => {
      try {
        parseCommand({ AERO_PROXY_AUTH_TOKEN_FILE: "/nope" }, [], {
          readFile: () => {
            throw new Error("No such file or directory");
          },
        });
      } catch (err: unknown) {
        return err instanceof ConfigError ? err.message : String(err);
      }
      return "";
    })();
    assert.match(message, /AERO_PROXY_AUTH_TOKEN_FILE "\/nope" cannot be read: No such file/);
  });
  await t.step("an empty token file is refused", () => {
    assert.throws(
      () => parseCommand({ AERO_PROXY_AUTH_TOKEN_FILE: "/f" }, [], { readFile: () => "\n \n" }),
      /must hold one or more tokens/,
    );
  });
  await t.step("token and token file together are refused", () => {
    assert.match(
      problem({ AERO_PROXY_AUTH_TOKEN: STRONG, AERO_PROXY_AUTH_TOKEN_FILE: "/f" }),
      /AERO_PROXY_AUTH_TOKEN or AERO_PROXY_AUTH_TOKEN_FILE, not both/,
    );
  });
  await t.step("a weak token on a network listener is refused", () => {
    assert.match(
      problem({ AERO_PROXY_AUTH_TOKEN: "dev-token", AERO_PROXY_HOST: "0.0.0.0" }),
      /shorter than 16 bytes.*AERO_PROXY_ALLOW_WEAK_TOKEN=1/,
    );
  });
  await t.step("a weak token on loopback is accepted with a warning", () => {
    const command = parseCommand({ AERO_PROXY_AUTH_TOKEN: "dev-token" }, []);
    assert.ok(command.kind === "run");
    assert.match(command.warnings.join(), /Weak token/);
  });
  await t.step("ALLOW_WEAK_TOKEN=1 accepts it anywhere, silently", () => {
    const command = parseCommand(
      { AERO_PROXY_AUTH_TOKEN: "dev-token", AERO_PROXY_HOST: "0.0.0.0", AERO_PROXY_ALLOW_WEAK_TOKEN: "1" },
      [],
    );
    assert.ok(command.kind === "run");
    assert.deepEqual(command.warnings, []);
  });
});

Deno.test({ name: "origins must be exact origins or *", permissions: "none" }, () => {
  assert.deepEqual(defaultConfig().allowedOrigins, ["*"]);
  assert.deepEqual(
    config({ AERO_PROXY_ALLOWED_ORIGINS: "https://a.example, http://b.example:8080" }).allowedOrigins,
    [
      "https://a.example",
      "http://b.example:8080",
    ],
  );
  assert.match(
    problem({ AERO_PROXY_ALLOWED_ORIGINS: "https://a.example/path" }),
    /AERO_PROXY_ALLOWED_ORIGINS must be/,
  );
  assert.match(problem({ AERO_PROXY_ALLOWED_ORIGINS: "a.example" }), /AERO_PROXY_ALLOWED_ORIGINS must be/);
});

Deno.test(
  { name: "CIDRs with host bits set are refused with the network address", permissions: "none" },
  async (t) => {
    const cases: [Record<string, string>, string[], RegExp][] = [
      [
        { AERO_PROXY_ALLOW_CIDRS: "10.0.0.1/8" },
        [],
        /^AERO_PROXY_ALLOW_CIDRS must list network addresses, but "10\.0\.0\.1\/8" has host bits set: did you mean 10\.0\.0\.0\/8\? \(or 10\.0\.0\.1\/32 for that one address\)$/,
      ],
      [
        { AERO_PROXY_ALLOW_CIDRS: "127.0.0.1/0" },
        [],
        /AERO_PROXY_ALLOW_CIDRS .*did you mean 0\.0\.0\.0\/0\?/,
      ],
      [
        { AERO_PROXY_DENY_CIDRS: "192.0.2.0/24, 172.16.5.4/12" },
        [],
        /DENY_CIDRS .*did you mean 172\.16\.0\.0\/12\?/,
      ],
      [{}, ["--allow-cidrs=192.168.1.1/16"], /^--allow-cidrs must list .*did you mean 192\.168\.0\.0\/16\?/],
    ];
    for (const [env, args, pattern] of cases) {
      await t.step(JSON.stringify([env, args]), () => {
        const message = problem(env, args);
        assert.match(message, pattern);
        assert.ok(!message.includes("\n"), "one line");
      });
    }
    await t.step("network addresses and single addresses are accepted", () => {
      const c = config({
        AERO_PROXY_ALLOW_CIDRS: "10.0.0.0/8, 127.0.0.1, 127.0.0.1/32, 0.0.0.0/0",
        AERO_PROXY_DENY_CIDRS: "10.1.2.3/32,10.1.2.2/31",
      });
      assert.deepEqual(c.allowCidrs, ["10.0.0.0/8", "127.0.0.1", "127.0.0.1/32", "0.0.0.0/0"]);
      assert.deepEqual(c.denyCidrs, ["10.1.2.3/32", "10.1.2.2/31"]);
    });
    await t.step("cidrNetworkIfHostBitsSet()", () => {
      assert.equal(cidrNetworkIfHostBitsSet("10.0.0.1/8"), "10.0.0.0/8");
      assert.equal(cidrNetworkIfHostBitsSet("255.255.255.255/1"), "128.0.0.0/1");
      assert.equal(cidrNetworkIfHostBitsSet("10.1.2.3/31"), "10.1.2.2/31");
      assert.equal(cidrNetworkIfHostBitsSet("10.0.0.0/8"), undefined);
      assert.equal(cidrNetworkIfHostBitsSet("10.0.0.1"), undefined);
      assert.equal(cidrNetworkIfHostBitsSet("10.0.0.1/33"), undefined);
    });
  },
);

Deno.test({
  name: "lists: none is the explicit empty list; blank cannot drop a safety default",
  permissions: "none",
}, async (t) => {
  await t.step("none, in any case, empties every CIDR and port list", () => {
    for (const text of ["none", "NONE", " None "]) {
      const c = config({
        AERO_PROXY_ALLOW_CIDRS: text,
        AERO_PROXY_DENY_CIDRS: text,
        AERO_PROXY_ALLOW_PORTS: text,
        AERO_PROXY_DENY_PORTS: text,
      });
      assert.deepEqual([c.allowCidrs, c.denyCidrs, c.allowPorts, c.denyPorts], [[], [], [], []], text);
    }
    assert.deepEqual(config({}, ["--deny-ports=none"]).denyPorts, []);
  });
  await t.step("a blank DENY_PORTS (or only commas) is refused, naming the way to say it", () => {
    for (const text of ["", "  ", " , "]) {
      assert.match(
        problem({ AERO_PROXY_DENY_PORTS: text }),
        /^AERO_PROXY_DENY_PORTS is empty, which would drop its default "25": write AERO_PROXY_DENY_PORTS=none to mean no entries$/,
      );
    }
    assert.match(problem({}, ["--deny-ports="]), /^--deny-ports is empty.*write --deny-ports=none/);
  });
  await t.step("blank lists whose default is empty stay empty", () => {
    const c = config({ AERO_PROXY_ALLOW_CIDRS: "", AERO_PROXY_DENY_CIDRS: " ", AERO_PROXY_ALLOW_PORTS: "" });
    assert.deepEqual([c.allowCidrs, c.denyCidrs, c.allowPorts], [[], [], []]);
  });
  await t.step("none mixed with entries is refused", () => {
    assert.match(
      problem({ AERO_PROXY_DENY_PORTS: "none,25" }),
      /DENY_PORTS must be comma-separated ports.*or none/,
    );
    assert.match(
      problem({ AERO_PROXY_DENY_CIDRS: "none, 10.0.0.0/8" }),
      /DENY_CIDRS must be comma-separated IPv4/,
    );
  });
});

Deno.test({ name: "connection, header, message and queue limits", permissions: "none" }, async (t) => {
  await t.step("defaults", () => {
    const c = defaultConfig();
    assert.equal(c.maxSockets, undefined);
    assert.equal(c.maxPendingConnections, 1024);
    assert.equal(c.maxPendingPerIp, 64);
    assert.equal(c.headerTimeoutMs, 10_000);
    assert.equal(c.maxHeaderBytes, 16_384);
    assert.equal(c.messageTimeoutMs, 30_000);
    assert.equal(c.totalQueueBytes, 256 * 1024 * 1024);
    assert.equal(c.uploadStallMs, 1_000);
  });
  await t.step("environment and flags", () => {
    const c = config(
      {
        AERO_PROXY_MAX_SOCKETS: "5000",
        AERO_PROXY_MAX_PENDING: "10",
        AERO_PROXY_MAX_PENDING_PER_IP: "100",
        AERO_PROXY_HEADER_TIMEOUT_MS: "1",
        AERO_PROXY_MAX_HEADER_BYTES: "1048576",
        AERO_PROXY_MESSAGE_TIMEOUT_MS: "2147483647",
        AERO_PROXY_TOTAL_QUEUE_BYTES: "1",
      },
      ["--max-sockets=6000", "--upload-stall-ms=250"],
    );
    assert.equal(c.maxSockets, 6000);
    assert.equal(c.maxPendingConnections, 10);
    assert.equal(c.maxPendingPerIp, 100, "per-IP may exceed the total: it is not cross-checked");
    assert.equal(c.headerTimeoutMs, 1);
    assert.equal(c.maxHeaderBytes, 1_048_576);
    assert.equal(c.messageTimeoutMs, 2_147_483_647);
    assert.equal(c.totalQueueBytes, 1);
    assert.equal(c.uploadStallMs, 250);
    assert.equal(config({ AERO_PROXY_MAX_SOCKETS: "AUTO" }).maxSockets, undefined);
    assert.equal(config({}, ["--max-sockets=auto"]).maxSockets, undefined);
  });
  const cases: [Record<string, string>, RegExp][] = [
    [{ AERO_PROXY_MAX_SOCKETS: "0" }, /^AERO_PROXY_MAX_SOCKETS must be auto or a positive integer, got "0"$/],
    [{ AERO_PROXY_MAX_SOCKETS: "" }, /MAX_SOCKETS must be auto or a positive integer/],
    [{ AERO_PROXY_MAX_SOCKETS: "lots" }, /MAX_SOCKETS must be auto or a positive integer/],
    [{ AERO_PROXY_MAX_PENDING: "0" }, /AERO_PROXY_MAX_PENDING must be a positive integer/],
    [{ AERO_PROXY_MAX_PENDING_PER_IP: "-1" }, /AERO_PROXY_MAX_PENDING_PER_IP must be a positive integer/],
    [{ AERO_PROXY_HEADER_TIMEOUT_MS: "0" }, /HEADER_TIMEOUT_MS must be a positive integer up to 2147483647/],
    [{ AERO_PROXY_HEADER_TIMEOUT_MS: "2147483648" }, /HEADER_TIMEOUT_MS must be a positive integer up to/],
    [{ AERO_PROXY_MAX_HEADER_BYTES: "1048577" }, /MAX_HEADER_BYTES must be a positive integer up to 1048576/],
    [{ AERO_PROXY_MESSAGE_TIMEOUT_MS: "2147483648" }, /MESSAGE_TIMEOUT_MS must be a positive integer up to/],
    [{ AERO_PROXY_TOTAL_QUEUE_BYTES: "0" }, /TOTAL_QUEUE_BYTES must be a positive integer/],
    [{ AERO_PROXY_UPLOAD_STALL_MS: "2147483648" }, /UPLOAD_STALL_MS must be a positive integer up to/],
  ];
  for (const [env, pattern] of cases) {
    await t.step(JSON.stringify(env), () => assert.match(problem(env), pattern));
  }
  await t.step("autoMaxSockets() keeps 10 % and 64 descriptors spare", () => {
    assert.equal(autoMaxSockets(1024), 857);
    assert.equal(autoMaxSockets(65_536), 58_918);
    assert.equal(autoMaxSockets(64), 1);
  });
});

Deno.test({ name: "IPv6 CIDRs in ALLOW_CIDRS and DENY_CIDRS", permissions: "none" }, async (t) => {
  await t.step("IPv6 and IPv4 CIDRs mix", () => {
    const c = config({
      AERO_PROXY_ALLOW_CIDRS: "fd12:3456::/32, ::1/128, 10.0.0.0/8, ::1",
      AERO_PROXY_DENY_CIDRS: "2001:db8::/32,64:ff9b::/96",
    });
    assert.deepEqual(c.allowCidrs, ["fd12:3456::/32", "::1/128", "10.0.0.0/8", "::1"]);
    assert.deepEqual(c.denyCidrs, ["2001:db8::/32", "64:ff9b::/96"]);
    assert.deepEqual(config({}, ["--deny-cidrs=fc00::/7"]).denyCidrs, ["fc00::/7"]);
  });
  await t.step("host bits set in an IPv6 CIDR are an error naming the network", () => {
    assert.match(
      problem({ AERO_PROXY_ALLOW_CIDRS: "fd12:3456::1/32" }),
      /^AERO_PROXY_ALLOW_CIDRS must list network addresses, but "fd12:3456::1\/32" has host bits set: did you mean fd12:3456::\/32\? \(or fd12:3456::1\/128 for that one address\)$/,
    );
    assert.equal(cidrNetworkIfHostBitsSet("fc00::1/7"), "fc00::/7");
    assert.equal(cidrNetworkIfHostBitsSet("fc00::/7"), undefined);
    assert.equal(cidrNetworkIfHostBitsSet("::1"), undefined);
  });
  await t.step("malformed IPv6 CIDRs are refused", () => {
    for (const text of ["fc00::/129", "[fc00::]/7", "fe80::%eth0/10", "fc00:::/7", "::ffff:010.0.0.0/104"]) {
      assert.match(
        problem({ AERO_PROXY_DENY_CIDRS: text }),
        /DENY_CIDRS must be comma-separated IPv4 CIDRs.*IPv6/,
        text,
      );
    }
  });
});

Deno.test({ name: "host lists, IP literals and the DNS timeout", permissions: "none" }, async (t) => {
  await t.step("defaults: any name, IP literals allowed, 5 s to resolve", () => {
    const c = defaultConfig();
    assert.deepEqual([c.allowHosts, c.denyHosts, c.allowIpLiterals, c.dnsTimeoutMs], [[], [], true, 5000]);
  });
  await t.step("lists of exact names and *.domain patterns, lower-cased", () => {
    const c = config({
      AERO_PROXY_ALLOW_HOSTS: "Example.com, *.Example.net",
      AERO_PROXY_DENY_HOSTS: "admin.example.net",
      AERO_PROXY_ALLOW_IP_LITERALS: "0",
      AERO_PROXY_DNS_TIMEOUT_MS: "250",
    });
    assert.deepEqual(c.allowHosts, ["example.com", "*.example.net"]);
    assert.deepEqual(c.denyHosts, ["admin.example.net"]);
    assert.equal(c.allowIpLiterals, false);
    assert.equal(c.dnsTimeoutMs, 250);
    const f = config({}, ["--deny-hosts=*.corp", "--allow-ip-literals=false", "--dns-timeout-ms=1"]);
    assert.deepEqual([f.denyHosts, f.allowIpLiterals, f.dnsTimeoutMs], [["*.corp"], false, 1]);
    assert.deepEqual(config({ AERO_PROXY_DENY_HOSTS: "none" }).denyHosts, []);
  });
  await t.step("bad entries are refused, naming the entry", () => {
    for (const text of ["*", "a.*.com", "10.0.0.1", "::1", "exa_mple.com", "*example.com"]) {
      assert.match(
        problem({ AERO_PROXY_DENY_HOSTS: text }),
        new RegExp(
          `^AERO_PROXY_DENY_HOSTS must list host names or \\*\\.domain patterns .*got ${
            JSON.stringify(text).replaceAll("*", "\\*").replaceAll(".", "\\.")
          }$`,
        ),
        text,
      );
    }
    assert.match(problem({}, ["--allow-hosts=1.2.3.4"]), /^--allow-hosts must list host names/);
    assert.match(problem({ AERO_PROXY_ALLOW_IP_LITERALS: "yes" }), /ALLOW_IP_LITERALS must be 1 or 0/);
    assert.match(
      problem({ AERO_PROXY_DNS_TIMEOUT_MS: "0" }),
      /DNS_TIMEOUT_MS must be a positive integer up to 2147483647/,
    );
  });
});

Deno.test(
  { name: "AERO_PROXY_WORKERS: 1 by default, a count, or auto for the CPUs", permissions: "none" },
  async (t) => {
    await t.step("the default is one process", () => assert.equal(defaultConfig().workers, 1));
    await t.step("a count from the environment or the flag", () => {
      assert.equal(config({ AERO_PROXY_WORKERS: "4" }).workers, 4);
      assert.equal(config({ AERO_PROXY_WORKERS: "4" }, ["--workers=2"]).workers, 2);
      assert.equal(config({ AERO_PROXY_WORKERS: "64" }).workers, 64);
    });
    await t.step("auto is the injected CPU count, capped at 64, and 1 without one", () => {
      const parsed = (cpuCount: number) => {
        const command = parseCommand({ AERO_PROXY_WORKERS: "AUTO" }, [], { cpuCount });
        return command.kind === "run" ? command.config.workers : assert.fail("unreachable");
      };
      assert.equal(parsed(8), 8);
      assert.equal(parsed(256), 64);
      assert.equal(parsed(0), 1);
      assert.equal(config({ AERO_PROXY_WORKERS: "auto" }).workers, 1);
    });
    await t.step("anything else is refused, naming the variable or the flag", () => {
      for (const bad of ["0", "-1", "65", "1.5", "two", ""]) {
        assert.match(
          problem({ AERO_PROXY_WORKERS: bad }),
          /AERO_PROXY_WORKERS must be auto or a positive integer up to 64, got/,
          bad,
        );
      }
      assert.match(problem({}, ["--workers=0"]), /--workers must be auto or a positive integer up to 64/);
    });
  },
);

Deno.test("Redis settings: a redis:// or rediss:// URL, a lease long enough to be renewed", () => {
  const env = (extra: Record<string, string>) => ({
    AERO_PROXY_AUTH_TOKEN: "0123456789abcdef0123456789abcdef",
    ...extra,
  });
  const ok = parseCommand(env({ AERO_PROXY_REDIS_URL: "rediss://user:pw@redis.example:6380/0" }), []);
  assert.equal(ok.kind === "run" && ok.config.redisUrl, "rediss://user:pw@redis.example:6380/0");
  assert.equal(ok.kind === "run" && ok.config.redisLeaseMs, 15000);
  for (const bad of ["http://redis:6379", "redis://", "not a url"]) {
    assert.throws(
      () => parseCommand(env({ AERO_PROXY_REDIS_URL: bad }), []),
      /AERO_PROXY_REDIS_URL must be a redis/,
    );
  }
  assert.throws(
    () => parseCommand(env({ AERO_PROXY_REDIS_LEASE_MS: "600", AERO_PROXY_REDIS_TIMEOUT_MS: "250" }), []),
    /AERO_PROXY_REDIS_LEASE_MS must be at least 1000 and at least 3 x AERO_PROXY_REDIS_TIMEOUT_MS/,
  );
  assert.throws(
    () => parseCommand(env({ AERO_PROXY_REDIS_LEASE_MS: "1000", AERO_PROXY_REDIS_TIMEOUT_MS: "500" }), []),
    /at least 3 x/,
  );
});
