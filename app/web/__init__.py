"""The Gradio page: layout and wiring, event handlers, the guard around every event, the canvas editor (JS/CSS) and its channel."""
