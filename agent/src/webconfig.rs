//! `--web.config.file`: TLS and basic auth for the endpoint, in the Prometheus
//! exporter-toolkit format, so that the file written for node_exporter serves podstat too:
//!
//! ```yaml
//! tls_server_config:
//!   cert_file: /etc/podstat/tls/tls.crt     # re-read when it changes (checked once a second)
//!   key_file: /etc/podstat/tls/tls.key
//!   client_auth_type: RequireAndVerifyClientCert   # NoClientCert (default), VerifyClientCertIfGiven
//!   client_ca_file: /etc/podstat/tls/ca.crt
//!   min_version: TLS12                      # TLS12 (default) or TLS13; rustls has no TLS 1.0/1.1
//!   max_version: TLS13
//!   cipher_suites: [TLS_ECDHE_RSA_WITH_AES_128_GCM_SHA256]   # TLS 1.2 only, as in Go
//!   curve_preferences: [X25519, CurveP256]
//! http_server_config:
//!   headers: { X-Frame-Options: deny }
//! basic_auth_users:
//!   prometheus: $2y$10$...                  # bcrypt
//! ```
//!
//! Unknown keys are refused when the agent starts, and so are values the toolkit accepts but
//! rustls or podstat cannot honour (TLS 1.0, a CBC cipher suite, unverified client
//! certificates), each with what to use instead.

use std::{
    collections::{BTreeMap, HashMap},
    fmt, fs,
    path::{Path, PathBuf},
    sync::{Arc, Mutex, PoisonError},
    time::{Duration, Instant, SystemTime},
};

use rustls::{
    ServerConfig, SupportedCipherSuite, SupportedProtocolVersion,
    crypto::{CryptoProvider, SupportedKxGroup, ring},
    server::{ClientHello, ResolvesServerCert, WebPkiClientVerifier},
    sign::CertifiedKey,
};
use serde::Deserialize;

/// Why the web config was refused.
#[derive(Debug, thiserror::Error)]
pub enum WebConfigError {
    #[error("reading {path}")]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{path}: not a valid web config (exporter-toolkit format)")]
    Parse {
        path: PathBuf,
        #[source]
        source: serde_norway::Error,
    },
    #[error("{key}: {why}")]
    Invalid { key: &'static str, why: String },
    #[error("basic_auth_users.{user}: not a bcrypt hash (make one with `htpasswd -nBC 10 {user}`)")]
    NotBcrypt { user: String },
    #[error(transparent)]
    Pem(#[from] crate::tls::ConfigError),
    #[error("TLS configuration")]
    Tls(#[source] rustls::Error),
    #[error("client_ca_file {path}")]
    ClientCa {
        path: PathBuf,
        #[source]
        source: rustls::server::VerifierBuilderError,
    },
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct File {
    tls_server_config: Option<TlsFile>,
    http_server_config: Option<HttpFile>,
    #[serde(default)]
    basic_auth_users: BTreeMap<String, String>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct TlsFile {
    cert_file: Option<PathBuf>,
    key_file: Option<PathBuf>,
    cert: Option<String>,
    key: Option<String>,
    client_auth_type: Option<String>,
    client_ca_file: Option<PathBuf>,
    client_ca: Option<String>,
    #[serde(default)]
    client_allowed_sans: Vec<String>,
    min_version: Option<String>,
    max_version: Option<String>,
    #[serde(default)]
    cipher_suites: Vec<String>,
    #[serde(default)]
    curve_preferences: Vec<String>,
    prefer_server_cipher_suites: Option<bool>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct HttpFile {
    http2: Option<bool>,
    #[serde(default)]
    headers: BTreeMap<String, String>,
}

/// Who must present what.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ClientAuth {
    None,
    /// A certificate is verified against `client_ca_file` if the client sends one.
    VerifyIfGiven,
    /// Every client must send a certificate that verifies against `client_ca_file`.
    RequireAndVerify,
}

/// The parsed, checked web config.
pub struct WebConfig {
    pub tls: Option<Tls>,
    /// user → bcrypt hash.
    pub users: BTreeMap<String, String>,
    /// Extra response headers.
    pub headers: Vec<(hyper::header::HeaderName, hyper::header::HeaderValue)>,
    auth_cache: Mutex<HashMap<u64, Instant>>,
}

impl fmt::Debug for WebConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("WebConfig")
            .field("tls", &self.tls.as_ref().map(|t| t.client_auth))
            .field("users", &self.users.keys().collect::<Vec<_>>())
            .finish_non_exhaustive()
    }
}

/// The TLS half.
pub struct Tls {
    pub client_auth: ClientAuth,
    /// The rustls config for the handshake. With health left open under
    /// `RequireAndVerifyClientCert`, the handshake only verifies a certificate that is given,
    /// and the endpoint asks for one on every path but the health checks.
    pub server: Arc<ServerConfig>,
}

/// The TLS 1.2 cipher suites rustls has, by the names Go (and so the toolkit) gives them.
fn cipher_suite(name: &str) -> Option<SupportedCipherSuite> {
    use ring::cipher_suite as cs;
    Some(match name {
        "TLS_ECDHE_ECDSA_WITH_AES_128_GCM_SHA256" => cs::TLS_ECDHE_ECDSA_WITH_AES_128_GCM_SHA256,
        "TLS_ECDHE_ECDSA_WITH_AES_256_GCM_SHA384" => cs::TLS_ECDHE_ECDSA_WITH_AES_256_GCM_SHA384,
        "TLS_ECDHE_ECDSA_WITH_CHACHA20_POLY1305"
        | "TLS_ECDHE_ECDSA_WITH_CHACHA20_POLY1305_SHA256" => {
            cs::TLS_ECDHE_ECDSA_WITH_CHACHA20_POLY1305_SHA256
        }
        "TLS_ECDHE_RSA_WITH_AES_128_GCM_SHA256" => cs::TLS_ECDHE_RSA_WITH_AES_128_GCM_SHA256,
        "TLS_ECDHE_RSA_WITH_AES_256_GCM_SHA384" => cs::TLS_ECDHE_RSA_WITH_AES_256_GCM_SHA384,
        "TLS_ECDHE_RSA_WITH_CHACHA20_POLY1305" | "TLS_ECDHE_RSA_WITH_CHACHA20_POLY1305_SHA256" => {
            cs::TLS_ECDHE_RSA_WITH_CHACHA20_POLY1305_SHA256
        }
        _ => return None,
    })
}

fn kx_group(name: &str) -> Option<&'static dyn SupportedKxGroup> {
    Some(match name {
        "X25519" => ring::kx_group::X25519,
        "CurveP256" => ring::kx_group::SECP256R1,
        "CurveP384" => ring::kx_group::SECP384R1,
        _ => return None,
    })
}

fn version(key: &'static str, v: &str) -> Result<u8, WebConfigError> {
    match v {
        "TLS12" => Ok(12),
        "TLS13" => Ok(13),
        "TLS10" | "TLS11" => Err(WebConfigError::Invalid {
            key,
            why: format!("{v}: rustls implements TLS 1.2 and 1.3 only; use TLS12"),
        }),
        other => Err(WebConfigError::Invalid {
            key,
            why: format!("{other:?}: expected TLS12 or TLS13"),
        }),
    }
}

/// A stored hash in the modular crypt form the toolkit's Go bcrypt accepts:
/// `$2a$`, `$2b$`, `$2x$` or `$2y$`, a two-digit cost, then 53 characters of salt and hash
/// (60 in all). The `bcrypt` crate alone is laxer (it skips empty `$` fields, so
/// `2b$04$...` without the leading `$` parses): a config the toolkit refuses is refused here.
fn is_bcrypt(hash: &str) -> bool {
    let b = hash.as_bytes();
    b.len() == 60
        && b.starts_with(b"$2")
        && matches!(b[2], b'a' | b'b' | b'x' | b'y')
        && b[3] == b'$'
        && b[4].is_ascii_digit()
        && b[5].is_ascii_digit()
        && b[6] == b'$'
        && hash.parse::<bcrypt::HashParts>().is_ok()
}

fn invalid(key: &'static str, why: impl Into<String>) -> WebConfigError {
    WebConfigError::Invalid {
        key,
        why: why.into(),
    }
}

impl WebConfig {
    /// Reads and checks `path`. `health_open`: /healthz and /readyz need neither a password
    /// nor a client certificate.
    pub fn load(path: &Path, health_open: bool) -> Result<Self, WebConfigError> {
        let text = fs::read_to_string(path).map_err(|source| WebConfigError::Read {
            path: path.to_path_buf(),
            source,
        })?;
        Self::parse(&text, path, health_open)
    }

    /// [`WebConfig::load`] on the file's text; relative paths in it are relative to `path`'s
    /// directory, as in the toolkit.
    pub fn parse(text: &str, path: &Path, health_open: bool) -> Result<Self, WebConfigError> {
        let file: File = if text.trim().is_empty() {
            File::default()
        } else {
            serde_norway::from_str(text).map_err(|source| WebConfigError::Parse {
                path: path.to_path_buf(),
                source,
            })?
        };
        let base = path.parent().unwrap_or(Path::new("."));
        for (user, hash) in &file.basic_auth_users {
            if !is_bcrypt(hash) {
                return Err(WebConfigError::NotBcrypt { user: user.clone() });
            }
        }
        let mut headers = Vec::new();
        if let Some(http) = &file.http_server_config {
            if http.http2 == Some(true) {
                tracing::info!("http_server_config.http2: podstat serves HTTP/1.1 only");
            }
            for (k, v) in &http.headers {
                let name = hyper::header::HeaderName::from_bytes(k.as_bytes()).map_err(|_| {
                    invalid(
                        "http_server_config.headers",
                        format!("{k:?}: not a header name"),
                    )
                })?;
                let value = hyper::header::HeaderValue::from_str(v).map_err(|_| {
                    invalid(
                        "http_server_config.headers",
                        format!("{k}: {v:?} is not a header value"),
                    )
                })?;
                headers.push((name, value));
            }
        }
        let tls = file
            .tls_server_config
            .map(|t| tls(&t, base, health_open))
            .transpose()?;
        Ok(Self {
            tls,
            users: file.basic_auth_users,
            headers,
            auth_cache: Mutex::new(HashMap::new()),
        })
    }

    /// Whether `Authorization` (the header's value, if any) names a user with the right
    /// password. bcrypt is slow on purpose (tens of ms): a success is remembered for 90 s
    /// by a keyed hash of user, password and stored hash, as the toolkit does, so a scrape
    /// every few seconds costs one verification every 90 s.
    pub fn authorized(&self, authorization: Option<&str>) -> bool {
        use std::hash::BuildHasher as _;

        static KEY: std::sync::OnceLock<std::collections::hash_map::RandomState> =
            std::sync::OnceLock::new();
        if self.users.is_empty() {
            return true;
        }
        let Some((user, password)) = authorization.and_then(basic_credentials) else {
            return false;
        };
        let user = user.as_str();
        let password = password.as_str();
        let Some(hash) = self.users.get(user) else {
            // As slow as a wrong password, so that a user name cannot be told from the timing.
            let _ = bcrypt::verify(password, DUMMY_HASH);
            return false;
        };
        let digest = KEY
            .get_or_init(Default::default)
            .hash_one((user, password, hash.as_str()));
        let cache = self
            .auth_cache
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        if cache
            .get(&digest)
            .is_some_and(|at| at.elapsed() < AUTH_CACHE_TTL)
        {
            return true;
        }
        drop(cache);
        if !bcrypt::verify(password, hash).unwrap_or(false) {
            return false;
        }
        let mut cache = self
            .auth_cache
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        if cache.len() >= AUTH_CACHE_MAX {
            cache.retain(|_, at| at.elapsed() < AUTH_CACHE_TTL);
            if cache.len() >= AUTH_CACHE_MAX {
                cache.clear();
            }
        }
        cache.insert(digest, Instant::now());
        true
    }
}

/// The user and password of an `Authorization: Basic <base64 of user:password>` header
/// value, if it is one.
pub fn basic_credentials(authorization: &str) -> Option<(String, String)> {
    use base64::Engine as _;
    let b64 = authorization.strip_prefix("Basic ")?;
    let raw = base64::engine::general_purpose::STANDARD
        .decode(b64.trim())
        .ok()?;
    let raw = String::from_utf8(raw).ok()?;
    let (user, password) = raw.split_once(':')?;
    Some((user.to_owned(), password.to_owned()))
}

const AUTH_CACHE_TTL: Duration = Duration::from_secs(90);
const AUTH_CACHE_MAX: usize = 64;
/// bcrypt of "podstat" at cost 10: what an unknown user's password is checked against.
const DUMMY_HASH: &str = "$2b$10$N9qo8uLOickgx2ZMRZoMyeIjZAgcfl7p92ldGxad68LJZdL17lhWy";

#[expect(
    clippy::too_many_lines,
    reason = "one check per key of tls_server_config, in the file's order"
)]
fn tls(t: &TlsFile, base: &Path, health_open: bool) -> Result<Tls, WebConfigError> {
    const K: &str = "tls_server_config";
    if t.cert.is_some() || t.key.is_some() || t.client_ca.is_some() {
        return Err(invalid(
            K,
            "inline cert, key and client_ca are not supported: use cert_file, key_file and client_ca_file",
        ));
    }
    if !t.client_allowed_sans.is_empty() {
        return Err(invalid(
            "tls_server_config.client_allowed_sans",
            "not supported: issue the client certificates from a CA of their own instead",
        ));
    }
    let resolve = |p: &PathBuf| {
        if p.is_absolute() {
            p.clone()
        } else {
            base.join(p)
        }
    };
    let cert_file = t
        .cert_file
        .as_ref()
        .map(resolve)
        .ok_or_else(|| invalid(K, "missing cert_file"))?;
    let key_file = t
        .key_file
        .as_ref()
        .map(resolve)
        .ok_or_else(|| invalid(K, "missing key_file"))?;
    let client_auth = match t.client_auth_type.as_deref().unwrap_or("NoClientCert") {
        "NoClientCert" => ClientAuth::None,
        "VerifyClientCertIfGiven" => ClientAuth::VerifyIfGiven,
        "RequireAndVerifyClientCert" => ClientAuth::RequireAndVerify,
        v @ ("RequestClientCert" | "RequireAnyClientCert") => {
            return Err(invalid(
                "tls_server_config.client_auth_type",
                format!(
                    "{v}: podstat does not accept client certificates it cannot verify; use VerifyClientCertIfGiven or RequireAndVerifyClientCert with client_ca_file"
                ),
            ));
        }
        other => {
            return Err(invalid(
                "tls_server_config.client_auth_type",
                format!(
                    "{other:?}: expected NoClientCert, VerifyClientCertIfGiven or RequireAndVerifyClientCert"
                ),
            ));
        }
    };
    let min = t
        .min_version
        .as_deref()
        .map_or(Ok(12), |v| version("tls_server_config.min_version", v))?;
    let max = t
        .max_version
        .as_deref()
        .map_or(Ok(13), |v| version("tls_server_config.max_version", v))?;
    if min > max {
        return Err(invalid(K, "min_version is above max_version"));
    }
    let versions: Vec<&'static SupportedProtocolVersion> =
        [(12, &rustls::version::TLS12), (13, &rustls::version::TLS13)]
            .into_iter()
            .filter(|(v, _)| (min..=max).contains(v))
            .map(|(_, p)| p)
            .collect();
    if t.prefer_server_cipher_suites == Some(false) {
        tracing::info!(
            "tls_server_config.prefer_server_cipher_suites: rustls always prefers the server's order"
        );
    }
    let mut provider = ring::default_provider();
    if !t.cipher_suites.is_empty() {
        let mut suites: Vec<SupportedCipherSuite> = provider
            .cipher_suites
            .iter()
            .copied()
            .filter(|s| matches!(s, SupportedCipherSuite::Tls13(_)))
            .collect();
        for name in &t.cipher_suites {
            suites.push(cipher_suite(name).ok_or_else(|| {
                invalid(
                    "tls_server_config.cipher_suites",
                    format!("{name}: not one rustls implements (it has the ECDHE suites with AES-GCM and ChaCha20-Poly1305; TLS 1.3 suites are always on, as in Go)"),
                )
            })?);
        }
        provider.cipher_suites = suites;
    }
    if !t.curve_preferences.is_empty() {
        provider.kx_groups = t
            .curve_preferences
            .iter()
            .map(|name| {
                kx_group(name).ok_or_else(|| {
                    invalid(
                        "tls_server_config.curve_preferences",
                        format!("{name}: expected X25519, CurveP256 or CurveP384"),
                    )
                })
            })
            .collect::<Result<_, _>>()?;
    }
    let provider = Arc::new(provider);
    let builder = ServerConfig::builder_with_provider(Arc::clone(&provider))
        .with_protocol_versions(&versions)
        .map_err(WebConfigError::Tls)?;
    let builder = match (client_auth, &t.client_ca_file) {
        (ClientAuth::None, Some(_)) => {
            return Err(invalid(
                "tls_server_config.client_ca_file",
                "given with client_auth_type NoClientCert: set client_auth_type to RequireAndVerifyClientCert or VerifyClientCertIfGiven",
            ));
        }
        (ClientAuth::None, None) => builder.with_no_client_auth(),
        (_, None) => {
            return Err(invalid(
                "tls_server_config.client_ca_file",
                "client_auth_type asks to verify client certificates: client_ca_file is needed",
            ));
        }
        (auth, Some(ca)) => {
            let ca = resolve(ca);
            let roots = crate::tls::roots(&ca)?;
            let v =
                WebPkiClientVerifier::builder_with_provider(Arc::new(roots), Arc::clone(&provider));
            let v = if auth == ClientAuth::VerifyIfGiven || health_open {
                v.allow_unauthenticated()
            } else {
                v
            };
            builder.with_client_cert_verifier(v.build().map_err(|source| {
                WebConfigError::ClientCa {
                    path: ca.clone(),
                    source,
                }
            })?)
        }
    };
    let resolver = Arc::new(Reloading::new(cert_file, key_file, provider)?);
    let mut server = builder.with_cert_resolver(resolver);
    server.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(Tls {
        client_auth,
        server: Arc::new(server),
    })
}

/// (modification time, length) of both files: what says they changed.
type Stamp = [(Option<SystemTime>, u64); 2];

/// The server certificate, re-read when its files change (cert-manager renews a Secret in
/// place; the kubelet updates the mounted files). Checked at most once a second, in the
/// handshake; a pair that fails to load keeps the last good one, with a warning.
struct Reloading {
    cert_file: PathBuf,
    key_file: PathBuf,
    provider: Arc<CryptoProvider>,
    state: Mutex<(Instant, Stamp, Arc<CertifiedKey>)>,
}

impl fmt::Debug for Reloading {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Reloading")
            .field("cert_file", &self.cert_file)
            .field("key_file", &self.key_file)
            .finish_non_exhaustive()
    }
}

const RELOAD_CHECK: Duration = Duration::from_secs(1);

impl Reloading {
    fn new(
        cert_file: PathBuf,
        key_file: PathBuf,
        provider: Arc<CryptoProvider>,
    ) -> Result<Self, WebConfigError> {
        let stamp = stamp(&cert_file, &key_file);
        let key = load_pair(&cert_file, &key_file, &provider)?;
        Ok(Self {
            cert_file,
            key_file,
            provider,
            state: Mutex::new((Instant::now(), stamp, Arc::new(key))),
        })
    }

    fn current(&self) -> Arc<CertifiedKey> {
        let mut state = self.state.lock().unwrap_or_else(PoisonError::into_inner);
        if state.0.elapsed() >= RELOAD_CHECK {
            state.0 = Instant::now();
            let now = stamp(&self.cert_file, &self.key_file);
            if now != state.1 {
                match load_pair(&self.cert_file, &self.key_file, &self.provider) {
                    Ok(key) => {
                        tracing::info!(cert_file = %self.cert_file.display(), "TLS certificate reloaded");
                        state.1 = now;
                        state.2 = Arc::new(key);
                    }
                    Err(e) => {
                        tracing::warn!(error = %crate::util::chain(&e), "TLS certificate changed but does not load; keeping the previous one");
                    }
                }
            }
        }
        Arc::clone(&state.2)
    }
}

impl ResolvesServerCert for Reloading {
    fn resolve(&self, _hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        Some(self.current())
    }
}

fn stamp(cert: &Path, key: &Path) -> Stamp {
    [cert, key].map(|p| fs::metadata(p).map_or((None, 0), |m| (m.modified().ok(), m.len())))
}

fn load_pair(
    cert_file: &Path,
    key_file: &Path,
    provider: &CryptoProvider,
) -> Result<CertifiedKey, WebConfigError> {
    let certs = crate::tls::certs(cert_file)?;
    let key = crate::tls::key(key_file)?;
    CertifiedKey::from_der(certs, key, provider).map_err(WebConfigError::Tls)
}

#[cfg(test)]
mod tests {
    use base64::Engine as _;

    use super::*;

    fn parse(text: &str) -> Result<WebConfig, WebConfigError> {
        WebConfig::parse(text, Path::new("/nonexistent/web.yml"), false)
    }

    #[test]
    fn refuses_what_it_cannot_honour_and_says_why() {
        let cases: &[(&str, &str)] = &[
            (
                "tls_server_config:\n  certfile: x\n",
                "unknown field `certfile`",
            ),
            (
                "basic_auth_user:\n  a: b\n",
                "unknown field `basic_auth_user`",
            ),
            ("tls_server_config:\n  key_file: k\n", "missing cert_file"),
            ("tls_server_config:\n  cert_file: c\n", "missing key_file"),
            (
                "tls_server_config:\n  cert_file: c\n  key_file: k\n  min_version: TLS10\n",
                "TLS 1.2 and 1.3 only",
            ),
            (
                "tls_server_config:\n  cert_file: c\n  key_file: k\n  cipher_suites: [TLS_RSA_WITH_AES_128_CBC_SHA]\n",
                "TLS_RSA_WITH_AES_128_CBC_SHA: not one rustls implements",
            ),
            (
                "tls_server_config:\n  cert_file: c\n  key_file: k\n  client_auth_type: RequireAnyClientCert\n",
                "cannot verify",
            ),
            (
                "tls_server_config:\n  cert_file: c\n  key_file: k\n  client_ca_file: ca\n",
                "NoClientCert",
            ),
            (
                "tls_server_config:\n  cert_file: c\n  key_file: k\n  client_auth_type: RequireAndVerifyClientCert\n",
                "client_ca_file is needed",
            ),
            (
                "tls_server_config:\n  cert_file: c\n  key_file: k\n  curve_preferences: [CurveP521]\n",
                "CurveP521",
            ),
            (
                "basic_auth_users:\n  alice: plaintext\n",
                "not a bcrypt hash",
            ),
            // Found by the fuzzer (fuzz/corpus/webconfig/key-swallows-dollar.yml): the `$`
            // went to the key, and the `bcrypt` crate parsed the rest as a hash.
            (
                "basic_auth_users:\n  prometheus$: 2b$04$N9qo8uLOickgx2ZMRZoMyeIjZAgcfl7p92ldGxad68LJZdL17lhWy\n",
                "not a bcrypt hash",
            ),
            (
                "tls_server_config:\n  cert_file: c\n  key_file: k\n",
                "/nonexistent/c",
            ),
        ];
        for (text, want) in cases {
            let e = parse(text)
                .err()
                .unwrap_or_else(|| panic!("accepted:\n{text}"));
            let msg = crate::util::chain(&e);
            assert!(
                msg.contains(want),
                "{text:?}: {msg:?} does not say {want:?}"
            );
        }
    }

    #[test]
    fn empty_and_auth_only_configs_load() {
        let c = parse("").expect("empty");
        assert!(c.tls.is_none() && c.users.is_empty() && c.authorized(None));
        let hash = bcrypt::hash("s3cret", 4).expect("hash");
        let c = parse(&format!(
            "basic_auth_users:\n  prometheus: {hash}\nhttp_server_config:\n  headers:\n    X-Frame-Options: deny\n"
        ))
        .expect("auth");
        let basic = |u: &str, p: &str| {
            format!(
                "Basic {}",
                base64::engine::general_purpose::STANDARD.encode(format!("{u}:{p}"))
            )
        };
        assert!(c.authorized(Some(&basic("prometheus", "s3cret"))));
        assert!(
            c.authorized(Some(&basic("prometheus", "s3cret"))),
            "from the cache"
        );
        assert!(!c.authorized(Some(&basic("prometheus", "wrong"))));
        assert!(!c.authorized(Some(&basic("nobody", "s3cret"))));
        assert!(!c.authorized(Some("Bearer x")));
        assert!(!c.authorized(None));
        assert_eq!(c.headers.len(), 1);
    }
}
