// segearth serve: the web page. Plain JavaScript with no dependency, so it works with no internet.
"use strict";

const $ = (id) => document.getElementById(id);
const state = { image: null, answer: null, view: { scale: 1, x: 0, y: 0 } };

// ---- API calls: every failure becomes one readable sentence -------------------------------------
// A server started with --token wants it on every request; the page asks once and keeps it for the
// tab (sessionStorage). Images and downloads are fetched the same way (an <img src> cannot send it).
const TOKEN_KEY = "segearth-token";

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
    413: "File too large",
    422: "Cannot use this input",
    503: "The model is busy",
    504: "Timed out",
    507: "Server storage full",
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
  state.answer = null;
  showAnswer(null);
  $("history").replaceChildren();
  $("meta").replaceChildren();
  $("ask").disabled = $("delete").disabled = !id;
  $("image").removeAttribute("src");
  $("placeholder").hidden = !!id;
  if (!id) return;
  try {
    state.image = await api("/images/" + id);
    showMeta(state.image);
    const img = $("image");
    img.onload = fitView;
    img.src = await blobUrl(state.image.preview.url);
    for (const answer of await api("/images/" + id + "/answers")) addHistory(answer);
  } catch (err) {
    showError(err.message);
  }
}

function showMeta(m) {
  const fmt = (v) => Number(v).toLocaleString(undefined, { maximumFractionDigits: 6 });
  const rows = [
    ["file", m.filename],
    ["format", m.format + ", " + (m.size_bytes / 1048576).toFixed(2) + " MB"],
    ["size", m.width + " × " + m.height + " px"],
    ["bands", m.bands + " (" + [...new Set(m.dtypes)].join(", ") + "), shown as " + m.rgb_bands.join(",")],
    ["CRS", m.crs || "none (pixel coordinates)"],
    ["bounds", m.bounds.map(fmt).join(", ")],
  ];
  for (const note of m.notices) rows.push(["note", note]);
  $("meta").replaceChildren(...rows.flatMap(([k, v]) => {
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
      body: JSON.stringify({ questions: [question], format: "png" }),
    });
    const seconds = ((performance.now() - started) / 1000).toFixed(1);
    setStatus("Answered in " + seconds + " s" + (result.cached_features ? " (cached image features)." : "."));
    for (const answer of result.answers) addHistory(answer);
    showAnswer(result.answers[result.answers.length - 1]);
  } catch (err) {
    setStatus("");
    showError(err.message);
  } finally {
    $("ask").disabled = !state.image;
  }
}

function addHistory(answer) {
  const li = document.createElement("li");
  li.textContent = answer.question + " — " + (100 * answer.scores.target_fraction).toFixed(1) + "%";
  li.dataset.number = answer.number;
  li.addEventListener("click", () => showAnswer(answer));
  $("history").append(li);
}

function showAnswer(answer) {
  state.answer = answer;
  const overlay = $("overlay");
  for (const li of $("history").children) {
    li.classList.toggle("active", !!answer && Number(li.dataset.number) === answer.number);
  }
  if (!answer) {
    overlay.hidden = true;
    overlay.removeAttribute("src");
    $("downloads").hidden = true;
    $("scores").textContent = "No answer shown.";
    return;
  }
  overlay.onload = () => { overlay.hidden = false; };
  overlay.onerror = () => showError("The mask image could not be loaded.");
  blobUrl(answer.downloads.png).then((url) => { if (state.answer === answer) overlay.src = url; },
                                     (err) => showError(err.message));
  $("downloads").hidden = false;
  const s = answer.scores;
  const rows = [
    ["question", answer.question],
    ["target", (100 * s.target_fraction).toFixed(2) + " % of the image"],
    ["mean probability", s.mean_probability.toFixed(3)],
    ["regions", String(s.regions)],
  ];
  if (s.area_m2 !== null) rows.push(["area", (s.area_m2 / 1e6).toFixed(3) + " km²"]);
  const table = document.createElement("table");
  for (const [k, v] of rows) table.insertRow().append(...[k, v].map((t) => {
    const td = document.createElement("td");
    td.textContent = t;
    return td;
  }));
  $("scores").replaceChildren(table);
}

// ---- pan, zoom and the cursor's coordinates -----------------------------------------------------
function applyView() {
  const v = state.view;
  $("stage").style.transform = "translate(" + v.x + "px," + v.y + "px) scale(" + v.scale + ")";
}

function fitView() {
  if (!state.image) return;
  const box = $("viewer").getBoundingClientRect();
  const { width, height } = state.image.preview;
  const scale = Math.min(box.width / width, box.height / height) * 0.95;
  state.view = { scale, x: (box.width - width * scale) / 2, y: (box.height - height * scale) / 2 };
  applyView();
}

function zoomAt(factor, cx, cy) {
  const v = state.view;
  const scale = Math.min(64, Math.max(0.05, v.scale * factor));
  // Keep the image point under (cx, cy) fixed while the scale changes.
  v.x = cx - (cx - v.x) * (scale / v.scale);
  v.y = cy - (cy - v.y) * (scale / v.scale);
  v.scale = scale;
  applyView();
}

function showCoordinates(event) {
  const m = state.image;
  if (!m) return;
  const box = $("viewer").getBoundingClientRect();
  const v = state.view;
  const px = (event.clientX - box.left - v.x) / v.scale;
  const py = (event.clientY - box.top - v.y) / v.scale;
  if (px < 0 || py < 0 || px > m.preview.width || py > m.preview.height) {
    $("coords").textContent = "outside the image";
    return;
  }
  const col = px * m.width / m.preview.width;
  const row = py * m.height / m.preview.height;
  let text = "pixel " + Math.floor(col) + ", " + Math.floor(row);
  if (m.georeferenced) {
    const [a, b, c, d, e, f] = m.transform;
    const x = a * col + b * row + c;
    const y = d * col + e * row + f;
    const digits = Math.abs(a) < 0.01 ? 6 : 2; // degrees need more decimals than metres
    text += " · " + (m.crs || "custom CRS") + " · x " + x.toFixed(digits) + " · y " + y.toFixed(digits);
  }
  $("coords").textContent = text;
}

function setUpViewer() {
  const viewer = $("viewer");
  let drag = null;
  viewer.addEventListener("wheel", (event) => {
    event.preventDefault();
    const box = viewer.getBoundingClientRect();
    zoomAt(event.deltaY < 0 ? 1.2 : 1 / 1.2, event.clientX - box.left, event.clientY - box.top);
  }, { passive: false });
  viewer.addEventListener("pointerdown", (event) => {
    if (event.target.closest("#zoom")) return;
    drag = { x: event.clientX - state.view.x, y: event.clientY - state.view.y };
    viewer.classList.add("dragging");
    viewer.setPointerCapture(event.pointerId);
  });
  viewer.addEventListener("pointermove", (event) => {
    if (drag) {
      state.view.x = event.clientX - drag.x;
      state.view.y = event.clientY - drag.y;
      applyView();
    }
    showCoordinates(event);
  });
  viewer.addEventListener("pointerup", () => { drag = null; viewer.classList.remove("dragging"); });
  viewer.addEventListener("dblclick", fitView);
  const centre = () => { const b = viewer.getBoundingClientRect(); return [b.width / 2, b.height / 2]; };
  $("zoom-in").addEventListener("click", () => zoomAt(1.5, ...centre()));
  $("zoom-out").addEventListener("click", () => zoomAt(1 / 1.5, ...centre()));
  $("zoom-fit").addEventListener("click", fitView);
  window.addEventListener("resize", fitView);
}

// ---- start --------------------------------------------------------------------------------------
async function start() {
  setUpViewer();
  $("file").addEventListener("change", () => { if ($("file").files[0]) upload($("file").files[0]); });
  $("images").addEventListener("change", () => selectImage($("images").value));
  $("delete").addEventListener("click", deleteImage);
  $("ask-form").addEventListener("submit", ask);
  $("opacity").addEventListener("input", () => { $("overlay").style.opacity = $("opacity").value; });
  $("overlay").style.opacity = $("opacity").value;
  $("error-close").addEventListener("click", clearError);
  $("token-form").addEventListener("submit", useToken);
  for (const fmt of ["geotiff", "geojson", "png"]) {
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
