// segearth serve: the web page. Plain JavaScript plus the vendored Leaflet (static/vendor), so it
// works with no internet; the only outside request is a basemap the user chooses to add.
"use strict";

const $ = (id) => document.getElementById(id);
const state = { image: null, answer: null, map: null, imageLayer: null, answerLayer: null, maskLayer: null,
                basemap: null };
const DOWNLOADS = ["geotiff", "probabilities", "geojson", "gpkg", "png", "preview"];

// ---- API calls: every failure becomes one readable sentence -------------------------------------
// A server started with --token wants it on every request; the page asks once and keeps it for the
// tab (sessionStorage). Images and downloads are fetched the same way (an <img src> cannot send it).
const TOKEN_KEY = "segearth-token";
const BASEMAP_KEY = "segearth-basemap";

async function request(path, options = {}) {
  const headers = new Headers(options.headers || {});
  const token = sessionStorage.getItem(TOKEN_KEY);
  if (token) headers.set("Authorization", "Bearer " + token);
  let response;
  try {
    response = await fetch(path, { ...options, headers });
  } catch (err) {
    throw new Error("The server cannot be reached (" + err.message + "). Is segearth serve still running?");
  }
  if (response.status === 401) askForToken(!!token);
  if (!response.ok) throw new Error(await errorMessage(response));
  return response;
}

async function api(path, options = {}) {
  const response = await request(path, options);
  return response.status === 204 ? null : response.json();
}

async function blobUrl(path) {
  return URL.createObjectURL(await (await request(path)).blob());
}

async function download(path) {
  const response = await request(path);
  const match = /filename="?([^";]+)"?/.exec(response.headers.get("Content-Disposition") || "");
  const link = document.createElement("a");
  link.href = URL.createObjectURL(await response.blob());
  link.download = match ? match[1] : path.split("/").pop();
  document.body.append(link);
  link.click();
  link.remove();
  setTimeout(() => URL.revokeObjectURL(link.href), 60000);
}

function askForToken(wrong) {
  $("token-note").textContent = wrong ? "That token was refused; enter it again." : "This server needs an access token.";
  $("token-dialog").hidden = false;
  $("token").focus();
}

function useToken(event) {
  event.preventDefault();
  sessionStorage.setItem(TOKEN_KEY, $("token").value.trim());
  location.reload();
}

async function errorMessage(response) {
  let detail = response.statusText;
  try {
    const body = await response.json();
    detail = typeof body.detail === "string" ? body.detail : JSON.stringify(body.detail);
  } catch (_) { /* not JSON: keep the status text */ }
  const hints = {
    400: "Refused",
    401: "Access token needed",
    403: "Refused",
    404: "Not found",
    413: "Too large",
    422: "Cannot use this input",
    500: "Server error",
    503: "The server is busy",
    504: "Timed out",
    409: "Server storage full",
  };
  let message = (hints[response.status] || "Error " + response.status) + ": " + detail;
  const retry = response.headers.get("Retry-After");
  if (response.status === 503 && retry) message += " (retry in " + retry + " s)";
  return message;
}

function showError(message) {
  $("error-text").textContent = message;
  $("error").hidden = false;
}

function clearError() {
  $("error").hidden = true;
}

function setStatus(text) {
  $("status").textContent = text;
}

function rows(target, pairs) {
  const table = document.createElement("table");
  for (const [k, v] of pairs) table.insertRow().append(...[k, v].map((t) => {
    const td = document.createElement("td");
    td.textContent = t;
    return td;
  }));
  target.replaceChildren(table);
}

// ---- the map: Web Mercator for georeferenced images, a pixel plane otherwise --------------------
// The server warps each georeferenced preview onto a Web Mercator grid and gives its lon/lat
// corners, so an image overlay stretched between them is exact; answers are WGS84 GeoJSON.
function geographic() {
  return !state.image || !state.image.map || state.image.map.mode === "geographic";
}

function toLatLng(coords) {
  const flip = state.image && state.image.map && state.image.map.flip_y;
  return L.latLng(flip ? -coords[1] : coords[1], coords[0], coords[2]);
}

function newMap() {
  if (state.map) state.map.remove();
  state.imageLayer = state.answerLayer = state.maskLayer = state.basemap = null;
  const map = L.map("map", {
    crs: geographic() ? L.CRS.EPSG3857 : L.CRS.Simple,
    minZoom: geographic() ? 1 : -6,
    maxZoom: 24,
    zoomSnap: 0.25,
    attributionControl: false,
    worldCopyJump: geographic(),
  });
  if (geographic()) L.control.scale({ imperial: false }).addTo(map);
  // Bottom to top: basemap tiles, the image, the answer as a raster, the answer's polygons (overlayPane).
  map.createPane("image").style.zIndex = 350;
  map.createPane("mask").style.zIndex = 380;
  map.setView([0, 0], geographic() ? 2 : 0);
  map.on("mousemove", showCoordinates);
  map.on("mouseout", () => { $("coords").textContent = "—"; });
  state.map = map;
  window.segearthMap = map; // for the browser test and the console
  applyBasemap();
}

function applyBasemap() {
  const url = $("basemap").value.trim();
  localStorage.setItem(BASEMAP_KEY, url);
  if (state.basemap) state.basemap.remove();
  state.basemap = null;
  if (!url || !geographic()) return;
  if (!/\{z\}/.test(url) || !/\{x\}/.test(url) || !/\{y\}/.test(url)) {
    showError("A basemap URL needs {z}, {x} and {y} in it.");
    return;
  }
  state.basemap = L.tileLayer(url, { maxZoom: 24, maxNativeZoom: 19 }).addTo(state.map);
  state.basemap.bringToBack();
}

function showCoordinates(event) {
  const p = event.latlng;
  if (geographic()) {
    const lon = ((p.lng + 540) % 360) - 180;
    $("coords").textContent = "lon " + lon.toFixed(6) + "° · lat " + p.lat.toFixed(6) + "°";
  } else {
    const y = state.image.map.flip_y ? -p.lat : p.lat;
    $("coords").textContent = "x " + p.lng.toFixed(1) + " · y " + y.toFixed(1) + " (pixel coordinates)";
  }
}

// ---- images: upload, pick, delete ---------------------------------------------------------------
async function refreshImages(selectId) {
  const images = await api("/images");
  const select = $("images");
  select.replaceChildren(new Option("— none —", ""));
  for (const img of images) {
    select.add(new Option(img.filename + " (" + img.width + "×" + img.height + ")", img.id));
  }
  select.value = selectId || "";
}

async function upload(file) {
  clearError();
  const form = new FormData();
  form.append("file", file);
  const bands = $("bands").value.trim();
  const query = bands ? "?bands=" + encodeURIComponent(bands) : "";
  setStatus("Uploading " + file.name + "…");
  try {
    const meta = await api("/images" + query, { method: "POST", body: form });
    await refreshImages(meta.id);
    await selectImage(meta.id);
    setStatus("Uploaded " + meta.filename + ".");
  } catch (err) {
    setStatus("");
    showError(err.message);
  } finally {
    $("file").value = "";
  }
}

async function selectImage(id) {
  clearError();
  state.image = null;
  showAnswer(null);
  $("history").replaceChildren();
  $("meta").replaceChildren();
  $("ask").disabled = $("delete").disabled = !id;
  $("placeholder").hidden = !!id;
  if (!id) {
    newMap();
    return;
  }
  try {
    state.image = await api("/images/" + id);
    showMeta(state.image);
    newMap();
    const view = state.image.map;
    if (view) {
      const bounds = L.latLngBounds(view.bounds);
      const url = await blobUrl(view.url);
      state.imageLayer = L.imageOverlay(url, bounds, { opacity: Number($("image-opacity").value), pane: "image" })
        .addTo(state.map);
      state.map.fitBounds(bounds);
    }
    for (const answer of await api("/images/" + id + "/answers")) addHistory(answer);
  } catch (err) {
    showError(err.message);
  }
}

function showMeta(m) {
  const fmt = (v) => Number(v).toLocaleString(undefined, { maximumFractionDigits: 6 });
  const pairs = [
    ["file", m.filename],
    ["format", m.format + ", " + (m.size_bytes / 1048576).toFixed(2) + " MB"],
    ["size", m.width + " × " + m.height + " px"],
    ["bands", m.bands + " (" + [...new Set(m.dtypes)].join(", ") + "), shown as " + m.rgb_bands.join(",")],
    ["CRS", m.crs || "none (pixel coordinates)"],
    ["bounds", m.bounds.map(fmt).join(", ")],
  ];
  for (const note of m.notices) pairs.push(["note", note]);
  $("meta").replaceChildren(...pairs.flatMap(([k, v]) => {
    const dt = document.createElement("dt");
    const dd = document.createElement("dd");
    dt.textContent = k;
    dd.textContent = v;
    return [dt, dd];
  }));
}

async function deleteImage() {
  if (!state.image) return;
  try {
    await api("/images/" + state.image.id, { method: "DELETE" });
    await refreshImages("");
    await selectImage("");
  } catch (err) {
    showError(err.message);
  }
}

// ---- questions and answers ----------------------------------------------------------------------
async function ask(event) {
  event.preventDefault();
  const question = $("question").value.trim();
  if (!state.image || !question) return;
  clearError();
  $("ask").disabled = true;
  setStatus("Thinking about “" + question + "”…");
  const started = performance.now();
  try {
    const result = await api("/images/" + state.image.id + "/ask", {
      method: "POST",
      headers: { "Content-Type": "application/json" },
      body: JSON.stringify({ questions: [question], format: "geojson" }),
    });
    const seconds = ((performance.now() - started) / 1000).toFixed(1);
    setStatus("Answered in " + seconds + " s" + (result.cached_features ? " (cached image features)." : "."));
    for (const answer of result.answers) addHistory(answer);
    await showAnswer(result.answers[result.answers.length - 1]);
  } catch (err) {
    setStatus("");
    showError(err.message);
  } finally {
    $("ask").disabled = !state.image;
  }
}

function addHistory(answer) {
  const li = document.createElement("li");
  const found = answer.scores.present ? (100 * answer.scores.target_fraction).toFixed(1) + "%" : "not here";
  li.textContent = answer.question + " — " + found;
  li.dataset.number = answer.number;
  li.addEventListener("click", () => showAnswer(answer));
  $("history").append(li);
}

function area(properties) {
  if (properties.area_m2 !== undefined) {
    const m2 = properties.area_m2;
    return m2 >= 1e5 ? (m2 / 1e6).toFixed(3) + " km²" : Math.round(m2).toLocaleString() + " m²";
  }
  return Math.round(properties.area_px || 0).toLocaleString() + " px";
}

function popup(answer, properties) {
  const box = document.createElement("div");
  rows(box, [
    ["question", answer.question],
    ["area", area(properties)],
    ["mean probability", (properties.mean_probability ?? 0).toFixed(3)],
  ]);
  return box;
}

async function showAnswer(answer) {
  state.answer = answer;
  if (state.answerLayer) state.answerLayer.remove();
  if (state.maskLayer) state.maskLayer.remove();
  state.answerLayer = state.maskLayer = null;
  for (const li of $("history").children) {
    li.classList.toggle("active", !!answer && Number(li.dataset.number) === answer.number);
  }
  $("downloads").hidden = !answer;
  if (!answer) {
    $("scores").textContent = "No answer shown.";
    return;
  }
  const s = answer.scores;
  const pairs = [
    ["question", answer.question],
    ["target", s.present ? (100 * s.target_fraction).toFixed(2) + " % of the valid pixels"
                         : "not here (max probability " + s.max_probability.toFixed(2) + ", below the model's threshold)"],
    ["mean probability", s.mean_probability.toFixed(3)],
    ["regions", String(s.regions)],
  ];
  if (s.area_m2 !== null) pairs.push(["area", (s.area_m2 / 1e6).toFixed(3) + " km²"]);
  rows($("scores"), pairs);
  try {
    const view = state.image && state.image.map;
    const [collection, maskUrl] = await Promise.all([
      api(answer.downloads.geojson),
      answer.overlay && view ? blobUrl(answer.overlay) : Promise.resolve(null),
    ]);
    if (state.answer !== answer) return; // another answer was picked meanwhile
    if (maskUrl) { // the mask as a raster on the image's own map grid: same bounds, nodata transparent
      state.maskLayer = L.imageOverlay(maskUrl, L.latLngBounds(view.bounds), {
        opacity: Number($("mask-opacity").value), pane: "mask", className: "answer-raster",
      }).addTo(state.map);
    }
    const opacity = Number($("answer-opacity").value);
    state.answerLayer = L.geoJSON(collection, {
      coordsToLatLng: toLatLng,
      style: { color: "#ff3b30", weight: 1.5, opacity: Math.min(1, opacity + 0.4), fillColor: "#ff3b30",
               fillOpacity: opacity, className: "answer-polygon" },
      onEachFeature: (feature, layer) => layer.bindPopup(popup(answer, feature.properties)),
    }).addTo(state.map);
    if (!state.imageLayer && collection.features.length) state.map.fitBounds(state.answerLayer.getBounds());
  } catch (err) {
    showError(err.message);
  }
}

// ---- start --------------------------------------------------------------------------------------
async function start() {
  $("basemap").value = localStorage.getItem(BASEMAP_KEY) || "";
  newMap();
  $("file").addEventListener("change", () => { if ($("file").files[0]) upload($("file").files[0]); });
  $("images").addEventListener("change", () => selectImage($("images").value));
  $("delete").addEventListener("click", deleteImage);
  $("ask-form").addEventListener("submit", ask);
  $("image-opacity").addEventListener("input", () => {
    if (state.imageLayer) state.imageLayer.setOpacity(Number($("image-opacity").value));
  });
  $("mask-opacity").addEventListener("input", () => {
    if (state.maskLayer) state.maskLayer.setOpacity(Number($("mask-opacity").value));
  });
  $("answer-opacity").addEventListener("input", () => {
    const opacity = Number($("answer-opacity").value);
    if (state.answerLayer) state.answerLayer.setStyle({ fillOpacity: opacity, opacity: Math.min(1, opacity + 0.4) });
  });
  $("basemap").addEventListener("change", applyBasemap);
  $("error-close").addEventListener("click", clearError);
  $("token-form").addEventListener("submit", useToken);
  for (const fmt of DOWNLOADS) {
    $("dl-" + fmt).addEventListener("click", (event) => {
      event.preventDefault();
      if (state.answer) download(state.answer.downloads[fmt]).catch((err) => showError(err.message));
    });
  }
  try {
    const [model] = await api("/models");
    $("model").textContent = model.name + " · " + model.task + " · " + model.device;
    await refreshImages("");
  } catch (err) {
    showError(err.message);
  }
}

start();
