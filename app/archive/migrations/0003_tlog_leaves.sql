-- issue 36: the transparency log's leaves and its auction -> leaf index, archived from Redis
-- (app.archive.tlog) before the archiver trims them there. docs/DESIGN.md § Archive.
-- NOT partitioned, unlike the records: the log is append-only for ever - every signed tree head covers
-- every leaf from 0, so a leaf may never be dropped (retention by dropping partitions, the reason the
-- records are partitioned by day, must never apply here; it would break every later proof), and the
-- reads are by leaf index range (the sequencer extending its tree, the audit) and by auction id (a
-- proof): both primary keys. A row is ~70 B (32 B hash, 8 B index, tuple header) plus its index.
-- Re-archiving after a kill writes the same rows (ON CONFLICT DO NOTHING): stored once.
CREATE TABLE tlog_leaves (
    leaf_index  bigint      PRIMARY KEY CHECK (leaf_index >= 0),
    leaf_hash   bytea       NOT NULL CHECK (octet_length(leaf_hash) = 32),
    archived_at timestamptz NOT NULL DEFAULT now()
);

CREATE TABLE tlog_index (
    auction_id  text        PRIMARY KEY,
    leaf_index  bigint      NOT NULL,
    archived_at timestamptz NOT NULL DEFAULT now()
);
