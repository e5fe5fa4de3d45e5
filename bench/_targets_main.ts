/**
 * The benchmark's target servers as a process of their own: prints `{"source":…,"sink":…,"echo":…,
 * "stalled":…}` on one line, then serves until its stdin closes.
 * @module
 */
import { startAckSink, startEcho, startSource, startStalled } from "./_targets.ts";

{
  await using source = startSource();
  await using sink = startAckSink();
  await using echo = startEcho();
  await using stalled = startStalled();
  const ports = { source: source.port, sink: sink.port, echo: echo.port, stalled: stalled.port };
  await Deno.stdout.write(new TextEncoder().encode(`${JSON.stringify(ports)}\n`));
  const buf = new Uint8Array(64);
  for (let reads = 0; reads < 1_000_000; reads++) {
    if (await Deno.stdin.read(buf) === null) break;
  }
}
