-- issue 36: the ledger's history: every billing stream entry, archived by its own consumer group
-- (app.archive.events) before the ledger's trim may remove it (trim.lua waits for every group).
-- docs/DESIGN.md § Archive. One row per stream entry, `fields` its field/value pairs as Redis held
-- them (strings); created_at is the stream id's time (a function of the entry: re-archiving an entry
-- after a kill conflicts and writes nothing). Partitioned by day like auction_records.
CREATE TABLE billing_events (
    stream_id      text        NOT NULL,
    created_at     timestamptz NOT NULL,
    auction_id     text        NOT NULL,
    advertiser_ids text[]      NOT NULL DEFAULT '{}',
    fields         jsonb       NOT NULL,
    archived_at    timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (stream_id, created_at)
) PARTITION BY RANGE (created_at);

CREATE INDEX billing_events_by_auction ON billing_events (auction_id);
CREATE INDEX billing_events_by_advertiser ON billing_events USING gin (advertiser_ids);
