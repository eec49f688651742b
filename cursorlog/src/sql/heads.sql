SELECT c.id, c.head,
       (SELECT min(seq) FROM entries WHERE channel_id = c.id) AS floor
FROM channels c WHERE c.id = ANY($1::int8[])
