// The admin UI: a page per '#/route', each a module with render(main, params, ...) -> {refresh}.
// Plain ES modules, no build step; everything it shows comes from the JSON API.

import { ApiError, instances, token } from "./api.js";
import { clear, errorBox, h } from "./dom.js";
import * as invocations from "./invocations.js";
import * as journal from "./journal.js";
import * as partitions from "./partitions.js";
import * as state from "./state.js";
import * as timers from "./timers.js";

const $ = (id) => document.getElementById(id);
const main = $("main");
const REFRESH_MS = 5000;
let current = null;
let generation = 0;

function route() {
  const [path, query] = (location.hash.slice(1) || "/invocations").split("?");
  const params = new URLSearchParams(query || "");
  const parts = path.split("/").filter(Boolean).map(decodeURIComponent);
  switch (parts[0]) {
    case "invocation": return { page: "invocations", make: () => journal.render(main, params, parts.slice(1).join("/")) };
    case "state": return { page: "state", make: () => state.render(main, params) };
    case "timers": return { page: "timers", make: () => timers.render(main, params) };
    case "partitions": return { page: "partitions", make: () => partitions.render(main, params) };
    default: return { page: "invocations", make: () => invocations.render(main, params) };
  }
}

async function refresh() {
  if (!current) return;
  const mine = generation;
  main.setAttribute("aria-busy", "true");
  try {
    // The instances first: one may have stopped or started, a partition moved (the endpoint keeps
    // its list for a few seconds, so this is cheap).
    await instances(true).then(renderInstances, () => {});
    await current.refresh();
    $("flash").replaceChildren();
  } catch (e) {
    if (mine !== generation) return;
    const message = e instanceof ApiError ? e.message : `the endpoint did not answer: ${e.message}`;
    $("flash").replaceChildren(errorBox(message));
  } finally {
    if (mine === generation) main.setAttribute("aria-busy", "false");
  }
}

function show() {
  generation += 1;
  const { page, make } = route();
  for (const a of document.querySelectorAll("nav a")) a.classList.toggle("active", a.dataset.page === page);
  current = make();
  refresh();
}

function showToken() {
  const set = Boolean(token.get());
  $("token-state").textContent = set ? "token set for this tab" : "";
  $("token-forget").hidden = !set;
  $("token").value = "";
}

$("token-form").addEventListener("submit", (e) => {
  e.preventDefault();
  const v = $("token").value.trim();
  if (v) token.set(v);
  showToken();
  instances(true).then(renderInstances, () => {});
  refresh();
});
$("token-forget").addEventListener("click", () => {
  token.forget();
  showToken();
});
document.addEventListener("token-changed", showToken);

const auto = $("auto-refresh");
auto.checked = sessionStorage.getItem("processor-admin-auto") === "1";
auto.addEventListener("change", () => sessionStorage.setItem("processor-admin-auto", auto.checked ? "1" : "0"));
setInterval(() => {
  // Not while a dialog is open or the operator is typing a filter.
  const typing = document.activeElement && ["INPUT", "SELECT"].includes(document.activeElement.tagName)
    && document.activeElement !== auto;
  if (auto.checked && !$("confirm").open && !typing) refresh();
}, REFRESH_MS);

function renderInstances(d) {
  $("app-name").textContent = d.app;
  document.title = `${d.app} · processor admin`;
  clear($("instances"), `${d.instances.length} instance(s): `,
    d.instances.map((i, n) => [n ? ", " : "", h("span", { class: i.self ? "self" : "" }, i.instance_id)]));
}

window.addEventListener("hashchange", show);
showToken();
instances().then(renderInstances, () => {});
show();
