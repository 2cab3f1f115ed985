/*
 * Persona Chat page. Plain browser JavaScript, no build step.
 *
 * The open conversation lives in the URL: "/" is a new chat, "/c/<uuid>/" an existing one,
 * so a reload or a shared link reopens it and picks up a reply still being generated.
 *
 * Safety rule for this file: text from users, models and personas reaches the page only
 * through textContent, or as markdown that marked renders and DOMPurify sanitizes.
 */
(() => {
  "use strict";

  const $ = (selector) => document.querySelector(selector);
  const ui = {
    app: $("#app"),
    sidebar: $("#sidebar"),
    backdrop: $("#backdrop"),
    openSidebar: $("#open-sidebar"),
    closeSidebar: $("#close-sidebar"),
    newChat: $("#new-chat"),
    search: $("#search"),
    list: $("#conversation-list"),
    listEmpty: $("#list-empty"),
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
    jump: $("#jump"),
    composer: $("#composer"),
    input: $("#input"),
    send: $("#send"),
    stop: $("#stop"),
    composerError: $("#composer-error"),
    confirm: $("#confirm-delete"),
    confirmText: $("#confirm-text"),
    announcer: $("#announcer"),
  };

  const MAX_CHARS = Number(ui.app.dataset.maxChars) || 16000;
  const CSRF_TOKEN = document.querySelector('meta[name="csrf-token"]').content;
  const UUID_IN_PATH = /^\/c\/([0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12})\/?$/i;
  // Close code of a socket whose session ended (logout, password change, deactivation).
  const SESSION_ENDED = 4401;
  const STATUS_LABELS = {
    stopped: "Stopped",
    error: "Error",
    interrupted: "Interrupted",
    streaming: "Writing…",
    sending: "Sending…",
  };

  const state = {
    personas: [],
    personaBySlug: new Map(),
    selectedPersona: null,
    conversations: [],
    query: "",
    currentId: null,
    // The conversation whose messages are on screen; null while a load is in flight.
    loadedId: null,
    loadSeq: 0,
    // The reply being followed in the open conversation.
    stream: null,
    // Replies that are already final on screen: late frames for them are ignored.
    finalIds: new Set(),
    // chat.send frames not yet acknowledged by chat.accepted, by client_id.
    pending: new Map(),
    // The client_id whose chat.accepted will tell us the id of a brand-new conversation.
    awaitingNew: null,
    // The persona of the open conversation (or of the new one being started).
    currentPersona: null,
    idleReloaded: false,
    renaming: false,
    // Follow the newest text unless the reader has scrolled up.
    stick: true,
  };

  // ---- Small helpers ---------------------------------------------------------------------

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

  function uuid4() {
    if (window.crypto && typeof crypto.randomUUID === "function") return crypto.randomUUID();
    // crypto.randomUUID needs a secure context; plain http on a LAN address is not one.
    const bytes = crypto.getRandomValues(new Uint8Array(16));
    bytes[6] = (bytes[6] & 0x0f) | 0x40;
    bytes[8] = (bytes[8] & 0x3f) | 0x80;
    const hex = Array.from(bytes, (b) => b.toString(16).padStart(2, "0")).join("");
    return `${hex.slice(0, 8)}-${hex.slice(8, 12)}-${hex.slice(12, 16)}-${hex.slice(16, 20)}-${hex.slice(20)}`;
  }

  function displayTitle(title) {
    return title && title.trim() ? title : "New chat";
  }

  function announce(text) {
    ui.announcer.textContent = "";
    // A fresh text node after a tick makes screen readers announce repeated messages too.
    setTimeout(() => {
      ui.announcer.textContent = text;
    }, 50);
  }

  function showComposerError(text) {
    ui.composerError.textContent = text;
    ui.composerError.hidden = !text;
  }

  // ---- JSON API ---------------------------------------------------------------------------

  class ApiError extends Error {
    constructor(status, code, message) {
      super(message);
      this.status = status;
      this.code = code;
    }
  }

  async function api(method, path, body) {
    const headers = { Accept: "application/json" };
    if (body !== undefined) headers["Content-Type"] = "application/json";
    if (method !== "GET") headers["X-CSRFToken"] = CSRF_TOKEN;
    const response = await fetch(path, {
      method,
      headers,
      credentials: "same-origin",
      body: body === undefined ? undefined : JSON.stringify(body),
    });
    if (response.status === 401) {
      // The session ended (logged out in another tab, expired): go and log in again.
      window.location.assign(`/accounts/login/?next=${encodeURIComponent(window.location.pathname)}`);
      throw new ApiError(401, "unauthorized", "Logged out.");
    }
    if (response.status === 204) return null;
    const data = await response.json().catch(() => null);
    if (!response.ok) {
      const error = (data && data.error) || {};
      throw new ApiError(response.status, error.code || "error", error.message || response.statusText);
    }
    return data;
  }

  // ---- Markdown -------------------------------------------------------------------------

  const escapeHtml = (text) =>
    String(text)
      .replace(/&/g, "&amp;")
      .replace(/</g, "&lt;")
      .replace(/>/g, "&gt;")
      .replace(/"/g, "&quot;")
      .replace(/'/g, "&#39;");

  const markdown = new marked.Marked({
    gfm: true,
    breaks: false,
    renderer: {
      // Raw HTML in a reply is shown as the text it is, never interpreted.
      html(token) {
        return escapeHtml(token.text);
      },
      // An image would load a URL the model chose (a tracking or exfiltration channel);
      // show it as a link the user may choose to follow instead.
      image(token) {
        const label = token.text || token.href;
        return `<a href="${escapeHtml(token.href)}">${escapeHtml(label)}</a>`;
      },
    },
  });

  const SAFE_PROTOCOLS = new Set(["http:", "https:", "mailto:"]);
  DOMPurify.addHook("afterSanitizeAttributes", (node) => {
    if (node.tagName !== "A") return;
    const href = node.getAttribute("href");
    let safe = false;
    if (href !== null) {
      try {
        safe = SAFE_PROTOCOLS.has(new URL(href, window.location.href).protocol);
      } catch (_error) {
        safe = false;
      }
    }
    if (!safe) {
      node.removeAttribute("href");
      return;
    }
    node.setAttribute("target", "_blank");
    node.setAttribute("rel", "noopener noreferrer");
  });

  const PURIFY_CONFIG = {
    USE_PROFILES: { html: true },
    FORBID_TAGS: ["style", "img", "form", "input", "button", "textarea", "select", "iframe", "svg", "math"],
    FORBID_ATTR: ["style", "id", "name"],
    RETURN_DOM_FRAGMENT: true,
  };

  function sanitizedFragment(html) {
    return DOMPurify.sanitize(html, PURIFY_CONFIG);
  }

  function decorateCode(fragment) {
    for (const code of fragment.querySelectorAll("pre > code")) {
      const pre = code.parentElement;
      const match = /(?:^|\s)language-([\w+#.-]+)/.exec(code.className);
      const language = match && hljs.getLanguage(match[1]) ? match[1] : null;
      const source = code.textContent;
      const result = language
        ? hljs.highlight(source, { language, ignoreIllegals: true })
        : hljs.highlightAuto(source);
      // highlight.js escapes the source itself; sanitizing again costs little and keeps
      // the rule simple: no HTML string reaches the page unsanitized.
      code.replaceChildren(sanitizedFragment(result.value));
      code.classList.add("hljs");

      const copy = h("button", { type: "button", class: "copy-btn", "aria-label": "Copy code", text: "Copy" });
      const label = h("span", { text: (match && match[1]) || result.language || "code" });
      const block = h("div", { class: "codeblock" }, h("div", { class: "codeblock-head" }, label, copy));
      pre.replaceWith(block);
      block.append(pre);
    }
  }

  function renderMarkdown(container, text) {
    const fragment = sanitizedFragment(markdown.parse(text));
    decorateCode(fragment);
    container.replaceChildren(fragment);
  }

  async function copyText(text) {
    if (navigator.clipboard && window.isSecureContext) {
      await navigator.clipboard.writeText(text);
      return;
    }
    // Clipboard API is missing on insecure origins: fall back to a hidden textarea.
    const area = h("textarea", { class: "sr-only", readonly: true });
    area.value = text;
    document.body.append(area);
    area.select();
    document.execCommand("copy");
    area.remove();
  }

  ui.messages.addEventListener("click", async (event) => {
    const button = event.target.closest(".copy-btn");
    if (!button) return;
    const code = button.closest(".codeblock").querySelector("pre code");
    try {
      await copyText(code.textContent);
      button.textContent = "Copied";
    } catch (_error) {
      button.textContent = "Copy failed";
    }
    setTimeout(() => {
      button.textContent = "Copy";
    }, 1500);
  });

  // ---- Scrolling --------------------------------------------------------------------------

  function nearBottom() {
    const s = ui.scroller;
    return s.scrollHeight - s.scrollTop - s.clientHeight < 32;
  }

  function scrollToBottom() {
    ui.scroller.scrollTop = ui.scroller.scrollHeight;
    state.stick = true;
    ui.jump.hidden = true;
  }

  function contentChanged() {
    if (state.stick) scrollToBottom();
    else ui.jump.hidden = false;
  }

  ui.scroller.addEventListener("scroll", () => {
    state.stick = nearBottom();
    if (state.stick) ui.jump.hidden = true;
  });
  // Scrolling up is a clear wish to read: stop following at once, before the next frame.
  ui.scroller.addEventListener("wheel", (event) => {
    if (event.deltaY < 0) state.stick = false;
  }, { passive: true });
  ui.scroller.addEventListener("touchmove", () => {
    state.stick = nearBottom();
  }, { passive: true });
  ui.jump.addEventListener("click", () => {
    scrollToBottom();
    ui.input.focus();
  });

  // ---- Personas ---------------------------------------------------------------------------

  function personaFor(slug) {
    return state.personaBySlug.get(slug) || { slug, name: slug || "Assistant", avatar: "🤖", description: "" };
  }

  function renderPersonaPicker() {
    ui.personaOptions.replaceChildren();
    if (!state.personas.length) {
      ui.personaOptions.append(h("p", { class: "muted", text: "No personas are set up yet. An administrator can add them in the admin." }));
      return;
    }
    for (const persona of state.personas) {
      const input = h("input", {
        type: "radio",
        name: "persona",
        value: persona.slug,
        checked: persona.slug === state.selectedPersona,
      });
      input.addEventListener("change", () => {
        state.selectedPersona = persona.slug;
      });
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

  async function loadPersonas() {
    state.personas = await api("GET", "/api/personas/");
    state.personaBySlug = new Map(state.personas.map((p) => [p.slug, p]));
    const preferred = state.personas.find((p) => p.is_default) || state.personas[0];
    state.selectedPersona = preferred ? preferred.slug : null;
    renderPersonaPicker();
  }

  // ---- Sidebar ----------------------------------------------------------------------------

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

  function renderSidebar() {
    // Redrawing would throw away a title being typed; draw once the rename ends.
    if (state.renaming) return;
    ui.list.replaceChildren();
    for (const conversation of state.conversations) {
      const title = displayTitle(conversation.title);
      const persona = personaFor(conversation.persona);
      const link = h(
        "a",
        {
          class: "conv-link",
          href: `/c/${conversation.id}/`,
          "aria-current": conversation.id === state.currentId ? "page" : null,
        },
        h("span", { class: "conv-avatar", "aria-hidden": "true", text: persona.avatar || "🤖" }),
        h("span", { class: "conv-title", text: title }),
      );
      link.addEventListener("click", (event) => {
        if (event.metaKey || event.ctrlKey || event.shiftKey || event.button !== 0) return;
        event.preventDefault();
        openConversation(conversation.id, { push: true });
        closeSidebar();
      });
      const rename = h("button", { type: "button", class: "icon-btn conv-rename-btn", "aria-label": `Rename “${title}”`, title: "Rename" }, icon("rename"));
      rename.addEventListener("click", () => startRename(item, conversation));
      const remove = h("button", { type: "button", class: "icon-btn conv-delete-btn", "aria-label": `Delete “${title}”`, title: "Delete" }, icon("delete"));
      remove.addEventListener("click", () => confirmDelete(conversation));
      const item = h(
        "li",
        { class: conversation.id === state.currentId ? "conv is-current" : "conv", "data-id": conversation.id },
        link,
        h("div", { class: "conv-actions" }, rename, remove),
      );
      ui.list.append(item);
    }
    ui.listEmpty.hidden = state.conversations.length > 0;
    ui.listEmpty.textContent = state.query ? "No conversations match." : "No conversations yet.";
  }

  async function loadConversations() {
    const query = state.query;
    const path = query ? `/api/conversations/?q=${encodeURIComponent(query)}` : "/api/conversations/";
    const found = await api("GET", path);
    if (query !== state.query) return; // a newer search has been typed since
    state.conversations = found;
    renderSidebar();
  }

  // Keep the sidebar in step with socket events without a round trip when not searching.
  function touchConversation(id, changes) {
    if (state.query) {
      scheduleListRefresh();
      return;
    }
    const index = state.conversations.findIndex((c) => c.id === id);
    const existing = index >= 0 ? state.conversations.splice(index, 1)[0] : { id, title: "", persona: null };
    const updated = { ...existing, ...changes };
    if (changes.updated_at) state.conversations.unshift(updated);
    else state.conversations.splice(Math.max(index, 0), 0, updated);
    renderSidebar();
  }

  let listTimer = null;
  function scheduleListRefresh(delay = 250) {
    clearTimeout(listTimer);
    listTimer = setTimeout(() => {
      loadConversations().catch(() => {});
    }, delay);
  }

  ui.search.addEventListener("input", () => {
    state.query = ui.search.value.trim();
    scheduleListRefresh();
  });
  ui.search.addEventListener("keydown", (event) => {
    if (event.key === "Escape" && ui.search.value) {
      ui.search.value = "";
      state.query = "";
      scheduleListRefresh(0);
    }
  });

  function startRename(item, conversation) {
    const input = h("input", {
      type: "text",
      class: "conv-rename",
      maxlength: "200",
      "aria-label": "New title",
    });
    input.value = conversation.title || "";
    const link = item.querySelector(".conv-link");
    link.replaceWith(input);
    state.renaming = true;
    input.focus();
    input.select();
    let done = false;
    const finish = async (save) => {
      if (done) return;
      done = true;
      const title = input.value.trim();
      input.disabled = true;
      if (save && title && title !== conversation.title) {
        try {
          const updated = await api("PATCH", `/api/conversations/${conversation.id}/`, { title });
          conversation.title = updated.title;
          if (conversation.id === state.currentId) setTitle(updated.title);
        } catch (error) {
          showComposerError(`Could not rename: ${error.message}`);
        }
      }
      state.renaming = false;
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
      async () => {
        if (ui.confirm.returnValue !== "delete") return;
        try {
          await api("DELETE", `/api/conversations/${conversation.id}/`);
        } catch (error) {
          if (error.status !== 404) {
            showComposerError(`Could not delete: ${error.message}`);
            return;
          }
        }
        state.conversations = state.conversations.filter((c) => c.id !== conversation.id);
        renderSidebar();
        announce("Conversation deleted.");
        if (conversation.id === state.currentId) newChat({ push: true });
      },
      { once: true },
    );
    ui.confirm.showModal();
    document.getElementById("confirm-cancel").focus();
  }

  // ---- Sidebar drawer on narrow screens ------------------------------------------------

  function openSidebar() {
    ui.app.classList.add("sidebar-open");
    ui.openSidebar.setAttribute("aria-expanded", "true");
    ui.backdrop.hidden = false;
    ui.newChat.focus();
  }

  function closeSidebar() {
    if (!ui.app.classList.contains("sidebar-open")) return;
    ui.app.classList.remove("sidebar-open");
    ui.openSidebar.setAttribute("aria-expanded", "false");
    ui.backdrop.hidden = true;
  }

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

  // ---- Message list -----------------------------------------------------------------------

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

  function currentPersonaSlug() {
    if (state.currentPersona) return state.currentPersona;
    const conversation = state.conversations.find((c) => c.id === state.currentId);
    return (conversation && conversation.persona) || state.selectedPersona;
  }

  function setStatusBadge(node, status, error) {
    node.dataset.status = status;
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

  function messageNode(role, { id = null, status = "complete" } = {}) {
    const isUser = role === "user";
    const persona = personaFor(currentPersonaSlug());
    const author = isUser ? "You" : persona.name;
    const avatarText = isUser ? (document.querySelector(".user-avatar")?.textContent || "Y") : persona.avatar || "🤖";
    const node = h(
      "article",
      { class: `msg msg-${role}`, "data-role": role, "data-id": id, "aria-label": isUser ? "Your message" : `Reply from ${persona.name}` },
      h("div", { class: "msg-avatar", "aria-hidden": "true", text: avatarText }),
      h(
        "div",
        { class: "msg-main" },
        h("div", { class: "msg-meta" }, h("span", { class: "msg-author", text: author }), h("span", { class: "msg-status", hidden: true })),
        h("div", { class: isUser ? "msg-body" : "msg-body markdown" }),
      ),
    );
    setStatusBadge(node, status);
    return node;
  }

  function appendMessage(message) {
    const node = messageNode(message.role, { id: message.id, status: message.status });
    if (message.error) setStatusBadge(node, message.status, message.error);
    const body = node.querySelector(".msg-body");
    if (message.role === "user") body.textContent = message.content;
    else {
      renderMarkdown(body, message.content);
      state.finalIds.add(message.id);
    }
    ui.messages.append(node);
    return node;
  }

  function findMessageNode(id) {
    return id ? ui.messages.querySelector(`article[data-id="${CSS.escape(id)}"]`) : null;
  }

  function lastMessageIsUnansweredUser() {
    const last = ui.messages.lastElementChild;
    return Boolean(last && last.dataset.role === "user");
  }

  // ---- Streaming replies ----------------------------------------------------------------

  function startStream(conversationId, messageId) {
    if (state.stream && state.stream.messageId === messageId) return state.stream;
    let node = findMessageNode(messageId);
    if (!node) {
      node = messageNode("assistant", { id: messageId, status: "streaming" });
      ui.messages.append(node);
    }
    setStatusBadge(node, "streaming");
    ui.messages.setAttribute("aria-busy", "true");
    state.stream = {
      conversationId,
      messageId,
      seq: 0,
      text: "",
      buffer: new Map(),
      node,
      body: node.querySelector(".msg-body"),
      renderQueued: false,
      gapTimer: null,
    };
    updateComposer();
    contentChanged();
    return state.stream;
  }

  function renderStream() {
    const stream = state.stream;
    if (!stream) return;
    stream.renderQueued = false;
    renderMarkdown(stream.body, stream.text);
    stream.node.dataset.seq = String(stream.seq);
    contentChanged();
  }

  function queueStreamRender() {
    const stream = state.stream;
    if (stream.renderQueued) return;
    stream.renderQueued = true;
    // One render per frame however many deltas arrive; a hidden tab catches up on done.
    requestAnimationFrame(renderStream);
  }

  function applyDelta(frame) {
    if (state.finalIds.has(frame.message_id)) return;
    const stream =
      state.stream && state.stream.messageId === frame.message_id
        ? state.stream
        : startStream(frame.conversation_id, frame.message_id);
    state.idleReloaded = false;
    if (frame.seq <= stream.seq || stream.buffer.has(frame.seq)) return; // replayed, already shown
    stream.buffer.set(frame.seq, frame.text);
    while (stream.buffer.has(stream.seq + 1)) {
      stream.seq += 1;
      stream.text += stream.buffer.get(stream.seq);
      stream.buffer.delete(stream.seq);
    }
    if (stream.buffer.size && !stream.gapTimer) {
      // A frame went missing: ask for a replay from the last one we have in order.
      stream.gapTimer = setTimeout(() => {
        stream.gapTimer = null;
        if (state.stream === stream && stream.buffer.size) {
          sendFrame({ type: "chat.resume", conversation_id: stream.conversationId, after_seq: stream.seq });
        }
      }, 1000);
    }
    queueStreamRender();
  }

  function finishReply(frame) {
    const stream = state.stream && state.stream.messageId === frame.message_id ? state.stream : null;
    let node = stream ? stream.node : findMessageNode(frame.message_id);
    if (!stream && state.finalIds.has(frame.message_id)) return;
    if (!node) {
      node = messageNode("assistant", { id: frame.message_id });
      ui.messages.append(node);
    }
    if (stream) {
      clearTimeout(stream.gapTimer);
      state.stream = null;
    }
    // chat.done carries exactly what was saved: it replaces whatever the deltas built.
    renderMarkdown(node.querySelector(".msg-body"), frame.content || "");
    setStatusBadge(node, frame.status, frame.error);
    node.dataset.seq = stream ? String(stream.seq) : node.dataset.seq || "";
    state.finalIds.add(frame.message_id);
    ui.messages.removeAttribute("aria-busy");
    updateComposer();
    contentChanged();
    const spoken = { complete: "Reply complete.", stopped: "Reply stopped.", error: "The reply failed.", interrupted: "The reply was interrupted." };
    announce(spoken[frame.status] || "Reply finished.");
  }

  function updateComposer() {
    const generating = Boolean(state.stream && state.stream.conversationId === state.currentId);
    // Send and Stop swap places; a keyboard user must not lose focus to <body> when they do.
    const focused = document.activeElement;
    ui.stop.hidden = !generating;
    ui.send.hidden = generating;
    if ((focused === ui.stop && !generating) || (focused === ui.send && generating)) ui.input.focus();
  }

  // ---- Opening conversations ------------------------------------------------------------

  function resetView() {
    if (state.stream) clearTimeout(state.stream.gapTimer);
    state.stream = null;
    state.finalIds = new Set();
    ui.messages.replaceChildren();
    ui.messages.removeAttribute("aria-busy");
    showComposerError("");
    updateComposer();
  }

  function markCurrentInSidebar() {
    for (const item of ui.list.children) {
      const current = item.dataset.id === state.currentId;
      item.classList.toggle("is-current", current);
      const link = item.querySelector(".conv-link");
      if (link) {
        if (current) link.setAttribute("aria-current", "page");
        else link.removeAttribute("aria-current");
      }
    }
  }

  function setExportLinks(id) {
    ui.exportMenu.hidden = !id;
    ui.exportMenu.open = false;
    if (!id) return;
    ui.exportMd.href = `/api/conversations/${id}/export/?format=md`;
    ui.exportJson.href = `/api/conversations/${id}/export/?format=json`;
  }

  function newChat({ push }) {
    if (push && window.location.pathname !== "/") history.pushState({}, "", "/");
    state.currentId = null;
    state.loadedId = null;
    state.currentPersona = null;
    state.awaitingNew = null;
    state.idleReloaded = false;
    state.loadSeq += 1;
    resetView();
    setTitle("");
    setPersonaChip(null);
    setExportLinks(null);
    ui.picker.hidden = false;
    markCurrentInSidebar();
    ui.input.focus();
  }

  async function openConversation(id, { push = false, keepView = false, afterIdle = false } = {}) {
    if (push) history.pushState({}, "", `/c/${id}/`);
    const seq = ++state.loadSeq;
    state.idleReloaded = afterIdle;
    state.currentId = id;
    state.loadedId = null;
    state.awaitingNew = null;
    ui.picker.hidden = true;
    setExportLinks(id);
    markCurrentInSidebar();
    if (!keepView) resetView();
    let conversation;
    try {
      conversation = await api("GET", `/api/conversations/${id}/`);
    } catch (error) {
      if (seq !== state.loadSeq) return;
      if (error.status === 404) {
        showComposerError("That conversation does not exist or was deleted.");
        newChat({ push: false });
        history.replaceState({}, "", "/");
      } else {
        showComposerError(`Could not load the conversation: ${error.message}`);
      }
      return;
    }
    await personasReady;
    if (seq !== state.loadSeq) return; // the user opened something else meanwhile
    resetView();
    state.currentPersona = conversation.persona;
    setTitle(conversation.title);
    setPersonaChip(conversation.persona);
    for (const message of conversation.messages) appendMessage(message);
    // Messages the user sent that the server has not acknowledged yet stay on screen.
    for (const entry of state.pending.values()) {
      if (entry.frame.conversation_id === id) ui.messages.append(entry.node);
    }
    state.loadedId = id;
    scrollToBottom();
    resumeCurrent();
  }

  function resumeCurrent() {
    if (!state.loadedId || state.loadedId !== state.currentId) return;
    const afterSeq = state.stream ? state.stream.seq : 0;
    sendFrame({ type: "chat.resume", conversation_id: state.currentId, after_seq: afterSeq });
  }

  function route({ push = false } = {}) {
    const match = UUID_IN_PATH.exec(window.location.pathname);
    if (match) openConversation(match[1].toLowerCase(), { push });
    else newChat({ push });
  }

  window.addEventListener("popstate", () => route());

  ui.newChat.addEventListener("click", () => {
    newChat({ push: true });
    closeSidebar();
  });

  // ---- Sending --------------------------------------------------------------------------

  function sendMessage() {
    const content = ui.input.value.trim();
    if (!content) return;
    // Characters as the server counts them (code points): an emoji is one, not two.
    const length = Array.from(content).length;
    if (length > MAX_CHARS) {
      showComposerError(`That message is too long (${length} characters; the limit is ${MAX_CHARS}).`);
      return;
    }
    if (state.stream && state.stream.conversationId === state.currentId) {
      showComposerError("Wait for the reply to finish, or stop it first.");
      return;
    }
    const isNew = state.currentId === null;
    if (isNew && state.awaitingNew) return; // the first message of this chat is on its way
    showComposerError("");
    const clientId = uuid4();
    const frame = {
      type: "chat.send",
      conversation_id: state.currentId,
      persona: isNew ? state.selectedPersona : null,
      content,
      client_id: clientId,
    };
    if (isNew) {
      state.awaitingNew = clientId;
      state.currentPersona = state.selectedPersona;
      ui.picker.hidden = true;
      setPersonaChip(state.selectedPersona);
    }
    const node = messageNode("user", { status: "sending" });
    node.classList.add("is-sending");
    node.querySelector(".msg-body").textContent = content;
    ui.messages.append(node);
    state.pending.set(clientId, { frame, node, text: content });
    ui.input.value = "";
    autoGrow();
    scrollToBottom();
    sendFrame(frame);
  }

  function acknowledge(entry, userMessageId) {
    entry.node.classList.remove("is-sending");
    if (userMessageId) entry.node.dataset.id = userMessageId;
    setStatusBadge(entry.node, "complete");
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
    }
  });

  function autoGrow() {
    ui.input.style.height = "auto";
    ui.input.style.height = `${Math.min(ui.input.scrollHeight, window.innerHeight * 0.4)}px`;
  }
  ui.input.addEventListener("input", autoGrow);

  ui.stop.addEventListener("click", () => {
    if (!state.stream) return;
    sendFrame({ type: "chat.stop", conversation_id: state.stream.conversationId });
    ui.input.focus();
  });

  // ---- Socket frames --------------------------------------------------------------------

  function onAccepted(frame) {
    const entry = state.pending.get(frame.client_id);
    state.pending.delete(frame.client_id);
    const now = new Date().toISOString();
    if (state.awaitingNew && state.awaitingNew === frame.client_id) {
      // The first message of a new chat: the conversation now has an id, put it in the URL.
      state.awaitingNew = null;
      state.currentId = frame.conversation_id;
      state.loadedId = frame.conversation_id;
      state.currentPersona = frame.persona;
      setPersonaChip(frame.persona);
      history.pushState({}, "", `/c/${frame.conversation_id}/`);
      setExportLinks(frame.conversation_id);
    }
    const changes = { persona: frame.persona, updated_at: now };
    if (frame.title) changes.title = frame.title;
    touchConversation(frame.conversation_id, changes);
    markCurrentInSidebar();
    if (frame.conversation_id !== state.currentId) return;
    if (frame.title) setTitle(frame.title);
    if (entry) acknowledge(entry, frame.user_message_id);
    else if (typeof frame.content === "string" && !findMessageNode(frame.user_message_id)) {
      // Sent from another tab: show the user's message before its reply streams in.
      appendMessage({ role: "user", id: frame.user_message_id, content: frame.content, status: "complete" });
    }
    if (frame.message_id && !state.finalIds.has(frame.message_id)) startStream(frame.conversation_id, frame.message_id);
  }

  function onError(frame) {
    const entry = frame.client_id ? state.pending.get(frame.client_id) : null;
    const reason = frame.code === "rate_limited" && frame.retry_after
      ? `${frame.message} Try again in ${Math.ceil(frame.retry_after)} s.`
      : frame.message;
    if (entry) {
      // A refused message saves nothing: take it off the list and give the text back.
      state.pending.delete(frame.client_id);
      entry.node.remove();
      if (!ui.input.value) {
        ui.input.value = entry.text;
        autoGrow();
      }
      if (state.awaitingNew === frame.client_id) {
        state.awaitingNew = null;
        if (state.currentId === null) ui.picker.hidden = false;
      }
      showComposerError(reason || "The message was refused.");
      return;
    }
    if (frame.conversation_id && frame.conversation_id !== state.currentId) return;
    if (frame.code === "not_found" && frame.conversation_id) {
      showComposerError("That conversation does not exist or was deleted.");
      return;
    }
    showComposerError(reason || "Something went wrong.");
  }

  function onIdle(frame) {
    if (frame.conversation_id !== state.currentId || state.loadedId !== state.currentId) return;
    // A re-sent message the server had already saved is answered like a resume; with
    // nothing in flight its reply is finished and the reload below shows both.
    let hadResent = false;
    for (const [clientId, entry] of state.pending) {
      if (entry.frame.conversation_id === frame.conversation_id && entry.resent) {
        state.pending.delete(clientId);
        hadResent = true;
      }
    }
    const missed = Boolean(state.stream) || hadResent || lastMessageIsUnansweredUser();
    if (!missed || state.idleReloaded) {
      state.stream = null;
      ui.messages.removeAttribute("aria-busy");
      updateComposer();
      return;
    }
    // The reply ended while this page was not listening: what was saved is the truth.
    // Only once, so a user message whose reply was never saved cannot loop us.
    openConversation(frame.conversation_id, { keepView: true, afterIdle: true });
  }

  function settlePendingFor(conversationId) {
    for (const [clientId, entry] of state.pending) {
      if (entry.frame.conversation_id === conversationId && entry.resent) {
        state.pending.delete(clientId);
        acknowledge(entry, null);
      }
    }
  }

  function handleFrame(frame) {
    switch (frame.type) {
      case "chat.accepted":
        onAccepted(frame);
        break;
      case "chat.delta":
        if (frame.conversation_id !== state.currentId || state.loadedId !== state.currentId) break;
        settlePendingFor(frame.conversation_id);
        applyDelta(frame);
        break;
      case "chat.done":
        touchConversation(frame.conversation_id, { updated_at: new Date().toISOString() });
        markCurrentInSidebar();
        if (frame.conversation_id !== state.currentId || state.loadedId !== state.currentId) break;
        settlePendingFor(frame.conversation_id);
        finishReply(frame);
        break;
      case "chat.idle":
        onIdle(frame);
        break;
      case "chat.error":
        onError(frame);
        break;
      case "conversation.updated":
        touchConversation(frame.conversation_id, { title: frame.title || "" });
        markCurrentInSidebar();
        if (frame.conversation_id === state.currentId) setTitle(frame.title);
        break;
      default:
        break; // newer servers may add types; ignoring them is the contract
    }
  }

  // ---- Socket with reconnect ------------------------------------------------------------

  const socket = { ws: null, attempts: 0, timer: null, opened: false };
  const STATUS_TEXT = { connecting: "Connecting…", connected: "Connected", reconnecting: "Reconnecting…", offline: "Offline" };

  function setSocketStatus(status) {
    ui.status.dataset.state = status;
    ui.status.querySelector(".label").textContent = STATUS_TEXT[status];
    ui.status.title = STATUS_TEXT[status];
  }

  function socketUrl() {
    const scheme = window.location.protocol === "https:" ? "wss:" : "ws:";
    return `${scheme}//${window.location.host}/ws/chat/`;
  }

  function sendFrame(frame) {
    if (socket.ws && socket.ws.readyState === WebSocket.OPEN) {
      socket.ws.send(JSON.stringify(frame));
      return true;
    }
    return false; // chat.send frames stay pending and go out again on reconnect
  }

  function connect() {
    clearTimeout(socket.timer);
    socket.timer = null;
    if (socket.ws) return;
    setSocketStatus(socket.opened ? "reconnecting" : "connecting");
    const ws = new WebSocket(socketUrl());
    socket.ws = ws;
    ws.addEventListener("open", () => {
      const reconnected = socket.opened;
      socket.opened = true;
      socket.attempts = 0;
      setSocketStatus("connected");
      onSocketOpen(reconnected);
    });
    ws.addEventListener("message", (event) => {
      let frame;
      try {
        frame = JSON.parse(event.data);
      } catch (_error) {
        return;
      }
      if (frame && typeof frame.type === "string") handleFrame(frame);
    });
    ws.addEventListener("close", (event) => {
      if (socket.ws !== ws) return;
      socket.ws = null;
      if (event.code === SESSION_ENDED) {
        // Logged out (here or in another tab), or the account changed: the API says whether
        // we are still signed in (a 401 sends the page to the login form); if so, reconnect.
        setSocketStatus("reconnecting");
        api("GET", "/api/personas/").then(
          () => scheduleReconnect(),
          (error) => {
            if (error.status !== 401) scheduleReconnect();
          },
        );
        return;
      }
      // 4008 (this tab fell too far behind) and 4012 (server restart) reconnect and resume.
      scheduleReconnect();
    });
  }

  function scheduleReconnect() {
    socket.attempts += 1;
    const offline = navigator.onLine === false || socket.attempts > 4;
    setSocketStatus(offline ? "offline" : "reconnecting");
    if (socket.attempts === 3) {
      // A refused handshake looks like a network failure; ask the API whether we are
      // still logged in (a 401 sends the page to the login form).
      api("GET", "/api/personas/").catch(() => {});
    }
    // Exponential backoff with jitter so many tabs do not reconnect in lockstep.
    const base = Math.min(30000, 500 * 2 ** (socket.attempts - 1));
    const delay = base * (0.75 + Math.random() * 0.5);
    socket.timer = setTimeout(connect, delay);
  }

  function onSocketOpen(reconnected) {
    for (const entry of state.pending.values()) {
      // Same client_id: the server never saves a message twice, so re-sending is safe.
      entry.resent = reconnected || entry.resent;
      sendFrame(entry.frame);
    }
    if (reconnected && !state.stream && state.loadedId && state.loadedId === state.currentId) {
      // Replies may have finished while we were away: reload, which resumes afterwards.
      openConversation(state.currentId, { keepView: true });
      return;
    }
    resumeCurrent();
  }

  window.addEventListener("online", () => {
    if (socket.ws && socket.ws.readyState === WebSocket.OPEN) {
      setSocketStatus("connected"); // the socket lived through it
    } else if (!socket.ws) {
      socket.attempts = 0;
      connect(); // no need to wait out the backoff: the network is back
    }
  });
  window.addEventListener("offline", () => setSocketStatus("offline"));

  // ---- Start ----------------------------------------------------------------------------

  // Messages are drawn once personas are known, so their headers carry names and avatars.
  const personasReady = loadPersonas().catch((error) => {
    showComposerError(`Could not load personas: ${error.message}`);
  });

  function start() {
    connect();
    // The page is usable at once: a message typed before the lists arrive is kept pending.
    route();
    loadConversations().catch((error) => {
      showComposerError(`Could not load conversations: ${error.message}`);
    });
    personasReady.then(() => {
      renderSidebar();
      if (state.currentId) setPersonaChip(currentPersonaSlug());
      else if (state.awaitingNew) setPersonaChip(state.currentPersona);
    });
  }

  start();
})();
