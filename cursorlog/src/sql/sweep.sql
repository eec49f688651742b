WITH gone AS (
    DELETE FROM events
    WHERE pk IN (SELECT pk FROM events WHERE expires_at < now() ORDER BY expires_at LIMIT $1)
    RETURNING channel_ids, seqs
),
gone_entries AS (
    DELETE FROM entries
    USING (SELECT unnest(channel_ids) AS ch, unnest(seqs) AS s FROM gone) g
    WHERE entries.channel_id = g.ch AND entries.seq = g.s
)
SELECT count(*) FROM gone
