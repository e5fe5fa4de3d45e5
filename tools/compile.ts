/**
 * `deno task compile`, with a sandbox that leaves some private IPv4 addresses open: the binary's `--deny-net`
 * refuses every private range, so a relay that must reach a Redis on a private network (a Kubernetes Service IP,
 * a VPC address) needs that address carved out at build time. Everything else in the command is the task's.
 *
 *   deno run --allow-read --allow-run tools/compile.ts --sandbox-except=10.96.0.0/12
 *   deno run --allow-read --allow-run tools/compile.ts --sandbox-except=10.0.5.7 --dry-run   (prints the command)
 * @module
 */
import { parseArgs } from "node:util";
import denoJson from "../deno.json" with { type: "json" };
import { parseExceptions, sandboxDenyList } from "../src/policy/sandbox.ts";

/** The compile task's words with the `--deny-net` list rebuilt to leave `except` open. */
export function compileArgs(except: string): string[] {
  const words = denoJson.tasks.compile.split(/\s+/).map((word) => word.replaceAll("'", ""));
  if (words[0] !== "deno" || words[1] !== "compile") {
    throw new Error("the compile task is not `deno compile ...`");
  }
  const deny = `--deny-net=${sandboxDenyList(parseExceptions(except)).join(",")}`;
  return words.slice(1).map((word) => (word.startsWith("--deny-net=") ? deny : word));
}

if (import.meta.main) {
  const { values } = parseArgs({
    args: Deno.args,
    options: {
      "sandbox-except": { type: "string", default: "" },
      "dry-run": { type: "boolean", default: false },
    },
  });
  let args: string[];
  try {
    args = compileArgs(values["sandbox-except"]);
  } catch (err: unknown) {
    // deno-lint-ignore no-console
    console.error(`compile: ${err instanceof Error ? err.message : String(err)}`);
    Deno.exit(2);
  }
  if (values["dry-run"]) {
    // deno-lint-ignore no-console
    console.log(["deno", ...args].join(" "));
  } else {
    const { code } = await new Deno.Command(Deno.execPath(), { args, stdin: "null" }).spawn().status;
    Deno.exit(code);
  }
}
