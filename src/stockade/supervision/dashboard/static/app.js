// stockade dashboard: live events (SSE) rendered with textContent only (agent strings stay inert).
"use strict";
(function () {
  function fmt(t) {
    var d = new Date(t * 1000);
    return d.toISOString().replace("T", " ").slice(0, 19) + "Z";
  }
  function cell(tr, text, cls) {
    var td = document.createElement("td");
    td.textContent = text == null ? "" : String(text);
    if (cls) td.className = cls;
    tr.appendChild(td);
  }
  // Live activity filters: agent, capability and tier match exactly (empty: any), the event type
  // by prefix ("approval." shows every approval event). Rows stay; non-matching ones are hidden.
  function filterValues() {
    var form = document.getElementById("ev-filters");
    var out = {};
    if (!form) return out;
    ["agent", "capability", "tier", "kind"].forEach(function (k) {
      out[k] = form.elements[k] ? String(form.elements[k].value).trim() : "";
    });
    return out;
  }
  function matches(tr) {
    var f = filterValues();
    if (f.agent && tr.getAttribute("data-agent") !== f.agent) return false;
    if (f.capability && tr.getAttribute("data-capability") !== f.capability) return false;
    if (f.tier && tr.getAttribute("data-tier") !== f.tier) return false;
    if (f.kind && String(tr.getAttribute("data-type")).indexOf(f.kind) !== 0) return false;
    return true;
  }
  function applyFilters() {
    var table = document.getElementById("events");
    if (!table) return;
    Array.prototype.forEach.call(table.tBodies[0].rows, function (tr) { tr.hidden = !matches(tr); });
  }
  function wireFilters() {
    var form = document.getElementById("ev-filters");
    if (!form) return;
    form.addEventListener("input", applyFilters);
    form.addEventListener("change", applyFilters);
    form.addEventListener("submit", function (e) { e.preventDefault(); applyFilters(); });
  }
  function live() {
    var table = document.getElementById("events");
    var onApprovals = document.getElementById("pending");
    if (!table && !onApprovals) return;
    var conn = document.getElementById("conn");
    var es = new EventSource("/api/events");
    es.onopen = function () { if (conn) { conn.textContent = "live"; conn.className = "badge b-ok"; } };
    es.onerror = function () { if (conn) { conn.textContent = "reconnecting"; conn.className = "badge b-degraded"; } };
    es.onmessage = function (m) {
      var ev;
      try { ev = JSON.parse(m.data); } catch (e) { return; }
      if (onApprovals && !table) {
        if (ev.live && (ev.kind === "approval.requested" || ev.kind === "approval.expired")) window.location.reload();
        return;
      }
      var tbody = table.tBodies[0];
      var tr = document.createElement("tr");
      tr.className = "ev sev-" + String(ev.severity).replace(/[^a-z]/g, "");
      tr.setAttribute("data-kind", String(ev.kind));
      // The gateway sends `display`: agent-supplied text with invisible characters escaped.
      var d = ev.display || {};
      cell(tr, fmt(ev.ts));
      cell(tr, ev.severity);
      cell(tr, d.kind, "kind");
      cell(tr, d.agent);
      cell(tr, d.capability);
      cell(tr, d.tier);
      tr.setAttribute("data-agent", d.agent || "");
      tr.setAttribute("data-capability", d.capability || "");
      tr.setAttribute("data-tier", d.tier || "");
      tr.setAttribute("data-type", d.kind || "");
      tr.hidden = !matches(tr);
      cell(tr, (d.suspicious ? "⚠ hidden characters shown escaped: " : "") + (d.detail || ""), "detail");
      tbody.insertBefore(tr, tbody.firstChild);
      while (tbody.rows.length > 500) tbody.deleteRow(tbody.rows.length - 1);
    };
  }
  document.addEventListener("DOMContentLoaded", live);
  document.addEventListener("DOMContentLoaded", wireFilters);
})();
