//! [`Sessions`] on PostgreSQL: `login_tokens` and `sessions`, keyed by the SHA-256 of the
//! secret, shared by every web server of the grid (a session started through one is good on
//! all; a logout through one ends it on all). The rules are `sqlite::sessions`'.

use super::{PgStore, execute, optional_row};
use crate::store::StoreError;
use crate::store::rows::author_from_row;
use crate::store::rules::AUTHOR_COLS;
use crate::store::sessions::{NewSession, Session, Sessions, Subject};
use deadpool_postgres::GenericClient;

use crate::store::rules::SESSION_TOUCH_EVERY as TOUCH_EVERY;

/// Deletes an author's login tokens and sessions (inside the transaction that removes them).
pub(super) async fn end_all_of(tx: &impl GenericClient, author_id: i64) -> Result<(), StoreError> {
    execute(
        tx,
        "DELETE FROM login_tokens WHERE author_id = $1",
        &[&author_id],
    )
    .await?;
    execute(
        tx,
        "DELETE FROM sessions WHERE author_id = $1",
        &[&author_id],
    )
    .await?;
    Ok(())
}

/// The subject of a row's `author_id` (None: the administrator); None if the author was
/// removed.
async fn subject(
    tx: &impl GenericClient,
    author_id: Option<i64>,
) -> Result<Option<Subject>, StoreError> {
    let Some(id) = author_id else {
        return Ok(Some(Subject::Admin));
    };
    let sql = format!("SELECT {AUTHOR_COLS} FROM authors WHERE id = $1 AND NOT removed");
    Ok(optional_row(tx, &sql, &[&id], author_from_row)
        .await?
        .map(Subject::Author))
}

/// The unexpired token's author id (`Some(None)` for the administrator).
async fn token(
    tx: &impl GenericClient,
    hash: &str,
    now: i64,
) -> Result<Option<Option<i64>>, StoreError> {
    optional_row(
        tx,
        "SELECT author_id FROM login_tokens WHERE hash = $1 AND expires_at >= $2",
        &[&hash, &now],
        |r| Ok(r.try_get(0)?),
    )
    .await
}

impl Sessions for PgStore {
    fn add_login_token(
        &self,
        hash: &str,
        author_id: Option<i64>,
        expires_at: i64,
        now: i64,
    ) -> Result<(), StoreError> {
        self.write(async |tx| {
            let c = self.clock(tx, now).await?;
            execute(
                tx,
                "DELETE FROM login_tokens WHERE expires_at < $1",
                &[&c.now],
            )
            .await?;
            if let Some(id) = author_id
                && subject(tx, Some(id)).await?.is_none()
            {
                return Err(StoreError::NotFound(format!("author {id}")));
            }
            execute(
                tx,
                "INSERT INTO login_tokens (hash, author_id, created_at, expires_at)
                 VALUES ($1, $2, $3, $4)",
                &[&hash, &author_id, &c.now, &c.at(expires_at)],
            )
            .await?;
            Ok(())
        })
    }

    fn peek_login_token(&self, hash: &str, now: i64) -> Result<Option<Subject>, StoreError> {
        self.read(async |tx| {
            let t = self.clock(tx, now).await?.now;
            match token(tx, hash, t).await? {
                Some(author) => subject(tx, author).await,
                None => Ok(None),
            }
        })
    }

    fn login(
        &self,
        token_hash: &str,
        session: &NewSession<'_>,
    ) -> Result<Option<Subject>, StoreError> {
        self.write(async |tx| {
            let c = self.clock(tx, session.now).await?;
            // Used up whatever follows (a token is tried once); of two logins racing with one
            // token (through two servers), one deletes it and the other finds none.
            let used: Option<Option<i64>> = optional_row(
                tx,
                "DELETE FROM login_tokens WHERE hash = $1 AND expires_at >= $2
                 RETURNING author_id",
                &[&token_hash, &c.now],
                |r| Ok(r.try_get(0)?),
            )
            .await?;
            let Some(author) = used else {
                return Ok(None);
            };
            let Some(who) = subject(tx, author).await? else {
                return Ok(None);
            };
            execute(tx, "DELETE FROM sessions WHERE expires_at < $1", &[&c.now]).await?;
            execute(
                tx,
                "INSERT INTO sessions (hash, author_id, created_at, last_seen, expires_at)
                 VALUES ($1, $2, $3, $3, $4)",
                &[&session.hash, &author, &c.now, &c.at(session.expires_at)],
            )
            .await?;
            Ok(Some(who))
        })
    }

    fn session(&self, hash: &str, now: i64, idle: i64) -> Result<Option<Session>, StoreError> {
        let found = self.read(async |tx| {
            let t = self.clock(tx, now).await?.now;
            let row: Option<(Option<i64>, i64, i64, i64)> = optional_row(
                tx,
                "SELECT author_id, created_at, last_seen, expires_at FROM sessions
                 WHERE hash = $1 AND expires_at >= $2 AND last_seen >= $3",
                &[&hash, &t, &t.saturating_sub(idle)],
                |r| Ok((r.try_get(0)?, r.try_get(1)?, r.try_get(2)?, r.try_get(3)?)),
            )
            .await?;
            let Some((author, created_at, last_seen, expires_at)) = row else {
                return Ok(None);
            };
            Ok(subject(tx, author).await?.map(|subject| {
                (
                    Session {
                        subject,
                        created_at,
                        expires_at,
                    },
                    last_seen,
                    t,
                )
            }))
        })?;
        let Some((session, last_seen, t)) = found else {
            return Ok(None);
        };
        if t - last_seen >= TOUCH_EVERY {
            self.write(async |tx| {
                execute(
                    tx,
                    "UPDATE sessions SET last_seen = greatest(last_seen, $1) WHERE hash = $2",
                    &[&t, &hash],
                )
                .await?;
                Ok(())
            })?;
        }
        Ok(Some(session))
    }

    fn end_session(&self, hash: &str) -> Result<bool, StoreError> {
        self.write(async |tx| {
            Ok(execute(tx, "DELETE FROM sessions WHERE hash = $1", &[&hash]).await? == 1)
        })
    }
}
