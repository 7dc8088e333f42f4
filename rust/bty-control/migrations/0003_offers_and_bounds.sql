-- Schema version 3: offer tokens, aggregated audit events, and the file's
-- identity.
--
-- Every live-environment offer mints a one-time token; its SHA-256 is kept
-- with the offer on the machine's row. Reports from the live environment
-- must carry the token and are accepted only while the offer is outstanding
-- (`offer_kind` set). Superseded and ended offers leave nothing behind.
ALTER TABLE machines ADD COLUMN offer_kind TEXT;          -- flash | inventory | interactive; NULL: none outstanding
ALTER TABLE machines ADD COLUMN offer_token_hash TEXT;    -- hex SHA-256 of the token
ALTER TABLE machines ADD COLUMN offer_at TEXT;

-- Repeated events (refused reports, orphan reports, failed logins) within a
-- window fold into one row: `agg_key` names what repeats, `count` how often,
-- `last_ts` when it last did.
ALTER TABLE events ADD COLUMN agg_key TEXT;
ALTER TABLE events ADD COLUMN count INTEGER NOT NULL DEFAULT 1;
ALTER TABLE events ADD COLUMN last_ts TEXT;
CREATE INDEX events_agg ON events (agg_key, id) WHERE agg_key IS NOT NULL;

-- 'btyw': `bty-web restore` recognises its own databases by it.
PRAGMA application_id = 1651800439;
