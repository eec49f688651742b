-- A pk for each event of a batch (in batch order; unused ones leave gaps)
-- and the transaction's timestamp, which every row of the batch carries as
-- its appended_at (what the column's default, now(), would give).
SELECT array(SELECT nextval('events_pk_seq')
             FROM generate_series(1, $1::int8)) AS pks,
       now() AS appended_at
