// The timers due next across the instances, merged in due order.

import { everywhere } from "./api.js";
import { clear, coverageNotes, errorBox, h, invocationLink, relative } from "./dom.js";

export function render(main, params) {
  const limit = Number(params.get("limit")) || 100;
  const results = h("section", { id: "timers" });
  clear(main, h("h1", {}, "Timers due next"), results);

  async function refresh() {
    const answers = await everywhere(`/api/timers?limit=${limit}`);
    const cov = answers.coverage;
    const rows = [];
    const problems = [];
    for (const a of answers) {
      const id = a.instance.instance_id;
      if (a.error) problems.push(errorBox(`${id}: ${a.error.message}`));
      else for (const t of a.data.timers) if (cov.accepts(id, t.partition)) rows.push({ ...t, instance: id });
    }
    problems.push(...coverageNotes(cov));
    rows.sort((x, y) => x.due_ms - y.due_ms);
    rows.splice(limit);
    clear(results, problems, h("p", { class: "muted" }, `${rows.length} timer(s)`),
      rows.length ? h("table", { class: "rows", id: "timer-rows" },
        h("thead", {}, h("tr", {}, ["due (UTC)", "in", "kind", "invocation", "seq", "attempt", "partition", "instance"]
          .map((c) => h("th", {}, c)))),
        h("tbody", {}, rows.map((t) => h("tr", { "data-kind": t.kind },
          h("td", {}, t.due.replace("T", " ").replace("Z", "")), h("td", {}, relative(t.due_ms)), h("td", {}, t.kind),
          h("td", {}, invocationLink(t.invocation_id, t.instance)), h("td", { class: "num" }, t.seq),
          h("td", { class: "num" }, t.attempt), h("td", { class: "num" }, t.partition), h("td", {}, t.instance))))) : null);
  }
  return { refresh };
}
