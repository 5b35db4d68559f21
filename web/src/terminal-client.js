/**
 * terminal-client.js: the browser end of a terminal-proxy session (xterm.js + one WebSocket).
 *
 *   const handle = connectTerminal(document.getElementById("terminal"), { path: "/demo/terminal.ws" });
 *
 * Wire protocol. The page offers the subprotocols in `options.protocols` (default
 * v5.channel.k8s.io, v4.channel.k8s.io, terminal.gitlab.com) and the gateway picks one.
 * Frames are binary (binaryType "arraybuffer").
 *
 *   v5.channel.k8s.io / v4.channel.k8s.io: every frame is [stream byte] + payload.
 *     page → gateway   0 stdin    UTF-8 bytes of what was typed or pasted
 *                      4 resize   {"Width":cols,"Height":rows}, after open and on every resize
 *     gateway → page   1 stdout, 2 stderr: bytes for the terminal (one streaming UTF-8 decoder
 *                        each, so a character split across frames comes out whole)
 *                      3 status: a Kubernetes Status document
 *                        {"status":"Success"}                                  → exit code 0
 *                        {"status":"Failure","reason":"NonZeroExitCode","details":
 *                          {"causes":[{"reason":"ExitCode","message":"3"}]}}   → exit code 3
 *                        any other Failure                                     → its "message"
 *     A frame with a stream byte and no payload (the gateway's first [1]) carries nothing.
 *   terminal.gitlab.com: raw bytes both ways; no resize, no status.
 *
 * Every session ends with a close code and reason from the gateway (docs/close-codes.md):
 * 1000 "exit code N" (the only exit status a terminal.gitlab.com session gets), 4001
 * "authorization revoked", 4004 "session time limit reached", 1001 "server shutting down",
 * 1014 "upstream failed: …". The module writes a dim summary line into the terminal and tells
 * onExit / onClose / onStatus listeners.
 */
import { Terminal } from "@xterm/xterm";
import { FitAddon } from "@xterm/addon-fit";

export const DEFAULT_PROTOCOLS = Object.freeze([
  "v5.channel.k8s.io",
  "v4.channel.k8s.io",
  "terminal.gitlab.com",
]);
const KUBERNETES = new Set(["v5.channel.k8s.io", "v4.channel.k8s.io"]);
const SUPPORTED = new Set(DEFAULT_PROTOCOLS);
const STDIN = 0, STDOUT = 1, STDERR = 2, STATUS = 3, RESIZE = 4;
const DIM = "\x1b[2m", RED = "\x1b[31m", PLAIN = "\x1b[0m";
const encoder = new TextEncoder();

/** The ws:/wss: URL of a same-origin path (wss: when the page is https:). */
export function websocketURL(path, location = window.location) {
  const url = new URL(path, location.href);
  url.protocol = url.protocol === "https:" ? "wss:" : "ws:";
  return url.href;
}

/** A stream-3 Status document → { code, message }; code is null when it names no exit code. */
export function parseStatus(text) {
  let status;
  try {
    status = JSON.parse(text);
  } catch {
    return { code: null, message: text.trim() || "invalid status" };
  }
  if (status?.status === "Success") return { code: 0, message: "" };
  if (status?.reason === "NonZeroExitCode") {
    const cause = (status.details?.causes ?? []).find((c) => c?.reason === "ExitCode");
    const code = /^\d+$/.test(cause?.message ?? "") ? Number(cause.message) : null;
    if (code !== null) return { code, message: status.message ?? `exit code ${code}` };
  }
  return { code: null, message: status?.message || "the command failed" };
}

/** The exit code in a close reason "exit code N", else null. */
export function exitCodeFromReason(reason) {
  const match = /^exit code (\d+)$/.exec(reason ?? "");
  return match ? Number(match[1]) : null;
}

/** One line for a status bar / the terminal about how a session ended. */
export function describeClose({ code, reason, exitCode, opened }) {
  if (exitCode !== null && exitCode !== undefined) return `session ended: exit code ${exitCode}`;
  if (code === 1006) return opened ? "connection lost" : "could not connect (the gateway refused or is unreachable)";
  if (code === 1000) return reason || "session ended";
  return `${reason || "connection closed"} (${code})`;
}

/**
 * Open an xterm.js terminal in `container` and connect it. Options:
 *   url        full ws:// or wss:// URL; or
 *   path       same-origin path, turned into a URL with websocketURL() (default "terminal.ws")
 *   protocols  subprotocols to offer, a subset of DEFAULT_PROTOCOLS in order of preference
 *   fontSize   px (default 14); terminalOptions: more xterm ITerminalOptions
 *   onOpen({protocol}), onExit({code, reason}), onClose({code, reason, exitCode, opened})
 * Returns the handle documented in docs/browser-client.md.
 */
export function connectTerminal(container, options = {}) {
  const protocols = [...(options.protocols ?? DEFAULT_PROTOCOLS)];
  const unsupported = protocols.filter((p) => !SUPPORTED.has(p));
  if (protocols.length === 0 || unsupported.length > 0) {
    throw new Error(`unsupported subprotocols: ${unsupported.join(", ") || "(none offered)"}`);
  }
  const url = options.url ?? websocketURL(options.path ?? "terminal.ws");

  const term = new Terminal({
    fontSize: options.fontSize ?? 14,
    fontFamily: 'ui-monospace, "DejaVu Sans Mono", Menlo, Consolas, monospace',
    cursorBlink: true,
    macOptionClickForcesSelection: true, // Option+drag selects over mouse-reporting programs
    scrollback: 5000,
    ...options.terminalOptions,
  });
  const fit = new FitAddon();
  term.loadAddon(fit);
  term.open(container);
  fit.fit();

  const statusListeners = new Set();
  let session = null; // { ws, kubernetes, decoders, opened, exitReported }
  let status = { state: "connecting", text: "connecting…" };

  const handle = {
    term,
    fit,
    lastExit: null,
    lastClose: null,
    get socket() { return session?.ws ?? null; },
    get protocol() { return session?.ws.protocol ?? ""; },
    get status() { return status; },
    onStatus(fn) {
      statusListeners.add(fn);
      fn(status);
      return () => statusListeners.delete(fn);
    },
    close() {
      if (session && session.ws.readyState <= WebSocket.OPEN) session.ws.close(1000, "closed by the page");
    },
    reconnect() {
      detach();
      term.reset();
      connect();
    },
    dispose() {
      detach();
      clearTimeout(fitTimer);
      window.removeEventListener("resize", scheduleFit);
      resizeObserver?.disconnect();
      statusListeners.clear();
      term.dispose();
    },
  };

  function setStatus(next) {
    status = next;
    for (const fn of statusListeners) fn(status);
  }

  function send(stream, bytes) {
    if (session?.ws.readyState !== WebSocket.OPEN) return;
    if (!session.kubernetes) {
      if (stream === STDIN) session.ws.send(bytes);
      return;
    }
    const frame = new Uint8Array(bytes.length + 1);
    frame[0] = stream;
    frame.set(bytes, 1);
    session.ws.send(frame);
  }

  function sendSize() {
    send(RESIZE, encoder.encode(JSON.stringify({ Width: term.cols, Height: term.rows })));
  }

  function reportExit(code, reason) {
    if (session.exitReported) return;
    session.exitReported = true;
    handle.lastExit = { code, reason };
    options.onExit?.(handle.lastExit);
  }

  function onMessage(ws, event) {
    const data = typeof event.data === "string" ? encoder.encode(event.data) : new Uint8Array(event.data);
    if (!session.kubernetes) {
      term.write(session.decoders[STDOUT].decode(data, { stream: true }));
      return;
    }
    if (data.length < 2) return;
    const stream = data[0];
    const payload = data.subarray(1);
    if (stream === STDOUT || stream === STDERR) {
      term.write(session.decoders[stream].decode(payload, { stream: true }));
    } else if (stream === STATUS) {
      const { code, message } = parseStatus(new TextDecoder().decode(payload));
      if (code !== null) {
        reportExit(code, message || `exit code ${code}`);
      } else {
        term.write(`\r\n${RED}${message}${PLAIN}\r\n`);
        setStatus({ state: "open", text: `error: ${message}` });
      }
    }
  }

  function onClose(ws, event) {
    for (const stream of [STDOUT, STDERR]) term.write(session.decoders[stream].decode());
    const exitCode = handle.lastExit?.code ?? exitCodeFromReason(event.reason);
    if (exitCode !== null) reportExit(exitCode, event.reason || `exit code ${exitCode}`);
    const closed = { code: event.code, reason: event.reason, exitCode, opened: session.opened };
    const text = describeClose(closed);
    handle.lastClose = closed;
    // After the session's last output: a dim line (on a line of its own), then hide the cursor.
    const ended = session;
    term.write("", () => {
      if (session !== ended) return; // reconnect() has reset the terminal meanwhile
      const newline = term.buffer.active.cursorX > 0 ? "\r\n" : "";
      term.write(`${newline}${DIM}[${text}]${PLAIN}\r\n\x1b[?25l`);
    });
    setStatus({ state: "closed", text, ...closed });
    options.onClose?.(closed);
  }

  function connect() {
    const ws = new WebSocket(url, protocols);
    ws.binaryType = "arraybuffer";
    const decoders = { [STDOUT]: new TextDecoder(), [STDERR]: new TextDecoder() };
    session = { ws, kubernetes: false, decoders, opened: false, exitReported: false };
    handle.lastExit = null;
    handle.lastClose = null;
    // Events of a socket that reconnect() has replaced are ignored.
    const mine = (fn) => (event) => { if (session?.ws === ws) fn(ws, event); };
    ws.onopen = mine(() => {
      session.opened = true;
      session.kubernetes = KUBERNETES.has(ws.protocol);
      sendSize();
      term.focus();
      setStatus({ state: "open", text: `connected (${ws.protocol || "no subprotocol"})`, protocol: ws.protocol });
      options.onOpen?.({ protocol: ws.protocol });
    });
    ws.onmessage = mine(onMessage);
    ws.onclose = mine(onClose);
    setStatus({ state: "connecting", text: "connecting…" });
  }

  function detach() {
    const old = session;
    session = null;
    if (old && old.ws.readyState <= WebSocket.OPEN) old.ws.close(1000, "reconnecting");
  }

  // Input: typed and pasted text, and xterm's non-UTF-8 mouse reports.
  term.onData((text) => send(STDIN, encoder.encode(text)));
  term.onBinary((text) => send(STDIN, Uint8Array.from(text, (c) => c.charCodeAt(0) & 0xff)));
  term.onResize(() => sendSize());

  // Clipboard: Ctrl+Shift+C copies the selection (and never opens the browser's inspector);
  // Ctrl+Shift+V is left to the browser, whose paste event xterm turns into input.
  term.attachCustomKeyEventHandler((event) => {
    if (!(event.ctrlKey && event.shiftKey) || event.altKey || event.metaKey) return true;
    const key = event.code === "KeyC" || event.key.toLowerCase() === "c" ? "c"
      : event.code === "KeyV" || event.key.toLowerCase() === "v" ? "v" : "";
    if (key === "c" && event.type === "keydown") {
      event.preventDefault();
      copySelection(term);
    }
    return key === "";
  });

  // Refit 50 ms after the container or the window last changed size (term.onResize sends it).
  let fitTimer = 0;
  function scheduleFit() {
    clearTimeout(fitTimer);
    fitTimer = setTimeout(() => { if (term.element?.isConnected) fit.fit(); }, 50);
  }
  window.addEventListener("resize", scheduleFit);
  const resizeObserver = typeof ResizeObserver === "function" ? new ResizeObserver(scheduleFit) : null;
  resizeObserver?.observe(container);
  document.fonts?.ready.then(scheduleFit);

  connect();
  return handle;
}

function copySelection(term) {
  const text = term.getSelection();
  if (!text) return;
  // The async clipboard needs a secure context; execCommand fires a copy event on xterm's
  // focused textarea, which xterm answers with its selection.
  if (window.isSecureContext && navigator.clipboard?.writeText) {
    navigator.clipboard.writeText(text).catch(() => document.execCommand("copy"));
  } else {
    document.execCommand("copy");
  }
}
