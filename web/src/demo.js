/**
 * demo.js: the glue of terminal-proxy's demo page (terminal_proxy/web/index.html).
 *
 * Connects the terminal in #terminal to the WebSocket path in its data-ws-path attribute,
 * mirrors the session's status into #status (and data-state on <body>, for styling), and
 * lets #reconnect open a fresh session. Tests read window.terminalProxy:
 * { term, handle, lastExit, lastClose } (lastExit/lastClose are those of the current session).
 */
import "@xterm/xterm/css/xterm.css";
import "./demo.css";
import { connectTerminal } from "./terminal-client.js";

const container = document.getElementById("terminal");
const statusLine = document.getElementById("status");
const reconnectButton = document.getElementById("reconnect");

const handle = connectTerminal(container, { path: container.dataset.wsPath || "/demo/terminal.ws" });

handle.onStatus((status) => {
  statusLine.textContent = status.text;
  document.body.dataset.state = status.state;
});
reconnectButton.addEventListener("click", () => handle.reconnect());

window.terminalProxy = {
  term: handle.term,
  handle,
  get lastExit() { return handle.lastExit; },
  get lastClose() { return handle.lastClose; },
};
