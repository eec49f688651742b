WITH input AS (
    SELECT *
    FROM unnest($1::text[], $2::text[], $3::text[], $4::text[], $5::bytea[], $6::text[], $7::int8[], $8::timestamptz[])
         WITH ORDINALITY AS t(event_id, topic, tenant, user_id, payload, content_type, created_at_ms, expires_at, ord)
),
positions AS (
    SELECT ord, array_agg(ch ORDER BY i) AS channel_ids, array_agg(seq ORDER BY i) AS seqs
    FROM unnest($9::int8[], $10::int8[], $11::int8[]) WITH ORDINALITY AS p(ord, ch, seq, i)
    GROUP BY ord
),
inserted AS (
    INSERT INTO events (event_id, topic, tenant, user_id, payload, content_type, created_at_ms, expires_at, channel_ids, seqs)
    SELECT i.event_id, i.topic, i.tenant, i.user_id, i.payload, i.content_type, i.created_at_ms, i.expires_at, p.channel_ids, p.seqs
    FROM input i JOIN positions p USING (ord)
    ORDER BY i.ord
    RETURNING pk, event_id, channel_ids, seqs, appended_at
),
entry_rows AS (
    INSERT INTO entries (channel_id, seq, event_pk, appended_at)
    SELECT u.ch, u.seq, ins.pk, ins.appended_at
    FROM inserted ins, unnest(ins.channel_ids, ins.seqs) AS u(ch, seq)
)
SELECT pk, event_id FROM inserted
