// Partitions per instance: owner, phase, restore progress, committed offsets and consumer lag
// (from the consumer's statistics, every 5 s), timers in memory.

import { everywhere } from "./api.js";
import { clear, errorBox, h } from "./dom.js";

function restore(r) {
  if (!r) return "";
  const total = r.records_applied + r.records_left;
  return h("span", {}, h("progress", { max: total || 1, value: r.records_applied }),
    ` ${r.records_applied}/${total} · ${r.records_per_s}/s · ${r.running_s}s`);
}

function offsets(map) {
  if (!map) return "";
  return Object.entries(map).map(([t, n]) => `${t}: ${n}`).join("\n");
}

export function render(main) {
  const results = h("section", { id: "partitions" });
  clear(main, h("h1", {}, "Partitions"), results);

  async function refresh() {
    const answers = await everywhere("/api/partitions");
    const rows = [];
    const problems = [];
    let total = 0;
    for (const a of answers) {
      if (a.error) problems.push(errorBox(`${a.instance.instance_id}: ${a.error.message}`));
      else {
        total = Math.max(total, a.data.partitions_total);
        for (const p of a.data.partitions) rows.push({ ...p, owner: a.data.instance_id, ready: a.data.ready });
      }
    }
    rows.sort((x, y) => x.partition - y.partition);
    const seen = new Set(rows.map((r) => r.partition));
    const missing = [...Array(total).keys()].filter((p) => !seen.has(p));
    clear(results, problems,
      h("p", { class: "muted", id: "partition-summary" }, `${seen.size} of ${total} partition(s) owned by the instances shown`
        + (missing.length ? `; not shown: ${missing.join(", ")}` : "")),
      h("table", { class: "rows", id: "partition-rows" },
        h("thead", {}, h("tr", {}, ["partition", "owner", "phase", "restore", "committed offsets", "lag (records)",
          "timers in memory"].map((c) => h("th", {}, c)))),
        h("tbody", {}, rows.map((p) => {
          const lag = p.lag && Object.keys(p.lag).length ? Object.values(p.lag).reduce((s, n) => s + n, 0) : null;
          return h("tr", { "data-partition": p.partition, "data-phase": p.phase },
            h("td", { class: "num" }, p.partition), h("td", {}, p.owner), h("td", {}, h("span", { class: `badge p-${p.phase}` }, p.phase)),
            h("td", {}, restore(p.restore)), h("td", {}, h("pre", {}, offsets(p.committed_offsets))),
            h("td", { title: offsets(p.lag) }, lag === null ? "" : String(lag)),
            h("td", { class: "num" }, p.timers_in_window ?? ""));
        }))));
  }
  return { refresh };
}
