-- The image cache's entries: one blob per digest under <cache_dir>/sha256/.
-- `state` is the last known: a row that says filling after a restart is a
-- partial file to resume (or a fill that never started), never a complete one.
CREATE TABLE cache_entries (
    digest          TEXT PRIMARY KEY CHECK (length(digest) = 64),
    name            TEXT NOT NULL,
    src             TEXT NOT NULL,
    size            INTEGER,
    state           TEXT NOT NULL CHECK (state IN ('filling', 'complete', 'failed')),
    error           TEXT,
    hits            INTEGER NOT NULL DEFAULT 0,
    upstream_bytes  INTEGER NOT NULL DEFAULT 0,
    created_at      TEXT NOT NULL,
    completed_at    TEXT,
    last_access     TEXT,
    -- Unix milliseconds of the last access: the eviction order (the text
    -- timestamps have whole seconds).
    access_ms       INTEGER NOT NULL DEFAULT 0
);
