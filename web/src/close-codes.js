/**
 * close-codes.js: how terminal-client.js words a session's end, and how long it waits
 * before trying again. No DOM, no xterm.js: tests run it under Node.
 *
 * CLOSE_TEXT is the one table of human text for the gateway's close codes
 * (docs/close-codes.md; tests/test_web_client.py checks it covers every code there).
 */

// Human text per close code. Where the gateway's reason says more than the code (the
// part after "…: "), DETAILED codes add it.
export const CLOSE_TEXT = Object.freeze({
  1000: "session ended",
  1001: "the server is shutting down",
  1002: "protocol error",
  1009: "a message was too big",
  1011: "internal error on the server",
  1013: "the server is busy; try again later",
  1014: "the terminal's backend failed",
  4001: "access revoked",
  4002: "connection details changed",
  4003: "authorization is unavailable",
  4004: "session time limit reached",
  4005: "closed after being idle",
  4006: "this terminal was opened in another tab or window",
  4007: "the session ended: it was not resumed in time",
  4008: "this session no longer exists",
  4009: "this terminal's resume token is no longer valid",
  4010: "resume refused",
  4011: "the session could not be recorded",
  4012: "removed by the owner",
  4013: "sharing ended by the owner",
});
const DETAILED = new Set([1002, 1014, 4010]);
// Closes of a resuming socket after which the same resume may work later: the session is
// still there, the gateway could not check the resume just now.
export const TRY_LATER = Object.freeze(new Set([1013, 4003]));

/** The exit code in a close reason "exit code N", else null. */
export function exitCodeFromReason(reason) {
  const match = /^exit code (\d+)$/.exec(reason ?? "");
  return match ? Number(match[1]) : null;
}

/**
 * One line for a status bar / the terminal about how a session ended:
 * { code, reason, exitCode, opened, byPage } → "session ended: exit code 3",
 * "session time limit reached", "connection lost", …
 */
export function describeClose({ code, reason, exitCode, opened, byPage }) {
  if (exitCode !== null && exitCode !== undefined) return `session ended: exit code ${exitCode}`;
  if (byPage) return "session closed";
  if (code === 1006) return opened ? "connection lost" : "could not connect (the gateway refused or is unreachable)";
  if (code === 4009 && /^join refused/.test(reason ?? "")) return "join refused: the invitation link is not valid";
  const text = CLOSE_TEXT[code];
  if (text === undefined) return `${reason || "connection closed"} (${code})`;
  const detail = DETAILED.has(code) ? /^[^:]*: (.+)$/.exec(reason ?? "")?.[1] : undefined;
  return detail ? `${text}: ${detail}` : text;
}

/** "59 s", "4:05", "1:02:03": a countdown's seconds left. */
export function formatSeconds(seconds) {
  const s = Math.max(0, Math.ceil(seconds));
  if (s < 60) return `${s} s`;
  const pad = (n) => String(n).padStart(2, "0");
  const h = Math.floor(s / 3600), m = Math.floor((s % 3600) / 60);
  return h ? `${h}:${pad(m)}:${pad(s % 60)}` : `${m}:${pad(s % 60)}`;
}

// Reconnect back-off: 0.5 s doubling to a cap of 10 s, each wait drawn uniformly from
// [half, all] of that ("equal jitter"), so a gateway restart does not see every page
// come back in the same instant.
export const BACKOFF_FIRST_MS = 500;
export const BACKOFF_CAP_MS = 10_000;

/** The wait before reconnect attempt `attempt` (1, 2, …), in ms; `random` ∈ [0, 1). */
export function backoffDelay(attempt, random = Math.random) {
  const base = Math.min(BACKOFF_CAP_MS, BACKOFF_FIRST_MS * 2 ** Math.max(0, attempt - 1));
  return base / 2 + random() * (base / 2);
}

/**
 * The wait a close asks for, in ms, else null: a reason "… retry after N s" / "try again
 * in N s" (the gateway's 429/503 Retry-After, where it reaches the page; the WebSocket API
 * hides a refused handshake's status and headers, so those get the back-off alone).
 */
export function retryAfterMs(reason) {
  const match = /(?:retry after|try again in) (\d+(?:\.\d+)?) ?s\b/i.exec(reason ?? "");
  return match ? Math.min(Number(match[1]) * 1000, 5 * 60 * 1000) : null;
}
