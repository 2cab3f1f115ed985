// The page's protocol state, driven frame by frame as the server sends them:
// `node --test static/chat/tests/`. Each test reads what a user would see.
import assert from "node:assert/strict";
import { test } from "node:test";

import * as chat from "../state.js";

const A = "aaaaaaaa-0000-4000-8000-000000000001";
const B = "bbbbbbbb-0000-4000-8000-000000000002";
const REPLY = "99999999-0000-4000-8000-000000000009";
const SAVED_USER = "11111111-0000-4000-8000-000000000001";

/** The messages on screen: who, what text, which status badge. */
function shown(state) {
  return state.messages.map((m) => ({ role: m.role, text: m.content, status: m.status }));
}

function lastReply(state) {
  const replies = shown(state).filter((m) => m.role === "assistant");
  return replies[replies.length - 1];
}

function effectsOf(effects, type) {
  return effects.filter((effect) => effect.type === type);
}

/** Conversation A open, with one earlier exchange, and the list holding A and B. */
function openA() {
  const state = chat.createState();
  chat.listLoaded(state, "", [
    { id: B, title: "Tides", persona: "pirate" },
    { id: A, title: "Bread", persona: "assistant" },
  ]);
  chat.openConversation(state, A);
  const resume = chat.conversationLoaded(state, A, {
    id: A,
    title: "Bread",
    persona: "assistant",
    messages: [
      { id: "u0", role: "user", content: "Hi", status: "complete" },
      { id: "r0", role: "assistant", content: "Hello!", status: "complete" },
    ],
  });
  assert.deepEqual(resume, { type: "chat.resume", conversation_id: A, after_seq: 0 });
  return state;
}

/** Send `content` in the open conversation; the server accepts it with reply REPLY. */
function sendAndAccept(state, content = "How long to proof?") {
  const { frame } = chat.compose(state, { content, clientId: "c1", persona: null, maxChars: 100 });
  chat.receive(state, {
    type: "chat.accepted",
    conversation_id: state.currentId,
    client_id: frame.client_id,
    user_message_id: SAVED_USER,
    message_id: REPLY,
    persona: "assistant",
  });
  return frame;
}

function delta(seq, text, conversationId = A, messageId = REPLY) {
  return { type: "chat.delta", conversation_id: conversationId, message_id: messageId, seq, text };
}

test("deltas out of order and repeated show each piece once, in seq order", () => {
  const state = openA();
  sendAndAccept(state);
  assert.deepEqual(lastReply(state), { role: "assistant", text: "", status: "streaming" });
  assert.equal(chat.isGenerating(state), true, "Stop replaces Send");

  chat.receive(state, delta(2, "world"));
  assert.equal(lastReply(state).text, "", "nothing shown past a gap");
  assert.deepEqual(chat.gapResume(state), { type: "chat.resume", conversation_id: A, after_seq: 0 });

  for (const [seq, text] of [[1, "Hello "], [1, "Hello "], [3, "!"], [2, "world"], [3, "!"]]) {
    chat.receive(state, delta(seq, text));
  }
  assert.deepEqual(lastReply(state), { role: "assistant", text: "Hello world!", status: "streaming" });
  assert.equal(chat.gapResume(state), null, "no gap left to ask about");
  assert.equal(shown(state).filter((m) => m.role === "assistant").length, 2);
});

test("a replay after resume that overlaps what was seen adds only the new text", () => {
  const state = openA();
  sendAndAccept(state);
  ["one ", "two ", "three "].forEach((text, i) => chat.receive(state, delta(i + 1, text)));

  // The socket dropped and came back: it resumes after the last contiguous seq it has.
  const { frames, reload } = chat.socketOpened(state, true);
  assert.equal(reload, null, "a reply in view is resumed, not reloaded");
  assert.deepEqual(frames, [{ type: "chat.resume", conversation_id: A, after_seq: 3 }]);

  // The server replays from a little earlier than asked.
  ["two ", "three ", "four ", "five"].forEach((text, i) => chat.receive(state, delta(i + 2, text)));
  assert.equal(lastReply(state).text, "one two three four five");
});

test("a reload mid-reply resumes from seq 0 and shows the reply once", () => {
  const state = chat.createState();
  chat.openConversation(state, A);
  const resume = chat.conversationLoaded(state, A, {
    id: A,
    title: "Bread",
    persona: "assistant",
    messages: [{ id: SAVED_USER, role: "user", content: "Why?", status: "complete" }],
  });
  assert.deepEqual(resume, { type: "chat.resume", conversation_id: A, after_seq: 0 });
  chat.receive(state, { type: "chat.accepted", conversation_id: A, user_message_id: SAVED_USER, message_id: REPLY, persona: "assistant", content: "Why?" });
  ["Be", "cause", "."].forEach((text, i) => chat.receive(state, delta(i + 1, text)));
  assert.deepEqual(shown(state), [
    { role: "user", text: "Why?", status: "complete" },
    { role: "assistant", text: "Because.", status: "streaming" },
  ]);
});

test("chat.idle while a reply was shown as streaming reloads what was saved, once", () => {
  const state = openA();
  sendAndAccept(state);
  chat.receive(state, delta(1, "Half a rep"));

  // The reply ended while this page was not listening (its frames were dropped).
  const effects = chat.receive(state, { type: "chat.idle", conversation_id: A });
  assert.deepEqual(effects, [{ type: "reload", conversationId: A, afterIdle: true }]);

  // The page reloads the conversation, keeping the view until the answer arrives.
  chat.openConversation(state, A, { keepView: true, afterIdle: true });
  assert.equal(lastReply(state).text, "Half a rep", "the old view stays while loading");
  chat.conversationLoaded(state, A, {
    id: A,
    title: "Bread",
    persona: "assistant",
    messages: [
      { id: SAVED_USER, role: "user", content: "How long to proof?", status: "complete" },
      { id: REPLY, role: "assistant", content: "Half a reply, then it was stopped.", status: "stopped" },
    ],
  });
  assert.deepEqual(lastReply(state), { role: "assistant", text: "Half a reply, then it was stopped.", status: "stopped" });
  assert.equal(chat.isGenerating(state), false, "Send is back");

  // The resume after the reload is answered with idle again: no second reload.
  assert.deepEqual(chat.receive(state, { type: "chat.idle", conversation_id: A }), []);
});

test("chat.idle for a message whose reply was never saved reloads once, not in a loop", () => {
  const state = chat.createState();
  const unanswered = {
    id: A,
    title: "",
    persona: "assistant",
    messages: [{ id: SAVED_USER, role: "user", content: "Hello?", status: "complete" }],
  };
  chat.openConversation(state, A);
  chat.conversationLoaded(state, A, unanswered);
  assert.deepEqual(chat.receive(state, { type: "chat.idle", conversation_id: A }), [
    { type: "reload", conversationId: A, afterIdle: true },
  ]);
  chat.openConversation(state, A, { keepView: true, afterIdle: true });
  chat.conversationLoaded(state, A, unanswered);
  assert.deepEqual(chat.receive(state, { type: "chat.idle", conversation_id: A }), []);
  assert.deepEqual(shown(state), [{ role: "user", text: "Hello?", status: "complete" }]);
  assert.equal(chat.isGenerating(state), false);
});

test("chat.idle with nothing missed changes nothing", () => {
  const state = openA();
  const before = shown(state);
  assert.deepEqual(chat.receive(state, { type: "chat.idle", conversation_id: A }), []);
  assert.deepEqual(shown(state), before);
  assert.equal(chat.isGenerating(state), false);
});

test("a send while the socket is down is shown as sending and re-sent on reconnect", () => {
  const state = openA();
  const { frame } = chat.compose(state, { content: "  Still there?  ", clientId: "c9", persona: null, maxChars: 100 });
  assert.deepEqual(frame, { type: "chat.send", conversation_id: A, persona: null, content: "Still there?", client_id: "c9" });
  assert.deepEqual(shown(state).at(-1), { role: "user", text: "Still there?", status: "sending" });

  // The first socket opens (or reopens): the pending send goes out again, same client_id.
  let opened = chat.socketOpened(state, false);
  assert.deepEqual(opened.frames, [frame, { type: "chat.resume", conversation_id: A, after_seq: 0 }]);
  opened = chat.socketOpened(state, true);
  assert.deepEqual(opened.frames, [frame], "the same frame, so the server saves it once");
  assert.equal(opened.reload, A, "a reconnect with no reply in view reloads the conversation");

  // The server had saved it before the drop: it answers the re-send by streaming its reply.
  chat.receive(state, delta(1, "Yes.", A, REPLY));
  assert.deepEqual(shown(state).slice(-2), [
    { role: "user", text: "Still there?", status: "complete" },
    { role: "assistant", text: "Yes.", status: "streaming" },
  ]);
  assert.deepEqual(chat.socketOpened(state, true).frames, [{ type: "chat.resume", conversation_id: A, after_seq: 1 }], "nothing pending any more");
});

test("the first message of a new chat gets its conversation id from chat.accepted", () => {
  const state = chat.createState();
  chat.openNew(state);
  assert.equal(chat.pickerVisible(state), true);
  const { frame } = chat.compose(state, { content: "Ahoy", clientId: "c1", persona: "pirate", maxChars: 100 });
  assert.deepEqual(frame, { type: "chat.send", conversation_id: null, persona: "pirate", content: "Ahoy", client_id: "c1" });
  assert.equal(chat.pickerVisible(state), false);
  assert.deepEqual(chat.compose(state, { content: "Again", clientId: "c2", persona: "pirate", maxChars: 100 }), {}, "one first message at a time");

  const effects = chat.receive(state, {
    type: "chat.accepted", conversation_id: B, client_id: "c1", user_message_id: SAVED_USER, message_id: REPLY, persona: "pirate", title: "Ahoy",
  });
  assert.deepEqual(effectsOf(effects, "url"), [{ type: "url", conversationId: B }]);
  assert.equal(state.currentId, B);
  assert.equal(state.title, "Ahoy");
  assert.deepEqual(state.conversations.map((c) => [c.id, c.title]), [[B, "Ahoy"]]);
  assert.deepEqual(shown(state), [
    { role: "user", text: "Ahoy", status: "complete" },
    { role: "assistant", text: "", status: "streaming" },
  ]);
});

test("frames for another conversation (another tab) leave the open one alone and update the list", () => {
  const state = openA();
  const before = shown(state);

  const effects = [
    ...chat.receive(state, { type: "chat.accepted", conversation_id: B, user_message_id: "u9", message_id: "r9", persona: "pirate", content: "Elsewhere" }),
    ...chat.receive(state, delta(1, "Arr", B, "r9")),
    ...chat.receive(state, { type: "conversation.updated", conversation_id: B, title: "Tides and moons" }),
    ...chat.receive(state, { type: "chat.done", conversation_id: B, message_id: "r9", status: "complete", content: "Arr." }),
    ...chat.receive(state, { type: "chat.idle", conversation_id: B }),
    ...chat.receive(state, { type: "chat.error", conversation_id: B, code: "busy", message: "Busy." }),
  ];
  assert.deepEqual(shown(state), before);
  assert.equal(chat.isGenerating(state), false);
  assert.equal(state.title, "Bread");
  assert.deepEqual(effects, [], "no error, no announcement, no reload");
  assert.deepEqual(state.conversations.map((c) => [c.id, c.title]), [[B, "Tides and moons"], [A, "Bread"]]);

  // While a search is shown the list cannot be patched: it asks to be fetched again.
  chat.setQuery(state, "bread");
  assert.deepEqual(chat.receive(state, { type: "conversation.updated", conversation_id: B, title: "x" }), [{ type: "refreshList" }]);
});

test("a message sent from another tab into the open conversation shows with its live reply", () => {
  const state = openA();
  chat.receive(state, { type: "chat.accepted", conversation_id: A, user_message_id: "u2", message_id: REPLY, persona: "assistant", content: "From the phone" });
  chat.receive(state, delta(1, "Got it"));
  assert.deepEqual(shown(state).slice(-2), [
    { role: "user", text: "From the phone", status: "complete" },
    { role: "assistant", text: "Got it", status: "streaming" },
  ]);
  assert.equal(state.conversations[0].id, A, "moved to the top of the list");
});

test("chat.done replaces the streamed text with the saved content, and late deltas are ignored", () => {
  const state = openA();
  sendAndAccept(state);
  chat.receive(state, delta(1, "Abou"));
  chat.receive(state, delta(2, "t an hou"));
  const effects = chat.receive(state, { type: "chat.done", conversation_id: A, message_id: REPLY, status: "complete", content: "About an hour." });
  assert.deepEqual(lastReply(state), { role: "assistant", text: "About an hour.", status: "complete" });
  assert.deepEqual(effectsOf(effects, "announce"), [{ type: "announce", text: "Reply complete." }]);
  assert.equal(chat.isGenerating(state), false);

  chat.receive(state, delta(3, "r, maybe"));
  chat.receive(state, { type: "chat.done", conversation_id: A, message_id: REPLY, status: "stopped", content: "About" });
  assert.deepEqual(lastReply(state), { role: "assistant", text: "About an hour.", status: "complete" });
});

test("chat.done for a failed reply shows the error", () => {
  const state = openA();
  sendAndAccept(state);
  chat.receive(state, delta(1, "Part"));
  chat.receive(state, { type: "chat.done", conversation_id: A, message_id: REPLY, status: "error", content: "Part", error: "The provider refused the request." });
  const reply = state.messages.at(-1);
  assert.deepEqual([reply.content, reply.status, reply.error], ["Part", "error", "The provider refused the request."]);
});

test("chat.error for a pending send takes the message away and gives its text back", () => {
  const state = chat.createState();
  chat.openNew(state);
  chat.compose(state, { content: "Too fast", clientId: "c1", persona: "pirate", maxChars: 100 });
  const effects = chat.receive(state, {
    type: "chat.error", client_id: "c1", conversation_id: null, code: "rate_limited", message: "Slow down.", retry_after: 2.2,
  });
  assert.deepEqual(shown(state), []);
  assert.deepEqual(effects, [
    { type: "refused", text: "Too fast" },
    { type: "error", message: "Slow down. Try again in 3 s." },
  ]);
  assert.equal(chat.pickerVisible(state), true, "the new chat can start again");
  assert.ok(chat.compose(state, { content: "Now", clientId: "c2", persona: "pirate", maxChars: 100 }).frame);
});

test("errors not tied to a send: not_found for the open conversation, others ignored", () => {
  const state = openA();
  assert.deepEqual(chat.receive(state, { type: "chat.error", conversation_id: A, code: "not_found", message: "Not found." }), [
    { type: "error", message: "That conversation does not exist or was deleted." },
  ]);
  assert.deepEqual(chat.receive(state, { type: "chat.error", code: "bad_frame", message: "" }), [
    { type: "error", message: "Something went wrong." },
  ]);
});

test("the composer refuses a message over the limit, counted in characters, and a send mid-reply", () => {
  const state = openA();
  assert.deepEqual(chat.compose(state, { content: "😀".repeat(5), clientId: "c1", persona: null, maxChars: 4 }), {
    error: "That message is too long (5 characters; the limit is 4).",
  });
  assert.ok(chat.compose(state, { content: "😀".repeat(4), clientId: "c2", persona: null, maxChars: 4 }).frame);
  chat.receive(state, { type: "chat.accepted", conversation_id: A, client_id: "c2", user_message_id: "u", message_id: REPLY, persona: "assistant" });
  assert.deepEqual(chat.compose(state, { content: "More", clientId: "c3", persona: null, maxChars: 4 }), {
    error: "Wait for the reply to finish, or stop it first.",
  });
  assert.deepEqual(chat.stopFrame(state), { type: "chat.stop", conversation_id: A });
});

const UNREACHABLE = "The database could not be reached; try again in a moment.";

function refusedResume(state, conversationId = A) {
  return chat.receive(state, { type: "chat.error", conversation_id: conversationId, code: "unavailable", message: UNREACHABLE });
}

test("a resume refused as unavailable is asked again, each wait longer, until it is answered", () => {
  // The socket came back while the database was away: the reply in view must not freeze.
  const state = openA();
  sendAndAccept(state);
  chat.receive(state, delta(1, "Abou"));
  assert.deepEqual(chat.socketOpened(state, true).frames, [{ type: "chat.resume", conversation_id: A, after_seq: 1 }]);

  const first = refusedResume(state);
  assert.deepEqual(effectsOf(first, "retryResume"), [{ type: "retryResume", conversationId: A, delayMs: 1000 }]);
  assert.deepEqual(effectsOf(first, "error"), [{ type: "error", message: "The reply could not be reached just now; trying again in 1 s." }]);
  assert.deepEqual(effectsOf(refusedResume(state), "retryResume")[0].delayMs, 2000);
  assert.deepEqual(effectsOf(refusedResume(state), "retryResume")[0].delayMs, 4000);
  for (let i = 0; i < 6; i += 1) refusedResume(state);
  assert.deepEqual(effectsOf(refusedResume(state), "retryResume")[0].delayMs, 30000, "the wait stops growing at 30 s");
  assert.equal(lastReply(state).text, "Abou", "the text shown so far stays");
  assert.equal(chat.isGenerating(state), true, "still waiting for the reply");

  // The retry the page sends asks from where it stopped; its answer clears the notice.
  assert.deepEqual(chat.resumeFrame(state), { type: "chat.resume", conversation_id: A, after_seq: 1 });
  assert.deepEqual(chat.receive(state, delta(2, "t an hour.")), [{ type: "error", message: "" }]);
  assert.equal(lastReply(state).text, "About an hour.");
  assert.deepEqual(chat.receive(state, delta(3, "")), [], "cleared once");

  // A later refusal starts again from the shortest wait.
  chat.gapResume(state);
  chat.socketOpened(state, true);
  assert.deepEqual(effectsOf(refusedResume(state), "retryResume")[0].delayMs, 1000);
});

test("a resume answered by chat.idle after refusals stops the retries and reloads what was saved", () => {
  const state = openA();
  sendAndAccept(state);
  chat.socketOpened(state, true);
  refusedResume(state);
  const effects = chat.receive(state, { type: "chat.idle", conversation_id: A });
  assert.deepEqual(effects, [
    { type: "error", message: "" },
    { type: "reload", conversationId: A, afterIdle: true },
  ]);
});

test("an unavailable refusal is retried only for a resume of the open conversation", () => {
  const state = openA();
  // The resume that opened A was answered: a refusal now (of a stop, say) is only shown.
  chat.receive(state, { type: "chat.idle", conversation_id: A });
  assert.deepEqual(refusedResume(state), [{ type: "error", message: UNREACHABLE }]);
  // Another conversation's refusal: another tab's business.
  chat.socketOpened(state, true);
  assert.deepEqual(refusedResume(state, B), []);
  // A refused send is given back to the user, never re-sent by itself.
  const { frame } = chat.compose(state, { content: "Later", clientId: "c9", persona: null, maxChars: 100 });
  const refused = chat.receive(state, {
    type: "chat.error", client_id: frame.client_id, conversation_id: A, code: "unavailable", message: "The database could not be reached; nothing was saved.",
  });
  assert.deepEqual(effectsOf(refused, "retryResume"), []);
  assert.deepEqual(effectsOf(refused, "refused"), [{ type: "refused", text: "Later" }]);
  // Opening another conversation forgets the retries of the last one.
  chat.openConversation(state, B);
  assert.deepEqual(refusedResume(state), []);
});

test("a reply whose log was lost mid-stream is resumed by itself", () => {
  // Following a reply of another worker, its Redis log failed: the socket heard
  // `unavailable` with the conversation's id, and the reply in view must not freeze.
  const state = openA();
  sendAndAccept(state);
  chat.receive(state, delta(1, "Abou"));
  const effects = chat.receive(state, {
    type: "chat.error", conversation_id: A, code: "unavailable", message: "Lost the reply's log; resume in a moment.",
  });
  assert.deepEqual(effectsOf(effects, "retryResume"), [{ type: "retryResume", conversationId: A, delayMs: 1000 }]);
  assert.deepEqual(chat.resumeFrame(state), { type: "chat.resume", conversation_id: A, after_seq: 1 });
  assert.deepEqual(chat.receive(state, delta(2, "t")), [{ type: "error", message: "" }]);
  assert.equal(lastReply(state).text, "About");
});

test("a long list's next page goes below it, once, and only for the list it follows", () => {
  const state = chat.createState();
  chat.listLoaded(state, "", [{ id: A, title: "Bread" }, { id: B, title: "Tides" }], "/api/conversations/?before=x");
  assert.equal(state.listNext, "/api/conversations/?before=x");

  // B moved between the pages (it was answered meanwhile): it is not listed twice.
  const more = [{ id: B, title: "Tides" }, { id: "c3", title: "Older" }];
  assert.equal(chat.listMoreLoaded(state, "/api/conversations/?before=x", more, null), true);
  assert.deepEqual(state.conversations.map((c) => c.id), [A, B, "c3"]);
  assert.equal(state.listNext, null);

  // A page that arrives after a search replaced the list is dropped.
  chat.setQuery(state, "bread");
  chat.listLoaded(state, "bread", [{ id: A, title: "Bread" }], null);
  assert.equal(chat.listMoreLoaded(state, "/api/conversations/?before=x", more, null), false);
  assert.deepEqual(state.conversations.map((c) => c.id), [A]);
});
