//! The web dashboard (`/dashboard/…`, `docs/dashboard.md`): authors see their submissions,
//! tasks and answers, live; the administrator sees the grid. Server-rendered HTML (askama
//! templates, compiled in), one stylesheet and one script of our own, embedded; same listener
//! and TLS as the APIs.
//!
//! * [`secret`]: login tokens and session ids (256 bits; only hashes are stored).
//! * [`session`]: the `__Host-` session cookie, the [`session::Viewer`] it identifies, the
//!   CSRF check of every POST.
//! * [`login`]: the one-time login link (a confirmation page; only its POST uses the token up),
//!   logout.
//! * [`pages`]: the pages; [`answers`]: answers, their files, the zip of all answers, the
//!   stitched image; [`live`]: the submission page's event stream.
//!
//! Every response carries [`CSP`]; nothing changes on GET; an author's data answers any other
//! viewer exactly as something that does not exist would.

pub mod answers;
pub mod live;
pub mod login;
pub mod pages;
pub mod secret;
pub mod session;

use actix_web::http::{StatusCode, header};
use actix_web::{HttpRequest, HttpResponse, web};
use askama::Template;
use futures_util::future::LocalBoxFuture;

use crate::server::AppState;
use crate::server::error::ApiError;
use crate::server::route::{Call, Caller};
use session::Viewer;

/// The dashboard's Content-Security-Policy, on every dashboard response.
pub const CSP: &str = "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self'; \
                       connect-src 'self'; form-action 'self'; frame-ancestors 'none'; \
                       base-uri 'none'";

/// The path of the login page for a token.
pub fn login_path(token: &secret::Secret) -> String {
    format!("/dashboard/login?token={}", token.as_str())
}

/// What the header shows: who is signed in, and the page's live-update stream.
#[derive(Debug, Clone, Default)]
pub struct Nav {
    pub who: Option<String>,
    pub admin: bool,
    pub live: Option<String>,
}

impl Nav {
    pub fn of(viewer: &Viewer) -> Nav {
        Nav {
            who: Some(viewer.who()),
            admin: viewer.is_admin(),
            live: None,
        }
    }
}

#[derive(Template)]
#[template(path = "message.html")]
struct MessagePage<'a> {
    nav: Nav,
    title: &'a str,
    text: &'a str,
    signin: bool,
}

/// Renders a template as a page (500 if it cannot be rendered).
pub fn render(t: &impl Template) -> Result<HttpResponse, ApiError> {
    let html = t
        .render()
        .map_err(|e| ApiError::internal("rendering a page", &e))?;
    Ok(HttpResponse::Ok()
        .content_type("text/html; charset=utf-8")
        .body(html))
}

/// An error as a page: the status, and the message (escaped by the template).
fn error_page(e: &ApiError) -> HttpResponse {
    let signin = e.status == StatusCode::UNAUTHORIZED;
    let title = match e.status {
        StatusCode::UNAUTHORIZED => "Sign in",
        StatusCode::NOT_FOUND => "Not found",
        StatusCode::FORBIDDEN => "Refused",
        StatusCode::BAD_REQUEST => "Bad request",
        _ => "Something went wrong",
    };
    let page = MessagePage {
        nav: Nav::default(),
        title,
        text: &e.message,
        signin,
    };
    let body = page.render().unwrap_or_else(|_| "error".to_owned());
    HttpResponse::build(e.status)
        .content_type("text/html; charset=utf-8")
        .body(body)
}

/// Adds the dashboard's headers to a response.
fn with_headers(mut res: HttpResponse) -> HttpResponse {
    let h = res.headers_mut();
    if let Ok(v) = header::HeaderValue::from_str(CSP) {
        h.insert(header::CONTENT_SECURITY_POLICY, v);
    }
    h.insert(
        header::X_FRAME_OPTIONS,
        header::HeaderValue::from_static("DENY"),
    );
    res
}

/// What a dashboard route answers.
pub type Reply = Result<HttpResponse, ApiError>;

/// An actix handler for a dashboard page: the caller `C` is identified (a [`Viewer`], or
/// nobody for the login pages), errors become pages, and every response gets [`CSP`].
pub fn page<C, H>(
    handler: H,
) -> impl Fn(HttpRequest, web::Payload, web::Data<AppState>) -> LocalBoxFuture<'static, HttpResponse>
+ Clone
+ 'static
where
    C: Caller,
    H: AsyncFn(Call<'_, C>, &mut web::Payload) -> Reply + Clone + 'static,
{
    let inner = crate::server::route::handler::<C, H>(handler);
    move |req, payload, state| {
        let fut = inner(req, payload, state);
        Box::pin(async move {
            with_headers(match fut.await {
                Ok(res) => res,
                Err(e) => error_page(&e),
            })
        })
    }
}

/// Nobody in particular: the caller of the login pages and the assets.
pub struct Anyone;

impl Caller for Anyone {
    async fn identify(_req: &HttpRequest, _state: &AppState) -> Result<Self, ApiError> {
        Ok(Anyone)
    }
}

async fn home(call: Call<'_, Anyone>, _: &mut web::Payload) -> Reply {
    let to = match Viewer::identify(call.req, call.state).await {
        Ok(v) if v.is_admin() => "/dashboard/admin",
        Ok(_) => "/dashboard/submissions",
        Err(e) => return Err(e),
    };
    Ok(HttpResponse::SeeOther()
        .insert_header((header::LOCATION, to))
        .finish())
}

const APP_CSS: &str = include_str!("../../assets/app.css");
const APP_JS: &str = include_str!("../../assets/app.js");
const FAVICON: &str = include_str!("../../assets/favicon.svg");

async fn asset(call: Call<'_, Anyone>, _: &mut web::Payload) -> Reply {
    let (body, kind) = match call.req.match_info().get("name") {
        Some("app.css") => (APP_CSS, "text/css; charset=utf-8"),
        Some("app.js") => (APP_JS, "text/javascript; charset=utf-8"),
        Some("favicon.svg") => (FAVICON, "image/svg+xml"),
        _ => return Err(ApiError::not_found("no such asset")),
    };
    Ok(HttpResponse::Ok()
        .content_type(kind)
        .insert_header((header::CACHE_CONTROL, "no-cache"))
        .body(body))
}

/// The dashboard's routes.
pub fn routes(cfg: &mut web::ServiceConfig) {
    let resource = |path: &str| {
        web::resource(path).default_service(web::to(|| async {
            with_headers(error_page(&ApiError::method_not_allowed()))
        }))
    };
    cfg.service(
        web::scope("/dashboard")
            .service(resource("").route(web::get().to(page::<Anyone, _>(home))))
            .service(resource("/").route(web::get().to(page::<Anyone, _>(home))))
            .service(resource("/assets/{name}").route(web::get().to(page::<Anyone, _>(asset))))
            .service(
                resource("/login")
                    .route(web::get().to(page::<Anyone, _>(login::confirm)))
                    .route(web::post().to(page::<Anyone, _>(login::login))),
            )
            .service(resource("/logout").route(web::post().to(page::<Viewer, _>(login::logout))))
            .service(
                resource("/submissions")
                    .route(web::get().to(page::<Viewer, _>(pages::submissions))),
            )
            .service(
                resource("/submissions/{id}")
                    .route(web::get().to(page::<Viewer, _>(pages::submission))),
            )
            .service(
                resource("/submissions/{id}/events")
                    .route(web::get().to(page::<Viewer, _>(live::events))),
            )
            .service(
                resource("/submissions/{id}/gallery")
                    .route(web::get().to(page::<Viewer, _>(pages::gallery))),
            )
            .service(
                resource("/submissions/{id}/stitched.png")
                    .route(web::get().to(page::<Viewer, _>(answers::stitched))),
            )
            .service(
                resource("/submissions/{id}/answers.zip")
                    .route(web::get().to(page::<Viewer, _>(answers::all_answers))),
            )
            .service(resource("/jobs/{id}").route(web::get().to(page::<Viewer, _>(pages::answer))))
            .service(
                resource("/jobs/{id}/answer.zip")
                    .route(web::get().to(page::<Viewer, _>(answers::archive))),
            )
            .service(
                resource("/jobs/{id}/files/{index}")
                    .route(web::get().to(page::<Viewer, _>(answers::file))),
            )
            .service(resource("/admin").route(web::get().to(page::<Viewer, _>(pages::admin))))
            .default_service(web::to(|| async {
                with_headers(error_page(&ApiError::not_found("no such page")))
            })),
    );
}
