/* The jobs pages. The new-job form: only the chosen template's parameters and the chosen
 * kind of target are shown (and sent). A job's page: its counts and executions are read
 * again from /jobs/{id}/progress every poll_ms until nothing more can change. */
(function () {
  "use strict";

  const fc = window.fleetcloud;
  const WAITING = "waiting for the device's agent to ask for it"; // as jobs_detail.html

  // ------------------------------------------------------------ the form

  function showOnly(nodes, key, wanted) {
    nodes.forEach(function (node) {
      const on = node.dataset[key] === wanted;
      node.classList.toggle("other", !on);
      node.querySelectorAll("input, select, textarea").forEach(function (el) {
        el.disabled = !on;
      });
    });
  }

  function jobForm(form) {
    const select = form.querySelector("[data-template-select]");
    const params = form.querySelectorAll("[data-template]");
    const name = form.querySelector("#job_name");
    function chosenName() {
      return select.selectedOptions[0].dataset.name;
    }
    let shownName = chosenName();
    let autoName = name.value.startsWith(shownName + " ");
    function template() {
      showOnly(params, "template", select.value);
      if (autoName) name.value = chosenName() + name.value.slice(shownName.length);
      shownName = chosenName();
    }
    name.addEventListener("input", function () { autoName = false; });
    select.addEventListener("change", template);
    showOnly(params, "template", select.value);

    const picks = form.querySelectorAll("[data-pick]");
    const radios = form.querySelectorAll("[data-target-type]");
    function target() {
      const checked = form.querySelector("[data-target-type]:checked");
      showOnly(picks, "pick", checked ? checked.value : "device");
    }
    radios.forEach(function (radio) { radio.addEventListener("change", target); });
    target();
  }

  // ------------------------------------------------------------ a job's progress

  function badge(el, status) {
    el.className = "badge job-" + status.toLowerCase();
    el.textContent = status.replace("_", " ").toLowerCase().replace(/^\w|\s\w/g, function (c) { return c.toUpperCase(); });
  }

  function showCounts(counts) {
    document.querySelectorAll("[data-count]").forEach(function (li) {
      const n = counts[li.dataset.count] || 0;
      li.querySelector(".n").textContent = String(n);
      li.classList.toggle("zero", n === 0);
    });
  }

  function cell(label, child) {
    const td = fc.make("td");
    td.dataset.label = label;
    const div = fc.make("div");
    if (child) div.append(child);
    td.append(div);
    return td;
  }

  function newRow(e) {
    const tr = fc.make("tr");
    tr.dataset.execution = e.execution_id;
    const link = fc.make("a", "", e.device_name);
    link.href = "/devices/" + e.device_uuid;
    const device = cell("Device", link);
    if (e.execution_number > 1) device.firstChild.append(" ", fc.make("small", "muted", "attempt " + e.execution_number));
    const status = cell("Status");
    const statusBadge = fc.make("span", "badge");
    statusBadge.dataset.status = "";
    const reason = fc.make("small", "reason");
    reason.dataset.reason = "";
    status.firstChild.append(statusBadge, reason);
    const exit = cell("Exit code");
    exit.className = "num";
    exit.firstChild.dataset.exitCode = "";
    const started = cell("Started");
    started.firstChild.dataset.started = "";
    const output = cell("Output");
    output.className = "wrap";
    ["stdout", "stderr"].forEach(function (stream) {
      const details = fc.make("details", "output");
      details.dataset.stream = stream;
      details.hidden = true;
      details.append(fc.make("summary", "", stream), fc.make("pre", "json"));
      output.firstChild.append(details);
    });
    const none = fc.make("span", "muted", "—");
    none.dataset.noOutput = "";
    output.firstChild.append(none);
    tr.append(device, status, exit, started, output);
    return tr;
  }

  function showExecution(tr, e) {
    badge(tr.querySelector("[data-status]"), e.status);
    tr.querySelector("[data-reason]").textContent = e.reason || (e.status === "QUEUED" ? WAITING : "");
    tr.querySelector("[data-exit-code]").textContent = e.exit_code === null ? "—" : String(e.exit_code);
    const started = tr.querySelector("[data-started]");
    if (e.started_at && !started.querySelector("time")) {
      const time = fc.make("time", "", fc.utc(e.started_at));
      time.dateTime = new Date(e.started_at).toISOString();
      started.replaceChildren(time);
    }
    let any = false;
    tr.querySelectorAll("details[data-stream]").forEach(function (details) {
      const text = e[details.dataset.stream] || "";
      const pre = details.querySelector("pre");
      if (pre.textContent !== text) pre.textContent = text;
      details.hidden = !text;
      any = any || !!text;
    });
    tr.querySelector("[data-no-output]").hidden = any;
  }

  function showProgress(body) {
    badge(document.querySelector("[data-job-status]"), body.job.status);
    const reason = document.querySelector("[data-job-reason]");
    reason.textContent = body.job.reason || "";
    reason.hidden = !body.job.reason;
    showCounts(body.job.counts);
    const rows = document.querySelector("[data-executions]");
    const known = new Map();
    rows.querySelectorAll("tr[data-execution]").forEach(function (tr) { known.set(tr.dataset.execution, tr); });
    body.executions.slice().reverse().forEach(function (e) {
      let tr = known.get(e.execution_id);
      if (!tr) {
        tr = newRow(e);
        rows.prepend(tr);
      }
      showExecution(tr, e);
    });
    document.querySelector("[data-cancel]").hidden = body.job.status !== "IN_PROGRESS";
    if (body.finished) document.querySelector("[data-live-note]").textContent = "(finished)";
  }

  function jobPage(data) {
    let failures = 0;
    function poll() {
      fetch("/jobs/" + data.job_id + "/progress", { headers: { Accept: "application/json" }, credentials: "same-origin" })
        .then(function (response) {
          if (response.status === 401) {
            fc.toast("Signed out: sign in again to follow this job.", true);
            return null;
          }
          if (!response.ok) throw new Error("HTTP " + response.status);
          return response.json();
        })
        .then(function (body) {
          if (body === null) return;
          failures = 0;
          showProgress(body);
          if (!body.finished) setTimeout(poll, data.poll_ms);
        })
        .catch(function (err) {
          failures += 1;
          if (failures === 3) fc.toast("Progress could not be read (" + err.message + "); still trying.", true);
          setTimeout(poll, Math.min(30000, data.poll_ms * Math.pow(2, failures)));
        });
    }
    setTimeout(poll, data.poll_ms);
  }

  // ------------------------------------------------------------ the list

  const MINI = ["QUEUED", "IN_PROGRESS", "SUCCEEDED", "FAILED", "TIMED_OUT", "REJECTED", "REMOVED", "CANCELED"];

  function showRow(tr, job) {
    badge(tr.querySelector("[data-job-status]"), job.status);
    const cell = tr.querySelector("[data-job-counts]");
    const parts = [];
    MINI.forEach(function (s) {
      if (!job.counts[s]) return;
      const kv = fc.make("span", "kv job-" + s.toLowerCase());
      kv.append(fc.make("span", "k", s.replace("_", " ").toLowerCase()), " ", fc.make("span", "v", String(job.counts[s])));
      parts.push(kv, " ");
    });
    if (job.counts.pending_rollout) {
      const kv = fc.make("span", "kv");
      kv.append(fc.make("span", "k", "waiting"), " ", fc.make("span", "v", String(job.counts.pending_rollout)));
      parts.push(kv, " ");
    }
    parts.push(fc.make("span", "muted", "of " + job.counts.total));
    cell.replaceChildren.apply(cell, parts);
  }

  function jobList(table) {
    function busy() {
      return table.querySelector("[data-job-status].job-in_progress") !== null;
    }
    function poll() {
      fetch("/jobs", { headers: { Accept: "application/json" }, credentials: "same-origin" })
        .then(function (response) { return response.ok ? response.json() : null; })
        .then(function (body) {
          if (body === null) return;
          body.jobs.forEach(function (job) {
            const tr = table.querySelector("tr[data-job='" + job.job_id + "']");
            if (tr) showRow(tr, job);
          });
          if (busy()) setTimeout(poll, LIST_POLL_MS);
        })
        .catch(function () { setTimeout(poll, LIST_POLL_MS * 4); });
    }
    if (busy()) setTimeout(poll, LIST_POLL_MS);
  }

  const LIST_POLL_MS = 3000;
  const list = document.querySelector("table.jobs");
  if (list) jobList(list);
  const form = document.querySelector("[data-job-form]");
  if (form) jobForm(form);
  const pageData = document.getElementById("page-data");
  if (pageData && document.querySelector("[data-executions]")) jobPage(JSON.parse(pageData.textContent));
})();
