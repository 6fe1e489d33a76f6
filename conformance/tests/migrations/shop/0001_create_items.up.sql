CREATE TABLE items (
    id serial PRIMARY KEY,
    name text NOT NULL
);
-- A semicolon in a string and a comment must not split anything; this runs
-- in one transaction either way.
INSERT INTO items (name) VALUES ('first; of many');
