//! The PostgreSQL schema, as numbered steps (`schema_version` holds the last applied). The
//! same tables as the SQLite store's (`sqlite::MIGRATIONS` after its step 5), written for
//! PostgreSQL: identities for ids, `boolean` flags, `bytea` answers, a counter row for the
//! change feed and per-submission counts kept by the statements that change
//! jobs.

/// Schema steps: step `i` takes `schema_version` from `i` to `i + 1`. Append only.
pub(super) const MIGRATIONS: &[&str] = &[
    // 1: the whole schema of SQLite's steps 1–5.
    r#"
CREATE TABLE authors (
    id          BIGINT  GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    name        TEXT    NOT NULL,
    public_key  TEXT    NOT NULL,
    fingerprint TEXT    NOT NULL,
    created_at  BIGINT  NOT NULL,
    removed     BOOLEAN NOT NULL DEFAULT false
);
CREATE UNIQUE INDEX authors_active_name ON authors (name) WHERE NOT removed;
CREATE UNIQUE INDEX authors_active_key ON authors (public_key) WHERE NOT removed;

CREATE TABLE lookups (
    id          BIGINT  GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    name        TEXT    NOT NULL,
    cert_sha256 TEXT    NOT NULL UNIQUE,
    created_at  BIGINT  NOT NULL,
    revoked     BOOLEAN NOT NULL DEFAULT false
);
CREATE UNIQUE INDEX lookups_active_name ON lookups (name) WHERE NOT revoked;

-- Shared by every web server of the grid: a request replayed to another server is caught.
CREATE TABLE nonces (
    author_id  BIGINT NOT NULL REFERENCES authors (id),
    nonce      TEXT   NOT NULL,
    expires_at BIGINT NOT NULL,
    PRIMARY KEY (author_id, nonce)
);
CREATE INDEX nonces_expiry ON nonces (expires_at);

CREATE TABLE bundles (
    id         TEXT   PRIMARY KEY,
    author_id  BIGINT NOT NULL REFERENCES authors (id),
    name       TEXT   NOT NULL,
    tasks      BIGINT NOT NULL CHECK (tasks >= 0),
    grp        TEXT   NOT NULL,
    size       BIGINT NOT NULL CHECK (size >= 0),
    created_at BIGINT NOT NULL
);

CREATE TABLE submissions (
    id         BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    bundle_id  TEXT   NOT NULL REFERENCES bundles (id),
    author_id  BIGINT NOT NULL REFERENCES authors (id),
    created_at BIGINT NOT NULL
);
CREATE INDEX submissions_author_bundle ON submissions (author_id, bundle_id, id);

-- The change feed's counter: the last number given to a change. A transaction that changes
-- jobs the feed shows takes its numbers from this row as its LAST statement and holds the
-- row's lock until it commits, so numbers become visible in order (a reader that saw number n
-- has seen every number below it): the feed never misses a change that committed late.
CREATE TABLE change_counter (
    one BOOLEAN PRIMARY KEY DEFAULT true CHECK (one),
    seq BIGINT  NOT NULL
);
INSERT INTO change_counter (seq) VALUES (0);

CREATE TABLE jobs (
    id            BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    submission_id BIGINT NOT NULL REFERENCES submissions (id),
    bundle_id     TEXT   NOT NULL REFERENCES bundles (id),
    author_id     BIGINT NOT NULL REFERENCES authors (id),
    task          BIGINT NOT NULL CHECK (task >= 0),
    tasks         BIGINT NOT NULL CHECK (tasks > task),
    grp           TEXT   NOT NULL,
    state         TEXT   NOT NULL CHECK (state IN ('queued', 'leased', 'done', 'failed')),
    attempts      BIGINT NOT NULL DEFAULT 0 CHECK (attempts >= 0),
    reason        TEXT,
    -- The lookups a job names (lease_lookup, answer_lookup, last_lookup) have no foreign key:
    -- lookup rows are never deleted (a revoked one stays), and the check would cost an index
    -- probe per job in every lease and answer, the hottest statements of all.
    lease_lookup  BIGINT,
    -- Unix seconds of the database's clock (`now()`), never a web server's.
    lease_until   BIGINT,
    outcome       TEXT,
    node          TEXT,
    answer_sha256 TEXT,
    answer_bytes  BIGINT CHECK (answer_bytes >= 0),
    answer_lookup BIGINT,
    last_lookup   BIGINT,
    wait_reason   TEXT,
    change_seq    BIGINT NOT NULL DEFAULT 0,
    created_at    BIGINT NOT NULL,
    updated_at    BIGINT NOT NULL,
    UNIQUE (submission_id, task),
    CHECK ((state = 'leased') = (lease_lookup IS NOT NULL AND lease_until IS NOT NULL)),
    CHECK (state <> 'done' OR answer_sha256 IS NOT NULL)
);
-- Partial indexes for the hot paths: a job enters each only while in that state, so a lease or
-- an answer updates fewer indexes.
CREATE INDEX jobs_queued ON jobs (id) WHERE state = 'queued';
CREATE INDEX jobs_leased_by ON jobs (lease_lookup, id) WHERE state = 'leased';
CREATE INDEX jobs_author ON jobs (author_id, submission_id DESC, task);
CREATE INDEX jobs_lease_until ON jobs (lease_until) WHERE state = 'leased';
CREATE INDEX jobs_answer_sha256 ON jobs (answer_sha256) WHERE answer_sha256 IS NOT NULL;
CREATE INDEX jobs_author_change ON jobs (author_id, change_seq);
CREATE INDEX jobs_author_bundle ON jobs (author_id, bundle_id, submission_id DESC, task);

CREATE TABLE answer_data (
    job_id BIGINT PRIMARY KEY REFERENCES jobs (id),
    bytes  BYTEA  NOT NULL
);

CREATE TABLE submission_counts (
    submission_id   BIGINT PRIMARY KEY REFERENCES submissions (id),
    queued          BIGINT NOT NULL DEFAULT 0,
    leased          BIGINT NOT NULL DEFAULT 0,
    done            BIGINT NOT NULL DEFAULT 0,
    failed          BIGINT NOT NULL DEFAULT 0,
    exit_zero       BIGINT NOT NULL DEFAULT 0,
    exit_other      BIGINT NOT NULL DEFAULT 0,
    trapped         BIGINT NOT NULL DEFAULT 0,
    limited         BIGINT NOT NULL DEFAULT 0,
    first_answer_at BIGINT,
    last_answer_at  BIGINT,
    changed_at      BIGINT NOT NULL
);

-- An outcome line that says the program exited 0 (`rjs_wire::api::exited_zero`).
CREATE FUNCTION rjs_exit_zero(outcome TEXT) RETURNS BOOLEAN
    LANGUAGE sql IMMUTABLE
    AS $$ SELECT outcome = 'exit 0' OR outcome LIKE 'exit 0 %' OR outcome LIKE 'exit 0,%' $$;

-- The counts follow every change of a job's state or outcome in the statement that makes it
-- (`postgres::changing_jobs`): one update of the submission's row per statement, not one per
-- job (a lease of 32 jobs would otherwise update that row, which every server's transactions
-- on the submission touch, 32 times).

-- Dashboard logins, shared by every web server: a session made on one is good on all.
CREATE TABLE login_tokens (
    hash       TEXT   PRIMARY KEY,
    author_id  BIGINT REFERENCES authors (id),
    created_at BIGINT NOT NULL,
    expires_at BIGINT NOT NULL
);
CREATE TABLE sessions (
    hash       TEXT   PRIMARY KEY,
    author_id  BIGINT REFERENCES authors (id),
    created_at BIGINT NOT NULL,
    last_seen  BIGINT NOT NULL,
    expires_at BIGINT NOT NULL
);
CREATE INDEX sessions_author ON sessions (author_id);
"#,
];
