-- duet:no-transaction
CREATE INDEX CONCURRENTLY items_name ON items (name);
CREATE FUNCTION item_label(i items) RETURNS text LANGUAGE sql AS $body$
    SELECT i.name || ';' || i.id
$body$;
