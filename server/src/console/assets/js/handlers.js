// The Handlers screen (the seeds' table: ID, Priority, Name, Event, Handler, status
// icon with the quick enable/disable switch, Advanced Search by event, handler type
// and status) and the New / edit handler form. Values are checked by the server only:
// its errors are shown next to the field they name.

import { api, ApiError, query } from "./api.js";
import { el, fill, eventLabel, eventSelect, field, notice, title } from "./format.js";

const STATUS_ICONS = { enabled: "●", disabled: "○", archived: "⊖" };

/** Filters kept while the console is open. */
const filters = { event: "", kind: "", status: "" };

function options(id, values, selected, attributes = {}) {
  const select = el("select", { id, ...attributes });
  for (const [value, label] of values) {
    select.append(el("option", { value, selected: value === selected }, label));
  }
  select.value = selected;
  return select;
}

function targetText(handler) {
  if (handler.kind === "http") return handler.http ? handler.http.url : "";
  return handler.script ? handler.script.path : "";
}

function statusCell(handler, session, refresh, message) {
  const icon = el("span", { class: `status-icon ${handler.status}`, "aria-hidden": "true" },
    STATUS_ICONS[handler.status] || "?");
  const text = el("span", { class: "visually-hidden" }, title(handler.status));
  if (!session.admin || handler.status === "archived") {
    return el("td", { class: "status", title: title(handler.status) }, icon, text);
  }
  // The seeds' quick switch between enabled and disabled; archiving is in the form.
  const next = handler.status === "enabled" ? "disabled" : "enabled";
  const button = el("button", {
    type: "button",
    class: "status-toggle",
    title: `${title(handler.status)}: click to ${next === "enabled" ? "enable" : "disable"}`,
    "aria-label": `${title(handler.status)}. ${next === "enabled" ? "Enable" : "Disable"} ${handler.name}`,
    onclick: async () => {
      button.disabled = true;
      try {
        await api("POST", `/api/handlers/${handler.id}/status`, { status: next });
        notice(message, `${handler.name} is now ${next}.`);
        await refresh();
      } catch (error) {
        notice(message, error.message, "error");
        button.disabled = false;
      }
    },
  }, icon, text);
  return el("td", { class: "status" }, button);
}

/** #/handlers */
export async function handlersScreen({ main, session }) {
  const { event_types: eventTypes } = await api("GET", "/api/event-types");
  const message = el("p", { class: "notice", role: "status", hidden: true });
  const body = el("tbody");
  const count = el("p", { class: "count", id: "handlers-count" });
  const eventFilter = eventSelect({ id: "filter-event" }, eventTypes, filters.event, "Any event");
  const kindFilter = options("filter-kind", [["", "Any type"], ["http", "HTTP"], ["script", "Script"]], filters.kind);
  const statusFilter = options("filter-status", [["", "Enabled and disabled"], ["enabled", "Enabled"],
    ["disabled", "Disabled"], ["archived", "Archived"]], filters.status);
  const search = el("form", { id: "handler-filters", class: "search panel", hidden: true },
    el("h2", {}, "Advanced Search"),
    field("Event", eventFilter), field("Handler Type", kindFilter), field("Status", statusFilter),
    el("div", { class: "actions" },
      el("button", { type: "reset" }, "Reset"),
      el("button", { type: "submit", class: "primary" }, "Search")));
  const toggle = el("button", { type: "button", "aria-expanded": "false", "aria-controls": "handler-filters",
    id: "toggle-search" }, "Advanced Search ▾");
  toggle.addEventListener("click", () => {
    search.hidden = !search.hidden;
    toggle.setAttribute("aria-expanded", String(!search.hidden));
  });

  async function refresh() {
    const { handlers } = await api("GET", `/api/handlers${query(filters)}`);
    count.textContent = handlers.length ? `Rows 1 – ${handlers.length} of ${handlers.length}` : "No handlers";
    body.replaceChildren(...handlers.map((handler) => el("tr", {
      dataset: { handlerId: handler.id, status: handler.status },
    },
    el("td", {}, handler.id),
    el("td", {}, handler.priority),
    el("td", {}, el("a", { href: `#/handlers/${handler.id}` }, handler.name)),
    el("td", {}, eventLabel(handler.event), " ", el("span", { class: "tag" }, title(handler.phase))),
    el("td", { class: "target" }, el("span", { class: "tag" }, handler.kind === "http" ? "HTTP" : "Script"), " ",
      targetText(handler)),
    statusCell(handler, session, refresh, message),
    el("td", { class: "row-actions" },
      el("a", { href: `#/logs?handler_id=${handler.id}`, title: `Execution logs of ${handler.name}` }, "Logs")))));
  }
  search.addEventListener("submit", (event) => {
    event.preventDefault();
    Object.assign(filters, { event: eventFilter.value, kind: kindFilter.value, status: statusFilter.value });
    refresh().catch((error) => notice(message, error.message, "error"));
  });
  search.addEventListener("reset", () => {
    Object.assign(filters, { event: "", kind: "", status: "" });
    setTimeout(() => refresh().catch((error) => notice(message, error.message, "error")));
  });

  fill(main,
    el("div", { class: "title-bar" }, el("h1", {}, "Handlers"),
      el("div", { class: "tools" },
        session.admin ? el("a", { href: "#/handlers/new", class: "button primary", id: "new-handler" }, "+ New Handler") : null,
        toggle)),
    search, message, count,
    el("div", { class: "table-wrap" }, el("table", { id: "handlers-table" },
      el("caption", { class: "visually-hidden" }, "Handlers, by event then priority"),
      el("thead", {}, el("tr", {}, ...["ID", "Priority", "Name", "Event", "Handler", "Status", ""].map((h) =>
        el("th", { scope: "col" }, h)))),
      body)));
  await refresh();
}

/** The form's controls, keyed by the API field they edit. */
function controls(eventTypes, handler) {
  const h = handler || {};
  const http = h.http || {};
  const headers = Object.entries(http.headers || {}).map(([k, v]) => `${k}: ${v}`).join("\n");
  return {
    name: el("input", { id: "name", value: h.name || "", required: true, maxlength: 200 }),
    event: eventSelect({ id: "event" }, eventTypes, h.event || "accounts.create"),
    phase: options("phase", [["after", "After"], ["before", "Before"]], h.phase || "after"),
    kind: options("kind", [["http", "HTTP POST"], ["script", "Local script"]], h.kind || "http"),
    url: el("input", { id: "url", type: "text", inputmode: "url", value: http.url || "", placeholder: "http://127.0.0.1:5000/api" }),
    headers: el("textarea", { id: "headers", rows: 3, placeholder: "Authorization: Bearer …" }, headers),
    script: el("input", { id: "script-path", value: (h.script && h.script.path) || "", placeholder: "crm/add_client.sh" }),
    status: options("status", [["enabled", "Enabled"], ["disabled", "Disabled"], ["archived", "Archived"]], h.status || "enabled"),
    priority: el("input", { id: "priority", type: "number", min: 0, step: 1, value: h.priority ?? 1 }),
    timeout: el("input", { id: "timeout", type: "number", min: 1, step: 1, value: h.timeout_ms ?? 10000 }),
    policy: options("failure-policy", [["fail_closed", "Fail closed (forbid the action)"],
      ["fail_open", "Fail open (continue)"]], h.failure_policy || "fail_closed"),
    filter: el("textarea", { id: "filter-json", rows: 2, placeholder: "{\"id_clients\": 15}" }, h.filter_json || ""),
  };
}

/** The JSON body of the form (the proto's field names). */
function body(c) {
  const data = {
    name: c.name.value,
    event: c.event.value,
    phase: c.phase.value,
    status: c.status.value,
    priority: Number(c.priority.value || 0),
    timeout_ms: Number(c.timeout.value || 0),
    failure_policy: c.policy.value,
    filter_json: c.filter.value.trim(),
  };
  if (c.kind.value === "http") {
    const headers = {};
    for (const line of c.headers.value.split("\n").map((l) => l.trim()).filter(Boolean)) {
      const colon = line.indexOf(":");
      if (colon < 0) headers[line] = "";
      else headers[line.slice(0, colon).trim()] = line.slice(colon + 1).trim();
    }
    data.http = { url: c.url.value.trim(), headers };
  } else {
    data.script = { path: c.script.value.trim() };
  }
  return data;
}

/** The id of the control showing the server's `field` (`handler.http.url` → `url`). */
function controlFor(fieldName) {
  const name = (fieldName || "").replace(/^handler\./, "");
  const map = {
    name: "name", event: "event", phase: "phase", status: "status", priority: "priority",
    timeout_ms: "timeout", failure_policy: "failure-policy", filter_json: "filter-json",
    http: "url", "http.url": "url", target: "url", script: "script-path", "script.path": "script-path",
  };
  if (map[name]) return map[name];
  if (name.startsWith("http.headers")) return "headers";
  return null;
}

function secretPanel(handler) {
  const secret = handler.http && handler.http.secret;
  if (!secret || secret.includes("…")) return null;
  return el("div", { class: "notice secret", id: "secret", role: "status" },
    el("strong", {}, "Signing secret (shown once, copy it now): "), el("code", {}, secret));
}

/** #/handlers/new and #/handlers/ID */
export async function handlerForm({ main, session }, id) {
  const [{ event_types: eventTypes }, handler] = await Promise.all([
    api("GET", "/api/event-types"),
    id ? api("GET", `/api/handlers/${encodeURIComponent(id)}`) : Promise.resolve(null),
  ]);
  const c = controls(eventTypes, handler);
  const message = el("div", { id: "form-message", role: "status" });
  const secretSlot = el("div", {}, handler ? secretPanel(handler) : null);
  const httpFields = el("div", { class: "target-fields" },
    field("URL", c.url, "Where the event is POSTed, e.g. http://127.0.0.1:5000/api"),
    field("Headers", c.headers, "One `Name: value` per line, sent with every call"));
  const scriptFields = el("div", { class: "target-fields" },
    field("Script path", c.script, "Relative to the server's scripts directory"));
  const showTarget = () => {
    httpFields.hidden = c.kind.value !== "http";
    scriptFields.hidden = c.kind.value === "http";
  };
  c.kind.addEventListener("change", showTarget);
  showTarget();

  const fieldset = el("fieldset", { disabled: !session.admin },
    el("legend", { class: "visually-hidden" }, "Handler"),
    field("Name", c.name),
    field("Event", c.event),
    field("Phase", c.phase, "Before: runs synchronously and may modify or forbid; After: runs after the action, with retries"),
    field("Task", c.kind),
    httpFields, scriptFields,
    field("Status", c.status),
    field("Priority", c.priority, "Lower values have higher priority: the handler with priority 1 runs before the others"),
    field("Timeout (ms)", c.timeout),
    field("Failure policy", c.policy, "Before handlers only: what a failing handler means for the action"),
    field("Payload filter", c.filter, "Optional JSON object: run only for events whose data contains it"));
  const form = el("form", { id: "handler-form", class: "panel", novalidate: true }, fieldset, message);
  if (session.admin) {
    form.append(el("div", { class: "actions" },
      el("button", { type: "submit", class: "primary", id: "save" }, handler ? "Save" : "Create"),
      el("a", { href: "#/handlers", class: "button" }, "Cancel"),
      handler && handler.kind === "http"
        ? el("button", { type: "button", id: "rotate-secret", onclick: () => rotate() }, "Rotate secret") : null,
      handler ? el("button", { type: "button", id: "delete", class: "danger", onclick: () => remove() }, "Delete") : null));
  }

  function clearErrors() {
    for (const node of form.querySelectorAll(".field-error")) node.textContent = "";
    for (const node of form.querySelectorAll("[aria-invalid]")) node.removeAttribute("aria-invalid");
    notice(message, "");
  }

  function showError(error) {
    const target = error instanceof ApiError ? controlFor(error.field) : null;
    if (target) {
      document.getElementById(`error-${target}`).textContent = error.message;
      const control = document.getElementById(target);
      control.setAttribute("aria-invalid", "true");
      control.focus();
    } else {
      notice(message, error.message, "error");
    }
  }

  async function rotate() {
    clearErrors();
    try {
      const rotated = await api("POST", `/api/handlers/${handler.id}/rotate-secret`, {});
      fill(secretSlot, secretPanel(rotated));
    } catch (error) {
      showError(error);
    }
  }

  async function remove() {
    if (!window.confirm(`Delete handler ${handler.name}? Its execution logs stay.`)) return;
    try {
      await api("DELETE", `/api/handlers/${handler.id}`);
      location.hash = "#/handlers";
    } catch (error) {
      showError(error);
    }
  }

  form.addEventListener("submit", async (event) => {
    event.preventDefault();
    clearErrors();
    try {
      const saved = handler
        ? await api("PATCH", `/api/handlers/${handler.id}`, body(c))
        : await api("POST", "/api/handlers", body(c));
      if (!handler) {
        // Shown once: the edit view of the new handler, with its secret.
        await handlerForm({ main, session }, String(saved.id));
        history.replaceState(null, "", `#/handlers/${saved.id}`);
        const slot = document.getElementById("secret-slot");
        if (slot) fill(slot, secretPanel(saved));
        notice(document.getElementById("form-message"), `Handler ${saved.name} created.`);
        return;
      }
      notice(message, `Saved ${saved.name}.`);
    } catch (error) {
      showError(error);
    }
  });

  secretSlot.id = "secret-slot";
  fill(main,
    el("div", { class: "title-bar" },
      el("h1", {}, handler ? `Handler ${handler.id}: ${handler.name}` : "New Handler"),
      el("div", { class: "tools" }, el("a", { href: "#/handlers" }, "← Handlers"))),
    handler && handler.disabled_reason
      ? el("p", { class: "notice warning" }, `Disabled by the service: ${handler.disabled_reason}`) : null,
    secretSlot, form);
  if (session.admin) c.name.focus();
}
