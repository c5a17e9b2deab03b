//! Where the network commands find the web server, its CA and the author's key.
//!
//! Precedence, per setting: the command-line flag (`--server`, `--ca`, `--key`), then the
//! configuration file: `--config FILE` if given, else `$RJS_HOME/config.toml`, else
//! `$XDG_CONFIG_HOME/rjs/config.toml`, else `~/.config/rjs/config.toml` (the same folders
//! `keygen` uses for keys). A missing default file is an empty configuration; a missing
//! `--config FILE` is an error. Relative paths in the file are relative to the file's folder,
//! `~/` to the home folder; relative paths given as flags are relative to the current folder.

use std::ffi::OsString;
use std::fmt;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result, bail};
use rjs_signer::KeyPair;
use rjs_signer::client::AuthorClient;
pub use rjs_signer::client::ServerUrl;
use serde::{Deserialize, Serialize};

/// Name of the configuration file in its folder.
pub const CONFIG_FILE: &str = "config.toml";
/// Largest configuration file read.
const MAX_CONFIG_BYTES: u64 = 64 * 1024;

/// The three settings of the network commands, as the configuration file's keys and as the
/// flags that override them (`deny_unknown_fields`: a misspelt key is an error).
#[derive(clap::Args, Debug, Default, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ConfigFile {
    /// Web server URL, https://host:port [config key: server].
    #[arg(long, value_name = "URL")]
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub server: Option<String>,
    /// The web server's CA certificate, PEM; nothing else is trusted [config key: ca].
    #[arg(long, value_name = "CA.pem")]
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ca: Option<PathBuf>,
    /// Your private key (NAME.key) that signs every request [config key: key].
    #[arg(long, value_name = "KEY")]
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub key: Option<PathBuf>,
}

/// Flags shared by every command that talks to the web server.
#[derive(clap::Args, Debug, Clone, Default)]
pub struct ServerOpts {
    /// The settings given as flags; each wins over the file's.
    #[command(flatten)]
    pub given: ConfigFile,
    /// Configuration file [default: $RJS_HOME/config.toml or ~/.config/rjs/config.toml].
    #[arg(long, value_name = "FILE")]
    pub config: Option<PathBuf>,
}

#[cfg(test)]
impl ServerOpts {
    /// These options with another `--server`.
    pub fn with_server(&self, url: &str) -> ServerOpts {
        let mut opts = self.clone();
        opts.given.server = Some(url.to_owned());
        opts
    }
}

/// The environment variables that locate the configuration (a value, for tests).
#[derive(Debug, Clone, Default)]
pub struct Env {
    pub rjs_home: Option<OsString>,
    pub xdg_config_home: Option<OsString>,
    pub home: Option<OsString>,
}

impl Env {
    pub fn from_process() -> Self {
        let get = |k: &str| std::env::var_os(k).filter(|v| !v.is_empty());
        Env {
            rjs_home: get("RJS_HOME"),
            xdg_config_home: get("XDG_CONFIG_HOME"),
            home: get("HOME"),
        }
    }

    /// The default configuration file, if any folder for it is known.
    pub fn default_config_path(&self) -> Option<PathBuf> {
        if let Some(h) = &self.rjs_home {
            return Some(PathBuf::from(h).join(CONFIG_FILE));
        }
        if let Some(x) = &self.xdg_config_home {
            return Some(PathBuf::from(x).join("rjs").join(CONFIG_FILE));
        }
        self.home.as_ref().map(|h| {
            PathBuf::from(h)
                .join(".config")
                .join("rjs")
                .join(CONFIG_FILE)
        })
    }

    /// `~/x` → `$HOME/x`; other paths unchanged.
    fn expand_tilde(&self, p: &Path) -> PathBuf {
        match (p.strip_prefix("~"), &self.home) {
            (Ok(rest), Some(home)) => PathBuf::from(home).join(rest),
            _ => p.to_owned(),
        }
    }
}

/// The configuration file as read, with its paths resolved.
#[derive(Debug, Clone)]
pub struct Loaded {
    /// Where it is (or would be); None if no folder for it is known.
    pub path: Option<PathBuf>,
    /// Whether the file exists.
    pub exists: bool,
    pub file: ConfigFile,
}

/// Reads the configuration file: `explicit` (must exist) or the default one (may not).
pub fn load(explicit: Option<&Path>, env: &Env) -> Result<Loaded> {
    let (path, must_exist) = match explicit {
        Some(p) => (Some(p.to_owned()), true),
        None => (env.default_config_path(), false),
    };
    let Some(path) = path else {
        return Ok(Loaded {
            path: None,
            exists: false,
            file: ConfigFile::default(),
        });
    };
    let text = match read_text(&path) {
        Ok(t) => t,
        Err(e) if !must_exist && e.kind() == std::io::ErrorKind::NotFound => {
            return Ok(Loaded {
                path: Some(path),
                exists: false,
                file: ConfigFile::default(),
            });
        }
        Err(e) => {
            return Err(e).with_context(|| format!("reading the configuration {}", path.display()));
        }
    };
    let mut file: ConfigFile = toml::from_str(&text)
        .with_context(|| format!("the configuration {} is not valid", path.display()))?;
    let base = path.parent().unwrap_or(Path::new("."));
    for p in [&mut file.ca, &mut file.key].into_iter().flatten() {
        let expanded = env.expand_tilde(p);
        *p = base.join(expanded);
    }
    Ok(Loaded {
        path: Some(path),
        exists: true,
        file,
    })
}

fn read_text(path: &Path) -> std::io::Result<String> {
    let bytes = rjs_signer::fsutil::read_bounded(path, MAX_CONFIG_BYTES).map_err(|e| match e {
        rjs_signer::fsutil::FileError::Io { source, .. } => source,
        other => std::io::Error::other(other.to_string()),
    })?;
    String::from_utf8(bytes).map_err(|_| std::io::Error::other("not UTF-8 text"))
}

/// Where a setting came from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Source {
    Flag,
    File(PathBuf),
}

impl fmt::Display for Source {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Source::Flag => f.write_str("command line"),
            Source::File(p) => write!(f, "{}", p.display()),
        }
    }
}

/// Everything a network command needs.
#[derive(Debug, Clone)]
pub struct Settings {
    pub server: ServerUrl,
    pub ca: PathBuf,
    pub key: PathBuf,
    pub sources: [Source; 3],
}

/// One setting: its flag, config key and an example value, for messages.
struct Setting {
    what: &'static str,
    flag: &'static str,
    key: &'static str,
    example: &'static str,
}

const SERVER: Setting = Setting {
    what: "web server URL",
    flag: "--server URL",
    key: "server",
    example: "https://host:8443",
};
const CA: Setting = Setting {
    what: "web server CA certificate",
    flag: "--ca CA.pem",
    key: "ca",
    example: "/path/to/ca.pem",
};
const KEY: Setting = Setting {
    what: "private key",
    flag: "--key KEY",
    key: "key",
    example: "/path/to/alice.key",
};

fn missing(s: &Setting, loaded: &Loaded) -> anyhow::Error {
    let file = match &loaded.path {
        Some(p) if loaded.exists => format!("in {}", p.display()),
        Some(p) => format!("in {} (which does not exist yet)", p.display()),
        None => "in a configuration file (--config FILE; or set RJS_HOME or HOME)".to_owned(),
    };
    anyhow::anyhow!(
        "no {what}: pass {flag} or set `{key} = \"{example}\"` {file}, e.g. with \
         `rjs-sign config set {key} {example}`",
        what = s.what,
        flag = s.flag,
        key = s.key,
        example = s.example,
    )
}

fn pick<T: Clone>(flag: &Option<T>, file: &Option<T>, loaded: &Loaded) -> Option<(T, Source)> {
    if let Some(v) = flag {
        return Some((v.clone(), Source::Flag));
    }
    let path = loaded.path.clone().unwrap_or_default();
    file.as_ref().map(|v| (v.clone(), Source::File(path)))
}

/// Resolves the settings: flags first, then the configuration file.
pub fn resolve(opts: &ServerOpts, env: &Env) -> Result<Settings> {
    let loaded = load(opts.config.as_deref(), env)?;
    resolve_with(opts, &loaded)
}

/// [`resolve`] with the configuration file already read.
pub fn resolve_with(opts: &ServerOpts, loaded: &Loaded) -> Result<Settings> {
    let (server, server_src) = pick(&opts.given.server, &loaded.file.server, loaded)
        .ok_or_else(|| missing(&SERVER, loaded))?;
    let server = ServerUrl::parse(&server).with_context(|| match &server_src {
        Source::Flag => "--server".to_owned(),
        Source::File(p) => format!("`server` in {}", p.display()),
    })?;
    let (ca, ca_src) =
        pick(&opts.given.ca, &loaded.file.ca, loaded).ok_or_else(|| missing(&CA, loaded))?;
    let (key, key_src) =
        pick(&opts.given.key, &loaded.file.key, loaded).ok_or_else(|| missing(&KEY, loaded))?;
    Ok(Settings {
        server,
        ca,
        key,
        sources: [server_src, ca_src, key_src],
    })
}

/// `rjs-sign config set KEY VALUE`: validates the value, makes paths absolute and rewrites
/// Resolves the settings of a network command and builds its client.
pub fn open(opts: &ServerOpts) -> Result<AuthorClient> {
    connect(&resolve(opts, &Env::from_process())?)
}

/// The author API client for these settings: loads the key and the CA.
pub fn connect(settings: &Settings) -> Result<AuthorClient> {
    let key = KeyPair::load(&settings.key).with_context(|| {
        format!(
            "loading your private key {} (--key / config key; from {})",
            settings.key.display(),
            settings.sources[2]
        )
    })?;
    let ca = rjs_wire::tls::load_certs(&settings.ca).with_context(|| {
        format!(
            "loading the web server's CA certificate {} (--ca / config ca; from {})",
            settings.ca.display(),
            settings.sources[1]
        )
    })?;
    Ok(AuthorClient::new(settings.server.clone(), &ca, key)?)
}

/// the file atomically (creating it and its folder if needed). Returns the file's path.
pub fn set(explicit: Option<&Path>, env: &Env, key: &str, value: &str) -> Result<PathBuf> {
    let loaded = load(explicit, env)?;
    let path = loaded.path.clone().context(
        "no configuration folder: pass --config FILE, or set RJS_HOME or HOME in the environment",
    )?;
    let mut file = loaded.file;
    let absolute = |v: &str| -> Result<PathBuf> {
        let p = env.expand_tilde(Path::new(v));
        let p = std::path::absolute(&p)
            .with_context(|| format!("making {} an absolute path", p.display()))?;
        if !p.is_file() {
            bail!("{} is not a file", p.display());
        }
        Ok(p)
    };
    match key {
        "server" => {
            ServerUrl::parse(value)?;
            file.server = Some(value.trim().trim_end_matches('/').to_owned());
        }
        "ca" => file.ca = Some(absolute(value)?),
        "key" => file.key = Some(absolute(value)?),
        other => bail!("unknown setting {other:?}: the settings are server, ca and key"),
    }
    save(&path, &file)?;
    Ok(path)
}

fn save(path: &Path, file: &ConfigFile) -> Result<()> {
    let text = toml::to_string(file).context("writing the configuration as TOML")?;
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    }
    rjs_signer::fsutil::write_atomic(path, text.as_bytes(), 0o644)
        .with_context(|| format!("writing the configuration {}", path.display()))?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env_home(home: &Path) -> Env {
        Env {
            home: Some(home.as_os_str().to_owned()),
            ..Env::default()
        }
    }

    #[test]
    fn default_config_path_prefers_rjs_home_then_xdg_then_home() {
        let mut env = Env {
            rjs_home: Some("/r".into()),
            xdg_config_home: Some("/x".into()),
            home: Some("/h".into()),
        };
        assert_eq!(
            env.default_config_path(),
            Some(PathBuf::from("/r/config.toml"))
        );
        env.rjs_home = None;
        assert_eq!(
            env.default_config_path(),
            Some(PathBuf::from("/x/rjs/config.toml"))
        );
        env.xdg_config_home = None;
        assert_eq!(
            env.default_config_path(),
            Some(PathBuf::from("/h/.config/rjs/config.toml"))
        );
        env.home = None;
        assert_eq!(env.default_config_path(), None);
    }

    #[test]
    fn flags_override_the_file_and_file_paths_are_relative_to_it() {
        let tmp = tempfile::tempdir().unwrap();
        let env = Env {
            rjs_home: Some(tmp.path().as_os_str().to_owned()),
            ..env_home(Path::new("/home/u"))
        };
        std::fs::write(
            tmp.path().join(CONFIG_FILE),
            "server = \"https://grid.example:8443\"\nca = \"ca.pem\"\nkey = \"~/keys/alice.key\"\n",
        )
        .unwrap();

        let s = resolve(&ServerOpts::default(), &env).unwrap();
        assert_eq!(s.server.origin(), "https://grid.example:8443");
        assert_eq!(s.ca, tmp.path().join("ca.pem"));
        assert_eq!(s.key, PathBuf::from("/home/u/keys/alice.key"));
        let file_src = Source::File(tmp.path().join(CONFIG_FILE));
        assert_eq!(s.sources, [file_src.clone(), file_src.clone(), file_src]);

        let opts = ServerOpts {
            given: ConfigFile {
                server: Some("https://other:9443/".into()),
                key: Some("bob.key".into()),
                ca: None,
            },
            config: None,
        };
        let s = resolve(&opts, &env).unwrap();
        assert_eq!(s.server.origin(), "https://other:9443");
        assert_eq!(s.key, PathBuf::from("bob.key"), "flags stay as given");
        assert_eq!(s.ca, tmp.path().join("ca.pem"), "the rest from the file");
        assert_eq!(s.sources[0], Source::Flag);
        assert_eq!(s.sources[2], Source::Flag);
    }

    #[test]
    fn an_explicit_config_file_replaces_the_default_and_must_exist() {
        let tmp = tempfile::tempdir().unwrap();
        let env = Env {
            rjs_home: Some(tmp.path().as_os_str().to_owned()),
            ..Env::default()
        };
        std::fs::write(
            tmp.path().join(CONFIG_FILE),
            "server = \"https://default:1\"\n",
        )
        .unwrap();
        let other = tmp.path().join("other.toml");
        std::fs::write(&other, "server = \"https://other:2\"\n").unwrap();
        let opts = ServerOpts {
            config: Some(other),
            given: ConfigFile {
                server: None,
                ca: Some("/ca.pem".into()),
                key: Some("/k.key".into()),
            },
        };
        assert_eq!(
            resolve(&opts, &env).unwrap().server.origin(),
            "https://other:2"
        );

        let opts = ServerOpts {
            config: Some(tmp.path().join("nope.toml")),
            ..opts
        };
        let e = format!("{:#}", resolve(&opts, &env).unwrap_err());
        assert!(e.contains("nope.toml"), "{e}");
    }

    #[test]
    fn a_missing_default_file_is_empty_and_missing_settings_name_flag_and_key() {
        let tmp = tempfile::tempdir().unwrap();
        let env = env_home(tmp.path());
        let e = resolve(&ServerOpts::default(), &env)
            .unwrap_err()
            .to_string();
        assert!(e.contains("--server URL"), "{e}");
        assert!(e.contains("server = \"https://host:8443\""), "{e}");
        assert!(e.contains("does not exist yet"), "{e}");
        assert!(e.contains(".config/rjs/config.toml"), "{e}");

        // Each missing setting is named by its flag and its key in the file.
        let only = |ca: bool, key: bool| ServerOpts {
            given: ConfigFile {
                server: Some("https://h:1".into()),
                ca: ca.then(|| "/ca.pem".into()),
                key: key.then(|| "/k".into()),
            },
            config: None,
        };
        for (opts, flag, key) in [
            (only(true, false), "--key KEY", "`key = "),
            (only(false, true), "--ca CA.pem", "`ca = "),
        ] {
            let e = resolve(&opts, &env).unwrap_err().to_string();
            assert!(e.contains(flag), "{e}");
            assert!(e.contains(key), "{e}");
        }
    }

    #[test]
    fn unknown_keys_and_bad_toml_are_errors() {
        let tmp = tempfile::tempdir().unwrap();
        let path = tmp.path().join("c.toml");
        std::fs::write(&path, "sever = \"https://h:1\"\n").unwrap();
        let e = format!("{:#}", load(Some(&path), &Env::default()).unwrap_err());
        assert!(e.contains("sever"), "{e}");
        std::fs::write(&path, "server = https://h:1\n").unwrap();
        assert!(load(Some(&path), &Env::default()).is_err());
    }

    #[test]
    fn an_http_server_in_the_file_is_refused_naming_the_file() {
        let tmp = tempfile::tempdir().unwrap();
        let path = tmp.path().join("c.toml");
        std::fs::write(
            &path,
            "server = \"http://h:8080\"\nca = \"a\"\nkey = \"b\"\n",
        )
        .unwrap();
        let opts = ServerOpts {
            config: Some(path),
            ..ServerOpts::default()
        };
        let e = format!("{:#}", resolve(&opts, &Env::default()).unwrap_err());
        assert!(e.contains("c.toml"), "{e}");
        assert!(e.contains("HTTPS only"), "{e}");
    }

    #[test]
    fn config_set_writes_a_file_resolve_reads() {
        let tmp = tempfile::tempdir().unwrap();
        let env = env_home(tmp.path());
        let ca = tmp.path().join("ca.pem");
        let key = tmp.path().join("alice.key");
        std::fs::write(&ca, "x").unwrap();
        std::fs::write(&key, "x").unwrap();
        assert!(set(None, &env, "server", "http://h:1").is_err());
        assert!(set(None, &env, "colour", "blue").is_err());
        assert!(set(None, &env, "ca", tmp.path().join("nope").to_str().unwrap()).is_err());
        let path = set(None, &env, "server", "https://h:8443/").unwrap();
        assert_eq!(path, tmp.path().join(".config/rjs/config.toml"));
        set(None, &env, "ca", ca.to_str().unwrap()).unwrap();
        set(None, &env, "key", "~/alice.key").unwrap();
        let s = resolve(&ServerOpts::default(), &env).unwrap();
        assert_eq!(s.server.origin(), "https://h:8443");
        assert_eq!(s.ca, ca);
        assert_eq!(s.key, key);
        // Setting one value keeps the others.
        set(None, &env, "server", "https://g:1").unwrap();
        let s = resolve(&ServerOpts::default(), &env).unwrap();
        assert_eq!(s.server.origin(), "https://g:1");
        assert_eq!(s.ca, ca);
    }
}
