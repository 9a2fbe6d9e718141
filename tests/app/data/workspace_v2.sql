-- A workspace database written by CondInst Studio at schema version 2 (app/ of 2026-11-30, before accounts):
-- image 1 with instance 1 (added, then its mask edited: 2 undo steps), image 2 reviewed at 0.4 with instance 2.
CREATE TABLE categories (
    id INTEGER PRIMARY KEY CHECK (id > 0),
    name TEXT NOT NULL,
    supercategory TEXT NOT NULL DEFAULT 'object'
);
INSERT INTO "categories" VALUES(1,'date','object');
INSERT INTO "categories" VALUES(2,'fig','object');
CREATE TABLE history (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    image_id INTEGER NOT NULL REFERENCES images(id),
    label TEXT NOT NULL,
    undone INTEGER NOT NULL DEFAULT 0,
    created_at TEXT NOT NULL
);
INSERT INTO "history" VALUES(1,1,'add instance 1',0,'2026-11-30T23:54:47.004515+00:00');
INSERT INTO "history" VALUES(2,1,'edit mask instance 1',0,'2026-11-30T23:54:47.008220+00:00');
INSERT INTO "history" VALUES(3,2,'add instance 2',0,'2026-11-30T23:54:47.016129+00:00');
CREATE TABLE history_changes (
    history_id INTEGER NOT NULL REFERENCES history(id) ON DELETE CASCADE,
    instance_id INTEGER NOT NULL REFERENCES instances(id),
    before TEXT NOT NULL,
    after TEXT NOT NULL,
    PRIMARY KEY (history_id, instance_id)
);
INSERT INTO "history_changes" VALUES(1,1,'{"category_id": 1, "score": null, "mask_rle": "T38`00000000000000l>", "preview_rle": null, "area": 64, "bbox": "4.0,4.0,8.0,8.0", "source": "user", "hidden": 0, "deleted": 1, "user_edited": 0, "meta": null}','{"category_id": 1, "score": null, "mask_rle": "T38`00000000000000l>", "preview_rle": null, "area": 64, "bbox": "4.0,4.0,8.0,8.0", "source": "user", "hidden": 0, "deleted": 0, "user_edited": 0, "meta": null}');
INSERT INTO "history_changes" VALUES(2,1,'{"category_id": 1, "score": null, "mask_rle": "T38`00000000000000l>", "preview_rle": null, "area": 64, "bbox": "4.0,4.0,8.0,8.0", "source": "user", "hidden": 0, "deleted": 0, "user_edited": 0, "meta": null}','{"category_id": 1, "score": null, "mask_rle": "T3:>0000000000000l>", "preview_rle": null, "area": 80, "bbox": "4.0,4.0,8.0,10.0", "source": "user", "hidden": 0, "deleted": 0, "user_edited": 1, "meta": null}');
INSERT INTO "history_changes" VALUES(3,2,'{"category_id": 2, "score": null, "mask_rle": "_?5c000000000000000000Q1", "preview_rle": null, "area": 50, "bbox": "20.0,15.0,10.0,5.0", "source": "user", "hidden": 0, "deleted": 1, "user_edited": 0, "meta": null}','{"category_id": 2, "score": null, "mask_rle": "_?5c000000000000000000Q1", "preview_rle": null, "area": 50, "bbox": "20.0,15.0,10.0,5.0", "source": "user", "hidden": 0, "deleted": 0, "user_edited": 0, "meta": null}');
CREATE TABLE images (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    file_path TEXT NOT NULL UNIQUE,
    sha256 TEXT NOT NULL UNIQUE,
    original_name TEXT NOT NULL,
    width INTEGER NOT NULL,
    height INTEGER NOT NULL,
    reviewed INTEGER NOT NULL DEFAULT 0,
    created_at TEXT NOT NULL,
    updated_at TEXT NOT NULL,
    segmented_by TEXT,
    review_threshold REAL,
    changed_after_review INTEGER NOT NULL DEFAULT 0
);
INSERT INTO "images" VALUES(1,'images/b15f1db166abf6a445e337d2532c18e51b6a257161927c58f404240ce0885a36.png','b15f1db166abf6a445e337d2532c18e51b6a257161927c58f404240ce0885a36','a.png',32,24,0,'2026-11-30T23:54:46.975687+00:00','2026-11-30T23:54:47.008000+00:00',NULL,NULL,0);
INSERT INTO "images" VALUES(2,'images/8f26d9d219b18964688dadc9079b084709e6c7eba7c32715ba6b6e2b7ba035f3.png','8f26d9d219b18964688dadc9079b084709e6c7eba7c32715ba6b6e2b7ba035f3','b.png',32,24,1,'2026-11-30T23:54:46.993932+00:00','2026-11-30T23:54:47.023751+00:00',NULL,0.4,0);
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
    updated_at TEXT NOT NULL,
    preview_rle BLOB,
    area INTEGER NOT NULL DEFAULT 0,
    bbox TEXT
);
INSERT INTO "instances" VALUES(1,1,1,NULL,X'54333A3E303030303030303030303030306C3E','user',0,0,1,NULL,'2026-11-30T23:54:47.004207+00:00','2026-11-30T23:54:47.008000+00:00',NULL,80,'4.0,4.0,8.0,10.0');
INSERT INTO "instances" VALUES(2,2,2,NULL,X'5F3F35633030303030303030303030303030303030305131','user',0,0,0,NULL,'2026-11-30T23:54:47.015993+00:00','2026-11-30T23:54:47.015993+00:00',NULL,50,'20.0,15.0,10.0,5.0');
CREATE TABLE schema_version (
    version INTEGER NOT NULL
);
INSERT INTO "schema_version" VALUES(2);
CREATE INDEX instances_by_image ON instances(image_id);
CREATE INDEX history_by_image ON history(image_id, id);
INSERT INTO "sqlite_sequence" VALUES('images',2);
INSERT INTO "sqlite_sequence" VALUES('instances',2);
INSERT INTO "sqlite_sequence" VALUES('history',3);
