//! `rjs-lookup nodes`: the running lookup's node panel; `nodes list` and `nodes remove`: the
//! enrolment registry.

use std::fmt::Write;
use std::path::PathBuf;

use anyhow::{Context, Result};
use clap::Subcommand;
use rjs_lookup::{enrol, status};
use rjs_wire::status::{NodesResponse, StatusRequest};

#[derive(clap::Args)]
#[command(args_conflicts_with_subcommands = true)]
pub struct NodesCommand {
    #[command(subcommand)]
    command: Option<RegistryCommand>,
    #[arg(long, value_name = "DIR")]
    data: Option<PathBuf>,
    /// One JSON object: {"nodes": [...], "drops": {...}}.
    #[arg(long)]
    json: bool,
}

#[derive(Subcommand)]
enum RegistryCommand {
    /// List enrolled and revoked nodes.
    List {
        #[arg(long, value_name = "DIR")]
        data: PathBuf,
        #[arg(long)]
        json: bool,
    },
    /// Revoke a node: its announcements and connections are no longer accepted.
    Remove {
        node: String,
        #[arg(long, value_name = "DIR")]
        data: PathBuf,
    },
}

impl NodesCommand {
    pub fn run(self) -> Result<()> {
        match self.command {
            None => {
                let data = self.data.context("--data DIR is required")?;
                let panel: NodesResponse = status::query_blocking(&data, &StatusRequest::Nodes)?;
                if self.json {
                    return super::print_json(&panel);
                }
                print!("{}", render_panel(&panel));
            }
            Some(RegistryCommand::List { data, json }) => {
                let reg = enrol::Registry::load(&data)?;
                if json {
                    return super::print_json(&reg.nodes);
                }
                print!("{}", render_registry(&reg));
            }
            Some(RegistryCommand::Remove { node, data }) => {
                if enrol::revoke(&data, &node)? {
                    println!("revoked {node}");
                } else {
                    println!("{node} was already revoked");
                }
            }
        }
        Ok(())
    }
}

/// The enrolment registry as a table.
fn render_registry(reg: &enrol::Registry) -> String {
    let mut out = String::new();
    let _ = writeln!(
        out,
        "{:<24} {:<8} {:<44} CERT SHA-256",
        "ID", "STATUS", "NODE KEY"
    );
    for n in &reg.nodes {
        let status = if n.revoked_at.is_some() {
            "revoked"
        } else {
            "active"
        };
        let _ = writeln!(
            out,
            "{:<24} {status:<8} {:<44} {}",
            n.id, n.node_key, n.cert_sha256
        );
    }
    out
}

/// The node panel as a table.
fn render_panel(p: &NodesResponse) -> String {
    let mut out = String::new();
    let _ = writeln!(
        out,
        "{:<16} {:<22} {:>7} {:>9} {:>6} {:>8} {:<16} {:>6} {:>6} {:>5} {:>6} {:>5} {:>7}",
        "NODE",
        "ADDRESS",
        "MFLOPS",
        "BUSY/ALL",
        "FREE",
        "AGE",
        "GROUPS",
        "EXIT0",
        "OTHER",
        "TRAP",
        "LIMIT",
        "LOST",
        "REFUSED"
    );
    for n in &p.nodes {
        let addr = match n.addresses.first() {
            Some(a) if a.contains(':') => format!("[{a}]:{}", n.port),
            Some(a) => format!("{a}:{}", n.port),
            None => format!("?:{}", n.port),
        };
        let _ = writeln!(
            out,
            "{:<16} {:<22} {:>7} {:>9} {:>6} {:>7.1}s {:<16} {:>6} {:>6} {:>5} {:>6} {:>5} {:>7}",
            n.node_id,
            addr,
            n.mflops,
            format!("{}/{}", n.busy, n.total_slots),
            n.free_slots,
            n.age_ms as f64 / 1000.0,
            if n.groups.is_empty() {
                "-".to_owned()
            } else {
                n.groups.join(",")
            },
            n.answers.exit_zero,
            n.answers.exit_other,
            n.answers.trap,
            n.answers.limit,
            n.lost,
            n.refused
        );
    }
    if p.nodes.is_empty() {
        let _ = writeln!(out, "(no live node)");
    }
    if !p.webserver.is_empty() {
        let _ = writeln!(
            out,
            "web server: {} ({} failover{})",
            p.webserver,
            p.failovers,
            if p.failovers == 1 { "" } else { "s" }
        );
    }
    let d = &p.drops;
    let dropped = d.unsigned + d.malformed + d.unknown_key + d.bad_signature + d.stale + d.replay;
    if dropped > 0 {
        let _ = writeln!(
            out,
            "announcements dropped: {dropped} (unsigned {}, malformed {}, unknown key {}, bad signature {}, stale {}, replay {})",
            d.unsigned, d.malformed, d.unknown_key, d.bad_signature, d.stale, d.replay
        );
    }
    out
}
