/* fleetcloud console: live updates and small enhancements; every page works without it.
 *
 * Live updates use /console/live, which speaks the websocket gateway protocol of
 * docs/api.md (HELLO, IDENTIFY, SUBSCRIBE, dispatches, heartbeats, RESUME) but signs in
 * with the session cookie: this script never sees a token.
 */
(function () {
  "use strict";

  const OP = {
    DISPATCH: 0, HEARTBEAT: 1, IDENTIFY: 2, RESUME: 6, INVALID_SESSION: 9,
    HELLO: 10, SUBSCRIBE: 12, ERROR: 15,
  };
  const HOUR_MS = 3600 * 1000;
  document.documentElement.classList.add("js");

  // ------------------------------------------------------------ the live connection

  function Live() {
    this.watchers = new Map(); // "agentId/channel" -> [fn(kind, data)]
    this.ws = null;
    this.session = null;
    this.seq = null;
    this.ready = false;
    this.failures = 0;
    this.heartbeat = null;
    this.stopped = false;
    this.onResync = [];
  }

  Live.prototype.watch = function (agentId, channel, fn) {
    const key = agentId + "/" + channel;
    if (!this.watchers.has(key)) {
      this.watchers.set(key, []);
      if (this.ready) this.subscribe(agentId, channel);
    }
    this.watchers.get(key).push(fn);
  };

  Live.prototype.send = function (op, d) {
    if (this.ws && this.ws.readyState === WebSocket.OPEN) this.ws.send(JSON.stringify({ op: op, d: d }));
  };

  Live.prototype.subscribe = function (agentId, channel) {
    this.send(OP.SUBSCRIBE, { agent_id: agentId, channel_name: channel });
  };

  Live.prototype.status = function (state) {
    const el = document.getElementById("live-status");
    if (!el) return;
    el.dataset.state = state;
    el.textContent = { open: "live", connecting: "connecting…", closed: "offline" }[state] || "live";
    el.title = state === "open" ? "Live updates are on" : "Live updates are paused; reconnecting";
  };

  Live.prototype.start = function () {
    if (!this.watchers.size || this.ws) return;
    const self = this;
    window.addEventListener("pagehide", function () {
      self.stopped = true;
      if (self.ws) self.ws.close(1000);
    });
    this.connect();
  };

  Live.prototype.connect = function () {
    const self = this;
    const scheme = location.protocol === "https:" ? "wss://" : "ws://";
    this.status("connecting");
    const ws = (this.ws = new WebSocket(scheme + location.host + "/console/live"));
    ws.onmessage = function (event) {
      self.frame(JSON.parse(event.data));
    };
    ws.onclose = function () {
      self.closed(ws);
    };
  };

  Live.prototype.frame = function (frame) {
    const d = frame.d;
    if (typeof frame.s === "number") this.seq = frame.s;
    if (frame.op === OP.HELLO) {
      const self = this;
      clearInterval(this.heartbeat);
      this.heartbeat = setInterval(function () {
        self.send(OP.HEARTBEAT, self.seq);
      }, Math.max(1000, d.heartbeat_interval * 0.8));
      if (this.session) this.send(OP.RESUME, { token: "", session_id: this.session, seq: this.seq });
      else this.send(OP.IDENTIFY, { token: "" });
    } else if (frame.op === OP.INVALID_SESSION) {
      this.session = null;
      this.seq = null;
      this.resync = true;
      this.send(OP.IDENTIFY, { token: "" });
    } else if (frame.op === OP.ERROR) {
      console.warn("live updates:", d && d.message);
    } else if (frame.op === OP.DISPATCH) {
      this.dispatch(frame.t, d);
    }
  };

  Live.prototype.dispatch = function (type, d) {
    if (type === "Ready" || type === "Resumed") {
      this.ready = true;
      this.failures = 0;
      this.status("open");
      if (type === "Ready") {
        this.session = d.session_id;
        const self = this;
        this.watchers.forEach(function (_, key) {
          const cut = key.indexOf("/");
          self.subscribe(key.slice(0, cut), key.slice(cut + 1));
        });
        if (this.resync) this.onResync.forEach(function (fn) { fn(); });
        this.resync = false;
      }
      return;
    }
    const kind = { MessageCreate: "message", AggregateUpdate: "aggregate" }[type];
    if (!kind || !d || !d.channel) return;
    const fns = this.watchers.get(d.channel.agent_id + "/" + d.channel.name) || [];
    fns.forEach(function (fn) {
      fn(kind, d);
    });
  };

  Live.prototype.closed = function (ws) {
    if (ws !== this.ws) return;
    this.ready = false;
    this.ws = null;
    clearInterval(this.heartbeat);
    if (this.stopped) return;
    this.status("closed");
    this.failures += 1;
    if (this.failures > 2) this.resync = true; // long gone: re-read state when back
    const self = this;
    const delay = Math.min(30000, 1000 * Math.pow(2, this.failures - 1));
    setTimeout(function () {
      self.connect();
    }, delay);
  };

  // ------------------------------------------------------------ shared helpers

  function isNumber(v) {
    return typeof v === "number" && isFinite(v);
  }

  /* The same rules as console/connection.py. */
  function connectionOf(agg, now) {
    const unknown = { state: "unknown", seen: null };
    if (!agg || typeof agg !== "object") return unknown;
    const st = agg.status;
    if (typeof st === "string") {
      const seen = isNumber(agg.last_seen) ? agg.last_seen : null;
      const fresh = seen !== null && now - seen <= HOUR_MS;
      return { state: st.toLowerCase() === "online" && fresh ? "online" : "offline", seen: seen };
    }
    if (!st || typeof st !== "object" || Array.isArray(st)) return unknown;
    const lastOnline = isNumber(st.last_online) ? st.last_online : null;
    const seen = lastOnline !== null ? lastOnline : isNumber(st.last_ping) ? st.last_ping : null;
    if (seen === null) return unknown;
    let windowMs = HOUR_MS;
    const config = agg.config;
    if (isNumber(st.offline_at) && st.offline_at > seen) windowMs = st.offline_at - seen;
    else if (config && isNumber(config.offline_after) && config.offline_after > 0) windowMs = config.offline_after * 1000;
    const online = st.determination !== "Offline" && now - seen <= windowMs;
    return { state: online ? "online" : "offline", seen: seen };
  }

  const STATE_LABELS = { online: "Online", offline: "Offline", unknown: "Never seen" };

  function ago(ms, now) {
    if (!isNumber(ms)) return "never";
    const s = Math.max(0, Math.floor((now - ms) / 1000));
    if (s >= 86400) return Math.floor(s / 86400) + " d ago";
    if (s >= 3600) return Math.floor(s / 3600) + " h ago";
    if (s >= 60) return Math.floor(s / 60) + " min ago";
    return s + " s ago";
  }

  function utc(ms) {
    return new Date(ms).toISOString().replace("T", " ").slice(0, 19) + " UTC";
  }

  /* A <time data-ms> element showing "12 s ago", kept fresh by the ticker below. */
  function setTime(el, ms) {
    if (!el) return;
    el.dataset.ms = isNumber(ms) ? String(ms) : "";
    el.dateTime = isNumber(ms) ? new Date(ms).toISOString() : "";
    el.title = isNumber(ms) ? utc(ms) : "never";
    el.textContent = ago(ms, Date.now());
  }

  function tick() {
    const now = Date.now();
    document.querySelectorAll("time[data-ms]").forEach(function (el) {
      if (el.dataset.ms) el.textContent = ago(Number(el.dataset.ms), now);
    });
  }

  function showConnection(container, agg) {
    const conn = connectionOf(agg, Date.now());
    const badge = container.querySelector("[data-status]");
    if (badge) {
      badge.className = "badge state-" + conn.state;
      badge.textContent = STATE_LABELS[conn.state];
    }
    setTime(container.querySelector("time[data-last-seen]"), conn.seen);
  }

  /* The same rules as console/readings.py's scalar(). */
  function scalar(v) {
    if (typeof v === "boolean") return v ? "true" : "false";
    if (typeof v === "number") return Number.isInteger(v) ? String(v) : String(Number(v.toPrecision(6)));
    if (typeof v === "string") return v;
    return JSON.stringify(v);
  }

  function summary(data, limit) {
    if (data === null || typeof data !== "object" || Array.isArray(data)) {
      return data === null || data === undefined ? [] : [["value", scalar(data)]];
    }
    return Object.keys(data)
      .filter(function (k) { return data[k] === null || typeof data[k] !== "object"; })
      .slice(0, limit || 4)
      .map(function (k) { return [k, scalar(data[k])]; });
  }

  function toast(text, bad) {
    const box = document.getElementById("toasts");
    if (!box) return;
    const el = document.createElement("div");
    el.className = "toast" + (bad ? " bad" : "");
    el.textContent = text;
    box.appendChild(el);
    setTimeout(function () { el.remove(); }, bad ? 7000 : 4000);
  }

  function make(tag, className, text) {
    const el = document.createElement(tag);
    if (className) el.className = className;
    if (text !== undefined) el.textContent = text;
    return el;
  }

  // ------------------------------------------------------------ the devices page

  function devicesPage(live) {
    document.querySelectorAll("tr[data-agent]").forEach(function (row) {
      const agent = row.dataset.agent;
      let lastConnection = null;
      live.watch(agent, "doover_connection", function (kind, d) {
        if (kind !== "aggregate") return;
        lastConnection = d.aggregate.data;
        showConnection(row, lastConnection);
      });
      setInterval(function () {
        if (lastConnection) showConnection(row, lastConnection); // silent devices go offline
      }, 5000);
      const channel = row.dataset.readingChannel;
      if (!channel) return;
      live.watch(agent, channel, function (kind, d) {
        if (kind !== "aggregate") return;
        const cell = row.querySelector("[data-reading]");
        cell.replaceChildren(make("span", "muted", channel + ":"), document.createTextNode(" "));
        summary(d.aggregate.data).forEach(function (pair) {
          const kv = make("span", "kv");
          kv.append(make("span", "k", pair[0]), " ", make("span", "v", pair[1]));
          cell.append(kv, " ");
        });
      });
    });
    document.querySelectorAll("form[data-autosubmit] select").forEach(function (select) {
      select.addEventListener("change", function () {
        select.form.requestSubmit();
      });
    });
  }

  // ------------------------------------------------------------ start

  const live = new Live();
  window.fleetcloud = {
    live: live,
    connectionOf: connectionOf,
    showConnection: showConnection,
    setTime: setTime,
    ago: ago,
    utc: utc,
    scalar: scalar,
    toast: toast,
    make: make,
  };
  devicesPage(live);
  setInterval(tick, 5000);
  document.addEventListener("DOMContentLoaded", function () {
    live.start();
  });
})();
