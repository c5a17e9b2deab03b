//! Several hosts on one machine, for the multi-host tests: named network namespaces (`ip
//! netns add`), one per host, each joined by a veth pair to a bridge in a namespace of its
//! own (the LAN segment, multicast on it and nowhere else), plus WAN links from the calling
//! thread's namespace (where the web server runs) to chosen hosts.
//!
//! ```text
//!   caller's namespace (web server, WanLink proxy)        10.78.<k>.1/30
//!        │ w<k>  veth ─────────────────────────── wan0    10.78.<k>.2/30
//!   ┌────┴─────────┐   ┌──────────┐   ┌──────────┐
//!   │ lookup  eth0 │   │node-1 eth0│  │node-2 eth0│        10.77.0.<i+1>/24
//!   └──────┬───────┘   └────┬─────┘   └────┬─────┘
//!          └──── br0 in the switch namespace ───┘          (no uplink, no host route)
//! ```
//!
//! Nothing here touches the machine's own network: the caller must itself be in a private
//! namespace ([`crate::netns::enter_private`]), every namespace made here is removed when the
//! [`Lan`] is dropped, and [`sweep`] removes those of a test process that died before it
//! could (the isolated-test runner calls it). Loss and partitions are iptables rules inside
//! these namespaces; they go with them.

use std::fs::File;
use std::net::Ipv4Addr;
use std::os::fd::AsRawFd;
use std::os::unix::process::CommandExt;
use std::process::Command;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

use anyhow::{Context, Result, bail};

use crate::process;

/// The LAN segment's /24.
pub const LAN_NET: [u8; 3] = [10, 77, 0];

/// Names of this process's namespaces start with `rjs<pid>-`.
fn prefix_of(pid: u32) -> String {
    format!("rjs{pid}-")
}

static NEXT_LAN: AtomicU32 = AtomicU32::new(0);

/// One host of a [`Lan`].
#[derive(Debug, Clone)]
pub struct Host {
    /// Its name in the test (`lookup`, `node-1`).
    pub name: String,
    /// The network namespace (`ip netns` name).
    pub netns: String,
    /// Its address on the LAN (`eth0`).
    pub addr: Ipv4Addr,
    /// Its address on its WAN link (`wan0`), if it has one.
    pub wan_addr: Option<Ipv4Addr>,
    /// The caller's end of that WAN link: (interface, address).
    pub wan_peer: Option<(String, Ipv4Addr)>,
}

/// The LAN: hosts on one bridge.
#[derive(Debug)]
pub struct Lan {
    switch: String,
    hosts: Vec<Host>,
    wans: u32,
}

/// Runs `ip ARGS` (or another tool) to its end; fails with what it printed.
fn sh(program: &str, args: &[&str]) -> Result<()> {
    process::run(
        &format!("{program} {}", args.join(" ")),
        Command::new(program).args(args),
        None,
        Duration::from_secs(20),
    )
    .map(|_| ())
}

fn ip(args: &[&str]) -> Result<()> {
    sh("ip", args)
}

/// `ip -n NS ARGS`.
fn ip_in(ns: &str, args: &[&str]) -> Result<()> {
    let mut all = vec!["-n", ns];
    all.extend_from_slice(args);
    ip(&all)
}

impl Lan {
    /// A bridge and one namespace per name in `hosts`, each with `lo` up and `eth0` on the
    /// bridge at `10.77.0.<i+1>/24`, multicast routed to `eth0`.
    pub fn new(hosts: &[&str]) -> Result<Lan> {
        if !crate::netns::is_isolated() {
            bail!(
                "refusing to build test hosts from this machine's own network namespace: \
                 enter a private one first (rjs_harness::netns::enter_private)"
            );
        }
        if hosts.is_empty() || hosts.len() > 200 {
            bail!("a LAN has 1 to 200 hosts, not {}", hosts.len());
        }
        let n = NEXT_LAN.fetch_add(1, Ordering::Relaxed);
        let prefix = format!("{}{n}-", prefix_of(std::process::id()));
        let switch = format!("{prefix}switch");
        let mut lan = Lan {
            switch: switch.clone(),
            hosts: Vec::new(),
            wans: 0,
        };
        // From here on, dropping `lan` removes what was made.
        ip(&["netns", "add", &switch])?;
        ip_in(&switch, &["link", "set", "lo", "up"])?;
        ip_in(&switch, &["link", "add", "br0", "type", "bridge"])?;
        // No IGMP snooping: mDNS goes to every port at once, as on a plain switch.
        ip_in(
            &switch,
            &[
                "link",
                "set",
                "br0",
                "type",
                "bridge",
                "mcast_snooping",
                "0",
            ],
        )?;
        ip_in(&switch, &["link", "set", "br0", "up"])?;
        for (i, name) in hosts.iter().enumerate() {
            let netns = format!("{prefix}{name}");
            let addr = Ipv4Addr::new(LAN_NET[0], LAN_NET[1], LAN_NET[2], i as u8 + 1);
            ip(&["netns", "add", &netns])?;
            lan.hosts.push(Host {
                name: (*name).to_owned(),
                netns: netns.clone(),
                addr,
                wan_addr: None,
                wan_peer: None,
            });
            let port = format!("p{i}");
            ip_in(
                &switch,
                &[
                    "link", "add", &port, "type", "veth", "peer", "name", "eth0", "netns", &netns,
                ],
            )?;
            ip_in(&switch, &["link", "set", &port, "master", "br0", "up"])?;
            ip_in(&netns, &["link", "set", "lo", "up"])?;
            ip_in(
                &netns,
                &["addr", "add", &format!("{addr}/24"), "dev", "eth0"],
            )?;
            ip_in(&netns, &["link", "set", "eth0", "up", "multicast", "on"])?;
            ip_in(&netns, &["route", "add", "224.0.0.0/4", "dev", "eth0"])?;
        }
        Ok(lan)
    }

    /// Every host, in the order given.
    pub fn hosts(&self) -> &[Host] {
        &self.hosts
    }

    /// The host called `name`.
    pub fn host(&self, name: &str) -> Result<&Host> {
        self.hosts
            .iter()
            .find(|h| h.name == name)
            .with_context(|| format!("no host {name:?} on this LAN"))
    }

    /// A point-to-point link from the calling thread's namespace to host `name`: `w<k>` at
    /// `10.78.<k>.1/30` here, `wan0` at `10.78.<k>.2/30` there. Returns the address of this
    /// end, which the host reaches directly.
    pub fn wan_link(&mut self, name: &str) -> Result<Ipv4Addr> {
        let k = self.wans;
        if k > 250 {
            bail!("too many WAN links");
        }
        self.wans += 1;
        let idx = self
            .hosts
            .iter()
            .position(|h| h.name == name)
            .with_context(|| format!("no host {name:?} on this LAN"))?;
        let netns = self.hosts[idx].netns.clone();
        let (here, there) = (
            Ipv4Addr::new(10, 78, k as u8, 1),
            Ipv4Addr::new(10, 78, k as u8, 2),
        );
        // The interface name must be unique in the caller's namespace, which outlives us
        // only when it is the test's own private one.
        let local = format!("w{}x{k}", std::process::id() % 100_000);
        ip(&[
            "link", "add", &local, "type", "veth", "peer", "name", "wan0", "netns", &netns,
        ])?;
        self.hosts[idx].wan_addr = Some(there);
        self.hosts[idx].wan_peer = Some((local.clone(), here));
        ip(&["addr", "add", &format!("{here}/30"), "dev", &local])?;
        ip(&["link", "set", &local, "up"])?;
        ip_in(
            &netns,
            &["addr", "add", &format!("{there}/30"), "dev", "wan0"],
        )?;
        ip_in(&netns, &["link", "set", "wan0", "up"])?;
        Ok(here)
    }

    /// Host `name` and the caller's end (interface) of its WAN link.
    fn wan_ends(&self, name: &str) -> Result<(&Host, &str)> {
        let h = self.host(name)?;
        let (local, _) = h
            .wan_peer
            .as_ref()
            .with_context(|| format!("{name} has no WAN link"))?;
        Ok((h, local))
    }

    /// Cuts (`true`) or heals (`false`) host `name`'s WAN link: every packet either way is
    /// dropped silently, as on a broken path (no reset, no ICMP), by iptables rules at both
    /// ends.
    pub fn partition(&self, name: &str, cut: bool) -> Result<()> {
        let (h, local) = self.wan_ends(name)?;
        let op = if cut { "-I" } else { "-D" };
        iptables(Some(&h.netns), &[op, "INPUT", "-i", "wan0", "-j", "DROP"])?;
        iptables(None, &[op, "INPUT", "-i", local, "-j", "DROP"])
    }

    /// Drops each packet on host `name`'s WAN link, either way, with probability `p` (0
    /// removes the rule set by an earlier call).
    pub fn wan_loss(&self, name: &str, p: f64) -> Result<()> {
        let (h, local) = self.wan_ends(name)?;
        for (ns, dev) in [(Some(h.netns.as_str()), "wan0"), (None, local)] {
            // Replace: flush the chain of ours, then add.
            let _ = iptables(ns, &["-F", "RJS-LOSS"]);
            let _ = iptables(ns, &["-D", "INPUT", "-j", "RJS-LOSS"]);
            let _ = iptables(ns, &["-X", "RJS-LOSS"]);
            if p <= 0.0 {
                continue;
            }
            let prob = format!("{p:.4}");
            iptables(ns, &["-N", "RJS-LOSS"])?;
            iptables(ns, &["-A", "INPUT", "-j", "RJS-LOSS"])?;
            iptables(
                ns,
                &[
                    "-A",
                    "RJS-LOSS",
                    "-i",
                    dev,
                    "-m",
                    "statistic",
                    "--mode",
                    "random",
                    "--probability",
                    &prob,
                    "-j",
                    "DROP",
                ],
            )?;
        }
        Ok(())
    }

    /// Takes host `name`'s LAN link down (`false`) or up again (`true`).
    pub fn lan_link(&self, name: &str, up: bool) -> Result<()> {
        let h = self.host(name)?;
        ip_in(
            &h.netns,
            &["link", "set", "eth0", if up { "up" } else { "down" }],
        )
    }

    /// Makes `cmd` start in host `name`'s namespace.
    pub fn place(&self, name: &str, cmd: &mut Command) -> Result<()> {
        place(&self.host(name)?.netns, cmd)
    }
}

/// `iptables ARGS`, in namespace `ns` (else the caller's).
fn iptables(ns: Option<&str>, args: &[&str]) -> Result<()> {
    match ns {
        Some(ns) => {
            let mut all = vec!["netns", "exec", ns, "iptables", "-w"];
            all.extend_from_slice(args);
            ip(&all)
        }
        None => {
            let mut all = vec!["-w"];
            all.extend_from_slice(args);
            sh("iptables", &all)
        }
    }
}

/// Makes `cmd` start in the named network namespace `netns` (`setns` between fork and exec).
pub fn place(netns: &str, cmd: &mut Command) -> Result<()> {
    let path = format!("/run/netns/{netns}");
    let file = File::open(&path).with_context(|| format!("opening {path}"))?;
    // SAFETY: setns is async-signal-safe; the file is moved into the closure, so its
    // descriptor stays open until the command is dropped.
    unsafe {
        cmd.pre_exec(move || {
            if libc::setns(file.as_raw_fd(), libc::CLONE_NEWNET) != 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
    Ok(())
}

impl Drop for Lan {
    fn drop(&mut self) {
        for h in &self.hosts {
            let _ = ip(&["netns", "del", &h.netns]);
        }
        let _ = ip(&["netns", "del", &self.switch]);
    }
}

/// Removes every namespace made here by process `pid` (one that died before its [`Lan`]s
/// were dropped). Returns how many.
pub fn sweep(pid: u32) -> usize {
    let prefix = prefix_of(pid);
    let Ok(entries) = std::fs::read_dir("/run/netns") else {
        return 0;
    };
    let mut n = 0;
    for e in entries.flatten() {
        let name = e.file_name().to_string_lossy().into_owned();
        if name.starts_with(&prefix) && ip(&["netns", "del", &name]).is_ok() {
            n += 1;
        }
    }
    n
}

/// True if this machine can build test hosts: `ip` and `iptables` present and the caller
/// able to add a namespace. The reason when not.
pub fn available() -> Result<()> {
    for tool in ["ip", "iptables"] {
        let found = std::env::var_os("PATH")
            .map(|p| std::env::split_paths(&p).any(|d| d.join(tool).is_file()))
            .unwrap_or(false);
        if !found {
            bail!("{tool} is not installed (Debian: apt-get install iproute2 iptables)");
        }
    }
    // SAFETY: geteuid cannot fail.
    if unsafe { libc::geteuid() } != 0 {
        bail!("named network namespaces need root");
    }
    Ok(())
}
