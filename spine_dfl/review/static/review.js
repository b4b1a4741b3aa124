// spine-dfl review: the whole radiograph on a canvas with each vertebra's box, level, grade and six points.
// Every edit is posted at once (only the fields it changes: the server merges per field); the URL's hash
// keeps the study and vertebra, so a reload comes back to the same place.
"use strict";

const token = new URLSearchParams(location.search).get("token");
const COLOURS = ["#44cc44", "#ffdd33", "#ff9900", "#ff4444", "#44aaff", "#cc66ff", "#66dddd", "#dddddd"];
const POINT_NAMES = ["sa", "sm", "sp", "ia", "im", "ip"];
const $ = (id) => document.getElementById(id);
const canvas = $("view");
const ctx = canvas.getContext("2d");

const state = {
  classes: [], studies: [], progress: null, study: null, items: [], selected: 0,
  image: null, shown: null, view: { s: 1, x: 0, y: 0 }, window: 255, level: 128,
  drag: null, mode: null, loadToken: 0,
};

function withToken(path) {
  return token ? `${path}${path.includes("?") ? "&" : "?"}token=${encodeURIComponent(token)}` : path;
}

async function api(path, body) {
  const options = body === undefined ? {} :
    { method: "POST", headers: { "Content-Type": "application/json" }, body: JSON.stringify(body) };
  const response = await fetch(withToken(path), options);
  const data = await response.json();
  if (!response.ok) throw new Error(data.error || `HTTP ${response.status}`);
  return data;
}

function setStatus(text, kind) {
  $("status").textContent = text;
  document.body.dataset.state = kind;
}

// ------------------------------------------------------------------ the study's vertebrae
function buildItems(study) {
  const items = study.vertebrae.map((v) => ({ key: v.key, model: v, review: study.review[v.key] || null }));
  for (const [key, review] of Object.entries(study.review)) {
    if (review.added) items.push({ key, model: null, review });
  }
  return items;
}

function shown(item) {
  const r = item.review, m = item.model;
  const notAssessable = r !== null && r.assessable === "no";
  return {
    grade: notAssessable ? "" : (r && r.label) || (m ? m.pred : ""),
    level: (r && r.vertebra) || (m ? m.level : "") || "?",
    points: r ? r.points : m.points,
    box: r ? r.box : m.box,
    reviewed: r !== null && (r.label !== "" || notAssessable),
    notAssessable,
  };
}

function colourOf(grade) {
  const k = state.classes.indexOf(grade);
  return k < 0 ? "#999999" : COLOURS[k % COLOURS.length];
}

// ------------------------------------------------------------------ drawing
function fit() {
  const w = canvas.clientWidth, h = canvas.clientHeight, img = state.image;
  if (!img) return;
  const s = Math.min(w / img.width, h / img.height);
  state.view = { s, x: (w - img.width * s) / 2, y: (h - img.height * s) / 2 };
}

function applyWindow() {
  const img = state.image;
  if (!img) return;
  if (state.window >= 255 && state.level === 128) { state.shown = img; return; }
  const off = document.createElement("canvas");
  off.width = img.width; off.height = img.height;
  const octx = off.getContext("2d");
  octx.drawImage(img, 0, 0);
  const data = octx.getImageData(0, 0, off.width, off.height);
  const lut = new Uint8ClampedArray(256), low = state.level - state.window / 2;
  for (let v = 0; v < 256; v++) lut[v] = ((v - low) / state.window) * 255;
  const px = data.data;
  for (let i = 0; i < px.length; i += 4) { const g = lut[px[i]]; px[i] = g; px[i + 1] = g; px[i + 2] = g; }
  octx.putImageData(data, 0, 0);
  state.shown = off;
}

function draw() {
  const dpr = window.devicePixelRatio || 1, w = canvas.clientWidth, h = canvas.clientHeight;
  if (canvas.width !== Math.round(w * dpr) || canvas.height !== Math.round(h * dpr)) {
    canvas.width = Math.round(w * dpr); canvas.height = Math.round(h * dpr);
  }
  ctx.setTransform(dpr, 0, 0, dpr, 0, 0);
  ctx.fillStyle = "#000"; ctx.fillRect(0, 0, w, h);
  if (!state.shown) return;
  const { s, x, y } = state.view;
  ctx.imageSmoothingEnabled = s < 1;
  ctx.drawImage(state.shown, x, y, state.image.width * s, state.image.height * s);
  state.items.forEach((item, k) => drawItem(item, k === state.selected));
  const selected = state.items[state.selected];
  if (selected && selected.model && $("show-patches").checked) drawPatches(selected.model.patches);
  if (state.drag && state.drag.kind === "box") drawRubber(state.drag);
}

function toScreen(p) { return [p[0] * state.view.s + state.view.x, p[1] * state.view.s + state.view.y]; }
function toImage(sx, sy) { return [(sx - state.view.x) / state.view.s, (sy - state.view.y) / state.view.s]; }

function drawItem(item, selected) {
  const d = shown(item), colour = colourOf(d.grade);
  const [x0, y0] = toScreen([d.box[0], d.box[1]]), [x1, y1] = toScreen([d.box[2], d.box[3]]);
  if ($("show-boxes").checked) {
    ctx.setLineDash(d.reviewed ? [] : [6, 4]);
    ctx.lineWidth = selected ? 3 : 1.5;
    ctx.strokeStyle = d.notAssessable ? "#888888" : colour;
    ctx.strokeRect(x0, y0, x1 - x0, y1 - y0);
    if (d.notAssessable) { ctx.beginPath(); ctx.moveTo(x0, y0); ctx.lineTo(x1, y1); ctx.moveTo(x1, y0); ctx.lineTo(x0, y1); ctx.stroke(); }
    if (selected) { ctx.setLineDash([]); ctx.lineWidth = 1; ctx.strokeStyle = "#ffffff"; ctx.strokeRect(x0 - 3, y0 - 3, x1 - x0 + 6, y1 - y0 + 6); }
    ctx.setLineDash([]);
  }
  if ($("show-points").checked) {
    d.points.forEach((p, i) => {
      const [px, py] = toScreen(p);
      ctx.beginPath(); ctx.arc(px, py, selected ? 5 : 3, 0, 2 * Math.PI);
      ctx.fillStyle = i < 3 ? "#00e5ff" : "#ff40c0"; ctx.fill();
      ctx.lineWidth = 1; ctx.strokeStyle = "#000"; ctx.stroke();
    });
  }
  if ($("show-labels").checked) {
    const m = item.model, unanchored = m && m.flags.level_anchored === "no";
    const prob = m && !item.review ? ` ${Math.round(m.prob * 100)}%` : "";
    const text = `${d.level}${unanchored ? "?" : ""} ${d.notAssessable ? "n/a" : d.grade}${prob}${m && m.flags.transitional ? " ⚑" : ""}`;
    ctx.font = `${selected ? "bold " : ""}13px system-ui, sans-serif`;
    ctx.fillStyle = "rgba(0,0,0,.6)"; ctx.fillRect(x1 + 4, (y0 + y1) / 2 - 9, ctx.measureText(text).width + 6, 18);
    ctx.fillStyle = d.notAssessable ? "#bbbbbb" : colour; ctx.fillText(text, x1 + 7, (y0 + y1) / 2 + 4);
  }
}

function drawPatches(patches) {
  ctx.lineWidth = 1.5; ctx.font = "bold 12px system-ui, sans-serif";
  for (const patch of patches) {
    const [x0, y0] = toScreen([patch.x_min, patch.y_min]), [x1, y1] = toScreen([patch.x_max, patch.y_max]);
    ctx.strokeStyle = "#ffffff"; ctx.setLineDash([2, 2]); ctx.strokeRect(x0, y0, x1 - x0, y1 - y0); ctx.setLineDash([]);
    ctx.fillStyle = "#ffffff"; ctx.fillText(String(patch.rank), x0 + 2, y0 + 12);
  }
}

function drawRubber(drag) {
  ctx.setLineDash([4, 3]); ctx.strokeStyle = "#ffffff"; ctx.lineWidth = 1.5;
  ctx.strokeRect(drag.x0, drag.y0, drag.x1 - drag.x0, drag.y1 - drag.y0); ctx.setLineDash([]);
}

// ------------------------------------------------------------------ the side panel
function renderPanel() {
  const study = state.study, p = state.progress;
  $("study-name").textContent = `study ${study.id + 1} of ${state.studies.length}`;
  $("progress").textContent = `${p.studies_done} / ${p.studies} studies done · ` +
    `κ reader vs model ${p.kappa === null ? "–" : p.kappa.toFixed(2)} (${p.vertebrae_reviewed} vertebrae)`;
  const banner = $("banner");
  banner.hidden = study.in_distribution !== "no";
  banner.textContent = `Unlike the training images (shift score ${study.shift_score === null ? "?" : study.shift_score.toFixed(2)}): ` +
    "the model's grades and levels are not to be trusted here.";
  const list = $("list");
  list.replaceChildren(...state.items.map((item, k) => {
    const d = shown(item), li = document.createElement("li");
    li.dataset.key = item.key;
    li.className = k === state.selected ? "selected" : "";
    li.innerHTML = `<span></span> <b></b> <span class="done"></span>`;
    li.children[0].textContent = d.level;
    li.children[1].textContent = d.notAssessable ? "not assessable" : d.grade;
    li.children[1].className = `g${state.classes.indexOf(d.grade)}`;
    li.children[2].textContent = d.reviewed ? "✓" : "";
    li.addEventListener("click", () => select(k));
    return li;
  }));
  renderVertebra();
}

function renderVertebra() {
  const box = $("vertebra"), item = state.items[state.selected];
  if (!item) { box.textContent = "no vertebrae"; return; }
  const d = shown(item), m = item.model, flags = [];
  if (m && m.flags.level_anchored === "no") flags.push(["level not anchored (counted top to bottom)", true]);
  if (m && m.flags.transitional) flags.push([`transitional: ${m.flags.transitional}`, true]);
  if (state.study.in_distribution === "no") flags.push(["unlike the training data", true]);
  if (m && m.points_source === "box") flags.push(["points from the box: drag them onto the endplates", false]);
  if (m && m.flags.morph_grade) flags.push([`morphometry: ${m.flags.morph_grade} ${m.flags.morph_kind || ""}`, false]);
  if (!m) flags.push(["added by the reader", false]);
  const probs = m ? state.classes.map((c) => `${c} ${(m.probs[c] * 100).toFixed(0)}%`).join(" · ") : "";
  box.innerHTML = `<div><span class="level"></span> <span class="grade"></span></div>
    <div class="model"></div><div class="review"></div><div class="flags"></div>`;
  box.querySelector(".level").textContent = d.level;
  box.querySelector(".grade").textContent = d.notAssessable ? "not assessable" : d.grade;
  box.querySelector(".grade").className = `grade g${state.classes.indexOf(d.grade)}`;
  box.dataset.key = item.key;
  box.dataset.grade = d.notAssessable ? "" : d.grade;
  box.querySelector(".model").textContent = m ? `model: ${m.pred} (${probs})` : "";
  box.querySelector(".review").textContent = item.review
    ? `${d.reviewed ? "reviewed" : "in progress"} (${item.review.source}, edit ${item.review.version})` : "not reviewed";
  box.querySelector(".flags").replaceChildren(...flags.map(([text, bad]) => {
    const span = document.createElement("span"); span.className = bad ? "flag bad" : "flag"; span.textContent = text; return span;
  }));
}

// ------------------------------------------------------------------ navigation and loading
function select(k) {
  if (!state.items.length) return;
  state.selected = Math.max(0, Math.min(state.items.length - 1, k));
  history.replaceState(null, "", `${location.search}#study=${state.study.id}&v=${state.items[state.selected].key}`);
  renderPanel(); draw();
}

function loadImage(id) {
  return new Promise((resolve, reject) => {
    const img = new Image();
    img.onload = () => resolve(img);
    img.onerror = () => reject(new Error("the radiograph could not be loaded"));
    img.src = withToken(`api/image/${id}.png`);
  });
}

async function openStudy(id, key) {
  const ticket = ++state.loadToken;
  setStatus("loading", "loading");
  try {
    const [study, img] = await Promise.all([api(`api/study/${id}`), loadImage(id)]);
    if (ticket !== state.loadToken) return;
    await img.decode();
    state.study = study; state.image = img; state.items = buildItems(study);
    $("patches-toggle").hidden = !study.vertebrae.some((v) => v.patches.length);
    applyWindow(); fit();
    const k = state.items.findIndex((item) => item.key === key);
    select(k < 0 ? 0 : k);
    setStatus("ready", "ready");
  } catch (error) {
    if (ticket === state.loadToken) setStatus(error.message, "error");
  }
}

function moveStudy(step) {
  const next = state.study.id + step;
  if (next >= 0 && next < state.studies.length) openStudy(next);
}

// ------------------------------------------------------------------ editing
async function edit(key, changes, advance) {
  const item = state.items.find((i) => i.key === key);
  try {
    const result = await api("api/edit", { study: state.study.id, key, changes });
    item.review = result.review; state.progress = result.progress;
    if (advance && state.items[state.selected] && state.items[state.selected].key === key) select(state.selected + 1);
    setStatus("saved", "ready");
  } catch (error) { setStatus(error.message, "error"); }
  renderPanel(); draw();
}

async function acceptAllNormal() {
  try {
    await api("api/accept-normal", { study: state.study.id });
    const key = state.items[state.selected] && state.items[state.selected].key;
    await openStudy(state.study.id, key);
    setStatus("saved", "ready");
  } catch (error) { setStatus(error.message, "error"); }
}

async function addBox(box) {
  try {
    const result = await api("api/add", { study: state.study.id, box });
    state.items.push({ key: result.key, model: null, review: result.review });
    state.progress = result.progress;
    select(state.items.length - 1);
    setStatus("saved", "ready");
  } catch (error) { setStatus(error.message, "error"); }
}

function startLevelEdit() {
  const item = state.items[state.selected];
  if (!item) return;
  $("level-edit").hidden = false;
  const input = $("level-input");
  input.value = shown(item).level.replace("?", "");
  input.dataset.key = item.key;
  input.focus(); input.select();
}

$("level-input").addEventListener("keydown", (event) => {
  event.stopPropagation();
  if (event.key === "Enter") { edit(event.target.dataset.key, { vertebra: event.target.value }, false); }
  if (event.key === "Enter" || event.key === "Escape") { $("level-edit").hidden = true; canvas.focus(); }
});

document.addEventListener("keydown", (event) => {
  if (!state.study || event.target.tagName === "INPUT" && event.target.type !== "checkbox" && event.target.type !== "range") return;
  const item = state.items[state.selected], key = event.key;
  const grade = /^[0-9]$/.test(key) ? state.classes[Number(key)] : undefined;
  if (grade !== undefined && item) edit(item.key, { label: grade, assessable: "yes" }, true);
  else if (key === "ArrowDown" || key === "j") select(state.selected + 1);
  else if (key === "ArrowUp" || key === "k") select(state.selected - 1);
  else if (key === "ArrowRight" || key === "n" || key === "PageDown") moveStudy(1);
  else if (key === "ArrowLeft" || key === "p" || key === "PageUp") moveStudy(-1);
  else if (key === "A") acceptAllNormal();
  else if ((key === "Enter" || key === "a") && item) edit(item.key, { label: shown(item).grade || state.classes[0], assessable: "yes" }, true);
  else if (key === "x" && item) edit(item.key, { assessable: "no" }, true);
  else if (key === "l") startLevelEdit();
  else if (key === "b") { state.mode = "box"; setStatus("drag the missed vertebra's box", "ready"); }
  else if (key === "f") { fit(); draw(); }
  else if (key === "t") { $("show-patches").checked = !$("show-patches").checked; draw(); }
  else if (key === "Escape") { state.mode = null; state.drag = null; draw(); }
  else return;
  event.preventDefault();
});

// ------------------------------------------------------------------ mouse: points, pan, zoom, box, window
function hitPoint(sx, sy) {
  const order = [state.selected, ...state.items.keys()].filter((k, i, all) => all.indexOf(k) === i && state.items[k]);
  for (const k of order) {
    const points = shown(state.items[k]).points;
    for (let i = 0; i < 6; i++) {
      const [px, py] = toScreen(points[i]);
      if (Math.hypot(px - sx, py - sy) <= 8) return { k, i };
    }
  }
  return null;
}

function localXY(event) { const r = canvas.getBoundingClientRect(); return [event.clientX - r.left, event.clientY - r.top]; }

canvas.addEventListener("contextmenu", (event) => event.preventDefault());
canvas.addEventListener("mousedown", (event) => {
  if (!state.study) return;
  canvas.focus();
  const [sx, sy] = localXY(event);
  if (event.button === 2) { state.drag = { kind: "window", sx, sy, w: state.window, l: state.level }; return; }
  if (state.mode === "box") { state.drag = { kind: "box", x0: sx, y0: sy, x1: sx, y1: sy }; return; }
  const hit = $("show-points").checked ? hitPoint(sx, sy) : null;
  if (hit) {
    const item = state.items[hit.k];
    state.drag = { kind: "point", item, i: hit.i, points: shown(item).points.map((p) => p.slice()) };
    if (hit.k !== state.selected) select(hit.k);
    return;
  }
  state.drag = { kind: "pan", sx, sy, x: state.view.x, y: state.view.y };
});

window.addEventListener("mousemove", (event) => {
  const drag = state.drag;
  if (!drag) return;
  const [sx, sy] = localXY(event);
  if (drag.kind === "pan") { state.view.x = drag.x + sx - drag.sx; state.view.y = drag.y + sy - drag.sy; }
  else if (drag.kind === "box") { drag.x1 = sx; drag.y1 = sy; }
  else if (drag.kind === "point") { drag.points[drag.i] = toImage(sx, sy); drag.moved = true; showDragged(drag); }
  else if (drag.kind === "window") {
    state.window = Math.max(1, Math.min(255, drag.w + (sx - drag.sx)));
    state.level = Math.max(0, Math.min(255, drag.l + (sy - drag.sy)));
    $("window").value = state.window; $("level").value = state.level;
    return;
  }
  draw();
});

function showDragged(drag) {
  // draw the dragged points at once, before the server has them
  const xs = drag.points.map((p) => p[0]), ys = drag.points.map((p) => p[1]);
  drag.item.review = { ...(drag.item.review || { label: "", vertebra: "", assessable: "yes", source: "reader", version: 0, added: false }),
    points: drag.points, box: [Math.min(...xs), Math.min(...ys), Math.max(...xs), Math.max(...ys)] };
}

window.addEventListener("mouseup", () => {
  const drag = state.drag;
  state.drag = null;
  if (!drag) return;
  if (drag.kind === "point" && drag.moved) {
    edit(drag.item.key, { points: drag.points.map((p) => [Math.round(p[0] * 100) / 100, Math.round(p[1] * 100) / 100]) }, false);
  } else if (drag.kind === "box") {
    state.mode = null;
    const [ax, ay] = toImage(Math.min(drag.x0, drag.x1), Math.min(drag.y0, drag.y1));
    const [bx, by] = toImage(Math.max(drag.x0, drag.x1), Math.max(drag.y0, drag.y1));
    if (bx - ax > 2 && by - ay > 2) addBox([ax, ay, bx, by]); else draw();
  } else if (drag.kind === "window") { applyWindow(); draw(); }
});

canvas.addEventListener("wheel", (event) => {
  event.preventDefault();
  const [sx, sy] = localXY(event), factor = Math.exp(-event.deltaY * 0.0015);
  const [ix, iy] = toImage(sx, sy);
  state.view.s *= factor; state.view.x = sx - ix * state.view.s; state.view.y = sy - iy * state.view.s;
  draw();
}, { passive: false });

for (const id of ["window", "level"]) {
  $(id).addEventListener("input", () => { state.window = Number($("window").value); state.level = Number($("level").value); applyWindow(); draw(); });
}
for (const id of ["show-boxes", "show-points", "show-labels", "show-patches"]) $(id).addEventListener("change", draw);
window.addEventListener("resize", () => { fit(); draw(); });

// ------------------------------------------------------------------ start
(async () => {
  try {
    const overview = await api("api/studies");
    state.classes = overview.classes; state.studies = overview.studies; state.progress = overview.progress;
    $("grade-keys").textContent = `0 – ${Math.min(state.classes.length, 10) - 1}`;
    $("grade-names").textContent = state.classes.slice(0, 10).map((c, k) => `${k} ${c}`).join(", ");
    const hash = new URLSearchParams(location.hash.slice(1));
    const id = Math.min(Number(hash.get("study") || 0), state.studies.length - 1);
    await openStudy(Number.isFinite(id) && id >= 0 ? id : 0, hash.get("v"));
  } catch (error) { setStatus(error.message, "error"); }
})();
