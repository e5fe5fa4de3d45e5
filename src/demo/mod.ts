/**
 * The demo page, served under `/demo/` only when the relay runs with `--demo`: an operator opens it, types
 * `ip:port` and a line, and sees the reply, which proves the deployment works from a real browser.
 *
 * The files are imported as text, so they are part of the module graph: `deno compile` embeds them and the
 * relay needs no read permission. `page.js` (the page's script) and `aero_client.js` (the client alone, for
 * pages of your own) are checked-in browser builds made by `deno task bundle`.
 * @module
 */
import clientJs from "../client/aero_client.js" with { type: "text" };
import demoCss from "./demo.css" with { type: "text" };
import indexHtml from "./index.html" with { type: "text" };
import pageJs from "./page.js" with { type: "text" };

/** Every demo URL starts with this. */
export const DEMO_PREFIX = "/demo/";

const FILES: ReadonlyMap<string, { readonly body: string; readonly type: string }> = new Map([
  ["", { body: indexHtml, type: "text/html; charset=utf-8" }],
  ["index.html", { body: indexHtml, type: "text/html; charset=utf-8" }],
  ["page.js", { body: pageJs, type: "text/javascript; charset=utf-8" }],
  ["demo.css", { body: demoCss, type: "text/css; charset=utf-8" }],
  ["aero_client.js", { body: clientJs, type: "text/javascript; charset=utf-8" }],
]);

const HEADERS = {
  "cache-control": "no-store",
  // Only this origin's scripts, styles and WebSocket: the page can reach nothing but this relay.
  "content-security-policy":
    "default-src 'none'; script-src 'self'; style-src 'self'; connect-src 'self'; base-uri 'none'; form-action 'none'",
  "x-content-type-options": "nosniff",
  "referrer-policy": "no-referrer",
};

/** Whether `pathname` belongs to the demo (`/demo` or anything under `/demo/`). */
export function isDemoPath(pathname: string): boolean {
  return pathname === "/demo" || pathname.startsWith(DEMO_PREFIX);
}

/** Answers a request for a demo path (see {@linkcode isDemoPath}). */
export function demoResponse(request: Request, url: URL): Response {
  if (url.pathname === "/demo") {
    return new Response(null, { status: 308, headers: { location: DEMO_PREFIX } });
  }
  if (request.method !== "GET" && request.method !== "HEAD") {
    return new Response("Method Not Allowed\n", { status: 405, headers: { allow: "GET, HEAD" } });
  }
  const file = FILES.get(url.pathname.slice(DEMO_PREFIX.length));
  if (file === undefined) return new Response("Not Found\n", { status: 404 });
  return new Response(request.method === "HEAD" ? null : file.body, {
    headers: { ...HEADERS, "content-type": file.type },
  });
}
