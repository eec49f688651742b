SELECT p.ch,
       (SELECT seq FROM entries
        WHERE channel_id = p.ch AND appended_at >= p.since
        ORDER BY appended_at, seq LIMIT 1) AS first_seq
FROM unnest($1::int8[], $2::timestamptz[]) AS p(ch, since)
