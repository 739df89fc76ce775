// The Execution Logs screen (the seeds' table: ID, Date, Event type, Event, Status,
// Name, Error, Duration), its Advanced Search (Status, Event Type with After by
// default, Event, Data, Error, Date From, Date To, Reset, Search), cursor paging, the
// Live switch following Tail, the Details view and Retry of failed AFTER runs.

import { api, events, query } from "./api.js";
import {
  dateNode, fill, duration, el, eventLabel, eventSelect, field, notice, prettyJson, title, utcInput,
} from "./format.js";

/** The search kept while the console is open (Event Type: After by default). */
const search = { status: "", phase: "after", event: "", data: "", error: "", from: "", to: "", handler_id: "" };
const FILTER_KEYS = ["status", "phase", "event", "data", "error", "from", "to", "handler_id"];

function canRetry(log, session) {
  return session.admin && log.status === "fail" && log.phase === "after" && !log.test;
}

function retryButton(log, message) {
  return el("button", {
    type: "button",
    class: "retry",
    "aria-label": `Retry run ${log.id} of ${log.handler_name}`,
    onclick: async (event) => {
      event.currentTarget.disabled = true;
      try {
        const { delivery_id: delivery } = await api("POST", `/api/logs/${log.id}/retry`, {});
        notice(message, `Retry of run ${log.id} scheduled (delivery ${delivery}).`);
      } catch (error) {
        notice(message, error.message, "error");
      }
    },
  }, "Retry");
}

function row(log, session, message) {
  return el("tr", { dataset: { logId: log.id, status: log.status } },
    el("td", {}, log.id),
    el("td", {}, dateNode(log.created_at)),
    el("td", {}, title(log.phase)),
    el("td", {}, eventLabel(log.event)),
    el("td", { class: `run ${log.status}` }, title(log.status)),
    el("td", {}, log.handler_name, log.test ? el("span", { class: "tag" }, "test") : null),
    el("td", { class: "error-text" }, log.error),
    el("td", { class: "number" }, duration(log.duration_ms)),
    el("td", { class: "row-actions" },
      el("a", { href: `#/logs/${log.id}`, "aria-label": `Details of run ${log.id}` }, "Details"),
      canRetry(log, session) ? retryButton(log, message) : null));
}

/** #/logs */
export async function logsScreen({ main, session, params, onLeave }) {
  const { event_types: eventTypes } = await api("GET", "/api/event-types");
  if (params.has("handler_id")) search.handler_id = params.get("handler_id");
  const message = el("p", { class: "notice", id: "logs-message", role: "status", hidden: true });
  const body = el("tbody");
  const count = el("p", { class: "count", id: "logs-count" });
  const older = el("button", { type: "button", id: "older", hidden: true }, "Older →");
  const newer = el("button", { type: "button", id: "newer", hidden: true }, "← Newer");
  const liveStatus = el("span", { id: "live-status", role: "status" });
  const live = el("input", { type: "checkbox", role: "switch", id: "live" });
  /** Cursors of the pages before the one shown (Newer goes back). */
  const pages = [];
  let cursor = "";
  let nextCursor = null;
  let tail = null;

  const c = {
    status: el("select", { id: "search-status" }, el("option", { value: "" }, "Any"),
      el("option", { value: "success" }, "Success"), el("option", { value: "fail" }, "Fail")),
    phase: el("select", { id: "search-phase" }, el("option", { value: "after" }, "After"),
      el("option", { value: "before" }, "Before"), el("option", { value: "" }, "Any")),
    event: eventSelect({ id: "search-event" }, eventTypes, search.event, "Any event"),
    data: el("input", { id: "search-data", placeholder: "\"accname\": \"1\"" }),
    error: el("input", { id: "search-error" }),
    from: el("input", { id: "search-from", type: "datetime-local", step: 1 }),
    to: el("input", { id: "search-to", type: "datetime-local", step: 1 }),
  };
  function showSearch() {
    for (const key of ["status", "phase", "event", "data", "error"]) c[key].value = search[key];
    c.from.value = search.from.replace(/Z$/, "");
    c.to.value = search.to.replace(/Z$/, "");
  }
  showSearch();
  const handlerNote = el("p", { class: "hint", id: "handler-filter" });
  const panel = el("form", { id: "advanced-search", class: "search panel", hidden: true },
    el("h2", {}, "Advanced Search"),
    field("Status", c.status), field("Event Type", c.phase), field("Event", c.event),
    field("Data", c.data, "Text the data sent contains"), field("Error", c.error, "Text the error contains"),
    field("Date From (UTC)", c.from), field("Date To (UTC)", c.to),
    handlerNote,
    el("div", { class: "actions" },
      el("button", { type: "button", id: "search-reset", onclick: () => reset() }, "Reset"),
      el("button", { type: "submit", class: "primary", id: "search-submit" }, "Search")));
  const toggle = el("button", { type: "button", id: "toggle-search", "aria-expanded": "false",
    "aria-controls": "advanced-search" }, "Advanced Search ▾");
  toggle.addEventListener("click", () => {
    panel.hidden = !panel.hidden;
    toggle.setAttribute("aria-expanded", String(!panel.hidden));
  });

  function filterParams() {
    return Object.fromEntries(FILTER_KEYS.map((key) => [key, search[key]]));
  }

  function describeHandler() {
    handlerNote.textContent = search.handler_id ? `Only handler ${search.handler_id}. ` : "";
    if (search.handler_id) {
      handlerNote.append(el("button", { type: "button", class: "link", onclick: () => {
        search.handler_id = "";
        restart();
      } }, "Show every handler"));
    }
  }

  async function load() {
    const page = await api("GET", `/api/logs${query({ ...filterParams(), cursor })}`);
    nextCursor = page.next_cursor;
    const first = pages.length * 50 + 1;
    count.textContent = page.entries.length
      ? `Rows ${first} – ${first + page.entries.length - 1}` : "No runs match";
    body.replaceChildren(...page.entries.map((entry) => row(entry.log, session, message)));
    older.hidden = !nextCursor;
    newer.hidden = pages.length === 0;
    describeHandler();
  }

  function restart() {
    pages.length = 0;
    cursor = "";
    stopLive();
    load().catch((error) => notice(message, error.message, "error"));
  }

  function reset() {
    Object.assign(search, { status: "", phase: "after", event: "", data: "", error: "", from: "", to: "", handler_id: "" });
    showSearch();
    restart();
  }

  panel.addEventListener("submit", (event) => {
    event.preventDefault();
    Object.assign(search, {
      status: c.status.value, phase: c.phase.value, event: c.event.value, data: c.data.value,
      error: c.error.value, from: utcInput(c.from.value), to: utcInput(c.to.value),
    });
    notice(message, "");
    restart();
  });
  older.addEventListener("click", () => {
    pages.push(cursor);
    cursor = nextCursor;
    load().catch((error) => notice(message, error.message, "error"));
  });
  newer.addEventListener("click", () => {
    cursor = pages.pop() || "";
    load().catch((error) => notice(message, error.message, "error"));
  });

  function stopLive() {
    if (tail) tail.abort();
    tail = null;
    live.checked = false;
    liveStatus.textContent = "";
  }

  async function follow(controller) {
    const filter = filterParams();
    // New runs only: a date range would hide them.
    delete filter.from;
    delete filter.to;
    try {
      for await (const item of events(`/api/logs/tail${query(filter)}`, controller.signal)) {
        if (item.event === "open") liveStatus.textContent = "Live: new runs appear at the top";
        else if (item.event === "log") {
          const tr = row(item.data.log, session, message);
          tr.classList.add("fresh");
          body.prepend(tr);
          if (count.textContent === "No runs match") count.textContent = "";
        } else if (item.event === "error") throw new Error(item.data.message);
      }
      if (!controller.signal.aborted) throw new Error("the live log ended");
    } catch (error) {
      if (controller.signal.aborted) return;
      tail = null;
      live.checked = false;
      liveStatus.textContent = `Live stopped: ${error.message}`;
    }
  }
  live.addEventListener("change", () => {
    if (!live.checked) return stopLive();
    pages.length = 0;
    cursor = "";
    tail = new AbortController();
    liveStatus.textContent = "Connecting…";
    load().then(() => tail && follow(tail)).catch((error) => notice(message, error.message, "error"));
  });
  onLeave(stopLive);

  fill(main,
    el("div", { class: "title-bar" }, el("h1", {}, "Execution Logs"),
      el("div", { class: "tools" },
        el("span", { class: "switch" }, live, el("label", { for: "live" }, "Live")),
        toggle)),
    panel, message, el("p", { class: "live-line" }, liveStatus), count,
    el("div", { class: "table-wrap" }, el("table", { id: "logs-table" },
      el("caption", { class: "visually-hidden" }, "Execution logs, newest first"),
      el("thead", {}, el("tr", {}, ...["ID", "Date", "Event type", "Event", "Status", "Name", "Error", "Duration", ""]
        .map((h) => el("th", { scope: "col" }, h)))),
      body)),
    el("div", { class: "pager" }, newer, older));
  await load();
}

function block(heading, text, id) {
  return text ? el("section", { class: "data" }, el("h2", {}, heading), el("pre", { id, tabindex: 0 }, prettyJson(text))) : null;
}

/** #/logs/ID: the seeds' Details window. */
export async function logDetails({ main, session }, id) {
  const log = await api("GET", `/api/logs/${encodeURIComponent(id)}`);
  const message = el("p", { class: "notice", role: "status", hidden: true });
  const item = (term, value) => [el("dt", {}, term), el("dd", {}, value)];
  fill(main,
    el("div", { class: "title-bar" }, el("h1", { id: "details-title" }, log.handler_name),
      el("div", { class: "tools" }, el("a", { href: "#/logs" }, "← Execution Logs"))),
    el("dl", { class: "details", id: "log-details" },
      item("Event Type", title(log.phase)),
      item("Event", eventLabel(log.event)),
      item("Status", el("strong", { class: `run ${log.status}` }, title(log.status))),
      item("Date", dateNode(log.created_at)),
      item("Run", `${log.id} (attempt ${log.attempt}, event ${log.event_id}${log.test ? ", test run" : ""})`),
      item("Duration", duration(log.duration_ms)),
      log.kind === "http" ? item("HTTP status", log.http_status || "none") : item("Exit code", log.exit_code ?? "none"),
      log.emitted_by ? item("Emitted by", log.emitted_by) : null,
      log.error ? item("Error", el("span", { id: "details-error" }, log.error)) : null),
    canRetry(log, session) ? el("div", { class: "actions" }, retryButton(log, message)) : null,
    message,
    block("Data", log.data_sent_json, "data-sent"),
    log.phase === "before" ? block("Data returned", log.data_returned_json, "data-returned") : null,
    block("Response", log.response, "response"));
}
