/*
 * The page's DOM: it draws the state (state.js) and reports what the user does.
 *
 * Safety rule for this file: text from users, models and personas reaches the page only
 * through textContent, or as markdown rendered and sanitized by markdown.js.
 */

import { h } from "./dom.js";
import { fileBadge, fitted, messageFileNode, sizeText } from "./files.js";
import { onCopyClick, renderMarkdown } from "./markdown.js";
import { blocked, imageWarning, isBusy, isGenerating, pickerVisible, uploading, versionOf } from "./state.js";

const $ = (selector) => document.querySelector(selector);
export const ui = {
  app: $("#app"),
  sidebar: $("#sidebar"),
  backdrop: $("#backdrop"),
  openSidebar: $("#open-sidebar"),
  closeSidebar: $("#close-sidebar"),
  newChat: $("#new-chat"),
  search: $("#search"),
  list: $("#conversation-list"),
  listEmpty: $("#list-empty"),
  listMore: $("#list-more"),
  logout: $("#logout"),
  title: $("#conversation-title"),
  personaChip: $("#conversation-persona"),
  status: $("#socket-status"),
  exportMenu: $("#export-menu"),
  exportMd: $("#export-md"),
  exportJson: $("#export-json"),
  scroller: $("#scroller"),
  picker: $("#persona-picker"),
  personaOptions: $("#persona-options"),
  messages: $("#messages"),
  notice: $("#chat-notice"),
  noticeText: $("#chat-notice-text"),
  noticeNewChat: $("#notice-new-chat"),
  jump: $("#jump"),
  composer: $("#composer"),
  input: $("#input"),
  send: $("#send"),
  stop: $("#stop"),
  composerError: $("#composer-error"),
  confirm: $("#confirm-delete"),
  confirmText: $("#confirm-text"),
  confirmCancel: $("#confirm-cancel"),
  announcer: $("#announcer"),
  main: $("#main"),
  attach: $("#attach"),
  fileInput: $("#file-input"),
  attachments: $("#attachments"),
  composerWarning: $("#composer-warning"),
  dropHint: $("#drop-hint"),
  shareOpen: $("#share-open"),
  shareDialog: $("#share-dialog"),
  shareStatus: $("#share-status"),
  shareLinkRow: $("#share-link-row"),
  shareLink: $("#share-link"),
  shareCopy: $("#share-copy"),
  shareCreate: $("#share-create"),
  shareRevoke: $("#share-revoke"),
  shareClose: $("#share-close"),
  lightbox: $("#lightbox"),
  lightboxName: $("#lightbox-name"),
  lightboxImage: $("#lightbox-image"),
  lightboxClose: $("#lightbox-close"),
};

const STATUS_LABELS = {
  stopped: "Stopped",
  error: "Error",
  interrupted: "Interrupted",
  streaming: "Writing…",
  sending: "Sending…",
};
const SOCKET_TEXT = { connecting: "Connecting…", connected: "Connected", reconnecting: "Reconnecting…", offline: "Offline" };

// What the user does that the page must act on; set by init().
let actions = null;

// ---- Small helpers -----------------------------------------------------------------------

function displayTitle(title) {
  return title && title.trim() ? title : "New chat";
}

export function announce(text) {
  ui.announcer.textContent = "";
  // A fresh text node after a tick makes screen readers announce repeated messages too.
  setTimeout(() => {
    ui.announcer.textContent = text;
  }, 50);
}

export function showError(text) {
  ui.composerError.textContent = text;
  ui.composerError.hidden = !text;
}

export function setSocketStatus(status) {
  ui.status.dataset.state = status;
  ui.status.querySelector(".label").textContent = SOCKET_TEXT[status];
  ui.status.title = SOCKET_TEXT[status];
}

// ---- Scrolling ---------------------------------------------------------------------------

// Follow the newest text unless the reader has scrolled up.
let stick = true;

function nearBottom() {
  const s = ui.scroller;
  return s.scrollHeight - s.scrollTop - s.clientHeight < 32;
}

export function scrollToBottom() {
  ui.scroller.scrollTop = ui.scroller.scrollHeight;
  stick = true;
  ui.jump.hidden = true;
}

function contentChanged() {
  if (stick) scrollToBottom();
  else ui.jump.hidden = false;
}

function bindScrolling() {
  ui.scroller.addEventListener("scroll", () => {
    stick = nearBottom();
    if (stick) ui.jump.hidden = true;
  });
  // Scrolling up is a clear wish to read: stop following at once, before the next frame.
  ui.scroller.addEventListener("wheel", (event) => {
    if (event.deltaY < 0) stick = false;
  }, { passive: true });
  ui.scroller.addEventListener("touchmove", () => {
    stick = nearBottom();
  }, { passive: true });
  ui.jump.addEventListener("click", () => {
    scrollToBottom();
    ui.input.focus();
  });
}

// ---- Personas ----------------------------------------------------------------------------

let personaBySlug = new Map();

function personaFor(slug) {
  return personaBySlug.get(slug) || { slug, name: slug || "Assistant", avatar: "🤖", description: "" };
}

/** Draw the picker for `personas`, with `selected` checked; onSelect(slug) hears a change. */
export function showPersonas(personas, selected, onSelect) {
  personaBySlug = new Map(personas.map((p) => [p.slug, p]));
  ui.personaOptions.replaceChildren();
  if (!personas.length) {
    ui.personaOptions.append(h("p", { class: "muted", text: "No personas are set up yet. An administrator can add them in the admin." }));
    return;
  }
  for (const persona of personas) {
    const input = h("input", { type: "radio", name: "persona", value: persona.slug, checked: persona.slug === selected });
    input.addEventListener("change", () => onSelect(persona.slug));
    const card = h(
      "label",
      { class: "persona-card", "data-slug": persona.slug },
      input,
      h("span", { class: "persona-avatar", "aria-hidden": "true", text: persona.avatar || "🤖" }),
      h(
        "span",
        { class: "persona-text" },
        h("span", { class: "persona-name", text: persona.name }),
        h("span", { class: "persona-description", text: persona.description || "" }),
      ),
    );
    ui.personaOptions.append(card);
  }
}

// ---- Sidebar -----------------------------------------------------------------------------

const ICONS = {
  rename: "M4 20h4L18.5 9.5a2.1 2.1 0 0 0-4-4L4 16v4zM13.5 6.5l4 4",
  delete: "M4 7h16M10 11v6M14 11v6M6 7l1 13h10l1-13M9 7V4h6v3",
};

function icon(name) {
  const svg = document.createElementNS("http://www.w3.org/2000/svg", "svg");
  svg.setAttribute("viewBox", "0 0 24 24");
  svg.setAttribute("fill", "none");
  svg.setAttribute("stroke", "currentColor");
  svg.setAttribute("stroke-width", "2");
  svg.setAttribute("stroke-linecap", "round");
  svg.setAttribute("stroke-linejoin", "round");
  svg.setAttribute("aria-hidden", "true");
  const path = document.createElementNS("http://www.w3.org/2000/svg", "path");
  path.setAttribute("d", ICONS[name]);
  svg.append(path);
  return svg;
}

// Redrawing would throw away a title being typed; the list is drawn once the rename ends.
let renaming = false;
let listed = { conversations: [], currentId: null, query: "", next: null };

function renderSidebar() {
  if (renaming) return;
  const { conversations, currentId, query } = listed;
  ui.list.replaceChildren();
  for (const conversation of conversations) {
    const title = displayTitle(conversation.title);
    const persona = personaFor(conversation.persona);
    const link = h(
      "a",
      { class: "conv-link", href: `/c/${conversation.id}/`, "aria-current": conversation.id === currentId ? "page" : null },
      h("span", { class: "conv-avatar", "aria-hidden": "true", text: persona.avatar || "🤖" }),
      h("span", { class: "conv-title", text: title }),
    );
    link.addEventListener("click", (event) => {
      if (event.metaKey || event.ctrlKey || event.shiftKey || event.button !== 0) return;
      event.preventDefault();
      actions.open(conversation.id);
      closeSidebar();
    });
    const rename = h("button", { type: "button", class: "icon-btn conv-rename-btn", "aria-label": `Rename “${title}”`, title: "Rename" }, icon("rename"));
    rename.addEventListener("click", () => startRename(item, conversation));
    const remove = h("button", { type: "button", class: "icon-btn conv-delete-btn", "aria-label": `Delete “${title}”`, title: "Delete" }, icon("delete"));
    remove.addEventListener("click", () => confirmDelete(conversation));
    const item = h(
      "li",
      { class: conversation.id === currentId ? "conv is-current" : "conv", "data-id": conversation.id },
      link,
      h("div", { class: "conv-actions" }, rename, remove),
    );
    ui.list.append(item);
  }
  ui.listEmpty.hidden = conversations.length > 0;
  ui.listEmpty.textContent = query ? "No conversations match." : "No conversations yet.";
  ui.listMore.hidden = !listed.next;
}

function markCurrentInSidebar(currentId) {
  for (const item of ui.list.children) {
    const current = item.dataset.id === currentId;
    item.classList.toggle("is-current", current);
    const link = item.querySelector(".conv-link");
    if (link) {
      if (current) link.setAttribute("aria-current", "page");
      else link.removeAttribute("aria-current");
    }
  }
}

function startRename(item, conversation) {
  const input = h("input", { type: "text", class: "conv-rename", maxlength: "200", "aria-label": "New title" });
  input.value = conversation.title || "";
  item.querySelector(".conv-link").replaceWith(input);
  renaming = true;
  input.focus();
  input.select();
  let done = false;
  const finish = async (save) => {
    if (done) return;
    done = true;
    const title = input.value.trim();
    input.disabled = true;
    if (save && title && title !== conversation.title) await actions.rename(conversation, title);
    renaming = false;
    renderSidebar();
    const again = ui.list.querySelector(`li[data-id="${conversation.id}"] .conv-rename-btn`);
    if (again) again.focus();
  };
  input.addEventListener("keydown", (event) => {
    if (event.key === "Enter") {
      event.preventDefault();
      finish(true);
    } else if (event.key === "Escape") {
      event.preventDefault();
      finish(false);
    }
  });
  input.addEventListener("blur", () => finish(true));
}

function confirmDelete(conversation) {
  ui.confirmText.textContent = `“${displayTitle(conversation.title)}” and all its messages will be deleted. This cannot be undone.`;
  ui.confirm.returnValue = "";
  ui.confirm.addEventListener(
    "close",
    () => {
      if (ui.confirm.returnValue === "delete") actions.remove(conversation);
    },
    { once: true },
  );
  ui.confirm.showModal();
  ui.confirmCancel.focus();
}

// ---- Sidebar drawer on narrow screens ----------------------------------------------------

function openSidebar() {
  ui.app.classList.add("sidebar-open");
  ui.openSidebar.setAttribute("aria-expanded", "true");
  ui.backdrop.hidden = false;
  ui.newChat.focus();
}

export function closeSidebar() {
  if (!ui.app.classList.contains("sidebar-open")) return;
  ui.app.classList.remove("sidebar-open");
  ui.openSidebar.setAttribute("aria-expanded", "false");
  ui.backdrop.hidden = true;
}

function bindDrawer() {
  ui.openSidebar.addEventListener("click", openSidebar);
  ui.closeSidebar.addEventListener("click", () => {
    closeSidebar();
    ui.openSidebar.focus();
  });
  ui.backdrop.addEventListener("click", closeSidebar);
  document.addEventListener("keydown", (event) => {
    if (event.key === "Escape" && ui.app.classList.contains("sidebar-open")) {
      closeSidebar();
      ui.openSidebar.focus();
    }
  });
}

// ---- Messages ----------------------------------------------------------------------------

function setStatusBadge(node, status, error) {
  node.dataset.status = status;
  node.classList.toggle("is-sending", status === "sending");
  const badge = node.querySelector(".msg-status");
  const label = STATUS_LABELS[status];
  badge.hidden = !label;
  badge.className = `msg-status msg-status-${status}`;
  badge.textContent = label || "";
  let note = node.querySelector(".msg-error-note");
  if (status === "error" && error) {
    if (!note) {
      note = h("p", { class: "msg-error-note" });
      node.querySelector(".msg-main").append(note);
    }
    note.textContent = error;
  } else if (note) {
    note.remove();
  }
}

function messageNode(message, personaSlug) {
  const { role } = message;
  const isUser = role === "user";
  const persona = personaFor(personaSlug);
  const author = isUser ? "You" : persona.name;
  const avatarText = isUser ? (document.querySelector(".user-avatar")?.textContent || "Y") : persona.avatar || "🤖";
  return h(
    "article",
    { class: `msg msg-${role}`, "data-role": role, "data-key": message.key, "aria-label": isUser ? "Your message" : `Reply from ${persona.name}` },
    h("div", { class: "msg-avatar", "aria-hidden": "true", text: avatarText }),
    h(
      "div",
      { class: "msg-main" },
      h("div", { class: "msg-meta" }, h("span", { class: "msg-author", text: author }), h("span", { class: "msg-status", hidden: true })),
      h("div", { class: isUser ? "msg-body" : "msg-body markdown" }),
      h("div", { class: "msg-footer" }),
    ),
  );
}

// ---- Message controls: versions, edit, regenerate, copy, feedback --------------------------

const FAILED = new Set(["error", "stopped", "interrupted"]);

function actionButton(action, label, text, extra = {}, icon = null) {
  const attrs = { type: "button", class: "msg-action", "data-action": action, "aria-label": label, title: label, ...extra };
  if (!icon) return h("button", { ...attrs, text });
  // The word may give way to the icon on a narrow screen; the aria-label names it anyway.
  return h("button", attrs, h("span", { "aria-hidden": "true", text: icon }), h("span", { class: "msg-action-text", text }));
}

function usageText(usage) {
  if (!usage) return "";
  const parts = [];
  if (usage.input !== null) parts.push(`${usage.input} in`);
  if (usage.output !== null) parts.push(`${usage.output} out`);
  return parts.length ? `${parts.join(" · ")} tokens` : "";
}

/** The row under a message: its versions, what can be done with it, its token usage. */
function footerItems(message) {
  if (message.status === "sending" || message.status === "streaming" || !message.id) return [];
  const items = [];
  const { index, count } = versionOf(message);
  if (count > 1) {
    const what = message.role === "user" ? "message" : "reply";
    items.push(
      h(
        "div",
        { class: "versions", role: "group", "aria-label": `Versions of this ${what}` },
        actionButton("prev", "Previous version", "‹", { disabled: index <= 1 }),
        h("span", { class: "version-count", text: `${index} / ${count}`, "aria-label": `Version ${index} of ${count}` }),
        actionButton("next", "Next version", "›", { disabled: index >= count }),
      ),
    );
  }
  if (message.role === "user") {
    items.push(actionButton("edit", "Edit message", "Edit"));
    return items;
  }
  if (FAILED.has(message.status)) {
    items.push(actionButton("regenerate", "Retry reply", "Retry", { class: "msg-action msg-action-retry" }, "↻"));
  } else {
    items.push(actionButton("regenerate", "Regenerate reply", "Regenerate", { class: "msg-action msg-action-regenerate" }, "↻"));
  }
  items.push(actionButton("copy", "Copy reply", "Copy"));
  items.push(actionButton("good", "Good reply", "👍", { "aria-pressed": message.feedback === 1 ? "true" : "false" }));
  items.push(actionButton("bad", "Bad reply", "👎", { "aria-pressed": message.feedback === -1 ? "true" : "false" }));
  const usage = usageText(message.usage);
  if (usage) items.push(h("span", { class: "msg-usage", text: usage }));
  return items;
}

function footerSignature(message) {
  return JSON.stringify([message.id, message.status, message.siblings, message.feedback, message.usage]);
}

// Redrawing a row must not drop the keyboard's place: the same control keeps the focus.
function replaceKeepingFocus(container, children) {
  const focused = container.contains(document.activeElement) ? document.activeElement.dataset.action : null;
  container.replaceChildren(...children);
  if (focused) focusIn(container, focused);
}

function focusIn(container, action) {
  const fallback = { prev: "next", next: "prev" };
  const button = container.querySelector(`[data-action="${action}"]:not(:disabled)`)
    || (fallback[action] && container.querySelector(`[data-action="${fallback[action]}"]:not(:disabled)`));
  if (button) button.focus();
  return Boolean(button);
}

function editorNode(draft) {
  const area = h("textarea", { class: "msg-edit-input", rows: "3", "aria-label": "Edit your message" });
  area.value = draft;
  return h(
    "form",
    { class: "msg-editor", "data-form": "edit" },
    area,
    h(
      "div",
      { class: "msg-editor-actions" },
      h("button", { type: "button", class: "btn btn-ghost btn-small", "data-action": "cancel-edit", text: "Cancel" }),
      h("button", { type: "submit", class: "btn btn-primary btn-small", "aria-label": "Send edited message", text: "Send" }),
    ),
  );
}

function commentNode(comment) {
  const input = h("input", { type: "text", class: "msg-comment-input", maxlength: "2000", "aria-label": "What was wrong with this reply? (optional)", placeholder: "What was wrong? (optional)" });
  input.value = comment || "";
  return h(
    "form",
    { class: "msg-comment", "data-form": "comment" },
    input,
    h(
      "div",
      { class: "msg-editor-actions" },
      h("button", { type: "button", class: "btn btn-ghost btn-small", "data-action": "close-comment", text: "Skip" }),
      h("button", { type: "submit", class: "btn btn-small", text: "Send feedback" }),
    ),
  );
}

/** Draw a message's editor, comment field and controls; true when any of them changed. */
function renderExtras(shown, message, state) {
  let redrawn = false;
  const node = shown.node;
  const main = node.querySelector(".msg-main");
  const editing = Boolean(state.editing && state.editing.key === message.key);
  if (shown.editing !== editing) {
    shown.editing = editing;
    node.classList.toggle("is-editing", editing);
    node.querySelector(".msg-body").hidden = editing;
    node.querySelector(".msg-footer").hidden = editing;
    const old = main.querySelector(".msg-editor");
    if (old) old.remove();
    if (editing) main.insertBefore(editorNode(state.editing.draft), node.querySelector(".msg-footer"));
    redrawn = true;
  }
  const commenting = state.commenting === message.key;
  if (shown.commenting !== commenting) {
    shown.commenting = commenting;
    const old = main.querySelector(".msg-comment");
    if (old) old.remove();
    if (commenting) main.append(commentNode(message.comment));
    redrawn = true;
  }
  const signature = footerSignature(message);
  if (shown.footer !== signature) {
    shown.footer = signature;
    replaceKeepingFocus(node.querySelector(".msg-footer"), footerItems(message));
    redrawn = true;
  }
  return redrawn;
}

// What each message node shows, by the message's key, so only what changed is redrawn.
const drawn = new Map();

/**
 * Bring #messages in line with state.messages: {changed} when text was added or changed,
 * {redrawn} when only controls were (a reply's buttons appear when it is done).
 */
function renderMessages(state, personaSlug) {
  const { messages } = state;
  let changed = false;
  let redrawn = false;
  const keys = new Set();
  messages.forEach((message, index) => {
    keys.add(message.key);
    let shown = drawn.get(message.key);
    if (!shown) {
      shown = {
        node: messageNode(message, personaSlug), id: null, status: null, error: null, content: null, seq: null,
        footer: null, editing: false, commenting: false, attachments: "[]",
      };
      drawn.set(message.key, shown);
      changed = true;
    }
    const node = shown.node;
    if (shown.id !== message.id) {
      shown.id = message.id;
      if (message.id) node.dataset.id = message.id;
      else delete node.dataset.id;
    }
    if (shown.status !== message.status || shown.error !== message.error) {
      shown.status = message.status;
      shown.error = message.error;
      setStatusBadge(node, message.status, message.error);
    }
    if (shown.content !== message.content) {
      shown.content = message.content;
      const body = node.querySelector(".msg-body");
      if (message.role === "user") body.textContent = message.content;
      else renderMarkdown(body, message.content);
      changed = true;
    }
    const files = attachmentsSignature(message.attachments);
    if (shown.attachments !== files) {
      shown.attachments = files;
      drawMessageAttachments(node, message.attachments || []);
      changed = true;
    }
    if (message.seq !== null && shown.seq !== message.seq) {
      shown.seq = message.seq;
      node.dataset.seq = String(message.seq);
    }
    if (renderExtras(shown, message, state)) redrawn = true;
    const there = ui.messages.children[index];
    if (there !== node) ui.messages.insertBefore(node, there || null);
  });
  for (const [key, shown] of drawn) {
    if (!keys.has(key)) {
      shown.node.remove();
      drawn.delete(key);
    }
  }
  ui.messages.classList.toggle("is-busy", isBusy(state));
  return { changed, redrawn };
}

function nodeFor(key) {
  const shown = drawn.get(key);
  return shown ? shown.node : null;
}

/** Put the keyboard on control `action` of message `key` (or the message with that id). */
export function focusAction(keyOrId, action) {
  let node = nodeFor(keyOrId);
  if (!node) node = [...drawn.values()].map((s) => s.node).find((n) => n.dataset.id === keyOrId) || null;
  return node ? focusIn(node, action) : false;
}

export function focusEditor(key) {
  const area = nodeFor(key)?.querySelector(".msg-edit-input");
  if (!area) return;
  area.focus();
  area.setSelectionRange(area.value.length, area.value.length);
  area.style.height = "auto";
  area.style.height = `${Math.min(area.scrollHeight + 2, window.innerHeight * 0.5)}px`;
  area.scrollIntoView({ block: "nearest" });
}

export function focusComment(key) {
  nodeFor(key)?.querySelector(".msg-comment-input")?.focus();
}

/** Say on the button itself that it worked ("Copied"), then put its text back. */
export function flash(key, action, text) {
  const button = nodeFor(key)?.querySelector(`[data-action="${action}"]`);
  if (!button) return;
  const before = button.textContent;
  button.textContent = text;
  setTimeout(() => {
    if (button.textContent === text) button.textContent = before;
  }, 1500);
}

// User actions on messages, delegated: handlers.message(action, key, data).
function bindMessageActions() {
  ui.messages.addEventListener("click", (event) => {
    const button = event.target.closest("button[data-action]");
    if (!button || button.disabled || !ui.messages.contains(button)) return;
    const node = button.closest("article[data-key]");
    if (node) actions.message(button.dataset.action, node.dataset.key, {});
  });
  ui.messages.addEventListener("submit", (event) => {
    const form = event.target.closest("form[data-form]");
    if (!form) return;
    event.preventDefault();
    const key = form.closest("article[data-key]").dataset.key;
    if (form.dataset.form === "edit") actions.message("send-edit", key, { text: form.querySelector("textarea").value });
    else actions.message("send-comment", key, { comment: form.querySelector("input").value });
  });
  ui.messages.addEventListener("keydown", (event) => {
    const form = event.target.closest("form[data-form]");
    if (!form) return;
    const key = form.closest("article[data-key]").dataset.key;
    if (event.key === "Escape") {
      event.preventDefault();
      event.stopPropagation();
      actions.message(form.dataset.form === "edit" ? "cancel-edit" : "close-comment", key, {});
    } else if (form.dataset.form === "edit" && event.key === "Enter" && !event.shiftKey && !event.isComposing) {
      event.preventDefault();
      form.requestSubmit();
    }
  });
  ui.messages.addEventListener("input", (event) => {
    const area = event.target.closest(".msg-edit-input");
    if (!area) return;
    area.style.height = "auto";
    area.style.height = `${Math.min(area.scrollHeight + 2, window.innerHeight * 0.5)}px`;
  });
}

// ---- Attachments -------------------------------------------------------------------------

/**
 * A small local picture of an image file for the composer and the message just sent:
 * drawn on a canvas into a data: URL (the CSP allows data: images, not blob: ones), with
 * the image's own size. Null when the browser cannot decode it (the server judges anyway).
 */
export async function thumbnail(file, box = 320) {
  if (typeof createImageBitmap !== "function") return null;
  let bitmap;
  try {
    bitmap = await createImageBitmap(file);
  } catch (_error) {
    return null;
  }
  const { width, height } = bitmap;
  const size = fitted(width, height, box);
  const canvas = document.createElement("canvas");
  canvas.width = size.width;
  canvas.height = size.height;
  canvas.getContext("2d").drawImage(bitmap, 0, 0, size.width, size.height);
  bitmap.close();
  return { preview: canvas.toDataURL("image/png"), width, height };
}

function attachmentsSignature(list) {
  return JSON.stringify((list || []).map((a) => [a.id, a.name, a.kind, a.url, Boolean(a.preview)]));
}

function drawMessageAttachments(node, list) {
  const main = node.querySelector(".msg-main");
  let box = main.querySelector(".msg-attachments");
  if (!list.length) {
    if (box) box.remove();
    return;
  }
  if (!box) {
    box = h("div", { class: "msg-attachments", role: "group", "aria-label": "Attached files" });
    main.insertBefore(box, main.querySelector(".msg-body"));
  }
  // The message just sent shows its local previews until the server's copies are known.
  const nodes = list.map((file) => messageFileNode(file, { url: file.url || null, src: file.preview || file.url }));
  box.replaceChildren(...nodes);
}

export function openLightbox(url, name) {
  ui.lightboxImage.src = url;
  ui.lightboxImage.alt = name;
  ui.lightboxName.textContent = name;
  ui.lightboxName.href = url;
  ui.lightboxName.setAttribute("download", name);
  ui.lightbox.showModal();
  ui.lightboxClose.focus();
}

function bindLightbox() {
  ui.messages.addEventListener("click", (event) => {
    const button = event.target.closest(".msg-image");
    if (!button || !ui.messages.contains(button)) return;
    openLightbox(button.dataset.url, button.dataset.name);
  });
  ui.lightboxClose.addEventListener("click", () => ui.lightbox.close());
  // A click on the dark backdrop (the dialog itself, outside its content) closes it too.
  ui.lightbox.addEventListener("click", (event) => {
    if (event.target === ui.lightbox) ui.lightbox.close();
  });
  ui.lightbox.addEventListener("close", () => {
    ui.lightboxImage.removeAttribute("src");
  });
}

// The composer's files by key, drawn once and then updated in place (progress moves often).
const composerDrawn = new Map();

function composerItemNode(item) {
  const remove = h("button", { type: "button", class: "attachment-remove", "data-key": item.key, text: "×" });
  const progress = h("progress", { class: "attachment-progress", max: "1", value: "0" });
  return h(
    "li",
    { class: "attachment", "data-key": item.key },
    h("div", { class: "attachment-thumb" }),
    h(
      "div",
      { class: "attachment-info" },
      h("span", { class: "attachment-name" }),
      h("span", { class: "attachment-detail" }),
      progress,
    ),
    remove,
  );
}

function updateComposerItem(shown, item) {
  const { node } = shown;
  node.dataset.status = item.status;
  node.dataset.kind = item.kind || "";
  const thumbSignature = `${item.preview ? "p" : "-"}:${item.kind}:${item.name}`;
  if (shown.thumb !== thumbSignature) {
    shown.thumb = thumbSignature;
    const thumb = node.querySelector(".attachment-thumb");
    if (item.preview) {
      thumb.replaceChildren(h("img", { src: item.preview, alt: "" }));
    } else {
      thumb.replaceChildren(h("span", { class: "file-badge", text: fileBadge(item) }));
    }
  }
  node.querySelector(".attachment-name").textContent = item.name;
  node.querySelector(".attachment-name").title = item.name;
  const detail = node.querySelector(".attachment-detail");
  if (item.status === "error") {
    detail.textContent = item.error;
    detail.title = item.error;
    detail.setAttribute("role", "alert");
  } else {
    detail.textContent = item.status === "uploading" ? `${sizeText(item.size)} · uploading ${Math.round(item.progress * 100)}%` : sizeText(item.size);
    detail.removeAttribute("role");
    detail.removeAttribute("title");
  }
  const progress = node.querySelector(".attachment-progress");
  progress.hidden = item.status !== "uploading";
  progress.value = item.progress;
  progress.setAttribute("aria-label", `Uploading ${item.name}`);
  node.querySelector(".attachment-remove").setAttribute("aria-label", `Remove ${item.name}`);
  node.setAttribute("aria-label", item.status === "error" ? `${item.name}: ${item.error}` : item.name);
}

function renderComposerAttachments(state, personaSlug) {
  const keys = new Set();
  state.attachments.forEach((item, index) => {
    keys.add(item.key);
    let shown = composerDrawn.get(item.key);
    if (!shown) {
      shown = { node: composerItemNode(item), thumb: null };
      composerDrawn.set(item.key, shown);
    }
    updateComposerItem(shown, item);
    const there = ui.attachments.children[index];
    if (there !== shown.node) ui.attachments.insertBefore(shown.node, there || null);
  });
  for (const [key, shown] of composerDrawn) {
    if (!keys.has(key)) {
      shown.node.remove();
      composerDrawn.delete(key);
    }
  }
  ui.attachments.hidden = state.attachments.length === 0;
  const warning = imageWarning(state, personaSlug) || "";
  if (ui.composerWarning.textContent !== warning) ui.composerWarning.textContent = warning;
  ui.composerWarning.hidden = !warning;
}

/** After file `index` was removed: the keyboard goes to the next file's ×, else the box. */
export function focusAfterRemoval(index) {
  const buttons = ui.attachments.querySelectorAll(".attachment-remove");
  const next = buttons[Math.min(index, buttons.length - 1)];
  if (next) next.focus();
  else ui.input.focus();
}

function filesOf(dataTransfer) {
  if (!dataTransfer) return [];
  if (dataTransfer.files && dataTransfer.files.length) return [...dataTransfer.files];
  const files = [];
  for (const item of dataTransfer.items || []) {
    if (item.kind === "file") {
      const file = item.getAsFile();
      if (file) files.push(file);
    }
  }
  return files;
}

function carriesFiles(event) {
  return Boolean(event.dataTransfer && [...event.dataTransfer.types].includes("Files"));
}

function bindAttachments() {
  ui.attach.addEventListener("click", () => ui.fileInput.click());
  ui.fileInput.addEventListener("change", () => {
    const files = [...ui.fileInput.files];
    // Choosing the same file again must fire change again.
    ui.fileInput.value = "";
    if (files.length) actions.attach(files);
    ui.input.focus();
  });
  ui.attachments.addEventListener("click", (event) => {
    const button = event.target.closest(".attachment-remove");
    if (!button) return;
    const index = [...ui.attachments.children].indexOf(button.closest("li"));
    actions.removeAttachment(button.dataset.key, index);
  });
  // A screenshot pasted into the box becomes an attachment; a paste that carries text (a
  // spreadsheet's cells come with a picture of them too) stays text.
  ui.input.addEventListener("paste", (event) => {
    const data = event.clipboardData;
    const files = filesOf(data);
    if (!files.length || (data.getData && data.getData("text/plain"))) return;
    event.preventDefault();
    actions.attach(files);
  });
  // Dragging files over the chat shows where to drop them; dropping anywhere else in the
  // window must not navigate away to the file.
  let depth = 0;
  const hide = () => {
    depth = 0;
    ui.dropHint.hidden = true;
    ui.main.classList.remove("is-dropping");
  };
  ui.main.addEventListener("dragenter", (event) => {
    if (!carriesFiles(event)) return;
    event.preventDefault();
    depth += 1;
    ui.dropHint.hidden = false;
    ui.main.classList.add("is-dropping");
  });
  ui.main.addEventListener("dragleave", (event) => {
    if (!carriesFiles(event)) return;
    depth = Math.max(0, depth - 1);
    if (!depth) hide();
  });
  ui.main.addEventListener("dragover", (event) => {
    if (!carriesFiles(event)) return;
    event.preventDefault();
    event.dataTransfer.dropEffect = "copy";
  });
  ui.main.addEventListener("drop", (event) => {
    if (!carriesFiles(event)) return;
    event.preventDefault();
    hide();
    const files = filesOf(event.dataTransfer);
    if (files.length) actions.attach(files);
  });
  window.addEventListener("dragover", (event) => {
    if (carriesFiles(event)) event.preventDefault();
  });
  window.addEventListener("drop", (event) => {
    if (carriesFiles(event)) event.preventDefault();
    hide();
  });
}

// ---- Share dialog ------------------------------------------------------------------------

function shareDate(iso) {
  const date = iso ? new Date(iso) : null;
  if (!date || Number.isNaN(date.getTime())) return "";
  return date.toLocaleString(undefined, { dateStyle: "medium", timeStyle: "short" });
}

function shareStatusText(share) {
  if (share.busy === "create") return share.status === "shared" ? "Updating the snapshot…" : "Creating the link…";
  if (share.busy === "revoke") return "Revoking the link…";
  if (share.error) return share.error;
  switch (share.status) {
    case "loading":
      return "Checking whether this conversation is shared…";
    case "shared": {
      const when = shareDate(share.createdAt);
      return `Shared${when ? ` on ${when}` : ""}: the link shows the conversation as it was then. Update the snapshot to include newer messages.`;
    }
    case "none":
      return "Not shared. Create a link to share a snapshot of this conversation.";
    default:
      return "";
  }
}

/** Draw the Share dialog for state.share. */
export function renderShare(share) {
  if (!share) return;
  const shared = share.status === "shared";
  ui.shareDialog.dataset.status = share.status;
  ui.shareStatus.textContent = shareStatusText(share);
  ui.shareStatus.classList.toggle("is-error", Boolean(share.error));
  ui.shareLinkRow.hidden = !shared;
  const link = shared ? new URL(share.url, window.location.origin).href : "";
  if (ui.shareLink.value !== link) ui.shareLink.value = link;
  ui.shareCreate.textContent = shared ? "Update snapshot" : "Create link";
  ui.shareCreate.disabled = Boolean(share.busy) || share.status === "loading";
  ui.shareRevoke.hidden = !shared;
  ui.shareRevoke.disabled = Boolean(share.busy);
  ui.shareCopy.disabled = Boolean(share.busy);
}

export function openShareDialog(share) {
  renderShare(share);
  if (!ui.shareDialog.open) ui.shareDialog.showModal();
  ui.shareClose.focus();
}

/** Once the state is known, the keyboard goes to what comes next, unless it moved already. */
export function focusShare(what) {
  const target = { copy: ui.shareCopy, create: ui.shareCreate }[what];
  const here = document.activeElement;
  if (!ui.shareDialog.open || !target || target.disabled || target.closest("[hidden]")) return;
  if (here === ui.shareClose || here === document.body || here === ui.shareDialog || (here && here.disabled) || what === "copy") target.focus();
}

export function shareIsOpen() {
  return ui.shareDialog.open;
}

async function copyShareLink() {
  const link = ui.shareLink.value;
  if (!link) return;
  let copied = false;
  try {
    if (navigator.clipboard && window.isSecureContext) {
      await navigator.clipboard.writeText(link);
      copied = true;
    }
  } catch (_error) {
    copied = false;
  }
  if (!copied) {
    // No clipboard (plain http on a LAN address) or no permission: select the link so
    // Ctrl+C copies it, and try the old command on it.
    ui.shareLink.focus();
    ui.shareLink.select();
    try {
      copied = document.execCommand("copy");
    } catch (_error) {
      copied = false;
    }
  }
  if (copied) {
    ui.shareCopy.textContent = "Copied";
    announce("Link copied.");
    setTimeout(() => {
      ui.shareCopy.textContent = "Copy link";
    }, 1500);
  } else {
    ui.shareStatus.textContent = "The link is selected: press Ctrl+C (⌘C on a Mac) to copy it.";
  }
}

function bindShare() {
  ui.shareOpen.addEventListener("click", () => actions.share("open"));
  ui.shareCreate.addEventListener("click", () => actions.share("create"));
  ui.shareRevoke.addEventListener("click", () => actions.share("revoke"));
  ui.shareClose.addEventListener("click", () => ui.shareDialog.close());
  ui.shareCopy.addEventListener("click", copyShareLink);
  // Clicking the field selects the whole link, ready to copy by hand.
  ui.shareLink.addEventListener("focus", () => ui.shareLink.select());
  ui.shareDialog.addEventListener("close", () => {
    actions.share("closed");
    ui.shareOpen.focus();
  });
}

// ---- Composer ----------------------------------------------------------------------------

export function autoGrow() {
  ui.input.style.height = "auto";
  ui.input.style.height = `${Math.min(ui.input.scrollHeight, window.innerHeight * 0.4)}px`;
}

function setGenerating(generating) {
  if (ui.send.hidden === generating && ui.stop.hidden === !generating) return;
  // Send and Stop swap places; a keyboard user must not lose focus to <body> when they do.
  const focused = document.activeElement;
  ui.stop.hidden = !generating;
  ui.send.hidden = generating;
  if ((focused === ui.stop && !generating) || (focused === ui.send && generating)) ui.input.focus();
}

/**
 * Why nothing can be sent now (a persona no longer the user's, or tokens used up), shown in
 * the conversation; the composer stays disabled until it passes.
 */
function setBlocked(reason) {
  const text = reason ? reason.message : "";
  const kind = reason ? reason.kind : "";
  if (ui.notice.dataset.kind !== kind || ui.noticeText.textContent !== text) {
    const appearing = ui.notice.hidden && Boolean(reason);
    ui.notice.hidden = !reason;
    ui.notice.dataset.kind = kind;
    ui.noticeText.textContent = text;
    ui.noticeNewChat.hidden = kind !== "forbidden";
    if (appearing) scrollToBottom();
  }
  ui.input.disabled = Boolean(reason);
  ui.send.disabled = Boolean(reason);
  ui.attach.disabled = Boolean(reason);
}

// ---- The whole page ----------------------------------------------------------------------

// What the last render drew, so that only what changed is drawn again.
let last = { currentId: undefined, listVersion: -1, title: null };

function setTitle(title) {
  const text = displayTitle(title);
  ui.title.textContent = text;
  document.title = `${text} · Persona Chat`;
}

function setPersonaChip(slug) {
  if (!slug) {
    ui.personaChip.hidden = true;
    return;
  }
  const persona = personaFor(slug);
  ui.personaChip.textContent = `${persona.avatar || ""} ${persona.name}`.trim();
  ui.personaChip.hidden = false;
}

function setExportLinks(id) {
  ui.shareOpen.hidden = !id;
  if (!id && ui.shareDialog.open) ui.shareDialog.close();
  ui.exportMenu.hidden = !id;
  ui.exportMenu.open = false;
  if (!id) return;
  ui.exportMd.href = `/api/conversations/${id}/export/?format=md`;
  ui.exportJson.href = `/api/conversations/${id}/export/?format=json`;
}

/**
 * Draw the state: messages, Send or Stop, title, persona, picker, export links and the
 * list. `personaSlug` names the persona whose replies new message nodes show.
 */
export function render(state, personaSlug) {
  const { changed, redrawn } = renderMessages(state, personaSlug);
  if (changed) contentChanged();
  // Controls that appear under the newest reply keep a reader at the bottom there.
  else if (redrawn && stick) scrollToBottom();
  if (state.stream) ui.messages.setAttribute("aria-busy", "true");
  else ui.messages.removeAttribute("aria-busy");
  setGenerating(isGenerating(state));
  setBlocked(blocked(state, Date.now()));
  renderComposerAttachments(state, personaSlug);
  // A file still on its way holds Send back: the message would go without it.
  const waiting = uploading(state);
  if (waiting) ui.send.disabled = true;
  ui.send.title = waiting ? "Wait for the files to finish uploading" : "";
  ui.picker.hidden = !pickerVisible(state);
  if (state.title !== last.title) setTitle(state.title);
  setPersonaChip(state.currentPersona);
  if (state.currentId !== last.currentId) {
    setExportLinks(state.currentId);
    markCurrentInSidebar(state.currentId);
  }
  listed = {
    conversations: state.conversations,
    currentId: state.currentId,
    query: state.query,
    next: state.listNext,
  };
  if (state.listVersion !== last.listVersion) renderSidebar();
  last = { currentId: state.currentId, listVersion: state.listVersion, title: state.title };
}

/** Redraw what shows persona names (the personas arrived after the page drew). */
export function redrawPersonas() {
  renderSidebar();
}

/**
 * Wire the parts of the page that need no protocol state. `handlers.open(id)` opens a
 * conversation from the list, `handlers.rename(conversation, title)` and
 * `handlers.remove(conversation)` carry out what the user confirmed;
 * `handlers.message(action, key, data)` hears the controls of message `key` ("edit",
 * "send-edit" {text}, "cancel-edit", "regenerate", "prev", "next", "copy", "good", "bad",
 * "send-comment" {comment}, "close-comment"); `handlers.attach(files)` hears files chosen,
 * dropped or pasted, `handlers.removeAttachment(key, index)` a file's ×, and
 * `handlers.share(what)` the Share dialog ("open", "create", "revoke", "closed"), and
 * `handlers.more()` the list's "Show older chats".
 */
export function init(handlers) {
  actions = handlers;
  ui.listMore.addEventListener("click", () => {
    ui.listMore.disabled = true; // one page at a time
    Promise.resolve(actions.more()).finally(() => {
      ui.listMore.disabled = false;
    });
  });
  ui.messages.addEventListener("click", onCopyClick);
  bindMessageActions();
  ui.input.addEventListener("input", autoGrow);
  bindScrolling();
  bindDrawer();
  bindLightbox();
  bindAttachments();
  bindShare();
}
