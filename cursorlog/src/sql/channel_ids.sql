SELECT id, key FROM channels WHERE key = ANY($1::text[])
