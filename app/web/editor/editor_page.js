// CondInst Studio canvas editor, part 3 (loaded after editor.js and editor_video.js, in the same js_on_load function: it uses its
// `st`, `send`, `draw`, ...): the page's buttons, class dropdowns and keys through the edit channel, the
// toolbar, and the start.
// The page's Undo / Redo / Delete and image navigation buttons (and their keys) go through the edit
// channel while the canvas is shown; their Gradio events stay for the API and the Click view.
const CHANNEL_BUTTONS = {undo: "undo", redo: "redo", delete: "delete", next: "next", previous: "previous",
                         "next-unreviewed": "next_unreviewed", "resolve-overlaps": "overlaps"};
if (window.condinstEditorClicks) document.removeEventListener("click", window.condinstEditorClicks, true);
window.condinstEditorClicks = (ev) => {
  const button = ev.target && ev.target.closest ? ev.target.closest("button[id]") : null;
  const action = button && CHANNEL_BUTTONS[button.id];
  if (!action || !canvas.offsetParent || button.disabled) return;
  ev.preventDefault(); ev.stopImmediatePropagation();
  send({action});
};
document.addEventListener("click", window.condinstEditorClicks, true);

// The "Class of the selected" dropdown: a picked option goes through the channel's `class` action while the canvas
// is shown (Gradio's list selects on mousedown; this listener, in the capture phase, comes first). Gradio sends its
// `input` event on every blur of the dropdown, with the value it holds, and shows a new value only once blurred: the
// blur is held back until the light panel refresh has given it the new class (the status line shows the answer),
// then done (its `input` event sets the class it already has: nothing is written). Escape closes the list.
// The Gradio event stays for the API (`set_class`), the keyboard in the dropdown and the Click view.
let classPicked = false;
for (const [type, name] of [["mousedown", "condinstEditorClass"], ["blur", "condinstEditorClassBlur"]])
  if (window[name]) document.removeEventListener(type, window[name], true);
function classRefreshed(tries) {  // the panels show the answer: let the dropdown blur (and so show the new class)
  const status = document.getElementById("status"), text = $(".ce-msg").textContent;
  if (tries > 0 && status && text && !status.innerText.includes(text)) { setTimeout(() => classRefreshed(tries - 1), 50); return; }
  classPicked = false;
  const input = document.querySelector("#selected-class input"); if (!input) return;
  if (document.activeElement !== input) input.focus({preventScroll: true});
  input.blur();
}
window.condinstEditorClass = (ev) => {
  const option = ev.target && ev.target.closest ? ev.target.closest("#selected-class [data-index]") : null;
  if (!option || !canvas.offsetParent || !st.scene || st.scene.selected == null) return;
  const hit = classNamed((option.getAttribute("aria-label") || option.textContent || "").trim());
  if (!hit) return;
  ev.preventDefault(); ev.stopImmediatePropagation();
  classPicked = true;
  const input = document.querySelector("#selected-class input");
  if (input) input.dispatchEvent(new KeyboardEvent("keydown", {key: "Escape", bubbles: true}));
  send({action: "class", category: hit[1]}).then(() => classRefreshed(200));
};
window.condinstEditorClassBlur = (ev) => {
  if (classPicked && ev.target && ev.target.closest && ev.target.closest("#selected-class")) ev.stopImmediatePropagation();
};
document.addEventListener("mousedown", window.condinstEditorClass, true);
document.addEventListener("blur", window.condinstEditorClassBlur, true);

// Keys (app/web/keys.py routes them here while the canvas is shown, wherever the focus is): key(action, key).
const TOOLS = ["select", "brush", "erase", "polygon", "refine"];
const CHANNEL_KEYS = {undo: "undo", redo: "redo", delete: "delete", overlaps: "overlaps", next: "next",
                      previous: "previous", next_unreviewed: "next_unreviewed"};
function classKey(digit) {  // digit n: the n-th class of the list
  const classes = (st.scene && st.scene.classes) || [], hit = classes[Number(digit) - 1];
  if (!hit) { say("There is no class " + digit + " (" + classes.length + " classes).", false); return; }
  if (st.scene && st.scene.selected != null) send({action: "class", category: hit[1]});
  else { st.newClass = hit[1]; say("New instances: " + hit[0] + " (" + digit + ").", true); }
}
function escape() {
  st.newNext = true;  // the next refine click starts a new object, also on an instance
  if (st.poly.length) { st.poly = []; draw(); }
  else if (st.scene && st.scene.refine) send({action: "refine_discard"});
  else if (st.pos.length || st.neg.length) { st.pos = []; st.neg = []; draw(); }
  else if (st.scene && st.scene.selected != null) send({action: "select", id: null});
}
function showKeys(show) {
  const box = $(".ce-keys"), rows = (window.condinstKeys && window.condinstKeys.help) || [];
  if (!box.firstChild) {
    const table = document.createElement("table");
    for (const [keys, text] of rows) {
      const tr = table.insertRow(); tr.insertCell().textContent = keys; tr.insertCell().textContent = text;
    }
    box.appendChild(table);
  }
  box.hidden = show === undefined ? !box.hidden : !show;
}
function key(action, raw) {
  if (TOOLS.includes(action)) setTool(action);
  else if (action === "class") classKey(raw);
  else if (action === "delete" && st.scene && st.scene.selected == null && st.mouse) {  // the instance pointed at
    const p = toImage(st.mouse[0], st.mouse[1]); send({action: "delete_at", x: p[0], y: p[1]});
  } else if (CHANNEL_KEYS[action]) send({action: CHANNEL_KEYS[action]});
  else if (action === "smaller") setSize(st.size / 1.25 - 0.5);
  else if (action === "bigger") setSize(st.size * 1.25 + 0.5);
  else if (action === "help") showKeys();
  else if (action === "escape") { if (!$(".ce-keys").hidden) showKeys(false); else escape(); }
  else if (action === "accept") {
    if (st.tool === "polygon" && st.poly.length) closePolygon();
    else if (st.scene && st.scene.refine) send({action: "refine_accept"});
    else return false;
  } else return false;
  return true;
}
document.addEventListener("input", (ev) => {  // the page's class dropdown chosen again: it counts, not a digit key
  if (ev.target && ev.target.closest && ev.target.closest("#new-class")) st.newClass = null;
}, true);
root.addEventListener("keydown", (ev) => {  // space held: pan with the left button
  if (ev.key === " ") { st.space = true; root.classList.add("panning"); ev.preventDefault(); ev.stopPropagation(); }
});
root.addEventListener("keyup", (ev) => { if (ev.key === " ") { st.space = false; root.classList.remove("panning"); } });
element.querySelectorAll(".ce-tools button").forEach((b) => b.addEventListener("click", () => setTool(b.dataset.tool)));
$(".ce-size").addEventListener("input", (ev) => setSize(Number(ev.target.value)));
$(".ce-opacity").addEventListener("input", (ev) => { st.opacity = Number(ev.target.value); st.opacityTouched = true; draw(); });
$(".ce-fit").addEventListener("click", fit);
$(".ce-help").addEventListener("click", () => showKeys());
$(".ce-one").addEventListener("click", oneToOne);
new ResizeObserver(() => (st.unfitted && canvas.clientWidth ? fit() : draw())).observe(canvas);
window.addEventListener("resize", () => { fitHeight(); draw(); });

// `send` queues an edit behind those in flight (the page's z / y / Delete keys use it, whatever the buttons show).
window.condinstEditor = {state: st, toImage, toScreen, fit, draw, setTool, setSize, send, key,
                         shown: () => !!canvas.offsetParent};
setTool("select");
watch("value", () => setScene(props.value));
if (props.value) setScene(props.value);
