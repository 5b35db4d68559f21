/**
 * demo.js: the glue of terminal-proxy's demo page (terminal_proxy/web/index.html).
 *
 * Connects the terminal in #terminal to the WebSocket path in its data-ws-path attribute,
 * keeping the resume token in sessionStorage (a reload resumes the same shell), mirrors
 * the session's status into #status (and data-state on <body>, for styling), and lets
 * #reconnect open a fresh session. When the gateway warns that the session's time limit
 * is near and an extension is possible, #extend asks for one; the answer goes to #status.
 * When a session cannot go on because the sign-in is gone (the demo restarted: its
 * sign-ins live in memory), the page says so and how to get a new link.
 * Tests read window.terminalProxy:
 * { term, handle, lastExit, lastClose } (lastExit/lastClose are those of the current session).
 */
import "@xterm/xterm/css/xterm.css";
import "./demo.css";
import { connectTerminal } from "./terminal-client.js";

const container = document.getElementById("terminal");
const statusLine = document.getElementById("status");
const reconnectButton = document.getElementById("reconnect");
const extendButton = document.getElementById("extend");
const SIGNED_OUT =
  "your sign-in is no longer valid (the demo was restarted): open the new login link " +
  "that `terminal-proxy demo` printed in its terminal";

function sessionStore() {
  try {
    return window.sessionStorage;
  } catch {
    return null; // storage disabled: a reload opens a new session
  }
}

/** After a close that may mean "not signed in": ask the page's own URL (401 when not). */
async function checkSignIn() {
  let response;
  try {
    response = await fetch("/", { method: "HEAD", cache: "no-store", credentials: "same-origin" });
  } catch {
    return; // the demo is not running: the close already says "could not connect"
  }
  if (response.status !== 401 || document.body.dataset.signedOut) return;
  document.body.dataset.signedOut = "true";
  handle.abandon(SIGNED_OUT);
}

const handle = connectTerminal(container, {
  path: container.dataset.wsPath || "/demo/terminal.ws",
  storage: sessionStore(),
  onExpiry(warning) {
    extendButton.hidden = !warning.extendable;
  },
  onExtension(answer) {
    extendButton.hidden = true;
    extendButton.disabled = false;
    statusLine.textContent = answer.granted
      ? `extended: session ends in ${Math.round(answer.expires_in)} s`
      : `not extended: ${answer.reason || "refused"}`;
  },
  onRetry({ attempt, opened }) {
    if (!opened && attempt >= 2) checkSignIn(); // resumes refused before the upgrade
  },
  onClose(closed) {
    if (closed.code === 4008 || (closed.code === 1006 && !closed.opened)) checkSignIn();
  },
});

handle.onStatus((status) => {
  statusLine.textContent = status.text;
  document.body.dataset.state = status.state;
  if (status.state !== "open") extendButton.hidden = true;
});
reconnectButton.addEventListener("click", () => {
  delete document.body.dataset.signedOut;
  handle.reconnect();
});
extendButton.addEventListener("click", () => {
  extendButton.disabled = true;
  handle.extend();
});

window.terminalProxy = {
  term: handle.term,
  handle,
  get lastExit() { return handle.lastExit; },
  get lastClose() { return handle.lastClose; },
};
