import assert from "node:assert/strict";
import { ConfigError, defaultConfig, helpText, OPTIONS, parseCommand, parsePortList } from "../src/config.ts";

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
  assert.deepEqual(config({ AERO_PROXY_DENY_PORTS: "" }).denyPorts, []);
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
