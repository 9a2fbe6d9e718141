"""The annotate view's actions on a View: images and segmentation runs, clicks, brush and canvas edits, refine, review, what is shown, Explain."""
