INSERT INTO channels (key) SELECT unnest($1::text[]) ORDER BY 1 ON CONFLICT (key) DO NOTHING
