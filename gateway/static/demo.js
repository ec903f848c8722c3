// The demo page: lists models, sends a URL (JSON) or a file (multipart), draws the top-5 bars.
// The last image sent stays current: changing model or version, or pressing Classify with an
// empty URL field, classifies it again.
"use strict";

const $ = (id) => document.getElementById(id);
let models = [];
let current = null; // {file} or {url}: the image on screen
let latest = 0; // number of the newest request; answers to older ones are dropped

function headers(extra) {
  const h = Object.assign({}, extra || {});
  const key = $("api-key").value || localStorage.getItem("dynoserve-key") || "";
  if (key) { h["Authorization"] = "Bearer " + key; }
  return h;
}

function setStatus(text, isError) {
  const el = $("status");
  el.textContent = text;
  el.className = isError ? "status error" : "status";
}

async function loadModels() {
  try {
    const res = await fetch("/v1/models", { headers: headers() });
    const body = await res.json();
    if (!res.ok) { throw new Error(body.error ? body.error.message : res.statusText); }
    models = body.models;
    const select = $("model");
    select.replaceChildren(...models.map((m) => new Option(m.name, m.name)));
    fillVersions();
    if (!models.length) { setStatus("No models are configured yet.", true); }
  } catch (err) {
    setStatus("Cannot list models: " + err.message, true);
  }
}

function fillVersions() {
  const model = models.find((m) => m.name === $("model").value);
  const options = [new Option("latest", "")];
  if (model) {
    for (const [label, v] of Object.entries(model.labels)) {
      options.push(new Option(label + " (v" + v + ")", "label:" + label));
    }
    for (const v of model.versions) {
      options.push(new Option("v" + v.version + " " + v.state.toLowerCase(), "version:" + v.version));
    }
  }
  $("version").replaceChildren(...options);
}

function predictUrl() {
  const params = new URLSearchParams({ top_k: "5" });
  const choice = $("version").value;
  if (choice.startsWith("version:")) { params.set("version", choice.slice(8)); }
  if (choice.startsWith("label:")) { params.set("label", choice.slice(6)); }
  return "/v1/models/" + encodeURIComponent($("model").value) + ":predict?" + params;
}

async function classify(init) {
  if (!$("model").value) { setStatus("Choose a model first.", true); return; }
  const mine = ++latest;
  setStatus("Classifying…", false);
  $("results").replaceChildren();
  $("meta").textContent = "";
  try {
    const res = await fetch(predictUrl(), Object.assign({ method: "POST" }, init));
    const body = await res.json();
    if (mine !== latest) { return; } // a newer request (other version, other image) owns the page
    if (!res.ok) {
      const e = body.error || {};
      setStatus((e.code || res.status) + ": " + (e.message || res.statusText), true);
      return;
    }
    render(body);
  } catch (err) {
    if (mine === latest) { setStatus("Request failed: " + err.message, true); }
  }
}

function render(body) {
  setStatus("", false);
  const rows = body.predictions.map((p) => {
    const li = document.createElement("li");
    li.dataset.label = p.label;
    const name = document.createElement("span");
    name.className = "label";
    name.textContent = p.label;
    const bar = document.createElement("div");
    bar.className = "bar";
    const fill = document.createElement("span");
    fill.style.width = Math.max(0, Math.min(100, p.score * 100)).toFixed(1) + "%";
    bar.append(fill);
    const score = document.createElement("span");
    score.className = "score";
    score.textContent = (p.score * 100).toFixed(1) + "%";
    li.append(name, bar, score);
    return li;
  });
  $("results").replaceChildren(...rows);
  const t = body.timings_ms;
  $("meta").textContent = body.model + " v" + body.version + " · fetch " + t.fetch.toFixed(1) +
    " ms · inference " + t.inference.toFixed(1) + " ms · total " + t.total.toFixed(1) + " ms";
}

function showPreview(src) {
  const old = $("preview").src;
  if (old.startsWith("blob:")) { URL.revokeObjectURL(old); }
  $("preview").src = src;
  $("preview").hidden = false;
}

function classifyFile(file) {
  if (!file) { return; }
  current = { file };
  $("image-url").value = ""; // the field shows what is current: a file now, no URL
  // Empty the input, or choosing the same file again would fire no change event.
  $("file").value = "";
  showPreview(URL.createObjectURL(file));
  classifyCurrent();
}

function classifyUrl(url) {
  current = { url };
  showPreview(url);
  classifyCurrent();
}

function classifyCurrent() {
  if (!current) { return; }
  if (current.file) {
    const form = new FormData();
    form.append("image", current.file);
    classify({ body: form, headers: headers() });
    return;
  }
  classify({
    body: JSON.stringify({ image_url: current.url }),
    headers: headers({ "Content-Type": "application/json" }),
  });
}

function wire() {
  $("model").addEventListener("change", () => { fillVersions(); classifyCurrent(); });
  $("version").addEventListener("change", classifyCurrent);
  $("api-key").addEventListener("change", () => {
    localStorage.setItem("dynoserve-key", $("api-key").value);
    loadModels();
  });
  $("form").addEventListener("submit", (ev) => {
    ev.preventDefault();
    const url = $("image-url").value.trim();
    if (url) {
      classifyUrl(url);
    } else if (current) {
      classifyCurrent();
    } else {
      setStatus("Paste an image URL or drop a file.", true);
    }
  });
  $("file").addEventListener("change", () => classifyFile($("file").files[0]));
  const drop = $("drop");
  drop.addEventListener("dragover", (ev) => { ev.preventDefault(); drop.classList.add("over"); });
  drop.addEventListener("dragleave", () => drop.classList.remove("over"));
  drop.addEventListener("drop", (ev) => {
    ev.preventDefault();
    drop.classList.remove("over");
    const file = ev.dataTransfer.files[0];
    if (file) { classifyFile(file); }
  });
  $("api-key").value = localStorage.getItem("dynoserve-key") || "";
  loadModels();
}

document.addEventListener("DOMContentLoaded", wire);
