/* An installation's page: the config form checked in the browser before it is sent
 * (the server checks it again against the app's JSON Schema), the manual-invoke button,
 * and the invocation log kept fresh over the live connection. */
(function () {
  "use strict";

  const fc = window.fleetcloud;
  const page = JSON.parse(document.getElementById("page-data").textContent);
  const rows = document.querySelector("[data-invocations]");
  const empty = document.querySelector("[data-log-empty]");

  // ------------------------------------------------------------ field errors

  function errorBox(el) {
    const field = el.closest("[data-field]") || el.closest("form");
    return field ? field.querySelector("[data-field-error]") : null;
  }

  function setError(el, message) {
    const box = errorBox(el);
    if (message) el.setAttribute("aria-invalid", "true");
    else el.removeAttribute("aria-invalid");
    if (!box) return;
    box.textContent = message || "";
    box.hidden = !message;
  }

  /* The same reading as console/configform.py: a list is one value per line. */
  function listProblem(el) {
    const kind = el.dataset.itemKind;
    const lines = el.value.split("\n").map(function (l) { return l.trim(); });
    for (let i = 0; i < lines.length; i += 1) {
      const line = lines[i];
      if (!line) continue;
      const number = Number(line);
      if (kind === "integer" && !Number.isInteger(number)) return "line " + (i + 1) + ": " + line + " is not a whole number";
      if (kind === "number" && !isFinite(number)) return "line " + (i + 1) + ": " + line + " is not a number";
    }
    return "";
  }

  function jsonProblem(el) {
    if (!el.value.trim()) return "";
    try {
      JSON.parse(el.value);
      return "";
    } catch (err) {
      return "this is not valid JSON: " + err.message;
    }
  }

  function problemOf(el) {
    if (!el.checkValidity()) return el.validationMessage;
    if (el.dataset.itemKind) return listProblem(el);
    if (el.hasAttribute("data-json")) return jsonProblem(el);
    return "";
  }

  function checkForm(form) {
    let first = null;
    form.querySelectorAll("input:not([type=hidden]), select, textarea").forEach(function (el) {
      const message = problemOf(el);
      setError(el, message);
      if (message && !first) first = el;
    });
    const summary = document.querySelector("[data-form-problems]");
    if (summary && first) {
      summary.hidden = false;
      summary.querySelector("p").textContent = "The config was not saved. Fix the fields marked below.";
      const list = summary.querySelector("ul");
      if (list) list.remove();
    }
    if (first) first.focus();
    return first === null;
  }

  const configForm = document.querySelector("[data-config-form]");
  if (configForm) {
    configForm.addEventListener("submit", function (event) {
      if (!checkForm(configForm)) event.preventDefault();
    });
    configForm.addEventListener("change", function (event) {
      const el = event.target;
      if (el.getAttribute("aria-invalid") === "true") setError(el, problemOf(el));
    });
  }

  // ------------------------------------------------------------ the invocation log

  let refreshing = false;
  let again = false;

  function refresh() {
    if (page.paged) return; // an older page of the log stays as it is
    if (refreshing) {
      again = true;
      return;
    }
    refreshing = true;
    fetch("/apps/installations/" + page.installation + "/invocations", { headers: { Accept: "text/html" } })
      .then(function (response) {
        if (!response.ok) throw new Error(String(response.status));
        return response.text();
      })
      .then(function (html) {
        const known = new Set(Array.from(rows.querySelectorAll("tr[data-invocation]")).map(function (tr) {
          return tr.dataset.invocation;
        }));
        rows.innerHTML = html;
        rows.querySelectorAll("tr[data-invocation]").forEach(function (tr) {
          if (!known.has(tr.dataset.invocation)) tr.classList.add("fresh");
        });
        empty.hidden = rows.children.length > 0;
      })
      .catch(function () { fc.toast("Could not refresh the invocation log.", true); })
      .finally(function () {
        refreshing = false;
        if (again) {
          again = false;
          refresh();
        }
      });
  }

  fc.live.watch(page.agent, page.channel, function (kind) {
    if (kind === "message") refresh();
  });
  // Each time the live connection opens (it has just subscribed), read the log again:
  // invocations that ended before that are not missed.
  const liveStatus = document.getElementById("live-status");
  let open = false;
  new MutationObserver(function () {
    const now = liveStatus.dataset.state === "open";
    if (now && !open) refresh();
    open = now;
  }).observe(liveStatus, { attributes: true, attributeFilter: ["data-state"] });

  // ------------------------------------------------------------ invoking

  const invokeForm = document.querySelector("[data-invoke-form]");
  invokeForm.addEventListener("submit", async function (event) {
    event.preventDefault();
    const field = invokeForm.querySelector("textarea");
    const problem = jsonProblem(field);
    setError(field, problem);
    if (problem) {
      field.focus();
      return;
    }
    const button = invokeForm.querySelector("button");
    button.disabled = true;
    let response;
    try {
      response = await fetch(invokeForm.action, {
        method: "POST",
        headers: { "Content-Type": "application/json", Accept: "application/json" },
        body: JSON.stringify({ payload: field.value.trim() ? JSON.parse(field.value) : null }),
      });
    } catch (err) {
      fc.toast("Could not reach the server: nothing was invoked.", true);
      return;
    } finally {
      button.disabled = false;
    }
    const body = await response.json().catch(function () { return {}; });
    if (!response.ok) {
      fc.toast(body.message || "Not invoked (" + response.status + ")", true);
      return;
    }
    fc.toast("Invoked: on_manual_invoke is queued");
  });
})();
