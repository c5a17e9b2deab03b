//! `rjs-webserver lookup add | list | revoke`.

use std::path::PathBuf;

use clap::Subcommand;
use rjs_webserver::admin;

use super::{Data, lookup_line, print_roster};

#[derive(Subcommand)]
pub enum LookupCommand {
    /// Issue a client certificate to a lookup server; write its credentials file (secret).
    Add {
        /// The lookup server's name (the certificate's CN).
        name: String,
        /// Where to write the credentials (client certificate, CA certificate, key; 0600).
        #[arg(short = 'o', long = "output", value_name = "CREDS")]
        output: PathBuf,
        #[command(flatten)]
        data: Data,
    },
    /// List lookup servers (revoked ones too).
    List {
        #[command(flatten)]
        data: Data,
    },
    /// Revoke a lookup server: its certificate is refused from the next request on.
    Revoke {
        name: String,
        #[command(flatten)]
        data: Data,
    },
}

impl LookupCommand {
    pub fn run(self) -> anyhow::Result<()> {
        match self {
            LookupCommand::Add { name, output, data } => {
                let r = admin::lookup_add(&data.site()?, &name, &output)?;
                println!(
                    "added lookup server {} (certificate SHA-256 {})",
                    r.lookup.name, r.lookup.cert_sha256
                );
                println!(
                    "credentials (secret, give only to that lookup's admin): {}",
                    r.creds.display()
                );
            }
            LookupCommand::List { data } => {
                let lookups = admin::lookup_list(&data.site()?)?;
                print_roster("no lookup servers", lookups.iter().map(lookup_line));
            }
            LookupCommand::Revoke { name, data } => {
                admin::lookup_revoke(&data.site()?, &name)?;
                println!("revoked lookup server {name}");
            }
        }
        Ok(())
    }
}
