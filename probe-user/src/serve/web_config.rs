//! `--web.config.file`: TLS and basic authentication, in the format of the Prometheus
//! exporter toolkit (what node_exporter reads), so one file and one habit serve every exporter:
//!
//! ```yaml
//! tls_server_config:
//!   cert_file: server.crt      # PEM, the chain; relative paths are relative to this file
//!   key_file: server.key       # PEM, PKCS#8 / PKCS#1 / SEC1
//!   min_version: TLS12         # optional: TLS12 (default) or TLS13
//! basic_auth_users:
//!   prometheus: $2y$10$...     # bcrypt hash (htpasswd -nBC 10 "" | tr -d ':\n')
//! ```
//!
//! Keys of the toolkit fathom does not implement (client certificates, cipher suites, HTTP
//! headers, rate limits) are refused with a message instead of being ignored: a security
//! setting that silently does nothing is worse than none.
//!
//! The file and the certificate and key it names are read again when one of them changes
//! ([`WebConfig::reload_if_changed`]; the server asks on new connections, at most once a
//! second), as the exporter toolkit does: rotated certificates (cert-manager) and passwords
//! take effect without a restart. A replacement that does not load keeps the config in force.

use std::{
    collections::BTreeMap,
    os::unix::fs::MetadataExt as _,
    path::{Path, PathBuf},
    str::FromStr as _,
    sync::Arc,
};

use serde::Deserialize;
use tokio_rustls::rustls;

#[derive(Debug, thiserror::Error)]
pub enum WebConfigError {
    #[error("--web.config.file {path}: {why}")]
    Invalid { path: String, why: String },
}

/// What the file asks for, checked and ready to use.
#[derive(Clone)]
pub struct WebConfig {
    pub tls: Option<Arc<rustls::ServerConfig>>,
    /// user → bcrypt hash; empty: no authentication.
    pub users: BTreeMap<String, String>,
    /// The file it was read from (`None`: made from text, never reloaded).
    path: Option<PathBuf>,
    /// The files read to make it, as they were just before being read.
    stamp: Stamp,
}

/// What identifies a file's content without reading it: device, inode (a Kubernetes Secret
/// volume swaps a symlink, which `metadata` follows), size, and modification and change
/// times; `None` while the file cannot be stat'ed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct FileStamp {
    dev: u64,
    ino: u64,
    len: u64,
    mtime: (i64, i64),
    ctime: (i64, i64),
}

fn file_stamp(path: &Path) -> Option<FileStamp> {
    let m = std::fs::metadata(path).ok()?;
    Some(FileStamp {
        dev: m.dev(),
        ino: m.ino(),
        len: m.len(),
        mtime: (m.mtime(), m.mtime_nsec()),
        ctime: (m.ctime(), m.ctime_nsec()),
    })
}

/// The files a load read (or tried to), each stamped just before it was read: a change made
/// during the read shows at the next check.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Stamp(Vec<(PathBuf, Option<FileStamp>)>);

impl Stamp {
    fn add(&mut self, path: &Path) {
        self.0.push((path.to_owned(), file_stamp(path)));
    }

    /// Whether one of the files is not what it was (another content, gone, or back).
    pub fn changed(&self) -> bool {
        self.0.iter().any(|(p, s)| file_stamp(p) != *s)
    }
}

/// What [`WebConfig::reload_if_changed`] found.
#[derive(Debug)]
pub enum Reload {
    /// No file changed since the last attempt (or the config has no file).
    Unchanged,
    /// The files changed and load: use this config from now on.
    Reloaded(Box<WebConfig>),
    /// The files changed and do not load (or would switch TLS or authentication on or off):
    /// keep the config in force. Not reported again until the files change again.
    Failed(WebConfigError),
}

impl std::fmt::Debug for WebConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("WebConfig")
            .field("tls", &self.tls.is_some())
            .field("users", &self.users.keys().collect::<Vec<_>>())
            .finish()
    }
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct File {
    tls_server_config: Option<TlsFile>,
    basic_auth_users: Option<BTreeMap<String, String>>,
    http_server_config: Option<serde_norway::Value>,
    rate_limit: Option<serde_norway::Value>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct TlsFile {
    cert_file: Option<String>,
    key_file: Option<String>,
    cert: Option<String>,
    key: Option<String>,
    min_version: Option<String>,
    max_version: Option<String>,
    client_auth_type: Option<String>,
    client_ca_file: Option<String>,
    client_ca: Option<String>,
    cipher_suites: Option<serde_norway::Value>,
    curve_preferences: Option<serde_norway::Value>,
    prefer_server_cipher_suites: Option<serde_norway::Value>,
    client_allowed_sans: Option<serde_norway::Value>,
}

impl WebConfig {
    /// Reads and checks the file: certificates and key load, hashes are bcrypt hashes.
    pub fn load(path: &Path) -> Result<Self, WebConfigError> {
        Self::load_stamped(path).1
    }

    /// [`Self::load`], and the files it read (or tried to), also when it fails.
    fn load_stamped(path: &Path) -> (Stamp, Result<Self, WebConfigError>) {
        let err = |why: String| WebConfigError::Invalid {
            path: path.display().to_string(),
            why,
        };
        let mut stamp = Stamp::default();
        stamp.add(path);
        let text = match std::fs::read_to_string(path) {
            Ok(t) => t,
            Err(e) => return (stamp, Err(err(e.to_string()))),
        };
        let base = path.parent().unwrap_or(Path::new("."));
        let r = Self::parse_stamped(&text, base, &mut stamp);
        let r = r.map(|mut c| {
            c.path = Some(path.to_owned());
            c.stamp = stamp.clone();
            c
        });
        (stamp, r.map_err(err))
    }

    /// Reads the file again when it, or a file the last attempt read, changed since
    /// `last_attempt` (start with [`Self::stamp`]); `last_attempt` becomes this attempt's.
    /// A new config must keep TLS and basic auth as they are (on or off): switching them is a
    /// restart (the scheme is in the ready line and the probes), and a file caught half
    /// written must not turn security off.
    pub fn reload_if_changed(&self, last_attempt: &mut Stamp) -> Reload {
        let Some(path) = &self.path else {
            return Reload::Unchanged;
        };
        if !last_attempt.changed() {
            return Reload::Unchanged;
        }
        let (stamp, r) = Self::load_stamped(path);
        *last_attempt = stamp;
        let new = match r {
            Ok(new) => new,
            Err(e) => return Reload::Failed(e),
        };
        let switched = |what: &str, before: bool| WebConfigError::Invalid {
            path: path.display().to_string(),
            why: format!(
                "{what} was {} at start and would be {}: that needs a restart",
                if before { "on" } else { "off" },
                if before { "off" } else { "on" },
            ),
        };
        if new.tls.is_some() != self.tls.is_some() {
            return Reload::Failed(switched("TLS", self.tls.is_some()));
        }
        if new.users.is_empty() != self.users.is_empty() {
            return Reload::Failed(switched("basic auth", !self.users.is_empty()));
        }
        Reload::Reloaded(Box::new(new))
    }

    /// The files read to make this config, for [`Self::reload_if_changed`].
    pub fn stamp(&self) -> Stamp {
        self.stamp.clone()
    }

    /// The file it was read from, if any.
    pub fn path(&self) -> Option<&Path> {
        self.path.as_deref()
    }

    #[cfg(test)]
    fn parse(text: &str, base: &Path) -> Result<Self, String> {
        Self::parse_stamped(text, base, &mut Stamp::default())
    }

    fn parse_stamped(text: &str, base: &Path, stamp: &mut Stamp) -> Result<Self, String> {
        let file: File = if text.trim().is_empty() {
            File::default()
        } else {
            serde_norway::from_str(text).map_err(|e| e.to_string())?
        };
        if file.http_server_config.is_some() || file.rate_limit.is_some() {
            return Err(
                "http_server_config and rate_limit are not supported by fathom (it has its own connection limits)".into(),
            );
        }
        let mut users = file.basic_auth_users.unwrap_or_default();
        for (user, hash) in &mut users {
            *hash = hash.trim().to_owned();
            if bcrypt::HashParts::from_str(hash).is_err() {
                return Err(format!(
                    "basic_auth_users.{user}: not a bcrypt hash (make one with: htpasswd -nBC 10 \"\" | tr -d ':\\n')"
                ));
            }
            if user.contains(':') {
                return Err(format!(
                    "basic_auth_users.{user}: a user name cannot hold ':'"
                ));
            }
        }
        let tls = match file.tls_server_config {
            None => None,
            Some(t) => Some(Arc::new(tls_config(t, base, stamp)?)),
        };
        Ok(WebConfig {
            tls,
            users,
            path: None,
            stamp: Stamp::default(),
        })
    }
}

fn tls_config(t: TlsFile, base: &Path, stamp: &mut Stamp) -> Result<rustls::ServerConfig, String> {
    use rustls_pki_types::{CertificateDer, PrivateKeyDer, pem::PemObject as _};
    let unsupported = [
        ("cert", t.cert.is_some()),
        ("key", t.key.is_some()),
        ("client_ca_file", t.client_ca_file.is_some()),
        ("client_ca", t.client_ca.is_some()),
        ("cipher_suites", t.cipher_suites.is_some()),
        ("curve_preferences", t.curve_preferences.is_some()),
        (
            "prefer_server_cipher_suites",
            t.prefer_server_cipher_suites.is_some(),
        ),
        ("client_allowed_sans", t.client_allowed_sans.is_some()),
    ];
    if let Some((key, _)) = unsupported.iter().find(|(_, set)| *set) {
        return Err(format!(
            "tls_server_config.{key} is not supported by fathom (supported: cert_file, key_file, min_version, max_version)"
        ));
    }
    match t.client_auth_type.as_deref() {
        None | Some("") | Some("NoClientCert") => {}
        Some(other) => {
            return Err(format!(
                "tls_server_config.client_auth_type {other} is not supported by fathom (only NoClientCert)"
            ));
        }
    }
    let (Some(cert), Some(key)) = (t.cert_file, t.key_file) else {
        return Err("tls_server_config needs both cert_file and key_file".into());
    };
    let cert_path = base.join(cert);
    let key_path = base.join(key);
    stamp.add(&cert_path);
    stamp.add(&key_path);
    let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(&cert_path)
        .and_then(|it| it.collect())
        .map_err(|e| format!("{}: {e}", cert_path.display()))?;
    if certs.is_empty() {
        return Err(format!("{}: no certificate in it", cert_path.display()));
    }
    let key = PrivateKeyDer::from_pem_file(&key_path)
        .map_err(|e| format!("{}: {e}", key_path.display()))?;
    let version = |v: &Option<String>, default| match v.as_deref() {
        None | Some("") => Ok(default),
        Some("TLS12") => Ok(12),
        Some("TLS13") => Ok(13),
        Some(o) => Err(format!(
            "TLS version {o} is not supported (TLS12 or TLS13; older ones are insecure)"
        )),
    };
    let (min, max) = (version(&t.min_version, 12)?, version(&t.max_version, 13)?);
    let versions: Vec<&'static rustls::SupportedProtocolVersion> =
        [(12, &rustls::version::TLS12), (13, &rustls::version::TLS13)]
            .into_iter()
            .filter(|(v, _)| (min..=max).contains(v))
            .map(|(_, p)| p)
            .collect();
    if versions.is_empty() {
        return Err("min_version is above max_version".into());
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut cfg = rustls::ServerConfig::builder_with_provider(provider)
        .with_protocol_versions(&versions)
        .map_err(|e| e.to_string())?
        .with_no_client_auth()
        .with_single_cert(certs, key)
        .map_err(|e| format!("{} / {}: {e}", cert_path.display(), key_path.display()))?;
    cfg.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(cfg)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn empty_file_means_plain_http_without_auth() {
        let c = WebConfig::parse("", Path::new(".")).unwrap();
        assert!(c.tls.is_none() && c.users.is_empty());
    }

    #[test]
    fn users_need_bcrypt_hashes() {
        let hash = bcrypt::hash("secret", 4).unwrap();
        let c = WebConfig::parse(
            &format!("basic_auth_users:\n  prom: '{hash}'\n"),
            Path::new("."),
        )
        .unwrap();
        assert_eq!(c.users.get("prom"), Some(&hash));
        let e =
            WebConfig::parse("basic_auth_users:\n  prom: secret\n", Path::new(".")).unwrap_err();
        assert!(e.contains("not a bcrypt hash"), "{e}");
    }

    #[test]
    fn unknown_and_unsupported_keys_are_refused() {
        let e = WebConfig::parse("tls_server_confg: {}\n", Path::new(".")).unwrap_err();
        assert!(e.contains("tls_server_confg"), "{e}");
        let e = WebConfig::parse(
            "tls_server_config:\n  cert_file: a\n  key_file: b\n  client_auth_type: RequireAndVerifyClientCert\n",
            Path::new("."),
        )
        .unwrap_err();
        assert!(e.contains("client_auth_type"), "{e}");
        let e =
            WebConfig::parse("tls_server_config:\n  cert_file: a\n", Path::new(".")).unwrap_err();
        assert!(e.contains("both cert_file and key_file"), "{e}");
        let e = WebConfig::parse(
            "tls_server_config:\n  cert_file: /nonexistent/a.crt\n  key_file: b\n",
            Path::new("."),
        )
        .unwrap_err();
        assert!(e.contains("/nonexistent/a.crt"), "{e}");
    }

    /// A scratch directory removed on drop.
    struct Scratch(PathBuf);
    impl Scratch {
        fn new(name: &str) -> Self {
            let p =
                std::env::temp_dir().join(format!("fathom-webcfg-{}-{name}", std::process::id()));
            let _ = std::fs::remove_dir_all(&p);
            std::fs::create_dir_all(&p).unwrap();
            Scratch(p)
        }
        /// Replaces `name` atomically (as an editor or a Secret volume does).
        fn write(&self, name: &str, text: &str) -> PathBuf {
            let tmp = self.0.join(format!(".{name}.tmp"));
            std::fs::write(&tmp, text).unwrap();
            let p = self.0.join(name);
            std::fs::rename(&tmp, &p).unwrap();
            p
        }
    }
    impl Drop for Scratch {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }

    fn users(hash: &str) -> String {
        format!("basic_auth_users:\n  prom: '{hash}'\n")
    }

    #[test]
    fn a_changed_file_is_read_again_and_a_broken_one_reported_once() {
        let dir = Scratch::new("reload");
        let (h1, h2) = (
            bcrypt::hash("one", 4).unwrap(),
            bcrypt::hash("two", 4).unwrap(),
        );
        let path = dir.write("web.yml", &users(&h1));
        let first = WebConfig::load(&path).unwrap();
        let mut seen = first.stamp();
        assert!(matches!(
            first.reload_if_changed(&mut seen),
            Reload::Unchanged
        ));

        dir.write("web.yml", &users(&h2));
        let Reload::Reloaded(second) = first.reload_if_changed(&mut seen) else {
            panic!("a new password is a reload");
        };
        assert_eq!(second.users.get("prom"), Some(&h2));
        assert!(matches!(
            second.reload_if_changed(&mut seen),
            Reload::Unchanged
        ));

        dir.write("web.yml", "basic_auth_users: [\n");
        let Reload::Failed(e) = second.reload_if_changed(&mut seen) else {
            panic!("a broken file fails");
        };
        assert!(e.to_string().contains("web.yml"), "{e}");
        // Reported once: the same broken file is not read again.
        assert!(matches!(
            second.reload_if_changed(&mut seen),
            Reload::Unchanged
        ));

        // Turning authentication off (a file caught empty) is refused.
        dir.write("web.yml", "");
        let Reload::Failed(e) = second.reload_if_changed(&mut seen) else {
            panic!("switching basic auth off fails");
        };
        assert!(e.to_string().contains("basic auth was on"), "{e}");

        // Gone, then back as it was: read again.
        std::fs::remove_file(&path).unwrap();
        assert!(matches!(
            second.reload_if_changed(&mut seen),
            Reload::Failed(_)
        ));
        dir.write("web.yml", &users(&h1));
        let Reload::Reloaded(third) = second.reload_if_changed(&mut seen) else {
            panic!("the file came back");
        };
        assert_eq!(third.users.get("prom"), Some(&h1));
    }

    #[test]
    fn a_config_made_from_text_is_never_reloaded() {
        let c = WebConfig::parse("", Path::new(".")).unwrap();
        // "/" exists: this stamp says changed.
        let mut seen = Stamp(vec![(PathBuf::from("/"), None)]);
        assert!(seen.changed());
        assert!(matches!(c.reload_if_changed(&mut seen), Reload::Unchanged));
    }
}
