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
 * Sharing (docs/sharing.md): the owner's #share opens #sharing, where a viewer or writer
 * invitation becomes a join link (`<page URL>#join=<session>.<invitation>.<token>`, copied
 * to the clipboard), the participants are listed with role and remove controls, and
 * #end-sharing ends it all. A page opened with such a link joins that session; a viewer's
 * page shows #readonly. <body data-role="owner|writer|viewer"> (and data-joined) for styling.
 * Tests read window.terminalProxy:
 * { term, handle, lastExit, lastClose, role, participants, lastInvitation, lastRefused }
 * (lastExit/lastClose are those of the current session).
 */
import "@xterm/xterm/css/xterm.css";
import "./demo.css";
import { connectTerminal, parseJoinFragment } from "./terminal-client.js";
import { backoffDelay } from "./close-codes.js";

const container = document.getElementById("terminal");
const statusLine = document.getElementById("status");
const reconnectButton = document.getElementById("reconnect");
const extendButton = document.getElementById("extend");
const shareButton = document.getElementById("share");
const sharingPanel = document.getElementById("sharing");
const readOnlyMark = document.getElementById("readonly");
const participantList = document.getElementById("participants");
const inviteRole = document.getElementById("invite-role");
const inviteMulti = document.getElementById("invite-multi");
const inviteButton = document.getElementById("invite");
const inviteResult = document.getElementById("invite-result");
const inviteLink = document.getElementById("invite-link");
const inviteNote = document.getElementById("invite-note");
const copyButton = document.getElementById("copy-link");
const endSharingButton = document.getElementById("end-sharing");
// A link from someone's Share button: join their session instead of opening one.
const joining = parseJoinFragment(window.location.hash);
let lastInvitation = null;
let lastRefused = null;
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
  join: joining ?? undefined,
  onRole({ role }) {
    showRole(role);
  },
  onParticipants(items) {
    showParticipants(items);
  },
  onRefused(refused) {
    lastRefused = refused;
    if (refused.request === "input") statusLine.textContent = refused.reason;
  },
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
    shareButton.hidden = true;
    sharingPanel.hidden = true;
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

if (joining) document.body.dataset.joined = "true";

function showRole(role) {
  document.body.dataset.role = role;
  readOnlyMark.hidden = role !== "viewer";
  shareButton.hidden = role !== "owner";
  if (role !== "owner") sharingPanel.hidden = true;
  showParticipants(handle.participants);
}

function since(seconds) {
  return new Date(seconds * 1000).toLocaleTimeString([], { hour: "2-digit", minute: "2-digit" });
}

function showParticipants(items) {
  const owner = handle.role === "owner";
  participantList.replaceChildren(
    ...items.map((item) => {
      const li = document.createElement("li");
      li.dataset.participant = item.participant;
      const name = document.createElement("span");
      name.className = "user";
      name.textContent = item.participant === handle.participant ? `${item.user} (you)` : item.user;
      const role = document.createElement("span");
      role.className = "role";
      role.textContent = `${item.role} since ${since(item.since)}`;
      li.append(name, role);
      if (owner && item.role !== "owner") {
        const toggle = document.createElement("button");
        toggle.type = "button";
        toggle.className = "set-role";
        const next = item.role === "viewer" ? "writer" : "viewer";
        toggle.textContent = `make ${next}`;
        toggle.addEventListener("click", () => handle.setRole(item.participant, next));
        const remove = document.createElement("button");
        remove.type = "button";
        remove.className = "remove";
        remove.textContent = "remove";
        remove.addEventListener("click", () => handle.remove(item.participant));
        li.append(toggle, remove);
      }
      return li;
    }),
  );
}

async function copy(text) {
  try {
    await navigator.clipboard.writeText(text);
    return true;
  } catch {
    inviteLink.select();
    return document.execCommand("copy");
  }
}

shareButton.addEventListener("click", () => {
  sharingPanel.hidden = !sharingPanel.hidden;
  shareButton.setAttribute("aria-expanded", String(!sharingPanel.hidden));
});
inviteButton.addEventListener("click", async () => {
  inviteButton.disabled = true;
  try {
    const invitation = await handle.invite({ role: inviteRole.value, uses: inviteMulti.checked ? 0 : 1 });
    lastInvitation = { ...invitation, link: handle.joinLink(invitation) };
    inviteLink.value = lastInvitation.link;
    inviteResult.hidden = false;
    const uses = invitation.uses === 0 ? "for several people" : "for one person";
    const copied = await copy(lastInvitation.link);
    inviteNote.textContent = `${invitation.role} link ${uses}, valid ${Math.round(invitation.expires_in / 60)} min${copied ? " (copied)" : ""}`;
  } catch (error) {
    inviteNote.textContent = `no invitation: ${error.message}`;
    inviteResult.hidden = false;
  } finally {
    inviteButton.disabled = false;
  }
});
copyButton.addEventListener("click", async () => {
  if (inviteLink.value) inviteNote.textContent = (await copy(inviteLink.value)) ? "copied" : "select the link and copy it";
});
endSharingButton.addEventListener("click", () => {
  handle.endSharing();
  inviteResult.hidden = true;
});

window.terminalProxy = {
  term: handle.term,
  handle,
  get lastExit() { return handle.lastExit; },
  get lastClose() { return handle.lastClose; },
  get role() { return handle.role; },
  get participants() { return handle.participants; },
  get lastInvitation() { return lastInvitation; },
  get lastRefused() { return lastRefused; },
};
