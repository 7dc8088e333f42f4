-- Schema version 2: the dashboard counts machines by policy and state from
-- an index instead of walking the table, whose rows carry inventories of a
-- kilobyte or more. It replaces the index on policy alone (its prefix).
-- Keys that arrive in MAC order are kept out of new indexes on purpose:
-- discovery inserts them at random places, and every such index adds pages
-- to each commit of the PXE path.
DROP INDEX machines_policy;
CREATE INDEX machines_policy_state ON machines (policy, state);
