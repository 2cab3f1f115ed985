/*
 * What the chat page knows, with no DOM, no window and no network: frames in, state out.
 *
 * The open conversation's messages live here as plain objects, in the order they are shown:
 * the active path of the conversation's tree, from its first message down. Each message
 * knows its parent and its versions (siblings, oldest first, itself included), so the page
 * can offer "‹ 2 / 3 ›"; the view draws them and nothing else. Functions that change the state return the effects
 * the page must carry out (frames to send, a conversation to reload, words to announce),
 * so `node --test` can drive every protocol path without a browser.
 */

const SPOKEN = {
  complete: "Reply complete.",
  stopped: "Reply stopped.",
  error: "The reply failed.",
  interrupted: "The reply was interrupted.",
};

export function createState() {
  return {
    // The conversation in the URL; null for a new chat.
    currentId: null,
    // The conversation whose messages are shown; null while a load is in flight.
    loadedId: null,
    // The client_id whose chat.accepted will tell us the id of a brand-new conversation.
    awaitingNew: null,
    // The persona of the open conversation (or of the new one being started).
    currentPersona: null,
    title: "",
    // The open conversation's active path, oldest first: {key, id, role, content, status,
    // error, seq, parentId, siblings, feedback, comment, usage}. `siblings` is null while a
    // reply's versions are not known (followed after a reload): its chat.done reloads them.
    messages: [],
    // The end of the active path as the server last said (a message id), or null.
    currentLeafId: null,
    // chat.send and chat.regenerate frames not yet acknowledged by chat.accepted, by
    // client_id: {frame, message (the user message shown, none for a regenerate), resent,
    // edit (the edited message's key, for an edit and resend)}.
    pending: new Map(),
    // The message being edited in place: {key, draft}, or null.
    editing: null,
    // The reply whose 👎 comment field is open (its key), or null.
    commenting: null,
    // The reply being followed: deltas by seq, joined while contiguous.
    stream: null,
    // Replies that are already final on screen: late frames for them are ignored.
    finalIds: new Set(),
    // Set by a reload that chat.idle asked for, so an unanswered message cannot loop us.
    idleReloaded: false,
    // The conversation whose chat.resume awaits its answer, and how many times in a row one
    // was refused as `unavailable` (the database away as the socket came back): the page asks
    // again, each wait longer, rather than leave the reply in view frozen.
    resuming: null,
    resumeRefusals: 0,
    // The sidebar: the conversations listed, the search that listed them, a change counter,
    // and the address of the list's next page (null: it is all there).
    conversations: [],
    query: "",
    listNext: null,
    listVersion: 0,
    // Access and quotas. Conversations whose sends answered `forbidden`, with the reason.
    forbidden: new Map(),
    // The slugs of the personas the user may use (GET /api/personas/), once known.
    usablePersonas: null,
    // The budget period ("day", "week", "month") and, while the tokens are used up, when
    // sending may start again: {until} in ms since the epoch.
    period: "day",
    quota: null,
    // What each usable persona can read: slug -> {name, acceptsImages}.
    personaInfo: new Map(),
    // Files in the composer, in the order attached: {key, name, size, type, kind, preview,
    // width, height, status ("uploading", "done", "error"), progress (0 to 1), id, url,
    // contentType, error}. Only "done" ones go with the next message.
    attachments: [],
    // The Share dialog of the open conversation: {conversationId, status ("loading",
    // "none", "shared", "error"), url, createdAt, busy ("create", "revoke" or null), error}.
    share: null,
  };
}

// ---- Reading the state --------------------------------------------------------------------

export function isGenerating(state) {
  return Boolean(state.stream && state.stream.conversationId === state.currentId);
}

/** The persona picker is for a chat that has neither an id nor a first message on its way. */
export function pickerVisible(state) {
  return state.currentId === null && state.awaitingNew === null;
}

function showing(state, conversationId) {
  return conversationId === state.currentId && state.loadedId === state.currentId;
}

function findMessage(state, id) {
  return id ? state.messages.find((message) => message.id === id) || null : null;
}

function savedMessage(message) {
  return {
    key: message.id,
    id: message.id,
    role: message.role,
    content: message.content,
    status: message.status,
    error: message.error || null,
    seq: null,
    // Servers from before branching send none of these: a chain of single versions.
    parentId: message.parent_id === undefined ? undefined : message.parent_id,
    siblings: Array.isArray(message.siblings) && message.siblings.length ? [...message.siblings] : [message.id],
    feedback: message.feedback === 1 || message.feedback === -1 ? message.feedback : null,
    comment: typeof message.feedback_comment === "string" ? message.feedback_comment : "",
    usage: usageOf(message.usage),
    attachments: Array.isArray(message.attachments) ? message.attachments.map(attachmentOf) : [],
  };
}

// An attachment as the JSON API lists it on a message (or as the composer held it).
function attachmentOf(a) {
  const kind = a.kind || kindOf(a.content_type || a.contentType || "");
  return {
    id: a.id || null,
    name: String(a.name || "file"),
    size: Number.isFinite(a.size) ? a.size : null,
    contentType: a.content_type || a.contentType || "",
    kind,
    width: Number.isInteger(a.width) && a.width > 0 ? a.width : null,
    height: Number.isInteger(a.height) && a.height > 0 ? a.height : null,
    url: typeof a.url === "string" ? a.url : a.id ? `/api/uploads/${a.id}/` : null,
    // The composer's local thumbnail, shown until a reload brings the server's copy.
    preview: typeof a.preview === "string" ? a.preview : null,
  };
}

function kindOf(type) {
  if (type.startsWith("image/")) return "image";
  if (type === "application/pdf") return "pdf";
  return "text";
}

function usageOf(usage) {
  if (!usage || typeof usage !== "object") return null;
  const { input_tokens: input, output_tokens: output } = usage;
  if (!Number.isInteger(input) && !Number.isInteger(output)) return null;
  return { input: Number.isInteger(input) ? input : null, output: Number.isInteger(output) ? output : null };
}

/** Where a message stands among its versions: {index (1-based), count}. */
export function versionOf(message) {
  const siblings = message.siblings || [];
  const index = siblings.indexOf(message.id || message.key) + 1;
  return { index, count: Math.max(siblings.length, index) };
}

/** The message a message follows on the path: its parent_id, else the one shown before it. */
function parentOf(state, message) {
  if (message.parentId !== undefined) return message.parentId;
  const index = state.messages.indexOf(message);
  return index > 0 ? state.messages[index - 1].id : null;
}

/** Something in the open conversation is on its way: a reply, or a request for one. */
export function isBusy(state) {
  if (isGenerating(state)) return true;
  for (const entry of state.pending.values()) {
    if (entry.frame.conversation_id === state.currentId && entry.frame.conversation_id) return true;
  }
  return false;
}

const WAIT = "Wait for the reply to finish, or stop it first.";

// ---- Access and quotas --------------------------------------------------------------------

const PERIOD_WORDS = { day: "today", week: "this week", month: "this month" };
const NO_LONGER =
  "You can no longer chat with this persona: this conversation stays readable. Start a new chat to go on.";

/** "5 h 12 min", "2 d 3 h" or "4 min": a wait in seconds, rounded up to the minute. */
export function durationText(seconds) {
  const minutes = Math.max(1, Math.ceil(seconds / 60));
  const days = Math.floor(minutes / 1440);
  const hours = Math.floor((minutes % 1440) / 60);
  const mins = minutes % 60;
  if (days) return `${days} d ${hours} h`;
  return hours ? `${hours} h ${mins} min` : `${mins} min`;
}

const WEEKDAYS = ["Sun", "Mon", "Tue", "Wed", "Thu", "Fri", "Sat"];
const MONTHS = ["Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec"];

/**
 * "You have used your tokens for today; they renew at 00:00 UTC (in 5 h 12 min)", for a
 * wait of `retryAfter` seconds from `now` (ms). Periods start at 00:00 UTC; a week's or a
 * month's renewal also names its day.
 */
export function quotaMessage(period, retryAfter, now) {
  // retry_after is rounded up to whole seconds: the renewal is on the minute before.
  const renews = new Date(Math.floor((now + retryAfter * 1000) / 60000) * 60000);
  const time = `${String(renews.getUTCHours()).padStart(2, "0")}:${String(renews.getUTCMinutes()).padStart(2, "0")} UTC`;
  const when =
    period === "week" || period === "month"
      ? `on ${WEEKDAYS[renews.getUTCDay()]} ${renews.getUTCDate()} ${MONTHS[renews.getUTCMonth()]}, ${time}`
      : `at ${time}`;
  const words = PERIOD_WORDS[period] || "this period";
  return `You have used your tokens for ${words}; they renew ${when} (in ${durationText(retryAfter)})`;
}

/** GET /api/personas/ answered: only these may start or continue a chat. */
export function personasLoaded(state, personas) {
  state.usablePersonas = new Set(personas.map((p) => p.slug));
  // A server from before attachments says nothing: let it be the judge.
  state.personaInfo = new Map(
    personas.map((p) => [p.slug, { name: p.name || p.slug, acceptsImages: p.accepts_images !== false }]),
  );
}

/** GET /api/usage/ answered: the period, and whether the tokens are used up already. */
export function usageLoaded(state, usage, now) {
  if (usage && typeof usage.period === "string") state.period = usage.period;
  if (!usage || usage.limit_tokens === null || usage.limit_tokens === undefined) return;
  const until = Date.parse(usage.resets_at);
  if (usage.used_tokens >= usage.limit_tokens && until > now) state.quota = { until };
}

/**
 * Why nothing can be sent now, or null: {kind: "forbidden", message} in a conversation whose
 * persona the user may no longer use (it stays readable), else {kind: "quota", message,
 * until} while the tokens are used up.
 */
export function blocked(state, now) {
  const id = state.currentId;
  if (id && state.forbidden.has(id)) return { kind: "forbidden", message: state.forbidden.get(id) || NO_LONGER };
  const persona = id && state.loadedId === id ? state.currentPersona : null;
  if (persona && state.usablePersonas && !state.usablePersonas.has(persona)) {
    return { kind: "forbidden", message: NO_LONGER };
  }
  if (state.quota && now < state.quota.until) {
    const wait = Math.ceil((state.quota.until - now) / 1000);
    return { kind: "quota", message: quotaMessage(state.period, wait, now), until: state.quota.until };
  }
  return null;
}

function refusedNow(state, now) {
  const reason = blocked(state, now === undefined ? Date.now() : now);
  return reason ? { error: reason.message } : null;
}

// ---- Opening conversations ----------------------------------------------------------------

function resetView(state) {
  state.stream = null;
  state.resuming = null;
  state.resumeRefusals = 0;
  state.finalIds = new Set();
  state.messages = [];
}

export function openNew(state) {
  state.currentId = null;
  state.loadedId = null;
  state.currentPersona = null;
  state.awaitingNew = null;
  state.idleReloaded = false;
  state.title = "";
  resetView(state);
}

/** Start opening `id`; frames for it are ignored until `conversationLoaded`. */
export function openConversation(state, id, { keepView = false, afterIdle = false } = {}) {
  state.idleReloaded = afterIdle;
  state.currentId = id;
  state.loadedId = null;
  state.awaitingNew = null;
  if (!keepView) resetView(state);
}

/** The API's conversation arrived: show it, and return the chat.resume frame that follows it. */
export function conversationLoaded(state, id, conversation) {
  resetView(state);
  state.currentPersona = conversation.persona;
  state.title = conversation.title || "";
  state.currentLeafId = conversation.current_leaf_id || null;
  for (const message of conversation.messages) {
    state.messages.push(savedMessage(message));
    if (message.role !== "user") state.finalIds.add(message.id);
  }
  // Messages the user sent that the server has not acknowledged yet stay on screen.
  for (const entry of state.pending.values()) {
    if (entry.frame.conversation_id === id && entry.message) state.messages.push(entry.message);
  }
  // An edit or a comment field stays open only while its message is still on the path.
  if (state.editing && !state.messages.some((m) => m.key === state.editing.key)) state.editing = null;
  if (state.commenting && !state.messages.some((m) => m.key === state.commenting)) state.commenting = null;
  state.loadedId = id;
  return resumeFrame(state);
}

export function resumeFrame(state) {
  if (!state.loadedId || state.loadedId !== state.currentId) return null;
  state.resuming = state.currentId;
  return {
    type: "chat.resume",
    conversation_id: state.currentId,
    after_seq: state.stream ? state.stream.seq : 0,
  };
}

// ---- Sending ------------------------------------------------------------------------------

/**
 * The user pressed Send. Returns {frame} to send, {error} to show, or {} when there is
 * nothing to do (an empty box, or the first message of a new chat is still on its way).
 */
export function compose(state, { content, clientId, persona, maxChars, now }) {
  const text = content.trim();
  const files = readyAttachments(state);
  if (!text && !files.length) {
    return uploading(state) ? { error: UPLOADING } : {};
  }
  const refused = refusedNow(state, now);
  if (refused) return refused;
  // Characters as the server counts them (code points): an emoji is one, not two.
  const length = Array.from(text).length;
  if (length > maxChars) {
    return { error: `That message is too long (${length} characters; the limit is ${maxChars}).` };
  }
  if (isGenerating(state)) return { error: WAIT };
  if (uploading(state)) return { error: UPLOADING };
  const isNew = state.currentId === null;
  if (isNew && state.awaitingNew) return {};
  const frame = {
    type: "chat.send",
    conversation_id: state.currentId,
    persona: isNew ? persona : null,
    content: text,
    client_id: clientId,
  };
  // Servers from before attachments never see the field unless files are attached.
  if (files.length) frame.attachments = files.map((file) => file.id);
  if (isNew) {
    state.awaitingNew = clientId;
    state.currentPersona = persona;
  }
  const message = userMessage(clientId, text);
  message.attachments = files.map(attachmentOf);
  state.messages.push(message);
  // The composer's files went with the message (those that failed go too: they were shown
  // as failed, and were never going to be sent); a refusal gives the sent ones back.
  state.pending.set(clientId, { frame, message, resent: false, edit: null, attachments: files });
  state.attachments = [];
  return { frame };
}

function userMessage(clientId, text) {
  return {
    key: clientId, id: null, role: "user", content: text, status: "sending", error: null, seq: null,
    parentId: undefined, siblings: [clientId], feedback: null, comment: "", usage: null, attachments: [],
  };
}

// ---- Attachments in the composer ---------------------------------------------------------

export const MAX_ATTACHMENTS = 4;
const UPLOADING = "Wait for the files to finish uploading.";

/** The composer's files that count against the limit: uploading or uploaded. */
function liveAttachments(state) {
  return state.attachments.filter((a) => a.status !== "error");
}

function readyAttachments(state) {
  return state.attachments.filter((a) => a.status === "done" && a.id);
}

function findAttachment(state, key) {
  return state.attachments.find((a) => a.key === key) || null;
}

/** Whether a file is still on its way to the server (Send waits for it). */
export function uploading(state) {
  return state.attachments.some((a) => a.status === "uploading");
}

/**
 * The user chose, dropped or pasted files: each is {key, name, size, type}. Returns {added}
 * (the composer items to upload, in order) and {refused}: the names past the limit of
 * MAX_ATTACHMENTS, with {error} saying so.
 */
export function attachmentsAdd(state, files) {
  const added = [];
  const refused = [];
  for (const file of files) {
    if (liveAttachments(state).length >= MAX_ATTACHMENTS) {
      refused.push(file.name);
      continue;
    }
    const item = {
      key: file.key,
      name: String(file.name || "file"),
      size: Number.isFinite(file.size) ? file.size : null,
      type: file.type || "",
      // A guess from the browser's type until the server, which reads the content, says.
      kind: kindOf(file.type || ""),
      preview: null,
      width: null,
      height: null,
      status: "uploading",
      progress: 0,
      id: null,
      url: null,
      contentType: file.type || "",
      error: null,
    };
    state.attachments.push(item);
    added.push(item);
  }
  if (!refused.length) return { added, refused, error: null };
  const names = refused.map((name) => `“${name}”`).join(", ");
  const error = `You can attach up to ${MAX_ATTACHMENTS} files to a message: ${names} ${refused.length === 1 ? "was" : "were"} not added.`;
  return { added, refused, error };
}

/** The browser drew a local thumbnail of an image (its size in pixels too). */
export function attachmentPreviewed(state, key, { preview, width, height }) {
  const item = findAttachment(state, key);
  if (!item) return;
  item.preview = preview;
  if (item.status !== "done") {
    item.width = width;
    item.height = height;
  }
}

export function attachmentProgress(state, key, loaded, total) {
  const item = findAttachment(state, key);
  if (!item || item.status !== "uploading" || !(total > 0)) return;
  item.progress = Math.max(item.progress, Math.min(1, loaded / total));
}

/**
 * POST /api/uploads/ answered 201. Returns false when the file was removed meanwhile: the
 * page then deletes the upload nobody wants.
 */
export function attachmentUploaded(state, key, upload) {
  const item = findAttachment(state, key);
  if (!item) return false;
  const judged = attachmentOf(upload);
  item.status = "done";
  item.progress = 1;
  item.id = judged.id;
  item.url = judged.url;
  item.name = judged.name;
  item.size = judged.size;
  item.contentType = judged.contentType;
  item.kind = judged.kind;
  if (judged.width && judged.height) {
    item.width = judged.width;
    item.height = judged.height;
  }
  if (item.kind !== "image") item.preview = null;
  return true;
}

/** The upload was refused (the server's message) or failed: the file stays, marked. */
export function attachmentFailed(state, key, message) {
  const item = findAttachment(state, key);
  if (!item) return;
  item.status = "error";
  item.error = message || "The upload failed.";
}

/**
 * The user removed a file (×). Returns the item removed, or null: an uploading one is for
 * the page to abort, an uploaded one for it to DELETE.
 */
export function attachmentRemove(state, key) {
  const item = findAttachment(state, key);
  if (!item) return null;
  state.attachments = state.attachments.filter((a) => a !== item);
  return item;
}

/** The composer emptied (a new chat, another conversation): what the page must clean up. */
export function attachmentsClear(state) {
  const removed = state.attachments;
  state.attachments = [];
  return removed;
}

/**
 * A warning before sending: images in the composer for a persona whose model cannot read
 * them (the server would refuse the message). Null when there is nothing to say.
 */
export function imageWarning(state, personaSlug) {
  const info = personaSlug ? state.personaInfo.get(personaSlug) : null;
  if (!info || info.acceptsImages) return null;
  if (!state.attachments.some((a) => a.kind === "image" && a.status !== "error")) return null;
  return `${info.name} cannot read images: remove them before sending (text and PDF files are fine).`;
}

// ---- Sharing ------------------------------------------------------------------------------

/** The Share dialog opened on the open conversation: GET its share next (or null). */
export function shareOpened(state) {
  // Only a saved conversation has a link to share.
  if (!state.currentId) return null;
  const previous = state.share && state.share.conversationId === state.currentId ? state.share : null;
  state.share = {
    conversationId: state.currentId,
    status: previous && previous.status === "shared" ? "shared" : "loading",
    url: previous ? previous.url : null,
    createdAt: previous ? previous.createdAt : null,
    busy: null,
    error: null,
  };
  return state.currentId;
}

/** The share API answered for `conversationId`: {token, url, created_at}, or null for none. */
export function shareLoaded(state, conversationId, answer) {
  const share = state.share;
  if (!share || share.conversationId !== conversationId) return false;
  share.busy = null;
  share.error = null;
  if (answer && typeof answer.url === "string") {
    share.status = "shared";
    share.url = answer.url;
    share.createdAt = answer.created_at || null;
  } else {
    share.status = "none";
    share.url = null;
    share.createdAt = null;
  }
  return true;
}

/** Create link / Update snapshot ("create") or Revoke ("revoke") pressed: false if busy. */
export function shareBusy(state, what) {
  const share = state.share;
  if (!share || share.busy || share.status === "loading") return false;
  if (what === "revoke" && share.status !== "shared") return false;
  share.busy = what;
  share.error = null;
  return true;
}

export function shareFailed(state, conversationId, message) {
  const share = state.share;
  if (!share || share.conversationId !== conversationId) return;
  if (share.status === "loading") share.status = "error";
  share.busy = null;
  share.error = message;
}

export function shareClosed(state) {
  if (state.share) state.share.busy = null;
}

// ---- Versions: edit and resend, regenerate, switch ------------------------------------------

/** The last message the user sent on the path (the one ↑ in an empty composer edits). */
export function lastUserMessage(state) {
  for (let i = state.messages.length - 1; i >= 0; i -= 1) {
    const message = state.messages[i];
    if (message.role === "user") return message.id ? message : null;
  }
  return null;
}

/** Open the editor on a saved user message; false when it cannot be edited now. */
export function startEdit(state, key) {
  const message = state.messages.find((m) => m.key === key);
  if (!message || message.role !== "user" || !message.id) return false;
  state.editing = { key, draft: message.content };
  return true;
}

export function cancelEdit(state) {
  state.editing = null;
}

/**
 * Send the edited text as a new version of the message being edited: chat.send with that
 * message's parent_id. The path below it goes at once; the new message shows as sending.
 * Returns {frame}, {error}, or {} when there is nothing to send.
 */
export function composeEdit(state, { content, clientId, maxChars, now }) {
  const editing = state.editing;
  const index = editing ? state.messages.findIndex((m) => m.key === editing.key) : -1;
  if (index < 0) return {};
  const refused = refusedNow(state, now);
  if (refused) return refused;
  const edited = state.messages[index];
  const text = content.trim();
  // An edit keeps the files of the message it replaces: only the words change.
  const kept = (edited.attachments || []).filter((a) => a.id);
  if (!text && !kept.length) return { error: "The message is empty." };
  const length = Array.from(text).length;
  if (length > maxChars) {
    return { error: `That message is too long (${length} characters; the limit is ${maxChars}).` };
  }
  if (isBusy(state)) return { error: WAIT };
  const parentId = parentOf(state, edited);
  const frame = {
    type: "chat.send",
    conversation_id: state.currentId,
    persona: null,
    content: text,
    client_id: clientId,
    parent_id: parentId,
  };
  if (kept.length) frame.attachments = kept.map((a) => a.id);
  const message = userMessage(clientId, text);
  message.attachments = kept.map((a) => ({ ...a }));
  message.parentId = parentId;
  message.siblings = [...versionIds(edited), clientId];
  state.messages.splice(index);
  state.messages.push(message);
  state.pending.set(clientId, { frame, message, resent: false, edit: { key: edited.key, draft: text } });
  state.editing = null;
  return { frame };
}

function versionIds(message) {
  return message.siblings ? [...message.siblings] : [message.id || message.key];
}

/** Ask for a new version of the reply `key` (Regenerate, and Retry for a failed reply). */
export function regenerate(state, { key, clientId, now }) {
  const message = state.messages.find((m) => m.key === key);
  if (!message || message.role !== "assistant" || !message.id || !state.currentId) return {};
  const refused = refusedNow(state, now);
  if (refused) return refused;
  if (isBusy(state)) return { error: WAIT };
  const frame = {
    type: "chat.regenerate",
    conversation_id: state.currentId,
    message_id: message.id,
    client_id: clientId,
  };
  state.pending.set(clientId, { frame, message: null, resent: false, edit: null });
  return { frame };
}

/**
 * The version `step` (-1 or +1) away from message `key`: {id} to move the active path to
 * (PATCH current_leaf_id, then conversationLoaded with the answer), {error}, or {}.
 */
export function versionStep(state, key, step) {
  const message = state.messages.find((m) => m.key === key);
  if (!message || !message.id) return {};
  const { index, count } = versionOf(message);
  const target = index - 1 + step;
  if (index < 1 || target < 0 || target >= count) return {};
  if (isBusy(state)) return { error: WAIT };
  return { id: message.siblings[target] };
}

// Put `message` on the path right after the message `parentId` (null: first), as a new
// version beside the one that stood there, which goes with everything below it. False
// when the parent is not on the path shown (another tab chose another branch).
function placeAfter(state, parentId, message) {
  const at = parentId === null ? 0 : state.messages.findIndex((m) => m.id === parentId) + 1;
  if (parentId !== null && at === 0) return false;
  if (state.messages[at] === message) return true;
  const replaced = state.messages[at];
  state.messages = state.messages.filter((m) => m !== message);
  state.messages.splice(at);
  if (replaced && replaced.role === message.role) {
    const ids = versionIds(replaced);
    const own = message.id || message.key;
    message.siblings = ids.includes(own) ? ids : [...ids, own];
  }
  if (state.stream && !state.messages.includes(state.stream.message)) state.stream = null;
  state.messages.push(message);
  return true;
}

// ---- Feedback -----------------------------------------------------------------------------

/**
 * 👍 (1) or 👎 (-1) pressed on reply `key`: the rating to PUT (pressing the active one
 * again clears it: 0), or null. 👎 opens the comment field.
 */
export function feedbackPressed(state, key, rating) {
  const message = state.messages.find((m) => m.key === key);
  if (!message || message.role !== "assistant" || !message.id) return null;
  const next = message.feedback === rating ? 0 : rating;
  state.commenting = next === -1 ? key : null;
  return { id: message.id, rating: next };
}

/** The server saved a rating ({rating, comment} as PUT answered). */
export function feedbackSaved(state, id, { rating, comment }) {
  const message = findMessage(state, id);
  if (!message) return;
  message.feedback = rating === 1 || rating === -1 ? rating : null;
  message.comment = typeof comment === "string" ? comment : "";
  if (message.feedback !== -1 && state.commenting === message.key) state.commenting = null;
}

export function closeComment(state) {
  state.commenting = null;
}

export function stopFrame(state) {
  return state.stream ? { type: "chat.stop", conversation_id: state.stream.conversationId } : null;
}

/**
 * The socket opened. Returns the frames to send on it (every pending chat.send, then a
 * resume) and, after a reconnect with no reply in view, the conversation to reload instead.
 */
export function socketOpened(state, reconnected) {
  const frames = [];
  for (const entry of state.pending.values()) {
    // Same client_id: the server never saves a message twice, so re-sending is safe.
    entry.resent = reconnected || entry.resent;
    frames.push(entry.frame);
  }
  if (reconnected && !state.stream && state.loadedId && state.loadedId === state.currentId) {
    // Replies may have finished while we were away: reload, which resumes afterwards.
    return { frames, reload: state.currentId };
  }
  const resume = resumeFrame(state);
  if (resume) frames.push(resume);
  return { frames, reload: null };
}

/** A delta is missing: the chat.resume that asks for a replay from the last one in order. */
export function gapResume(state) {
  const stream = state.stream;
  if (!stream || !stream.buffer.size) return null;
  state.resuming = stream.conversationId;
  return { type: "chat.resume", conversation_id: stream.conversationId, after_seq: stream.seq };
}

export function hasGap(state) {
  return Boolean(state.stream && state.stream.buffer.size);
}

// ---- The sidebar list ---------------------------------------------------------------------

export function setQuery(state, query) {
  state.query = query;
}

/**
 * A list answered a search; false when a newer search has been typed since. `next` is the
 * address of the page after it (the answer's Link header), or null when there is none.
 */
export function listLoaded(state, query, conversations, next = null) {
  if (query !== state.query) return false;
  state.conversations = conversations;
  state.listNext = next;
  state.listVersion += 1;
  return true;
}

/**
 * The page after the list arrived: added below it, without a chat the list shows already
 * (one moved between the pages). False when the list was reloaded or searched meanwhile.
 */
export function listMoreLoaded(state, from, conversations, next = null) {
  if (from !== state.listNext) return false;
  const shown = new Set(state.conversations.map((c) => c.id));
  state.conversations = [...state.conversations, ...conversations.filter((c) => !shown.has(c.id))];
  state.listNext = next;
  state.listVersion += 1;
  return true;
}

export function conversationRenamed(state, id, title) {
  const conversation = state.conversations.find((c) => c.id === id);
  if (conversation) conversation.title = title;
  if (id === state.currentId) state.title = title;
  state.listVersion += 1;
}

export function conversationDeleted(state, id) {
  state.conversations = state.conversations.filter((c) => c.id !== id);
  state.listVersion += 1;
}

// Keeps the list in step with socket frames without a round trip, unless a search is shown.
function touch(state, id, changes, { toTop = false, now = null } = {}) {
  if (state.query) return [{ type: "refreshList" }];
  const list = state.conversations;
  const index = list.findIndex((c) => c.id === id);
  const existing = index >= 0 ? list.splice(index, 1)[0] : { id, title: "", persona: null };
  const updated = { ...existing, ...changes };
  if (toTop && now) updated.updated_at = now;
  if (toTop) list.unshift(updated);
  else list.splice(Math.max(index, 0), 0, updated);
  state.listVersion += 1;
  return [];
}

// ---- Frames from the server ---------------------------------------------------------------

/** Apply one server frame; returns the effects for the page to carry out. */
export function receive(state, frame, now = null) {
  switch (frame.type) {
    case "chat.accepted":
      return accepted(state, frame, now);
    case "chat.delta":
      if (!showing(state, frame.conversation_id)) return [];
      settleResent(state, frame.conversation_id);
      return [...resumeAnswered(state, frame), ...delta(state, frame)];
    case "chat.done":
      return [...resumeAnswered(state, frame), ...done(state, frame, now)];
    case "chat.idle":
      return [...resumeAnswered(state, frame), ...idle(state, frame)];
    case "chat.error":
      return error(state, frame, now);
    case "conversation.updated": {
      const effects = touch(state, frame.conversation_id, { title: frame.title || "" });
      if (frame.conversation_id === state.currentId) state.title = frame.title || "";
      return effects;
    }
    default:
      return []; // newer servers may add types; ignoring them is the contract
  }
}

function acknowledge(state, entry, userMessageId) {
  const message = entry.message;
  if (!message) return;
  message.status = "complete";
  if (userMessageId) {
    message.id = userMessageId;
    // The versions named it by client_id until now.
    if (message.siblings) message.siblings = message.siblings.map((id) => (id === message.key ? userMessageId : id));
  }
}

// A re-sent message the server had already saved is not accepted again: its reply streaming
// (or finishing) is the acknowledgement.
function settleResent(state, conversationId) {
  for (const [clientId, entry] of state.pending) {
    if (entry.frame.conversation_id === conversationId && entry.resent) {
      state.pending.delete(clientId);
      acknowledge(state, entry, null);
    }
  }
}

function accepted(state, frame, now) {
  const effects = [];
  // A turn was accepted (here or in another tab): the tokens are not used up after all.
  state.quota = null;
  const entry = state.pending.get(frame.client_id);
  state.pending.delete(frame.client_id);
  if (state.awaitingNew && state.awaitingNew === frame.client_id) {
    // The first message of a new chat: the conversation now has an id.
    state.awaitingNew = null;
    state.currentId = frame.conversation_id;
    state.loadedId = frame.conversation_id;
    state.currentPersona = frame.persona;
    effects.push({ type: "url", conversationId: frame.conversation_id });
  }
  const changes = { persona: frame.persona };
  if (frame.title) changes.title = frame.title;
  effects.push(...touch(state, frame.conversation_id, changes, { toTop: true, now }));
  if (frame.conversation_id !== state.currentId) return effects;
  if (frame.title) state.title = frame.title;
  if (entry) acknowledge(state, entry, frame.user_message_id);
  // Still loading: the loaded path and the chat.resume after it show the reply.
  if (!showing(state, frame.conversation_id)) return effects;
  if (frame.regenerate) return [...effects, ...regenerated(state, frame)];

  let message = null;
  if (entry) {
    message = entry.message;
  } else {
    message = findMessage(state, frame.user_message_id);
    if (!message && typeof frame.content === "string") {
      // Sent from another tab: show the user's message before its reply streams in.
      message = savedMessage({ id: frame.user_message_id, role: "user", content: frame.content, status: "complete" });
      if (!("parent_id" in frame)) state.messages.push(message);
    }
  }
  let replySiblings = [frame.message_id];
  if (message && "parent_id" in frame) {
    // Where the message sits in the tree: an edit (here or in another tab) is a new
    // version of the message it replaced, and the path below that one goes.
    message.parentId = frame.parent_id;
    if (!placeAfter(state, frame.parent_id, message)) {
      return [...effects, { type: "reload", conversationId: frame.conversation_id }];
    }
  } else if (!message) {
    replySiblings = null;
  }
  if (frame.message_id && !state.finalIds.has(frame.message_id)) {
    const known = findMessage(state, frame.message_id);
    const stream = startStream(state, frame.conversation_id, frame.message_id);
    if (!known) {
      // The first reply to a message just saved is its only version.
      stream.message.siblings = replySiblings;
      if (message && message.id) stream.message.parentId = message.id;
    }
  }
  return effects;
}

// A new version of the reply to an earlier message (Regenerate or Retry, here or in another
// tab): it takes the place of the reply shown for that message, one more version of it.
function regenerated(state, frame) {
  if (state.finalIds.has(frame.message_id) || findMessage(state, frame.message_id)) {
    if (!state.finalIds.has(frame.message_id)) startStream(state, frame.conversation_id, frame.message_id);
    return [];
  }
  const question = findMessage(state, frame.user_message_id);
  if (!question || question.role !== "user") {
    // The other tab regenerated on a branch this one does not show: the path moved there.
    return [{ type: "reload", conversationId: frame.conversation_id }];
  }
  const at = state.messages.indexOf(question) + 1;
  const replaced = state.messages[at];
  let siblings = null;
  if (replaced && replaced.role === "assistant" && replaced.siblings) siblings = [...replaced.siblings, frame.message_id];
  state.messages.splice(at);
  if (state.stream && !state.messages.includes(state.stream.message)) state.stream = null;
  const stream = startStream(state, frame.conversation_id, frame.message_id);
  stream.message.parentId = question.id;
  stream.message.siblings = siblings;
  return [];
}

function startStream(state, conversationId, messageId) {
  if (state.stream && state.stream.messageId === messageId) return state.stream;
  let message = findMessage(state, messageId);
  if (!message) {
    message = savedMessage({ id: messageId, role: "assistant", content: "", status: "streaming" });
    // Followed without a chat.accepted (after a reload): how many versions it is, is
    // learnt from the server once it is saved.
    message.siblings = null;
    state.messages.push(message);
  }
  message.status = "streaming";
  message.error = null;
  state.stream = { conversationId, messageId, seq: 0, text: "", buffer: new Map(), message };
  return state.stream;
}

function delta(state, frame) {
  if (state.finalIds.has(frame.message_id)) return [];
  const stream =
    state.stream && state.stream.messageId === frame.message_id
      ? state.stream
      : startStream(state, frame.conversation_id, frame.message_id);
  state.idleReloaded = false;
  // Replayed after a resume, or repeated: already shown.
  if (!Number.isInteger(frame.seq) || frame.seq <= stream.seq || stream.buffer.has(frame.seq)) return [];
  stream.buffer.set(frame.seq, frame.text);
  const before = stream.seq;
  while (stream.buffer.has(stream.seq + 1)) {
    stream.seq += 1;
    stream.text += stream.buffer.get(stream.seq);
    stream.buffer.delete(stream.seq);
  }
  if (stream.seq !== before) {
    stream.message.content = stream.text;
    stream.message.seq = stream.seq;
  }
  return [];
}

function done(state, frame, now) {
  const effects = touch(state, frame.conversation_id, {}, { toTop: true, now });
  if (!showing(state, frame.conversation_id)) return effects;
  settleResent(state, frame.conversation_id);
  const stream = state.stream && state.stream.messageId === frame.message_id ? state.stream : null;
  if (!stream && state.finalIds.has(frame.message_id)) return effects;
  let message = stream ? stream.message : findMessage(state, frame.message_id);
  if (!message) {
    message = savedMessage({ id: frame.message_id, role: "assistant", content: "", status: frame.status });
    state.messages.push(message);
  }
  if (stream) {
    state.stream = null;
    message.seq = stream.seq;
  }
  // chat.done carries exactly what was saved: it replaces whatever the deltas built.
  message.content = frame.content || "";
  message.status = frame.status;
  message.error = frame.error || null;
  message.usage = usageOf(frame.usage);
  state.finalIds.add(frame.message_id);
  state.currentLeafId = frame.message_id;
  effects.push({ type: "announce", text: SPOKEN[frame.status] || "Reply finished." });
  // A reply followed after a reload: the server knows how many versions it has.
  if (message.siblings === null) effects.push({ type: "reload", conversationId: frame.conversation_id });
  return effects;
}

function idle(state, frame) {
  if (!showing(state, frame.conversation_id)) return [];
  // A re-sent message the server had already saved is answered like a resume; with
  // nothing in flight its reply is finished and the reload below shows both.
  let hadResent = false;
  for (const [clientId, entry] of state.pending) {
    if (entry.frame.conversation_id === frame.conversation_id && entry.resent) {
      state.pending.delete(clientId);
      hadResent = true;
    }
  }
  const last = state.messages[state.messages.length - 1];
  const missed = Boolean(state.stream) || hadResent || Boolean(last && last.role === "user");
  if (!missed || state.idleReloaded) {
    state.stream = null;
    return [];
  }
  // The reply ended while this page was not listening: what was saved is the truth.
  // Only once, so a user message whose reply was never saved cannot loop us.
  return [{ type: "reload", conversationId: frame.conversation_id, afterIdle: true }];
}

/** The resume of the open conversation was answered: a notice of its refusals goes. */
function resumeAnswered(state, frame) {
  if (!state.resuming || frame.conversation_id !== state.resuming) return [];
  const refused = state.resumeRefusals > 0;
  state.resuming = null;
  state.resumeRefusals = 0;
  return refused ? [{ type: "error", message: "" }] : [];
}

/** The wait before asking again after `failures` refusals in a row (a resume refused as
 * `unavailable`, a conversation that would not load): 1 s, doubling up to 30 s. */
export function retryDelay(failures) {
  return Math.min(30_000, 1000 * 2 ** (Math.max(1, failures) - 1));
}

function error(state, frame, now) {
  const entry = frame.client_id ? state.pending.get(frame.client_id) : null;
  // Refusals the page shows as a notice in the conversation rather than under the box.
  const notice = accessRefusal(state, frame, entry, now);
  let reason =
    frame.code === "rate_limited" && frame.retry_after
      ? `${frame.message} Try again in ${Math.ceil(frame.retry_after)} s.`
      : frame.message;
  if (notice) reason = "";
  if (entry) {
    state.pending.delete(frame.client_id);
    if (!entry.message) return reason ? [{ type: "error", message: reason }] : [];
    // A refused message saves nothing: take it off the list and give the text back.
    state.messages = state.messages.filter((message) => message !== entry.message);
    if (state.awaitingNew === frame.client_id) state.awaitingNew = null;
    // ...and its files, still uploaded, unless the composer holds others by now.
    if (entry.attachments && entry.attachments.length && !state.attachments.length) {
      state.attachments = entry.attachments;
    }
    if (entry.edit && entry.frame.conversation_id === state.currentId) {
      // The edit took the path below it off the screen: the saved path comes back, with
      // the editor open on the text as it was sent.
      state.editing = { ...entry.edit };
      const reload = { type: "reload", conversationId: state.currentId };
      return notice ? [reload] : [reload, { type: "error", message: reason || "The message was refused." }];
    }
    const refused = { type: "refused", text: entry.frame.content };
    return notice ? [refused] : [refused, { type: "error", message: reason || "The message was refused." }];
  }
  if (notice) return [];
  if (frame.conversation_id && frame.conversation_id !== state.currentId) return [];
  const id = frame.conversation_id;
  const waiting = id && (id === state.resuming || (state.stream && state.stream.conversationId === id));
  if (frame.code === "unavailable" && waiting) {
    // A resume refused (the database away as the socket came back), or the reply's log
    // lost while following it: nothing was lost, and a resume picks it up where it was.
    state.resuming = id;
    state.resumeRefusals += 1;
    const delayMs = retryDelay(state.resumeRefusals);
    return [
      { type: "retryResume", conversationId: id, delayMs },
      { type: "error", message: `The reply could not be reached just now; trying again in ${delayMs / 1000} s.` },
    ];
  }
  if (frame.code === "not_found" && frame.conversation_id) {
    return [{ type: "error", message: "That conversation does not exist or was deleted." }];
  }
  return [{ type: "error", message: reason || "Something went wrong." }];
}

// forbidden and quota_exceeded: remembered, so the page shows why and stops offering to send.
function accessRefusal(state, frame, entry, now) {
  if (frame.code === "forbidden") {
    const id = frame.conversation_id || (entry && entry.frame.conversation_id) || state.currentId;
    if (!id) return false;
    state.forbidden.set(id, frame.message || NO_LONGER);
    return true;
  }
  if (frame.code === "quota_exceeded" && Number(frame.retry_after) > 0) {
    const at = typeof now === "string" ? Date.parse(now) : Number.isFinite(now) ? now : Date.now();
    state.quota = { until: at + Number(frame.retry_after) * 1000 };
    return true;
  }
  return false;
}
