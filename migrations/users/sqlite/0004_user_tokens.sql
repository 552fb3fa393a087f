-- User tokens: Ed25519 keys that sign them, and when each account's password
-- last changed (a token issued before that is refused).
CREATE TABLE token_keys (
    kid         TEXT PRIMARY KEY,
    private_key BLOB NOT NULL,
    public_key  BLOB NOT NULL,
    create_time INTEGER NOT NULL
);

ALTER TABLE users ADD COLUMN password_change_time INTEGER;
