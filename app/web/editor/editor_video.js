// CondInst Studio canvas editor, part 2 of 3 (loaded after editor.js, in the same js_on_load function: it uses its
// `st`, `send`, `canvas`): the video panel (app/web/video_ui.py) through the edit channel while the canvas is shown.
// "< Frame" / "Frame >" (and their keys , and .), the frame slider (released, or a number typed + Enter) send
// {action: "frame"} and get the new frame's scene only (its picture prefetched: `prefetch` in editor.js; a typed
// frame goes this way in the Click view too, whose picture the panels' refresh then draws); a click
// on a row of the tracks table selects that track's instance on the frame ({action: "track"}). The Gradio events
// stay for the API (`next_frame`, `previous_frame`, `go_to_frame`) and the Click view.
const FRAME_BUTTONS = {"previous-frame": -1, "next-frame": +1};
let frameTyped = false;  // a number typed in the slider's field and not sent yet (Enter or leaving the field sends it)
function frameNumber(input) { const n = Number(input.value); return Number.isInteger(n) && n >= 0 ? n : null; }
const videoListeners = {
  click: (ev) => {
    if (!ev.target || !ev.target.closest || !canvas.offsetParent) return;
    const button = ev.target.closest("button[id]");
    if (button && button.id in FRAME_BUTTONS) {
      if (button.disabled) return;
      ev.preventDefault(); ev.stopImmediatePropagation();
      send({action: "frame", delta: FRAME_BUTTONS[button.id]});
      return;
    }
    const cell = ev.target.closest("#tracks [data-col]"), row = cell && cell.closest("tr, [role=row], .virtual-row");
    const first = row && row.querySelector("[data-col='0']"), track = first && Number(first.innerText.trim());
    if (Number.isInteger(track) && first.innerText.trim() !== "") send({action: "track", track});  // Gradio's select too
  },
  pointerup: (ev) => {  // the slider released: that frame (Gradio's `release` is not sent)
    const range = ev.target && ev.target.closest ? ev.target.closest("#frame-slider input[type=range]") : null;
    if (!range || !canvas.offsetParent) return;
    ev.stopImmediatePropagation();
    const n = frameNumber(range); if (n != null) send({action: "frame", index: n});
  },
  keydown: (ev) => {  // a frame number typed + Enter (in the Click view too: Gradio's slider has no event for it)
    const box = ev.target && ev.target.closest ? ev.target.closest("#frame-slider input[type=number]") : null;
    if (!box || ev.key !== "Enter") return;
    ev.preventDefault(); ev.stopImmediatePropagation();
    const n = frameNumber(box); if (n == null) return;
    frameTyped = false; send({action: "frame", index: n});
  },
  input: (ev) => {
    if (ev.target && ev.target.closest && ev.target.closest("#frame-slider input[type=number]")) frameTyped = true;
  },
  blur: (ev) => {  // leaving the number field: the frame typed there (once; in the Click view too)
    const box = ev.target && ev.target.closest ? ev.target.closest("#frame-slider input[type=number]") : null;
    if (!box) return;
    ev.stopImmediatePropagation();
    const n = frameNumber(box);
    if (n != null && frameTyped) send({action: "frame", index: n});
    frameTyped = false;
  },
};
for (const [type, listener] of Object.entries(videoListeners)) {
  const name = "condinstEditorVideo_" + type;
  if (window[name]) document.removeEventListener(type, window[name], true);
  window[name] = listener; document.addEventListener(type, listener, true);
}
