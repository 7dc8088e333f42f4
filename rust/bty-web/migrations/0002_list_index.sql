-- Schema version 2: indexes that cover what the machine list and the
-- dashboard read of every machine (filter, order, counts by policy and
-- state), so they need not walk the table, whose rows carry inventories of a
-- kilobyte or more. last_seen_at is left out on purpose: every PXE contact
-- changes it, and the boot path should not pay for a list index.
CREATE INDEX machines_list ON machines (mac, policy, state, image, last_flashed_at);
DROP INDEX machines_policy;
CREATE INDEX machines_policy_state ON machines (policy, state);
