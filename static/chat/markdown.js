/*
 * The one markdown renderer, used by the chat page (view.js) and the share page
 * (../sharing/share.js): marked renders, DOMPurify sanitizes, highlight.js colours code.
 * No HTML string reaches the page without going through sanitizedFragment().
 *
 * marked, DOMPurify and hljs are the vendored classic scripts loaded before the modules.
 */

import { copyText, h } from "./dom.js";

const { marked, DOMPurify, hljs } = window;

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
    // show it as a link the reader may choose to follow instead.
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

/** Replace the container's children with `text` rendered as sanitized markdown. */
export function renderMarkdown(container, text) {
  const fragment = sanitizedFragment(markdown.parse(text));
  decorateCode(fragment);
  container.replaceChildren(fragment);
}

/** A click handler for the messages: the Copy button of a rendered code block. */
export async function onCopyClick(event) {
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
}
