//! Dashboard logins: one-time login tokens and the sessions they start. The store keeps only
//! SHA-256 hashes of tokens and session ids, never the secrets themselves.

use super::{Author, StoreError};

/// Who a login token or a session is for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Subject {
    /// An enrolled author (sees their own submissions and answers).
    Author(Author),
    /// The web server's administrator (sees the grid, not answers).
    Admin,
}

impl Subject {
    pub fn author(&self) -> Option<&Author> {
        match self {
            Subject::Author(a) => Some(a),
            Subject::Admin => None,
        }
    }
}

/// A session as a request finds it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Session {
    pub subject: Subject,
    pub created_at: i64,
    /// It ends then, however active.
    pub expires_at: i64,
}

/// A session to start.
#[derive(Debug, Clone, Copy)]
pub struct NewSession<'a> {
    /// SHA-256 (hex) of the session id.
    pub hash: &'a str,
    pub now: i64,
    /// Absolute end (Unix seconds).
    pub expires_at: i64,
}

/// Login tokens and sessions (a part of [`Store`](super::Store)).
pub trait Sessions {
    /// Records a login token (its hash) for an author (`Some(author_id)`) or the
    /// administrator (`None`), valid until `expires_at`. Expired tokens may be pruned.
    fn add_login_token(
        &self,
        hash: &str,
        author_id: Option<i64>,
        expires_at: i64,
        now: i64,
    ) -> Result<(), StoreError>;
    /// Whom an unexpired, unused token is for; writes nothing (a GET of the login page must
    /// not use the token up). None if it is unknown, used, expired, or its author was removed.
    fn peek_login_token(&self, hash: &str, now: i64) -> Result<Option<Subject>, StoreError>;
    /// Uses the token up and starts a session for its subject, in one transaction. None
    /// (nothing changed) if the token is unknown, used, expired, or its author was removed.
    fn login(
        &self,
        token_hash: &str,
        session: &NewSession<'_>,
    ) -> Result<Option<Subject>, StoreError>;
    /// The live session with this hash: not ended, not past `expires_at`, used within `idle`
    /// seconds, its author not removed. Records the use (at most once a minute).
    fn session(&self, hash: &str, now: i64, idle: i64) -> Result<Option<Session>, StoreError>;
    /// Ends a session (logout). False if there was none.
    fn end_session(&self, hash: &str) -> Result<bool, StoreError>;
}
