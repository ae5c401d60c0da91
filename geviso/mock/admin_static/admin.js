// The live page of a geviso mock host: polls GET /overview every second and renders it.
// A token (for a host exposed off loopback) comes from the page's #token=... fragment.
"use strict";

(function () {
  const POLL_MS = 1000;
  const APPROVALS = new Set(["00", "08", "10", "11", "16"]);
  const token = new URLSearchParams(location.hash.slice(1)).get("token");
  let previous = null; // {time, received} of the last overview, for messages per second
  let busy = false;

  function api(method, path, body) {
    const headers = {};
    if (token) headers.Authorization = "Bearer " + token;
    if (body !== undefined) headers["Content-Type"] = "application/json";
    return fetch(path, { method, headers, body: body === undefined ? undefined : JSON.stringify(body), cache: "no-store" })
      .then((resp) => resp.json().then((data) => {
        if (!resp.ok) throw new Error(data.error || resp.statusText);
        return data;
      }));
  }

  function el(tag, text, cls) {
    const node = document.createElement(tag);
    if (text !== undefined && text !== null) node.textContent = String(text);
    if (cls) node.className = cls;
    return node;
  }

  function row(cells) {
    const tr = document.createElement("tr");
    for (const cell of cells) tr.appendChild(cell instanceof Node ? cell : el("td", cell));
    return tr;
  }

  function fill(id, rows) {
    const body = document.querySelector("#" + id + " tbody");
    body.replaceChildren(...rows);
    document.getElementById(id + "-empty").hidden = rows.length > 0;
  }

  function setText(id, text) {
    document.getElementById(id).textContent = text;
  }

  function summary(obj) {
    if (!obj || Object.keys(obj).length === 0) return "any request";
    return Object.entries(obj).map(([k, v]) => k + "=" + (typeof v === "object" ? JSON.stringify(v) : v)).join(" ");
  }

  function then(rule) {
    let text = rule.action || "respond";
    if (rule.code) text += " " + rule.code;
    if (rule.delay_ms !== undefined) text += " after " + JSON.stringify(rule.delay_ms) + " ms";
    return text;
  }

  // The rules table is rebuilt only when the rules change (hit counts update in place), so
  // a checkbox or button is never replaced under the pointer of someone clicking it.
  let rulesShown = null;

  function renderRules(rules) {
    const key = JSON.stringify(rules.map((r) => [r.index, r.enabled, r.rule]));
    if (key === rulesShown) {
      const cells = document.querySelectorAll("#rules tbody td.hits");
      rules.forEach((r, i) => { if (cells[i]) cells[i].textContent = String(r.hits); });
      return;
    }
    rulesShown = key;
    fill("rules", rules.map((r) => {
      const on = el("input");
      on.type = "checkbox";
      on.checked = r.enabled;
      on.className = "rule-enabled";
      on.title = r.enabled ? "disable this rule" : "enable this rule";
      on.addEventListener("change", () => change(r.index, { enabled: on.checked }));
      const up = el("button", "↑", "rule-up");
      up.title = "move up";
      up.disabled = r.index === 0;
      up.addEventListener("click", () => change(r.index, { position: r.index - 1 }));
      const down = el("button", "↓", "rule-down");
      down.title = "move down";
      down.disabled = r.index === rules.length - 1;
      down.addEventListener("click", () => change(r.index, { position: r.index + 1 }));
      const onCell = el("td");
      onCell.appendChild(on);
      const order = el("td");
      order.append(up, " ", down);
      const when = el("td");
      when.appendChild(el("code", summary(r.rule.match)));
      const scenario = r.rule.scenario ? r.rule.scenario + (r.rule.state ? " @" + r.rule.state : "") +
        (r.rule.new_state ? " → " + r.rule.new_state : "") : "";
      const tr = row([String(r.index), onCell, r.name || "", when, then(r.rule), scenario, el("td", r.hits, "num hits"), order]);
      tr.dataset.ruleIndex = r.index;
      if (!r.enabled) tr.classList.add("disabled");
      return tr;
    }));
  }

  function renderCodes(codes) {
    const box = document.getElementById("codes");
    const items = Object.entries(codes).sort();
    box.replaceChildren(...items.map(([code, n]) => {
      const tile = el("div", null, "code " + (APPROVALS.has(code) ? "approved" : "declined"));
      tile.dataset.code = code;
      tile.append(el("b", code), el("span", n + " answers"));
      return tile;
    }));
    if (items.length === 0) box.replaceChildren(el("span", "No answers yet.", "empty"));
  }

  function renderJournal(entries) {
    fill("journal", entries.slice().reverse().map((e) => {
      const time = new Date(e.time * 1000).toLocaleTimeString();
      const rule = el("td", e.rule === null ? "" : e.rule);
      if (e.near_misses && e.near_misses.length) {
        const best = e.near_misses[0];
        rule.appendChild(el("div", "closest: " + (best.name || "#" + best.rule) + ": " + best.reasons.join("; "), "miss"));
      }
      return row([
        el("td", e.seq, "num"), time, e.link === null ? "" : String(e.link), e.mti, e.request["2"] || "",
        el("td", e.request["4"] || "", "num"), rule, el("td", e.outcome, "outcome-" + e.outcome), e.code || "",
        el("td", e.latency_ms === null ? "" : e.latency_ms.toFixed(1), "num"),
      ]);
    }));
  }

  function render(data) {
    const s = data.stats;
    setText("links-count", s.connections);
    setText("received", s.received);
    setText("responded", s.responded);
    setText("dropped", s.dropped + " / " + s.closed);
    if (previous && data.time > previous.time) {
      setText("rate", Math.max(0, (s.received - previous.received) / (data.time - previous.time)).toFixed(1));
    }
    previous = { time: data.time, received: s.received };
    const l = data.latency_ms || {};
    const ms = (v) => (v === null || v === undefined ? "–" : v.toFixed(1));
    setText("latency", ms(l.p50) + " / " + ms(l.p90) + " / " + ms(l.p99));
    renderCodes(s.codes);
    renderRules(data.rules);
    fill("scenarios", Object.entries(data.scenarios).map(([name, info]) => row([name, info.state])));
    fill("links", data.links.map((k) => row([String(k.id), k.peer, el("td", k.age.toFixed(0), "num"),
      el("td", k.received, "num"), el("td", k.answered, "num")])));
    renderJournal(data.journal);
  }

  function status(text, cls) {
    const node = document.getElementById("status");
    node.textContent = text;
    node.className = "status " + cls;
  }

  function change(index, body) {
    api("PATCH", "/rules/" + index, body).then(poll, (err) => status("error: " + err.message, "down"));
  }

  function poll() {
    if (busy) return;
    busy = true;
    api("GET", "/overview")
      .then((data) => {
        render(data);
        status("live · " + new Date().toLocaleTimeString(), "live");
      })
      .catch((err) => {
        console.error("geviso admin page:", err); // a rendering bug shows in the console too
        status("disconnected: " + err.message, "down");
      })
      .finally(() => { busy = false; });
  }

  poll();
  setInterval(poll, POLL_MS);
})();
