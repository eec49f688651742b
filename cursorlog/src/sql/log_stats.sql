-- Size of the log on disk (tables, indexes, TOAST) and the age of its oldest
-- event. The oldest event is the first by primary key (pk grows with append
-- order), found through the primary-key index without scanning the table.
SELECT pg_total_relation_size('events'::regclass) + pg_total_relation_size('entries'::regclass) AS bytes,
       (SELECT extract(epoch FROM now() - appended_at)::float8 FROM events ORDER BY pk LIMIT 1) AS oldest_age_seconds
