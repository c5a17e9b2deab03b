//! How every API route runs: the caller is identified first (an author by the request's
//! signature, a lookup server by its client certificate: a [`Caller`]), then the handler gets
//! the request, the shared state and the caller in one [`Call`]; if anything refuses the
//! request before its body was read, what is left of the body is drained ([`drained`]) before
//! the error is sent. Another kind of caller is one more [`Caller`] implementation.

use actix_web::{HttpRequest, HttpResponse, web};
use futures_util::future::LocalBoxFuture;

use super::AppState;
use super::body::drained;
use super::error::ApiError;

/// What a route answers.
pub type Reply = Result<HttpResponse, ApiError>;

/// Who may call a route, and how a request proves it.
// Our own trait, implemented and awaited only inside this crate (on actix's single-threaded
// workers): the futures need not be `Send`.
#[allow(async_fn_in_trait)]
pub trait Caller: Sized + 'static {
    /// Identifies the caller of `req` from its head only (the body is not read yet), or
    /// refuses the request.
    async fn identify(req: &HttpRequest, state: &AppState) -> Result<Self, ApiError>;
}

/// One identified request, as a handler gets it (with the body beside it).
pub struct Call<'a, C> {
    pub req: &'a HttpRequest,
    pub state: &'a AppState,
    pub caller: C,
}

/// An actix handler running `handler` for callers of kind `C` (see the module docs).
pub fn handler<C, H>(
    handler: H,
) -> impl Fn(HttpRequest, web::Payload, web::Data<AppState>) -> LocalBoxFuture<'static, Reply>
+ Clone
+ 'static
where
    C: Caller,
    H: AsyncFn(Call<'_, C>, &mut web::Payload) -> Reply + Clone + 'static,
{
    move |req, payload, state| {
        let handler = handler.clone();
        Box::pin(async move {
            drained(payload, async |payload| {
                let caller = C::identify(&req, &state).await?;
                let call = Call {
                    req: &req,
                    state: &state,
                    caller,
                };
                handler(call, payload).await
            })
            .await
        })
    }
}
