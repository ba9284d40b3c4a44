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
//! setting that silently does nothing is worse than none. The file is read once at start.

use std::{collections::BTreeMap, path::Path, str::FromStr as _, sync::Arc};

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
        let err = |why: String| WebConfigError::Invalid {
            path: path.display().to_string(),
            why,
        };
        let text = std::fs::read_to_string(path).map_err(|e| err(e.to_string()))?;
        let base = path.parent().unwrap_or(Path::new("."));
        Self::parse(&text, base).map_err(err)
    }

    fn parse(text: &str, base: &Path) -> Result<Self, String> {
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
            Some(t) => Some(Arc::new(tls_config(t, base)?)),
        };
        Ok(WebConfig { tls, users })
    }
}

fn tls_config(t: TlsFile, base: &Path) -> Result<rustls::ServerConfig, String> {
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
}
