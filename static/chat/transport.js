/*
 * The chat socket: one at a time, reconnected with backoff and jitter, every frame in and
 * out as JSON. What to send when it opens (pending chat.send frames, a resume) is asked of
 * the caller each time, so nothing is lost across a reconnect.
 */

// The session ended (logout, password change, deactivation) on this or another worker.
// Every other close reconnects: 4008 (this tab fell too far behind a reply) and 4012 (the
// server is restarting) included; the frames onOpen returns then resume from the last seq.
const SESSION_ENDED = 4401;

function socketUrl() {
  const scheme = window.location.protocol === "https:" ? "wss:" : "ws:";
  return `${scheme}//${window.location.host}/ws/chat/`;
}

/**
 * onOpen(reconnected) returns the frames to send on the new socket; onFrame(frame) gets each
 * frame received; onStatus(status) hears "connecting", "connected", "reconnecting" or
 * "offline"; signedIn() resolves false when the session is gone (and the page is leaving).
 */
export function createTransport({ onOpen, onFrame, onStatus, signedIn }) {
  let ws = null;
  let attempts = 0;
  let timer = null;
  let opened = false;
  let closed = false;

  function send(frame) {
    if (ws && ws.readyState === WebSocket.OPEN) {
      ws.send(JSON.stringify(frame));
      return true;
    }
    return false; // chat.send frames stay pending and go out again on reconnect
  }

  function connect() {
    clearTimeout(timer);
    timer = null;
    if (ws || closed) return;
    onStatus(opened ? "reconnecting" : "connecting");
    const socket = new WebSocket(socketUrl());
    ws = socket;
    socket.addEventListener("open", () => {
      const reconnected = opened;
      opened = true;
      attempts = 0;
      onStatus("connected");
      for (const frame of onOpen(reconnected)) send(frame);
    });
    socket.addEventListener("message", (event) => {
      let frame;
      try {
        frame = JSON.parse(event.data);
      } catch (_error) {
        return;
      }
      if (frame && typeof frame.type === "string") onFrame(frame);
    });
    socket.addEventListener("close", (event) => {
      if (ws !== socket) return;
      ws = null;
      if (event.code === SESSION_ENDED) {
        // Logged out (here or in another tab), or the account changed: the API says whether
        // we are still signed in (a 401 sends the page to the login form); if so, reconnect.
        onStatus("reconnecting");
        signedIn().then((yes) => {
          if (yes) scheduleReconnect();
        });
        return;
      }
      scheduleReconnect();
    });
  }

  function scheduleReconnect() {
    if (closed) return;
    attempts += 1;
    const offline = navigator.onLine === false || attempts > 4;
    onStatus(offline ? "offline" : "reconnecting");
    if (attempts === 3) {
      // A refused handshake looks like a network failure; ask the API whether we are
      // still logged in (a 401 sends the page to the login form).
      signedIn();
    }
    // Exponential backoff with jitter so many tabs do not reconnect in lockstep.
    const base = Math.min(30000, 500 * 2 ** (attempts - 1));
    const delay = base * (0.75 + Math.random() * 0.5);
    timer = setTimeout(connect, delay);
  }

  /** Close for good: the page is leaving (logging out), so a closing socket means nothing. */
  function close() {
    closed = true;
    clearTimeout(timer);
    if (ws) {
      const socket = ws;
      ws = null;
      socket.close(1000);
    }
  }

  window.addEventListener("online", () => {
    if (closed) return;
    if (ws && ws.readyState === WebSocket.OPEN) {
      onStatus("connected"); // the socket lived through it
    } else if (!ws) {
      attempts = 0;
      connect(); // no need to wait out the backoff: the network is back
    }
  });
  window.addEventListener("offline", () => onStatus("offline"));

  return { connect, send, close };
}
