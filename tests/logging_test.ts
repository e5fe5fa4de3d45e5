import assert from "node:assert/strict";
import type { LogRecord } from "@logtape/logtape";
import { escapeControl, jsonFormatter, prettyFormatter } from "../src/logging.ts";

/** A record as LogTape builds it for `logger.warn(message, properties)`. */
function record(message: string, properties: Record<string, unknown>): LogRecord {
  return {
    category: ["aero-net-proxy", "session"],
    level: "warning",
    message: [message],
    rawMessage: message,
    timestamp: Date.UTC(2024, 0, 2, 3, 4, 5, 6),
    properties,
  };
}

/** Every character a log line must never carry raw: C0, DEL, C1, U+2028 and U+2029. */
const CONTROLS = [
  ...Array.from({ length: 0x20 }, (_, i) => String.fromCharCode(i)),
  ...Array.from({ length: 0x21 }, (_, i) => String.fromCharCode(0x7f + i)),
  "\u2028",
  "\u2029",
].join("");
const RAW_CONTROL = /[\p{Cc}\u2028\u2029]/u;

Deno.test(
  { name: "escapeControl() makes every control character visible", permissions: "none" },
  async (t) => {
    const cases: [string, string][] = [
      ["plain text, unchanged: é ü 漢 \u{1F600}", "plain text, unchanged: é ü 漢 \u{1F600}"],
      ["a\nb", "a\\nb"],
      ["a\r\nb", "a\\r\\nb"],
      ["a\tb", "a\\tb"],
      ["\x00\x01\x1b[2J\x1f", "\\x00\\x01\\x1b[2J\\x1f"],
      ["\x7f\x80\x85\x9f\xa0", "\\x7f\\x80\\x85\\x9f\xa0"],
      ["\u2028\u2029", "\\u2028\\u2029"],
      ["", ""],
    ];
    for (const [input, expected] of cases) {
      await t.step(JSON.stringify(input), () => assert.equal(escapeControl(input), expected));
    }
    await t.step("nothing raw survives", () => assert.doesNotMatch(escapeControl(CONTROLS), RAW_CONTROL));
  },
);

Deno.test({ name: "pretty format: a client's text cannot forge a line", permissions: "none" }, async (t) => {
  await t.step("plain properties stay readable", () => {
    assert.equal(
      prettyFormatter(record("session_close", { event: "session_close", sessionId: "s1", code: 1000 })),
      "2024-01-02 03:04:05.006 [WRN] aero-net-proxy·session: session_close sessionId=s1 code=1000",
    );
  });
  await t.step("a close reason with a line break", () => {
    const forged = "bye\n2024-01-02 03:04:05.006 [INF] aero-net-proxy: stopped";
    const line = prettyFormatter(record("session_close", { reason: forged }));
    assert.ok(!line.includes("\n"));
    assert.ok(line.endsWith(' reason="bye\\n2024-01-02 03:04:05.006 [INF] aero-net-proxy: stopped"'), line);
  });
  await t.step("a value with spaces or = is quoted, so it cannot add a property", () => {
    const line = prettyFormatter(record("x", { reason: "a sessionId=forged", empty: "" }));
    assert.ok(line.endsWith(' reason="a sessionId=forged" empty=""'), line);
  });
  await t.step("every control character, in the message, keys and values", () => {
    const line = prettyFormatter(
      record(`msg${CONTROLS}`, { [`k${CONTROLS}`]: CONTROLS, nested: { text: CONTROLS }, list: [CONTROLS] }),
    );
    assert.doesNotMatch(line, RAW_CONTROL);
  });
  await t.step("odd values do not throw", () => {
    const cyclic: Record<string, unknown> = {};
    cyclic.self = cyclic;
    const line = prettyFormatter(
      record("x", { big: 12n, none: undefined, err: new TypeError("bad\nthing"), cyclic }),
    );
    assert.match(line, /big=12 none=undefined err="TypeError: bad\\nthing" cyclic="\[object Object\]"$/);
  });
});

Deno.test({ name: "JSON lines: one valid line, every control escaped", permissions: "none" }, async (t) => {
  await t.step("the same record, with its text intact after parsing", () => {
    const reason = `close${CONTROLS}end`;
    const line = jsonFormatter(record(`msg\u2028${CONTROLS}`, { event: "session_close", reason }));
    assert.doesNotMatch(line, RAW_CONTROL);
    assert.match(line, /\\u2028/);
    assert.match(line, /\\u007f/);
    assert.match(line, /\\u0085/);
    const parsed = JSON.parse(line);
    assert.equal(parsed.message, `msg\u2028${CONTROLS}`);
    assert.equal(parsed.level, "WARN");
    assert.equal(parsed.logger, "aero-net-proxy.session");
    assert.deepEqual(parsed.properties, { event: "session_close", reason });
  });
  await t.step("ordinary text is left alone", () => {
    const line = jsonFormatter(record("listening", { port: 8080, host: "127.0.0.1", note: "é 漢" }));
    assert.equal(
      line,
      '{"@timestamp":"2024-01-02T03:04:05.006Z","level":"WARN","message":"listening",' +
        '"logger":"aero-net-proxy.session","properties":{"port":8080,"host":"127.0.0.1","note":"é 漢"}}',
    );
  });
});
