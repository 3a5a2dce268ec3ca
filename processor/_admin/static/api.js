// The JSON API (docs/operate.md) as the page uses it: the bearer token from sessionStorage on
// every call (never in a URL), and one call per instance that /api/instances lists, each through
// the path on this endpoint that forwards to it (the browser talks to this origin only).

const TOKEN_KEY = "processor-admin-token";

export const token = {
  get: () => sessionStorage.getItem(TOKEN_KEY) || "",
  set: (value) => sessionStorage.setItem(TOKEN_KEY, value),
  forget: () => sessionStorage.removeItem(TOKEN_KEY),
};

export class ApiError extends Error {
  constructor(status, message) {
    super(message);
    this.status = status;
  }
}

// Relative to the page (/ui/), so the UI works behind a proxy that adds a path prefix.
const ROOT = "..";

function headers(explicitToken) {
  const t = explicitToken ?? token.get();
  return t ? { Authorization: `Bearer ${t}` } : {};
}

async function answer(r) {
  let body = null;
  try {
    body = await r.json();
  } catch {
    body = null;
  }
  if (!r.ok) {
    let message = (body && body.error) || `${r.status} ${r.statusText}`;
    if (r.status === 401) message += " — set the admin token at the top of the page";
    throw new ApiError(r.status, message);
  }
  return body;
}

/** GET `path` (e.g. "/api/invocations?status=running") from `instance` (this one when omitted). */
export async function get(path, instance) {
  const prefix = instance ? instance.path : "";
  const r = await fetch(`${ROOT}${prefix}${path}`, { headers: headers(), cache: "no-store" });
  return answer(r);
}

/** POST an action (cancel, kill, purge, retry) for invocation `id` on `instance`, with `withToken`. */
export async function act(instance, id, action, withToken) {
  const prefix = instance ? instance.path : "";
  const r = await fetch(`${ROOT}${prefix}/api/invocations/${encodeURIComponent(id)}/${action}`,
    { method: "POST", headers: headers(withToken), cache: "no-store" });
  return answer(r);
}

let known = null;
let lastGood = null;

/** The instances to ask: /api/instances, the app's live ones (`refresh`: ask again; when that
 * fails, the last list that did not). */
export async function instances(refresh = false) {
  if (known === null || refresh) {
    known = get("/api/instances").then((d) => { lastGood = d; return d; }, (e) => {
      known = null;
      if (lastGood) return lastGood;
      throw e;
    });
  }
  return known;
}

/** Whose answer counts for which partition, as the CLI merges (processor/_cluster/merge.py): the
 * instance the consumer group assigned the partition to; assigned to nobody (a rebalance), its one
 * claimant. So a zombie still serving a partition that moved never shows a stale row. Returns
 * {accepts(instanceId, partition), missing: [partitions nobody answered for], notes}. */
export function coverage(answers, listing) {
  const owners = listing.owners; // null: the group is unknown
  const claims = new Map();
  for (const a of answers) {
    if (a.error) continue;
    for (const x of a.data.partitions ?? []) {
      // a listing names the partitions it answered for; /api/partitions describes each (active ones count)
      const p = typeof x === "number" ? x : x.phase === "active" ? x.partition : null;
      if (p !== null) claims.set(p, [...(claims.get(p) ?? []), a.instance.instance_id]);
    }
  }
  const accepted = new Map(answers.map((a) => [a.instance.instance_id, new Set()]));
  const notes = [];
  for (const [p, who] of [...claims].sort((x, y) => x[0] - y[0])) {
    const owner = owners ? owners[String(p)] : undefined;
    if (owner !== undefined) {
      if (who.includes(owner)) accepted.get(owner).add(p);
      for (const other of who.filter((w) => w !== owner)) {
        notes.push(`partition ${p}: ${other} still serves it, but the group assigned it to ${owner}; its rows are not shown`);
      }
    } else if (who.length === 1) {
      accepted.get(who[0]).add(p);
    } else {
      notes.push(`partition ${p}: claimed by ${who.join(", ")} while the group assigns it to nobody (a rebalance); not shown`);
    }
  }
  const total = listing.partitions_total ?? 0;
  const missing = [];
  for (let p = 0; p < total; p += 1) if (![...accepted.values()].some((s) => s.has(p))) missing.push(p);
  return { accepts: (id, p) => accepted.get(id)?.has(p) ?? false, missing, notes };
}

/** GET `path` from every instance: [{instance, data}] or [{instance, error}], in the listed order,
 * and the coverage of their answers (whose rows count for which partition). */
export async function everywhere(path) {
  const listing = await instances();
  const all = listing.instances;
  const results = await Promise.allSettled(all.map((i) => get(path, i)));
  const answers = results.map((r, n) => (r.status === "fulfilled"
    ? { instance: all[n], data: r.value } : { instance: all[n], error: r.reason }));
  answers.coverage = coverage(answers, listing);
  return answers;
}

/** The first instance whose answer to `path` is not a 404 (the owner of a partition or key);
 * an answer from an instance the group no longer assigns that partition to only if no other. */
export async function owner(path, preferred) {
  const { instances: all, owners } = await instances();
  const order = [...all.filter((i) => i.instance_id === preferred), ...all.filter((i) => i.instance_id !== preferred)];
  let lastError = null;
  let moved = null;
  for (const i of order) {
    try {
      const found = { instance: i, data: await get(path, i) };
      const assigned = owners && found.data.partition !== undefined ? owners[String(found.data.partition)] : undefined;
      if (assigned === undefined || assigned === i.instance_id) return found;
      moved = moved ?? found;
    } catch (e) {
      if (!(e instanceof ApiError) || e.status !== 404) throw e;
      lastError = e;
    }
  }
  if (moved) return moved;
  throw lastError ?? new ApiError(404, "no instance answered");
}
