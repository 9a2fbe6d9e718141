-- A workspace database written by CondInst Studio before schema version 2 (app/workspace.py of 2026-11-30).
CREATE TABLE schema_version (
    version INTEGER NOT NULL
);
CREATE TABLE categories (
    id INTEGER PRIMARY KEY CHECK (id > 0),
    name TEXT NOT NULL,
    supercategory TEXT NOT NULL DEFAULT 'object'
);
CREATE TABLE images (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    file_path TEXT NOT NULL UNIQUE,
    sha256 TEXT NOT NULL UNIQUE,
    original_name TEXT NOT NULL,
    width INTEGER NOT NULL,
    height INTEGER NOT NULL,
    reviewed INTEGER NOT NULL DEFAULT 0,
    created_at TEXT NOT NULL,
    updated_at TEXT NOT NULL
);
CREATE TABLE instances (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    image_id INTEGER NOT NULL REFERENCES images(id),
    category_id INTEGER NOT NULL REFERENCES categories(id),
    score REAL,
    mask_rle BLOB NOT NULL,
    source TEXT NOT NULL CHECK (source IN ('model', 'user', 'point')),
    hidden INTEGER NOT NULL DEFAULT 0,
    deleted INTEGER NOT NULL DEFAULT 0,
    user_edited INTEGER NOT NULL DEFAULT 0,
    meta TEXT,
    created_at TEXT NOT NULL,
    updated_at TEXT NOT NULL
);
CREATE INDEX instances_by_image ON instances(image_id);
CREATE TABLE history (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    image_id INTEGER NOT NULL REFERENCES images(id),
    label TEXT NOT NULL,
    undone INTEGER NOT NULL DEFAULT 0,
    created_at TEXT NOT NULL
);
CREATE INDEX history_by_image ON history(image_id, id);
CREATE TABLE history_changes (
    history_id INTEGER NOT NULL REFERENCES history(id) ON DELETE CASCADE,
    instance_id INTEGER NOT NULL REFERENCES instances(id),
    before TEXT NOT NULL,
    after TEXT NOT NULL,
    PRIMARY KEY (history_id, instance_id)
);;
INSERT INTO schema_version (version) VALUES (1);
INSERT INTO categories (id, name, supercategory) VALUES (1, 'date', 'object');
INSERT INTO images (id, file_path, sha256, original_name, width, height, reviewed, created_at, updated_at) VALUES (1, 'images/abc.png', 'abc', 'a.png', 32, 24, 1, '2026-11-01T10:00:00.000000+00:00', '2026-11-01T10:00:00.000000+00:00');
INSERT INTO instances (id, image_id, category_id, score, mask_rle, source, hidden, deleted, user_edited, meta, created_at, updated_at) VALUES (1, 1, 1, 0.8, CAST('d48`00000000000000000000000000l8' AS BLOB), 'model', 0, 0, 0, NULL, '2026-11-01T10:00:00.000000+00:00', '2026-11-01T10:00:00.000000+00:00');
