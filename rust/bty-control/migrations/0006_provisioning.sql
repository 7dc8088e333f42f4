-- CIJOE provisioning: the workflow a machine is provisioned with (a file in
-- <state>/workflows/), and where an online run reaches it over SSH (NULL:
-- its last-seen IP, port 22, user root).
ALTER TABLE machines ADD COLUMN workflow TEXT;
ALTER TABLE machines ADD COLUMN ssh_host TEXT;
ALTER TABLE machines ADD COLUMN ssh_port INTEGER CHECK (ssh_port BETWEEN 1 AND 65535);
ALTER TABLE machines ADD COLUMN ssh_user TEXT;
CREATE INDEX machines_workflow ON machines (workflow) WHERE workflow IS NOT NULL;
