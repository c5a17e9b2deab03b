//! [`Sessions`] on SQLite: `login_tokens` and `sessions` (migration 4), keyed by the SHA-256
//! of the secret. An author's tokens and sessions are refused as soon as the author is
//! removed (every read joins `authors`), and deleted in the same transaction
//! ([`end_all_of`]).

use rusqlite::{Transaction, params};

use super::{SqliteStore, optional_row};
use crate::store::StoreError;
use crate::store::rows::author_from_row;
use crate::store::rules::AUTHOR_COLS;
use crate::store::sessions::{NewSession, Session, Sessions, Subject};

use crate::store::rules::SESSION_TOUCH_EVERY as TOUCH_EVERY;

/// Deletes an author's login tokens and sessions (inside the transaction that removes them).
pub(super) fn end_all_of(tx: &Transaction<'_>, author_id: i64) -> Result<(), StoreError> {
    tx.prepare_cached("DELETE FROM login_tokens WHERE author_id = ?1")?
        .execute([author_id])?;
    tx.prepare_cached("DELETE FROM sessions WHERE author_id = ?1")?
        .execute([author_id])?;
    Ok(())
}

/// The subject of a row's `author_id` (None: the administrator); None if the author was
/// removed.
fn subject(tx: &Transaction<'_>, author_id: Option<i64>) -> Result<Option<Subject>, StoreError> {
    let Some(id) = author_id else {
        return Ok(Some(Subject::Admin));
    };
    let sql = format!("SELECT {AUTHOR_COLS} FROM authors WHERE id = ?1 AND removed = 0");
    Ok(optional_row(tx, &sql, [id], |r| author_from_row(r))?.map(Subject::Author))
}

/// The unexpired token's author id (`Some(None)` for the administrator).
fn token(tx: &Transaction<'_>, hash: &str, now: i64) -> Result<Option<Option<i64>>, StoreError> {
    optional_row(
        tx,
        "SELECT author_id FROM login_tokens WHERE hash = ?1 AND expires_at >= ?2",
        params![hash, now],
        |r| r.get(0),
    )
}

impl Sessions for SqliteStore {
    fn add_login_token(
        &self,
        hash: &str,
        author_id: Option<i64>,
        expires_at: i64,
        now: i64,
    ) -> Result<(), StoreError> {
        self.write(|tx| {
            tx.prepare_cached("DELETE FROM login_tokens WHERE expires_at < ?1")?
                .execute([now])?;
            if let Some(id) = author_id
                && subject(tx, Some(id))?.is_none()
            {
                return Err(StoreError::NotFound(format!("author {id}")));
            }
            tx.prepare_cached(
                "INSERT INTO login_tokens (hash, author_id, created_at, expires_at)
                 VALUES (?1, ?2, ?3, ?4)",
            )?
            .execute(params![hash, author_id, now, expires_at])?;
            Ok(())
        })
    }

    fn peek_login_token(&self, hash: &str, now: i64) -> Result<Option<Subject>, StoreError> {
        self.read(|tx| match token(tx, hash, now)? {
            Some(author) => subject(tx, author),
            None => Ok(None),
        })
    }

    fn login(
        &self,
        token_hash: &str,
        session: &NewSession<'_>,
    ) -> Result<Option<Subject>, StoreError> {
        self.write(|tx| {
            let Some(author) = token(tx, token_hash, session.now)? else {
                return Ok(None);
            };
            // Used up whatever follows: a token is tried once.
            tx.prepare_cached("DELETE FROM login_tokens WHERE hash = ?1")?
                .execute([token_hash])?;
            let Some(who) = subject(tx, author)? else {
                return Ok(None);
            };
            tx.prepare_cached("DELETE FROM sessions WHERE expires_at < ?1")?
                .execute([session.now])?;
            tx.prepare_cached(
                "INSERT INTO sessions (hash, author_id, created_at, last_seen, expires_at)
                 VALUES (?1, ?2, ?3, ?3, ?4)",
            )?
            .execute(params![
                session.hash,
                author,
                session.now,
                session.expires_at
            ])?;
            Ok(Some(who))
        })
    }

    fn session(&self, hash: &str, now: i64, idle: i64) -> Result<Option<Session>, StoreError> {
        let found = self.read(|tx| {
            let row: Option<(Option<i64>, i64, i64, i64)> = optional_row(
                tx,
                "SELECT author_id, created_at, last_seen, expires_at FROM sessions
                 WHERE hash = ?1 AND expires_at >= ?2 AND last_seen >= ?3",
                params![hash, now, now.saturating_sub(idle)],
                |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?)),
            )?;
            let Some((author, created_at, last_seen, expires_at)) = row else {
                return Ok(None);
            };
            Ok(subject(tx, author)?.map(|subject| {
                (
                    Session {
                        subject,
                        created_at,
                        expires_at,
                    },
                    last_seen,
                )
            }))
        })?;
        let Some((session, last_seen)) = found else {
            return Ok(None);
        };
        if now - last_seen >= TOUCH_EVERY {
            self.write(|tx| {
                tx.prepare_cached("UPDATE sessions SET last_seen = ?1 WHERE hash = ?2")?
                    .execute(params![now, hash])?;
                Ok(())
            })?;
        }
        Ok(Some(session))
    }

    fn end_session(&self, hash: &str) -> Result<bool, StoreError> {
        self.write(|tx| {
            Ok(tx
                .prepare_cached("DELETE FROM sessions WHERE hash = ?1")?
                .execute([hash])?
                == 1)
        })
    }
}
