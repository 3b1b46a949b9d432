-- system-api storage. The sandbox ERP's tables grow with the ERP issue;
-- this first table records when the adapter store was created.
CREATE TABLE IF NOT EXISTS adapter_meta (
    key   TEXT PRIMARY KEY NOT NULL,
    value TEXT NOT NULL
);
