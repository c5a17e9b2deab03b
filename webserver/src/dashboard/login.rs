//! Signing in with a one-time link, and signing out.
//!
//! `GET /dashboard/login?token=…` only shows whom the link signs in (it writes nothing, so
//! link prefetchers and scanners cannot use the token up); the page's form POSTs the token,
//! which uses it up and starts a session in one transaction, sets the cookie and redirects
//! (303) to the dashboard, so the token leaves the address bar.

use actix_web::http::header;
use actix_web::{HttpResponse, web};
use askama::Template;
use serde::Deserialize;

use super::secret::Secret;
use super::session::{self, ABSOLUTE, Viewer, same_origin};
use super::{Anyone, Nav, Reply, render};
use crate::server::body::read_limited;
use crate::server::error::ApiError;
use crate::server::route::Call;
use crate::store::{NewSession, Subject, now};

/// Largest login form body, bytes.
const MAX_FORM: usize = 1024;

#[derive(Deserialize)]
struct TokenForm {
    token: String,
}

fn invalid_link() -> ApiError {
    ApiError::not_found(
        "this login link is not valid: it was used, it expired (links last a minute), or it \
         was never issued. Ask for a new one.",
    )
}

fn token_of(s: &str) -> Result<Secret, ApiError> {
    Secret::parse(s).ok_or_else(invalid_link)
}

#[derive(Template)]
#[template(path = "login.html")]
struct LoginPage {
    nav: Nav,
    name: Option<String>,
    fingerprint: String,
    token: String,
}

/// `GET /dashboard/login?token=…`: the confirmation page.
pub async fn confirm(call: Call<'_, Anyone>, _: &mut web::Payload) -> Reply {
    let q = web::Query::<TokenForm>::from_query(call.req.query_string())
        .map_err(|_| invalid_link())?
        .into_inner();
    let token = token_of(&q.token)?;
    let hash = token.hash();
    let subject = call
        .state
        .store_call("reading a login token", move |s| {
            s.peek_login_token(&hash, now())
        })
        .await?
        .ok_or_else(invalid_link)?;
    let (name, fingerprint) = match subject {
        Subject::Author(a) => (Some(a.name), a.fingerprint),
        Subject::Admin => (None, String::new()),
    };
    render(&LoginPage {
        nav: Nav::default(),
        name,
        fingerprint,
        token: token.as_str().to_owned(),
    })
}

/// `POST /dashboard/login` (form `token`): uses the token up, starts a session.
pub async fn login(call: Call<'_, Anyone>, payload: &mut web::Payload) -> Reply {
    same_origin(call.req)?;
    let body = read_limited(payload, "the login form", MAX_FORM).await?;
    let form: TokenForm = serde_urlencoded_form(&body)?;
    let token = token_of(&form.token)?;
    let id = Secret::new();
    let (token_hash, session_hash) = (token.hash(), id.hash());
    let now = now();
    let subject = call
        .state
        .store_call("starting a session", move |s| {
            s.login(
                &token_hash,
                &NewSession {
                    hash: &session_hash,
                    now,
                    expires_at: now + ABSOLUTE,
                },
            )
        })
        .await?
        .ok_or_else(invalid_link)?;
    let to = match &subject {
        Subject::Author(a) => {
            tracing::info!(author = %a.name, "dashboard sign-in");
            "/dashboard/submissions"
        }
        Subject::Admin => {
            tracing::info!("dashboard sign-in: administrator");
            "/dashboard/admin"
        }
    };
    Ok(HttpResponse::SeeOther()
        .insert_header((header::LOCATION, to))
        .insert_header((header::SET_COOKIE, session::set_cookie(&id)))
        .finish())
}

/// `POST /dashboard/logout`: ends the session.
pub async fn logout(call: Call<'_, Viewer>, payload: &mut web::Payload) -> Reply {
    same_origin(call.req)?;
    let _ = read_limited(payload, "the logout form", MAX_FORM).await?;
    let hash = call.caller.session_hash.clone();
    call.state
        .store_call("ending the session", move |s| s.end_session(&hash))
        .await?;
    Ok(HttpResponse::SeeOther()
        .insert_header((header::LOCATION, "/dashboard/"))
        .insert_header((header::SET_COOKIE, session::clear_cookie()))
        .finish())
}

/// Parses an `application/x-www-form-urlencoded` body.
fn serde_urlencoded_form<T: serde::de::DeserializeOwned>(body: &[u8]) -> Result<T, ApiError> {
    let text = std::str::from_utf8(body).map_err(|_| ApiError::bad_request("form: not UTF-8"))?;
    web::Query::<T>::from_query(text)
        .map(web::Query::into_inner)
        .map_err(|e| ApiError::bad_request(format!("form: {}", rjs_cmd::report::Chain(&e))))
}
