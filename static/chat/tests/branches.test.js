// Versions of messages (regenerate, edit and resend, the "‹ 2 / 3 ›" switcher) and
// feedback, driven through the pure state as the server's frames arrive.
import assert from "node:assert/strict";
import { test } from "node:test";

import * as chat from "../state.js";

const A = "aaaaaaaa-0000-4000-8000-000000000001";
const U1 = "11111111-0000-4000-8000-000000000001";
const R1 = "22222222-0000-4000-8000-000000000001";
const U2 = "11111111-0000-4000-8000-000000000002";
const R2 = "22222222-0000-4000-8000-000000000002";
const R2B = "22222222-0000-4000-8000-00000000002b";
const NEW = "33333333-0000-4000-8000-000000000003";
const NEW_REPLY = "44444444-0000-4000-8000-000000000004";

/** What a reader sees: each message's role, text and "n / m" where it has versions. */
function shown(state) {
  return state.messages.map((m) => {
    const { index, count } = chat.versionOf(m);
    return [m.role, m.content, count > 1 ? `${index} / ${count}` : ""];
  });
}

function message(id, role, content, parentId, extra = {}) {
  return { id, role, content, status: "complete", parent_id: parentId, siblings: [id], feedback: null, usage: null, ...extra };
}

/** Conversation A open on its active path: U1 → R1 → U2 → R2. */
function openA(messages = null) {
  const state = chat.createState();
  chat.openConversation(state, A);
  chat.conversationLoaded(state, A, {
    id: A,
    title: "Bread",
    persona: "assistant",
    current_leaf_id: R2,
    messages: messages || [
      message(U1, "user", "Hi", null),
      message(R1, "assistant", "Hello!", U1, { usage: { input_tokens: 12, output_tokens: 48 } }),
      message(U2, "user", "How long to proof?", R1),
      message(R2, "assistant", "An hour.", U2),
    ],
  });
  return state;
}

function accepted(fields) {
  return { type: "chat.accepted", conversation_id: A, persona: "assistant", title: "Bread", ...fields };
}

function delta(seq, text, messageId) {
  return { type: "chat.delta", conversation_id: A, message_id: messageId, seq, text };
}

function done(messageId, content, status = "complete") {
  return {
    type: "chat.done", conversation_id: A, message_id: messageId, status, content,
    usage: { input_tokens: 30, output_tokens: 7 }, error: null,
  };
}

test("Regenerate replaces the shown reply with a streaming one; after done it is 2 / 2", () => {
  const state = openA();
  const { frame } = chat.regenerate(state, { key: R2, clientId: "c1" });
  assert.deepEqual(frame, { type: "chat.regenerate", conversation_id: A, message_id: R2, client_id: "c1" });
  assert.equal(chat.isBusy(state), true, "nothing else starts while it is on its way");
  assert.deepEqual(chat.regenerate(state, { key: R2, clientId: "c2" }), { error: "Wait for the reply to finish, or stop it first." });

  chat.receive(state, accepted({ client_id: "c1", user_message_id: U2, message_id: R2B, parent_id: R1, regenerate: true }));
  assert.deepEqual(shown(state).slice(-2), [["user", "How long to proof?", ""], ["assistant", "", "2 / 2"]]);
  assert.equal(state.messages.at(-1).status, "streaming");
  assert.equal(chat.isGenerating(state), true);
  chat.receive(state, delta(1, "About forty", R2B));
  const effects = chat.receive(state, done(R2B, "About forty minutes."));
  assert.deepEqual(shown(state), [
    ["user", "Hi", ""],
    ["assistant", "Hello!", ""],
    ["user", "How long to proof?", ""],
    ["assistant", "About forty minutes.", "2 / 2"],
  ]);
  assert.deepEqual(state.messages.at(-1).usage, { input: 30, output: 7 });
  assert.deepEqual(effects.filter((e) => e.type === "reload"), [], "what done said is all it takes");
  assert.equal(chat.isBusy(state), false);
  assert.equal(state.pending.size, 0);
});

test("Regenerate of a reply in the middle drops the path below it", () => {
  const state = openA();
  chat.regenerate(state, { key: R1, clientId: "c1" });
  chat.receive(state, accepted({ client_id: "c1", user_message_id: U1, message_id: NEW_REPLY, parent_id: null, regenerate: true }));
  chat.receive(state, done(NEW_REPLY, "Hi there."));
  assert.deepEqual(shown(state), [["user", "Hi", ""], ["assistant", "Hi there.", "2 / 2"]]);
});

test("a second tab sees another tab's regenerate live: the reply it shows is replaced, then counts one more", () => {
  const state = openA();
  // No request of its own: the frame comes from the other tab, with the user message's text.
  chat.receive(state, accepted({ client_id: "elsewhere", user_message_id: U2, message_id: R2B, parent_id: R1, regenerate: true, content: "How long to proof?" }));
  assert.equal(state.messages.length, 4, "the old reply is gone, not kept beside the new one");
  chat.receive(state, delta(1, "Forty", R2B));
  assert.deepEqual(shown(state).at(-1), ["assistant", "Forty", "2 / 2"]);
  chat.receive(state, done(R2B, "Forty minutes."));
  assert.deepEqual(shown(state).at(-1), ["assistant", "Forty minutes.", "2 / 2"]);
  // And a third version, from the other tab again.
  chat.receive(state, accepted({ client_id: "again", user_message_id: U2, message_id: NEW_REPLY, parent_id: R1, regenerate: true, content: "How long to proof?" }));
  chat.receive(state, done(NEW_REPLY, "Thirty."));
  assert.deepEqual(shown(state).at(-1), ["assistant", "Thirty.", "3 / 3"]);
});

test("a regenerate on a branch this tab does not show reloads the conversation", () => {
  const state = openA();
  const effects = chat.receive(state, accepted({ client_id: "x", user_message_id: "not-shown", message_id: NEW_REPLY, parent_id: null, regenerate: true, content: "?" }));
  assert.deepEqual(effects, [{ type: "reload", conversationId: A }]);
});

test("Retry on a stopped reply is a regenerate of it", () => {
  const state = openA([message(U1, "user", "Hi", null), message(R1, "assistant", "Hel", U1, { status: "stopped" })]);
  assert.equal(state.messages.at(-1).status, "stopped");
  const { frame } = chat.regenerate(state, { key: R1, clientId: "c1" });
  assert.equal(frame.type, "chat.regenerate");
  // The socket drops before the answer: the request goes again, same client_id.
  assert.deepEqual(chat.socketOpened(state, true).frames, [frame]);
  chat.receive(state, accepted({ client_id: "c1", user_message_id: U1, message_id: NEW_REPLY, parent_id: null, regenerate: true }));
  chat.receive(state, done(NEW_REPLY, "Hello!"));
  assert.deepEqual(shown(state), [["user", "Hi", ""], ["assistant", "Hello!", "2 / 2"]]);
});

test("a refused regenerate says why and changes nothing", () => {
  const state = openA();
  const before = shown(state);
  chat.regenerate(state, { key: R2, clientId: "c1" });
  const effects = chat.receive(state, { type: "chat.error", client_id: "c1", conversation_id: A, code: "busy", message: "A reply is already being written." });
  assert.deepEqual(effects, [{ type: "error", message: "A reply is already being written." }]);
  assert.deepEqual(shown(state), before);
  assert.equal(chat.isBusy(state), false);
});

test("Edit and resend: chat.send with the edited message's parent, the path below it goes", () => {
  const state = openA();
  assert.equal(chat.lastUserMessage(state).id, U2, "↑ edits this one");
  assert.equal(chat.startEdit(state, U2), true);
  assert.deepEqual(state.editing, { key: U2, draft: "How long to proof?" });

  assert.deepEqual(chat.composeEdit(state, { content: "   ", clientId: "c1", maxChars: 100 }), { error: "The message is empty." });
  const { frame } = chat.composeEdit(state, { content: " How long to bake? ", clientId: "c1", maxChars: 100 });
  assert.deepEqual(frame, { type: "chat.send", conversation_id: A, persona: null, content: "How long to bake?", client_id: "c1", parent_id: R1 });
  assert.equal(state.editing, null, "the editor closes");
  assert.deepEqual(shown(state), [["user", "Hi", ""], ["assistant", "Hello!", ""], ["user", "How long to bake?", "2 / 2"]]);
  assert.equal(state.messages.at(-1).status, "sending");

  chat.receive(state, accepted({ client_id: "c1", user_message_id: NEW, message_id: NEW_REPLY, parent_id: R1, regenerate: false }));
  chat.receive(state, done(NEW_REPLY, "Thirty minutes."));
  assert.deepEqual(shown(state).slice(-2), [["user", "How long to bake?", "2 / 2"], ["assistant", "Thirty minutes.", ""]]);
  assert.deepEqual(state.messages.at(-2).siblings, [U2, NEW], "the old version is reachable by its id");
  // The switcher asks for the old one.
  const edited = state.messages.at(-2);
  assert.equal(edited.id, NEW);
  assert.deepEqual(chat.versionStep(state, edited.key, -1), { id: U2 });
  assert.deepEqual(chat.versionStep(state, edited.key, 1), {}, "no version after the last");
});

test("editing the first message resends it with parent_id null", () => {
  const state = openA();
  chat.startEdit(state, U1);
  const { frame } = chat.composeEdit(state, { content: "Hello", clientId: "c1", maxChars: 100 });
  assert.equal(frame.parent_id, null);
  assert.deepEqual(shown(state), [["user", "Hello", "2 / 2"]]);
});

test("an edit the server refuses brings the saved path back with the editor open", () => {
  const state = openA();
  chat.startEdit(state, U2);
  chat.composeEdit(state, { content: "Too fast", clientId: "c1", maxChars: 100 });
  const effects = chat.receive(state, { type: "chat.error", client_id: "c1", conversation_id: A, code: "rate_limited", message: "Slow down." });
  assert.deepEqual(effects, [{ type: "reload", conversationId: A }, { type: "error", message: "Slow down." }]);
  assert.deepEqual(state.editing, { key: U2, draft: "Too fast" });
  chat.openConversation(state, A, { keepView: true });
  chat.conversationLoaded(state, A, { id: A, title: "Bread", persona: "assistant", messages: [
    message(U1, "user", "Hi", null), message(R1, "assistant", "Hello!", U1), message(U2, "user", "How long to proof?", R1),
  ] });
  assert.deepEqual(state.editing, { key: U2, draft: "Too fast" }, "still editing the message it was on");
});

test("Cancel closes the editor and leaves the message as it was", () => {
  const state = openA();
  chat.startEdit(state, U2);
  chat.cancelEdit(state);
  assert.equal(state.editing, null);
  assert.equal(state.messages[2].content, "How long to proof?");
  assert.equal(chat.startEdit(state, R2), false, "replies are not edited");
});

test("an edit made in another tab shows there as a new version, the old path below it gone", () => {
  const state = openA();
  chat.receive(state, accepted({ client_id: "other", user_message_id: NEW, message_id: NEW_REPLY, parent_id: R1, regenerate: false, content: "How long to bake?" }));
  chat.receive(state, delta(1, "Thirty", NEW_REPLY));
  assert.deepEqual(shown(state), [
    ["user", "Hi", ""],
    ["assistant", "Hello!", ""],
    ["user", "How long to bake?", "2 / 2"],
    ["assistant", "Thirty", ""],
  ]);
});

test("a message sent from another tab at the end of the path just follows it", () => {
  const state = openA();
  chat.receive(state, accepted({ client_id: "other", user_message_id: NEW, message_id: NEW_REPLY, parent_id: R2, regenerate: false, content: "And then?" }));
  assert.deepEqual(shown(state).slice(-2), [["user", "And then?", ""], ["assistant", "", ""]]);
  assert.equal(state.messages.length, 6);
});

test("switching versions: the answer to PATCH is drawn as the new path", () => {
  const state = openA([
    message(U1, "user", "Hi", null),
    message(R1, "assistant", "Hello!", U1),
    message(U2, "user", "How long to proof?", R1, { siblings: [U2, NEW] }),
    message(R2, "assistant", "An hour.", U2, { siblings: [R2, R2B] }),
  ]);
  assert.deepEqual(shown(state).slice(-2), [["user", "How long to proof?", "1 / 2"], ["assistant", "An hour.", "1 / 2"]]);
  assert.deepEqual(chat.versionStep(state, R2, -1), {});
  const { id } = chat.versionStep(state, U2, 1);
  assert.equal(id, NEW);
  // PATCH current_leaf_id=NEW answers the path through it.
  chat.openConversation(state, A, { keepView: true });
  chat.conversationLoaded(state, A, { id: A, title: "Bread", persona: "assistant", current_leaf_id: NEW_REPLY, messages: [
    message(U1, "user", "Hi", null),
    message(R1, "assistant", "Hello!", U1),
    message(NEW, "user", "How long to bake?", R1, { siblings: [U2, NEW] }),
    message(NEW_REPLY, "assistant", "Thirty minutes.", NEW),
  ] });
  assert.deepEqual(shown(state).slice(-2), [["user", "How long to bake?", "2 / 2"], ["assistant", "Thirty minutes.", ""]]);
  assert.equal(state.currentLeafId, NEW_REPLY);

  // Mid-reply the versions stay put.
  chat.compose(state, { content: "More?", clientId: "c1", persona: null, maxChars: 100 });
  chat.receive(state, accepted({ client_id: "c1", user_message_id: "u9", message_id: "r9", parent_id: NEW_REPLY, regenerate: false }));
  assert.deepEqual(chat.versionStep(state, NEW, -1), { error: "Wait for the reply to finish, or stop it first." });
});

test("a reply followed after a reload learns its versions from the server when it is done", () => {
  const state = openA([message(U1, "user", "Hi", null)]);
  chat.receive(state, delta(1, "Hel", NEW_REPLY));
  const effects = chat.receive(state, done(NEW_REPLY, "Hello!"));
  assert.deepEqual(effects.filter((e) => e.type === "reload"), [{ type: "reload", conversationId: A }]);
});

test("thumbs: 👍 rates, pressing it again clears, 👎 opens the comment field", () => {
  const state = openA();
  assert.deepEqual(chat.feedbackPressed(state, R2, 1), { id: R2, rating: 1 });
  assert.equal(state.commenting, null);
  chat.feedbackSaved(state, R2, { rating: 1, comment: "" });
  assert.equal(state.messages[3].feedback, 1);
  assert.deepEqual(chat.feedbackPressed(state, R2, 1), { id: R2, rating: 0 }, "the active one again clears");
  chat.feedbackSaved(state, R2, { rating: 0, comment: "" });
  assert.equal(state.messages[3].feedback, null);

  assert.deepEqual(chat.feedbackPressed(state, R2, -1), { id: R2, rating: -1 });
  assert.equal(state.commenting, R2, "the comment field opens");
  chat.feedbackSaved(state, R2, { rating: -1, comment: "Too short." });
  assert.deepEqual([state.messages[3].feedback, state.messages[3].comment], [-1, "Too short."]);
  chat.closeComment(state);
  assert.equal(state.commenting, null);
  assert.equal(chat.feedbackPressed(state, U1, 1), null, "only replies are rated");
});

test("a loaded conversation carries feedback and usage; older servers without them read as single versions", () => {
  const state = openA();
  assert.deepEqual(state.messages[1].usage, { input: 12, output: 48 });
  const old = chat.createState();
  chat.openConversation(old, A);
  chat.conversationLoaded(old, A, { id: A, title: "", persona: "assistant", messages: [
    { id: U1, role: "user", content: "Hi", status: "complete" },
    { id: R1, role: "assistant", content: "Hello!", status: "complete" },
  ] });
  assert.deepEqual(shown(old), [["user", "Hi", ""], ["assistant", "Hello!", ""]]);
  assert.equal(old.messages[1].feedback, null);
  chat.startEdit(old, U1);
  assert.equal(chat.composeEdit(old, { content: "Hey", clientId: "c1", maxChars: 10 }).frame.parent_id, null);
});
