SELECT id, head FROM channels WHERE id = ANY($1::int8[]) ORDER BY id FOR UPDATE
