// Bundles the demo page's JS (src/demo.js + src/terminal-client.js + xterm.js) and CSS
// (xterm.css + src/demo.css), and the recording player page's (src/recordings.js +
// asciinema-player), into terminal_proxy/web/static/. Run by scripts/build-web.
import { mkdir, rm, stat } from "node:fs/promises";
import { fileURLToPath } from "node:url";
import path from "node:path";
import * as esbuild from "esbuild";

const here = path.dirname(fileURLToPath(import.meta.url));
const outdir = path.resolve(here, "../terminal_proxy/web/static");

await rm(outdir, { recursive: true, force: true });
await mkdir(outdir, { recursive: true });

const result = await esbuild.build({
  absWorkingDir: here,
  // → terminal-proxy.js/.css (the terminal page) and recordings.js/.css (the player page)
  entryPoints: { "terminal-proxy": "src/demo.js", recordings: "src/recordings.js" },
  outdir,
  bundle: true,
  format: "iife",
  minify: true,
  target: ["chrome100", "firefox100", "safari15"],
  legalComments: "eof", // keeps xterm.js's MIT notice in the bundle
  logLevel: "warning",
  metafile: true,
});

for (const file of Object.keys(result.metafile.outputs).sort()) {
  const absolute = path.resolve(here, file);
  const { size } = await stat(absolute);
  console.log(`${path.relative(path.resolve(here, ".."), absolute)}  ${(size / 1024).toFixed(1)} KiB`);
}
