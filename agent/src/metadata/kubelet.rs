//! The kubelet provider: `GET /pods` on the node's kubelet, over HTTPS with the service
//! account's bearer token (the kubelet authorizes it as `get` on `nodes/proxy`).
//!
//! The answer is the node's PodList; podstat reads each pod's uid, namespace and name and the
//! container statuses' `containerID` (`containerd://<id>`, `cri-o://<id>`, `docker://<id>`),
//! whose id part is the one in the cgroup path.

use std::{path::PathBuf, sync::Arc};

use http_body_util::{BodyExt as _, Empty};
use hyper::{
    Request, StatusCode, Uri, body::Bytes, client::conn::http1, header, http::uri::InvalidUri,
};
use hyper_util::rt::TokioIo;
use rustls::{
    ClientConfig, DigitallySignedStruct, RootCertStore, SignatureScheme,
    client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier},
    pki_types::{
        CertificateDer, InvalidDnsNameError, ServerName, UnixTime,
        pem::{self, PemObject as _},
    },
};
use serde::Deserialize;
use tokio::net::TcpStream;

use super::{Options, PodMeta, Snapshot};

/// Largest PodList accepted (a node's 110 pods take well under 1 MiB).
const MAX_BODY: usize = 64 << 20;

#[derive(Debug, thiserror::Error)]
pub enum KubeletError {
    #[error("bad URL: {url:?}")]
    Url {
        url: String,
        #[source]
        source: InvalidUri,
    },
    #[error("bad URL: {url:?}: not http(s)://host:port")]
    Scheme { url: String },
    #[error("bad URL: {url:?}: no host")]
    NoHost { url: String },
    #[error("bad URL: {host:?} is not a TLS server name")]
    ServerName {
        host: String,
        #[source]
        source: InvalidDnsNameError,
    },
    #[error("building the request")]
    Request(#[source] hyper::http::Error),
    #[error("TLS settings")]
    TlsConfig(#[source] rustls::Error),
    #[error("reading {path}")]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("CA file {path} (or pass --metadata.kubelet-insecure-skip-verify)")]
    CaRead {
        path: PathBuf,
        #[source]
        source: pem::Error,
    },
    #[error("CA file {path}: a certificate")]
    CaCert {
        path: PathBuf,
        #[source]
        source: rustls::Error,
    },
    #[error("CA file {path}: no certificate in it")]
    CaEmpty { path: PathBuf },
    #[error("connecting")]
    Connect(#[source] std::io::Error),
    #[error("TLS")]
    Tls(#[source] std::io::Error),
    #[error("HTTP")]
    Http(#[source] hyper::Error),
    #[error("reading the body")]
    Body(#[source] Box<dyn std::error::Error + Send + Sync>),
    #[error("HTTP status {0} (401/403: the token lacks `get` on `nodes/proxy`)")]
    Status(StatusCode),
    #[error("malformed PodList: {0}")]
    Json(#[source] serde_json::Error),
}

/// A kubelet client. The token is read on every refresh (projected tokens rotate).
#[derive(Debug)]
pub struct Client {
    url: String,
    uri: Uri,
    token_file: PathBuf,
    tls: Option<Arc<ClientConfig>>,
}

impl Client {
    pub fn new(opts: &Options) -> Result<Self, KubeletError> {
        let base = opts.kubelet_url.trim_end_matches('/');
        let uri: Uri = format!("{base}/pods")
            .parse()
            .map_err(|source| KubeletError::Url {
                url: base.to_owned(),
                source,
            })?;
        let tls = match uri.scheme_str() {
            Some("https") => Some(Arc::new(tls_config(opts)?)),
            Some("http") => None,
            _ => {
                return Err(KubeletError::Scheme {
                    url: base.to_owned(),
                });
            }
        };
        if uri.host().is_none() {
            return Err(KubeletError::NoHost {
                url: base.to_owned(),
            });
        }
        Ok(Self {
            url: base.to_owned(),
            uri,
            token_file: opts.kubelet_token_file.clone(),
            tls,
        })
    }

    pub fn url(&self) -> &str {
        &self.url
    }

    pub async fn snapshot(&mut self) -> Result<Snapshot, KubeletError> {
        let body = self.get().await?;
        parse_pods(&body).map_err(KubeletError::Json)
    }

    async fn get(&self) -> Result<Bytes, KubeletError> {
        let host = self
            .uri
            .host()
            .unwrap_or("127.0.0.1")
            .trim_matches(['[', ']']);
        let port = self
            .uri
            .port_u16()
            .unwrap_or(if self.tls.is_some() { 443 } else { 80 });
        let token = match std::fs::read_to_string(&self.token_file) {
            Ok(t) => Some(t.trim().to_owned()),
            // Plain http (tests, a local proxy) may go without a token.
            Err(_) if self.tls.is_none() => None,
            Err(source) => {
                return Err(KubeletError::Read {
                    path: self.token_file.clone(),
                    source,
                });
            }
        };
        let tcp = TcpStream::connect((host, port))
            .await
            .map_err(KubeletError::Connect)?;
        let mut req = Request::get(self.uri.path())
            .header(header::HOST, format!("{host}:{port}"))
            .header(header::ACCEPT, "application/json");
        if let Some(t) = token {
            req = req.header(header::AUTHORIZATION, format!("Bearer {t}"));
        }
        let req = req
            .body(Empty::<Bytes>::new())
            .map_err(KubeletError::Request)?;
        match &self.tls {
            Some(cfg) => {
                let name = ServerName::try_from(host.to_owned()).map_err(|source| {
                    KubeletError::ServerName {
                        host: host.to_owned(),
                        source,
                    }
                })?;
                let stream = tokio_rustls::TlsConnector::from(Arc::clone(cfg))
                    .connect(name, tcp)
                    .await
                    .map_err(KubeletError::Tls)?;
                send(TokioIo::new(stream), req).await
            }
            None => send(TokioIo::new(tcp), req).await,
        }
    }
}

async fn send<IO>(io: IO, req: Request<Empty<Bytes>>) -> Result<Bytes, KubeletError>
where
    IO: hyper::rt::Read + hyper::rt::Write + Unpin + Send + 'static,
{
    let (mut send, conn) = http1::handshake(io).await.map_err(KubeletError::Http)?;
    let driver = tokio::spawn(async move {
        let _ = conn.await;
    });
    let resp = send.send_request(req).await.map_err(KubeletError::Http);
    let result = match resp {
        Ok(resp) if resp.status() == StatusCode::OK => {
            http_body_util::Limited::new(resp.into_body(), MAX_BODY)
                .collect()
                .await
                .map(http_body_util::Collected::to_bytes)
                .map_err(KubeletError::Body)
        }
        Ok(resp) => Err(KubeletError::Status(resp.status())),
        Err(e) => Err(e),
    };
    driver.abort();
    result
}

fn tls_config(opts: &Options) -> Result<ClientConfig, KubeletError> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let builder = ClientConfig::builder_with_provider(Arc::clone(&provider))
        .with_safe_default_protocol_versions()
        .map_err(KubeletError::TlsConfig)?;
    let cfg = if opts.kubelet_insecure_skip_verify {
        builder
            .dangerous()
            .with_custom_certificate_verifier(Arc::new(NoVerify(provider)))
            .with_no_client_auth()
    } else {
        let path = &opts.kubelet_ca_file;
        let read_err = |source| KubeletError::CaRead {
            path: path.clone(),
            source,
        };
        let mut roots = RootCertStore::empty();
        for cert in CertificateDer::pem_file_iter(path).map_err(read_err)? {
            roots
                .add(cert.map_err(read_err)?)
                .map_err(|source| KubeletError::CaCert {
                    path: path.clone(),
                    source,
                })?;
        }
        if roots.is_empty() {
            return Err(KubeletError::CaEmpty { path: path.clone() });
        }
        builder.with_root_certificates(roots).with_no_client_auth()
    };
    Ok(cfg)
}

/// `--metadata.kubelet-insecure-skip-verify`: accepts any certificate, still checks that the
/// handshake is signed by it.
#[derive(Debug)]
struct NoVerify(Arc<rustls::crypto::CryptoProvider>);

impl ServerCertVerifier for NoVerify {
    fn verify_server_cert(
        &self,
        _end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.0.signature_verification_algorithms.supported_schemes()
    }
}

// ---------------------------------------------------------------------------------------------
// PodList (the fields podstat reads)

#[derive(Deserialize)]
struct PodList {
    #[serde(default)]
    items: Vec<Pod>,
}

#[derive(Deserialize)]
struct Pod {
    metadata: ObjectMeta,
    #[serde(default)]
    status: PodStatus,
}

#[derive(Deserialize)]
struct ObjectMeta {
    #[serde(default)]
    name: String,
    #[serde(default)]
    namespace: String,
    #[serde(default)]
    uid: String,
}

#[derive(Deserialize, Default)]
#[serde(rename_all = "camelCase")]
#[expect(
    clippy::struct_field_names,
    reason = "the Kubernetes API's field names"
)]
struct PodStatus {
    #[serde(default)]
    container_statuses: Vec<ContainerStatus>,
    #[serde(default)]
    init_container_statuses: Vec<ContainerStatus>,
    #[serde(default)]
    ephemeral_container_statuses: Vec<ContainerStatus>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct ContainerStatus {
    #[serde(default)]
    name: String,
    #[serde(default, rename = "containerID")]
    container_id: String,
}

/// Parses the kubelet's PodList into a snapshot. The kubelet does not list sandbox ids, so
/// sandboxes stay to the cgroup collector's process-name check.
pub fn parse_pods(body: &[u8]) -> Result<Snapshot, serde_json::Error> {
    let list: PodList = serde_json::from_slice(body)?;
    let mut snap = Snapshot::default();
    for pod in list.items {
        if pod.metadata.uid.is_empty() {
            continue;
        }
        let s = pod.status;
        for c in s
            .container_statuses
            .iter()
            .chain(&s.init_container_statuses)
            .chain(&s.ephemeral_container_statuses)
        {
            // "containerd://<id>" → "<id>"; a container not started yet has none.
            let id = c
                .container_id
                .split_once("://")
                .map_or(c.container_id.as_str(), |(_, id)| id);
            if !id.is_empty() {
                snap.containers.insert(id.to_owned(), c.name.clone());
            }
        }
        snap.pods.insert(
            pod.metadata.uid,
            PodMeta {
                namespace: pod.metadata.namespace,
                name: pod.metadata.name,
            },
        );
    }
    Ok(snap)
}

#[cfg(test)]
mod tests {
    use super::*;

    const PODS: &str = r#"{"kind":"PodList","apiVersion":"v1","metadata":{},"items":[
      {"metadata":{"name":"web-0","namespace":"shop","uid":"0b6f3c2e-1d2a-4b0e-9a57-6f3c2e1d2a4b","labels":{"app":"web"}},
       "spec":{"containers":[{"name":"app"}]},
       "status":{"phase":"Running",
         "initContainerStatuses":[{"name":"init","containerID":"containerd://aaa111"}],
         "containerStatuses":[{"name":"app","containerID":"containerd://bbb222","ready":true},
                              {"name":"sidecar","containerID":"cri-o://ccc333"},
                              {"name":"pending"}]}},
      {"metadata":{"name":"static","namespace":"kube-system","uid":"9f86d081884c7d659a2feaa0c55ad015"},
       "status":{}},
      {"metadata":{"name":"no-uid","namespace":"x"}}
    ]}"#;

    #[test]
    fn parses_pods_and_container_ids() {
        let s = parse_pods(PODS.as_bytes()).expect("parse");
        assert_eq!(s.pods.len(), 2);
        assert_eq!(
            s.pods["0b6f3c2e-1d2a-4b0e-9a57-6f3c2e1d2a4b"],
            PodMeta {
                namespace: "shop".into(),
                name: "web-0".into()
            }
        );
        assert_eq!(s.containers["aaa111"], "init");
        assert_eq!(s.containers["bbb222"], "app");
        assert_eq!(s.containers["ccc333"], "sidecar");
        assert_eq!(s.containers.len(), 3);
    }

    #[test]
    fn garbage_is_an_error_not_a_panic() {
        for body in [
            "",
            "null",
            "[1,2]",
            "{\"items\": 5}",
            "<html>",
            "{\"items\":[{}]}",
        ] {
            assert!(
                parse_pods(body.as_bytes()).is_err(),
                "{body:?} must not parse"
            );
        }
        // An empty list is fine.
        assert!(parse_pods(b"{}").expect("empty").pods.is_empty());
    }

    #[test]
    fn url_must_be_http_or_https_with_a_host() {
        for (url, ok) in [
            ("https://127.0.0.1:10250", true),
            ("http://localhost:8080/", true),
            ("ftp://x", false),
            ("127.0.0.1:10250", false),
        ] {
            let opts = Options {
                kubelet_url: url.into(),
                kubelet_insecure_skip_verify: true,
                ..Options::default()
            };
            assert_eq!(Client::new(&opts).is_ok(), ok, "{url}");
        }
    }

    #[test]
    fn missing_ca_file_is_explained() {
        let opts = Options {
            kubelet_url: "https://127.0.0.1:10250".into(),
            kubelet_ca_file: "/nonexistent/podstat-test-ca.crt".into(),
            ..Options::default()
        };
        let e = Client::new(&opts).expect_err("no CA file");
        assert!(e.to_string().contains("podstat-test-ca.crt"), "{e}");
    }
}
