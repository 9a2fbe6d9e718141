// CondInst Studio canvas editor (runs as js_on_load of a gr.HTML; `element`, `trigger`, `props`, `watch`, `server`).
// Scenes (JSON: see app/web/canvas.py) arrive as props.value from the page's events, or as the answer of the edit
// channel: edits go to `server.edit({action: "stroke" | "polygon" | "pick" | ...})` (app/web/edit_channel.py), one
// after another, geometry in ORIGINAL-image pixels. The canvas draws a stroke or polygon at once and shows the
// server's answer when it comes (a refused edit is dropped, with the reason); then it asks the page to refresh
// its side panels (trigger("submit")) without waiting for them.
const root = element.querySelector(".ce-root");
const canvas = element.querySelector(".ce-canvas");
const ctx = canvas.getContext("2d");
const $ = (sel) => element.querySelector(sel);
const st = {
  scene: null, img: null, imgId: null, masks: new Map(), refineImg: null, pictures: new Map(),
  tool: "select", size: 21, newClass: null, opacity: 0.45, s: 1, ox: 0, oy: 0,
  stroke: null, pending: [], poly: [], pos: [], neg: [], mouse: null, space: false, pan: null,
};

function k() { return st.scene && st.scene.image ? st.scene.image.pw / st.scene.image.width : 1; }
function toImage(cx, cy) {  // canvas CSS pixels -> original-image pixel indices
  return [Math.floor((cx - st.ox) / st.s / k()), Math.floor((cy - st.oy) / st.s / k())];
}
function toScreen(x, y) { return [st.ox + x * k() * st.s, st.oy + y * k() * st.s]; }
function local(ev) { const r = canvas.getBoundingClientRect(); return [ev.clientX - r.left, ev.clientY - r.top]; }
let queue = Promise.resolve();  // edits are sent one after another, in the order they were made
function held() { const have = {}; st.masks.forEach((m, id) => { have[id] = m.key; }); return have; }
function classNamed(label) {  // [name, id] of a dropdown's label: "name (id)" (app.service.categories), or the name
  return ((st.scene && st.scene.classes) || []).find((c) => label === c[0] + " (" + c[1] + ")" || label === c[0]);
}
function newClass() {  // a digit key's class, else the page's "class for new instances" dropdown (0: the model's choice)
  if (st.newClass != null) return st.newClass;
  const input = document.querySelector("#new-class input"), hit = input && classNamed(input.value);
  return hit ? hit[1] : 0;
}
function say(text, ok) {
  const box = $(".ce-msg"); if (!box) return;
  box.textContent = text || ""; box.classList.toggle("ce-refused", !ok);
  clearTimeout(say.timer); if (text) say.timer = setTimeout(() => { box.textContent = ""; }, ok ? 4000 : 8000);
}
function send(data) {
  data.class = newClass();
  queue = queue.then(() => server.edit({...data, have: held(), pictures: Array.from(st.pictures.keys())}))
    .then((answer) => {
    if (!answer) return;
    if (answer.scene) setScene(answer.scene);
    say(answer.message, answer.ok);
    for (const id of ["undo", "redo"]) {  // at once: a key pressed right after this edit must find them enabled
      const button = document.getElementById(id); if (button && id in answer) button.disabled = !answer[id];
    }
    trigger("submit", {message: answer.message || "", ok: !!answer.ok});
  }).catch((err) => { st.pending = []; st.poly = []; say("The server did not answer: " + err, false); draw(); });
  return queue;
}

function loadImage(src, onload) { const im = new Image(); im.onload = () => { onload && onload(); draw(); }; im.src = src; return im; }

// The canvas takes the height the viewport leaves below its top (the message line under it stays in view), at
// least 260 px; without an image it is a short band saying how to add one.
function fitHeight() {
  const top = canvas.getBoundingClientRect().top + window.scrollY, foot = root.querySelector(".ce-foot");
  const want = st.scene && st.scene.image ? Math.max(260, window.innerHeight - top - (foot ? foot.offsetHeight : 20) - 10)
    : 120;
  if (Math.abs(canvas.clientHeight - want) > 1) canvas.style.height = Math.round(want) + "px";
}
function resize() {
  const dpr = window.devicePixelRatio || 1, w = canvas.clientWidth, h = canvas.clientHeight;
  if (canvas.width !== Math.round(w * dpr) || canvas.height !== Math.round(h * dpr)) {
    canvas.width = Math.round(w * dpr); canvas.height = Math.round(h * dpr);
  }
}
function fit() {
  const im = st.scene && st.scene.image; if (!im) return;
  fitHeight(); resize();
  const cw = canvas.clientWidth, ch = canvas.clientHeight;
  st.unfitted = !cw || !ch;  // hidden (another tab): fit again once it is shown (ResizeObserver)
  if (st.unfitted) return;
  st.s = Math.min(cw / im.pw, ch / im.ph);
  st.ox = (cw - im.pw * st.s) / 2; st.oy = (ch - im.ph * st.s) / 2;
  draw();
}
function zoomAt(cx, cy, factor) {
  const s = Math.min(Math.max(st.s * factor, 0.05), 64);
  st.ox = cx - (cx - st.ox) * (s / st.s); st.oy = cy - (cy - st.oy) * (s / st.s); st.s = s; draw();
}
function oneToOne() {
  const cw = canvas.clientWidth / 2, ch = canvas.clientHeight / 2;
  zoomAt(cw, ch, 1 / k() / st.s);
}

// Pictures of the images next / previous would show, fetched while the annotator works on this one.
function keepPicture(id, img) {
  st.pictures.delete(id); st.pictures.set(id, img);
  while (st.pictures.size > 6) st.pictures.delete(st.pictures.keys().next().value);
}
function prefetch() {  // beside the edit queue: an edit never waits for it
  server.edit({action: "prefetch", pictures: Array.from(st.pictures.keys())})
    .then((answer) => { for (const im of (answer && answer.pictures) || []) keepPicture(im.id, loadImage(im.src)); })
    .catch(() => {});
}

function setScene(text) {
  let scene = text;
  if (typeof text === "string") { try { scene = JSON.parse(text); } catch (e) { return; } }
  if (!scene || typeof scene !== "object") return;
  if (st.scene && st.scene.seq > scene.seq) return;  // an older answer overtaken by a newer one
  const im = scene.image;
  const fresh = !!im && st.imgId !== im.id;
  // a scene of an image whose picture the canvas lacks is not shown (its masks over the old picture, or a
  // view fitted twice): the picture is asked for, and the answer carrying it is shown instead
  if (im && !im.src && (fresh ? !st.pictures.has(im.id) : !st.img)) { send({action: "resend"}); return; }
  st.scene = scene; st.pending = [];
  if (!im) { st.img = null; st.imgId = null; fitHeight(); draw(); return; }
  if (im.src) { st.img = loadImage(im.src); keepPicture(im.id, st.img); }
  else if (fresh) st.img = st.pictures.get(im.id);
  st.imgId = im.id;
  if (fresh) { st.poly = []; $(".ce-mode").value = "new"; fit(); prefetch(); }  // a cut never carries over
  const seen = new Set();
  let missing = false;
  for (const inst of scene.instances) {
    seen.add(inst.id);
    const old = st.masks.get(inst.id);
    if (inst.png == null) { missing = missing || !old || old.key !== inst.key; continue; }  // held already
    if (!old || old.key !== inst.key) st.masks.set(inst.id, {key: inst.key, img: loadImage(inst.png)});
  }
  for (const id of Array.from(st.masks.keys())) if (!seen.has(id)) st.masks.delete(id);
  const r = scene.refine;
  st.refineImg = r && r.png ? loadImage(r.png) : null;
  st.pos = r ? r.positive.map((p) => p.slice()) : []; st.neg = r ? r.negative.map((p) => p.slice()) : [];
  if (typeof scene.opacity === "number" && !st.opacityTouched) { st.opacity = scene.opacity; $(".ce-opacity").value = scene.opacity; }
  canvas.dataset.seq = String(scene.seq);
  draw();
  if (missing) send({action: "scene"});  // a picture the server thought held was replaced meanwhile
}

function strokePath(points, width, color, alpha) {
  const f = k() * st.s;
  ctx.save(); ctx.globalAlpha = alpha; ctx.strokeStyle = color; ctx.fillStyle = color;
  ctx.lineWidth = Math.max(width * f, 1); ctx.lineCap = "round"; ctx.lineJoin = "round";
  ctx.beginPath();
  points.forEach(([x, y], i) => { const [sx, sy] = toScreen(x + 0.5, y + 0.5); i ? ctx.lineTo(sx, sy) : ctx.moveTo(sx, sy); });
  if (points.length === 1) { const [sx, sy] = toScreen(points[0][0] + 0.5, points[0][1] + 0.5); ctx.arc(sx, sy, width * f / 2, 0, 7); ctx.fill(); }
  else ctx.stroke();
  ctx.restore();
}
function dot(x, y, color, r) {
  const [sx, sy] = toScreen(x + 0.5, y + 0.5);
  ctx.beginPath(); ctx.arc(sx, sy, r, 0, 7); ctx.fillStyle = color; ctx.fill();
  ctx.lineWidth = 1.5; ctx.strokeStyle = "#000"; ctx.stroke();
}

function draw() {
  fitHeight(); resize();
  const dpr = window.devicePixelRatio || 1;
  ctx.setTransform(1, 0, 0, 1, 0, 0); ctx.clearRect(0, 0, canvas.width, canvas.height);
  const scene = st.scene;
  $(".ce-zoom").textContent = Math.round(st.s * k() * 100) + "%";
  showEmpty(!!scene && !scene.image);  // an empty workspace or filter: the ways to add images (editor_empty.js)
  if (!scene || !scene.image || !st.img) return;
  ctx.setTransform(st.s * dpr, 0, 0, st.s * dpr, st.ox * dpr, st.oy * dpr);
  ctx.imageSmoothingEnabled = st.s < 1;
  if (st.img.complete) ctx.drawImage(st.img, 0, 0, scene.image.pw, scene.image.ph);
  drawTile(scene); wantTile();  // zoomed past the preview: the full-resolution region (editor_tiles.js)
  for (const inst of scene.instances) {
    const m = st.masks.get(inst.id); if (!m || !m.img.complete) continue;
    ctx.globalAlpha = inst.id === scene.selected ? Math.min(1, st.opacity + 0.25) : st.opacity;
    ctx.drawImage(m.img, inst.box[0], inst.box[1], inst.box[2], inst.box[3]);
  }
  ctx.globalAlpha = 1;
  for (const inst of scene.instances) {
    if (inst.id !== scene.selected) continue;
    ctx.lineWidth = 2 / st.s; ctx.strokeStyle = "#fff"; ctx.setLineDash([6 / st.s, 4 / st.s]);
    ctx.strokeRect(inst.box[0], inst.box[1], inst.box[2], inst.box[3]); ctx.setLineDash([]);
  }
  if (st.refineImg && st.refineImg.complete && scene.refine.box) {
    const b = scene.refine.box; ctx.globalAlpha = 0.55; ctx.drawImage(st.refineImg, b[0], b[1], b[2], b[3]); ctx.globalAlpha = 1;
  }
  ctx.setTransform(dpr, 0, 0, dpr, 0, 0);
  if (scene.labels) drawLabels(scene);
  for (const p of st.pending) strokePath(p.points, p.width, p.tool === "erase" ? "#000" : "#fff", 0.5);
  if (st.stroke) strokePath(st.stroke.points, st.stroke.width, st.stroke.tool === "erase" ? "#000" : "#fff", 0.5);
  if (st.poly.length) {
    ctx.strokeStyle = "#ff0"; ctx.lineWidth = 2; ctx.beginPath();
    st.poly.forEach(([x, y], i) => { const [sx, sy] = toScreen(x + 0.5, y + 0.5); i ? ctx.lineTo(sx, sy) : ctx.moveTo(sx, sy); });
    if (st.mouse) ctx.lineTo(st.mouse[0], st.mouse[1]);
    ctx.stroke();
    st.poly.forEach(([x, y], i) => dot(x, y, "#ff0", i ? 3 : 6));
  }
  st.pos.forEach(([x, y]) => dot(x, y, "#22c55e", 5));
  st.neg.forEach(([x, y]) => dot(x, y, "#ef4444", 5));
  if (st.mouse && (st.tool === "brush" || st.tool === "erase") && !st.pan) {
    ctx.beginPath(); ctx.arc(st.mouse[0], st.mouse[1], Math.max(st.size * k() * st.s / 2, 1), 0, 7);
    ctx.lineWidth = 1.5; ctx.strokeStyle = "#fff"; ctx.stroke();
    ctx.lineWidth = 1; ctx.strokeStyle = "#000"; ctx.stroke();
  }
}

// Labels: the selected instance's first, each where it overlaps no label drawn before (the full label, else
// "#id"; left out when neither fits), in the instance's colour with black or white text, whichever reads.
function drawLabels(scene) {
  ctx.font = "12px sans-serif";
  const placed = [], hit = (a, b) => a[0] < b[0] + b[2] && b[0] < a[0] + a[2] && a[1] < b[1] + b[3] && b[1] < a[1] + a[3];
  const order = scene.instances.slice().sort((a, b) => (b.id === scene.selected) - (a.id === scene.selected));
  const cw = canvas.clientWidth, ch = canvas.clientHeight;
  for (const inst of order) {
    const [sx, sy] = [st.ox + inst.box[0] * st.s, st.oy + inst.box[1] * st.s];
    let spot = null, text = null;
    for (const t of [inst.label, "#" + inst.id]) {
      const w = ctx.measureText(t).width + 6, x = Math.max(0, Math.min(sx, cw - w));  // never cut by an edge
      for (const dy of [-15, 0, 15, 30, -30, 45]) {
        const r = [x, sy + dy, w, 15];
        if (r[1] < 0 || r[1] + r[3] > ch) continue;
        if (!placed.some((q) => hit(q, r))) { spot = r; text = t; break; }
      }
      if (spot) break;
    }
    if (!spot) continue;
    placed.push(spot);
    const c = parseInt(inst.color.slice(1), 16), luma = 0.299 * (c >> 16) + 0.587 * ((c >> 8) & 255) + 0.114 * (c & 255);
    ctx.fillStyle = inst.color; ctx.fillRect(spot[0], spot[1], spot[2], spot[3]);
    ctx.fillStyle = luma > 140 ? "#000" : "#fff"; ctx.fillText(text, spot[0] + 3, spot[1] + 12);
  }
  canvas.dataset.labels = String(placed.length); st.labelBoxes = placed;
}

function setTool(tool) {
  st.tool = tool; st.poly = []; st.newNext = false;
  element.querySelectorAll(".ce-tools button").forEach((b) => b.classList.toggle("active", b.dataset.tool === tool));
  canvas.dataset.tool = tool; draw();
}
function setSize(size) {
  st.size = Math.min(Math.max(Math.round(size), 1), 300);
  $(".ce-size").value = st.size; $(".ce-size-value").textContent = st.size; draw();
}
function closePolygon() {
  const pts = st.poly.filter((p, i, a) => i === 0 || p[0] !== a[i - 1][0] || p[1] !== a[i - 1][1]);
  st.poly = [];
  if (pts.length >= 3) send({action: "polygon", points: pts, mode: $(".ce-mode").value, overlap: $(".ce-overlap").value});
  draw();
}
function sendRefine() {  // after Esc the first click starts a new object even on an instance (else it selects that one)
  send({action: "refine", positive: st.pos, negative: st.neg, new: st.newNext}); st.newNext = false; draw();
}

canvas.addEventListener("contextmenu", (ev) => ev.preventDefault());
canvas.addEventListener("pointerdown", (ev) => {
  root.focus({preventScroll: true});
  const [cx, cy] = local(ev);
  if (ev.button === 1 || (ev.button === 0 && st.space)) {
    st.pan = [cx, cy, st.ox, st.oy]; root.classList.add("panning"); canvas.setPointerCapture(ev.pointerId);
    ev.preventDefault(); return;
  }
  if (!st.scene || !st.scene.image) return;
  const p = toImage(cx, cy);
  if (st.tool === "brush" || st.tool === "erase") {
    if (ev.button !== 0) return;
    st.stroke = {tool: st.tool, width: st.size, points: [p]}; canvas.setPointerCapture(ev.pointerId);
  } else if (st.tool === "select" && ev.button === 0) {
    send({action: "pick", x: p[0], y: p[1]});
  } else if (st.tool === "polygon" && ev.button === 0) {
    if (st.poly.length >= 3) {
      const [fx, fy] = toScreen(st.poly[0][0] + 0.5, st.poly[0][1] + 0.5);
      if (Math.hypot(fx - cx, fy - cy) <= 8) { closePolygon(); return; }
    }
    st.poly.push(p);
  } else if (st.tool === "refine") {
    if (ev.button === 2 || (ev.button === 0 && ev.shiftKey)) st.neg.push(p); else if (ev.button === 0) st.pos.push(p);
    if (st.pos.length || (st.scene && st.scene.selected != null)) sendRefine();
  }
  draw();
});
canvas.addEventListener("pointermove", (ev) => {
  const [cx, cy] = local(ev);
  st.mouse = [cx, cy];
  if (st.pan) { st.ox = st.pan[2] + cx - st.pan[0]; st.oy = st.pan[3] + cy - st.pan[1]; }
  else if (st.stroke) {
    // every position the pointer passed, also those the browser merged into this event while it was busy
    const moves = ev.getCoalescedEvents ? ev.getCoalescedEvents() : [];
    for (const move of moves.length ? moves : [ev]) {
      const p = toImage(...local(move)), last = st.stroke.points[st.stroke.points.length - 1];
      if (p[0] !== last[0] || p[1] !== last[1]) st.stroke.points.push(p);
    }
  }
  draw();
});
function endPointer(ev) {
  if (st.pan) { st.pan = null; root.classList.remove("panning"); draw(); return; }
  if (!st.stroke) return;
  const stroke = st.stroke; st.stroke = null; st.pending.push(stroke);
  const action = stroke.points.length === 1 && ev.type === "pointerup" ? "tap" : "stroke";  // a click, no drag
  send({action, tool: stroke.tool, points: stroke.points, width: stroke.width, overlap: $(".ce-overlap").value});
  draw();
}
canvas.addEventListener("pointerup", endPointer);
canvas.addEventListener("pointercancel", endPointer);
canvas.addEventListener("pointerleave", () => { st.mouse = null; draw(); });
canvas.addEventListener("dblclick", (ev) => { if (st.tool === "polygon") { ev.preventDefault(); closePolygon(); } });
canvas.addEventListener("wheel", (ev) => {
  ev.preventDefault();
  const [cx, cy] = local(ev);
  zoomAt(cx, cy, Math.pow(1.0015, -ev.deltaY));
}, {passive: false});

// The page's buttons, dropdowns and keys, and the editor's start: editor_page.js (loaded after this file, in the
// same function: app.web.canvas.editor_files).
