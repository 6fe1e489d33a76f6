-- duet:no-transaction
DROP FUNCTION item_label(items);
DROP INDEX CONCURRENTLY items_name;
