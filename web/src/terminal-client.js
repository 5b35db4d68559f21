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
 *     page missed and the page re-sends the input the gateway did not get. Attempts wait a
 *     jittered, capped exponential back-off (close-codes.js). With `options.storage`
 *     (the demo passes sessionStorage) the session id and the current single-use token
 *     are kept there, so a reloaded page (or a tab reopened within the resume grace)
 *     resumes the same shell from output offset 0: the gateway replays what it kept.
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
 * Shared terminals (docs/sharing.md): with `options.join` the page joins someone else's
 *   session (`?join=<session id>`, plus `&invitation=<id>` and a first message
 *   {type:"join", token} for an invitation) as a viewer or writer. A joiner's terminal
 *   takes the owner's size (no fitting), starts from the gateway's `screen` snapshot and
 *   never sends input as a viewer. The owner's handle has invite / invitations / revoke /
 *   setRole / remove / endSharing / sizeControl; every participant gets participants,
 *   role, size, screen, refused and invitation(s) events (options.onParticipants, …).
 *
 * Every session ends with a close code and reason from the gateway (docs/close-codes.md):
 * 1000 "exit code N" (the only exit status a terminal.gitlab.com session gets), 4001
 * "authorization revoked", 4004 "session time limit reached", 1001 "server shutting down",
 * 1014 "upstream failed: …". The module words it for people (CLOSE_TEXT in close-codes.js),
 * writes a dim summary line into the terminal and tells onExit / onClose / onStatus
 * listeners. A page that is left (reload, navigation, closed tab) lets the browser close
 * its socket with 1001, which the gateway treats as a detach: the session stays resumable
 * for its resume grace. handle.close() ends the session (1000).
 */
import { Terminal } from "@xterm/xterm";
import { FitAddon } from "@xterm/addon-fit";
import {
  TRY_LATER,
  backoffDelay,
  describeClose,
  exitCodeFromReason,
  formatSeconds,
  retryAfterMs,
} from "./close-codes.js";

import { joinLink } from "./join-link.js";

export { CLOSE_TEXT, describeClose, exitCodeFromReason } from "./close-codes.js";
export { joinLink, parseJoinFragment } from "./join-link.js";

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
// Resume attempts go on for up to 5 minutes (or the session's resume grace when shorter).
const RESUME_FOR_MS = 5 * 60 * 1000;
// With storage, acknowledge only output older than this: a reloaded page resumes from
// offset 0 and gets an exact replay while the gateway still holds everything since then.
const KEEP_FOR_RELOAD = 256 * 1024;

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

/**
 * Open an xterm.js terminal in `container` and connect it. Options:
 *   url        full ws:// or wss:// URL; or
 *   path       same-origin path, turned into a URL with websocketURL() (default "terminal.ws")
 *   protocols  subprotocols to offer, a subset of DEFAULT_PROTOCOLS in order of preference
 *   fontSize   px (default 14); terminalOptions: more xterm ITerminalOptions
 *   onOpen({protocol}), onExit({code, reason}), onClose({code, reason, exitCode, opened, byPage})
 *   storage    a Storage (sessionStorage) to keep the resume token in across reloads
 *   onRetry({attempt, code, opened, delay}): a resume attempt failed, the next one waits delay ms
 * Returns the handle documented in docs/browser-client.md.
 */
export function connectTerminal(container, options = {}) {
  const join = normaliseJoin(options.join);
  const protocols = join ? [TERMINAL_PROXY] : [...(options.protocols ?? DEFAULT_PROTOCOLS)];
  const unsupported = protocols.filter((p) => !SUPPORTED.has(p));
  if (protocols.length === 0 || unsupported.length > 0) {
    throw new Error(`unsupported subprotocols: ${unsupported.join(", ") || "(none offered)"}`);
  }
  const url = options.url ?? websocketURL(options.path ?? "terminal.ws");
  const openURL = join ? withQuery(url, joinQuery(join)) : url;

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
  if (!join) fit.fit();

  const statusListeners = new Set();
  let session = null; // { ws, kubernetes, tp, decoders, opened, exitReported, resume }
  // v1.terminal-proxy resume state, shared by the sockets of one session:
  // { id, token, received, acked, sent, input: [{offset, bytes}], since, timer, attempt,
  //   grace (the gateway's resume grace, s), restored (taken from storage after a reload) }
  let resumable = null;
  let sessionId = null; // the current (or just ended) session's id, from its hello
  let status = { state: "connecting", text: "connecting…" };
  // The time limit's countdown after an expiry warning: { deadline (ms), warning, timer }.
  let countdown = null;
  let leaving = false; // the page is being left (pagehide): the browser closes the socket
  const storage = options.storage ?? null;
  const storageKey = `terminal-proxy.resume ${url}${join ? ` join ${join.session}` : ""}`;
  // Sharing: this link's role and participant id (from hello), the participants, the
  // terminal's size as the gateway says (joiners take it instead of fitting), and the
  // owner's requests waiting for their answer.
  const sharing = { role: null, participant: null, participants: [], size: null };
  const waiting = { invite: [], invitations: [] };

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
    /** End the session (the gateway ends it too: 1000, not resumable). */
    close() {
      if (!session) return;
      session.byPage = true;
      forget();
      if (session.ws.readyState <= WebSocket.OPEN) session.ws.close(1000, "closed by the page");
    },
    /** v1.terminal-proxy: ask for more time (answer through onExtension). */
    extend() {
      sendControl({ type: "extend" });
    },
    get sessionId() { return sessionId; },
    /** "owner" | "writer" | "viewer" once the gateway said (null before, or no sharing). */
    get role() { return sharing.role; },
    get participant() { return sharing.participant; },
    get participants() { return sharing.participants; },
    /** The shared terminal's size {cols, rows} from the gateway (null until it says). */
    get size() { return sharing.size; },
    get joined() { return join !== null; },
    /** Owner: create an invitation. → Promise of {invitation, token, role, expires_in, uses}. */
    invite({ role = "viewer", expiresIn, uses = 1 } = {}) {
      const message = { type: "invite", role, uses };
      if (expiresIn !== undefined) message.expires_in = expiresIn;
      return request("invite", message);
    },
    /** Owner: the open invitations. → Promise of [{invitation, role, expires_in, uses, used}]. */
    invitations() {
      return request("invitations", { type: "invitations" });
    },
    /** Owner: revoke an invitation (the gateway answers with the list: onInvitations). */
    revoke(invitation) {
      sendControl({ type: "revoke", invitation });
    },
    setRole(participant, role) {
      sendControl({ type: "set_role", participant, role });
    },
    remove(participant) {
      sendControl({ type: "remove", participant });
    },
    endSharing() {
      sendControl({ type: "end_sharing" });
    },
    /** Owner: hand size control to a writer (null: back to the owner). */
    sizeControl(participant) {
      sendControl({ type: "size_control", participant: participant ?? null });
    },
    /** The link that joins this session through `invitation` (the token stays in the fragment). */
    joinLink(invitation, page = window.location.href) {
      return joinLink(page, { session: sessionId, invitation: invitation.invitation, token: invitation.token });
    },
    reconnect() {
      detach();
      term.reset();
      connect();
    },
    /** Give the session up for good (e.g. the sign-in is gone): no more resume attempts;
     *  `text` goes into the terminal and the status line. */
    abandon(text) {
      const old = session;
      if (resumable) clearTimeout(resumable.timer);
      resumable = null;
      forget();
      stopCountdown();
      if (old && old.ws.readyState <= WebSocket.OPEN) {
        session = null;
        old.ws.close(1000, "closed by the page");
      }
      handle.notice(text);
      setStatus({ state: "closed", text });
    },
    /** Write one dim line into the terminal, on a line of its own. */
    notice(text) {
      const newline = term.buffer.active.cursorX > 0 ? "\r\n" : "";
      term.write(`${newline}${DIM}[${text}]${PLAIN}\r\n`);
    },
    dispose() {
      detach();
      clearTimeout(fitTimer);
      window.removeEventListener("resize", scheduleFit);
      window.removeEventListener("pagehide", onPageHide);
      window.removeEventListener("pageshow", onPageShow);
      resizeObserver?.disconnect();
      statusListeners.clear();
      term.dispose();
    },
  };

  function setStatus(next) {
    status = next;
    for (const fn of statusListeners) fn(status);
  }

  // The resume token across reloads: {id, token, sent}, rewritten on every hello (the
  // token is single-use and rotated) and as input is sent; removed when the session ends.
  function remember() {
    if (!storage || !resumable) return;
    try {
      storage.setItem(storageKey, JSON.stringify({ id: resumable.id, token: resumable.token, sent: resumable.sent, participant: resumable.participant }));
    } catch {
      // storage full or disabled: a reload then opens a new session
    }
  }

  function forget() {
    try {
      storage?.removeItem(storageKey);
    } catch {
      // nothing kept
    }
  }

  function restore() {
    try {
      const kept = JSON.parse(storage?.getItem(storageKey) ?? "null");
      if (typeof kept?.id === "string" && typeof kept.token === "string" && Number.isSafeInteger(kept.sent)) {
        return kept;
      }
    } catch {
      // unreadable: start afresh
    }
    forget();
    return null;
  }

  function request(kind, message) {
    return new Promise((resolve, reject) => {
      if (!session?.tp || session.ws.readyState !== WebSocket.OPEN || session.resume) {
        reject(new Error("not connected"));
        return;
      }
      waiting[kind].push({ resolve, reject });
      sendControl(message);
    });
  }

  function settle(kind, value, error) {
    const next = waiting[kind].shift();
    if (!next) return;
    if (error) next.reject(error);
    else next.resolve(value);
  }

  function failWaiting(reason) {
    for (const kind of Object.keys(waiting)) {
      for (const { reject } of waiting[kind].splice(0)) reject(new Error(reason));
    }
  }

  // A joiner shows the shared terminal's size; only the owner (and a writer the owner
  // handed size control to, which the gateway decides) fits its window.
  function fitsItself() {
    return sharing.role === "owner" || (!join && sharing.role === null);
  }

  function applySize(cols, rows) {
    sharing.size = { cols, rows };
    if (!fitsItself() && (term.cols !== cols || term.rows !== rows)) term.resize(cols, rows);
  }

  function setRole(role) {
    sharing.role = role;
    term.options.disableStdin = role === "viewer";
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
      remember();
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
    if (sharing.role === "viewer") return; // the gateway would refuse it
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

  // The time limit: a countdown in the status line, and one line in the terminal.
  function startCountdown(warning) {
    stopCountdown();
    countdown = { deadline: Date.now() + warning.expires_in * 1000, warning, timer: 0 };
    const extend = warning.extendable ? ": Extend keeps it open" : "";
    handle.notice(`this session ends in ${formatSeconds(warning.expires_in)} (time limit)${extend}`);
    tickCountdown();
  }

  function tickCountdown() {
    if (!countdown) return;
    clearTimeout(countdown.timer);
    if (status.state !== "open") return;
    const left = (countdown.deadline - Date.now()) / 1000;
    setStatus({ ...status, text: `session ends in ${formatSeconds(left)}`, expiry: countdown.warning });
    const untilNext = (countdown.deadline - Date.now()) % 1000; // when the shown second changes
    countdown.timer = setTimeout(tickCountdown, untilNext > 0 ? untilNext + 5 : 1000);
  }

  function stopCountdown() {
    if (countdown) clearTimeout(countdown.timer);
    countdown = null;
  }

  function openStatus(resumed) {
    const text = resumed ? "connected (resumed)" : "connected";
    setStatus({ state: "open", text, protocol: session.ws.protocol, resumed });
    tickCountdown();
  }

  function onControl(message) {
    switch (message.type) {
      case "hello": {
        const resumed = message.resumed && resumable?.id === message.session;
        if (!resumed) {
          resumable = { id: message.session, token: message.token, received: 0, acked: 0, sent: 0, input: [] };
        }
        resumable.token = message.token;
        resumable.grace = message.resume_grace ?? null;
        sessionId = message.session;
        if (message.participant) resumable.participant = message.participant;
        sharing.participant = message.participant ?? null;
        if (message.role) {
          const changed = sharing.role !== message.role;
          setRole(message.role);
          if (changed) options.onRole?.({ role: message.role });
        }
        if (message.reset) {
          // Output was lost while away: start clean where the gateway's kept bytes begin.
          term.reset();
          session.decoders[STDOUT] = new TextDecoder();
          handle.notice(resumable.restored ? "resumed: earlier output is no longer kept" : "reconnected: some output was lost");
        }
        resumable.received = message.offset;
        resumable.acked = message.offset;
        if (resumed) {
          resumable.attempt = 0;
          resumable.since = 0;
          trimInput(message.input);
          // Input the page no longer holds (a reload) is gone: count on from the gateway's.
          if (resumable.input.length === 0) resumable.sent = message.input;
          session.resume = false;
          for (const { bytes } of resumable.input) session.ws.send(bytes);
          if (fitsItself()) sendSize();
          if (resumable.restored) {
            resumable.restored = false;
            term.focus();
            options.onOpen?.({ protocol: session.ws.protocol });
          }
          openStatus(true);
          options.onResume?.({ session: message.session, reset: message.reset });
        }
        remember();
        break;
      }
      case "exit":
        reportExit(message.code, message.code === null ? message.reason || "the command failed" : `exit code ${message.code}`);
        break;
      case "expiry":
        startCountdown(message);
        options.onExpiry?.(message);
        break;
      case "extension":
        if (message.granted) stopCountdown();
        options.onExtension?.(message);
        break;
      case "ack":
        if (resumable) trimInput(message.input);
        break;
      case "screen":
        // The screen as the owner sees it: output after it counts from message.offset.
        term.reset();
        applySize(message.cols, message.rows);
        term.write(message.data ?? "");
        session.decoders[STDOUT] = new TextDecoder();
        if (resumable) {
          resumable.received = message.offset ?? resumable.received;
          resumable.acked = resumable.received;
        }
        options.onScreen?.({ cols: message.cols, rows: message.rows, offset: message.offset });
        break;
      case "size":
        applySize(message.cols, message.rows);
        options.onSize?.({ cols: message.cols, rows: message.rows });
        break;
      case "participants":
        sharing.participants = Array.isArray(message.items) ? message.items : [];
        options.onParticipants?.(sharing.participants);
        break;
      case "role":
        setRole(message.role);
        if (message.role === "owner") scheduleFit();
        options.onRole?.({ role: message.role });
        break;
      case "refused":
        if (message.request === "invite" || message.request === "invitations") {
          settle(message.request, null, new Error(message.reason || "refused"));
        }
        options.onRefused?.({ request: message.request, reason: message.reason });
        break;
      case "invitation":
        settle("invite", message);
        options.onInvitation?.(message);
        break;
      case "invitations": {
        const items = Array.isArray(message.items) ? message.items : [];
        settle("invitations", items);
        options.onInvitations?.(items);
        break;
      }
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
        const keep = storage ? KEEP_FOR_RELOAD : 0;
        if (resumable.received - keep - resumable.acked >= ACK_EVERY) {
          resumable.acked = resumable.received - keep;
          sendControl({ type: "ack", received: resumable.acked });
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
        reportExit(code, `exit code ${code}`);
      } else {
        term.write(`\r\n${RED}${message}${PLAIN}\r\n`);
        setStatus({ state: "open", text: `error: ${message}` });
      }
    }
  }

  function onClose(ws, event) {
    const within = () => Date.now() - resumable.since < Math.min(RESUME_FOR_MS, (resumable.grace ?? Infinity) * 1000);
    if (leaving && resumable && !session.byPage) {
      // The browser closed the socket because the page is being left (1001): the gateway
      // keeps the session for its resume grace, and the stored token brings it back.
      remember();
      const grace = resumable.grace ? ` for ${formatSeconds(resumable.grace)}` : "";
      setStatus({ state: "connecting", text: `disconnected: this terminal can be resumed${grace}`, detached: true });
      return;
    }
    if (session.tp && resumable && !session.resume && event.code === 1006 && !session.exitReported) {
      // The connection dropped (no close frame): the session waits for us on the gateway.
      resumeLater(event);
      return;
    }
    if (resumable && session.resume && (event.code === 1006 || TRY_LATER.has(event.code)) && within()) {
      resumeLater(event);
      return;
    }
    if (resumable?.restored && session.resume && event.code >= 4006 && event.code <= 4010) {
      // The session kept from before a reload is gone: say so and open a new one.
      const text = describeClose({ code: event.code, reason: event.reason, opened: true });
      forget();
      handle.notice(`the previous session could not be resumed (${text}); opening a new one`);
      resumable = null;
      connect();
      return;
    }
    resumable = null;
    forget();
    stopCountdown();
    failWaiting(`closed (${event.code})`);
    for (const stream of [STDOUT, STDERR]) term.write(session.decoders[stream].decode());
    const exitCode = handle.lastExit?.code ?? exitCodeFromReason(event.reason);
    if (exitCode !== null) reportExit(exitCode, `exit code ${exitCode}`);
    const closed = { code: event.code, reason: event.reason, exitCode, opened: session.opened, byPage: !!session.byPage };
    const text = describeClose(closed);
    handle.lastClose = closed;
    // After the session's last output: a dim line (on a line of its own), then hide the cursor.
    const ended = session;
    term.write("", () => {
      if (session !== ended) return; // reconnect() has reset the terminal meanwhile
      handle.notice(text);
      term.write("\x1b[?25l");
    });
    setStatus({ state: "closed", text, ...closed });
    options.onClose?.(closed);
  }

  function resumeLater(event) {
    if (!resumable.since) resumable.since = Date.now();
    const attempt = (resumable.attempt = (resumable.attempt ?? 0) + 1);
    const delay = Math.max(backoffDelay(attempt), retryAfterMs(event?.reason) ?? 0);
    setStatus({ state: "connecting", text: "connection lost; reconnecting…", retryIn: delay });
    options.onRetry?.({ attempt, code: event?.code, opened: !!session?.opened, delay });
    const waiting = resumable;
    clearTimeout(resumable.timer);
    resumable.timer = setTimeout(() => { if (resumable === waiting) connect(waiting); }, delay);
  }

  function connect(resume = null) {
    const target = resume ? withQuery(url, resumeQuery(resume)) : openURL;
    const ws = new WebSocket(target, resume ? [TERMINAL_PROXY] : protocols);
    ws.binaryType = "arraybuffer";
    const decoders = resume && session ? session.decoders : { [STDOUT]: new TextDecoder(), [STDERR]: new TextDecoder() };
    session = { ws, kubernetes: false, tp: false, decoders, opened: false, exitReported: false, resume: !!resume, byPage: false };
    if (!resume) {
      resumable = null;
      sessionId = null;
      sharing.role = null;
      sharing.participant = null;
      sharing.participants = [];
      handle.lastExit = null;
      handle.lastClose = null;
      stopCountdown();
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
      // An invitation join proves the token in its first message (never in the URL).
      if (join?.token) ws.send(JSON.stringify({ type: "join", token: join.token }));
      if (!join) sendSize();
      term.focus();
      openStatus(false);
      options.onOpen?.({ protocol: ws.protocol });
    });
    ws.onmessage = mine(onMessage);
    ws.onclose = mine(onClose);
    if (!resume || !status.text.startsWith("connection lost")) setStatus({ state: "connecting", text: "connecting…" });
  }

  function detach() {
    const old = session;
    session = null;
    if (resumable) clearTimeout(resumable.timer);
    resumable = null;
    forget();
    stopCountdown();
    if (old && old.ws.readyState <= WebSocket.OPEN) old.ws.close(1000, "reconnecting");
  }

  // Leaving the page (reload, navigation, closing the tab): keep the token for the next
  // load; the browser's own 1001 close detaches the session on the gateway. A page that
  // comes back from the back/forward cache resumes where it was.
  function onPageHide() {
    leaving = true;
    remember();
  }
  function onPageShow(event) {
    if (!event.persisted) return;
    leaving = false;
    if (resumable && session && session.ws.readyState > WebSocket.OPEN) connect(resumable);
  }
  window.addEventListener("pagehide", onPageHide);
  window.addEventListener("pageshow", onPageShow);

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
    fitTimer = setTimeout(() => { if (term.element?.isConnected && fitsItself()) fit.fit(); }, 50);
  }
  window.addEventListener("resize", scheduleFit);
  const resizeObserver = typeof ResizeObserver === "function" ? new ResizeObserver(scheduleFit) : null;
  resizeObserver?.observe(container);
  document.fonts?.ready.then(scheduleFit);

  const kept = restore();
  if (kept) {
    // A reload (or a reopened tab): resume the kept session from the start of its output.
    resumable = { id: kept.id, token: kept.token, received: 0, acked: 0, sent: kept.sent, input: [], since: Date.now(), attempt: 0, restored: true, participant: kept.participant };
    sessionId = kept.id;
    connect(resumable);
  } else {
    connect();
  }
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

function normaliseJoin(join) {
  if (!join) return null;
  if (typeof join === "string") return { session: join };
  if (typeof join.session !== "string" || !join.session) throw new Error("join needs a session id");
  if (join.invitation && typeof join.token !== "string") throw new Error("an invitation join needs its token");
  return { session: join.session, invitation: join.invitation ?? null, token: join.invitation ? join.token : null };
}

function withQuery(url, query) {
  return `${url}${url.includes("?") ? "&" : "?"}${query}`;
}

function joinQuery(join) {
  const invitation = join.invitation ? `&invitation=${encodeURIComponent(join.invitation)}` : "";
  return `join=${encodeURIComponent(join.session)}${invitation}`;
}

function resumeQuery(resume) {
  const participant = resume.participant ? `&participant=${encodeURIComponent(resume.participant)}` : "";
  return `resume=${encodeURIComponent(resume.id)}${participant}`;
}
