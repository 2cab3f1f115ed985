/*
 * The read-only share page: draws the snapshot embedded by the server (json_script, read
 * as data, never as markup) and offers "Continue this chat".
 *
 * Safety rule, as on the chat page: text from users, models and personas reaches the page
 * only through textContent, or as markdown rendered and sanitized by ./markdown.js.
 */

import { renderMarkdown } from "./markdown.js";

const $ = (selector) => document.querySelector(selector);

const STATUS_LABELS = { stopped: "Stopped", error: "Error", interrupted: "Interrupted" };

function h(tag, attrs = {}, ...children) {
  const node = document.createElement(tag);
  for (const [key, value] of Object.entries(attrs)) {
    if (value === null || value === undefined || value === false) continue;
    if (key === "class") node.className = value;
    else if (key === "text") node.textContent = value;
    else node.setAttribute(key, value === true ? "" : String(value));
  }
  for (const child of children) {
    if (child !== null && child !== undefined) node.append(child);
  }
  return node;
}

/** "830 B", "12 KB", "1.4 MB": a file size as people read it. */
function sizeText(bytes) {
  if (!Number.isFinite(bytes) || bytes < 0) return "";
  if (bytes < 1024) return `${bytes} B`;
  if (bytes < 1024 * 1024) return `${Math.round(bytes / 1024)} KB`;
  return `${(bytes / (1024 * 1024)).toFixed(1).replace(/\.0$/, "")} MB`;
}

function fileBadge(attachment) {
  if (attachment.kind === "pdf") return "PDF";
  const match = /\.([a-z0-9]{1,4})$/i.exec(attachment.name || "");
  return match ? match[1].toUpperCase() : "FILE";
}

// Width and height that fit `box` px and keep the image's proportions, so the space is
// held before the image arrives.
function fitted(width, height, box) {
  if (!width || !height) return { width: null, height: null };
  const scale = Math.min(1, box / width, box / height);
  return { width: Math.max(1, Math.round(width * scale)), height: Math.max(1, Math.round(height * scale)) };
}

// Only our own share URLs are ever used as a source or a link.
function ownUrl(url) {
  return typeof url === "string" && url.startsWith("/api/shares/") ? url : null;
}

function attachmentNode(attachment) {
  const url = ownUrl(attachment.url);
  const name = String(attachment.name || "file");
  if (attachment.kind === "image" && url) {
    const { width, height } = fitted(attachment.width, attachment.height, 240);
    const image = h("img", { src: url, alt: name, loading: "lazy", decoding: "async", width, height });
    return h("button", { type: "button", class: "msg-image", "data-url": url, "data-name": name, "aria-label": `Enlarge ${name}`, title: name }, image);
  }
  const parts = [
    h("span", { class: "file-badge", "aria-hidden": "true", text: fileBadge(attachment) }),
    h("span", { class: "msg-file-name", text: name }),
    h("span", { class: "msg-file-size", text: sizeText(attachment.size) }),
  ];
  if (!url) return h("span", { class: "msg-file" }, ...parts);
  return h("a", { class: "msg-file", href: url, download: name, title: `Download ${name}`, "aria-label": `Download ${name} (${sizeText(attachment.size)})` }, ...parts);
}

function messageNode(message, share) {
  const isUser = message.role === "user";
  const persona = share.persona || "Assistant";
  const label = STATUS_LABELS[message.status];
  const body = h("div", { class: isUser ? "msg-body" : "msg-body markdown" });
  if (isUser) body.textContent = message.content;
  else renderMarkdown(body, message.content);
  const attachments = Array.isArray(message.attachments) ? message.attachments : [];
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
      attachments.length ? h("div", { class: "msg-attachments", role: "group", "aria-label": "Attached files" }, ...attachments.map(attachmentNode)) : null,
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

async function copyText(text) {
  if (navigator.clipboard && window.isSecureContext) {
    await navigator.clipboard.writeText(text);
    return;
  }
  const area = h("textarea", { class: "sr-only", readonly: true });
  area.value = text;
  document.body.append(area);
  area.select();
  document.execCommand("copy");
  area.remove();
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
    const copy = event.target.closest(".copy-btn");
    if (!copy) return;
    try {
      await copyText(copy.closest(".codeblock").querySelector("pre code").textContent);
      copy.textContent = "Copied";
    } catch (_error) {
      copy.textContent = "Copy failed";
    }
    setTimeout(() => {
      copy.textContent = "Copy";
    }, 1500);
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
