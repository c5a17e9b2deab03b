//! # rjs-webserver
//!
//! The RJS web server: holds bundles, jobs and answers; enrolls authors and lookup servers;
//! serves the author API and the lookup API over HTTPS (`docs/webserver-api.md`).
//!
//! * [`admin`]: `init`, `author …`, `lookup …` (the binary's subcommands).
//! * [`pki`]: the server's CA, its certificate, lookup client certificates and their
//!   credentials file.
//! * [`server`]: `serve` (actix-web over rustls) and the API handlers.
//! * [`dashboard`]: the web dashboard (`/dashboard/…`): pages, sessions, live updates.
//! * [`store`]: the metadata store trait (SQLite implementation) and the blob store.
//! * [`datadir`]: the data directory layout.

pub mod admin;
pub mod dashboard;
pub mod datadir;
pub mod envfile;
pub mod pki;
pub mod server;
pub mod store;
