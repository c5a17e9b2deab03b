//! API errors: `{"error": "...", "code": "..."}` with the status of `docs/webserver-api.md`.

use std::fmt;

use actix_web::http::StatusCode;
use actix_web::{HttpResponse, ResponseError};
use rjs_wire::api::ErrorBody;

use crate::store::StoreError;

/// One refused request: status, stable code and a sentence with the cause. Never carries a
/// server path or an internal error's text (those are logged, see [`ApiError::internal`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ApiError {
    pub status: StatusCode,
    pub code: &'static str,
    pub message: String,
}

impl ApiError {
    pub fn new(status: StatusCode, code: &'static str, message: impl Into<String>) -> Self {
        ApiError {
            status,
            code,
            message: message.into(),
        }
    }

    pub fn bad_request(message: impl Into<String>) -> Self {
        Self::new(StatusCode::BAD_REQUEST, "bad-request", message)
    }

    pub fn unauthorized(code: &'static str, message: impl Into<String>) -> Self {
        Self::new(StatusCode::UNAUTHORIZED, code, message)
    }

    pub fn forbidden(code: &'static str, message: impl Into<String>) -> Self {
        Self::new(StatusCode::FORBIDDEN, code, message)
    }

    pub fn not_found(message: impl Into<String>) -> Self {
        Self::new(StatusCode::NOT_FOUND, "not-found", message)
    }

    pub fn too_large(what: &str, limit: u64) -> Self {
        Self::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            "too-large",
            format!("{what} is larger than the limit of {limit} bytes"),
        )
    }

    pub fn method_not_allowed() -> Self {
        Self::new(
            StatusCode::METHOD_NOT_ALLOWED,
            "method-not-allowed",
            "this method is not allowed on this resource",
        )
    }

    /// The database is out of this server's reach (a [`StoreError::Unavailable`]): 503, so
    /// that a lookup or a load balancer turns to another web server of the grid.
    pub fn store_unavailable(what: &str) -> Self {
        Self::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "store-unavailable",
            format!(
                "this web server cannot reach its database while {what}: try another one, or later"
            ),
        )
    }

    /// A server-side failure: logged with its whole cause chain, answered with `what` only.
    /// A store that cannot be reached is [`store_unavailable`](Self::store_unavailable).
    pub fn internal(what: &str, err: &(dyn std::error::Error + 'static)) -> Self {
        if err
            .downcast_ref::<StoreError>()
            .is_some_and(StoreError::is_unavailable)
        {
            tracing::warn!(error = %rjs_cmd::chain(err), "{what}");
            return Self::store_unavailable(what);
        }
        tracing::error!(error = %rjs_cmd::chain(err), "{what}");
        Self::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            "internal",
            format!("internal error while {what}"),
        )
    }

    /// Like [`internal`](Self::internal) for failures without an error value.
    pub fn internal_msg(what: &str, detail: &str) -> Self {
        tracing::error!(error = %detail, "{what}");
        Self::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            "internal",
            format!("internal error while {what}"),
        )
    }

    /// A store failure with no client-side meaning.
    pub fn store(what: &str) -> impl FnOnce(StoreError) -> ApiError + '_ {
        move |e| ApiError::internal(what, &e)
    }
}

impl fmt::Display for ApiError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{} ({}): {}",
            self.status.as_u16(),
            self.code,
            self.message
        )
    }
}

impl std::error::Error for ApiError {}

impl ResponseError for ApiError {
    fn status_code(&self) -> StatusCode {
        self.status
    }

    fn error_response(&self) -> HttpResponse {
        let mut response = HttpResponse::build(self.status);
        if self.status == StatusCode::SERVICE_UNAVAILABLE {
            response.insert_header((actix_web::http::header::RETRY_AFTER, "5"));
        }
        response.json(ErrorBody {
            error: self.message.clone(),
            code: self.code.to_owned(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn internal_hides_the_cause() {
        let cause = std::io::Error::other("/secret/path/rjs.db: disk full");
        let e = ApiError::internal("recording the bundle", &cause);
        assert_eq!(e.status, StatusCode::INTERNAL_SERVER_ERROR);
        assert_eq!(e.code, "internal");
        assert!(!e.message.contains("/secret"), "{}", e.message);
    }

    #[test]
    fn an_unreachable_store_is_503() {
        let cause = StoreError::Unavailable(Box::new(std::io::Error::other("refused")));
        let e = ApiError::internal("leasing jobs", &cause);
        assert_eq!(e.status, StatusCode::SERVICE_UNAVAILABLE);
        assert_eq!(e.code, "store-unavailable");
        let other = StoreError::Backend(Box::new(std::io::Error::other("syntax")));
        assert_eq!(
            ApiError::internal("leasing jobs", &other).status,
            StatusCode::INTERNAL_SERVER_ERROR
        );
        let r = e.error_response();
        assert_eq!(r.headers().get("retry-after").unwrap(), "5");
    }
}
