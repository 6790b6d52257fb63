// otel_audit console: progressive enhancement only (every page works without it).
// No inline handlers: the Content Security Policy allows scripts from this origin only.
(function () {
  "use strict";
  document.documentElement.classList.add("has-js");

  function drawChart() {
    var holder = document.getElementById("chart");
    var source = document.getElementById("chart-data");
    if (!holder || !source || typeof uPlot === "undefined") return;
    var spec = JSON.parse(source.textContent);
    var data = [spec.x].concat(spec.series.map(function (s) { return s.values; }));
    var palette = ["#1f5fbf", "#d92d20", "#067647", "#b54708"];
    var opts = {
      width: Math.min(940, holder.clientWidth || 940), height: 280,
      scales: { x: { time: spec.kind === "time" } },
      series: [{}].concat(spec.series.map(function (s, i) {
        var one = { label: s.label, stroke: palette[i % 4], width: 2 };
        if (spec.kind === "category") {
          one.fill = palette[i % 4] + "55";
          one.paths = uPlot.paths.bars({ size: [0.6, 60] });
        }
        return one;
      })),
      axes: [{}, {}]
    };
    if (spec.kind === "category") {
      // one tick per category, bars centred on it
      opts.scales.x.range = function () { return [-0.5, spec.x.length - 0.5]; };
      opts.axes[0] = {
        splits: function () { return spec.x; },
        values: function (u, ticks) {
          return ticks.map(function (t) { return spec.labels[t] === undefined ? "" : spec.labels[t]; });
        }
      };
    }
    holder.setAttribute("data-rendered", "yes");
    new uPlot(opts, data, holder);
  }

  function selectAll() {
    var box = document.getElementById("select-all");
    if (!box) return;
    box.addEventListener("change", function () {
      document.querySelectorAll("input[name=record_id][form=bulk-review]").forEach(function (c) {
        c.checked = box.checked;
      });
    });
  }

  // saved searches: kept per user in this browser (the console writes nothing but
  // audit records to the store)
  function savedSearches() {
    var list = document.getElementById("saved-searches");
    var button = document.getElementById("save-search");
    var who = document.getElementById("whoami");
    if (!list || !button || !who) return;
    var key = "otel-audit-saved:" + who.getAttribute("data-user");
    function load() { try { return JSON.parse(localStorage.getItem(key) || "[]"); } catch (e) { return []; } }
    function show() {
      list.textContent = "";
      load().forEach(function (s) {
        var a = document.createElement("a");
        a.href = s.url; a.textContent = s.name;
        list.appendChild(a);
      });
    }
    button.addEventListener("click", function () {
      var name = window.prompt("Name of this search");
      if (!name) return;
      var all = load().filter(function (s) { return s.name !== name; });
      all.push({ name: name, url: location.pathname + location.search });
      localStorage.setItem(key, JSON.stringify(all));
      show();
    });
    show();
  }

  function pollVerify() {
    var box = document.getElementById("verify-status");
    if (!box || box.getAttribute("data-poll") !== "yes") return;
    var timer = setInterval(function () {
      fetch("/api/integrity", { credentials: "same-origin" }).then(function (r) { return r.json(); })
        .then(function (s) {
          var bar = document.getElementById("verify-progress");
          if (s.running && bar) { bar.max = s.running.total || 1; bar.value = s.running.done; }
          if (!s.running) { clearInterval(timer); location.reload(); }
        });
    }, 1000);
  }

  document.addEventListener("DOMContentLoaded", function () {
    drawChart(); selectAll(); savedSearches(); pollVerify();
  });
})();
