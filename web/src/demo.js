/**
 * demo.js: the glue of terminal-proxy's demo page (terminal_proxy/web/index.html).
 *
 * Connects the terminal in #terminal to the WebSocket path in its data-ws-path attribute,
 * mirrors the session's status into #status (and data-state on <body>, for styling), and
 * lets #reconnect open a fresh session. When the gateway warns that the session's time
 * limit is near and an extension is possible, #extend asks for one; the answer goes to
 * #status. Tests read window.terminalProxy:
 * { term, handle, lastExit, lastClose } (lastExit/lastClose are those of the current session).
 */
import "@xterm/xterm/css/xterm.css";
import "./demo.css";
import { connectTerminal } from "./terminal-client.js";

const container = document.getElementById("terminal");
const statusLine = document.getElementById("status");
const reconnectButton = document.getElementById("reconnect");
const extendButton = document.getElementById("extend");

const handle = connectTerminal(container, {
  path: container.dataset.wsPath || "/demo/terminal.ws",
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
});

handle.onStatus((status) => {
  statusLine.textContent = status.text;
  document.body.dataset.state = status.state;
  if (status.state !== "open") extendButton.hidden = true;
});
reconnectButton.addEventListener("click", () => handle.reconnect());
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
