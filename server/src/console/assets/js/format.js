// Shared view helpers: building DOM nodes (text is always set as text, never parsed
// as HTML), the seeds' date format, the seeds' event names ("Accounts Create"), the
// grouped event list, and status messages.

/** el("td", {class: "x", onclick: f}, "text", otherNode) */
export function el(tag, attributes = {}, ...children) {
  const node = document.createElement(tag);
  for (const [key, value] of Object.entries(attributes)) {
    if (value === undefined || value === null || value === false) continue;
    if (key.startsWith("on")) node.addEventListener(key.slice(2), value);
    else if (key === "dataset") Object.assign(node.dataset, value);
    else if (value === true) node.setAttribute(key, "");
    else node.setAttribute(key, value);
  }
  for (const child of children.flat()) {
    if (child === undefined || child === null || child === false) continue;
    node.append(child instanceof Node ? child : document.createTextNode(String(child)));
  }
  return node;
}

const pad = (n) => String(n).padStart(2, "0");

/** `12/20/2016 13:45:15 +0000`, as the seeds show dates (UTC). */
export function formatDate(iso) {
  if (!iso) return "";
  const d = new Date(iso);
  return `${pad(d.getUTCMonth() + 1)}/${pad(d.getUTCDate())}/${d.getUTCFullYear()} ` +
    `${pad(d.getUTCHours())}:${pad(d.getUTCMinutes())}:${pad(d.getUTCSeconds())} +0000`;
}

/** Replaces `node`'s children with the given ones, skipping null, undefined and false. */
export function fill(node, ...children) {
  node.replaceChildren(...children.flat().filter((c) => c !== null && c !== undefined && c !== false));
}

/** A <time> in the seeds' format, the browser's local time on hover. */
export function dateNode(iso) {
  return el("time", { datetime: iso, title: iso ? new Date(iso).toString() : "" }, formatDate(iso));
}

/** A datetime-local input's value (read as UTC) as RFC 3339, or "". */
export function utcInput(value) {
  if (!value) return "";
  const withSeconds = value.length === 16 ? `${value}:00` : value;
  return `${withSeconds}Z`;
}

const ACTION_WORDS = {
  balance_non_negative: "Balance Became >= 0",
  balance_non_positive: "Balance Became <= 0",
};

function words(text) {
  return text.split("_").filter(Boolean).map((w) => w[0].toUpperCase() + w.slice(1)).join(" ");
}

/** `email_rates_manager` → `Email Rates Manager`. */
export function groupLabel(group) {
  return words(group);
}

/** The action's words: `balance_non_negative` → `Balance Became >= 0`. */
export function actionLabel(action) {
  return ACTION_WORDS[action] || words(action);
}

/** `accounts.create` → `Accounts Create`, as the seeds name events. */
export function eventLabel(name) {
  const [group, action = ""] = name.split(".");
  return `${groupLabel(group)} ${actionLabel(action)}`.trim();
}

/** `after` → `After`. */
export function title(word) {
  return word ? word[0].toUpperCase() + word.slice(1) : "";
}

/**
 * A <select> of the catalogue, grouped by the part before the dot (Clients, Accounts,
 * Subscriptions, Email Rates Manager, Import...), with an optional first option.
 */
export function eventSelect(attributes, eventTypes, selected, emptyLabel) {
  const select = el("select", attributes);
  if (emptyLabel !== undefined) select.append(el("option", { value: "" }, emptyLabel));
  const groups = new Map();
  for (const type of eventTypes) {
    const [group] = type.name.split(".");
    if (!groups.has(group)) groups.set(group, []);
    groups.get(group).push(type);
  }
  for (const [group, types] of groups) {
    const optgroup = el("optgroup", { label: groupLabel(group) });
    for (const type of types) {
      const action = type.name.split(".")[1] || type.name;
      optgroup.append(el("option", {
        value: type.name,
        title: type.description,
        selected: type.name === selected,
      }, `${groupLabel(group)} ${actionLabel(action)}`));
    }
    select.append(optgroup);
  }
  select.value = selected || "";
  return select;
}

/** A labelled control in a form row. */
export function field(label, control, hint) {
  const id = control.id;
  const error = el("p", { class: "field-error", id: `error-${id}`, "aria-live": "polite" });
  control.setAttribute("aria-describedby", hint ? `hint-${id} error-${id}` : `error-${id}`);
  return el("div", { class: "field" },
    el("label", { for: id }, label),
    control,
    hint ? el("p", { class: "hint", id: `hint-${id}` }, hint) : null,
    error);
}

/** Writes a message into the page's status line (`role=status`). */
export function notice(node, text, kind = "info") {
  node.textContent = text;
  node.className = `notice ${kind}`;
  node.hidden = !text;
}

/** `1 ms`, as the seeds show durations. */
export function duration(ms) {
  return `${ms} ms`;
}

/** Pretty JSON text, or the text itself when it is not JSON. */
export function prettyJson(text) {
  if (!text) return "";
  try {
    return JSON.stringify(JSON.parse(text), null, 2);
  } catch (_) {
    return text;
  }
}
