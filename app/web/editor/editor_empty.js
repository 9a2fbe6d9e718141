// An empty workspace (or a filter that leaves no image): where the picture would be, the ways to add images: a button
// opening the file chooser of the page's upload ("Add images", the one path that segments and tracks), files dropped
// on the canvas handed to that same upload, and a button showing the bundled samples.
function uploadInput() { return document.querySelector("#upload input[type=file]"); }
function showEmpty(empty) {  // called by draw()
  const box = $(".ce-empty");
  if (empty) { box.style.top = canvas.offsetTop + "px"; box.style.height = canvas.clientHeight + "px"; }
  box.hidden = !empty;
}
function emptyShown() { return !$(".ce-empty").hidden; }
$(".ce-add").addEventListener("click", () => { const input = uploadInput(); if (input) input.click(); });
$(".ce-samples").addEventListener("click", () => {
  const samples = document.getElementById("samples"); if (!samples) return;
  if (!samples.offsetParent) {  // the "Add images" panel is folded: open it
    const header = document.querySelector("#add-images > button, #add-images .label-wrap"); if (header) header.click();
  }
  setTimeout(() => {
    samples.scrollIntoView({block: "center"}); const input = samples.querySelector("input"); if (input) input.focus();
  }, 50);
});
root.addEventListener("dragover", (ev) => {
  if (!emptyShown() || !ev.dataTransfer) return;
  ev.preventDefault(); root.classList.add("ce-dropping");
});
root.addEventListener("dragleave", () => root.classList.remove("ce-dropping"));
root.addEventListener("drop", (ev) => {
  root.classList.remove("ce-dropping");
  const input = uploadInput(), files = ev.dataTransfer && ev.dataTransfer.files;
  if (!emptyShown() || !input || !files || !files.length) return;
  ev.preventDefault();
  const moved = new DataTransfer();
  for (const file of files) moved.items.add(file);
  input.files = moved.files; input.dispatchEvent(new Event("change", {bubbles: true}));
});
