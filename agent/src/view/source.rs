//! Where the operator views get their samples: this host's kernel through the agent's own
//! collectors (probes loaded in-process when root), or a running agent's `/metrics`, over
//! HTTP or HTTPS (a CA, a client certificate, basic auth: `--from.*`).
//!
//! Both end in samples from the exposition ([`super::expo`]), so the views have one input and
//! the collectors are never re-implemented. They read the protobuf format when they can: its
//! native histograms carry every kernel bucket, where the text formats carry a subset.

use std::{
    path::{Path, PathBuf},
    sync::Arc,
    time::Duration,
};

use hyper::StatusCode;

use super::{expo, model::Snapshot};
use crate::{agent::Agent, cli::RemoteArgs, collector, http, probe::Status};

/// What `--from` asks for: protobuf (native histograms) first, else Prometheus text; never
/// compressed (this client does not gunzip).
const ACCEPT: &str = "application/vnd.google.protobuf;proto=io.prometheus.client.MetricFamily;encoding=delimited;q=0.9,text/plain;version=0.0.4;q=0.5";
/// Time limit of one scrape of `--from` (connect, request and body).
const FETCH_TIMEOUT: Duration = Duration::from_secs(10);

/// Why a snapshot could not be taken.
#[derive(Debug, thiserror::Error)]
pub enum SourceError {
    #[error("--from {0:?}: only http(s)://HOST[:PORT][/PATH] URLs are supported")]
    BadUrl(String),
    #[error(
        "--from {0}: an https URL needs --from.ca-file (the CA that signs the agent's certificate) or --from.insecure-skip-verify"
    )]
    NoTrust(String),
    #[error(
        "--from {0}: --from.ca-file, --from.cert-file and --from.insecure-skip-verify are for https:// URLs"
    )]
    TlsForPlain(String),
    #[error("--from TLS settings")]
    TlsConfig(#[source] crate::tls::ConfigError),
    #[error(
        "--from.username {0}: no password (give --from.password-file, or set PODSTAT_FROM_PASSWORD)"
    )]
    NoPassword(String),
    #[error("--from.password-file {path}")]
    PasswordFile {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("fetching {url}{hint}")]
    Fetch {
        url: String,
        hint: &'static str,
        #[source]
        source: http::HttpError,
    },
    #[error("{url} answered 401 Unauthorized: {why}")]
    Unauthorized { url: String, why: String },
    #[error("{url} answered 403 Forbidden: {why}")]
    Forbidden { url: String, why: String },
    #[error("{url} answered {status}{said}")]
    Status {
        url: String,
        status: StatusCode,
        /// The first line of the body, after ": ", if any.
        said: String,
    },
    #[error("encoding the local collectors' metrics failed")]
    Encode,
    #[error("{url} answered protobuf that does not decode")]
    Decode {
        url: String,
        #[source]
        source: prost::DecodeError,
    },
    #[error("starting the in-process agent")]
    Start(#[source] crate::agent::StartError),
}

/// A running source of snapshots.
pub enum Source {
    /// The agent's collectors in this process.
    Local(Box<Local>),
    /// A running agent, scraped over HTTP(S).
    Remote(Box<Remote>),
}

/// The in-process agent; dropping it stops the identity refresh and detaches the probes.
pub struct Local {
    running: crate::agent::Running,
}

/// A running agent: `url` as given, `target` with the default path.
pub struct Remote {
    url: String,
    target: String,
    client: http::Client,
    /// `--from.username`, and the `Authorization` header made with its password.
    auth: Option<(String, String)>,
    /// Where the password came from, for a 401's message.
    password_from: &'static str,
    client_cert: bool,
}

/// Where a password is read from: the file if given, else `env` (PODSTAT_FROM_PASSWORD's
/// value); one trailing newline is not part of it.
fn password(file: Option<&Path>, env: Option<String>) -> Result<Option<String>, SourceError> {
    let p = match file {
        Some(path) => {
            Some(
                std::fs::read_to_string(path).map_err(|source| SourceError::PasswordFile {
                    path: path.into(),
                    source,
                })?,
            )
        }
        None => env,
    };
    Ok(p.map(|p| {
        let p = p.strip_suffix('\n').unwrap_or(&p);
        p.strip_suffix('\r').unwrap_or(p).to_owned()
    }))
}

impl Source {
    /// The local kernel: the default collectors, with the eBPF probes when we are root
    /// (otherwise only the cgroup files; `warn` is told why).
    pub fn local(
        host: &crate::cli::HostArgs,
        warn: &mut dyn FnMut(&str),
    ) -> Result<Self, SourceError> {
        let enabled: Vec<&'static str> = collector::COLLECTORS
            .iter()
            .filter(|s| s.default_enabled)
            .map(|s| s.name)
            .collect();
        let root = nix::unistd::geteuid().is_root();
        if !root {
            warn(
                "not root: no eBPF probes, so only the cgroup columns have data; run as root, or read a running agent with --from http://HOST:9977/metrics",
            );
        }
        let metadata = crate::metadata::start_in_background(&host.metadata);
        let running =
            Agent::start(host.config(&enabled, root, metadata)).map_err(SourceError::Start)?;
        for (probe, status) in running.probes.status() {
            if let Status::Failed(why) = status {
                warn(&format!(
                    "probe {probe} not attached: {}",
                    crate::util::chain(why.as_ref())
                ));
            }
        }
        Ok(Self::Local(Box::new(Local { running })))
    }

    /// A running agent at `url` (`http(s)://HOST[:PORT][/PATH]`), reached as `args` say. The
    /// password, the CA and the client certificate are read here, once.
    pub fn remote(url: &str, args: &RemoteArgs) -> Result<Self, SourceError> {
        let (target, https) = target_url(url)?;
        let tls = if https {
            if args.ca_file.is_none() && !args.insecure_skip_verify {
                return Err(SourceError::NoTrust(url.into()));
            }
            let cfg = crate::tls::client_config(&crate::tls::ClientOptions {
                ca_file: args.ca_file.as_deref(),
                client_cert: args.cert_file.as_deref().zip(args.key_file.as_deref()),
                insecure_skip_verify: args.insecure_skip_verify,
            })
            .map_err(SourceError::TlsConfig)?;
            Some(Arc::new(cfg))
        } else {
            if args.ca_file.is_some() || args.cert_file.is_some() || args.insecure_skip_verify {
                return Err(SourceError::TlsForPlain(url.into()));
            }
            None
        };
        let auth = match &args.username {
            None => None,
            Some(user) => {
                let env = std::env::var(PASSWORD_ENV).ok();
                let pw = password(args.password_file.as_deref(), env)?
                    .ok_or_else(|| SourceError::NoPassword(user.clone()))?;
                Some((user.clone(), http::basic_auth(user, &pw)))
            }
        };
        Ok(Self::Remote(Box::new(Remote {
            target,
            url: url.to_owned(),
            client: http::Client::new(tls),
            auth,
            password_from: if args.password_file.is_some() {
                "--from.password-file"
            } else {
                PASSWORD_ENV
            },
            client_cert: args.cert_file.is_some(),
        })))
    }

    /// Where the data comes from, for the views' header.
    pub fn describe(&self) -> String {
        match self {
            Self::Local(_) => "this host (in-process collectors)".into(),
            Self::Remote(r) => r.url.clone(),
        }
    }

    /// Takes one snapshot.
    pub fn snapshot(&self) -> Result<Snapshot, SourceError> {
        let samples = match self {
            Self::Local(local) => {
                let body = crate::exposition::encode_protobuf(
                    &local.running.registry,
                    crate::exposition::Histograms::Native,
                )
                .map_err(|_| SourceError::Encode)?;
                expo::parse_protobuf(&body).map_err(|_| SourceError::Encode)?
            }
            Self::Remote(remote) => remote.fetch()?,
        };
        Ok(Snapshot::from_samples(&samples))
    }
}

/// The environment variable `--from.username`'s password is read from, without
/// `--from.password-file`.
pub const PASSWORD_ENV: &str = "PODSTAT_FROM_PASSWORD";

/// `url` with `/metrics` as its path when it has none, and whether it is https; only
/// `http(s)://HOST[:PORT]` URLs.
fn target_url(url: &str) -> Result<(String, bool), SourceError> {
    let bad = || SourceError::BadUrl(url.into());
    let rest = url
        .strip_prefix("http://")
        .or_else(|| url.strip_prefix("https://"))
        .ok_or_else(bad)?;
    let target = if rest.contains('/') {
        url.to_owned()
    } else {
        format!("{url}/metrics")
    };
    let https = http::parse_url(&target).map_err(|_| bad())?;
    Ok((target, https))
}

impl Remote {
    /// GET the target (protobuf or Prometheus text, whichever it answers), bounded by
    /// [`FETCH_TIMEOUT`].
    fn fetch(&self) -> Result<Vec<expo::Sample>, SourceError> {
        let url = &self.target;
        let mut headers = vec![("accept", ACCEPT)];
        if let Some((_, value)) = &self.auth {
            headers.push(("authorization", value));
        }
        let resp = self
            .client
            .get_blocking(url, &headers, FETCH_TIMEOUT)
            .map_err(|source| SourceError::Fetch {
                url: url.clone(),
                hint: self.hint(&source),
                source,
            })?;
        match resp.status {
            StatusCode::OK => {}
            StatusCode::UNAUTHORIZED => {
                return Err(SourceError::Unauthorized {
                    url: url.clone(),
                    why: match &self.auth {
                        None => "the agent wants a user and password: give --from.username, with --from.password-file or PODSTAT_FROM_PASSWORD".into(),
                        Some((user, _)) => format!(
                            "the agent refused user {user:?} with the password from {}",
                            self.password_from
                        ),
                    },
                });
            }
            StatusCode::FORBIDDEN if !self.client_cert => {
                return Err(SourceError::Forbidden {
                    url: url.clone(),
                    why: format!(
                        "{} (give --from.cert-file and --from.key-file)",
                        first_line(&resp.body).unwrap_or("no reason given")
                    ),
                });
            }
            status => {
                return Err(SourceError::Status {
                    url: url.clone(),
                    status,
                    said: first_line(&resp.body)
                        .map(|l| format!(": {l}"))
                        .unwrap_or_default(),
                });
            }
        }
        let protobuf = resp
            .headers
            .get(hyper::header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .is_some_and(|v| v.starts_with("application/vnd.google.protobuf"));
        if protobuf {
            expo::parse_protobuf(&resp.body).map_err(|source| SourceError::Decode {
                url: url.clone(),
                source,
            })
        } else {
            Ok(expo::parse(&String::from_utf8_lossy(&resp.body)))
        }
    }

    /// Which `--from.*` flag a TLS failure points at.
    fn hint(&self, e: &http::HttpError) -> &'static str {
        use crate::tls::HandshakeError as H;
        match e {
            http::HttpError::Tls {
                source: H::Untrusted(_),
                ..
            } => {
                " (the CA in --from.ca-file did not sign the agent's certificate for this host name)"
            }
            http::HttpError::Tls {
                source: H::Refused(_),
                ..
            } if !self.client_cert => " (give --from.cert-file and --from.key-file)",
            http::HttpError::Tls {
                source: H::Refused(_),
                ..
            } => " (the agent did not accept --from.cert-file)",
            _ => "",
        }
    }
}

/// The first line of a short text body (at most 200 characters), if there is one.
fn first_line(body: &[u8]) -> Option<&str> {
    let text = std::str::from_utf8(body.get(..body.len().min(200))?).ok()?;
    text.lines().next().map(str::trim).filter(|l| !l.is_empty())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls() {
        for (url, target, https) in [
            (
                "http://10.0.0.1:9977/metrics",
                "http://10.0.0.1:9977/metrics",
                false,
            ),
            // No path: /metrics (and the scheme's port, 80 or 443).
            ("http://node", "http://node/metrics", false),
            ("https://node", "https://node/metrics", true),
            ("https://[::1]:9977/x?y=1", "https://[::1]:9977/x?y=1", true),
        ] {
            assert_eq!(
                target_url(url).ok(),
                Some((target.to_owned(), https)),
                "{url}"
            );
        }
        for bad in [
            "ftp://x/metrics",
            "x:1/metrics",
            "http:///m",
            "https://",
            "https://user:pw@x/",
        ] {
            assert!(target_url(bad).is_err(), "{bad} accepted");
        }
    }

    fn args() -> RemoteArgs {
        RemoteArgs::default()
    }

    /// What taking a snapshot of `url` fails with, with its causes ("" if it succeeds).
    fn fetch_error(url: &str, args: &RemoteArgs) -> String {
        Source::remote(url, args)
            .expect("url")
            .snapshot()
            .err()
            .map(|e| crate::util::chain(&e))
            .unwrap_or_default()
    }

    #[test]
    fn tls_settings_must_fit_the_scheme() {
        let e = Source::remote("https://x/metrics", &args()).err();
        assert!(matches!(e, Some(SourceError::NoTrust(_))), "{e:?}");
        let skip = RemoteArgs {
            insecure_skip_verify: true,
            ..args()
        };
        assert!(Source::remote("https://x/metrics", &skip).is_ok());
        let e = Source::remote("http://x/metrics", &skip).err();
        assert!(matches!(e, Some(SourceError::TlsForPlain(_))), "{e:?}");
        let missing_ca = RemoteArgs {
            ca_file: Some("/nonexistent/podstat-test-ca.crt".into()),
            ..args()
        };
        let e = Source::remote("https://x/metrics", &missing_ca).err();
        assert!(
            e.as_ref()
                .is_some_and(|e| crate::util::chain(e).contains("podstat-test-ca.crt")),
            "{e:?}"
        );
    }

    #[test]
    fn passwords_come_from_the_file_else_the_environment() {
        let dir = std::env::temp_dir().join(format!("podstat-test-pw-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("dir");
        let file = dir.join("pw");
        std::fs::write(&file, "s3cret\n").expect("write");
        assert_eq!(
            password(Some(&file), Some("env".into()))
                .ok()
                .flatten()
                .as_deref(),
            Some("s3cret")
        );
        std::fs::write(&file, "two words\r\n").expect("write");
        assert_eq!(
            password(Some(&file), None).ok().flatten().as_deref(),
            Some("two words")
        );
        assert_eq!(
            password(None, Some("env".into())).ok().flatten().as_deref(),
            Some("env")
        );
        assert!(matches!(password(None, None), Ok(None)));
        let e = password(Some(&dir.join("missing")), None).expect_err("missing");
        assert!(e.to_string().contains("missing"), "{e}");
        let _ = std::fs::remove_dir_all(&dir);
    }

    /// 401 and 403 say which credential is missing or wrong; the Authorization header is sent.
    #[test]
    fn refusals_name_the_credential() {
        let reply = |status: &'static str, body: &'static str| {
            move |_: &str| {
                format!(
                    "HTTP/1.1 {status}\r\nContent-Length: {}\r\n\r\n{body}",
                    body.len()
                )
                .into_bytes()
            }
        };
        let addr = http::test_server::serve_once(reply("401 Unauthorized", "unauthorized\n"));
        let e = fetch_error(&format!("http://{addr}"), &args());
        assert!(e.contains("401") && e.contains("--from.username"), "{e}");

        let (tx, rx) = std::sync::mpsc::channel();
        let addr = http::test_server::serve_once(move |head| {
            let _ = tx.send(head.to_owned());
            reply("401 Unauthorized", "")("")
        });
        let dir = std::env::temp_dir().join(format!("podstat-test-401-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("dir");
        std::fs::write(dir.join("pw"), "wrong\n").expect("write");
        let with_user = RemoteArgs {
            username: Some("prometheus".into()),
            password_file: Some(dir.join("pw")),
            ..args()
        };
        let e = fetch_error(&format!("http://{addr}/metrics"), &with_user);
        let _ = std::fs::remove_dir_all(&dir);
        assert!(
            e.contains("refused user \"prometheus\"") && e.contains("--from.password-file"),
            "{e}"
        );
        // base64("prometheus:wrong")
        let head = rx.recv_timeout(Duration::from_secs(5)).expect("request");
        assert!(
            head.to_ascii_lowercase()
                .contains("\r\nauthorization: basic ")
                && head.contains(" cHJvbWV0aGV1czp3cm9uZw==\r\n"),
            "{head}"
        );

        let addr = http::test_server::serve_once(reply(
            "403 Forbidden",
            "a client certificate is required\n",
        ));
        let e = fetch_error(&format!("http://{addr}"), &args());
        assert!(
            e.contains("a client certificate is required") && e.contains("--from.cert-file"),
            "{e}"
        );
        let addr = http::test_server::serve_once(reply(
            "400 Bad Request",
            "Client sent an HTTP request to an HTTPS server.\n",
        ));
        let e = fetch_error(&format!("http://{addr}"), &args());
        assert!(
            e.ends_with("400 Bad Request: Client sent an HTTP request to an HTTPS server."),
            "{e}"
        );
    }

    /// TLS to a plain-HTTP port, and plain HTTP to a TLS port, say so.
    #[test]
    fn the_wrong_scheme_is_named() {
        let skip = RemoteArgs {
            insecure_skip_verify: true,
            ..args()
        };
        // A plain HTTP server answers the ClientHello with a 400.
        let addr = http::test_server::serve_once(|_| {
            b"HTTP/1.1 400 Bad Request\r\nContent-Length: 0\r\nConnection: close\r\n\r\n".to_vec()
        });
        let e = fetch_error(&format!("https://{addr}"), &skip);
        assert!(e.contains("plain HTTP (use http://)"), "{e}");
        // A TLS server answers "GET / HTTP/1.1" with an alert record.
        let addr = http::test_server::serve_once(|_| b"\x15\x03\x03\x00\x02\x02\x32".to_vec());
        let e = fetch_error(&format!("http://{addr}"), &args());
        assert!(e.contains("use https://"), "{e}");
    }

    #[test]
    fn remote_source_reads_an_http_endpoint() {
        let addr = http::test_server::serve_once(|_| {
            let body =
                "podstat_cpu_limit_cores{pod_uid=\"u\",container_id=\"\",qos=\"guaranteed\"} 2\n";
            format!(
                "HTTP/1.0 200 OK\r\nContent-Length: {}\r\n\r\n{body}",
                body.len()
            )
            .into_bytes()
        });
        let src = Source::remote(&format!("http://{addr}/metrics"), &args()).expect("url");
        let snap = src.snapshot().expect("snapshot");
        assert_eq!(snap.cgroups.len(), 1);
        assert_eq!(
            snap.cgroups.values().next().and_then(|c| c.limit_cores),
            Some(2.0)
        );
    }

    #[test]
    fn remote_source_reads_protobuf_when_answered_so() {
        use prometheus_client::encoding::prometheus_protobuf::prometheus_data_model::{
            Gauge, LabelPair, Metric, MetricFamily,
        };
        use prost::Message as _;
        let label = |k: &str, v: &str| LabelPair {
            name: k.into(),
            value: v.into(),
        };
        let family = MetricFamily {
            name: collector::cgroup::CPU_LIMIT_CORES.exposed.into(),
            metric: vec![Metric {
                label: vec![
                    label("pod_uid", "u"),
                    label("container_id", ""),
                    label("qos", "guaranteed"),
                ],
                gauge: Some(Gauge { value: 3.0 }),
                ..Metric::default()
            }],
            ..MetricFamily::default()
        };
        let mut body = Vec::new();
        family.encode_length_delimited(&mut body).expect("encode");
        let addr = http::test_server::serve_once(move |head| {
            assert!(
                head.to_ascii_lowercase()
                    .contains("accept: application/vnd.google.protobuf;proto=io.prometheus.client.metricfamily;encoding=delimited;q=0.9"),
                "{head}"
            );
            let mut r = format!(
                "HTTP/1.0 200 OK\r\nContent-Type: {}\r\nContent-Length: {}\r\n\r\n",
                crate::exposition::PROTOBUF_CONTENT_TYPE,
                body.len()
            )
            .into_bytes();
            r.extend_from_slice(&body);
            r
        });
        let snap = Source::remote(&format!("http://{addr}/metrics"), &args())
            .expect("url")
            .snapshot()
            .expect("snapshot");
        assert_eq!(
            snap.cgroups.values().next().and_then(|c| c.limit_cores),
            Some(3.0)
        );
    }
}
