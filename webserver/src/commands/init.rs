//! `rjs-webserver init`.

use clap::Args;
use rjs_webserver::admin;

use super::Data;

#[derive(Args)]
pub struct InitCommand {
    #[command(flatten)]
    data: Data,
    /// A DNS name or IP address the server certificate is valid for (repeatable;
    /// default: localhost, 127.0.0.1, ::1).
    #[arg(long = "host", value_name = "NAME")]
    hosts: Vec<String>,
}

impl InitCommand {
    pub fn run(self) -> anyhow::Result<()> {
        let r = admin::init(&self.data.site()?, &self.hosts)?;
        println!("initialized {}", r.dir.display());
        println!("server certificate for: {}", r.hosts.join(", "));
        println!(
            "give this file to authors and lookup admins (the CA to trust): {}",
            r.ca_cert.display()
        );
        println!("CA certificate SHA-256: {}", r.ca_sha256);
        println!(
            "next: rjs-webserver author add NAME --key KEY.pub --data {0}; \
             rjs-webserver lookup add NAME -o NAME.creds --data {0}; \
             rjs-webserver serve --data {0}",
            r.dir.display()
        );
        Ok(())
    }
}
