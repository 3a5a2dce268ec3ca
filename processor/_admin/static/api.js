// The JSON API (docs/operate.md) as the page uses it: the bearer token from sessionStorage on
// every call (never in a URL), and one call per instance that /api/instances lists.

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

/** The instances to ask: /api/instances (this one alone until a registry lists the group's). */
export async function instances(refresh = false) {
  if (known === null || refresh) {
    known = get("/api/instances").then((d) => d, (e) => { known = null; throw e; });
  }
  return known;
}

/** GET `path` from every instance: [{instance, data}] or [{instance, error}], in the listed order. */
export async function everywhere(path) {
  const { instances: all } = await instances();
  const results = await Promise.allSettled(all.map((i) => get(path, i)));
  return results.map((r, n) => (r.status === "fulfilled"
    ? { instance: all[n], data: r.value } : { instance: all[n], error: r.reason }));
}

/** The first instance whose answer to `path` is not a 404 (the owner of a partition or key). */
export async function owner(path, preferred) {
  const { instances: all } = await instances();
  const order = [...all.filter((i) => i.instance_id === preferred), ...all.filter((i) => i.instance_id !== preferred)];
  let lastError = null;
  for (const i of order) {
    try {
      return { instance: i, data: await get(path, i) };
    } catch (e) {
      if (!(e instanceof ApiError) || e.status !== 404) throw e;
      lastError = e;
    }
  }
  throw lastError ?? new ApiError(404, "no instance answered");
}
