/**
 * join-link.js: the link that joins a shared terminal through an invitation
 * (docs/sharing.md). No DOM, no xterm.js: tests run it under Node.
 */

/**
 * `<page>#join=<session>.<invitation>.<token>`: a URL fragment, so the token never reaches
 * a server or a log. Session ids may contain dots; invitation ids and tokens do not.
 */
export function joinLink(page, { session, invitation, token }) {
  const base = String(page).split("#")[0];
  return `${base}#join=${encodeURIComponent(session)}.${encodeURIComponent(invitation)}.${encodeURIComponent(token)}`;
}

/** The join in a location hash ("#join=s.i.t") → {session, invitation, token}, else null. */
export function parseJoinFragment(hash) {
  const match = /^#?join=(.+)\.([^.]+)\.([^.]+)$/.exec(hash ?? "");
  if (!match) return null;
  try {
    return { session: decodeURIComponent(match[1]), invitation: decodeURIComponent(match[2]), token: decodeURIComponent(match[3]) };
  } catch {
    return null;
  }
}
