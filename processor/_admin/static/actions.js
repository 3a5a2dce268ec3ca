// Actions on an invocation (cancel, kill, retry, purge) behind a confirmation dialog. The token
// comes from sessionStorage, or is typed in the dialog (and then kept for this tab).

import { ApiError, act, token } from "./api.js";

const ACTIONS = {
  cancel: {
    title: "Cancel invocation?",
    text: "The handler gets InvocationCancelled at its pending durable await and its compensation runs; "
      + "a queued, backing-off or paused invocation fails at once.",
  },
  kill: {
    title: "Kill invocation?",
    text: "It fails at once with Killed. No compensation runs. What its attempts journaled (state "
      + "writes, emits, sends) stays; an exclusive invocation frees its key for the next one.",
  },
  retry: {
    title: "Retry invocation now?",
    text: "A backing-off invocation runs now instead of waiting for its retry timer; a paused one is "
      + "replayed from its journal (once its retries ran out, a retry that raises again pauses it again).",
  },
  purge: {
    title: "Purge invocation?",
    text: "Its row and journal are deleted now instead of at the end of their retention.",
  },
};

/** Which actions apply to an invocation with `status` (the API answers 409 to the others). */
export function applicable(status) {
  const finished = status === "completed" || status === "failed";
  return Object.keys(ACTIONS).filter((a) => (a === "purge" ? finished
    : a === "retry" ? status === "backing_off" || status === "paused" : !finished));
}

const $ = (id) => document.getElementById(id);

/** Ask, then send `action` for invocation `id` on `instance`. Resolves to the 202 answer, or to
 * null when the operator backed out. */
export function confirmAction(action, id, instance) {
  const dialog = $("confirm");
  const form = $("confirm-form");
  const tokenInput = $("confirm-token");
  const spec = ACTIONS[action];
  $("confirm-title").textContent = spec.title;
  $("confirm-text").textContent = spec.text;
  $("confirm-id").textContent = id;
  $("confirm-error").textContent = "";
  $("confirm-yes").textContent = action[0].toUpperCase() + action.slice(1);
  tokenInput.value = "";
  $("confirm-token-row").hidden = Boolean(token.get());
  return new Promise((resolve) => {
    let busy = false;
    const done = (value) => {
      form.removeEventListener("submit", onSubmit);
      $("confirm-no").removeEventListener("click", onBack);
      dialog.removeEventListener("cancel", onBack);
      if (dialog.open) dialog.close();
      resolve(value);
    };
    const onBack = (e) => {
      e.preventDefault();
      if (!busy) done(null);
    };
    const onSubmit = async (e) => {
      e.preventDefault();
      if (busy) return;
      const typed = tokenInput.value.trim();
      const use = typed || token.get();
      if (!use) {
        $("confirm-token-row").hidden = false;
        $("confirm-error").textContent = "Actions need the admin token.";
        return;
      }
      busy = true;
      $("confirm-error").textContent = "";
      try {
        const answer = await act(instance, id, action, use);
        if (typed) token.set(typed);
        document.dispatchEvent(new CustomEvent("token-changed"));
        done(answer);
      } catch (err) {
        if (err instanceof ApiError && err.status === 401) {
          if (!typed) token.forget();
          $("confirm-token-row").hidden = false;
          $("confirm-error").textContent = "The token was refused (401): nothing was sent.";
          document.dispatchEvent(new CustomEvent("token-changed"));
        } else {
          $("confirm-error").textContent = err.message;
        }
      } finally {
        busy = false;
      }
    };
    form.addEventListener("submit", onSubmit);
    $("confirm-no").addEventListener("click", onBack);
    dialog.addEventListener("cancel", onBack);
    dialog.showModal();
    (token.get() ? $("confirm-no") : tokenInput).focus();
  });
}
