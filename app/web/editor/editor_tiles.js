// CondInst Studio canvas editor: full-resolution tiles (loaded after editor.js, in the same js_on_load function: it
// uses its `st`, `k`, `canvas`, `loadImage`). The canvas shows a preview of at most 1600 px a side; zoomed to 1:1 or
// more on a bigger image, once the view rests it asks the edit channel for the visible region (with a margin, at
// most 2048 px a side: app.web.canvas.CanvasScenes.tile) at full resolution and draws it over the preview.
const TILE_MAX = 2048, TILE_REST_MS = 120;
function tileCovers(t, id, x0, y0, x1, y1) {
  return t && t.id === id && t.box[0] <= x0 && t.box[1] <= y0 && t.box[0] + t.box[2] >= x1 && t.box[1] + t.box[3] >= y1;
}
function drawTile(scene) {  // in preview pixels (the context's transform), crisp
  const t = st.tile;
  if (!t || t.id !== scene.image.id || !t.img.complete || st.s * k() < 1) return;
  const f = k(); ctx.imageSmoothingEnabled = false;
  ctx.drawImage(t.img, t.box[0] * f, t.box[1] * f, t.box[2] * f, t.box[3] * f);
  ctx.imageSmoothingEnabled = st.s < 1;
}
function wantTile() {  // called by draw(): a tile is asked for when the shown region lacks one
  const im = st.scene && st.scene.image, f = st.s * k();
  if (!im || im.width <= im.pw || f < 1 || !canvas.clientWidth) return;
  const x0 = Math.max(0, Math.floor(-st.ox / f)), y0 = Math.max(0, Math.floor(-st.oy / f));
  const x1 = Math.min(im.width, Math.ceil((canvas.clientWidth - st.ox) / f));
  const y1 = Math.min(im.height, Math.ceil((canvas.clientHeight - st.oy) / f));
  if (x1 <= x0 || y1 <= y0 || tileCovers(st.tile, im.id, x0, y0, x1, y1)) return;
  clearTimeout(wantTile.timer);
  wantTile.timer = setTimeout(() => fetchTile(im.id, x0, y0, x1, y1), TILE_REST_MS);
}
function fetchTile(id, x0, y0, x1, y1) {
  const side = (a0, a1, limit) => {  // the visible span with up to half of it again on each side, <= TILE_MAX
    const w = Math.min(a1 - a0, TILE_MAX), m = Math.floor(Math.min((a1 - a0) / 2, (TILE_MAX - w) / 2));
    const start = Math.max(0, a0 - m); return [start, Math.min(w + 2 * m, limit - start)];
  };
  const im = st.scene.image, [bx, bw] = side(x0, x1, im.width), [by, bh] = side(y0, y1, im.height);
  const key = [id, bx, by, bw, bh].join(",");
  if (st.tileAsked === key) return;
  st.tileAsked = key;
  server.edit({action: "tile", image: id, box: [bx, by, bw, bh]}).then((answer) => {
    const t = answer && answer.tile;
    if (!t || !st.scene || !st.scene.image || st.scene.image.id !== t.id) return;
    st.tile = {id: t.id, box: t.box, img: loadImage(t.src)};
  }).catch(() => { st.tileAsked = null; });
}
