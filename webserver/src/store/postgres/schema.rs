//! The PostgreSQL schema, as numbered steps (`schema_version` holds the last applied). The
//! same tables as the SQLite store's (`sqlite::MIGRATIONS` after its step 5), written for
//! PostgreSQL: identities for ids, `boolean` flags, `bytea` answers, a counter row for the
//! change feed taken last in each transaction, and PL/pgSQL triggers for the per-submission counts.

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
    lease_lookup  BIGINT REFERENCES lookups (id),
    -- Unix seconds of the database's clock (`now()`), never a web server's.
    lease_until   BIGINT,
    outcome       TEXT,
    node          TEXT,
    answer_sha256 TEXT,
    answer_bytes  BIGINT CHECK (answer_bytes >= 0),
    answer_lookup BIGINT REFERENCES lookups (id),
    last_lookup   BIGINT REFERENCES lookups (id),
    wait_reason   TEXT,
    change_seq    BIGINT NOT NULL DEFAULT 0,
    created_at    BIGINT NOT NULL,
    updated_at    BIGINT NOT NULL,
    UNIQUE (submission_id, task),
    CHECK ((state = 'leased') = (lease_lookup IS NOT NULL AND lease_until IS NOT NULL)),
    CHECK (state <> 'done' OR answer_sha256 IS NOT NULL)
);
CREATE INDEX jobs_state ON jobs (state, id);
CREATE INDEX jobs_author ON jobs (author_id, submission_id DESC, task);
CREATE INDEX jobs_lease_until ON jobs (state, lease_until);
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

CREATE FUNCTION rjs_count_state() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    UPDATE submission_counts
       SET queued = queued + (NEW.state = 'queued')::int - (OLD.state = 'queued')::int,
           leased = leased + (NEW.state = 'leased')::int - (OLD.state = 'leased')::int,
           done = done + (NEW.state = 'done')::int - (OLD.state = 'done')::int,
           failed = failed + (NEW.state = 'failed')::int - (OLD.state = 'failed')::int,
           changed_at = NEW.updated_at
     WHERE submission_id = NEW.submission_id;
    RETURN NULL;
END $$;
CREATE TRIGGER jobs_counts_state AFTER UPDATE OF state ON jobs
    FOR EACH ROW WHEN (OLD.state IS DISTINCT FROM NEW.state)
    EXECUTE FUNCTION rjs_count_state();

CREATE FUNCTION rjs_count_outcome() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    UPDATE submission_counts
       SET exit_zero = exit_zero + rjs_exit_zero(NEW.outcome)::int,
           exit_other = exit_other
                        + (NEW.outcome LIKE 'exit %' AND NOT rjs_exit_zero(NEW.outcome))::int,
           trapped = trapped + (NEW.outcome LIKE 'trap%')::int,
           limited = limited + (NEW.outcome LIKE 'limit%')::int,
           first_answer_at = coalesce(first_answer_at, NEW.updated_at),
           last_answer_at = NEW.updated_at,
           changed_at = NEW.updated_at
     WHERE submission_id = NEW.submission_id;
    RETURN NULL;
END $$;
CREATE TRIGGER jobs_counts_outcome AFTER UPDATE OF outcome ON jobs
    FOR EACH ROW WHEN (OLD.outcome IS NULL AND NEW.outcome IS NOT NULL)
    EXECUTE FUNCTION rjs_count_outcome();

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
