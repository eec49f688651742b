SELECT x.channel_id, x.seq, e.pk, e.event_id, e.topic, e.tenant, e.user_id, e.payload,
       e.content_type, e.created_at_ms, e.channel_ids, e.seqs
FROM unnest($1::int8[], $2::int8[], $3::int8[]) AS p(ch, after, upto)
CROSS JOIN LATERAL (
    SELECT channel_id, seq, event_pk FROM entries
    WHERE channel_id = p.ch AND seq > p.after AND seq <= p.upto
    ORDER BY seq
    LIMIT $4
) AS x
JOIN events e ON e.pk = x.event_pk
ORDER BY x.channel_id, x.seq
