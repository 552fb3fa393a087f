-- Run once by the postgres image on an empty data volume (docker-compose.yml).
-- Each heft service owns its own database; neither reads the other's.
CREATE DATABASE heft_users;
CREATE DATABASE heft_entries;
