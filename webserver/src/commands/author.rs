//! `rjs-webserver author add | list | remove`.

use clap::Subcommand;
use rjs_webserver::admin;

use super::{Data, author_line, print_roster};

#[derive(Subcommand)]
pub enum AuthorCommand {
    /// Enroll an author's public key.
    Add {
        /// The author's name (A-Z a-z 0-9 . _ @ -, at most 64).
        name: String,
        /// The public key: a `.pub` file, a `rjs-ed25519 <base64> [name]` line or base64.
        #[arg(long, value_name = "PUBKEY")]
        key: String,
        #[command(flatten)]
        data: Data,
    },
    /// List authors (removed ones too).
    List {
        #[command(flatten)]
        data: Data,
    },
    /// Remove an author: their key no longer authenticates (their jobs stay).
    Remove {
        name: String,
        #[command(flatten)]
        data: Data,
    },
}

impl AuthorCommand {
    pub fn run(self) -> anyhow::Result<()> {
        match self {
            AuthorCommand::Add { name, key, data } => {
                let a = admin::author_add(&data.site()?, &name, &key)?;
                println!("added author {} ({})", a.name, a.fingerprint);
            }
            AuthorCommand::List { data } => {
                let authors = admin::author_list(&data.site()?)?;
                print_roster("no authors", authors.iter().map(author_line));
            }
            AuthorCommand::Remove { name, data } => {
                admin::author_remove(&data.site()?, &name)?;
                println!("removed author {name}");
            }
        }
        Ok(())
    }
}
