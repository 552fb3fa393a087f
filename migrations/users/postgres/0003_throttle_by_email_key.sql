-- Failed logins are counted per email, known or not, under a keyed hash of
-- the normalised email (HMAC with the 'login_throttle' signing key): unknown
-- emails are throttled exactly like registered ones, so the throttle's
-- answers and timing do not tell which emails have accounts. No foreign key.
DROP TABLE login_throttle;
CREATE TABLE login_throttle (
    email_key    BYTEA PRIMARY KEY,
    window_start TIMESTAMPTZ NOT NULL,
    failures     INTEGER NOT NULL
);
