/* The JSON API: one fetch wrapper, one error type; a 401 sends the page to the login form. */

const CSRF_TOKEN = document.querySelector('meta[name="csrf-token"]').content;

export class ApiError extends Error {
  constructor(status, code, message) {
    super(message);
    this.status = status;
    this.code = code;
  }
}

export async function api(method, path, body, onResponse = null) {
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
    loginAgain();
    throw new ApiError(401, "unauthorized", "Logged out.");
  }
  if (onResponse) onResponse(response);
  if (response.status === 204) return null;
  const data = await response.json().catch(() => null);
  if (!response.ok) {
    const error = (data && data.error) || {};
    throw new ApiError(response.status, error.code || "error", error.message || response.statusText);
  }
  return data;
}

/**
 * GET a list that comes in pages: {data, next}, where `next` is the address of the page
 * after it (its `Link: <...>; rel="next"` header), or null for the last page.
 */
export async function apiPage(path) {
  let next = null;
  const data = await api("GET", path, undefined, (response) => {
    const link = response.headers.get("Link") || "";
    const found = /<([^>]+)>;\s*rel="next"/.exec(link);
    // Only a path of this site: the list's own link, never somewhere else.
    next = found && found[1].startsWith("/api/") ? found[1] : null;
  });
  return { data, next };
}

/** Whether the session is still signed in: false only on a 401 (which also goes to login). */
export function signedIn() {
  return api("GET", "/api/personas/").then(
    () => true,
    (error) => error.status !== 401,
  );
}

function loginAgain() {
  window.location.assign(`/accounts/login/?next=${encodeURIComponent(window.location.pathname)}`);
}

// What to say when an error answer carries no JSON message (a proxy's page, say).
const UPLOAD_STATUS_TEXT = {
  400: "This type of file is not accepted.",
  413: "This file is too large.",
  429: "Too many uploads: wait a little and try again.",
};

/**
 * POST /api/uploads/ with the file as multipart field `file`. XMLHttpRequest, not fetch,
 * because only it reports upload progress: onProgress(loaded, total). Returns {promise,
 * abort}; the promise resolves with the upload's JSON or rejects with an ApiError whose
 * message is the server's.
 */
export function uploadFile(file, { onProgress } = {}) {
  const xhr = new XMLHttpRequest();
  const promise = new Promise((resolve, reject) => {
    xhr.open("POST", "/api/uploads/");
    xhr.setRequestHeader("Accept", "application/json");
    xhr.setRequestHeader("X-CSRFToken", CSRF_TOKEN);
    xhr.withCredentials = true;
    if (onProgress) {
      xhr.upload.addEventListener("progress", (event) => {
        if (event.lengthComputable) onProgress(event.loaded, event.total);
      });
    }
    xhr.addEventListener("load", () => {
      let data = null;
      try {
        data = JSON.parse(xhr.responseText);
      } catch (_error) {
        data = null;
      }
      if (xhr.status === 401) {
        loginAgain();
        reject(new ApiError(401, "unauthorized", "Logged out."));
      } else if (xhr.status >= 200 && xhr.status < 300 && data) {
        resolve(data);
      } else {
        const error = (data && data.error) || {};
        const message = error.message || UPLOAD_STATUS_TEXT[xhr.status] || `The upload failed (${xhr.status}).`;
        reject(new ApiError(xhr.status, error.code || "error", message));
      }
    });
    xhr.addEventListener("error", () => reject(new ApiError(0, "network", "The upload failed: the server could not be reached.")));
    xhr.addEventListener("abort", () => reject(new ApiError(0, "aborted", "The upload was cancelled.")));
    const form = new FormData();
    form.append("file", file, file.name || "file");
    xhr.send(form);
  });
  return { promise, abort: () => xhr.abort() };
}
