-- Online CIJOE runs: when a run started and the digests of the artifacts it
-- left; per machine, the SSH host key pinned on the first successful contact
-- (cleared when the machine is flashed again) and the known-good baseline run.
ALTER TABLE cijoe_runs ADD COLUMN started_at TEXT;
ALTER TABLE cijoe_runs ADD COLUMN artifacts TEXT NOT NULL DEFAULT '{}';
CREATE TABLE cijoe_machine (
    mac          TEXT PRIMARY KEY REFERENCES machines (mac) ON DELETE CASCADE,
    ssh_host_key TEXT,
    baseline_run INTEGER REFERENCES cijoe_runs (id) ON DELETE SET NULL
);
CREATE INDEX cijoe_runs_open ON cijoe_runs (status) WHERE status IN ('queued', 'running');
