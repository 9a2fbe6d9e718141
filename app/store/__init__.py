"""The workspace on disk: the SQLite database and its schema, image files, masks, history (undo), recovery and sweep."""
