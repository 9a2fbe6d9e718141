"""Videos as sequences of tracked frames: adding a video, track edits, propagating a mask to the next frames."""
