/*
 * How a message's files are drawn, on the chat page (view.js) and the share page
 * (../sharing/share.js): images as buttons that enlarge them, other files as chips.
 */

import { h } from "./dom.js";

/** "830 B", "12 KB", "1.4 MB": a file size as people read it. */
export function sizeText(bytes) {
  if (!Number.isFinite(bytes) || bytes < 0) return "";
  if (bytes < 1024) return `${bytes} B`;
  if (bytes < 1024 * 1024) return `${Math.round(bytes / 1024)} KB`;
  return `${(bytes / (1024 * 1024)).toFixed(1).replace(/\.0$/, "")} MB`;
}

/** What the icon of a file that is not an image says: its kind, or its extension. */
export function fileBadge(attachment) {
  if (attachment.kind === "pdf") return "PDF";
  const match = /\.([a-z0-9]{1,4})$/i.exec(attachment.name || "");
  return match ? match[1].toUpperCase() : "FILE";
}

/**
 * Width and height attributes that fit `box` px and keep the image's proportions, so the
 * space is held before the image arrives (no jump as the page loads).
 */
export function fitted(width, height, box) {
  if (!width || !height) return { width: null, height: null };
  const scale = Math.min(1, box / width, box / height);
  return { width: Math.max(1, Math.round(width * scale)), height: Math.max(1, Math.round(height * scale)) };
}

/**
 * One file of a sent message. `url` is where the server serves it (null: not offered);
 * `src`, what the thumbnail shows (a local preview while the server's copy is not known).
 */
export function messageFileNode(attachment, { url, src = url }) {
  const name = String(attachment.name || "file");
  if (attachment.kind === "image" && src) {
    const { width, height } = fitted(attachment.width, attachment.height, 240);
    const image = h("img", { src, alt: name, loading: "lazy", decoding: "async", width, height });
    return h(
      "button",
      { type: "button", class: "msg-image", "data-url": url || src, "data-name": name, "aria-label": `Enlarge ${name}`, title: name },
      image,
    );
  }
  const size = sizeText(attachment.size);
  const parts = [
    h("span", { class: "file-badge", "aria-hidden": "true", text: fileBadge(attachment) }),
    h("span", { class: "msg-file-name", text: name }),
    h("span", { class: "msg-file-size", text: size }),
  ];
  if (!url) return h("span", { class: "msg-file" }, ...parts);
  return h("a", { class: "msg-file", href: url, download: name, title: `Download ${name}`, "aria-label": `Download ${name} (${size})` }, ...parts);
}

