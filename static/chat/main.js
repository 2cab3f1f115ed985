/*
 * Persona Chat page: wires the socket (transport.js), the protocol state (state.js), the
 * DOM (view.js) and the JSON API (api.js). ES modules, no build step.
 *
 * The open conversation lives in the URL: "/" is a new chat, "/c/<uuid>/" an existing one,
 * so a reload or a shared link reopens it and picks up a reply still being generated.
 */
import { api, apiPage, signedIn, uploadFile } from "./api.js";
import { copyText } from "./dom.js";
import * as chat from "./state.js";
import { createTransport } from "./transport.js";
import * as view from "./view.js";

const { ui } = view;
const MAX_CHARS = Number(ui.app.dataset.maxChars) || 16000;
const UUID_IN_PATH = /^\/c\/([0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12})\/?$/i;

const state = chat.createState();
let selectedPersona = null;
// Counts conversation loads, so a slow one that lost the race is dropped.
let loadSeq = 0;
// Loads that failed in a row (the server or the network), for the wait before the next.
let loadFailures = 0;

// Waits of many pages that failed together spread out, so they do not come back in step.
function withJitter(delayMs) {
  return delayMs * (0.75 + Math.random() * 0.5);
}

function uuid4() {
  if (window.crypto && typeof crypto.randomUUID === "function") return crypto.randomUUID();
  // crypto.randomUUID needs a secure context; plain http on a LAN address is not one.
  const bytes = crypto.getRandomValues(new Uint8Array(16));
  bytes[6] = (bytes[6] & 0x0f) | 0x40;
  bytes[8] = (bytes[8] & 0x3f) | 0x80;
  const hex = Array.from(bytes, (b) => b.toString(16).padStart(2, "0")).join("");
  return `${hex.slice(0, 8)}-${hex.slice(8, 12)}-${hex.slice(12, 16)}-${hex.slice(16, 20)}-${hex.slice(20)}`;
}

function currentPersonaSlug() {
  if (state.currentPersona) return state.currentPersona;
  const conversation = state.conversations.find((c) => c.id === state.currentId);
  return (conversation && conversation.persona) || selectedPersona;
}

// ---- Drawing ------------------------------------------------------------------------------

function render() {
  view.render(state, currentPersonaSlug());
  scheduleQuotaTick();
}

// While the tokens are used up, the notice counts down and the composer opens again on time.
let quotaTimer = null;
function scheduleQuotaTick() {
  const reason = chat.blocked(state, Date.now());
  if (quotaTimer || !reason || reason.kind !== "quota") return;
  const wait = Math.min(30_000, Math.max(50, reason.until - Date.now() + 50));
  quotaTimer = setTimeout(() => {
    quotaTimer = null;
    render();
  }, wait);
}

let renderRequested = false;
function renderSoon() {
  if (renderRequested) return;
  renderRequested = true;
  // One render per frame however many deltas arrive; a hidden tab catches up on done.
  requestAnimationFrame(() => {
    renderRequested = false;
    render();
  });
}

// ---- Frames from the server ---------------------------------------------------------------

function carryOut(effects) {
  for (const effect of effects) {
    switch (effect.type) {
      case "reload":
        openConversation(effect.conversationId, { keepView: true, afterIdle: effect.afterIdle });
        break;
      case "url":
        history.pushState({}, "", `/c/${effect.conversationId}/`);
        break;
      case "refused":
        if (!ui.input.value) {
          ui.input.value = effect.text;
          view.autoGrow();
        }
        break;
      case "error":
        view.showError(effect.message);
        break;
      case "announce":
        view.announce(effect.text);
        break;
      case "refreshList":
        scheduleListRefresh();
        break;
      case "retryResume":
        retryResume(effect);
        break;
      default:
        break;
    }
  }
}

// A resume refused while the database was away: asked again later, one timer at a time.
let resumeTimer = null;
function retryResume({ conversationId, delayMs }) {
  clearTimeout(resumeTimer);
  resumeTimer = setTimeout(() => {
    resumeTimer = null;
    if (state.currentId !== conversationId) return; // the user moved on
    const resume = chat.resumeFrame(state);
    if (resume) transport.send(resume);
  }, withJitter(delayMs));
}

let gapTimer = null;
function onFrame(frame) {
  carryOut(chat.receive(state, frame, new Date().toISOString()));
  if (frame.type === "chat.delta") renderSoon();
  else render();
  if (chat.hasGap(state) && !gapTimer) {
    // A frame went missing: ask for a replay from the last one we have in order.
    gapTimer = setTimeout(() => {
      gapTimer = null;
      const resume = chat.gapResume(state);
      if (resume) transport.send(resume);
    }, 1000);
  }
}

const transport = createTransport({
  onOpen(reconnected) {
    const { frames, reload } = chat.socketOpened(state, reconnected);
    if (reload) openConversation(reload, { keepView: true });
    return frames;
  },
  onFrame,
  onStatus: view.setSocketStatus,
  signedIn,
});

// ---- Opening conversations ----------------------------------------------------------------

function newChat({ push }) {
  if (push && window.location.pathname !== "/") history.pushState({}, "", "/");
  loadSeq += 1;
  chat.openNew(state);
  view.showError("");
  render();
  ui.input.focus();
}

async function openConversation(id, { push = false, keepView = false, afterIdle = false } = {}) {
  if (push) history.pushState({}, "", `/c/${id}/`);
  const seq = ++loadSeq;
  if (!keepView) loadFailures = 0; // the user's own choice: not a retry
  chat.openConversation(state, id, { keepView, afterIdle });
  if (!keepView) view.showError("");
  render();
  let conversation;
  try {
    conversation = await api("GET", `/api/conversations/${id}/`);
  } catch (error) {
    if (seq !== loadSeq) return;
    if (error.status === 404) {
      newChat({ push: false });
      history.replaceState({}, "", "/");
      view.showError("That conversation does not exist or was deleted.");
    } else if (!error.status || error.status >= 500) {
      // The server or the network failed (the database away, a restart): until it loads,
      // the conversation's frames are ignored, so it must not be left there. Ask again.
      loadFailures += 1;
      const delayMs = chat.retryDelay(loadFailures);
      view.showError(`Could not load the conversation just now; trying again in ${delayMs / 1000} s.`);
      setTimeout(() => {
        if (seq === loadSeq) openConversation(id, { keepView: true, afterIdle });
      }, withJitter(delayMs));
    } else {
      view.showError(`Could not load the conversation: ${error.message}`);
    }
    return;
  }
  loadFailures = 0;
  await personasReady;
  if (seq !== loadSeq) return; // the user opened something else meanwhile
  view.showError("");
  const resume = chat.conversationLoaded(state, id, conversation);
  render();
  view.scrollToBottom();
  if (resume) transport.send(resume);
}

function route({ push = false } = {}) {
  const match = UUID_IN_PATH.exec(window.location.pathname);
  if (match) openConversation(match[1].toLowerCase(), { push });
  else newChat({ push });
}

window.addEventListener("popstate", () => route());

ui.newChat.addEventListener("click", () => {
  newChat({ push: true });
  view.closeSidebar();
});

ui.noticeNewChat.addEventListener("click", () => newChat({ push: true }));

// ---- Sending ------------------------------------------------------------------------------

function sendMessage() {
  const { frame, error } = chat.compose(state, {
    content: ui.input.value,
    clientId: uuid4(),
    persona: selectedPersona,
    maxChars: MAX_CHARS,
  });
  if (error) view.showError(error);
  if (!frame) return;
  view.showError("");
  ui.input.value = "";
  view.autoGrow();
  render();
  view.scrollToBottom();
  transport.send(frame);
}

ui.composer.addEventListener("submit", (event) => {
  event.preventDefault();
  sendMessage();
});

ui.input.addEventListener("keydown", (event) => {
  // isComposing: Enter that confirms an IME candidate must not send.
  if (event.key === "Enter" && !event.shiftKey && !event.isComposing) {
    event.preventDefault();
    sendMessage();
  } else if (event.key === "ArrowUp" && !ui.input.value && !event.shiftKey && !event.altKey && !event.ctrlKey && !event.metaKey) {
    // ↑ in an empty box edits the last message sent, as in other chat apps.
    const last = chat.lastUserMessage(state);
    if (last && startEdit(last.key)) event.preventDefault();
  }
});

ui.stop.addEventListener("click", () => {
  const frame = chat.stopFrame(state);
  if (!frame) return;
  transport.send(frame);
  ui.input.focus();
});

// ---- Attachments --------------------------------------------------------------------------

// Uploads in flight by composer key: how to abort each.
const uploads = new Map();

function attachFiles(files) {
  const byKey = new Map();
  const described = files.map((file) => {
    const key = uuid4();
    byKey.set(key, file);
    return { key, name: file.name || "pasted-image.png", size: file.size, type: file.type };
  });
  const { added, error } = chat.attachmentsAdd(state, described);
  view.showError(error || "");
  for (const item of added) startUpload(item, byKey.get(item.key));
  render();
  if (added.length) view.announce(added.length === 1 ? `Uploading ${added[0].name}.` : `Uploading ${added.length} files.`);
}

function startUpload(item, file) {
  const { key } = item;
  if (item.kind === "image") {
    view.thumbnail(file).then((picture) => {
      if (!picture) return;
      chat.attachmentPreviewed(state, key, picture);
      render();
    });
  }
  const { promise, abort } = uploadFile(file, {
    onProgress(loaded, total) {
      chat.attachmentProgress(state, key, loaded, total);
      renderSoon();
    },
  });
  uploads.set(key, abort);
  promise.then(
    (upload) => {
      uploads.delete(key);
      // Removed while it uploaded: nobody wants the file the server kept.
      if (!chat.attachmentUploaded(state, key, upload)) discardUpload(upload.id);
      render();
    },
    (error) => {
      uploads.delete(key);
      if (error.code === "aborted") return;
      chat.attachmentFailed(state, key, error.message);
      render();
      // Said in full where everyone sees it; the file's chip keeps it too, in short.
      view.showError(`${item.name} was not attached: ${error.message}`);
    },
  );
}

function discardUpload(id) {
  // 404 (gone already) and 409 (a message uses it after all) both leave nothing to do.
  if (id) api("DELETE", `/api/uploads/${id}/`).catch(() => {});
}

function removeAttachment(key, index) {
  const item = chat.attachmentRemove(state, key);
  if (!item) return;
  const abort = uploads.get(key);
  if (abort) {
    uploads.delete(key);
    abort();
  } else if (item.status === "done") {
    discardUpload(item.id);
  }
  render();
  view.focusAfterRemoval(index);
  view.announce(`Removed ${item.name}.`);
}

// ---- Sharing ------------------------------------------------------------------------------

function sharePath(id) {
  return `/api/conversations/${id}/share/`;
}

async function openShare() {
  const id = chat.shareOpened(state);
  if (!id) return;
  view.openShareDialog(state.share);
  let answer = null;
  try {
    answer = await api("GET", sharePath(id));
  } catch (error) {
    if (error.status !== 404) {
      chat.shareFailed(state, id, `Could not read the link: ${error.message}`);
      view.renderShare(state.share);
      return;
    }
  }
  if (!chat.shareLoaded(state, id, answer)) return;
  view.renderShare(state.share);
  view.focusShare(state.share.status === "shared" ? "copy" : "create");
}

async function createShare() {
  if (!chat.shareBusy(state, "create")) return;
  const id = state.share.conversationId;
  const updating = state.share.status === "shared";
  view.renderShare(state.share);
  try {
    const answer = await api("POST", sharePath(id));
    if (!chat.shareLoaded(state, id, answer)) return;
    view.announce(updating ? "Snapshot updated." : "Link created.");
    view.renderShare(state.share);
    view.focusShare("copy");
  } catch (error) {
    chat.shareFailed(state, id, `Could not share: ${error.message}`);
    view.renderShare(state.share);
  }
}

async function revokeShare() {
  if (!chat.shareBusy(state, "revoke")) return;
  const id = state.share.conversationId;
  view.renderShare(state.share);
  try {
    await api("DELETE", sharePath(id));
  } catch (error) {
    if (error.status !== 404) {
      chat.shareFailed(state, id, `Could not revoke the link: ${error.message}`);
      view.renderShare(state.share);
      return;
    }
  }
  if (!chat.shareLoaded(state, id, null)) return;
  view.announce("Link revoked: it no longer works.");
  view.renderShare(state.share);
  view.focusShare("create");
}

function onShare(what) {
  if (what === "open") openShare();
  else if (what === "create") createShare();
  else if (what === "revoke") revokeShare();
  else if (what === "closed") chat.shareClosed(state);
}

// ---- Versions and feedback ----------------------------------------------------------------

function startEdit(key) {
  if (!chat.startEdit(state, key)) return false;
  render();
  view.focusEditor(key);
  return true;
}

function sendEdit(text) {
  const { frame, error } = chat.composeEdit(state, { content: text, clientId: uuid4(), maxChars: MAX_CHARS });
  if (error) view.showError(error);
  if (!frame) return;
  view.showError("");
  render();
  view.scrollToBottom();
  ui.input.focus();
  transport.send(frame);
}

function regenerate(key) {
  const { frame, error } = chat.regenerate(state, { key, clientId: uuid4() });
  if (error) view.showError(error);
  if (!frame) return;
  view.showError("");
  // The reply and its buttons are about to be replaced: the keyboard waits in the composer.
  ui.input.focus();
  transport.send(frame);
}

async function switchVersion(key, step) {
  const { id, error } = chat.versionStep(state, key, step);
  if (error) view.showError(error);
  if (!id) return;
  const conversationId = state.currentId;
  const seq = ++loadSeq;
  let conversation;
  try {
    conversation = await api("PATCH", `/api/conversations/${conversationId}/`, { current_leaf_id: id });
  } catch (failure) {
    if (seq === loadSeq) view.showError(`Could not switch versions: ${failure.message}`);
    return;
  }
  if (seq !== loadSeq || state.currentId !== conversationId) return;
  view.showError("");
  const resume = chat.conversationLoaded(state, conversationId, conversation);
  render();
  view.focusAction(id, step < 0 ? "prev" : "next");
  view.announce("Showing another version.");
  if (resume) transport.send(resume);
}

async function saveFeedback(id, body) {
  try {
    const saved = await api("PUT", `/api/messages/${id}/feedback/`, body);
    chat.feedbackSaved(state, id, saved);
    render();
    return true;
  } catch (failure) {
    view.showError(`Could not save your feedback: ${failure.message}`);
    return false;
  }
}

async function rate(key, rating) {
  const pressed = chat.feedbackPressed(state, key, rating);
  if (!pressed) return;
  render();
  if (state.commenting === key) view.focusComment(key);
  await saveFeedback(pressed.id, { rating: pressed.rating });
}

async function sendComment(key, comment) {
  const message = state.messages.find((m) => m.key === key);
  if (!message || !message.id) return;
  if (await saveFeedback(message.id, { rating: -1, comment: comment.trim() })) {
    chat.closeComment(state);
    render();
    view.focusAction(key, "bad");
    view.announce("Thanks for the feedback.");
  }
}

async function copyReply(key) {
  const message = state.messages.find((m) => m.key === key);
  if (!message) return;
  try {
    await copyText(message.content);
    view.flash(key, "copy", "Copied");
  } catch (_error) {
    view.flash(key, "copy", "Copy failed");
  }
}

function onMessageAction(action, key, data) {
  switch (action) {
    case "edit":
      startEdit(key);
      break;
    case "cancel-edit":
      chat.cancelEdit(state);
      render();
      view.focusAction(key, "edit");
      break;
    case "send-edit":
      sendEdit(data.text);
      break;
    case "regenerate":
      regenerate(key);
      break;
    case "prev":
    case "next":
      switchVersion(key, action === "prev" ? -1 : 1);
      break;
    case "copy":
      copyReply(key);
      break;
    case "good":
    case "bad":
      rate(key, action === "good" ? 1 : -1);
      break;
    case "send-comment":
      sendComment(key, data.comment);
      break;
    case "close-comment":
      chat.closeComment(state);
      render();
      view.focusAction(key, "bad");
      break;
    default:
      break;
  }
}

// Logging out ends this page's session: the socket's 4401 must not race the form to the
// login page (it would ask the API, get a 401 and go to login?next=... instead).
ui.logout.form.addEventListener("submit", () => transport.close());

// ---- The conversation list ----------------------------------------------------------------

async function loadConversations() {
  const query = state.query;
  const path = query ? `/api/conversations/?q=${encodeURIComponent(query)}` : "/api/conversations/";
  const { data, next } = await apiPage(path);
  if (chat.listLoaded(state, query, data, next)) render();
}

/** The list's next page, below what it shows ("Show older chats"). */
async function loadOlderConversations() {
  const from = state.listNext;
  if (!from) return;
  try {
    const { data, next } = await apiPage(from);
    if (chat.listMoreLoaded(state, from, data, next)) render();
  } catch (error) {
    view.showError(`Could not load older chats: ${error.message}`);
  }
}

let listTimer = null;
function scheduleListRefresh(delay = 250) {
  clearTimeout(listTimer);
  listTimer = setTimeout(() => {
    loadConversations().catch(() => {});
  }, delay);
}

ui.search.addEventListener("input", () => {
  chat.setQuery(state, ui.search.value.trim());
  scheduleListRefresh();
});
ui.search.addEventListener("keydown", (event) => {
  if (event.key === "Escape" && ui.search.value) {
    ui.search.value = "";
    chat.setQuery(state, "");
    scheduleListRefresh(0);
  }
});

async function renameConversation(conversation, title) {
  try {
    const updated = await api("PATCH", `/api/conversations/${conversation.id}/`, { title });
    chat.conversationRenamed(state, conversation.id, updated.title);
    render();
  } catch (error) {
    view.showError(`Could not rename: ${error.message}`);
  }
}

async function deleteConversation(conversation) {
  try {
    await api("DELETE", `/api/conversations/${conversation.id}/`);
  } catch (error) {
    if (error.status !== 404) {
      view.showError(`Could not delete: ${error.message}`);
      return;
    }
  }
  chat.conversationDeleted(state, conversation.id);
  render();
  view.announce("Conversation deleted.");
  if (conversation.id === state.currentId) newChat({ push: true });
}

// ---- Start --------------------------------------------------------------------------------

async function loadPersonas() {
  const personas = await api("GET", "/api/personas/");
  chat.personasLoaded(state, personas);
  const preferred = personas.find((p) => p.is_default) || personas[0];
  selectedPersona = preferred ? preferred.slug : null;
  view.showPersonas(personas, selectedPersona, (slug) => {
    selectedPersona = slug;
  });
}

view.init({
  open: (id) => openConversation(id, { push: true }),
  rename: renameConversation,
  remove: deleteConversation,
  message: onMessageAction,
  attach: attachFiles,
  removeAttachment,
  share: onShare,
  more: loadOlderConversations,
});

// Messages are drawn once personas are known, so their headers carry names and avatars.
const personasReady = loadPersonas().catch((error) => {
  view.showError(`Could not load personas: ${error.message}`);
});

transport.connect();
// The page is usable at once: a message typed before the lists arrive is kept pending.
route();
loadConversations().catch((error) => {
  view.showError(`Could not load conversations: ${error.message}`);
});
personasReady.then(() => {
  view.redrawPersonas();
  render();
});
// The budget's period words the quota notice; tokens already used up disable sending now.
api("GET", "/api/usage/")
  .then((usage) => {
    chat.usageLoaded(state, usage, Date.now());
    render();
  })
  .catch(() => {});
