-- Schema version 1. Applied once, in one transaction, then stamped in
-- PRAGMA user_version. Never edit an applied migration: add the next file.

CREATE TABLE machines (
    mac                 TEXT PRIMARY KEY,                -- aa:bb:cc:dd:ee:ff
    -- Operator intent (PUT /machines/{mac}); the server never changes these.
    policy              TEXT NOT NULL DEFAULT 'tui'
                        CHECK (policy IN ('tui', 'flash', 'flash-once', 'inventory', 'local')),
    image               TEXT,
    target_disk_serial  TEXT,
    sanboot_drive       TEXT,
    provisioning_mode   TEXT NOT NULL DEFAULT 'none'
                        CHECK (provisioning_mode IN ('none', 'cijoe-offline', 'cijoe-online')),
    -- What the server observed; only the policy state machine writes `state`.
    state               TEXT NOT NULL DEFAULT 'idle',
    discovered_at       TEXT,
    last_seen_at        TEXT,
    last_seen_ip        TEXT,
    last_flashed_at     TEXT,
    last_flash_status   TEXT,
    last_flash_reason   TEXT,
    inventory           TEXT,                            -- JSON: {"disks": [...], "hardware": ...}
    inventory_at        TEXT,
    lshw                TEXT,                            -- JSON
    created_at          TEXT NOT NULL,
    updated_at          TEXT NOT NULL
);
CREATE INDEX machines_policy ON machines (policy);

CREATE TABLE machine_labels (
    mac    TEXT NOT NULL REFERENCES machines (mac) ON DELETE CASCADE,
    label  TEXT NOT NULL,
    PRIMARY KEY (mac, label)
);
CREATE INDEX machine_labels_label ON machine_labels (label);

CREATE TABLE flash_history (
    id           INTEGER PRIMARY KEY,
    mac          TEXT NOT NULL REFERENCES machines (mac) ON DELETE CASCADE,
    image        TEXT,
    started_at   TEXT,
    finished_at  TEXT,
    status       TEXT NOT NULL,                          -- running | done | failed | abandoned
    reason       TEXT
);
CREATE INDEX flash_history_mac ON flash_history (mac, id);

CREATE TABLE events (
    id            INTEGER PRIMARY KEY AUTOINCREMENT,
    ts            TEXT NOT NULL,
    kind          TEXT NOT NULL,
    subject_kind  TEXT,
    subject_id    TEXT,
    actor         TEXT NOT NULL,
    source_ip     TEXT,
    summary       TEXT NOT NULL,
    details       TEXT NOT NULL DEFAULT '{}',
    acknowledged  INTEGER NOT NULL DEFAULT 1
);
CREATE INDEX events_kind ON events (kind, id);
CREATE INDEX events_subject ON events (subject_id, id);
CREATE INDEX events_unacked ON events (id) WHERE acknowledged = 0;

CREATE TABLE settings (
    key         TEXT PRIMARY KEY,
    value       TEXT NOT NULL,
    updated_at  TEXT NOT NULL
);

CREATE TABLE users (
    username       TEXT PRIMARY KEY,
    password_hash  TEXT NOT NULL,                        -- pbkdf2-sha256$<iterations>$<salt hex>$<hash hex>
    created_at     TEXT NOT NULL,
    updated_at     TEXT NOT NULL
);

CREATE TABLE sessions (
    token_hash  TEXT PRIMARY KEY,                        -- SHA-256 of the cookie value
    username    TEXT NOT NULL REFERENCES users (username) ON DELETE CASCADE,
    created_at  TEXT NOT NULL,
    expires_at  INTEGER NOT NULL,                        -- unix seconds
    csrf_token  TEXT NOT NULL
);
CREATE INDEX sessions_expiry ON sessions (expires_at);

CREATE TABLE api_tokens (
    id            INTEGER PRIMARY KEY,
    name          TEXT NOT NULL,
    token_hash    TEXT NOT NULL UNIQUE,                  -- SHA-256 of the bearer token
    created_by    TEXT NOT NULL,
    created_at    TEXT NOT NULL,
    last_used_at  TEXT,
    revoked_at    TEXT
);
