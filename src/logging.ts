/**
 * Log output: JSON Lines on stdout (default) or a readable one-line text format, through LogTape.
 * Only `main.ts` calls this; modules log through `getLogger(["aero-net-proxy", ...])`.
 * @module
 */
import { configure, getTextFormatter, jsonLinesFormatter, type LogRecord } from "@logtape/logtape";
import type { LogLevel } from "./config.ts";

const encoder = new TextEncoder();

/** Sends every record to stdout, whatever its level (a console sink would send warnings to stderr). */
function stdoutSink(format: (record: LogRecord) => string): (record: LogRecord) => void {
  return (record) => {
    const line = format(record);
    Deno.stdout.writeSync(encoder.encode(line.endsWith("\n") ? line : `${line}\n`));
  };
}

const prettyText = getTextFormatter({ timestamp: "date-time", value: (v) => JSON.stringify(v) });

/** Pretty format: the text line, then the properties as `key=value` pairs. */
function pretty(record: LogRecord): string {
  const props = Object.entries(record.properties)
    .filter(([key]) => key !== "event")
    .map(([key, value]) => `${key}=${typeof value === "string" ? value : JSON.stringify(value)}`)
    .join(" ");
  return `${prettyText(record).trimEnd()}${props === "" ? "" : ` ${props}`}`;
}

/** Configures LogTape for the relay's categories. */
export async function configureLogging(level: LogLevel, format: "json" | "pretty"): Promise<void> {
  await configure({
    sinks: { stdout: stdoutSink(format === "json" ? jsonLinesFormatter : pretty) },
    loggers: [
      { category: ["aero-net-proxy"], lowestLevel: level, sinks: ["stdout"] },
      { category: ["logtape", "meta"], lowestLevel: "warning", sinks: ["stdout"] },
    ],
  });
}
