COPY events (pk, event_id, topic, tenant, user_id, payload, content_type, created_at_ms, appended_at, expires_at, channel_ids, seqs) FROM STDIN (FORMAT binary)
