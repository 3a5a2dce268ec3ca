// Building the page: elements with text only (never innerHTML), so a value from a journal or a
// state entry can never become markup or script on a page that holds the admin token.

export function h(tag, attrs = {}, ...children) {
  const el = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs)) {
    if (v === null || v === undefined || v === false) continue;
    if (k.startsWith("on")) el.addEventListener(k.slice(2), v);
    else if (k === "class") el.className = v;
    else el.setAttribute(k, v === true ? "" : String(v));
  }
  for (const c of children.flat(Infinity)) {
    if (c === null || c === undefined || c === false) continue;
    el.append(c instanceof Node ? c : String(c));
  }
  return el;
}

export function clear(el, ...children) {
  el.replaceChildren(...children.flat(Infinity).filter((c) => c !== null && c !== undefined && c !== false));
}

const TRUNCATE = 4000;

/** A value as indented JSON (a string as itself), cut at a few thousand characters. */
export function pretty(v) {
  const s = typeof v === "string" ? v : JSON.stringify(v, null, 2);
  return s.length > TRUNCATE ? `${s.slice(0, TRUNCATE)}… (${s.length} characters)` : s;
}

/** "2025-06-01 12:00:00" (UTC, as the API writes times) as milliseconds; null for "-" or nothing. */
export function parseTime(s) {
  if (!s || s === "-") return null;
  const ms = Date.parse(`${s.replace(" ", "T")}${s.endsWith("Z") ? "" : "Z"}`);
  return Number.isNaN(ms) ? null : ms;
}

/** 1.2s, 3m 4s, 5h 6m, 7d 8h. */
export function duration(ms) {
  const s = Math.abs(ms) / 1000;
  if (s < 60) return `${s < 10 ? s.toFixed(1) : Math.round(s)}s`;
  const m = Math.floor(s / 60);
  if (m < 60) return `${m}m ${Math.round(s % 60)}s`;
  const hrs = Math.floor(m / 60);
  if (hrs < 48) return `${hrs}h ${m % 60}m`;
  return `${Math.floor(hrs / 24)}d ${hrs % 24}h`;
}

/** "in 3.2s" or "5m 1s ago" for a time in milliseconds. */
export function relative(ms) {
  if (ms === null || ms === undefined) return "";
  const d = ms - Date.now();
  return d >= 0 ? `in ${duration(d)}` : `${duration(d)} ago`;
}

export function badge(status) {
  return h("span", { class: `badge s-${status}` }, status);
}

export function invocationLink(id, instance) {
  const q = instance ? `?instance=${encodeURIComponent(instance)}` : "";
  return h("a", { href: `#/invocation/${encodeURIComponent(id)}${q}`, class: "inv" }, id);
}

export function errorBox(message) {
  return h("p", { class: "error", role: "alert" }, message);
}

/** Warnings for a merged view: claims set aside, partitions no live owner answered for. */
export function coverageNotes(cov) {
  const out = cov.notes.map((n) => h("p", { class: "warn" }, n));
  if (cov.missing.length) {
    out.push(h("p", { class: "warn", id: "missing-partitions" }, `partitions ${cov.missing.join(", ")} had no live `
      + "owner answering (a rebalance, or an instance restoring or unreachable): their rows are not shown"));
  }
  return out;
}
