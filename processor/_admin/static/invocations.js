// Invocations across the instances, filtered by status, handler, key and age (the filters live in
// the address after '#', so a filtered view can be shared; the token never does).

import { everywhere } from "./api.js";
import { badge, clear, coverageNotes, duration, errorBox, h, invocationLink, parseTime } from "./dom.js";

const STATUSES = ["queued", "running", "backing_off", "paused", "suspended", "completed", "failed"];
const FILTERS = ["status", "handler", "key", "older_than_s", "limit"];

export function render(main, params) {
  const input = (name, attrs) => h("input", { name, id: `f-${name}`, value: params.get(name) ?? "", ...attrs });
  const form = h("form", { class: "filters", id: "invocation-filters" },
    h("label", {}, "status ", h("select", { name: "status", id: "f-status" },
      h("option", { value: "" }, "any"),
      STATUSES.map((s) => h("option", { value: s, selected: params.get("status") === s }, s)))),
    h("label", {}, "handler ", input("handler", { placeholder: "service/handler or service", size: 22 })),
    h("label", {}, "key ", input("key", { size: 14 })),
    h("label", {}, "older than (s) ", input("older_than_s", { type: "number", min: 0, step: "any", size: 6 })),
    h("label", {}, "limit ", input("limit", { type: "number", min: 1, max: 10000, placeholder: "100", size: 6 })),
    h("button", { type: "submit" }, "Apply"),
    h("button", { type: "button", id: "f-clear", onclick: () => { location.hash = "#/invocations"; } }, "Clear"));
  form.addEventListener("submit", (e) => {
    e.preventDefault();
    const q = new URLSearchParams();
    for (const f of FILTERS) {
      const v = new FormData(form).get(f);
      if (v) q.set(f, String(v).trim());
    }
    const hash = `#/invocations${q.size ? `?${q}` : ""}`;
    if (location.hash === hash) refresh(); else location.hash = hash;
  });
  const results = h("section", { id: "invocations" });
  clear(main, h("h1", {}, "Invocations"), form, results);

  async function refresh() {
    const q = new URLSearchParams();
    for (const f of FILTERS) if (params.get(f)) q.set(f, params.get(f));
    const answers = await everywhere(`/api/invocations?${q}`);
    const cov = answers.coverage;
    const rows = [];
    const problems = [];
    for (const a of answers) {
      if (a.error) problems.push(errorBox(`${a.instance.instance_id}: ${a.error.message}`));
      else {
        const id = a.instance.instance_id;
        for (const r of a.data.invocations) if (cov.accepts(id, r.partition)) rows.push({ ...r, instance: id });
        if (!a.data.complete) problems.push(h("p", { class: "warn" }, `${id}: listing stopped after its scan budget; narrow the filters`));
      }
    }
    problems.push(...coverageNotes(cov));
    rows.sort((x, y) => (x.created < y.created ? -1 : x.created > y.created ? 1 : x.partition - y.partition));
    const limit = Number(params.get("limit")) || 100;
    rows.splice(limit);
    const now = Date.now();
    const table = h("table", { class: "rows", id: "invocation-rows" },
      h("thead", {}, h("tr", {}, ["instance", "partition", "status", "invocation", "target", "key", "created", "age",
        "attempt", "why"].map((c) => h("th", {}, c)))),
      h("tbody", {}, rows.map((r) => {
        const created = parseTime(r.created);
        return h("tr", { "data-id": r.id, "data-status": r.status },
          h("td", {}, r.instance), h("td", { class: "num" }, r.partition), h("td", {}, badge(r.status)),
          h("td", {}, invocationLink(r.id, r.instance)), h("td", {}, r.target), h("td", {}, r.key ?? "-"),
          h("td", {}, r.created), h("td", { class: "num" }, created === null ? "" : duration(now - created)),
          h("td", { class: "num" }, r.attempt), h("td", { class: "why" }, r.paused_reason || r.failure || ""));
      })));
    clear(results, problems, h("p", { class: "muted", id: "invocation-count" },
      `${rows.length} invocation(s) from ${answers.length} instance(s)`), rows.length ? table : null);
  }
  return { refresh };
}
