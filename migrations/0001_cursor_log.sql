-- The cursor log: every durable event once, and its position in each
-- concrete channel it was resolved to. Sequences are dense per channel and
-- assigned under the channel row's lock, so commit order = sequence order.

CREATE TABLE IF NOT EXISTS log_meta (
    singleton  BOOLEAN PRIMARY KEY DEFAULT TRUE CHECK (singleton),
    -- Identity of this log. Cursors carry it; a restored or reset database
    -- gets a new epoch, so old cursors are detected rather than misread.
    epoch      TEXT NOT NULL,
    created_at TIMESTAMPTZ NOT NULL DEFAULT now()
);
INSERT INTO log_meta (epoch)
VALUES (substr(replace(gen_random_uuid()::text, '-', ''), 1, 16))
ON CONFLICT DO NOTHING;

CREATE TABLE IF NOT EXISTS channels (
    id         BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    -- Resolved channel key, e.g. "Content/News-CHLT" or "acme/Content/News-CHLT".
    key        TEXT NOT NULL UNIQUE,
    -- Last sequence assigned in this channel (0 = empty).
    head       BIGINT NOT NULL DEFAULT 0,
    created_at TIMESTAMPTZ NOT NULL DEFAULT now()
);

CREATE TABLE IF NOT EXISTS events (
    pk            BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    event_id      TEXT NOT NULL UNIQUE,
    topic         TEXT NOT NULL,
    tenant        TEXT NOT NULL DEFAULT '',
    user_id       TEXT,
    payload       BYTEA NOT NULL,
    content_type  TEXT NOT NULL,
    created_at_ms BIGINT NOT NULL,
    appended_at   TIMESTAMPTZ NOT NULL DEFAULT now(),
    expires_at    TIMESTAMPTZ NOT NULL,
    -- The event's positions: (channel_ids[i], seqs[i]). Kept on the event so
    -- a reader can de-duplicate an event reached through several channels.
    channel_ids   BIGINT[] NOT NULL,
    seqs          BIGINT[] NOT NULL
);
CREATE INDEX IF NOT EXISTS events_expires_at ON events (expires_at);

CREATE TABLE IF NOT EXISTS entries (
    channel_id  BIGINT NOT NULL,
    seq         BIGINT NOT NULL,
    event_pk    BIGINT NOT NULL,
    appended_at TIMESTAMPTZ NOT NULL,
    PRIMARY KEY (channel_id, seq)
);
-- Lookback replay finds the first entry of a channel inside a time window.
CREATE INDEX IF NOT EXISTS entries_channel_time ON entries (channel_id, appended_at);
