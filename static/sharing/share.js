/*
 * The read-only share page: draws the snapshot embedded by the server (json_script, read
 * as data, never as markup) and offers "Continue this chat".
 *
 * Safety rule, as on the chat page: text from users, models and personas reaches the page
 * only through textContent, or as markdown rendered and sanitized by the chat page's
 * renderer (../chat/markdown.js).
 */

import { h } from "../chat/dom.js";
import { messageFileNode } from "../chat/files.js";
import { onCopyClick, renderMarkdown } from "../chat/markdown.js";

const $ = (selector) => document.querySelector(selector);

const STATUS_LABELS = { stopped: "Stopped", error: "Error", interrupted: "Interrupted" };

// Only our own share URLs are ever used as a source or a link.
function ownUrl(url) {
  return typeof url === "string" && url.startsWith("/api/shares/") ? url : null;
}

function messageNode(message, share) {
  const isUser = message.role === "user";
  const persona = share.persona || "Assistant";
  const label = STATUS_LABELS[message.status];
  const body = h("div", { class: isUser ? "msg-body" : "msg-body markdown" });
  if (isUser) body.textContent = message.content;
  else renderMarkdown(body, message.content);
  const attachments = Array.isArray(message.attachments) ? message.attachments : [];
  const files = attachments.map((file) => messageFileNode(file, { url: ownUrl(file.url) }));
  const meta = h(
    "div",
    { class: "msg-meta" },
    h("span", { class: "msg-author", text: isUser ? "User" : persona }),
    label ? h("span", { class: `msg-status msg-status-${message.status}`, text: label }) : null,
  );
  return h(
    "article",
    { class: `msg msg-${isUser ? "user" : "assistant"}`, "data-role": isUser ? "user" : "assistant", "aria-label": isUser ? "Message" : `Reply from ${persona}` },
    h("div", { class: "msg-avatar", "aria-hidden": "true", text: isUser ? "👤" : share.persona_avatar || "🤖" }),
    h(
      "div",
      { class: "msg-main" },
      meta,
      files.length ? h("div", { class: "msg-attachments", role: "group", "aria-label": "Attached files" }, ...files) : null,
      body,
    ),
  );
}

function showDate(share) {
  const node = $("#share-date");
  const date = new Date(share.created_at);
  if (!node || Number.isNaN(date.getTime())) return;
  // The server wrote the date in UTC; the reader's own calendar says it better.
  node.textContent = date.toLocaleDateString(undefined, { dateStyle: "long" });
  node.title = date.toLocaleString();
}

function bindMessages(container) {
  const lightbox = $("#lightbox");
  const image = $("#lightbox-image");
  const name = $("#lightbox-name");
  container.addEventListener("click", async (event) => {
    const enlarge = event.target.closest(".msg-image");
    if (enlarge) {
      image.src = enlarge.dataset.url;
      image.alt = enlarge.dataset.name;
      name.textContent = enlarge.dataset.name;
      name.href = enlarge.dataset.url;
      name.setAttribute("download", enlarge.dataset.name);
      lightbox.showModal();
      $("#lightbox-close").focus();
      return;
    }
    await onCopyClick(event);
  });
  $("#lightbox-close").addEventListener("click", () => lightbox.close());
  lightbox.addEventListener("click", (event) => {
    if (event.target === lightbox) lightbox.close();
  });
  lightbox.addEventListener("close", () => image.removeAttribute("src"));
}

function bindFork() {
  const button = $("#fork");
  if (!button) return;
  const error = $("#fork-error");
  const csrf = document.querySelector('meta[name="csrf-token"]').content;
  button.addEventListener("click", async () => {
    button.disabled = true;
    button.textContent = "Making your copy…";
    error.hidden = true;
    let answer = null;
    let data = null;
    try {
      answer = await fetch(button.dataset.forkUrl, {
        method: "POST",
        headers: { Accept: "application/json", "X-CSRFToken": csrf },
        credentials: "same-origin",
      });
      data = await answer.json().catch(() => null);
    } catch (_error) {
      answer = null;
    }
    if (answer && answer.status === 201 && data && typeof data.id === "string") {
      window.location.assign(`/c/${encodeURIComponent(data.id)}/`);
      return;
    }
    if (answer && answer.status === 401) {
      window.location.assign(`/accounts/login/?next=${encodeURIComponent(window.location.pathname)}`);
      return;
    }
    const message = (data && data.error && data.error.message) || (answer ? `Could not make a copy (${answer.status}).` : "Could not make a copy: the server could not be reached.");
    error.textContent = message;
    error.hidden = false;
    button.textContent = "Continue this chat";
    // A persona the reader may not use will not become usable by trying again.
    button.disabled = Boolean(data && data.error && data.error.code === "forbidden");
  });
}

function main() {
  const share = JSON.parse($("#share-data").textContent);
  const container = $("#messages");
  const messages = Array.isArray(share.messages) ? share.messages : [];
  container.replaceChildren(...messages.map((message) => messageNode(message, share)));
  showDate(share);
  bindMessages(container);
  bindFork();
}

main();
