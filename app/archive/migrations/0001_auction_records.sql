-- issue 36: the audit records archived from Redis (app.archive.archiver). docs/DESIGN.md § Archive.
-- One row per auction: `record` is the exact JSON text Redis held (GET /auctions/{id} answers the same
-- body after archiving), partitioned by day on created_at (the record's created_at_ms), so retention
-- drops whole partitions (app.archive.schema.drop_before). The primary key includes the partition key
-- (PostgreSQL requires it); created_at is a function of the record, so re-archiving a record (an
-- archiver killed between its commit and Redis' drop) conflicts and writes nothing.
CREATE TABLE auction_records (
    auction_id     text        NOT NULL,
    created_at     timestamptz NOT NULL,
    advertiser_ids text[]      NOT NULL DEFAULT '{}',
    record         text        NOT NULL,
    archived_at    timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (auction_id, created_at)
) PARTITION BY RANGE (created_at);

-- By advertiser: the auctions an advertiser took part in (GIN on the id array, then by time).
CREATE INDEX auction_records_by_advertiser ON auction_records USING gin (advertiser_ids);
CREATE INDEX auction_records_by_time ON auction_records (created_at);

-- The day's partition, created on first use (the archiver calls it for each day of a batch); an
-- advisory lock serialises concurrent archivers creating the same day.
CREATE FUNCTION archive_ensure_day(table_name text, day date) RETURNS void
LANGUAGE plpgsql AS $$
DECLARE
    part text := format('%s_p%s', table_name, to_char(day, 'YYYYMMDD'));
BEGIN
    PERFORM pg_advisory_xact_lock(hashtext('archive_ensure_day:' || table_name));
    IF to_regclass(part) IS NULL THEN
        EXECUTE format(
            'CREATE TABLE %I PARTITION OF %I FOR VALUES FROM (%L) TO (%L)',
            part, table_name, (day::timestamp AT TIME ZONE 'UTC'),
            ((day + 1)::timestamp AT TIME ZONE 'UTC')
        );
    END IF;
END;
$$;
