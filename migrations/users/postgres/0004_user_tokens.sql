-- User tokens (SPEC "Who may call what"): Ed25519 keys that sign them, and
-- when each account's password last changed (a token issued before that is
-- refused).
CREATE TABLE token_keys (
    kid         TEXT PRIMARY KEY,
    -- The 32-byte Ed25519 seed. Like the other signing keys, it lives in the
    -- database the replicas share; protect the database and its backups.
    private_key BYTEA NOT NULL,
    public_key  BYTEA NOT NULL,
    create_time TIMESTAMPTZ NOT NULL
);

ALTER TABLE users ADD COLUMN password_change_time TIMESTAMPTZ;
