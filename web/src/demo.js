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
import { backoffDelay } from "./close-codes.js";

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

/** Is this page still signed in? true / false (401) / null (the demo is not answering). */
async function signedIn() {
  try {
    const response = await fetch("/", { method: "HEAD", cache: "no-store", credentials: "same-origin" });
    return response.status !== 401;
  } catch {
    return null;
  }
}

/** After a close that may mean "not signed in": say so when the demo answers 401. */
async function checkSignIn() {
  if ((await signedIn()) !== false || document.body.dataset.signedOut) return;
  document.body.dataset.signedOut = "true";
  handle.abandon(SIGNED_OUT);
}

/** The demo stopped (1001): once it answers again (backing off meanwhile, for up to
 *  10 minutes), a restarted demo has forgotten this sign-in; say how to get a new one. */
async function watchForRestart(generation) {
  const until = Date.now() + 10 * 60 * 1000;
  for (let attempt = 1; Date.now() < until && generation === closes; attempt++) {
    await new Promise((resolve) => setTimeout(resolve, backoffDelay(attempt)));
    const answer = await signedIn();
    if (answer === null) continue;
    if (answer === false && generation === closes) checkSignIn();
    return;
  }
}
let closes = 0; // a Reconnect (or a later close) stops an older watch

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
    closes += 1;
    if (closed.code === 4008 || (closed.code === 1006 && !closed.opened)) checkSignIn();
    if (closed.code === 1001) watchForRestart(closes);
  },
});

handle.onStatus((status) => {
  statusLine.textContent = status.text;
  document.body.dataset.state = status.state;
  if (status.state !== "open") extendButton.hidden = true;
});
reconnectButton.addEventListener("click", () => {
  closes += 1;
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
