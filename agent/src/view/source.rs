//! Where the operator views get their samples: this host's kernel through the agent's own
//! collectors (probes loaded in-process when root), or a running agent's `/metrics`.
//!
//! Both end in samples from the exposition ([`super::expo`]), so the views have one input and
//! the collectors are never re-implemented. They read the protobuf format when they can: its
//! native histograms carry every kernel bucket, where the text formats carry a subset.

use std::time::Duration;

use hyper::StatusCode;

use super::{expo, model::Snapshot};
use crate::{agent::Agent, collector, http, probe::Status};

/// What `--from` asks for: protobuf (native histograms) first, else Prometheus text; never
/// compressed (this client does not gunzip).
const ACCEPT: &str = "application/vnd.google.protobuf;proto=io.prometheus.client.MetricFamily;encoding=delimited;q=0.9,text/plain;version=0.0.4;q=0.5";
/// Time limit of one scrape of `--from` (connect, request and body).
const FETCH_TIMEOUT: Duration = Duration::from_secs(10);

/// Why a snapshot could not be taken.
#[derive(Debug, thiserror::Error)]
pub enum SourceError {
    #[error("--from {0:?}: only http://HOST:PORT/PATH URLs are supported")]
    BadUrl(String),
    #[error("fetching {url}")]
    Fetch {
        url: String,
        #[source]
        source: http::HttpError,
    },
    #[error("{url} answered {status}")]
    Status { url: String, status: StatusCode },
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
    /// A running agent, scraped over HTTP: `url` as given, `target` with the default path.
    Remote { url: String, target: String },
}

/// The in-process agent; dropping it stops the identity refresh and detaches the probes.
pub struct Local {
    running: crate::agent::Running,
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

    /// A running agent at `url` (`http://HOST:PORT/metrics`).
    pub fn remote(url: &str) -> Result<Self, SourceError> {
        Ok(Self::Remote {
            target: target_url(url)?,
            url: url.to_owned(),
        })
    }

    /// Where the data comes from, for the views' header.
    pub fn describe(&self) -> String {
        match self {
            Self::Local(_) => "this host (in-process collectors)".into(),
            Self::Remote { url, .. } => url.clone(),
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
            Self::Remote { target, .. } => fetch(target)?,
        };
        Ok(Snapshot::from_samples(&samples))
    }
}

/// `url` with `/metrics` as its path when it has none; only `http://HOST[:PORT]` URLs.
fn target_url(url: &str) -> Result<String, SourceError> {
    let bad = || SourceError::BadUrl(url.into());
    let rest = url.strip_prefix("http://").ok_or_else(bad)?;
    let target = if rest.contains('/') {
        url.to_owned()
    } else {
        format!("{url}/metrics")
    };
    http::parse_url(&target).map_err(|_| bad())?;
    Ok(target)
}

/// GET `url` (protobuf or Prometheus text, whichever it answers), bounded by [`FETCH_TIMEOUT`].
fn fetch(url: &str) -> Result<Vec<expo::Sample>, SourceError> {
    let resp = http::get_blocking(url, &[("accept", ACCEPT)], FETCH_TIMEOUT).map_err(|source| {
        SourceError::Fetch {
            url: url.into(),
            source,
        }
    })?;
    if resp.status != StatusCode::OK {
        return Err(SourceError::Status {
            url: url.into(),
            status: resp.status,
        });
    }
    let protobuf = resp
        .headers
        .get(hyper::header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.starts_with("application/vnd.google.protobuf"));
    if protobuf {
        expo::parse_protobuf(&resp.body).map_err(|source| SourceError::Decode {
            url: url.into(),
            source,
        })
    } else {
        Ok(expo::parse(&String::from_utf8_lossy(&resp.body)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls() {
        assert_eq!(
            target_url("http://10.0.0.1:9977/metrics").ok().as_deref(),
            Some("http://10.0.0.1:9977/metrics")
        );
        // No path: /metrics (and port 80, the http default).
        assert_eq!(
            target_url("http://node").ok().as_deref(),
            Some("http://node/metrics")
        );
        for bad in ["https://x/metrics", "x:1/metrics", "http:///m"] {
            assert!(target_url(bad).is_err(), "{bad} accepted");
        }
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
        let src = Source::remote(&format!("http://{addr}/metrics")).expect("url");
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
        let snap = Source::remote(&format!("http://{addr}/metrics"))
            .expect("url")
            .snapshot()
            .expect("snapshot");
        assert_eq!(
            snap.cgroups.values().next().and_then(|c| c.limit_cores),
            Some(3.0)
        );
    }
}
