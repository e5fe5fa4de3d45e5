/**
 * Log output: JSON Lines on stdout (default) or a readable one-line text format, through LogTape.
 * Only `main.ts` calls {@linkcode configureLogging}; modules log through `getLogger(["aero-net-proxy", ...])`.
 *
 * Log lines carry text chosen by clients (close reasons, header values, host names). Both formats escape
 * every control character and Unicode line separator, so that such text cannot start a forged line or
 * rewrite the terminal.
 * @module
 */
import { configure, getTextFormatter, jsonLinesFormatter, type LogRecord } from "@logtape/logtape";
import type { LogLevel } from "./config.ts";

const encoder = new TextEncoder();

/** C0 controls, DEL, C1 controls (`\p{Cc}`, NEL among them) and the Unicode line and paragraph separators. */
const CONTROL = /[\p{Cc}\u2028\u2029]/gu;
/** What JSON.stringify leaves raw but a line reader or terminal may act upon. */
const JSON_UNSAFE = /[\x7f-\x9f\u2028\u2029]/g;
/** A string property value shown without quotes in the pretty format: no blanks, quotes, `=` or controls. */
const BARE_VALUE = /^[^\s"=\\\p{Cc}]+$/u;

function hex(code: number, digits: number): string {
  return code.toString(16).padStart(digits, "0");
}

/**
 * Replaces control characters by visible escapes: `\n`, `\r`, `\t`, `\xNN` for the other C0 controls, DEL and
 * the C1 controls, and `\u2028` / `\u2029` for the line and paragraph separators. Other text is unchanged.
 */
export function escapeControl(text: string): string {
  return text.replace(CONTROL, (char) => {
    if (char === "\n") return "\\n";
    if (char === "\r") return "\\r";
    if (char === "\t") return "\\t";
    const code = char.charCodeAt(0);
    return code <= 0xff ? `\\x${hex(code, 2)}` : `\\u${hex(code, 4)}`;
  });
}

/** JSON text of a value, never throwing (bigints, cycles) and never `undefined`. */
function toJson(value: unknown): string {
  if (typeof value === "bigint") return value.toString();
  if (value instanceof Error) return JSON.stringify(`${value.name}: ${value.message}`);
  try {
    return JSON.stringify(value, (_key, v) => typeof v === "bigint" ? v.toString() : v) ?? String(value);
  } catch {
    return JSON.stringify(String(value));
  }
}

/** One property value for the pretty format: bare if it is a plain word, JSON otherwise; always escaped. */
function prettyValue(value: unknown): string {
  if (typeof value === "string" && BARE_VALUE.test(value)) return value;
  return escapeControl(toJson(value));
}

const prettyText = getTextFormatter({
  timestamp: "date-time",
  // Escaped below, once, over the whole message: LogTape's own sanitizer keeps line breaks.
  sanitize: false,
  value: (v) => toJson(v),
  format: ({ timestamp, level, category, message }) =>
    `${timestamp === null ? "" : `${timestamp} `}[${level}] ${escapeControl(category)}: ${
      escapeControl(message)
    }`,
});

/**
 * Pretty format: the text line, then the properties as `key=value` pairs. String values that are not a
 * plain word are written as JSON strings; control characters are escaped everywhere.
 */
export function prettyFormatter(record: LogRecord): string {
  const props = Object.entries(record.properties)
    .filter(([key]) => key !== "event")
    .map(([key, value]) => `${escapeControl(key)}=${prettyValue(value)}`)
    .join(" ");
  return `${prettyText(record).trimEnd()}${props === "" ? "" : ` ${props}`}`;
}

/**
 * JSON Lines format: LogTape's, with DEL, the C1 controls and U+2028 / U+2029 also written as `\uXXXX`
 * (JSON.stringify escapes only the C0 controls). These characters occur only inside JSON strings, where
 * the escape means the same character.
 */
export function jsonFormatter(record: LogRecord): string {
  return jsonLinesFormatter(record).trimEnd().replace(
    JSON_UNSAFE,
    (char) => `\\u${hex(char.charCodeAt(0), 4)}`,
  );
}

/** Sends every record to stdout, whatever its level (a console sink would send warnings to stderr). */
function stdoutSink(format: (record: LogRecord) => string): (record: LogRecord) => void {
  return (record) => {
    // Written whole: under AERO_PROXY_WORKERS a cut-off line would swallow the next IPC message on the pipe.
    const bytes = encoder.encode(`${format(record)}\n`);
    for (let offset = 0; offset < bytes.byteLength;) offset += Deno.stdout.writeSync(bytes.subarray(offset));
  };
}

/** Configures LogTape for the relay's categories. */
export async function configureLogging(level: LogLevel, format: "json" | "pretty"): Promise<void> {
  await configure({
    sinks: { stdout: stdoutSink(format === "json" ? jsonFormatter : prettyFormatter) },
    loggers: [
      { category: ["aero-net-proxy"], lowestLevel: level, sinks: ["stdout"] },
      { category: ["logtape", "meta"], lowestLevel: "warning", sinks: ["stdout"] },
    ],
  });
}
