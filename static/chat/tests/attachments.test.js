// Files in the composer and on messages, and the Share dialog's state.
// `node --test static/chat/tests/`.
import assert from "node:assert/strict";
import { test } from "node:test";

import * as chat from "../state.js";

const A = "aaaaaaaa-0000-4000-8000-000000000001";
const U1 = "11111111-0000-4000-8000-000000000001";
const R1 = "22222222-0000-4000-8000-000000000001";
const UP = (n) => `cccccccc-0000-4000-8000-00000000000${n}`;

function openA(messages = [
  { id: U1, role: "user", content: "Hi", status: "complete", parent_id: null },
  { id: R1, role: "assistant", content: "Hello!", status: "complete", parent_id: U1 },
]) {
  const state = chat.createState();
  chat.personasLoaded(state, [
    { slug: "assistant", name: "Assistant", accepts_images: true },
    { slug: "poet", name: "Poet", accepts_images: false },
  ]);
  chat.openConversation(state, A);
  chat.conversationLoaded(state, A, { id: A, title: "Cats", persona: "assistant", messages, current_leaf_id: R1 });
  return state;
}

function file(n, name = `cat${n}.png`, type = "image/png") {
  return { key: `k${n}`, name, size: 1000 * n, type };
}

function uploaded(n, extra = {}) {
  return {
    id: UP(n), name: `cat${n}.png`, content_type: "image/png", size: 900 * n, kind: "image", width: 640, height: 480,
    ...extra,
  };
}

function send(state, content = "Look", clientId = "c1") {
  return chat.compose(state, { content, clientId, persona: null, maxChars: 100 });
}

test("a file goes from uploading, with its progress, to done with the server's judgement", () => {
  const state = openA();
  const { added, error } = chat.attachmentsAdd(state, [file(1, "notes.txt", "text/plain")]);
  assert.equal(error, null);
  assert.equal(added.length, 1);
  assert.equal(state.attachments[0].status, "uploading");
  assert.equal(state.attachments[0].kind, "text");
  assert.ok(chat.uploading(state));

  chat.attachmentProgress(state, "k1", 250, 1000);
  assert.equal(state.attachments[0].progress, 0.25);
  chat.attachmentProgress(state, "k1", 100, 1000);
  assert.equal(state.attachments[0].progress, 0.25, "progress never goes back");
  chat.attachmentProgress(state, "k1", 5, 0);
  assert.equal(state.attachments[0].progress, 0.25, "no total, no progress");

  // The server judges by content: what the browser called text is a PDF, under a clean name.
  const done = chat.attachmentUploaded(state, "k1", {
    id: UP(1), name: "notes.pdf", content_type: "application/pdf", size: 1234, kind: "pdf", width: null, height: null,
  });
  assert.equal(done, true);
  const item = state.attachments[0];
  assert.deepEqual(
    [item.status, item.progress, item.id, item.name, item.kind, item.size, item.url],
    ["done", 1, UP(1), "notes.pdf", "pdf", 1234, `/api/uploads/${UP(1)}/`],
  );
  assert.equal(chat.uploading(state), false);
});

test("the fifth file is refused with a message naming it; failed files do not count", () => {
  const state = openA();
  const first = chat.attachmentsAdd(state, [file(1), file(2), file(3)]);
  assert.equal(first.added.length, 3);
  const second = chat.attachmentsAdd(state, [file(4), file(5), file(6)]);
  assert.deepEqual(second.added.map((a) => a.key), ["k4"]);
  assert.deepEqual(second.refused, ["cat5.png", "cat6.png"]);
  assert.equal(
    second.error,
    "You can attach up to 4 files to a message: “cat5.png”, “cat6.png” were not added.",
  );
  assert.equal(state.attachments.length, 4);
  assert.match(chat.attachmentsAdd(state, [file(7)]).error, /“cat7.png” was not added\.$/);

  // A refused file stays on show, marked, but makes room for another.
  chat.attachmentFailed(state, "k2", "This type of file is not accepted.");
  assert.equal(state.attachments[1].status, "error");
  assert.equal(state.attachments[1].error, "This type of file is not accepted.");
  const again = chat.attachmentsAdd(state, [file(8)]);
  assert.equal(again.error, null);
  assert.equal(state.attachments.length, 5);
});

test("removing a file: the page learns whether to abort or to delete it", () => {
  const state = openA();
  chat.attachmentsAdd(state, [file(1), file(2)]);
  chat.attachmentUploaded(state, "k1", uploaded(1));
  const removedDone = chat.attachmentRemove(state, "k1");
  assert.deepEqual([removedDone.status, removedDone.id], ["done", UP(1)]);
  const removedUploading = chat.attachmentRemove(state, "k2");
  assert.equal(removedUploading.status, "uploading");
  assert.equal(chat.attachmentRemove(state, "k2"), null, "removed once");
  assert.deepEqual(state.attachments, []);
  // The upload finished after its file was removed: it is an orphan for the page to delete.
  assert.equal(chat.attachmentUploaded(state, "k2", uploaded(2)), false);
  assert.deepEqual(state.attachments, []);
});

test("Send waits for uploads, then chat.send carries the ids and the composer clears", () => {
  const state = openA();
  chat.attachmentsAdd(state, [file(1), file(2, "data.csv", "text/csv"), file(3)]);
  chat.attachmentPreviewed(state, "k1", { preview: "data:image/png;base64,AAAA", width: 640, height: 480 });
  assert.deepEqual(send(state), { error: "Wait for the files to finish uploading." });
  assert.deepEqual(send(state, ""), { error: "Wait for the files to finish uploading." });
  assert.equal(state.messages.length, 2, "nothing sent");

  chat.attachmentUploaded(state, "k1", uploaded(1));
  chat.attachmentUploaded(state, "k2", { id: UP(2), name: "data.csv", content_type: "text/csv", size: 20, kind: "text" });
  chat.attachmentFailed(state, "k3", "This file is too large.");
  const { frame } = send(state, "  What is in these?  ");
  assert.deepEqual(frame, {
    type: "chat.send", conversation_id: A, persona: null, content: "What is in these?", client_id: "c1",
    attachments: [UP(1), UP(2)],
  });
  assert.deepEqual(state.attachments, [], "the composer is empty again, the failed file too");
  const shown = state.messages.at(-1);
  assert.equal(shown.status, "sending");
  assert.deepEqual(
    shown.attachments.map((a) => [a.id, a.name, a.kind, a.width, a.height, a.url, Boolean(a.preview)]),
    [
      [UP(1), "cat1.png", "image", 640, 480, `/api/uploads/${UP(1)}/`, true],
      [UP(2), "data.csv", "text", null, null, `/api/uploads/${UP(2)}/`, false],
    ],
  );
});

test("a message of files alone is sent with empty text; no files and no text sends nothing", () => {
  const state = openA();
  assert.deepEqual(send(state, "   "), {});
  chat.attachmentsAdd(state, [file(1)]);
  chat.attachmentUploaded(state, "k1", uploaded(1));
  const { frame } = send(state, "");
  assert.equal(frame.content, "");
  assert.deepEqual(frame.attachments, [UP(1)]);
});

test("a message without files sends the frame it always did", () => {
  const state = openA();
  const { frame } = send(state, "Plain");
  assert.equal("attachments" in frame, false);
  assert.deepEqual(state.messages.at(-1).attachments, []);
});

test("a refused message gives its files back to the composer, still uploaded", () => {
  const state = openA();
  chat.attachmentsAdd(state, [file(1)]);
  chat.attachmentUploaded(state, "k1", uploaded(1));
  send(state, "Describe it");
  const effects = chat.receive(state, {
    type: "chat.error", code: "invalid", client_id: "c1", conversation_id: A,
    message: "This persona's model cannot read images.",
  });
  assert.deepEqual(effects, [
    { type: "refused", text: "Describe it" },
    { type: "error", message: "This persona's model cannot read images." },
  ]);
  assert.equal(state.messages.length, 2, "the refused message is gone");
  assert.deepEqual(state.attachments.map((a) => [a.key, a.status, a.id]), [["k1", "done", UP(1)]]);
  // Sent again as it is: the same upload id.
  assert.deepEqual(send(state, "Describe it", "c2").frame.attachments, [UP(1)]);
});

test("files attached since a refusal are not replaced by the refused message's", () => {
  const state = openA();
  chat.attachmentsAdd(state, [file(1)]);
  chat.attachmentUploaded(state, "k1", uploaded(1));
  send(state, "One");
  chat.attachmentsAdd(state, [file(2)]);
  chat.receive(state, { type: "chat.error", code: "not_found", client_id: "c1", message: "No such upload." });
  assert.deepEqual(state.attachments.map((a) => a.key), ["k2"]);
});

test("the accepted message keeps its files; a reload shows them from the JSON API", () => {
  const state = openA();
  chat.attachmentsAdd(state, [file(1)]);
  chat.attachmentUploaded(state, "k1", uploaded(1));
  send(state, "Look");
  chat.receive(state, {
    type: "chat.accepted", conversation_id: A, client_id: "c1", user_message_id: "u2", message_id: "r2",
    persona: "assistant", title: "Cats",
  });
  const sent = state.messages.find((m) => m.id === "u2");
  assert.deepEqual(sent.attachments.map((a) => a.id), [UP(1)]);

  chat.openConversation(state, A, { keepView: true });
  chat.conversationLoaded(state, A, {
    id: A, title: "Cats", persona: "assistant", current_leaf_id: "u2",
    messages: [
      {
        id: "u2", role: "user", content: "", status: "complete", parent_id: null,
        attachments: [
          { id: UP(1), name: "cat1.png", content_type: "image/png", size: 900, url: `/api/uploads/${UP(1)}/`, kind: "image", width: 640, height: 480 },
          { id: UP(2), name: "a.pdf", content_type: "application/pdf", size: 5000, url: `/api/uploads/${UP(2)}/` },
        ],
      },
    ],
  });
  const [image, pdf] = state.messages[0].attachments;
  assert.deepEqual([image.kind, image.width, image.height, image.preview], ["image", 640, 480, null]);
  // An older server without `kind`: judged from the content type.
  assert.deepEqual([pdf.kind, pdf.name, pdf.size, pdf.url], ["pdf", "a.pdf", 5000, `/api/uploads/${UP(2)}/`]);
  // Messages from before attachments have none.
  chat.conversationLoaded(state, A, {
    id: A, title: "", persona: "assistant", messages: [{ id: "u9", role: "user", content: "Old", status: "complete" }],
  });
  assert.deepEqual(state.messages[0].attachments, []);
});

test("an edit keeps the files of the message it replaces", () => {
  const state = openA([
    {
      id: U1, role: "user", content: "What is this?", status: "complete", parent_id: null,
      attachments: [{ id: UP(1), name: "cat1.png", content_type: "image/png", size: 9, url: "/x/", kind: "image", width: 2, height: 2 }],
    },
    { id: R1, role: "assistant", content: "A cat.", status: "complete", parent_id: U1 },
  ]);
  assert.ok(chat.startEdit(state, U1));
  const { frame } = chat.composeEdit(state, { content: "What breed?", clientId: "c1", maxChars: 100 });
  assert.deepEqual(frame.attachments, [UP(1)]);
  assert.equal(frame.parent_id, null);
  assert.deepEqual(state.messages.at(-1).attachments.map((a) => a.id), [UP(1)]);
});

test("images for a persona that cannot read them: a warning before sending", () => {
  const state = openA();
  chat.attachmentsAdd(state, [file(1, "notes.txt", "text/plain")]);
  assert.equal(chat.imageWarning(state, "poet"), null, "text is fine");
  chat.attachmentsAdd(state, [file(2)]);
  assert.equal(chat.imageWarning(state, "assistant"), null);
  assert.equal(
    chat.imageWarning(state, "poet"),
    "Poet cannot read images: remove them before sending (text and PDF files are fine).",
  );
  // The server found it was no image after all: no warning.
  chat.attachmentUploaded(state, "k2", { id: UP(2), name: "cat2.png", content_type: "text/plain", size: 5, kind: "text" });
  assert.equal(chat.imageWarning(state, "poet"), null);
  // Personas from a server that says nothing about images: no warning.
  const old = openA();
  chat.personasLoaded(old, [{ slug: "poet", name: "Poet" }]);
  chat.attachmentsAdd(old, [file(1)]);
  assert.equal(chat.imageWarning(old, "poet"), null);
});

test("the Share dialog: none, create, shared, update, revoke, errors", () => {
  const state = openA();
  assert.equal(chat.shareOpened(state), A);
  assert.equal(state.share.status, "loading");
  assert.equal(chat.shareBusy(state, "create"), false, "not while the state is unknown");
  assert.ok(chat.shareLoaded(state, A, null));
  assert.equal(state.share.status, "none");
  assert.equal(chat.shareBusy(state, "revoke"), false, "nothing to revoke");

  assert.ok(chat.shareBusy(state, "create"));
  assert.equal(chat.shareBusy(state, "create"), false, "one request at a time");
  chat.shareLoaded(state, A, { token: "t", url: "/s/t/", created_at: "2026-01-02T03:04:05Z" });
  assert.deepEqual(
    [state.share.status, state.share.url, state.share.createdAt, state.share.busy],
    ["shared", "/s/t/", "2026-01-02T03:04:05Z", null],
  );

  assert.ok(chat.shareBusy(state, "create"));
  chat.shareFailed(state, A, "Could not share: The server is busy.");
  assert.deepEqual([state.share.status, state.share.busy, state.share.error], ["shared", null, "Could not share: The server is busy."]);

  assert.ok(chat.shareBusy(state, "revoke"));
  assert.equal(state.share.error, null);
  chat.shareLoaded(state, A, null);
  assert.equal(state.share.status, "none");

  // An answer for a conversation no longer open is dropped.
  chat.openNew(state);
  assert.equal(chat.shareOpened(state), null, "a new chat has nothing to share");
  assert.equal(chat.shareLoaded(state, "other", { url: "/s/x/" }), false);
});

test("reopening the dialog of a shared conversation shows the link while it checks again", () => {
  const state = openA();
  chat.shareOpened(state);
  chat.shareLoaded(state, A, { token: "t", url: "/s/t/", created_at: "2026-01-02T03:04:05Z" });
  chat.shareClosed(state);
  chat.shareOpened(state);
  assert.deepEqual([state.share.status, state.share.url], ["shared", "/s/t/"]);
  const failed = openA();
  chat.shareOpened(failed);
  chat.shareFailed(failed, A, "Could not read the link: Offline.");
  assert.equal(failed.share.status, "error");
});
