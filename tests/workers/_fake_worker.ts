/**
 * A stand-in for a relay worker, for supervisor tests that need a worker to crash, refuse its configuration or
 * report set figures: it speaks the IPC (ready; metrics on collect) and nothing else. Its run number in its
 * slot is kept in a file under FAKE_DIR. FAKE_MODE:
 * - `normal`: ready, then answers collects with aero_proxy_sessions_total = 100 on its first run, 1 after;
 * - `crash_then_usage`: worker 0 exits 1 after 300 ms on its first run and 2 at once on its second, then runs
 *   normally.
 */
import { encodeWorkerMessage, readLines } from "../../src/workers/ipc.ts";

const index = Deno.env.get("AERO_PROXY_WORKER_INDEX") ?? "0";
const dir = Deno.env.get("FAKE_DIR")!;
const mode = Deno.env.get("FAKE_MODE") ?? "normal";
const runFile = `${dir}/runs-${index}`;
let run = 0;
try {
  run = Number(Deno.readTextFileSync(runFile));
} catch {
  // First run.
}
run++;
Deno.writeTextFileSync(runFile, String(run));

if (mode === "crash_then_usage" && index === "0" && run === 2) Deno.exit(2);
const write = (bytes: Uint8Array) => {
  for (let offset = 0; offset < bytes.byteLength;) offset += Deno.stdout.writeSync(bytes.subarray(offset));
};
write(encodeWorkerMessage({ type: "ready" }));
if (mode === "crash_then_usage" && index === "0" && run === 1) setTimeout(() => Deno.exit(1), 300);
Deno.addSignalListener("SIGTERM", () => Deno.exit(0));

const sessionsTotal = run === 1 ? 100 : 1;
await readLines(Deno.stdin.readable, (line) => {
  const message = JSON.parse(new TextDecoder().decode(line));
  if (message.type !== "collect") return;
  const metrics = [{
    name: "aero_proxy_sessions_total",
    help: "WebSocket sessions accepted",
    type: "counter",
    aggregator: "sum",
    values: [{ value: sessionsTotal, labels: {} }],
  }];
  write(encodeWorkerMessage({ type: "metrics", id: message.id, metrics }));
});
