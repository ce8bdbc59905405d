//! Where the operator views get their samples: this host's kernel through the agent's own
//! collectors (probes loaded in-process when root), or a running agent's `/metrics`.
//!
//! Both end in exposition text parsed by [`super::expo::parse`], so the views have one input
//! and the collectors are never re-implemented.

use std::{
    io::{Read as _, Write as _},
    net::{TcpStream, ToSocketAddrs as _},
    time::Duration,
};

use super::{expo, model::Snapshot};
use crate::{agent::Agent, collector, probe::Status};

/// Why a snapshot could not be taken.
#[derive(Debug, thiserror::Error)]
pub enum SourceError {
    #[error("--from {0:?}: only http://HOST:PORT/PATH URLs are supported")]
    BadUrl(String),
    #[error("fetching {url}")]
    Fetch {
        url: String,
        #[source]
        source: std::io::Error,
    },
    #[error("{url} answered {status}")]
    Status { url: String, status: String },
    #[error("encoding the local collectors' metrics failed")]
    Encode,
    #[error("starting the in-process agent")]
    Start(#[source] crate::agent::StartError),
}

/// A running source of snapshots.
pub enum Source {
    /// The agent's collectors in this process.
    Local(Box<Local>),
    /// A running agent, scraped over HTTP.
    Remote { url: String },
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
        split_url(url)?;
        Ok(Self::Remote {
            url: url.to_owned(),
        })
    }

    /// Where the data comes from, for the views' header.
    pub fn describe(&self) -> String {
        match self {
            Self::Local(_) => "this host (in-process collectors)".into(),
            Self::Remote { url } => url.clone(),
        }
    }

    /// Takes one snapshot.
    pub fn snapshot(&self) -> Result<Snapshot, SourceError> {
        let text = match self {
            Self::Local(local) => {
                let mut om = String::with_capacity(64 * 1024);
                prometheus_client::encoding::text::encode(&mut om, &local.running.registry)
                    .map_err(|_| SourceError::Encode)?;
                om
            }
            Self::Remote { url } => fetch(url)?,
        };
        Ok(Snapshot::from_samples(&expo::parse(&text)))
    }
}

/// (host:port, path) of an `http://` URL.
fn split_url(url: &str) -> Result<(String, String), SourceError> {
    let rest = url
        .strip_prefix("http://")
        .ok_or_else(|| SourceError::BadUrl(url.into()))?;
    let (host, path) = rest
        .find('/')
        .map_or((rest, "/metrics"), |i| rest.split_at(i));
    if host.is_empty() {
        return Err(SourceError::BadUrl(url.into()));
    }
    let host = if host.contains(':') && !host.ends_with(']') {
        host.to_owned()
    } else {
        format!("{host}:80")
    };
    Ok((host, path.to_owned()))
}

/// GET `url` with HTTP/1.0 (so the body is neither chunked nor compressed), bounded to 10 s.
fn fetch(url: &str) -> Result<String, SourceError> {
    let (host, path) = split_url(url)?;
    let io = |source| SourceError::Fetch {
        url: url.into(),
        source,
    };
    let addr = host
        .to_socket_addrs()
        .map_err(io)?
        .next()
        .ok_or_else(|| io(std::io::Error::other("no address")))?;
    let mut s = TcpStream::connect_timeout(&addr, Duration::from_secs(3)).map_err(io)?;
    s.set_read_timeout(Some(Duration::from_secs(10)))
        .map_err(io)?;
    let request = format!(
        "GET {path} HTTP/1.0\r\nHost: {host}\r\nAccept: text/plain;version=0.0.4\r\nUser-Agent: podstat\r\n\r\n"
    );
    s.write_all(request.as_bytes()).map_err(io)?;
    let mut raw = Vec::new();
    s.read_to_end(&mut raw).map_err(io)?;
    let split = raw
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .ok_or_else(|| io(std::io::Error::other("no end of headers")))?;
    let head = String::from_utf8_lossy(&raw[..split]);
    let status = head.lines().next().unwrap_or_default();
    if status.split_whitespace().nth(1) != Some("200") {
        return Err(SourceError::Status {
            url: url.into(),
            status: status.to_owned(),
        });
    }
    Ok(String::from_utf8_lossy(&raw[split + 4..]).into_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls() {
        assert_eq!(
            split_url("http://10.0.0.1:9977/metrics").ok(),
            Some(("10.0.0.1:9977".into(), "/metrics".into()))
        );
        assert_eq!(
            split_url("http://node").ok(),
            Some(("node:80".into(), "/metrics".into()))
        );
        for bad in ["https://x/metrics", "x:1/metrics", "http:///m"] {
            assert!(split_url(bad).is_err(), "{bad} accepted");
        }
    }

    #[test]
    fn remote_source_reads_an_http_endpoint() {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
        let addr = listener.local_addr().expect("addr");
        let server = std::thread::spawn(move || {
            let (mut c, _) = listener.accept().expect("accept");
            let mut req = Vec::new();
            let mut buf = [0u8; 256];
            while !req.windows(4).any(|w| w == b"\r\n\r\n") {
                match c.read(&mut buf) {
                    Ok(0) | Err(_) => break,
                    Ok(n) => req.extend_from_slice(&buf[..n]),
                }
            }
            let body =
                "podstat_cpu_limit_cores{pod_uid=\"u\",container_id=\"\",qos=\"guaranteed\"} 2\n";
            let _ = write!(
                c,
                "HTTP/1.0 200 OK\r\nContent-Length: {}\r\n\r\n{body}",
                body.len()
            );
        });
        let src = Source::remote(&format!("http://{addr}/metrics")).expect("url");
        let snap = src.snapshot().expect("snapshot");
        let _ = server.join();
        assert_eq!(snap.cgroups.len(), 1);
        assert_eq!(
            snap.cgroups.values().next().and_then(|c| c.limit_cores),
            Some(2.0)
        );
    }
}
