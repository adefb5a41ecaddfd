// The musk serve page: search the index by text or image, browse the hits, open a slide at a hit.
"use strict";

const $ = (selector) => document.querySelector(selector);
const KEY_STORAGE = "musk-api-key";
const HEATMAP_OPACITY = 0.55;
const HEATMAP_MAX_SIDE = 2048;

const state = {
  key: sessionStorage.getItem(KEY_STORAGE) || "",
  query: null, // {text} or {image}
  viewer: null,
  heatmap: null,
  pending: null, // a search to run again once an API key is given
};

// ---- talking to the service ------------------------------------------------------------------------
function authHeaders() {
  return state.key ? { Authorization: "Bearer " + state.key } : {};
}

async function api(path, options = {}) {
  const response = await fetch(path, { ...options, headers: { ...authHeaders(), ...(options.headers || {}) } });
  if (response.status === 401) {
    $("#key-form").hidden = false;
    $("#api-key").focus();
    throw new Error("this service needs an API key: enter it above");
  }
  if (!response.ok) {
    let message = response.status + " " + response.statusText;
    try {
      message = (await response.json()).error.message;
    } catch (_) { /* not JSON: keep the status line */ }
    throw new Error(message);
  }
  return response;
}

async function postJSON(path, body) {
  const response = await api(path, {
    method: "POST",
    headers: { "Content-Type": "application/json" },
    body: JSON.stringify(body),
  });
  return response.json();
}

function slideUrl(slide, rest) {
  return "/v1/slides/" + encodeURIComponent(slide) + rest;
}

function setStatus(element, message, isError = false) {
  element.textContent = message;
  element.classList.toggle("error", isError);
}

// ---- searching -------------------------------------------------------------------------------------
async function search(query) {
  state.query = query;
  state.pending = query;
  const status = $("#status");
  setStatus(status, "Searching…");
  const k = Number($("#k").value);
  const perSlide = $("#per-slide").value ? Number($("#per-slide").value) : null;
  try {
    const { hits } = await postJSON("/v1/search", { ...query, k, per_slide: perSlide });
    state.pending = null;
    showHits(hits);
    setStatus(status, hits.length ? `${hits.length} patches from ${new Set(hits.map((h) => h.slide)).size} slides.` : "No hits.");
    if (query.text) {
      rankSlides(query.text);
    } else {
      $("#slides").hidden = true;
    }
    return hits;
  } catch (error) {
    setStatus(status, "Search failed: " + error.message, true);
    return [];
  }
}

async function rankSlides(text) {
  try {
    const { slides } = await postJSON("/v1/search/slides", { texts: [text], k: 10 });
    const body = $("#slides tbody");
    body.replaceChildren(...slides.map((s) => row([s.rank, s.slide, s.case ?? "", s.label ?? "", s.score.toFixed(3)])));
    $("#slides").hidden = slides.length === 0;
  } catch (error) {
    $("#slides").hidden = true;
  }
}

function row(cells) {
  const tr = document.createElement("tr");
  for (const value of cells) {
    const td = document.createElement("td");
    td.textContent = String(value);
    tr.append(td);
  }
  return tr;
}

function showHits(hits) {
  const groups = new Map();
  for (const hit of hits) {
    if (!groups.has(hit.slide)) groups.set(hit.slide, []);
    groups.get(hit.slide).push(hit);
  }
  const sections = [...groups.values()].map(hitGroup);
  $("#groups").replaceChildren(...sections);
  $("#results").hidden = hits.length === 0;
}

function hitGroup(hits) {
  const first = hits[0];
  const section = document.createElement("section");
  section.className = "group";
  const title = document.createElement("h3");
  title.textContent = first.slide + " ";
  const details = document.createElement("small");
  details.textContent = [first.case && "case " + first.case, first.label && "label " + first.label].filter(Boolean).join(", ");
  title.append(details);
  const grid = document.createElement("div");
  grid.className = "grid";
  grid.append(...hits.map(hitTile));
  section.append(title, grid);
  return section;
}

function hitTile(hit) {
  const button = document.createElement("button");
  button.type = "button";
  button.className = "hit";
  button.dataset.slide = hit.slide;
  const image = document.createElement("img");
  image.alt = `Patch at ${hit.x}, ${hit.y} of ${hit.slide}`;
  loadImage(image, slideUrl(hit.slide, `/patch?x=${hit.x}&y=${hit.y}&patch_size=${hit.patch_size}&size=256`));
  const score = document.createElement("span");
  score.className = "score";
  score.textContent = `#${hit.rank} · ${hit.score.toFixed(3)}`;
  const meta = document.createElement("span");
  meta.textContent = [hit.slide, hit.case, hit.label].filter(Boolean).join(" · ");
  button.append(image, score, meta);
  button.addEventListener("click", () => openSlide(hit, true));
  return button;
}

async function loadImage(image, url) {
  try {
    const blob = await (await api(url)).blob();
    image.src = URL.createObjectURL(blob);
  } catch (error) {
    image.alt += " (not available: " + error.message + ")";
  }
}

// ---- the slide viewer ------------------------------------------------------------------------------
function openSlide(hit, remember) {
  const section = $("#viewer");
  section.hidden = false;
  $("#viewer-title").textContent = `${hit.slide} at ${hit.x}, ${hit.y}`;
  section.scrollIntoView({ block: "start" });
  $("#viewer-title").focus({ preventScroll: true });
  if (remember) saveUrl(hit);
  const status = $("#viewer-status");
  if (!window.OpenSeadragon) {
    setStatus(status, "The slide viewer is not installed on this service (run `make web`).", true);
    return;
  }
  setStatus(status, "Loading the slide…");
  const viewer = ensureViewer();
  viewer.ajaxHeaders = authHeaders();
  state.heatmap = null;
  viewer.addOnceHandler("open", () => {
    centreOn(viewer, hit);
    setStatus(status, "Loading the heatmap…");
    addHeatmap(viewer, hit.slide).catch((error) => setStatus(status, "No heatmap: " + error.message, true));
  });
  viewer.addOnceHandler("open-failed", (event) => setStatus(status, "The slide could not be opened: " + event.message, true));
  viewer.open(slideUrl(hit.slide, ".dzi"));
}

function ensureViewer() {
  if (!state.viewer) {
    state.viewer = OpenSeadragon({
      element: $("#osd"),
      prefixUrl: "/static/vendor/openseadragon/images/",
      loadTilesWithAjax: true,
      ajaxHeaders: authHeaders(),
      showNavigator: true,
      animationTime: 0.3,
      maxZoomPixelRatio: 2,
    });
  }
  return state.viewer;
}

function centreOn(viewer, hit) {
  const item = viewer.world.getItemAt(0);
  const size = hit.patch_size;
  viewer.viewport.fitBounds(item.imageToViewportRectangle(hit.x - size, hit.y - size, 3 * size, 3 * size), true);
  const outline = document.createElement("div");
  outline.className = "patch-outline";
  outline.id = "patch-outline";
  viewer.addOverlay({ element: outline, location: item.imageToViewportRectangle(hit.x, hit.y, size, size) });
}

async function addHeatmap(viewer, slide) {
  const query = state.query;
  let data;
  if (query && query.text) {
    data = await (await api(slideUrl(slide, "/heatmap?query=" + encodeURIComponent(query.text)))).json();
  } else if (query && query.image) {
    data = await postJSON(slideUrl(slide, "/heatmap"), { image: query.image });
  } else {
    setStatus($("#viewer-status"), "Open a hit from a search to see its heatmap.");
    return;
  }
  const dimensions = viewer.world.getItemAt(0).getContentSize();
  const url = heatmapImage(data, dimensions);
  viewer.addTiledImage({
    tileSource: { type: "image", url },
    x: 0,
    y: 0,
    width: 1,
    opacity: $("#heatmap-toggle").checked ? HEATMAP_OPACITY : 0,
    success: (event) => {
      state.heatmap = event.item;
      setStatus($("#viewer-status"), `Heatmap: ${data.scores.length} patches, red most similar.`);
    },
  });
}

function heatmapImage(data, dimensions) {
  const scale = Math.min(1, HEATMAP_MAX_SIDE / Math.max(dimensions.x, dimensions.y));
  const canvas = document.createElement("canvas");
  canvas.width = Math.max(1, Math.round(dimensions.x * scale));
  canvas.height = Math.max(1, Math.round(dimensions.y * scale));
  const context = canvas.getContext("2d");
  const low = Math.min(...data.scores);
  const span = Math.max(...data.scores) - low || 1;
  const side = Math.max(1, data.patch_size * scale);
  data.scores.forEach((score, i) => {
    context.fillStyle = colour((score - low) / span);
    context.fillRect(data.x[i] * scale, data.y[i] * scale, side, side);
  });
  return canvas.toDataURL("image/png");
}

function colour(t) {
  // blue (least similar) to yellow to red (most similar)
  const r = Math.round(255 * Math.min(1, 2 * t));
  const g = Math.round(255 * (t < 0.5 ? 2 * t : 2 - 2 * t));
  const b = Math.round(255 * Math.max(0, 1 - 2 * t));
  return `rgb(${r}, ${g}, ${b})`;
}

function closeViewer() {
  $("#viewer").hidden = true;
  const params = new URLSearchParams(location.search);
  ["slide", "x", "y", "patch_size"].forEach((name) => params.delete(name));
  history.replaceState(null, "", "?" + params);
}

// ---- the address holds the query (and the open slide), so a search can be shared ----------------------
function saveUrl(hit) {
  const params = new URLSearchParams();
  if (state.query && state.query.text) params.set("q", state.query.text);
  params.set("k", $("#k").value);
  if ($("#per-slide").value) params.set("per_slide", $("#per-slide").value);
  if (hit) {
    params.set("slide", hit.slide);
    params.set("x", hit.x);
    params.set("y", hit.y);
    params.set("patch_size", hit.patch_size);
  }
  history.pushState(null, "", "?" + params);
}

async function restoreFromUrl() {
  const params = new URLSearchParams(location.search);
  if (params.get("k")) $("#k").value = params.get("k");
  if (params.get("per_slide")) $("#per-slide").value = params.get("per_slide");
  const text = params.get("q");
  if (!text) return;
  $("#query").value = text;
  await search({ text });
  const slide = params.get("slide");
  if (slide) {
    const hit = { slide, x: Number(params.get("x")), y: Number(params.get("y")), patch_size: Number(params.get("patch_size")) };
    openSlide(hit, false);
  }
}

// ---- wiring ----------------------------------------------------------------------------------------
function readImageFile(file) {
  if (!file) return;
  const reader = new FileReader();
  reader.onload = () => {
    $("#viewer").hidden = true;
    search({ image: reader.result });
  };
  reader.onerror = () => setStatus($("#status"), "The file could not be read.", true);
  reader.readAsDataURL(file);
}

function wire() {
  $("#search-form").addEventListener("submit", (event) => {
    event.preventDefault();
    const text = $("#query").value.trim();
    if (!text) {
      setStatus($("#status"), "Type a query, or drop an image.", true);
      return;
    }
    $("#viewer").hidden = true;
    search({ text }).then(() => saveUrl(null));
  });
  $("#key-form").addEventListener("submit", (event) => {
    event.preventDefault();
    state.key = $("#api-key").value.trim();
    sessionStorage.setItem(KEY_STORAGE, state.key);
    $("#key-form").hidden = true;
    if (state.pending) search(state.pending);
  });
  const zone = $("#drop-zone");
  zone.addEventListener("dragover", (event) => {
    event.preventDefault();
    zone.classList.add("over");
  });
  zone.addEventListener("dragleave", () => zone.classList.remove("over"));
  zone.addEventListener("drop", (event) => {
    event.preventDefault();
    zone.classList.remove("over");
    readImageFile(event.dataTransfer.files[0]);
  });
  $("#image-file").addEventListener("change", (event) => readImageFile(event.target.files[0]));
  $("#heatmap-toggle").addEventListener("change", (event) => {
    if (state.heatmap) state.heatmap.setOpacity(event.target.checked ? HEATMAP_OPACITY : 0);
  });
  $("#viewer-close").addEventListener("click", closeViewer);
  document.addEventListener("keydown", (event) => {
    if (event.key === "Escape" && !$("#viewer").hidden) closeViewer();
  });
  window.addEventListener("popstate", () => restoreFromUrl());
  restoreFromUrl();
}

wire();
