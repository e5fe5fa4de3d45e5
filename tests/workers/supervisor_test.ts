import assert from "node:assert/strict";
import { defaultConfig } from "../../src/config.ts";
import { parseCidr } from "../../src/policy/policy.ts";
import { sandboxDenyList } from "../../src/policy/sandbox.ts";
import {
  decodeSupervisorMessage,
  decodeWorkerMessage,
  encodeWorkerMessage,
  ipcText,
  isIpcLine,
  readLines,
} from "../../src/workers/ipc.ts";
import { type ProcessFacts, workerCommand, WorkerSetupError } from "../../src/workers/supervisor.ts";

/**
 * A process holding `granted` (descriptors written as `name` or `name:value`), denied `denied` (or what that
 * function says), with deny lists on the `partial` permissions.
 */
function facts(
  granted: string[],
  denied: string[] | ((key: string) => boolean) = [],
  standalone = false,
  partial: string[] = [],
): ProcessFacts {
  const isDenied = typeof denied === "function" ? denied : (key: string) => denied.includes(key);
  const key = (d: Deno.PermissionDescriptor) => {
    const value = "host" in d
      ? d.host
      : "variable" in d
      ? d.variable
      : "path" in d
      ? d.path
      : "command" in d
      ? d.command
      : undefined;
    return value === undefined ? d.name : `${d.name}:${value}`;
  };
  return {
    standalone,
    execPath: "/opt/deno/bin/deno",
    mainModule: "file:///srv/relay%20dir/main.ts",
    args: ["--host=0.0.0.0"],
    query: (d) => isDenied(key(d)) ? "denied" : granted.includes(key(d)) ? "granted" : "prompt",
    partial: (name) => partial.includes(name),
  };
}

/** Whether the sandbox's list denies `key` ("net:<host>"), as Deno would answer under start:sandboxed. */
function sandboxDenies(key: string): boolean {
  if (!key.startsWith("net:")) return false;
  const host = key.slice(4);
  const list = sandboxDenyList();
  if (host.startsWith("[")) return list.includes(host);
  const value = host.split(".").reduce((acc, octet) => ((acc << 8) | Number(octet)) >>> 0, 0);
  return list.filter((e) => !e.startsWith("[")).some((entry) => {
    const cidr = parseCidr(entry)!;
    return ((value & cidr.mask) >>> 0) === cidr.network;
  });
}

const config = defaultConfig({ workers: 2 });

Deno.test({
  name: "workerCommand() rebuilds the start task's flags, without --allow-run",
  permissions: "none",
}, () => {
  const command = workerCommand(
    config,
    facts(["run:deno", "net", "env:AERO_PROXY_WORKER_INDEX", "read:/proc/self/limits", "read:/dev/null"]),
  );
  assert.deepEqual(command, {
    cmd: "deno",
    args: [
      "run",
      "--unstable-net",
      "--allow-net",
      "--allow-env=AERO_PROXY_*",
      "--allow-read=/proc/self/limits,/dev/null",
      "/srv/relay dir/main.ts",
      "--host=0.0.0.0",
    ],
  });
  assert.ok(!command.args.some((a) => a.startsWith("--allow-run")));
});

Deno.test(
  { name: "workerCommand() passes the sandbox and loopback-only grants on", permissions: "none" },
  async (t) => {
    await t.step("the sandbox's --deny-net list when 10.0.0.1 is denied", () => {
      const command = workerCommand(
        config,
        facts(["run:/opt/deno/bin/deno", "net", "env", "read"], sandboxDenies, false, ["net"]),
      );
      assert.equal(command.cmd, "/opt/deno/bin/deno");
      assert.deepEqual(command.args.slice(0, 6), [
        "run",
        "--unstable-net",
        "--allow-net",
        `--deny-net=${sandboxDenyList().join(",")}`,
        "--allow-env",
        "--allow-read",
      ]);
    });
    await t.step("--allow-net=127.0.0.0/8 for a relay narrowed to loopback", () => {
      const loopback = ["net:127.0.0.1", "net:127.1.2.3", "net:127.255.255.254"];
      const command = workerCommand(config, facts(["run:deno", "env", ...loopback]));
      assert.ok(command.args.includes("--allow-net=127.0.0.0/8"));
      assert.ok(!command.args.some((a) => a.startsWith("--allow-read")));
    });
    await t.step("the compiled binary starts itself with its own arguments", () => {
      const binary = facts(["run:/opt/deno/bin/deno"], [], true);
      assert.deepEqual(workerCommand(config, binary), {
        cmd: "/opt/deno/bin/deno",
        args: ["--host=0.0.0.0"],
      });
    });
  },
);

Deno.test({
  name: "workerCommand() refuses what it cannot pass on, saying what is missing",
  permissions: "none",
}, () => {
  const refused = (f: ProcessFacts, pattern: RegExp) =>
    assert.throws(
      () => workerCommand(config, f),
      (err: unknown) => err instanceof WorkerSetupError && pattern.test(err.message),
    );
  refused(facts(["net", "env"]), /needs --allow-run=deno/);
  refused(facts([], [], true), /compiled with --allow-run=\/opt\/deno\/bin\/deno/);
  refused(facts(["run:deno", "net:127.0.0.1", "env"]), /not another narrowed network permission/);
  refused(facts(["run:deno", "net"]), /needs --allow-env='AERO_PROXY_\*'/);
  // Deno answers "granted" for the whole of net under --allow-net --deny-net=...: only `partial` tells.
  const own = (key: string) => key === "net:169.254.169.254";
  refused(facts(["run:deno", "net", "env"], own, false, ["net"]), /not another deny list/);
  // The sandbox's list built with a whole range left open (--except=10.0.0.0/8) is not the sandbox's list. (A
  // hole inside a range is not seen: workers then get the full list, and refuse more, never less.)
  const opened = (key: string) => sandboxDenies(key) && !key.startsWith("net:10.");
  refused(facts(["run:deno", "net", "env"], opened, false, ["net"]), /not another deny list/);
  refused(facts(["run:deno", "net", "env", "read"], [], false, ["read"]), /cannot pass a --deny-read list/);
  refused(facts(["run:deno", "net", "env"], [], false, ["env"]), /cannot pass a --deny-env list/);
});

Deno.test({ name: "IPC messages round-trip and malformed ones are ignored", permissions: "none" }, () => {
  const line = encodeWorkerMessage({ type: "scrape", id: 7 });
  assert.ok(isIpcLine(line));
  assert.equal(line.at(-1), 0x0a);
  assert.deepEqual(decodeWorkerMessage(ipcText(line.subarray(0, -1))), { type: "scrape", id: 7 });
  assert.equal(decodeWorkerMessage('{"type":"scrape"}'), undefined);
  assert.equal(decodeWorkerMessage("not json"), undefined);
  assert.deepEqual(decodeSupervisorMessage('{"type":"fleet","ready":true}'), { type: "fleet", ready: true });
  assert.deepEqual(decodeSupervisorMessage('{"type":"scraped","id":1,"text":null}'), {
    type: "scraped",
    id: 1,
    text: null,
  });
  assert.equal(decodeSupervisorMessage('{"type":"collect","id":"1"}'), undefined);
  assert.ok(!isIpcLine(new TextEncoder().encode('{"level":"INFO"}')));
});

Deno.test(
  { name: "readLines() splits across chunks and drops an overlong line whole", permissions: "none" },
  async () => {
    const bytes = (text: string) => new TextEncoder().encode(text);
    const chunks = ["ab", "c\nde", "f\n\n", "0123456789", "0123456789\nlast"].map(bytes);
    const stream = ReadableStream.from(chunks);
    const lines: string[] = [];
    let overlong = 0;
    await readLines(stream, (line) => lines.push(new TextDecoder().decode(line)), {
      maxBytes: 12,
      onOverlong: () => overlong++,
    });
    assert.deepEqual(lines, ["abc", "def", "", "last"]);
    assert.equal(overlong, 1);
  },
);
