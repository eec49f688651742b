UPDATE channels SET head = d.head
FROM unnest($1::int8[], $2::int8[]) AS d(id, head)
WHERE channels.id = d.id
