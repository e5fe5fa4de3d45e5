/**
 * The supervisor with stand-in workers (tests/workers/_fake_worker.ts) as real processes: what it does when a
 * worker crashes, refuses its configuration after it once ran, hangs, or is replaced.
 */
import assert from "node:assert/strict";
import { defaultConfig } from "../../src/config.ts";
import { Supervisor } from "../../src/workers/supervisor.ts";
import { procStats, waitUntil } from "../_util.ts";

const FAKE = new URL("./_fake_worker.ts", import.meta.url).pathname;

/** A supervisor of two stand-in workers in `mode`, their run counts kept in a fresh directory. */
function supervise(mode: string): { supervisor: Supervisor; dir: string } {
  const dir = Deno.makeTempDirSync({ prefix: "aero-fake-workers-" });
  const supervisor = new Supervisor(defaultConfig({ workers: 2, port: 1, shutdownGraceMs: 500 }), {
    command: {
      cmd: Deno.execPath(),
      args: ["run", `--allow-read=${dir}`, `--allow-write=${dir}`, "--allow-env", FAKE],
    },
    env: { FAKE_DIR: dir, FAKE_MODE: mode },
    passThrough: () => {},
  });
  return { supervisor, dir };
}

function sample(exposition: string, series: string): number | undefined {
  const line = exposition.split("\n").find((l) => l.startsWith(`${series} `));
  return line === undefined ? undefined : Number(line.slice(series.length + 1));
}

Deno.test("supervisor: exit code 2 from a worker that once ran is a crash to restart, not a reason to stop", async () => {
  const { supervisor, dir } = supervise("crash_then_usage");
  let fatal: number | undefined;
  supervisor.fatal.then((code) => fatal = code);
  supervisor.start();
  try {
    // Run 1 crashes (exit 1), run 2 exits 2 at once, run 3 stays.
    const third = await waitUntil(
      () => {
        try {
          return Deno.readTextFileSync(`${dir}/runs-0`) === "3" && supervisor.ready();
        } catch {
          return false;
        }
      },
      { timeoutMs: 10_000, intervalMs: 20 },
    );
    assert.ok(third, "worker 0 was started a third time and the fleet is ready");
    assert.equal(fatal, undefined);
  } finally {
    await supervisor.stop();
    await Deno.remove(dir, { recursive: true });
  }
});

Deno.test("supervisor: a replaced worker's counters stay in the host's totals, and its pipe is closed", async () => {
  const { supervisor, dir } = supervise("normal");
  supervisor.start();
  try {
    assert.ok(await waitUntil(() => supervisor.ready(), { timeoutMs: 10_000, intervalMs: 20 }));
    assert.equal(sample(await supervisor.exposition(), "aero_proxy_sessions_total"), 200);
    const fdsBefore = (await procStats()).fds;
    let previous = 200;
    for (let round = 1; round <= 3; round++) {
      const old = supervisor.pids[0]!;
      Deno.kill(old, "SIGKILL");
      const replaced = await waitUntil(
        () => supervisor.pids[0] !== undefined && supervisor.pids[0] !== old && supervisor.ready(),
        { timeoutMs: 10_000, intervalMs: 10 },
      );
      assert.ok(replaced, `round ${round}: worker 0 replaced`);
      // Each replacement reports 1 session: what the dead ones reported last still counts.
      const total = sample(await supervisor.exposition(), "aero_proxy_sessions_total")!;
      assert.ok(total >= previous, `round ${round}: the total went from ${previous} down to ${total}`);
      previous = total;
    }
    assert.equal(previous, 100 + 100 + 1 + 1 + 1);
    assert.equal((await procStats()).fds, fdsBefore, "no descriptor kept per restart");
  } finally {
    await supervisor.stop();
    await Deno.remove(dir, { recursive: true });
  }
});

Deno.test("supervisor: a hung worker is taken out of readiness, killed and replaced; stop() does not wait on it", async (t) => {
  const { supervisor, dir } = supervise("normal");
  supervisor.start();
  try {
    assert.ok(await waitUntil(() => supervisor.ready(), { timeoutMs: 10_000, intervalMs: 20 }));
    await t.step("SIGSTOP: not ready within one heartbeat, replaced after three", async () => {
      assert.equal(sample(await supervisor.exposition(), "aero_proxy_sessions_total"), 200);
      const hung = supervisor.pids[0]!;
      Deno.kill(hung, "SIGSTOP");
      assert.ok(await waitUntil(() => !supervisor.ready(), { timeoutMs: 5000, intervalMs: 20 }), "not ready");
      // Its last figures stand in for it meanwhile.
      assert.equal(sample(await supervisor.exposition(), "aero_proxy_sessions_total"), 200);
      const replaced = await waitUntil(
        () => supervisor.pids[0] !== undefined && supervisor.pids[0] !== hung && supervisor.ready(),
        { timeoutMs: 15_000, intervalMs: 50 },
      );
      assert.ok(replaced, "the hung worker was killed and replaced");
    });
    await t.step("stop() with a hung worker ends within the grace plus the margin", async () => {
      Deno.kill(supervisor.pids[1]!, "SIGSTOP");
      const began = performance.now();
      await supervisor.stop();
      const tookMs = performance.now() - began;
      assert.ok(tookMs < 500 + 5000 + 1500, `stop() took ${Math.round(tookMs)} ms`);
    });
  } finally {
    await supervisor.stop();
    await Deno.remove(dir, { recursive: true });
  }
});
