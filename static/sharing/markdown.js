/*
 * Markdown for the share page, rendered exactly as the chat page renders it: the same
 * marked options and renderer overrides, the same DOMPurify configuration and link hook,
 * the same highlight.js decoration (copied from static/chat/view.js, which the chat page
 * owns; keep the two in step, or have view.js import this module).
 *
 * marked, DOMPurify and hljs are the vendored classic scripts loaded before the modules.
 */

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

function element(tag, className, text) {
  const node = document.createElement(tag);
  if (className) node.className = className;
  if (text !== undefined) node.textContent = text;
  return node;
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
    // highlight.js escapes the source itself; sanitizing again keeps the rule simple:
    // no HTML string reaches the page unsanitized.
    code.replaceChildren(sanitizedFragment(result.value));
    code.classList.add("hljs");

    const copy = element("button", "copy-btn", "Copy");
    copy.type = "button";
    copy.setAttribute("aria-label", "Copy code");
    const head = element("div", "codeblock-head");
    head.append(element("span", "", (match && match[1]) || result.language || "code"), copy);
    const block = element("div", "codeblock");
    block.append(head);
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
