// One invocation: its row, the actions that apply, and its journal as a timeline: each step and wait
// with the time it began and how long it took (across a step's attempts and backoff, until a wait
// completed), its due and retry times; instant actions and entries from before timestamps show none.

import { confirmAction, applicable } from "./actions.js";
import { owner } from "./api.js";
import { badge, clear, duration, h, parseTime, pretty, relative } from "./dom.js";

const WAITS = new Set(["sleep", "call", "attach", "awakeable", "promise"]);

function field(name, ...value) {
  return [h("dt", {}, name), h("dd", {}, ...value)];
}

function block(v) {
  return h("pre", { class: "value" }, pretty(v));
}

function entry(e) {
  const kind = WAITS.has(e.kind) ? "wait" : e.kind === "run" ? "step" : "action";
  const when = [];
  if (e.retry_at) when.push(`next attempt ${e.retry_at} UTC (${relative(parseTime(e.retry_at))})`);
  if (e.due) when.push(`due ${e.due} UTC (${relative(parseTime(e.due))})`);
  if (e.started) when.unshift(`${e.started.slice(11)} UTC`);
  const took = e.took_ms === null || e.took_ms === undefined ? null
    : h("span", { class: "took", title: `began ${e.started} UTC, ended ${e.ended} UTC` }, `took ${e.took_ms < 1000 ? `${e.took_ms} ms` : duration(e.took_ms)}`);
  return h("li", { class: `entry k-${kind} e-${e.state}`, "data-seq": e.seq, "data-kind": e.kind },
    h("div", { class: "entry-head" },
      h("span", { class: "seq" }, `#${e.seq}`), h("span", { class: "kind" }, e.kind),
      h("span", { class: "name" }, e.name), badge(e.state),
      e.attempts > 1 ? h("span", { class: "attempts" }, `${e.attempts} attempts`) : null, took),
    when.length ? h("div", { class: "when" }, when.join(" · ")) : null,
    e.failure ? h("pre", { class: "failure" }, `${e.failure.type}: ${e.failure.message}`) : null,
    e.value !== null && e.value !== undefined ? block(e.value) : null);
}

function ending(inv) {
  const created = parseTime(inv.created);
  const finished = parseTime(inv.finished);
  const took = created === null ? "" : finished !== null ? `after ${duration(finished - created)}`
    : `open for ${duration(Date.now() - created)}`;
  const retry = inv.status === "backing_off" && inv.retry_at && inv.retry_at !== "-"
    ? `; attempt ${inv.attempt + 1} ${relative(parseTime(inv.retry_at))}` : "";
  return h("li", { class: `entry k-end e-${inv.status}` },
    h("div", { class: "entry-head" }, h("span", { class: "kind" }, "now"), badge(inv.status),
      h("span", { class: "muted" }, `${took}${retry}`)),
    inv.failure ? h("pre", { class: "failure" }, inv.failure) : null,
    inv.paused_reason ? h("pre", { class: "failure" }, inv.paused_reason) : null);
}

export function render(main, params, id) {
  const actions = h("div", { class: "actions", id: "actions" });
  const head = h("section", { id: "invocation" });
  const timeline = h("ol", { class: "timeline", id: "timeline" });
  const note = h("p", { class: "muted", id: "action-note" });
  clear(main, h("h1", {}, "Invocation ", h("code", {}, id)), actions, note, head, h("h2", {}, "Journal"), timeline);
  let where = params.get("instance");
  let last = null;

  async function refresh() {
    const { instance, data: inv } = await owner(`/api/invocations/${encodeURIComponent(id)}`, where);
    where = instance.instance_id;
    const created = parseTime(inv.created);
    clear(head, h("dl", { class: "fields" },
      field("status", badge(inv.status), inv.in_memory ? " in memory" : ""),
      field("target", inv.target), field("key", inv.key ?? "-"),
      field("instance / partition", `${instance.instance_id} / ${inv.partition}`),
      field("attempt", String(inv.attempt)),
      field("created", `${inv.created} UTC`, created === null ? "" : ` (${relative(created)})`),
      field("finished", inv.finished === "-" ? "-" : `${inv.finished} UTC`),
      inv.retry_at && inv.retry_at !== "-" ? field("next retry", `${inv.retry_at} UTC (${relative(parseTime(inv.retry_at))})`) : null,
      inv.failure ? field("error", h("pre", { class: "failure", id: "invocation-error" }, inv.failure)) : null,
      inv.paused_reason ? field(inv.status === "queued" ? "waiting" : "paused",
        h("pre", { class: "failure" }, inv.paused_reason)) : null,
      inv.source ? field("source", `${inv.source.topic} [${inv.source.partition}] @ ${inv.source.offset}`) : null,
      inv.caller_id ? field("caller", h("a", { href: `#/invocation/${encodeURIComponent(inv.caller_id)}` }, inv.caller_id)) : null,
      inv.idempotency_key ? field("idempotency key", inv.idempotency_key) : null,
      field("input", block(inv.input)),
      inv.result !== null && inv.result !== undefined ? field("result", block(inv.result)) : null));
    clear(actions, applicable(inv.status).map((a) => h("button", {
      type: "button", class: a === "retry" ? "" : "danger", "data-action": a,
      onclick: () => run(a, instance),
    }, a[0].toUpperCase() + a.slice(1))));
    clear(timeline, inv.journal.map(entry), ending(inv));
    last = inv;
    return inv;
  }

  async function run(action, instance) {
    const answer = await confirmAction(action, id, instance);
    if (!answer) return;
    note.textContent = `${action} requested: the command is on partition ${answer.partition} of the inbox; `
      + "the owner applies it in its next cycle.";
    // Follow the outcome for a while: bounded, every second.
    const before = last ? last.status : null;
    for (let i = 0; i < 20; i += 1) {
      await new Promise((r) => { setTimeout(r, 1000); });
      if (!main.contains(timeline)) return;
      try {
        const inv = await refresh();
        if (inv.status !== before) return;
      } catch {
        return; // purged, or the owner moved: the next refresh says so
      }
    }
  }
  return { refresh };
}
