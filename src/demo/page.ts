/**
 * The demo page's script: one stream through the relay that served the page. Bundled with the client into
 * `page.js` by `deno task bundle`, so the page loads nothing but this origin's files.
 * @module
 */
/// <reference lib="dom" />
import { RelayClient, RelayError } from "../client/mod.ts";

const TIMEOUT_MS = 5000;
const MAX_REPLY_BYTES = 64 * 1024;

function $<T extends HTMLElement = HTMLElement>(id: string): T {
  const element = document.getElementById(id);
  if (element === null) throw new Error(`The page has no #${id}`);
  return element as T;
}

function input(id: string): HTMLInputElement {
  return $<HTMLInputElement>(id);
}

function muxUrl(): string {
  const scheme = location.protocol === "https:" ? "wss:" : "ws:";
  return `${scheme}//${location.host}/tcp-mux`;
}

function show(text: string, isError = false): void {
  $("status").textContent = text;
  $("status").className = isError ? "error" : "";
}

function describe(err: unknown): string {
  if (err instanceof RelayError) return `RelayError ${err.code} ${err.codeName}: ${err.message}`;
  return err instanceof Error ? `${err.name}: ${err.message}` : String(err);
}

/** Reads until the first newline, the end of the stream, 64 KiB or the timeout, whichever comes first. */
async function readReply(readable: ReadableStream<Uint8Array>): Promise<string> {
  const reader = readable.getReader();
  const decoder = new TextDecoder();
  const timer = setTimeout(() => reader.cancel(new Error("timed out")), TIMEOUT_MS);
  let text = "";
  let bytes = 0;
  try {
    while (!text.includes("\n") && bytes < MAX_REPLY_BYTES) {
      const { value, done } = await reader.read();
      if (done) break;
      bytes += value.byteLength;
      text += decoder.decode(value, { stream: true });
    }
  } finally {
    clearTimeout(timer);
    reader.releaseLock();
  }
  return text;
}

/** `host:port`, the host a name, an IPv4 address or a bracketed IPv6 address. */
const TARGET = /^(\[[^\]\s]+\]|[^\s:[\]]+):(\d{1,5})$/;

async function send(token: string, target: string, line: string): Promise<string> {
  const match = TARGET.exec(target.trim());
  if (match === null) {
    throw new TypeError(`"${target}" is not host:port, e.g. example.com:80, 93.184.216.34:80 or [::1]:80`);
  }
  const client = new RelayClient(muxUrl(), { token });
  try {
    show(`Connecting to ${match[1]}:${match[2]}...`);
    // aero-tcp-mux-v1 acknowledges no OPEN: a refusal or a failed connect arrives as a RelayError on the read.
    const stream = await client.connect(match[1]!, Number(match[2]));
    const writer = stream.writable.getWriter();
    await writer.write(new TextEncoder().encode(`${line}\r\n\r\n`));
    writer.releaseLock();
    show(`Sent on stream ${stream.id}; waiting for the reply...`);
    return await readReply(stream.readable);
  } finally {
    await client.close();
  }
}

input("token").value = new URLSearchParams(location.hash.slice(1)).get("token") ?? "";
$("form").addEventListener("submit", async (event) => {
  event.preventDefault();
  $<HTMLButtonElement>("send").disabled = true;
  $("reply").textContent = "";
  try {
    const reply = await send(input("token").value, input("target").value, input("line").value);
    $("reply").textContent = reply;
    show(reply === "" ? "Done: the target closed without replying" : "Done");
  } catch (err) {
    show(describe(err), true);
  } finally {
    $<HTMLButtonElement>("send").disabled = false;
  }
});
$<HTMLButtonElement>("send").disabled = false;
show("Ready");
