// The Stats screen: per handler, over a window, runs, success rate and the p50/p95
// durations (test runs not counted), and what waits (paused, queued).

import { api, query } from "./api.js";
import { el, fill, field } from "./format.js";

const WINDOWS = [["1", "Last hour"], ["24", "Last 24 hours"], ["168", "Last 7 days"], ["720", "Last 30 days"]];
let hours = "24";

const ms = (value) => `${Math.round(value)} ms`;

/** #/stats */
export async function statsScreen({ main }) {
  const select = el("select", { id: "stats-window" },
    ...WINDOWS.map(([value, label]) => el("option", { value, selected: value === hours }, label)));
  const body = el("tbody");
  async function load() {
    const from = new Date(Date.now() - Number(hours) * 3600 * 1000).toISOString();
    const { handlers } = await api("GET", `/api/stats${query({ from })}`);
    body.replaceChildren(...handlers.map((s) => el("tr", { dataset: { handlerId: s.handler_id } },
      el("td", {}, s.handler_id),
      el("td", {}, el("a", { href: `#/logs?handler_id=${s.handler_id}` }, s.handler_name)),
      el("td", { class: "number" }, s.total),
      el("td", { class: "number" }, s.success),
      el("td", { class: "number" }, s.fail),
      el("td", { class: "number" }, s.total ? `${(s.success_rate * 100).toFixed(1)} %` : "–"),
      el("td", { class: "number" }, ms(s.p50_ms)),
      el("td", { class: "number" }, ms(s.p95_ms)),
      el("td", { class: "number" }, s.paused + s.queued + s.throttled))));
    if (!handlers.length) {
      body.append(el("tr", {}, el("td", { colspan: 9 }, "No runs in this window")));
    }
  }
  select.addEventListener("change", () => {
    hours = select.value;
    load();
  });
  fill(main,
    el("div", { class: "title-bar" }, el("h1", {}, "Stats"),
      el("div", { class: "tools" }, field("Window", select))),
    el("div", { class: "table-wrap" }, el("table", { id: "stats-table" },
      el("caption", { class: "visually-hidden" }, "Runs per handler"),
      el("thead", {}, el("tr", {}, ...["ID", "Name", "Runs", "Success", "Fail", "Success rate", "p50", "p95", "Waiting"]
        .map((h, i) => el("th", { scope: "col", class: i >= 2 ? "number" : null }, h)))),
      body)));
  await load();
}
