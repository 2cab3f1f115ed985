/* The JSON API: one fetch wrapper, one error type; a 401 sends the page to the login form. */

const CSRF_TOKEN = document.querySelector('meta[name="csrf-token"]').content;

export class ApiError extends Error {
  constructor(status, code, message) {
    super(message);
    this.status = status;
    this.code = code;
  }
}

export async function api(method, path, body) {
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

/** Whether the session is still signed in: false only on a 401 (which also goes to login). */
export function signedIn() {
  return api("GET", "/api/personas/").then(
    () => true,
    (error) => error.status !== 401,
  );
}
