// Areas page: every area's outline on a Leaflet map; for the chosen area, each observation's class
// map (tiles rendered on the server from its COG) over the true-colour image, with a date control.
// The state (area, observation) is kept in the URL so a view can be shared.
(function () {
  "use strict";
  const data = JSON.parse(document.getElementById("areas-data").textContent);
  const byName = new Map(data.features.map((f) => [f.properties.name, f]));
  const params = new URLSearchParams(location.search);
  const areaSel = document.getElementById("area");
  const obsSel = document.getElementById("obs");
  const opacity = document.getElementById("opacity");
  const showRgb = document.getElementById("show-rgb");

  const map = L.map("map", { zoomControl: true, attributionControl: false });
  const outlines = L.geoJSON(data, {
    style: () => ({ color: "#1b4f9c", weight: 2, fill: false }),
    onEachFeature: (f, layer) => {
      layer.bindTooltip(f.properties.name);
      layer.on("click", () => { areaSel.value = f.properties.name; chooseArea(); });
    },
  }).addTo(map);
  map.fitBounds(outlines.getBounds(), { padding: [20, 20] });
  let classLayer = null;
  let rgbLayer = null;
  let chosen = null;

  function tiles(obs, kind, z) {
    return L.tileLayer(`/dashboard/tiles/${obs.id}/${kind}/{z}/{x}/{y}.png`, {
      maxZoom: 18, maxNativeZoom: 16, zIndex: z, bounds: chosen.bounds, errorTileUrl: "",
      opacity: kind === "classes" ? opacity.value / 100 : 1, className: `tiles-${kind}`,
    });
  }

  function showObservation() {
    const obs = chosen.feature.properties.observations[obsSel.selectedIndex];
    [classLayer, rgbLayer].forEach((l) => l && map.removeLayer(l));
    classLayer = rgbLayer = null;
    const info = document.getElementById("obs-info");
    if (!obs) { info.textContent = "No observation yet."; renderLegend(null); return; }
    if (obs.truecolor && showRgb.checked) rgbLayer = tiles(obs, "truecolor", 10).addTo(map);
    if (obs.tiles) classLayer = tiles(obs, "classes", 20).addTo(map);
    const est = obs.estimate_ha == null ? "—" : `${obs.estimate_ha.toFixed(2)} ha`;
    info.textContent = `${obs.datetime.slice(0, 10)} · ${obs.model} · ${obs.status}` +
      ` · ${Math.round(obs.observed_share * 100)} % observed · estimate ${est}` +
      (obs.alert ? " · alert" : "") + (obs.tiles ? "" : " · no map kept for this observation");
    renderLegend(obs.model);
    params.set("area", chosen.feature.properties.name);
    params.set("obs", obs.id);
    history.replaceState(null, "", `?${params}`);
  }

  function renderLegend(model) {
    const ul = document.getElementById("legend");
    ul.replaceChildren();
    for (const c of (model && data.legends[model]) || []) {
      const li = document.createElement("li");
      const sw = document.createElement("span");
      sw.className = "swatch";
      sw.style.background = c.color;
      li.append(sw, document.createTextNode(c.name));
      ul.append(li);
    }
  }

  function chooseArea(obsId) {
    const f = byName.get(areaSel.value);
    const layer = L.geoJSON(f);
    chosen = { feature: f, bounds: layer.getBounds() };
    map.fitBounds(chosen.bounds, { padding: [20, 20] });
    const p = f.properties;
    document.getElementById("area-info").textContent =
      `${p.target_class} watched with ${p.model} over ${p.area_ha.toFixed(1)} ha` + (p.active ? "" : " (paused)");
    obsSel.replaceChildren(...p.observations.map((o) => {
      const opt = document.createElement("option");
      opt.value = o.id;
      opt.textContent = `${o.datetime.slice(0, 10)} (${o.model}${o.status === "cloudy" ? ", cloudy" : ""})`;
      return opt;
    }));
    const wanted = p.observations.findIndex((o) => String(o.id) === String(obsId));
    // By default the latest clear observation (the latest one may be all cloud).
    const clear = p.observations.map((o) => o.status).lastIndexOf("ok");
    obsSel.selectedIndex = wanted >= 0 ? wanted : clear >= 0 ? clear : p.observations.length - 1;
    document.getElementById("dates").disabled = p.observations.length === 0;
    showObservation();
  }

  function step(d) {
    const i = obsSel.selectedIndex + d;
    if (i >= 0 && i < obsSel.options.length) { obsSel.selectedIndex = i; showObservation(); }
  }

  areaSel.addEventListener("change", () => chooseArea());
  obsSel.addEventListener("change", showObservation);
  document.getElementById("prev").addEventListener("click", () => step(-1));
  document.getElementById("next").addEventListener("click", () => step(1));
  opacity.addEventListener("input", () => classLayer && classLayer.setOpacity(opacity.value / 100));
  showRgb.addEventListener("change", showObservation);
  if (params.get("area") && byName.has(params.get("area"))) areaSel.value = params.get("area");
  chooseArea(params.get("obs"));
  window.eodeployMap = map;
})();
