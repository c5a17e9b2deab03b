//! `rjs-webserver serve`: the HTTPS server (actix-web over rustls) for the author API, the
//! lookup API and `/healthz` (`docs/webserver-api.md`).
//!
//! * TLS 1.3/1.2 only, HTTP/1.1 and HTTP/2; client certificates optional at the TLS layer
//!   (verified against the web server's CA when presented) and required by the lookup
//!   routes, which read the certificate's SHA-256 that [`on_connect`] stored in the
//!   connection's extensions and check it against the store on every request.
//! * The store is synchronous: every call runs on actix's blocking pool (`web::block`), except
//!   answers, which one committer thread records for many requests at a time (`commit`).
//! * A background task requeues expired leases every second and tells the event stream;
//!   another tells it of jobs queued through other servers sharing the store (`queue`).
//! * SIGTERM/SIGINT: event streams end, in-flight requests get [`SHUTDOWN_GRACE`] to finish,
//!   then [`run`] returns `Ok`.

pub mod activity;
mod auth;
pub(crate) mod author;
pub(crate) mod body;
pub(crate) mod changes;
mod commit;
pub(crate) mod error;
mod events;
mod listen;
mod lookup;
mod pins;
mod queue;
pub(crate) mod route;
pub(crate) mod validate;

use std::any::Any;
use std::future::Future;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use actix_web::dev::{Extensions, Service as _};
use actix_web::{App, HttpRequest, HttpResponse, web};
use tokio::sync::watch;

pub use error::ApiError;
pub use events::Events;
pub use listen::PRE_AUTH_LIMITS;
pub use lookup::PeerCert;

use crate::admin::{self, AdminError, Site};
use crate::store::Store;
use crate::store::blobs::gc::{self, SweepOptions};
use crate::store::blobs::{BlobError, BlobLocation, BlobStore};
use crate::store::config::StoreConfig;

/// Default listen address.
pub const DEFAULT_LISTEN: &str = "127.0.0.1:8443";
/// Default largest bundle and answer, bytes.
pub const DEFAULT_MAX_BODY: u64 = 64 * 1024 * 1024;
/// Default attempts before a job fails.
pub const DEFAULT_MAX_ATTEMPTS: u32 = 3;
/// Time to receive a request's head.
pub const CLIENT_REQUEST_TIMEOUT: Duration = Duration::from_secs(10);
/// Idle keep-alive connections are closed after this.
pub const KEEP_ALIVE: Duration = Duration::from_secs(75);
/// Time a client gets to close its side after the response.
pub const CLIENT_DISCONNECT_TIMEOUT: Duration = Duration::from_secs(5);
/// Time a client gets for the TLS handshake.
pub const TLS_HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(5);
/// In-flight requests get this long to finish after a stop signal, seconds.
pub const SHUTDOWN_GRACE: u64 = 10;
/// Interval of the lease-expiry task.
pub const EXPIRY_INTERVAL: Duration = Duration::from_secs(1);
/// Default time between two sweeps of the blob collector (each ±25 %, so that servers
/// sharing a bucket spread theirs).
pub const DEFAULT_BLOB_SWEEP_EVERY: Duration = Duration::from_secs(10 * 60);

/// Settings of `serve`.
#[derive(Debug, Clone)]
pub struct ServeConfig {
    pub data: PathBuf,
    /// `host:port`; port 0 picks a free port (printed on start).
    pub listen: String,
    pub max_bundle: u64,
    pub max_answer: u64,
    pub max_attempts: u32,
    /// HTTP workers; None: one per available core.
    pub workers: Option<usize>,
    /// Where the metadata store is (default: the data directory's SQLite file).
    pub store: StoreConfig,
    /// Where blobs are kept (default: `blobs/` in the data directory).
    pub blobs: BlobLocation,
    /// Unreferenced blobs younger than this are kept.
    pub blob_grace: Duration,
    /// Time between two sweeps of the blob collector; None: no collection.
    pub blob_sweep_every: Option<Duration>,
}

impl ServeConfig {
    pub fn new(data: impl Into<PathBuf>) -> Self {
        ServeConfig {
            data: data.into(),
            listen: DEFAULT_LISTEN.to_owned(),
            max_bundle: DEFAULT_MAX_BODY,
            max_answer: DEFAULT_MAX_BODY,
            max_attempts: DEFAULT_MAX_ATTEMPTS,
            workers: None,
            store: StoreConfig::Sqlite,
            blobs: BlobLocation::Folder,
            blob_grace: gc::DEFAULT_GRACE,
            blob_sweep_every: Some(DEFAULT_BLOB_SWEEP_EVERY),
        }
    }
}

/// Why the server could not start or stopped with an error.
#[derive(Debug, thiserror::Error)]
pub enum ServeError {
    #[error("invalid setting: {0}")]
    Config(String),
    #[error(transparent)]
    Admin(#[from] AdminError),
    #[error("loading the TLS certificate and key")]
    Tls(#[from] rjs_wire::tls::TlsError),
    #[error("opening the blob store")]
    Blobs(#[source] BlobError),
    #[error("listening on {addr}")]
    Bind {
        addr: String,
        #[source]
        source: std::io::Error,
    },
    #[error("running the server")]
    Run(#[source] std::io::Error),
}

/// Limits the handlers apply.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    pub max_bundle: u64,
    pub max_answer: u64,
    pub max_attempts: u32,
}

/// What every handler shares.
pub struct AppState {
    pub store: Arc<dyn Store>,
    pub blobs: BlobStore,
    /// Records answers, many requests' in one transaction.
    pub answers: commit::AnswerCommitter,
    /// Blobs committed but not yet recorded (see `pins`).
    pub pins: Arc<pins::BlobPins>,
    pub events: Events,
    /// The newest job change, for live updates (author feed, dashboard).
    pub changes: changes::Changes,
    /// Lookups' last contact and answers per minute (the administrator's page).
    pub activity: Arc<activity::Activity>,
    /// Answers' times as the dashboard's task rows show them, read once each.
    pub answer_times: Arc<crate::dashboard::answers::TimesCache>,
    pub limits: Limits,
    /// The audience author requests must name: [`rjs_signer::request::audience`] of this
    /// server's CA certificate.
    pub audience: String,
}

impl AppState {
    /// Runs one store call on the blocking pool; a store error is answered as `internal`
    /// while `what` (its cause logged).
    pub async fn store_call<T, F>(&self, what: &str, f: F) -> Result<T, ApiError>
    where
        F: FnOnce(&dyn Store) -> Result<T, crate::store::StoreError> + Send + 'static,
        T: Send + 'static,
    {
        self.store_call_or(f, ApiError::store(what)).await
    }

    /// Runs one store call on the blocking pool; `refuse` answers its error (for errors that
    /// mean something to the client, e.g. `NotFound`).
    pub async fn store_call_or<T, F>(
        &self,
        f: F,
        refuse: impl FnOnce(crate::store::StoreError) -> ApiError,
    ) -> Result<T, ApiError>
    where
        F: FnOnce(&dyn Store) -> Result<T, crate::store::StoreError> + Send + 'static,
        T: Send + 'static,
    {
        let store = self.store.clone();
        body::blocking(move || Ok(f(store.as_ref())))
            .await?
            .map_err(refuse)
    }

    /// Tells event listeners how many jobs are queued (after jobs were queued). A failure to
    /// count is only logged.
    pub async fn notify_queued(&self) {
        let store = self.store.clone();
        match web::block(move || store.queued_count()).await {
            Ok(Ok(n)) => self.events.notify(n),
            Ok(Err(e)) => {
                tracing::warn!(error = %rjs_cmd::chain(&e), "counting queued jobs")
            }
            Err(e) => tracing::warn!(error = %rjs_cmd::report::Chain(&e), "counting queued jobs"),
        }
    }
}

/// Stores the SHA-256 of the client certificate (if one was presented and verified) in the
/// connection's extensions, where the lookup routes find it as [`PeerCert`].
pub fn on_connect(io: &dyn Any, ext: &mut Extensions) {
    use actix_tls::accept::rustls_0_23::TlsStream;
    use actix_web::rt::net::TcpStream;
    let Some(tls) = io.downcast_ref::<TlsStream<TcpStream>>() else {
        return;
    };
    let (_, conn) = tls.get_ref();
    if let Some(leaf) = conn.peer_certificates().and_then(|c| c.first()) {
        ext.insert(PeerCert(rjs_wire::tls::cert_sha256(leaf)));
    }
}

/// Ready: the server answers and reaches its database (a trivial read); else 503
/// `store-unavailable`, so that lookups and load balancers turn to another web server.
async fn healthz(state: web::Data<AppState>) -> Result<HttpResponse, ApiError> {
    state
        .store_call("checking the database", |store| store.check())
        .await?;
    Ok(HttpResponse::Ok().content_type("text/plain").body("ok"))
}

async fn not_found(req: HttpRequest) -> Result<HttpResponse, ApiError> {
    Err(ApiError::not_found(format!(
        "no such resource: {}",
        req.path().chars().take(200).collect::<String>()
    )))
}

async fn method_not_allowed() -> Result<HttpResponse, ApiError> {
    Err(ApiError::method_not_allowed())
}

/// The routes (under whatever app data holds a `web::Data<AppState>`).
pub fn routes(cfg: &mut web::ServiceConfig) {
    use rjs_wire::api::{AUTHOR_PREFIX, LOOKUP_PREFIX};
    use route::handler;
    let resource = |path: &str| web::resource(path).default_service(web::to(method_not_allowed));
    cfg.service(resource("/healthz").route(web::get().to(healthz)))
        .service(
            web::scope(AUTHOR_PREFIX)
                .service(resource("/bundles").route(web::post().to(handler(author::upload))))
                .service(resource("/jobs").route(web::get().to(handler(author::jobs))))
                .service(resource("/jobs/{id}").route(web::get().to(handler(author::job))))
                .service(
                    resource("/jobs/{id}/answer").route(web::get().to(handler(author::answer))),
                )
                .service(
                    resource("/submissions").route(web::get().to(handler(author::submissions))),
                )
                .service(
                    resource("/submissions/{id}").route(web::get().to(handler(author::submission))),
                )
                .service(resource("/events").route(web::get().to(handler(author::events))))
                .service(resource("/changes").route(web::get().to(handler(author::changes))))
                .service(
                    resource("/dashboard/login")
                        .route(web::post().to(handler(author::dashboard_login))),
                )
                .service(resource("/whoami").route(web::get().to(handler(author::whoami)))),
        )
        .service(
            web::scope(LOOKUP_PREFIX)
                .service(resource("/lease").route(web::post().to(handler(lookup::lease))))
                .service(resource("/renew").route(web::post().to(handler(lookup::renew))))
                .service(resource("/held").route(web::post().to(handler(lookup::held))))
                .service(resource("/release").route(web::post().to(handler(lookup::release))))
                .service(resource("/waiting").route(web::post().to(handler(lookup::waiting))))
                .service(
                    resource("/jobs/{id}/failure").route(web::post().to(handler(lookup::failure))),
                )
                .service(
                    resource("/jobs/{id}/answer").route(web::put().to(handler(lookup::answer))),
                )
                .service(resource("/answers").route(web::post().to(handler(lookup::answers))))
                .service(
                    resource("/bundles/{bundle_id}").route(web::get().to(handler(lookup::bundle))),
                )
                .service(resource("/events").route(web::get().to(lookup::events))),
        );
}

/// Headers on every response: nothing is cached (job lists and answers are private), no
/// content type is sniffed, and browsers keep to HTTPS for this host. A route that needs
/// others sets them itself (these are added only where absent).
pub const SECURITY_HEADERS: [(&str, &str); 4] = [
    ("cache-control", "no-store"),
    ("x-content-type-options", "nosniff"),
    ("strict-transport-security", "max-age=31536000"),
    ("referrer-policy", "no-referrer"),
];

/// The application: state, request log, security headers, routes, JSON 404.
pub fn app(
    state: web::Data<AppState>,
) -> App<
    impl actix_web::dev::ServiceFactory<
        actix_web::dev::ServiceRequest,
        Config = (),
        Response = actix_web::dev::ServiceResponse<impl actix_web::body::MessageBody>,
        Error = actix_web::Error,
        InitError = (),
    >,
> {
    App::new()
        .app_data(state)
        .wrap_fn(|req, srv| {
            let start = Instant::now();
            let method = req.method().clone();
            let path = req.path().chars().take(200).collect::<String>();
            let fut = srv.call(req);
            async move {
                let res = fut.await?;
                let status = res.status().as_u16();
                let ms = start.elapsed().as_secs_f64() * 1000.0;
                if status >= 500 {
                    tracing::warn!(%method, %path, status, ms, "request");
                } else if status >= 400 {
                    tracing::info!(%method, %path, status, ms, "request");
                } else {
                    tracing::debug!(%method, %path, status, ms, "request");
                }
                Ok(res)
            }
        })
        .wrap(
            SECURITY_HEADERS
                .iter()
                .fold(actix_web::middleware::DefaultHeaders::new(), |h, &kv| {
                    h.add(kv)
                }),
        )
        .configure(routes)
        .configure(crate::dashboard::routes)
        .default_service(web::to(not_found))
}

/// Sweeps the blob store every `every` (±25 %) until `stop` turns true: a bounded batch of
/// blobs each time, going round the whole store over successive sweeps (`store::blobs::gc`).
async fn sweep_task(
    state: web::Data<AppState>,
    mut stop: watch::Receiver<bool>,
    every: Duration,
    opts: SweepOptions,
) {
    let mut cursor: Option<String> = None;
    loop {
        let jitter = rand::random_range(0.75..1.25);
        let wait = every.mul_f64(jitter).max(Duration::from_millis(10));
        tokio::select! {
            _ = tokio::time::sleep(wait) => {}
            r = stop.changed() => if r.is_err() || *stop.borrow() { return },
        }
        let (store, blobs, pins) = (state.store.clone(), state.blobs.clone(), state.pins.clone());
        let mut c = cursor.take();
        let result = web::block(move || {
            let r = blobs.sweep(store.as_ref(), pins.as_ref(), &opts, &mut c);
            (r, c)
        })
        .await;
        match result {
            Ok((Ok(report), c)) => {
                cursor = c;
                if report.removed > 0 {
                    tracing::info!(?report, "blob sweep");
                } else {
                    tracing::debug!(?report, "blob sweep");
                }
            }
            Ok((Err(e), c)) => {
                cursor = c;
                tracing::error!(error = %rjs_cmd::chain(&e), "sweeping blobs")
            }
            Err(e) => tracing::error!(error = %rjs_cmd::report::Chain(&e), "sweeping blobs"),
        }
    }
}

/// Requeues expired leases every [`EXPIRY_INTERVAL`] until `stop` turns true.
async fn expiry_task(state: web::Data<AppState>, mut stop: watch::Receiver<bool>) {
    let mut tick = tokio::time::interval(EXPIRY_INTERVAL);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
    loop {
        tokio::select! {
            _ = tick.tick() => {}
            r = stop.changed() => if r.is_err() || *stop.borrow() { return },
        }
        let store = state.store.clone();
        let max_attempts = state.limits.max_attempts;
        let result = web::block(move || {
            let now = crate::store::now();
            let requeued = store.expire_leases(now, max_attempts)?;
            if requeued == 0 {
                return Ok(None);
            }
            store.queued_count().map(|q| Some((requeued, q)))
        })
        .await;
        match result {
            Ok(Ok(Some((requeued, queued)))) => {
                tracing::info!(requeued, queued, "expired leases requeued");
                state.events.notify(queued);
            }
            Ok(Ok(None)) => {}
            Ok(Err(e)) => {
                tracing::error!(error = %rjs_cmd::chain(&e), "expiring leases")
            }
            Err(e) => tracing::error!(error = %rjs_cmd::report::Chain(&e), "expiring leases"),
        }
    }
}

/// Opens the data directory's store, blob store and TLS material.
type Opened = (
    AppState,
    rustls::ServerConfig,
    watch::Sender<bool>,
    std::pin::Pin<Box<dyn Future<Output = ()>>>,
);

fn open(config: &ServeConfig) -> Result<Opened, ServeError> {
    if config.max_attempts == 0 {
        return Err(ServeError::Config(
            "--max-attempts must be at least 1".into(),
        ));
    }
    if config.max_bundle == 0 || config.max_answer == 0 {
        return Err(ServeError::Config(
            "body limits must be at least 1 byte".into(),
        ));
    }
    if config.workers == Some(0) {
        return Err(ServeError::Config("--workers must be at least 1".into()));
    }
    let site = Site {
        dir: config.data.clone(),
        store: config.store.clone(),
    };
    let data = admin::existing(&site)?;
    let ca = rjs_wire::tls::load_certs(&data.ca_cert())?;
    let [ca_cert] = &ca[..] else {
        return Err(ServeError::Config(format!(
            "{} must hold exactly one certificate, the web server's CA (it holds {})",
            data.ca_cert().display(),
            ca.len()
        )));
    };
    let audience = rjs_signer::request::audience(ca_cert);
    let chain = rjs_wire::tls::load_certs(&data.server_cert())?;
    let key = rjs_wire::tls::load_key(&data.server_key())?;
    let mut tls =
        rjs_wire::tls::server_config(chain, key, rjs_wire::tls::ClientAuth::Optional(&ca))?;
    // actix adds the ALPN protocols (h2, http/1.1) itself.
    tls.alpn_protocols.clear();
    let store = admin::open_store(&data, &site.store)?;
    let blobs = BlobStore::open_at(&data.blobs(), &config.blobs).map_err(ServeError::Blobs)?;
    tracing::info!(blobs = %blobs.describe(), "blob store");
    let cleaned = blobs.clean_tmp().map_err(ServeError::Blobs)?;
    if cleaned > 0 {
        tracing::info!(removed = cleaned, "removed interrupted uploads");
    }
    let (stop_tx, stop_rx) = watch::channel(false);
    let answers = commit::AnswerCommitter::start(store.clone()).map_err(ServeError::Run)?;
    let (changes, poller) = changes::Changes::new(store.clone(), stop_rx.clone());
    let state = AppState {
        store,
        blobs,
        answers,
        pins: Arc::default(),
        events: Events::new(stop_rx),
        changes,
        activity: Arc::default(),
        answer_times: Arc::default(),
        limits: Limits {
            max_bundle: config.max_bundle,
            max_answer: config.max_answer,
            max_attempts: config.max_attempts,
        },
        audience,
    };
    Ok((state, tls, stop_tx, Box::pin(poller)))
}

/// Serves until `stop` completes; calls `ready` with the bound addresses once listening.
/// Must run inside an actix system (see [`run`]).
pub async fn serve(
    config: ServeConfig,
    ready: impl FnOnce(&[SocketAddr]),
    stop: impl Future<Output = ()> + Send + 'static,
) -> Result<(), ServeError> {
    let (state, tls, stop_tx, poller) = open(&config)?;
    let state = web::Data::new(state);
    let workers = config.workers.unwrap_or_else(|| {
        std::thread::available_parallelism()
            .map(|n| n.get())
            .unwrap_or(1)
    });
    let stop_rx = stop_tx.subscribe();
    let listeners = listen::bind(&config.listen).map_err(|source| ServeError::Bind {
        addr: config.listen.clone(),
        source,
    })?;
    let addrs = listeners
        .iter()
        .map(|l| l.local_addr())
        .collect::<Result<Vec<_>, _>>()
        .map_err(ServeError::Run)?;
    let stop = async move {
        stop.await;
        tracing::info!("stopping");
        // Event streams never end by themselves: end them first.
        let _ = stop_tx.send(true);
    };
    let running = listen::server(
        listen::Listen {
            listeners,
            tls,
            workers,
        },
        state.clone(),
        stop,
    )
    .map_err(ServeError::Run)?;
    actix_web::rt::spawn(queue::watch_queue(state.clone(), stop_rx.clone()));
    if let Some(every) = config.blob_sweep_every {
        let opts = SweepOptions {
            grace: config.blob_grace,
            ..SweepOptions::default()
        };
        actix_web::rt::spawn(sweep_task(state.clone(), stop_rx.clone(), every, opts));
    }
    actix_web::rt::spawn(expiry_task(state.clone(), stop_rx));
    actix_web::rt::spawn(poller);
    ready(&addrs);
    running.await.map_err(ServeError::Run)?;
    tracing::info!("stopped");
    Ok(())
}

/// `rjs-webserver serve`: prints `listening on https://ADDR` once ready, serves until SIGTERM
/// or SIGINT, then returns `Ok`.
pub fn run(config: ServeConfig) -> Result<(), ServeError> {
    actix_web::rt::System::new().block_on(serve(
        config,
        |addrs| {
            use std::io::Write as _;
            let mut out = std::io::stdout().lock();
            for a in addrs {
                let _ = writeln!(out, "listening on https://{a}");
            }
            let _ = out.flush();
        },
        rjs_wire::shutdown::stop_signal(),
    ))
}
