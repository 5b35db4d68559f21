/**
 * terminal-client.js: the browser end of a terminal-proxy session (xterm.js + one WebSocket).
 *
 *   const handle = connectTerminal(document.getElementById("terminal"), { path: "/demo/terminal.ws" });
 *
 * Wire protocol. The page offers the subprotocols in `options.protocols` (default
 * v1.terminal-proxy, v5.channel.k8s.io, v4.channel.k8s.io, terminal.gitlab.com) and the
 * gateway picks one. Frames are binary (binaryType "arraybuffer") except control messages.
 *
 *   v1.terminal-proxy (docs/browser-protocol.md): binary frames are terminal bytes both ways;
 *     text frames are JSON control messages. page → gateway: resize {cols, rows}, ack
 *     {received}, extend, and resume {session, token, received, sent} as the first message of
 *     a resuming socket. gateway → page: hello {session, token, offset, input, reset, …},
 *     exit {code, reason}, expiry {expires_in, extendable}, extension {granted, …}, ack {input}.
 *     When the socket drops without a close frame (1006) the module resumes the same session
 *     on a new socket (`?resume=<session id>`): the gateway replays exactly the output the
 *     page missed and the page re-sends the input the gateway did not get.
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

export const TERMINAL_PROXY = "v1.terminal-proxy";
export const DEFAULT_PROTOCOLS = Object.freeze([
  TERMINAL_PROXY,
  "v5.channel.k8s.io",
  "v4.channel.k8s.io",
  "terminal.gitlab.com",
]);
const KUBERNETES = new Set(["v5.channel.k8s.io", "v4.channel.k8s.io"]);
const SUPPORTED = new Set(DEFAULT_PROTOCOLS);
const STDIN = 0, STDOUT = 1, STDERR = 2, STATUS = 3, RESIZE = 4;
const DIM = "\x1b[2m", RED = "\x1b[31m", PLAIN = "\x1b[0m";
const encoder = new TextEncoder();
// Acknowledge received output every this many bytes (lets the gateway free its replay buffer).
const ACK_EVERY = 64 * 1024;
// Resume attempts: wait 0.25 s, 0.5 s, 1 s … up to 8 s between them, for up to 5 minutes.
const RESUME_FOR_MS = 5 * 60 * 1000;

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
  let session = null; // { ws, kubernetes, tp, decoders, opened, exitReported, resume }
  // v1.terminal-proxy resume state, shared by the sockets of one session:
  // { id, token, received, acked, sent, input: [{offset, bytes}], since, timer }
  let resumable = null;
  let sessionId = null; // the current (or just ended) session's id, from its hello
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
    /** v1.terminal-proxy: ask for more time (answer through onExtension). */
    extend() {
      sendControl({ type: "extend" });
    },
    get sessionId() { return sessionId; },
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

  function sendControl(message) {
    if (session?.tp && session.ws.readyState === WebSocket.OPEN && !session.resume) {
      session.ws.send(JSON.stringify(message));
    }
  }

  function send(stream, bytes) {
    if (session?.tp) {
      if (stream !== STDIN || bytes.length === 0) return;
      if (!resumable) {
        // No hello (resume is off on this gateway): a plain byte stream.
        if (session.ws.readyState === WebSocket.OPEN) session.ws.send(bytes);
        return;
      }
      // Kept until the gateway says the upstream has it: re-sent after a resume.
      resumable.input.push({ offset: resumable.sent, bytes });
      resumable.sent += bytes.length;
      if (session.ws.readyState === WebSocket.OPEN && !session.resume) session.ws.send(bytes);
      return;
    }
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
    if (session?.tp) {
      sendControl({ type: "resize", cols: term.cols, rows: term.rows });
      return;
    }
    send(RESIZE, encoder.encode(JSON.stringify({ Width: term.cols, Height: term.rows })));
  }

  /** Drop kept input the upstream has got (the gateway's input offset). */
  function trimInput(delivered) {
    const kept = resumable.input;
    while (kept.length && kept[0].offset + kept[0].bytes.length <= delivered) kept.shift();
    if (kept.length && kept[0].offset < delivered) {
      kept[0] = { offset: delivered, bytes: kept[0].bytes.subarray(delivered - kept[0].offset) };
    }
  }

  function onControl(message) {
    switch (message.type) {
      case "hello": {
        const resumed = message.resumed && resumable?.id === message.session;
        if (!resumed) {
          resumable = { id: message.session, token: message.token, received: 0, acked: 0, sent: 0, input: [] };
        }
        resumable.token = message.token;
        sessionId = message.session;
        if (message.reset) {
          // Output was lost while away: start clean where the gateway's kept bytes begin.
          term.reset();
          session.decoders[STDOUT] = new TextDecoder();
          term.write(`${DIM}[reconnected: some output was lost]${PLAIN}\r\n`);
        }
        resumable.received = message.offset;
        resumable.acked = message.offset;
        if (resumed) {
          resumable.attempt = 0;
          resumable.since = 0;
          trimInput(message.input);
          session.resume = false;
          for (const { bytes } of resumable.input) session.ws.send(bytes);
          sendSize();
          setStatus({ state: "open", text: `connected (${session.ws.protocol})`, protocol: session.ws.protocol, resumed: true });
          options.onResume?.({ session: message.session, reset: message.reset });
        }
        break;
      }
      case "exit":
        reportExit(message.code, message.reason || `exit code ${message.code}`);
        break;
      case "expiry":
        setStatus({ ...status, text: `session ends in ${Math.round(message.expires_in)} s`, expiry: message });
        options.onExpiry?.(message);
        break;
      case "extension":
        options.onExtension?.(message);
        break;
      case "ack":
        if (resumable) trimInput(message.input);
        break;
      default:
        break; // newer messages are ignored
    }
  }

  function reportExit(code, reason) {
    if (session.exitReported) return;
    session.exitReported = true;
    handle.lastExit = { code, reason };
    options.onExit?.(handle.lastExit);
  }

  function onMessage(ws, event) {
    if (session.tp) {
      if (typeof event.data === "string") {
        let message;
        try {
          message = JSON.parse(event.data);
        } catch {
          return;
        }
        onControl(message);
        return;
      }
      const bytes = new Uint8Array(event.data);
      term.write(session.decoders[STDOUT].decode(bytes, { stream: true }));
      if (resumable) {
        resumable.received += bytes.length;
        if (resumable.received - resumable.acked >= ACK_EVERY) {
          resumable.acked = resumable.received;
          sendControl({ type: "ack", received: resumable.received });
        }
      }
      return;
    }
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
    if (session.tp && resumable && event.code === 1006 && !session.exitReported) {
      // The connection dropped (no close frame): the session waits for us on the gateway.
      resumeLater();
      return;
    }
    if (resumable && session.resume && event.code === 1006 && Date.now() - resumable.since < RESUME_FOR_MS) {
      resumeLater();
      return;
    }
    resumable = null;
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

  function resumeLater() {
    if (!resumable.since) resumable.since = Date.now();
    const attempt = (resumable.attempt = (resumable.attempt ?? 0) + 1);
    const delay = Math.min(8000, 250 * 2 ** (attempt - 1));
    setStatus({ state: "connecting", text: "connection lost; reconnecting…" });
    const waiting = resumable;
    resumable.timer = setTimeout(() => { if (resumable === waiting) connect(waiting); }, delay);
  }

  function connect(resume = null) {
    const target = resume ? `${url}${url.includes("?") ? "&" : "?"}resume=${encodeURIComponent(resume.id)}` : url;
    const ws = new WebSocket(target, resume ? [TERMINAL_PROXY] : protocols);
    ws.binaryType = "arraybuffer";
    const decoders = resume && session ? session.decoders : { [STDOUT]: new TextDecoder(), [STDERR]: new TextDecoder() };
    session = { ws, kubernetes: false, tp: false, decoders, opened: false, exitReported: false, resume: !!resume };
    if (!resume) {
      resumable = null;
      sessionId = null;
      handle.lastExit = null;
      handle.lastClose = null;
    }
    // Events of a socket that reconnect() has replaced are ignored.
    const mine = (fn) => (event) => { if (session?.ws === ws) fn(ws, event); };
    ws.onopen = mine(() => {
      session.opened = true;
      session.kubernetes = KUBERNETES.has(ws.protocol);
      session.tp = ws.protocol === TERMINAL_PROXY;
      if (resume) {
        // The first message of a resuming socket; output and input go on after the hello.
        ws.send(JSON.stringify({ type: "resume", session: resume.id, token: resume.token, received: resume.received, sent: resume.sent }));
        return;
      }
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
    if (resumable) clearTimeout(resumable.timer);
    resumable = null;
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
