//! Pod metadata: `namespace`, `pod` and `container` names for the uids and container ids that
//! the cgroup paths carry.
//!
//! A provider is node-local, so no agent ever watches the API server:
//! - [`cri`]: the container runtime's CRI socket (containerd, CRI-O): `ListPodSandbox` joined to
//!   cgroups by pod uid, `ListContainers` by container id;
//! - [`kubelet`]: the kubelet's `/pods` endpoint over HTTPS with the service-account token.
//!
//! [`run`] refreshes a [`Store`] every `--metadata.refresh-interval`, and sooner (at most once a
//! second) when a scrape meets an id the store does not know, with exponential backoff while the
//! provider fails. A failed refresh keeps the last good snapshot: series never lose their names
//! because the runtime hiccuped, and ids the store never knew keep their uid labels.

pub mod cri;
pub mod kubelet;

use std::{
    collections::{HashMap, HashSet},
    fmt,
    path::{Path, PathBuf},
    sync::{Arc, Mutex, PoisonError, RwLock},
    time::{Duration, Instant},
};

use prometheus_client::{
    collector::Collector,
    encoding::{DescriptorEncoder, EncodeMetric},
    metrics::{counter::ConstCounter, gauge::ConstGauge},
};

use crate::metric::Family;

/// `podstat_metadata_up`.
pub const METADATA_UP: Family = crate::gauge!(
    "podstat_metadata_up",
    "1 if the last refresh from the metadata provider succeeded, else 0 (names are then from the last good refresh)"
);

/// `podstat_metadata_refresh_failures_total`.
pub const METADATA_REFRESH_FAILURES: Family = crate::counter!(
    "podstat_metadata_refresh_failures",
    "Refreshes from the metadata provider that failed or timed out"
);

/// `podstat_metadata_pods`.
pub const METADATA_PODS: Family = crate::gauge!(
    "podstat_metadata_pods",
    "Pods the metadata provider named in its last good refresh"
);

/// Which provider names the pods.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum ProviderKind {
    /// The first CRI socket that exists, else the kubelet when a service-account token is
    /// mounted, else none.
    Auto,
    /// The container runtime's CRI socket (containerd, CRI-O).
    Cri,
    /// The kubelet's /pods endpoint (HTTPS, service-account token).
    Kubelet,
    /// No names: series carry pod_uid and container_id only.
    None,
}

/// CRI sockets tried, in order, by `--metadata.provider auto` (and by `cri` without a socket).
pub const CRI_SOCKETS: &[&str] = &[
    "/run/containerd/containerd.sock",
    "/run/crio/crio.sock",
    "/var/run/crio/crio.sock",
];

const SA_TOKEN: &str = "/var/run/secrets/kubernetes.io/serviceaccount/token";
const SA_CA: &str = "/var/run/secrets/kubernetes.io/serviceaccount/ca.crt";

/// Options of the metadata providers.
#[derive(Debug, Clone, clap::Args)]
#[group(id = "metadata")]
pub struct Options {
    /// Where pod, namespace and container names come from. `auto` uses the first CRI socket
    /// that exists (containerd, CRI-O), else the kubelet if a service-account token is mounted,
    /// else none. Both providers are node-local: nothing watches the API server.
    #[arg(long = "metadata.provider", value_enum, default_value_t = ProviderKind::Auto, env = "PODSTAT_METADATA_PROVIDER")]
    pub provider: ProviderKind,
    /// The CRI socket. Default: the first of /run/containerd/containerd.sock,
    /// /run/crio/crio.sock, /var/run/crio/crio.sock that exists.
    #[arg(
        long = "metadata.cri-socket",
        value_name = "PATH",
        env = "PODSTAT_METADATA_CRI_SOCKET"
    )]
    pub cri_socket: Option<PathBuf>,
    /// The kubelet's base URL; `/pods` is appended. With hostNetwork, the default reaches the
    /// local kubelet; otherwise pass the node's IP (the DaemonSet sets it from status.hostIP).
    #[arg(
        long = "metadata.kubelet-url",
        value_name = "URL",
        default_value = "https://127.0.0.1:10250",
        env = "PODSTAT_METADATA_KUBELET_URL"
    )]
    pub kubelet_url: String,
    /// Bearer token for the kubelet (the service account needs `get` on `nodes/proxy`).
    #[arg(long = "metadata.kubelet-token-file", value_name = "PATH", default_value = SA_TOKEN)]
    pub kubelet_token_file: PathBuf,
    /// CA bundle that signed the kubelet's serving certificate (the cluster CA when kubelets
    /// use serverTLSBootstrap).
    #[arg(long = "metadata.kubelet-ca-file", value_name = "PATH", default_value = SA_CA)]
    pub kubelet_ca_file: PathBuf,
    /// Do not verify the kubelet's certificate (kubelets with self-signed serving certificates).
    /// The token is still sent: use only where the node network is trusted.
    #[arg(long = "metadata.kubelet-insecure-skip-verify")]
    pub kubelet_insecure_skip_verify: bool,
    /// How often names are refreshed. An id a scrape does not know triggers an earlier refresh
    /// (at most once a second); failures back off exponentially up to this interval × 4.
    #[arg(long = "metadata.refresh-interval", value_name = "DURATION", default_value = "30s", value_parser = crate::util::parse_duration)]
    pub refresh: Duration,
    /// Time limit of one refresh (connect, request and response).
    #[arg(long = "metadata.timeout", value_name = "DURATION", default_value = "5s", value_parser = crate::util::parse_duration)]
    pub timeout: Duration,
}

impl Default for Options {
    fn default() -> Self {
        Self {
            provider: ProviderKind::None,
            cri_socket: None,
            kubelet_url: "https://127.0.0.1:10250".into(),
            kubelet_token_file: SA_TOKEN.into(),
            kubelet_ca_file: SA_CA.into(),
            kubelet_insecure_skip_verify: false,
            refresh: Duration::from_secs(30),
            timeout: Duration::from_secs(5),
        }
    }
}

/// A pod's names.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PodMeta {
    pub namespace: String,
    pub name: String,
}

/// What a provider knows at one moment.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Snapshot {
    /// pod uid → names.
    pub pods: HashMap<String, PodMeta>,
    /// container id (as in the cgroup path) → container name.
    pub containers: HashMap<String, String>,
    /// Sandbox ("pause") container ids: the CRI's pod sandbox ids.
    pub sandboxes: HashSet<String>,
}

/// Health of the provider, for the self-metrics and the log.
#[derive(Debug, Default)]
struct Health {
    up: bool,
    failures: u64,
    refreshes: u64,
    last_error: Option<String>,
    last_logged: Option<Instant>,
}

/// The names the collectors read at scrape time; written by [`run`].
#[derive(Debug, Default)]
pub struct Store {
    provider: Mutex<Option<&'static str>>,
    snapshot: RwLock<Arc<Snapshot>>,
    health: Mutex<Health>,
    unknown: tokio::sync::Notify,
}

impl Store {
    pub fn snapshot(&self) -> Arc<Snapshot> {
        Arc::clone(&self.snapshot.read().unwrap_or_else(PoisonError::into_inner))
    }

    /// Whether a provider runs (if not, unknown ids are expected and not worth a refresh).
    pub fn active(&self) -> bool {
        self.provider
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .is_some()
    }

    /// A scrape met ids the snapshot lacks: ask for an early refresh.
    pub fn saw_unknown(&self) {
        if self.active() {
            self.unknown.notify_one();
        }
    }

    /// Replaces the snapshot (the refresh loop, and tests).
    pub fn replace(&self, snap: Snapshot) {
        *self
            .snapshot
            .write()
            .unwrap_or_else(PoisonError::into_inner) = Arc::new(snap);
    }

    fn health(&self) -> std::sync::MutexGuard<'_, Health> {
        self.health.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

/// The metadata self-metrics.
pub const FAMILIES: &[Family] = &[METADATA_UP, METADATA_REFRESH_FAILURES, METADATA_PODS];

/// The metadata self-metrics: `podstat_metadata_up`, `podstat_metadata_refresh_failures_total`
/// and `podstat_metadata_pods`, all labelled by `provider`.
#[derive(Debug)]
pub struct Metrics(pub Arc<Store>);

impl Collector for Metrics {
    fn encode(&self, mut enc: DescriptorEncoder) -> Result<(), fmt::Error> {
        let Some(provider) = *self
            .0
            .provider
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
        else {
            return Ok(());
        };
        let labels = [("provider", provider)];
        let (up, failures) = {
            let h = self.0.health();
            (h.up, h.failures)
        };
        let pods = self.0.snapshot().pods.len();
        ConstGauge::new(i64::from(up))
            .encode(METADATA_UP.encode(&mut enc)?.encode_family(&labels)?)?;
        ConstCounter::new(failures).encode(
            METADATA_REFRESH_FAILURES
                .encode(&mut enc)?
                .encode_family(&labels)?,
        )?;
        ConstGauge::new(i64::try_from(pods).unwrap_or(i64::MAX))
            .encode(METADATA_PODS.encode(&mut enc)?.encode_family(&labels)?)?;
        Ok(())
    }
}

/// Why a refresh failed.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("CRI socket {path}")]
    Cri {
        path: PathBuf,
        #[source]
        source: cri::CriError,
    },
    #[error("kubelet {url}")]
    Kubelet {
        url: String,
        #[source]
        source: kubelet::KubeletError,
    },
    #[error("timed out after {0:?}")]
    Timeout(Duration),
}

/// A configured provider.
#[derive(Debug)]
pub enum Provider {
    Cri(cri::Client),
    Kubelet(kubelet::Client),
}

impl Provider {
    pub fn name(&self) -> &'static str {
        match self {
            Self::Cri(_) => "cri",
            Self::Kubelet(_) => "kubelet",
        }
    }

    /// Where it reads from, for the log.
    pub fn source(&self) -> String {
        match self {
            Self::Cri(c) => c.socket().display().to_string(),
            Self::Kubelet(k) => k.url().to_owned(),
        }
    }

    /// One refresh, bounded by `timeout`. A connection that failed or timed out is dropped, so
    /// the next refresh connects afresh.
    pub async fn fetch_within(&mut self, timeout: Duration) -> Result<Snapshot, Error> {
        let result = tokio::time::timeout(timeout, self.fetch())
            .await
            .unwrap_or(Err(Error::Timeout(timeout)));
        if result.is_err()
            && let Self::Cri(c) = self
        {
            c.reset();
        }
        result
    }

    pub async fn fetch(&mut self) -> Result<Snapshot, Error> {
        match self {
            Self::Cri(c) => c.snapshot().await.map_err(|source| Error::Cri {
                path: c.socket().to_owned(),
                source,
            }),
            Self::Kubelet(k) => k.snapshot().await.map_err(|source| Error::Kubelet {
                url: k.url().to_owned(),
                source,
            }),
        }
    }
}

/// Why the provider asked for cannot be set up.
#[derive(Debug, thiserror::Error)]
pub enum ChooseError {
    #[error("--metadata.provider cri: no CRI socket at {} (pass --metadata.cri-socket)", CRI_SOCKETS.join(", "))]
    NoCriSocket,
    #[error("--metadata.provider kubelet")]
    Kubelet(#[source] kubelet::KubeletError),
    #[error("--metadata.provider auto chose the kubelet")]
    AutoKubelet(#[source] kubelet::KubeletError),
}

/// Chooses the provider from the options; `Ok(None)` for none. A provider asked for by name
/// that cannot be set up is an error; `auto` only picks what is there.
pub fn select(opts: &Options) -> Result<Option<Provider>, ChooseError> {
    let first_socket = || {
        CRI_SOCKETS
            .iter()
            .map(Path::new)
            .find(|p| p.exists())
            .map(Path::to_path_buf)
    };
    match opts.provider {
        ProviderKind::None => Ok(None),
        ProviderKind::Cri => {
            let socket = opts
                .cri_socket
                .clone()
                .or_else(first_socket)
                .ok_or(ChooseError::NoCriSocket)?;
            Ok(Some(Provider::Cri(cri::Client::new(socket))))
        }
        ProviderKind::Kubelet => kubelet::Client::new(opts)
            .map(|k| Some(Provider::Kubelet(k)))
            .map_err(ChooseError::Kubelet),
        ProviderKind::Auto => {
            if let Some(socket) = opts.cri_socket.clone().or_else(first_socket) {
                return Ok(Some(Provider::Cri(cri::Client::new(socket))));
            }
            if opts.kubelet_token_file.exists() {
                return kubelet::Client::new(opts)
                    .map(|k| Some(Provider::Kubelet(k)))
                    .map_err(ChooseError::AutoKubelet);
            }
            Ok(None)
        }
    }
}

/// How soon after an unknown id a refresh may run, at the earliest.
const MIN_GAP: Duration = Duration::from_secs(1);
/// Failures are logged at most this often (the first one and recoveries always).
const LOG_EVERY: Duration = Duration::from_mins(1);

/// The next wait after a failure: doubling from 1 s, capped at 4 × the interval.
pub fn backoff(prev: Duration, interval: Duration) -> Duration {
    let cap = interval.saturating_mul(4).max(Duration::from_secs(1));
    if prev.is_zero() {
        Duration::from_secs(1).min(cap)
    } else {
        prev.saturating_mul(2).min(cap)
    }
}

impl Store {
    /// Marks `provider` as the one that runs.
    pub fn set_provider(&self, provider: &'static str) {
        *self.provider.lock().unwrap_or_else(PoisonError::into_inner) = Some(provider);
    }

    /// Records a refresh's outcome and logs what changed.
    fn record(&self, source: &str, result: Result<Snapshot, Error>) {
        let mut h = self.health();
        h.refreshes += 1;
        match result {
            Ok(snap) => {
                if !h.up && h.refreshes > 1 {
                    tracing::info!(%source, pods = snap.pods.len(), "metadata provider is back");
                } else if h.refreshes == 1 {
                    tracing::info!(%source, pods = snap.pods.len(), containers = snap.containers.len(), "metadata provider answered");
                }
                h.up = true;
                h.last_error = None;
                drop(h);
                self.replace(snap);
            }
            Err(e) => {
                let msg = crate::util::chain(&e);
                h.failures += 1;
                let changed = h.up || h.last_error.as_deref() != Some(msg.as_str());
                let due = h.last_logged.is_none_or(|t| t.elapsed() >= LOG_EVERY);
                if changed || due {
                    tracing::warn!(%source, error = %msg, failures = h.failures, "metadata refresh failed; series keep their last names, new pods carry uid and container id only");
                    h.last_logged = Some(Instant::now());
                }
                h.up = false;
                h.last_error = Some(msg);
            }
        }
    }
}

/// Refreshes `store` from `provider` until the runtime stops.
pub async fn run(store: Arc<Store>, provider: Provider, opts: Options) {
    store.set_provider(provider.name());
    tracing::info!(provider = provider.name(), source = %provider.source(), interval = ?opts.refresh, "metadata provider");
    refresh_loop(store, provider, opts, false).await;
}

/// The refresh loop of [`run`]. `fresh`: a refresh has just succeeded, so the loop begins by
/// waiting for the next one instead of asking again at once.
async fn refresh_loop(store: Arc<Store>, mut provider: Provider, opts: Options, mut fresh: bool) {
    let source = provider.source();
    let mut wait = Duration::ZERO;
    loop {
        let started = tokio::time::Instant::now();
        if !fresh {
            let result = provider.fetch_within(opts.timeout).await;
            let failed = result.is_err();
            store.record(&source, result);
            if failed {
                wait = backoff(wait, opts.refresh);
                tokio::time::sleep(wait).await;
                continue;
            }
            wait = Duration::ZERO;
        }
        fresh = false;
        tokio::select! {
            () = tokio::time::sleep(opts.refresh) => {}
            () = store.unknown.notified() => {
                tokio::time::sleep_until(started + MIN_GAP).await;
            }
        }
    }
}

/// For the operator views (`top`, `explain`), which have no async runtime: chooses a provider
/// as `opts` say, refreshes once (bounded by the timeout) so that names are there from the
/// first snapshot, then keeps refreshing on a thread of its own. Without a provider, or if the
/// thread cannot start, the store simply stays empty (uid labels only).
pub fn start_in_background(opts: &Options) -> Arc<Store> {
    let store = Arc::new(Store::default());
    // The views live for seconds to minutes: refresh at least every 10 s.
    let opts = Options {
        refresh: opts.refresh.min(Duration::from_secs(10)),
        ..opts.clone()
    };
    let Ok(Some(mut provider)) = select(&opts) else {
        return store;
    };
    let Ok(rt) = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    else {
        return store;
    };
    store.set_provider(provider.name());
    let source = provider.source();
    let first = rt.block_on(provider.fetch_within(opts.timeout));
    let fresh = first.is_ok();
    store.record(&source, first);
    let s = Arc::clone(&store);
    let _ = std::thread::Builder::new()
        .name("podstat-metadata".into())
        .spawn(move || rt.block_on(refresh_loop(s, provider, opts, fresh)));
    store
}

#[cfg(test)]
mod tests {
    use super::*;

    fn snapshot() -> Snapshot {
        let mut s = Snapshot::default();
        s.pods.insert(
            "u1".into(),
            PodMeta {
                namespace: "shop".into(),
                name: "checkout-7d9".into(),
            },
        );
        s
    }

    #[test]
    fn backoff_doubles_from_one_second_up_to_four_intervals() {
        let i = Duration::from_secs(30);
        let mut w = Duration::ZERO;
        let mut seen = Vec::new();
        for _ in 0..10 {
            w = backoff(w, i);
            seen.push(w.as_secs());
        }
        assert_eq!(seen, [1, 2, 4, 8, 16, 32, 64, 120, 120, 120]);
        assert_eq!(
            backoff(Duration::ZERO, Duration::ZERO),
            Duration::from_secs(1)
        );
    }

    #[test]
    fn failure_keeps_the_last_good_snapshot() {
        let store = Store::default();
        store.set_provider("cri");
        store.record("test", Ok(snapshot()));
        store.record("test", Err(Error::Timeout(Duration::from_secs(5))));
        assert_eq!(store.snapshot().pods.len(), 1);
        let h = store.health();
        assert!(!h.up);
        assert_eq!(h.failures, 1);
    }

    #[test]
    fn choose_none_and_missing_sockets() {
        let opts = Options::default();
        assert!(matches!(select(&opts), Ok(None)));
        let opts = Options {
            provider: ProviderKind::Cri,
            cri_socket: Some("/nonexistent/podstat-test.sock".into()),
            ..Options::default()
        };
        // A named socket is used as given; connecting is what fails, at refresh time.
        assert!(matches!(select(&opts), Ok(Some(Provider::Cri(_)))));
    }

    #[test]
    fn a_kubelet_that_cannot_be_set_up_is_a_typed_error_with_its_cause() {
        let opts = Options {
            provider: ProviderKind::Kubelet,
            kubelet_url: "ftp://x".into(),
            ..Options::default()
        };
        let e = select(&opts).expect_err("not http(s)");
        assert!(
            matches!(e, ChooseError::Kubelet(kubelet::KubeletError::Url { .. })),
            "{e:?}"
        );
        assert_eq!(
            Some(crate::util::chain(&e)).as_deref(),
            Some("--metadata.provider kubelet: bad URL: \"ftp://x\": not http(s)://host[:port]")
        );
    }
}
