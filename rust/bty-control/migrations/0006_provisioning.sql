-- CIJOE provisioning: the workflow a machine is provisioned with (a file in
-- <state>/workflows/), and where an online run reaches it over SSH (NULL:
-- its last-seen IP, port 22, user root).
ALTER TABLE machines ADD COLUMN workflow TEXT;
ALTER TABLE machines ADD COLUMN ssh_host TEXT;
ALTER TABLE machines ADD COLUMN ssh_port INTEGER CHECK (ssh_port BETWEEN 1 AND 65535);
ALTER TABLE machines ADD COLUMN ssh_user TEXT;
CREATE INDEX machines_workflow ON machines (workflow) WHERE workflow IS NOT NULL;

-- Every CIJOE run, offline (reported by the live environment) and online;
-- its output directory and archive are <state>/cijoe/<mac>/<id>/.
CREATE TABLE cijoe_runs (
    -- AUTOINCREMENT: an id is never reused, nor so its directory.
    id          INTEGER PRIMARY KEY AUTOINCREMENT,
    mac         TEXT NOT NULL REFERENCES machines (mac) ON DELETE CASCADE,
    workflow    TEXT NOT NULL,
    mode        TEXT NOT NULL CHECK (mode IN ('offline', 'online')),
    status      TEXT NOT NULL CHECK (status IN ('queued', 'running', 'passed', 'failed', 'cancelled')),
    reason      TEXT,
    image       TEXT,
    steps       TEXT NOT NULL DEFAULT '[]',
    created_at  TEXT NOT NULL,
    finished_at TEXT
);
CREATE INDEX cijoe_runs_by_mac ON cijoe_runs (mac, id);
