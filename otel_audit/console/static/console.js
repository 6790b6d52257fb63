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
    drawChart(); selectAll(); pollVerify();
  });
})();
