/* The commands pages: the push form (protocol fields, JSON checked before sending), the
 * recent commands list and a command's status timeline, both live from the devices'
 * `commands` channels, where every transition is published. */
(function () {
  "use strict";

  const fc = window.fleetcloud;
  const page = JSON.parse(document.getElementById("page-data").textContent);

  /* Call fn each time the live connection opens (it has just subscribed). */
  function onLiveOpen(fn) {
    const status = document.getElementById("live-status");
    let open = false;
    new MutationObserver(function () {
      const now = status.dataset.state === "open";
      if (now && !open) fn();
      open = now;
    }).observe(status, { attributes: true, attributeFilter: ["data-state"] });
  }

  const RANK = { QUEUED: 0, SENT: 1, DELIVERED: 2, SUCCEEDED: 3, FAILED: 3, EXPIRED: 3 };

  function badge(status) {
    const el = fc.make("span", "badge cmd-" + status.toLowerCase(), status);
    el.dataset.cmdStatus = "";
    return el;
  }

  // ------------------------------------------------------------ the push form

  function setError(el, message) {
    const box = document.getElementById(el.id + "-error");
    if (message) el.setAttribute("aria-invalid", "true");
    else el.removeAttribute("aria-invalid");
    if (!box) return;
    box.textContent = message || "";
    box.hidden = !message;
  }

  function objectProblem(el) {
    if (!el.value.trim()) return "";
    let value;
    try {
      value = JSON.parse(el.value);
    } catch (err) {
      return "this is not valid JSON: " + err.message;
    }
    return value && typeof value === "object" && !Array.isArray(value) ? "" : "this must be a JSON object, such as {\"level\": 80}";
  }

  function pushForm(form) {
    const protocol = form.querySelector("[data-protocol]");
    const device = form.querySelector("#device_id");
    const showProtocol = function () {
      form.querySelectorAll("[data-for-protocol]").forEach(function (set) {
        set.hidden = set.dataset.forProtocol !== protocol.value;
        set.disabled = set.hidden;
      });
    };
    const showTopic = function () {
      const topic = "fleetcloud/" + device.value + "/commands";
      form.querySelector("#topic").placeholder = topic;
      form.querySelector("[data-topic-default]").textContent = topic;
    };
    protocol.addEventListener("change", showProtocol);
    device.addEventListener("change", showTopic);
    showProtocol();
    form.addEventListener("submit", function (event) {
      let first = null;
      form.querySelectorAll("[data-json-object]").forEach(function (el) {
        const problem = objectProblem(el);
        setError(el, problem);
        if (problem && !first) first = el;
      });
      if (first) {
        event.preventDefault();
        if (first.closest("details")) first.closest("details").open = true;
        first.focus();
      }
    });
  }

  // ------------------------------------------------------------ the list

  function listPage(tbody) {
    const empty = document.querySelector("[data-commands-empty]");
    page.devices.forEach(function (agent) {
      fc.live.watch(agent, "commands", function (kind, d) {
        if (kind !== "message" || !d.data || typeof d.data.request_id !== "string") return;
        onTransition(agent, d.data);
      });
    });

    /* Whatever happened before the live connection opened (or while it was down):
     * read the list again from the server. */
    let held = null; // transitions that arrive while the list is being read again
    onLiveOpen(function () {
      if (held) return;
      held = [];
      fetch(location.href, { headers: { Accept: "text/html" } })
        .then(function (response) {
          if (!response.ok) throw new Error(String(response.status));
          return response.text();
        })
        .then(function (html) {
          const fresh = new DOMParser().parseFromString(html, "text/html").querySelector("[data-commands]");
          if (!fresh) return;
          tbody.replaceChildren.apply(tbody, Array.from(fresh.children));
          empty.hidden = tbody.children.length > 0;
        })
        .catch(function () { fc.toast("Could not refresh the commands.", true); })
        .finally(function () {
          const replay = held;
          held = null;
          replay.forEach(function (args) { onTransition(args[0], args[1]); });
        });
    });

    function onTransition(agent, t) {
      if (held) {
        held.push([agent, t]);
        return;
      }
      let row = Array.from(tbody.querySelectorAll("tr[data-request]")).find(function (tr) {
        return tr.dataset.request === t.request_id;
      });
      if (!row) {
        if (page.status && page.status !== t.status) return;
        row = newRow(agent, t);
        tbody.prepend(row);
        empty.hidden = true;
      }
      const shown = row.querySelector("[data-cmd-status]").textContent;
      if (RANK[shown] > RANK[t.status]) return; // statuses only move forward: this is old news
      if (page.status && page.status !== t.status) {
        row.remove();
        empty.hidden = tbody.children.length > 0;
        return;
      }
      row.querySelector("[data-cmd-status]").replaceWith(badge(t.status));
      row.querySelector("[data-cmd-reason]").textContent = t.reason || "";
      fc.setTime(row.querySelector("time[data-cmd-updated]"), t.at_ms);
      row.classList.remove("fresh");
      void row.offsetWidth; // restart the highlight
      row.classList.add("fresh");
    }

    function newRow(agent, t) {
      const row = document.createElement("tr");
      row.dataset.request = t.request_id;
      const cell = function (label, content) {
        const td = fc.make("td");
        td.dataset.label = label;
        const div = fc.make("div");
        div.append.apply(div, content);
        td.append(div);
        row.append(td);
      };
      const link = fc.make("a", "", t.command_type);
      link.href = "/commands/" + encodeURIComponent(t.request_id);
      cell("Command", [link, " ", fc.make("span", "tag", t.protocol)]);
      cell("Device", [page.names[agent] || agent]);
      const reason = fc.make("small", "muted", "");
      reason.dataset.cmdReason = "";
      cell("Status", [badge(t.status), " ", reason]);
      const time = fc.make("time");
      time.dataset.cmdUpdated = "";
      cell("Updated", [time]);
      return row;
    }
  }

  // ------------------------------------------------------------ one command

  function detailPage(list) {
    let loading = false;
    let again = false;

    function render(command) {
      const items = command.history.map(function (h) {
        const li = fc.make("li");
        li.dataset.status = h.status;
        const time = fc.make("time", "", fc.utc(h.at_ms));
        time.dateTime = new Date(h.at_ms).toISOString();
        li.append(badge(h.status), " ", time);
        if (h.reason) li.append(" ", fc.make("span", "reason", h.reason));
        return li;
      });
      const before = list.children.length;
      list.replaceChildren.apply(list, items);
      for (let i = before; i < items.length; i += 1) items[i].classList.add("fresh");
      document.querySelector("[data-current]").replaceChildren(badge(command.status));
      document.querySelector("[data-attempts]").textContent = String(command.attempts);
      if (["SUCCEEDED", "FAILED", "EXPIRED"].indexOf(command.status) >= 0) {
        document.querySelector("[data-timeline-note]").textContent = "Final: this command will not change again.";
      }
    }

    function reload() {
      if (loading) {
        again = true; // a transition arrived while reading: read once more after
        return;
      }
      loading = true;
      fetch("/commands/" + encodeURIComponent(page.request_id), { headers: { Accept: "application/json" } })
        .then(function (response) {
          if (!response.ok) throw new Error(String(response.status));
          return response.json();
        })
        .then(render)
        .catch(function () { fc.toast("Could not refresh the command's status.", true); })
        .finally(function () {
          loading = false;
          if (again) {
            again = false;
            reload();
          }
        });
    }

    fc.live.watch(page.device, page.channel, function (kind, d) {
      if (kind === "message" && d.data && d.data.request_id === page.request_id) reload();
    });
    // Whatever happened between this page's render and the live connection: read it.
    onLiveOpen(reload);
  }

  const form = document.querySelector("[data-push-form]");
  if (form) pushForm(form);
  const tbody = document.querySelector("[data-commands]");
  if (tbody) listPage(tbody);
  const timeline = document.querySelector("[data-timeline]");
  if (timeline) detailPage(timeline);
})();
