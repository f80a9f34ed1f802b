// Try it: one uploaded patch classified in the browser (onnxruntime-web, WASM, one thread) and on
// the server, side by side. The server decodes the file (its bands in the model's order and units)
// and answers with its own probabilities; the browser runs the package's fused ONNX graph (the
// package's preprocessing + network + softmax) on those values: no scaling is written in JS.
(function () {
  "use strict";
  ort.env.wasm.wasmPaths = "/dashboard/static/vendor/onnxruntime-web/";
  ort.env.wasm.numThreads = 1;
  const sessions = new Map();
  const status = document.getElementById("status");

  async function session(model) {
    if (!sessions.has(model)) {
      sessions.set(model, ort.InferenceSession.create(`/dashboard/models/${model}/model.onnx`, { executionProviders: ["wasm"] }));
    }
    return sessions.get(model);
  }

  function top(classes, p) {
    let best = 0;
    p.forEach((v, i) => { if (v > p[best]) best = i; });
    return { index: best, name: classes[best], p: p[best] };
  }

  async function classify(file) {
    const model = document.getElementById("model").value;
    const units = document.getElementById("units").value;
    status.textContent = `Classifying ${file.name}…`;
    const [name, version] = model.split("/");
    const form = new FormData();
    form.append("image", file);
    const reply = await fetch(`/dashboard/api/try?model=${encodeURIComponent(name)}&version=${version}&units=${units}`, { method: "POST", body: form });
    const body = await reply.json();
    if (!reply.ok) throw new Error(body.error || `the server answered HTTP ${reply.status}`);
    const bytes = Uint8Array.from(atob(body.input), (c) => c.charCodeAt(0));
    const input = new ort.Tensor("float32", new Float32Array(bytes.buffer), body.shape);
    const s = await session(model);
    const t0 = performance.now();
    const out = await s.run({ [s.inputNames[0]]: input });
    const ms = performance.now() - t0;
    const browser = Array.from(out[s.outputNames[0]].data);
    show(body, browser, ms, file.name);
  }

  function show(body, browser, ms, filename) {
    const b = top(body.classes, browser), s = top(body.classes, body.server);
    const delta = Math.max(...browser.map((v, i) => Math.abs(v - body.server[i])));
    document.getElementById("browser-top").textContent = `${b.name} (${(100 * b.p).toFixed(2)} %), ${ms.toFixed(1)} ms`;
    document.getElementById("server-top").textContent = `${s.name} (${(100 * s.p).toFixed(2)} %), ${body.model} v${body.version}`;
    document.getElementById("agreement").textContent = (b.index === s.index ? "Same class" : "Different classes") +
      `; largest probability difference ${delta.toExponential(1)}.`;
    const tbody = document.querySelector("#probs tbody");
    tbody.replaceChildren(...body.classes.map((c, i) => {
      const tr = document.createElement("tr");
      for (const v of [c, browser[i].toFixed(6), body.server[i].toFixed(6), Math.abs(browser[i] - body.server[i]).toExponential(1)]) {
        const td = document.createElement("td"); td.textContent = v; tr.append(td);
      }
      return tr;
    }));
    document.getElementById("results").hidden = false;
    document.getElementById("probs").hidden = false;
    status.textContent = `${filename}: done.`;
    window.eodeployTry = { browser, server: body.server, maxDelta: delta, sameClass: b.index === s.index, ms };
  }

  function run(file) { classify(file).catch((e) => { status.textContent = `Could not classify ${file.name}: ${e.message}`; }); }
  const input = document.getElementById("file");
  input.addEventListener("change", () => input.files[0] && run(input.files[0]));
  const drop = document.getElementById("drop");
  drop.addEventListener("dragover", (e) => { e.preventDefault(); drop.classList.add("over"); });
  drop.addEventListener("dragleave", () => drop.classList.remove("over"));
  drop.addEventListener("drop", (e) => { e.preventDefault(); drop.classList.remove("over"); if (e.dataTransfer.files[0]) run(e.dataTransfer.files[0]); });
  window.eodeployOrt = { session };
})();
