//! `rjs-compute trust …`: the owner's list of trusted and blocked job authors.

use anyhow::{Context, Result};
use clap::{Args, Subcommand};
use rjs_compute::config::{DataArgs, NodeConfig};
use rjs_compute::trust::{AuthorRef, Change, EntryStatus, TrustEntry, TrustStore};
use rjs_signer::PublicKey;

#[derive(Args)]
pub struct TrustCommand {
    #[command(flatten)]
    data: DataArgs,
    #[command(subcommand)]
    action: TrustAction,
}

#[derive(Subcommand)]
enum TrustAction {
    /// List trusted and blocked authors.
    List,
    /// Trust an author's key: their jobs run without asking.
    Add {
        /// Public key: a .pub file, an `rjs-ed25519 <base64> [name]` line, or base64.
        pubkey: String,
        /// Label [default: the name on the key line, else "unnamed"].
        #[arg(long)]
        name: Option<String>,
    },
    /// Forget an author (trusted or blocked): they become unknown again.
    Remove {
        /// Fingerprint (xxxx-xxxx-…) or public key.
        author: String,
    },
    /// Block an author: their jobs are refused without asking.
    Block {
        /// Fingerprint (xxxx-xxxx-…) or public key.
        author: String,
        /// Label (kept from an existing entry if not given).
        #[arg(long)]
        name: Option<String>,
    },
}

impl TrustCommand {
    pub fn run(self) -> Result<()> {
        let config = NodeConfig::load(&self.data.overrides())?;
        let store = TrustStore::open(&config.data_dir)?;
        match self.action {
            TrustAction::List => list(&store),
            TrustAction::Add { pubkey, name } => add(&store, &pubkey, name),
            TrustAction::Remove { author } => {
                let (target, _) = parse_author(&author)?;
                let removed = store.remove(&target.fingerprint())?;
                println!("removed {}, was {}", who(&removed), removed.status.as_str());
                Ok(())
            }
            TrustAction::Block { author, name } => block(&store, &author, name),
        }
    }
}

fn list(store: &TrustStore) -> Result<()> {
    let list = store.list()?;
    if list.is_empty() {
        println!("no authors in {}", store.path().display());
        return Ok(());
    }
    let width = list.iter().map(|e| e.name.len()).max().unwrap_or(0).max(4);
    println!(
        "{:<8} {:<width$} {:<39} SINCE",
        "STATUS", "NAME", "FINGERPRINT"
    );
    for e in &list {
        println!(
            "{:<8} {:<width$} {:<39} {}",
            e.status.as_str(),
            label(e),
            e.fingerprint.to_string(),
            super::date(e.added_at)
        );
    }
    Ok(())
}

fn add(store: &TrustStore, pubkey: &str, name: Option<String>) -> Result<()> {
    let (key, key_name) = PublicKey::load_or_parse(pubkey)
        .with_context(|| format!("reading the public key {pubkey:?}"))?;
    let name = name.or(key_name).unwrap_or_else(|| "unnamed".into());
    let change = store.add(&key, &name)?;
    let fp = key.fingerprint();
    match change {
        Change::Added => println!("trusted {name} ({fp})"),
        Change::Changed { from } => println!("trusted {name} ({fp}), was {}", from.as_str()),
        Change::Unchanged => println!("{name} ({fp}) was already trusted"),
    }
    Ok(())
}

fn block(store: &TrustStore, author: &str, name: Option<String>) -> Result<()> {
    let (target, key_name) = parse_author(author)?;
    let name = name.or(key_name);
    let change = store.block(&target, name.as_deref())?;
    let entry = store
        .get(&target.fingerprint())?
        .context("the entry vanished")?;
    match change {
        Change::Added => println!("blocked {}", who(&entry)),
        Change::Changed { from } => println!("blocked {}, was {}", who(&entry), from.as_str()),
        Change::Unchanged => println!("{} was already blocked", who(&entry)),
    }
    debug_assert_eq!(entry.status, EntryStatus::Blocked);
    Ok(())
}

/// An author named on the command line, by fingerprint or public key.
fn parse_author(author: &str) -> Result<(AuthorRef, Option<String>)> {
    AuthorRef::parse(author)
        .with_context(|| format!("{author:?} is neither a fingerprint nor a public key"))
}

/// The entry's name, or `-`.
fn label(e: &TrustEntry) -> &str {
    if e.name.is_empty() { "-" } else { &e.name }
}

/// `name (fingerprint)`.
fn who(e: &TrustEntry) -> String {
    format!("{} ({})", label(e), e.fingerprint)
}
