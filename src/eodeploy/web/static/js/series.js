// Series page: the target class in hectares over time for one area (uPlot), from the same rows as
// the CSV and GeoJSON downloads: one line per model version, the baseline, the alert thresholds,
// cloudy observations (grey dotted lines), model changes (dashed) and alerts (red rings).
(function () {
  "use strict";
  const area = document.getElementById("series-area").dataset.area;
  const palette = ["#1b4f9c", "#b35806", "#1a9850", "#762a83", "#333333"];

  function summary(d) {
    const ok = d.rows.filter((r) => r.status === "ok" && r.estimate_ha != null);
    if (!ok.length) return "No clear observation yet.";
    const last = ok[ok.length - 1];
    if (last.baseline_ha == null) return `${d.target_class}: ${last.estimate_ha.toFixed(2)} ha on ${last.datetime.slice(0, 10)}.`;
    const diff = last.estimate_ha - last.baseline_ha;
    const pct = last.baseline_ha ? ` (${diff >= 0 ? "+" : "−"}${Math.abs(100 * diff / last.baseline_ha).toFixed(0)} %)` : "";
    const verb = diff < 0 ? "fell" : diff > 0 ? "rose" : "held at";
    return `Since the baseline (${last.baseline_ha.toFixed(2)} ha), ${d.target_class} ${verb}` +
      `${diff ? ` ${Math.abs(diff).toFixed(2)} ha${pct}` : ""} to ${last.estimate_ha.toFixed(2)} ha on ${last.datetime.slice(0, 10)}.`;
  }

  function table(d) {
    const tbody = document.querySelector("#rows tbody");
    const fmt = (v) => (v == null ? "—" : v.toFixed(2));
    tbody.replaceChildren(...d.rows.map((r) => {
      const tr = document.createElement("tr");
      const cells = [r.datetime.slice(0, 10), `${r.model_name} v${r.model_version}`, r.status,
        `${Math.round(r.observed_share * 100)} %`, fmt(r.estimate_ha), fmt(r.baseline_ha),
        `${fmt(r.alert_low_ha)} / ${fmt(r.alert_high_ha)}`, r.alert_id ? `#${r.alert_id}` : ""];
      for (const c of cells) { const td = document.createElement("td"); td.textContent = c; tr.append(td); }
      return tr;
    }));
  }

  function chart(d) {
    const rows = d.rows;
    const xs = rows.map((r) => Date.parse(r.datetime) / 1000);
    const versions = [...new Set(rows.map((r) => `${r.model_name} v${r.model_version}`))];
    const pick = (f) => rows.map((r) => (r.status === "ok" ? f(r) : null));
    const data = [xs];
    const series = [{}];
    versions.forEach((v, i) => {
      data.push(rows.map((r) => (r.status === "ok" && `${r.model_name} v${r.model_version}` === v ? r.estimate_ha : null)));
      series.push({ label: `${d.target_class} (${v}), ha`, stroke: palette[i % palette.length], width: 2, points: { size: 7 }, spanGaps: true });
    });
    data.push(pick((r) => r.baseline_ha));
    series.push({ label: "baseline", stroke: "#777", dash: [2, 4], width: 1, points: { show: false }, spanGaps: true });
    data.push(pick((r) => r.alert_low_ha));
    series.push({ label: "alert below", stroke: "#c62828", dash: [6, 4], width: 1, points: { show: false }, spanGaps: true });
    data.push(pick((r) => r.alert_high_ha));
    series.push({ label: "alert above", stroke: "#c62828", dash: [6, 4], width: 1, points: { show: false }, spanGaps: true });
    data.push(rows.map((r) => (r.alert_id ? r.estimate_ha : null)));
    series.push({ label: "alert", stroke: "#c62828", width: 0, paths: () => null, points: { size: 14, width: 2, fill: "transparent", stroke: "#c62828" } });

    const marks = {
      hooks: {
        draw: [(u) => {
          const ctx = u.ctx;
          ctx.save();
          rows.forEach((r, i) => {
            const x = u.valToPos(xs[i], "x", true);
            const changed = i > 0 && r.model_version !== rows[i - 1].model_version;
            if (r.status !== "cloudy" && !changed) return;
            ctx.strokeStyle = r.status === "cloudy" ? "#aaa" : "#762a83";
            ctx.setLineDash(r.status === "cloudy" ? [1, 3] : [6, 3]);
            ctx.beginPath();
            ctx.moveTo(x, u.bbox.top);
            ctx.lineTo(x, u.bbox.top + u.bbox.height);
            ctx.stroke();
          });
          ctx.restore();
        }],
      },
    };
    const el = document.getElementById("chart");
    const u = new uPlot({
      width: Math.max(320, el.clientWidth), height: 320, plugins: [marks],
      scales: { x: { time: true } }, series,
      axes: [{}, { label: "hectares (cloud-filled estimate)" }],
    }, data, el);
    window.eodeployChart = u;
  }

  fetch(`/dashboard/api/series/${encodeURIComponent(area)}.json`)
    .then((r) => { if (!r.ok) throw new Error(`the series could not be read (HTTP ${r.status})`); return r.json(); })
    .then((d) => {
      window.eodeploySeries = d;
      document.getElementById("summary").textContent = summary(d);
      table(d);
      if (d.rows.length) chart(d);
      else document.getElementById("chart").textContent = "No observation yet.";
    })
    .catch((e) => { document.getElementById("summary").textContent = e.message; });
})();
