// The state of one key of a virtual object or workflow, from the instance that owns its partition.

import { owner } from "./api.js";
import { clear, h, pretty } from "./dom.js";

export function render(main, params) {
  const object = params.get("object") ?? "";
  const key = params.get("key") ?? "";
  const form = h("form", { class: "filters", id: "state-form" },
    h("label", {}, "object ", h("input", { name: "object", id: "s-object", value: object, required: true, size: 18 })),
    h("label", {}, "key ", h("input", { name: "key", id: "s-key", value: key, required: true, size: 22 })),
    h("button", { type: "submit" }, "Show"));
  form.addEventListener("submit", (e) => {
    e.preventDefault();
    const data = new FormData(form);
    const hash = `#/state?${new URLSearchParams({ object: data.get("object").trim(), key: data.get("key") })}`;
    if (location.hash === hash) refresh(); else location.hash = hash;
  });
  const results = h("section", { id: "state" });
  clear(main, h("h1", {}, "State by key"), form, results);

  async function refresh() {
    if (!object || !key) {
      clear(results, h("p", { class: "muted" }, "Name an object (or workflow) and a key."));
      return;
    }
    const path = `/api/state/${encodeURIComponent(object)}/${encodeURIComponent(key)}`;
    const { instance, data } = await owner(path);
    const names = Object.keys(data.state).sort();
    clear(results,
      h("p", { class: "muted" }, `${data.object} / ${data.key}: partition ${data.partition} on ${instance.instance_id}, `
        + `${names.length} entr${names.length === 1 ? "y" : "ies"}`),
      names.length ? h("table", { class: "rows", id: "state-rows" },
        h("thead", {}, h("tr", {}, h("th", {}, "name"), h("th", {}, "value"))),
        h("tbody", {}, names.map((n) => h("tr", { "data-name": n },
          h("td", {}, n), h("td", {}, h("pre", { class: "value" }, pretty(data.state[n]))))))) : null);
  }
  return { refresh };
}
