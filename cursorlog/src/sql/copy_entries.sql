COPY entries (channel_id, seq, event_pk, appended_at) FROM STDIN (FORMAT binary)
