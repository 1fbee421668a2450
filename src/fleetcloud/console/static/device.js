/* A device's page: live channels, the device UI (values patched in place, the layout
 * re-fetched when its shape changes), sending user input to ui_cmds, alerts, tags,
 * history and charts (uPlot, vendored). */
(function () {
  "use strict";

  const fc = window.fleetcloud;
  const page = JSON.parse(document.getElementById("page-data").textContent);
  const device = page.device;
  const deviceName = document.querySelector("h1").textContent;
  const uiRoot = document.getElementById("device-ui");
  const MAX_POINTS = 300;
  const HISTORY_ROWS = 20;
  const ALERT_ROWS = 10;
  let uiState = page.ui_state || {};
  let uiCmds = page.ui_cmds || {};
  let uiShape = shape(uiState);
  let refreshPending = false;

  function isNumber(v) {
    return typeof v === "number" && isFinite(v);
  }

  function pick(data, path) {
    let node = data;
    for (const part of path.split(".")) {
      if (!node || typeof node !== "object") return null;
      node = node[part];
    }
    return node === undefined ? null : node;
  }

  // ------------------------------------------------------------ the device UI

  /* The same rules as console/layout.py's display(). */
  function display(spec, value) {
    if (value === null || value === undefined) return "—";
    if (typeof value === "boolean") return value ? "Yes" : "No";
    const units = typeof spec.units === "string" && spec.units ? " " + spec.units : "";
    if (spec.varType === "time" && isNumber(value)) return fc.utc(value);
    if (isNumber(value)) {
      const p = spec.decPrecision;
      return (Number.isInteger(p) && p >= 0 ? value.toFixed(p) : String(value)) + units;
    }
    if (typeof value === "string") return value + units;
    return JSON.stringify(value);
  }

  function tone(spec, value) {
    if (!isNumber(value) || !Array.isArray(spec.ranges)) return null;
    for (const band of spec.ranges) {
      if (!band || typeof band !== "object") continue;
      const low = isNumber(band.min) ? band.min : -Infinity;
      const high = isNumber(band.max) ? band.max : Infinity;
      if (value >= low && value <= high) return typeof band.colour === "string" ? band.colour : null;
    }
    return null;
  }

  /* The layout without the values, to tell a new value from a new shape. */
  function shape(state) {
    return JSON.stringify(state, function (key, value) {
      return key === "currentValue" || key === "statusString" ? undefined : value;
    });
  }

  function findSpec(appKey, name) {
    const apps = (uiState.state && uiState.state.children) || {};
    const search = function (node) {
      const children = (node && node.children) || {};
      if (children[name]) return children[name];
      for (const key of Object.keys(children)) {
        const found = search(children[key]);
        if (found) return found;
      }
      return null;
    };
    return search(apps[appKey]);
  }

  function nodeOf(el) {
    const parts = el.dataset.uiNode.split("/");
    return findSpec(parts[0], parts[1]);
  }

  function patchValues() {
    uiRoot.querySelectorAll("[data-ui-var]").forEach(function (el) {
      const spec = nodeOf(el);
      if (!spec) return;
      const value = el.querySelector("[data-ui-value]");
      value.textContent = display(spec, spec.currentValue);
      const colour = tone(spec, spec.currentValue);
      value.className = "value" + (colour ? " tone-" + colour : "");
    });
    uiRoot.querySelectorAll("details[data-ui-node]").forEach(function (el) {
      const spec = nodeOf(el);
      const status = el.querySelector("[data-ui-status]");
      if (spec && status) status.textContent = spec.statusString || "";
    });
  }

  function patchInputs() {
    uiRoot.querySelectorAll("form[data-cmd-key]").forEach(function (form) {
      const spec = nodeOf(form);
      if (!spec) return;
      let value = uiCmds[form.dataset.cmdKey];
      if (value === null || value === undefined) value = spec.default;
      const current = form.querySelector("[data-ui-current]");
      if (current) current.textContent = display(spec, value);
      const input = form.querySelector("[name=value]:not([type=hidden])");
      if (!input || input === document.activeElement) return;
      if (input.type === "checkbox") input.checked = value === true;
      else if (value !== undefined && value !== null) input.value = String(value);
    });
  }

  function refreshUi() {
    const focused = document.activeElement;
    if (focused && uiRoot.contains(focused) && focused.matches("input, textarea, select")) {
      refreshPending = true; // do not pull a field from under the user's fingers
      return;
    }
    refreshPending = false;
    fetch("/devices/" + device + "/ui", { headers: { Accept: "text/html" } })
      .then(function (response) {
        if (response.redirected) location.reload(); // signed out meanwhile
        return response.ok && !response.redirected ? response.text() : null;
      })
      .then(function (html) {
        if (html === null) return;
        uiRoot.innerHTML = html;
        bindUi();
        patchInputs();
      })
      .catch(function () { /* the next update retries */ });
  }

  function onUiState(agg) {
    uiState = agg.data || {};
    const next = shape(uiState);
    if (next !== uiShape) {
      uiShape = next;
      refreshUi();
    } else {
      patchValues();
    }
  }

  // ------------------------------------------------------------ sending user input

  function confirmWith(text) {
    const dialog = document.getElementById("confirm");
    if (!dialog || typeof dialog.showModal !== "function") return Promise.resolve(window.confirm(text));
    dialog.querySelector("[data-confirm-text]").textContent = text;
    dialog.returnValue = "";
    return new Promise(function (resolve) {
      dialog.addEventListener("close", function () {
        resolve(dialog.returnValue === "confirm");
      }, { once: true });
      dialog.showModal();
    });
  }

  function inputValue(form) {
    const kind = form.dataset.kind;
    if (kind === "action") return true;
    const input = form.querySelector("[name=value]:not([type=hidden])");
    if (kind === "bool") return input.checked;
    return input.value;
  }

  async function send(form) {
    const kind = form.dataset.kind;
    const label = form.dataset.label;
    if (!form.checkValidity()) {
      form.reportValidity();
      return;
    }
    const value = inputValue(form);
    let confirmed = false;
    if (form.hasAttribute("data-confirm")) {
      const what = kind === "action" ? "“" + label + "”" : label + " = " + value;
      confirmed = await confirmWith("Send " + what + " to " + deviceName + "?");
      if (!confirmed) {
        patchInputs(); // put a toggled checkbox back
        return;
      }
    }
    let response;
    try {
      response = await fetch("/devices/" + device + "/ui_cmds", {
        method: "POST",
        headers: { "Content-Type": "application/json", Accept: "application/json" },
        body: JSON.stringify({ key: form.dataset.cmdKey, value: value, confirmed: confirmed }),
      });
    } catch (error) {
      fc.toast("Could not reach the server: " + label + " was not sent.", true);
      return;
    }
    const body = await response.json().catch(function () { return {}; });
    if (!response.ok) {
      fc.toast(body.message || "Not sent (" + response.status + ")", true);
      patchInputs();
      return;
    }
    uiCmds[body.key] = body.value;
    patchInputs();
    form.classList.add("sent");
    setTimeout(function () { form.classList.remove("sent"); }, 2500);
    fc.toast(kind === "action" ? "Sent: " + body.label : body.label + " set to " + body.text);
  }

  function bindUi() {
    uiRoot.querySelectorAll("form[data-ui-command]").forEach(function (form) {
      form.addEventListener("submit", function (event) {
        event.preventDefault();
        send(form);
      });
      const input = form.querySelector("[name=value]:not([type=hidden])");
      if (!input) return;
      if (form.dataset.kind === "bool") {
        input.addEventListener("change", function () { send(form); });
      } else if (input.type === "range") {
        input.addEventListener("change", function () { send(form); });
      }
      input.addEventListener("blur", function () {
        if (refreshPending) setTimeout(refreshUi, 0);
      });
    });
  }

  // ------------------------------------------------------------ alerts, tags, channels

  function onAlert(message) {
    const list = document.querySelector("[data-alerts]");
    if (!list) return;
    const data = message.data;
    const item = fc.make("li", "fresh");
    const when = fc.make("time");
    fc.setTime(when, message.timestamp);
    item.append(when);
    const obj = data && typeof data === "object" && !Array.isArray(data) ? data : null;
    const level = obj && (obj.level || obj.severity);
    if (typeof level === "string") item.append(fc.make("span", "tag", level), " ");
    const text = obj && typeof obj.message === "string" ? obj.message : fc.scalar(data);
    item.append(fc.make("span", "text", text));
    if (obj && typeof obj.app_key === "string") item.append(" ", fc.make("span", "muted", "· " + obj.app_key));
    list.prepend(item);
    while (list.children.length > ALERT_ROWS) list.lastElementChild.remove();
    document.querySelector("[data-alerts-empty]").hidden = true;
  }

  function onTags(data) {
    const table = document.querySelector("[data-tags]");
    const rows = [];
    Object.keys(data || {}).forEach(function (app) {
      const tags = data[app];
      if (!tags || typeof tags !== "object" || Array.isArray(tags)) return;
      Object.keys(tags).forEach(function (tag) {
        if (tag.charAt(0) === "_") return;
        const row = fc.make("tr");
        row.append(fc.make("td", "", app), fc.make("td", "", tag), fc.make("td", "mono", fc.scalar(tags[tag])));
        rows.push(row);
      });
    });
    table.querySelector("tbody").replaceChildren.apply(table.querySelector("tbody"), rows);
    table.hidden = rows.length === 0;
    document.querySelector("[data-tags-empty]").hidden = rows.length !== 0;
  }

  /* A channel that appeared after the page was made. */
  function newChannel(name) {
    const section = document.getElementById("channels");
    const block = fc.make("details", "channel");
    block.dataset.channel = name;
    const summary = fc.make("summary");
    const updated = fc.make("time");
    updated.dataset.updated = "";
    const note = fc.make("span", "muted", "updated ");
    note.append(updated);
    summary.append(fc.make("code", "", name), " ", note);
    const pre = fc.make("pre", "json");
    pre.dataset.aggregate = "";
    block.append(summary, pre);
    section.querySelectorAll(".empty").forEach(function (el) { el.remove(); });
    section.append(block);
    return block;
  }

  function onAggregate(name, aggregate) {
    const block =
      document.querySelector('details[data-channel="' + CSS.escape(name) + '"]') || newChannel(name);
    const data = aggregate.data === null || aggregate.data === undefined ? {} : aggregate.data;
    block.querySelector("[data-aggregate]").textContent = JSON.stringify(data, null, 2);
    fc.setTime(block.querySelector("time[data-updated]"), aggregate.last_updated);
  }

  // ------------------------------------------------------------ history and charts

  const charts = [];

  function chartOptions(field, width) {
    return {
      width: width,
      height: 150,
      legend: { show: false },
      scales: { x: { time: true } },
      series: [
        {},
        { label: field, stroke: "#1f5fbf", width: 1.5, fill: "rgba(31,95,191,0.08)", spanGaps: true },
      ],
      axes: [
        { stroke: "#5d6778", grid: { stroke: "#eef1f4" }, ticks: { stroke: "#dde2e8" } },
        { stroke: "#5d6778", grid: { stroke: "#eef1f4" }, ticks: { stroke: "#dde2e8" }, size: 50 },
      ],
    };
  }

  function caption(chart) {
    const ys = chart.ys;
    const last = ys.length ? ys[ys.length - 1] : null;
    chart.caption.textContent = chart.field + (isNumber(last) ? " · " + fc.scalar(last) : "");
  }

  function setupCharts() {
    const figures = document.querySelectorAll("[data-charts] figure");
    if (!figures.length || typeof window.uPlot !== "function") return;
    const params = new URLSearchParams({ channel: page.history });
    page.fields.forEach(function (field) { params.append("field", field); });
    fetch("/devices/" + device + "/series?" + params, { headers: { Accept: "application/json" } })
      .then(function (response) { return response.ok ? response.json() : null; })
      .then(function (series) {
        if (!series) return;
        const xs = series.timestamps.map(function (t) { return t / 1000; });
        figures.forEach(function (figure) {
          const field = figure.dataset.field;
          const box = figure.querySelector(".plot");
          const chart = {
            field: field,
            box: box,
            caption: figure.querySelector("figcaption"),
            xs: xs.slice(),
            ys: (series.values[field] || []).slice(),
          };
          chart.plot = new window.uPlot(chartOptions(field, box.clientWidth || 300), [chart.xs, chart.ys], box);
          caption(chart);
          charts.push(chart);
        });
      })
      .catch(function () { fc.toast("Could not load the chart data.", true); });
  }

  function onHistoryMessage(message) {
    if (!page.paged) {
      const body = document.querySelector("[data-history]");
      if (body) {
        const row = fc.make("tr", "fresh");
        const when = fc.make("td");
        when.dataset.label = "Time";
        const time = fc.make("time", "", fc.utc(message.timestamp));
        time.dateTime = new Date(message.timestamp).toISOString();
        when.append(fc.make("div"));
        when.firstChild.append(time);
        const data = fc.make("td", "mono wrap");
        data.append(fc.make("div", "", JSON.stringify(message.data)));
        data.dataset.label = "Data";
        row.append(when, data);
        body.prepend(row);
        while (body.children.length > HISTORY_ROWS) body.lastElementChild.remove();
      }
    }
    charts.forEach(function (chart) {
      const y = pick(message.data, chart.field);
      chart.xs.push(message.timestamp / 1000);
      chart.ys.push(isNumber(y) ? y : null);
      if (chart.xs.length > MAX_POINTS) {
        chart.xs.shift();
        chart.ys.shift();
      }
      chart.plot.setData([chart.xs, chart.ys]);
      caption(chart);
    });
  }

  let resizeTimer = null;
  window.addEventListener("resize", function () {
    clearTimeout(resizeTimer);
    resizeTimer = setTimeout(function () {
      charts.forEach(function (chart) {
        chart.plot.setSize({ width: chart.box.clientWidth || 300, height: 150 });
      });
    }, 150);
  });

  // ------------------------------------------------------------ wiring

  const special = {
    doover_connection: function (kind, d) {
      if (kind === "aggregate") fc.showConnection(document.querySelector(".page-head"), d.aggregate.data);
    },
    ui_state: function (kind, d) {
      if (kind === "aggregate") onUiState(d.aggregate);
    },
    ui_cmds: function (kind, d) {
      if (kind !== "aggregate") return;
      uiCmds = d.aggregate.data || {};
      patchInputs();
    },
    tag_values: function (kind, d) {
      if (kind === "aggregate") onTags(d.aggregate.data);
    },
    significantEvent: function (kind, d) {
      if (kind === "message") onAlert(d);
    },
  };
  const names = new Set(page.channels.concat(Object.keys(special)));
  if (page.history) names.add(page.history);
  names.forEach(function (name) {
    fc.live.watch(device, name, function (kind, d) {
      if (kind === "aggregate") onAggregate(name, d.aggregate);
      if (special[name]) special[name](kind, d);
      if (kind === "message" && name === page.history) onHistoryMessage(d);
    });
  });
  fc.live.onResync.push(function () { location.reload(); });
  bindUi();
  setupCharts();
})();
