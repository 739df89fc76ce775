// Start-up, sign-in and the router: `#/handlers`, `#/handlers/new`, `#/handlers/ID`,
// `#/logs`, `#/logs/ID`, `#/stats`. Each screen module renders into <main>; the
// session ({name, roles, admin, development}) from /api/whoami tells them whether to
// show edit controls (the server refuses edits by non-admins anyway).

import { api, ApiError, setToken, token } from "./api.js";
import { el, fill } from "./format.js";
import { handlerForm, handlersScreen } from "./handlers.js";
import { logDetails, logsScreen } from "./logs.js";
import { statsScreen } from "./stats.js";

const main = document.getElementById("main");
let session = null;
/** Cleanup of the screen shown (the Live log's stream, for one). */
let leave = () => {};

async function signIn() {
  try {
    session = await api("GET", "/api/whoami");
  } catch (error) {
    if (error instanceof ApiError && error.status === 401) {
      const refused = token();
      setToken(null);
      session = null;
      return showSignIn(refused ? error.message : "");
    }
    return showFailure(error);
  }
  document.getElementById("nav").hidden = false;
  document.getElementById("who").hidden = false;
  document.getElementById("sign-out").hidden = session.development;
  document.getElementById("who-name").textContent = session.development
    ? "Development mode (no sign-in): every caller is admin"
    : `Signed in as ${session.name} (${session.roles.join(", ")})`;
  route();
}

function showSignIn(message) {
  leave();
  document.getElementById("nav").hidden = true;
  document.getElementById("who").hidden = true;
  const input = el("input", { id: "token", type: "password", autocomplete: "off", required: true });
  const error = el("p", { class: "field-error", id: "error-token", role: "alert" }, message || "");
  const form = el("form", { id: "sign-in", class: "panel" },
    el("h1", {}, "Sign in"),
    el("p", {}, "Paste an API token from the server's tokens file. It is kept in this browser tab only."),
    el("div", { class: "field" }, el("label", { for: "token" }, "Token"), input, error),
    el("div", { class: "actions" }, el("button", { type: "submit", class: "primary" }, "Sign in")));
  form.addEventListener("submit", async (event) => {
    event.preventDefault();
    setToken(input.value.trim());
    try {
      await api("GET", "/api/whoami");
      await signIn();
    } catch (failure) {
      setToken(null);
      error.textContent = failure.message;
      input.focus();
    }
  });
  fill(main, form);
  input.focus();
}

function showFailure(error) {
  fill(main, el("p", { class: "notice error", role: "alert" }, error.message));
}

function route() {
  if (!session) return;
  leave();
  leave = () => {};
  const hash = location.hash.replace(/^#\/?/, "") || "handlers";
  const [path, queryText = ""] = hash.split("?");
  const params = new URLSearchParams(queryText);
  const parts = path.split("/");
  for (const link of document.querySelectorAll("#nav a")) {
    if (link.dataset.section === parts[0]) link.setAttribute("aria-current", "page");
    else link.removeAttribute("aria-current");
  }
  const context = { main, session, params, onLeave: (f) => { leave = f; } };
  let screen;
  if (parts[0] === "handlers" && parts[1] === "new") screen = handlerForm(context, null);
  else if (parts[0] === "handlers" && parts[1]) screen = handlerForm(context, parts[1]);
  else if (parts[0] === "logs" && parts[1]) screen = logDetails(context, parts[1]);
  else if (parts[0] === "logs") screen = logsScreen(context);
  else if (parts[0] === "stats") screen = statsScreen(context);
  else screen = handlersScreen(context);
  screen.catch((error) => {
    if (error instanceof ApiError && error.status === 401) return showSignIn(error.message);
    showFailure(error);
  });
}

document.getElementById("sign-out").addEventListener("click", () => {
  setToken(null);
  session = null;
  showSignIn("");
});
window.addEventListener("hashchange", route);
signIn();
