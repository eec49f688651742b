-- Up to $4 entries per channel after its position (and not past its upto),
-- then cut, in append order (event pk), where the payloads read so far pass
-- $5 bytes: the first row always stays, and every channel keeps a prefix of
-- its entries. octet_length of a TOASTed payload reads only its header, so
-- rows past the budget are never fetched whole.
WITH x AS (
    SELECT x.channel_id, x.seq, x.event_pk
    FROM unnest($1::int8[], $2::int8[], $3::int8[]) AS p(ch, after, upto)
    CROSS JOIN LATERAL (
        SELECT channel_id, seq, event_pk FROM entries
        WHERE channel_id = p.ch AND seq > p.after AND seq <= p.upto
        ORDER BY seq
        LIMIT $4
    ) AS x
), sized AS (
    SELECT x.channel_id, x.seq, x.event_pk,
           coalesce(sum(octet_length(e.payload)) OVER (
               ORDER BY x.event_pk, x.channel_id
               ROWS BETWEEN UNBOUNDED PRECEDING AND 1 PRECEDING), 0) AS before,
           count(*) OVER () AS total
    FROM x JOIN events e ON e.pk = x.event_pk
)
SELECT s.channel_id, s.seq, e.pk, e.event_id, e.topic, e.tenant, e.user_id, e.payload,
       e.content_type, e.created_at_ms, e.channel_ids, e.seqs, s.total
FROM sized s
JOIN events e ON e.pk = s.event_pk
WHERE s.before < $5
ORDER BY s.channel_id, s.seq
