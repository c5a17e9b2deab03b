//! `rjs-webserver serve`.

use std::path::PathBuf;
use std::time::Duration;

use anyhow::Context as _;
use clap::Args;
use rjs_cmd::units::nonzero_size_arg;
use rjs_webserver::server;
use rjs_webserver::store::blobs::s3::{S3Config, S3Credentials};
use rjs_webserver::store::blobs::{BlobLocation, gc};

use super::Data;

#[derive(Args)]
pub struct ServeCommand {
    #[command(flatten)]
    data: Data,
    /// Address to listen on (port 0: any free port; the line `listening on https://ADDR`
    /// says which).
    #[arg(long, value_name = "ADDR", default_value = server::DEFAULT_LISTEN)]
    listen: String,
    /// Largest bundle accepted (bytes; K, M, G suffixes are powers of 1024).
    #[arg(long, value_name = "BYTES", default_value = "64M", value_parser = nonzero_size_arg)]
    pub(super) max_bundle: u64,
    /// Largest answer archive accepted (bytes; K, M, G suffixes).
    #[arg(long, value_name = "BYTES", default_value = "64M", value_parser = nonzero_size_arg)]
    max_answer: u64,
    /// Leases of a job that may end without an answer before it fails.
    #[arg(long, value_name = "N", default_value_t = server::DEFAULT_MAX_ATTEMPTS,
          value_parser = clap::value_parser!(u32).range(1..=1000))]
    max_attempts: u32,
    /// HTTP worker threads (default: one per core).
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u16).range(1..=1024))]
    workers: Option<u16>,
    #[command(flatten)]
    blobs: BlobArgs,
}

/// Where bundles and large answers are kept (docs/scale-out.md, "Blobs in an object store").
/// Every flag has an environment variable; credentials are never flags.
#[derive(Args)]
struct BlobArgs {
    /// `folder` (blobs/ in the data directory) or `s3://BUCKET[/PREFIX]`.
    #[arg(
        long,
        value_name = "WHERE",
        env = "RJS_BLOBS",
        default_value = "folder"
    )]
    blobs: String,
    /// The S3 endpoint of a non-AWS server (`https://host:port`); default: AWS.
    #[arg(long, value_name = "URL", env = "RJS_S3_ENDPOINT")]
    s3_endpoint: Option<String>,
    /// The S3 region (default: AWS_REGION, AWS_DEFAULT_REGION or us-east-1).
    #[arg(long, value_name = "REGION", env = "RJS_S3_REGION")]
    s3_region: Option<String>,
    /// Path-style requests (`https://endpoint/bucket/key`), as most non-AWS servers want.
    #[arg(long, env = "RJS_S3_PATH_STYLE")]
    s3_path_style: bool,
    /// PEM CA certificate(s) trusted for the endpoint instead of the system's.
    #[arg(long, value_name = "FILE", env = "RJS_S3_CA")]
    s3_ca: Option<PathBuf>,
    /// A credentials file (`access_key_id = …`, `secret_access_key = …`, mode 0600);
    /// default: AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY from the environment.
    #[arg(long, value_name = "FILE", env = "RJS_S3_CREDENTIALS")]
    s3_credentials: Option<PathBuf>,
    /// Plain HTTP to the endpoint: refused unless it is a loopback address (tests).
    #[arg(long, env = "RJS_S3_ALLOW_HTTP")]
    s3_allow_http: bool,
    /// The server lacks `If-None-Match: *` on PUT: check with HEAD before creating.
    #[arg(long, env = "RJS_S3_NO_CONDITIONAL_PUT")]
    s3_no_conditional_put: bool,
    /// Unreferenced blobs younger than this are kept (e.g. `1h`, `30m`; at least `10m`).
    #[arg(long, value_name = "DURATION", env = "RJS_BLOB_GRACE", default_value = "1h",
          value_parser = grace_arg)]
    blob_grace: Duration,
    /// Time between sweeps of the blob collector (`0`: never sweep).
    #[arg(long, value_name = "DURATION", env = "RJS_BLOB_SWEEP_EVERY", default_value = "10m",
          value_parser = humantime::parse_duration)]
    blob_sweep_every: Duration,
}

impl BlobArgs {
    fn location(&self) -> anyhow::Result<BlobLocation> {
        if self.blobs == "folder" {
            return Ok(BlobLocation::Folder);
        }
        let mut config = S3Config::from_url(&self.blobs)?;
        config.endpoint = self.s3_endpoint.clone();
        if let Some(region) = &self.s3_region {
            config.region = region.clone();
        }
        config.path_style = self.s3_path_style;
        config.ca_file = self.s3_ca.clone();
        config.allow_http = self.s3_allow_http;
        config.conditional_put = !self.s3_no_conditional_put;
        config.credentials = match &self.s3_credentials {
            Some(file) => S3Credentials::from_file(file).context("reading the S3 credentials")?,
            None => S3Credentials::from_env().context(
                "no S3 credentials: set AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY, or \
                 --s3-credentials FILE",
            )?,
        };
        Ok(BlobLocation::S3(Box::new(config)))
    }
}

impl ServeCommand {
    pub fn run(self) -> anyhow::Result<()> {
        rjs_cmd::logging::init("info");
        let site = self.data.site()?;
        let mut config = server::ServeConfig::new(site.dir);
        config.store = site.store;
        config.listen = self.listen;
        config.max_bundle = self.max_bundle;
        config.max_answer = self.max_answer;
        config.max_attempts = self.max_attempts;
        config.workers = self.workers.map(usize::from);
        config.blobs = self.blobs.location()?;
        config.blob_grace = self.blobs.blob_grace;
        config.blob_sweep_every = Some(self.blobs.blob_sweep_every).filter(|d| !d.is_zero());
        server::run(config)?;
        Ok(())
    }
}

/// A blob grace period: a duration of at least [`gc::MIN_GRACE`].
fn grace_arg(text: &str) -> Result<Duration, String> {
    let grace = humantime::parse_duration(text).map_err(|e| e.to_string())?;
    if grace < gc::MIN_GRACE {
        return Err(format!(
            "at least {} (uploads reuse a blob stored in the last {} without touching it)",
            humantime::format_duration(gc::MIN_GRACE),
            humantime::format_duration(rjs_webserver::store::blobs::s3::REUSE_FRESH)
        ));
    }
    Ok(grace)
}
