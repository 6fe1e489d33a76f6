CREATE TYPE item_kind AS ENUM ('tool', 'toy');
ALTER TABLE items ADD COLUMN kind item_kind NOT NULL DEFAULT 'tool';
ALTER TABLE items ADD COLUMN price numeric(10, 2);
