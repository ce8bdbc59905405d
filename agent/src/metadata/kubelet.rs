//! The kubelet provider: `GET /pods` on the node's kubelet, over HTTPS with the service
//! account's bearer token (the kubelet authorizes it as `get` on `nodes/proxy`).
//!
//! The answer is the node's PodList; podstat reads each pod's uid, namespace and name and the
//! container statuses' `containerID` (`containerd://<id>`, `cri-o://<id>`, `docker://<id>`),
//! whose id part is the one in the cgroup path.

use std::{path::PathBuf, sync::Arc, time::Duration};

use hyper::{StatusCode, body::Bytes};
use serde::Deserialize;

use super::{Options, PodMeta, Snapshot};
use crate::{http, tls};

#[derive(Debug, thiserror::Error)]
pub enum KubeletError {
    #[error("bad URL: {url:?}: not http(s)://host[:port]")]
    Url { url: String },
    #[error("TLS settings (CA file {ca_file}, or pass --metadata.kubelet-insecure-skip-verify)")]
    TlsConfig {
        ca_file: PathBuf,
        #[source]
        source: tls::ConfigError,
    },
    #[error("reading {path}")]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("GET /pods")]
    Get(#[source] http::HttpError),
    #[error("HTTP status {0} (401/403: the token lacks `get` on `nodes/proxy`)")]
    Status(StatusCode),
    #[error("malformed PodList: {0}")]
    Json(#[source] serde_json::Error),
}

/// A kubelet client. The token is read on every refresh (projected tokens rotate).
#[derive(Debug)]
pub struct Client {
    url: String,
    pods: String,
    https: bool,
    token_file: PathBuf,
    http: http::Client,
    timeout: Duration,
}

impl Client {
    pub fn new(opts: &Options) -> Result<Self, KubeletError> {
        let base = opts.kubelet_url.trim_end_matches('/');
        let pods = format!("{base}/pods");
        let https = http::parse_url(&pods).map_err(|_| KubeletError::Url {
            url: base.to_owned(),
        })?;
        let tls = if https {
            let cfg = tls::client_config(&tls::ClientOptions {
                ca_file: Some(&opts.kubelet_ca_file),
                client_cert: None,
                insecure_skip_verify: opts.kubelet_insecure_skip_verify,
            })
            .map_err(|source| KubeletError::TlsConfig {
                ca_file: opts.kubelet_ca_file.clone(),
                source,
            })?;
            Some(Arc::new(cfg))
        } else {
            None
        };
        Ok(Self {
            url: base.to_owned(),
            pods,
            https,
            token_file: opts.kubelet_token_file.clone(),
            http: http::Client::new(tls),
            timeout: opts.timeout,
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
        let token = match std::fs::read_to_string(&self.token_file) {
            Ok(t) => Some(format!("Bearer {}", t.trim())),
            // Plain http (tests, a local proxy) may go without a token.
            Err(_) if !self.https => None,
            Err(source) => {
                return Err(KubeletError::Read {
                    path: self.token_file.clone(),
                    source,
                });
            }
        };
        let mut headers = vec![("accept", "application/json")];
        if let Some(t) = &token {
            headers.push(("authorization", t));
        }
        let r = self
            .http
            .get(&self.pods, &headers, self.timeout)
            .await
            .map_err(KubeletError::Get)?;
        if r.status != StatusCode::OK {
            return Err(KubeletError::Status(r.status));
        }
        Ok(r.body)
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
