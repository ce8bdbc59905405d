//! The HTTP endpoint: `/metrics`, `/healthz`, `/readyz`. Read-only.
//!
//! Scrapes share collections ([`Scrapes`]): one that arrives while a collection runs, or within
//! `--web.scrape-window` after it ended, gets that collection's result, encoded once per format
//! and encoding. At most `--web.max-requests` scrapes are served at once (503 beyond, as
//! node_exporter), at most `--web.max-connections` connections are open at once (more are
//! closed as they are accepted), a request head may be at most [`MAX_HEAD`] bytes and must
//! arrive within [`HEAD_TIMEOUT`].

use std::{
    convert::Infallible,
    future::Future,
    net::SocketAddr,
    sync::Arc,
    time::{Duration, Instant},
};

use http_body_util::Full;
use hyper::{
    Method, Request, Response, StatusCode,
    body::{Bytes, Incoming},
    header,
    server::conn::http1,
    service::service_fn,
};
use hyper_util::{
    rt::{TokioIo, TokioTimer},
    server::graceful::GracefulShutdown,
};
use prometheus_client::registry::Registry;
use tokio::{
    net::TcpListener,
    sync::{Mutex, OnceCell, Semaphore},
};

use crate::{
    exposition::{self, Format},
    webconfig::{ClientAuth, WebConfig},
};

/// How long in-flight scrapes may take to finish after a shutdown signal.
const DRAIN: Duration = Duration::from_secs(5);
/// A request head (request line and headers) must arrive within this, from the connection's
/// start or, on a kept-alive connection, from the end of the previous response.
pub const HEAD_TIMEOUT: Duration = Duration::from_secs(10);
/// The largest request head read (hyper's read buffer limit; its minimum is 8 KiB). A larger
/// one is answered 431 and the connection closed.
pub const MAX_HEAD: usize = 16 * 1024;

/// How the endpoint is served.
#[derive(Debug, Clone)]
pub struct Options {
    /// Scrapes that arrive within this after a collection ended get its result.
    pub scrape_window: Duration,
    /// Scrapes served at once; `0`: no limit.
    pub max_requests: usize,
    /// Connections open at once; `0`: no limit.
    pub max_connections: usize,
    /// TLS and basic auth (`--web.config.file`).
    pub web: Option<Arc<WebConfig>>,
    /// /healthz and /readyz answer without a password or client certificate.
    pub health_open: bool,
}

impl Default for Options {
    fn default() -> Self {
        Self {
            scrape_window: Duration::from_secs(1),
            max_requests: 40,
            max_connections: 512,
            web: None,
            health_open: false,
        }
    }
}

/// What one collection runs the collectors into. The text formats derive from OpenMetrics
/// text; the protobuf format is prometheus-client's own encoder over the registry, a run of
/// its own. Scrapes share a collection only with scrapes of the same source (an HA pair of
/// Prometheus servers asks for the same format).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Source {
    OpenMetrics,
    Protobuf,
}

impl Source {
    fn of(format: Format) -> Self {
        match format {
            Format::OpenMetrics | Format::Text => Self::OpenMetrics,
            Format::Protobuf => Self::Protobuf,
        }
    }
}

/// One collection of every registered collector (OpenMetrics text or protobuf, by its
/// [`Source`]) and its encodings.
struct Collection {
    /// When it ended.
    done: Instant,
    body: Arc<Vec<u8>>,
    /// By `(format, gzip)`: each computed once, by the first scrape that wants it.
    encoded: [OnceCell<Bytes>; 6],
}

impl Collection {
    fn slot(format: Format, gzip: bool) -> usize {
        let f = match format {
            Format::OpenMetrics => 0,
            Format::Text => 1,
            Format::Protobuf => 2,
        };
        f * 2 + usize::from(gzip)
    }
}

/// The last collection of one [`Source`].
type Last = Arc<Mutex<Option<Arc<Collection>>>>;

/// The collections that concurrent scrapes share.
pub struct Scrapes {
    registry: Arc<Registry>,
    window: Duration,
    /// By [`Source`]: OpenMetrics, protobuf.
    last: [Last; 2],
}

impl Scrapes {
    pub fn new(registry: Arc<Registry>, window: Duration) -> Self {
        Self {
            registry,
            window,
            last: Default::default(),
        }
    }

    /// The body for a scrape that arrived at `arrived`, in `format`, gzipped if `gzip`.
    ///
    /// # Errors
    /// The collection or its encoding failed (nothing is kept then).
    pub async fn body(
        &self,
        arrived: Instant,
        format: Format,
        gzip: bool,
    ) -> Result<Bytes, RenderError> {
        let collection = self.collection(arrived, Source::of(format)).await?;
        let body = Arc::clone(&collection.body);
        collection.encoded[Collection::slot(format, gzip)]
            .get_or_try_init(|| async move {
                tokio::task::spawn_blocking(move || encode(&body, format, gzip))
                    .await
                    .map_err(|_| RenderError::Panicked)?
                    .map(Bytes::from)
            })
            .await
            .cloned()
    }

    /// The last collection of `source` if it ended after `arrived` or within the window
    /// before; else a new one. The collection runs in a task of its own holding the lock, so a
    /// scraper that goes away does not abandon it half way for the next to start again.
    async fn collection(
        &self,
        arrived: Instant,
        source: Source,
    ) -> Result<Arc<Collection>, RenderError> {
        let slot = usize::from(source == Source::Protobuf);
        let mut last = Arc::clone(&self.last[slot]).lock_owned().await;
        if let Some(c) = last.as_ref()
            && arrived <= c.done + self.window
        {
            return Ok(Arc::clone(c));
        }
        let registry = Arc::clone(&self.registry);
        tokio::spawn(async move {
            // Collectors read files and eBPF maps: blocking work, off the async workers.
            let body = tokio::task::spawn_blocking(move || collect(&registry, source))
                .await
                .map_err(|_| RenderError::Panicked)??;
            let c = Arc::new(Collection {
                done: Instant::now(),
                body: Arc::new(body),
                encoded: Default::default(),
            });
            *last = Some(Arc::clone(&c));
            Ok(c)
        })
        .await
        .map_err(|_| RenderError::Panicked)?
    }
}

/// What a connection's requests are served from.
struct Endpoint {
    scrapes: Scrapes,
    /// `None`: no limit.
    requests: Option<Semaphore>,
    web: Option<Arc<WebConfig>>,
    health_open: bool,
}

/// Serves until `shutdown` resolves, then drains open connections.
///
/// # Errors
/// Only if the listener itself fails; a bad connection is logged and dropped.
pub async fn serve(
    listener: TcpListener,
    registry: Arc<Registry>,
    options: &Options,
    shutdown: impl Future<Output = ()>,
) -> std::io::Result<()> {
    let endpoint = Arc::new(Endpoint {
        scrapes: Scrapes::new(registry, options.scrape_window),
        requests: (options.max_requests > 0).then(|| Semaphore::new(options.max_requests)),
        web: options.web.clone(),
        health_open: options.health_open,
    });
    let acceptor = options
        .web
        .as_ref()
        .and_then(|w| w.tls.as_ref())
        .map(|t| tokio_rustls::TlsAcceptor::from(Arc::clone(&t.server)));
    let connections = Arc::new(Semaphore::new(if options.max_connections == 0 {
        Semaphore::MAX_PERMITS
    } else {
        options.max_connections
    }));
    let graceful = GracefulShutdown::new();
    tokio::pin!(shutdown);
    loop {
        tokio::select! {
            accepted = listener.accept() => {
                let (stream, peer) = match accepted {
                    Ok(conn) => conn,
                    Err(e) => {
                        tracing::warn!(error = %e, "accept failed");
                        tokio::time::sleep(Duration::from_millis(50)).await;
                        continue;
                    }
                };
                let Ok(permit) = Arc::clone(&connections).try_acquire_owned() else {
                    tracing::debug!(%peer, max = options.max_connections, "too many open connections; closing the new one");
                    drop(stream);
                    continue;
                };
                let endpoint = Arc::clone(&endpoint);
                match &acceptor {
                    None => {
                        let service = service_fn(move |req| handle(req, Arc::clone(&endpoint), peer, false));
                        let conn = graceful.watch(http1_builder().serve_connection(TokioIo::new(stream), service));
                        tokio::spawn(async move {
                            if let Err(e) = conn.await {
                                tracing::debug!(%peer, error = %e, "connection ended with an error");
                            }
                            drop(permit);
                        });
                    }
                    Some(acceptor) => {
                        // The handshake is bounded like a request head; the connection is
                        // watched for shutdown once it is HTTP.
                        let handshake = tokio::time::timeout(HEAD_TIMEOUT, acceptor.accept(stream));
                        let watcher = graceful.watcher();
                        tokio::spawn(async move {
                            let tls = match handshake.await {
                                Ok(Ok(tls)) => tls,
                                Ok(Err(e)) => {
                                    tracing::debug!(%peer, error = %e, "TLS handshake failed");
                                    return;
                                }
                                Err(_) => {
                                    tracing::debug!(%peer, "TLS handshake timed out");
                                    return;
                                }
                            };
                            let cert = tls.get_ref().1.peer_certificates().is_some_and(|c| !c.is_empty());
                            let service = service_fn(move |req| handle(req, Arc::clone(&endpoint), peer, cert));
                            let conn = watcher.watch(http1_builder().serve_connection(TokioIo::new(tls), service));
                            if let Err(e) = conn.await {
                                tracing::debug!(%peer, error = %e, "connection ended with an error");
                            }
                            drop(permit);
                        });
                    }
                }
            }
            () = &mut shutdown => break,
        }
    }
    drop(listener);
    tokio::select! {
        () = graceful.shutdown() => tracing::info!("all connections closed"),
        () = tokio::time::sleep(DRAIN) => tracing::warn!(?DRAIN, "connections still open after drain timeout; exiting anyway"),
    }
    Ok(())
}

/// How every connection is served: HTTP/1.1, its head bounded in time and size.
fn http1_builder() -> http1::Builder {
    let mut b = http1::Builder::new();
    b.timer(TokioTimer::new())
        .header_read_timeout(HEAD_TIMEOUT)
        .max_buf_size(MAX_HEAD);
    b
}

fn plain(status: StatusCode, body: &'static str) -> Response<Full<Bytes>> {
    let mut resp = Response::new(Full::new(Bytes::from_static(body.as_bytes())));
    *resp.status_mut() = status;
    resp.headers_mut().insert(
        header::CONTENT_TYPE,
        header::HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    resp
}

const INDEX: &str = "<html><head><title>podstat</title></head><body><h1>podstat</h1>\
<p><a href=\"/metrics\">/metrics</a> &middot; <a href=\"/healthz\">/healthz</a> &middot; <a href=\"/readyz\">/readyz</a></p></body></html>\n";

async fn handle(
    req: Request<Incoming>,
    endpoint: Arc<Endpoint>,
    peer: SocketAddr,
    cert: bool,
) -> Result<Response<Full<Bytes>>, Infallible> {
    let mut resp = respond(&req, &endpoint, cert).await;
    if let Some(web) = &endpoint.web {
        for (k, v) in &web.headers {
            resp.headers_mut().insert(k.clone(), v.clone());
        }
    }
    tracing::debug!(%peer, path = req.uri().path(), status = resp.status().as_u16(), "request");
    Ok(resp)
}

/// 503 when `--web.max-requests` are being served.
#[expect(
    clippy::result_large_err,
    reason = "the error is the response to send, built once per refusal"
)]
fn permit(
    endpoint: &Endpoint,
) -> Result<Option<tokio::sync::SemaphorePermit<'_>>, Response<Full<Bytes>>> {
    match endpoint.requests.as_ref().map(Semaphore::try_acquire) {
        Some(Err(_)) => Err(plain(
            StatusCode::SERVICE_UNAVAILABLE,
            "too many concurrent requests (--web.max-requests); try again\n",
        )),
        Some(Ok(p)) => Ok(Some(p)),
        None => Ok(None),
    }
}

/// The client certificate and the basic-auth password, as the web config asks; `None` when
/// the request may go on.
async fn refused(
    req: &Request<Incoming>,
    web: &Arc<WebConfig>,
    cert: bool,
) -> Option<Response<Full<Bytes>>> {
    if web
        .tls
        .as_ref()
        .is_some_and(|t| t.client_auth == ClientAuth::RequireAndVerify)
        && !cert
    {
        return Some(plain(
            StatusCode::FORBIDDEN,
            "a client certificate is required\n",
        ));
    }
    if web.users.is_empty() {
        return None;
    }
    let authorization = req
        .headers()
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned);
    let web = Arc::clone(web);
    // bcrypt takes tens of milliseconds: off the async workers.
    let ok = tokio::task::spawn_blocking(move || web.authorized(authorization.as_deref()))
        .await
        .unwrap_or(false);
    if ok {
        return None;
    }
    let mut r = plain(StatusCode::UNAUTHORIZED, "unauthorized\n");
    r.headers_mut().insert(
        header::WWW_AUTHENTICATE,
        header::HeaderValue::from_static("Basic realm=\"podstat\""),
    );
    Some(r)
}

async fn respond(
    req: &Request<Incoming>,
    endpoint: &Endpoint,
    cert: bool,
) -> Response<Full<Bytes>> {
    let arrived = Instant::now();
    if req.method() != Method::GET && req.method() != Method::HEAD {
        return plain(StatusCode::METHOD_NOT_ALLOWED, "only GET and HEAD\n");
    }
    let path = req.uri().path();
    let health = matches!(path, "/healthz" | "/readyz");
    // Password checks cost CPU: they count against --web.max-requests, as scrapes do.
    let counted =
        path == "/metrics" || (endpoint.web.is_some() && !(health && endpoint.health_open));
    let _held = if counted {
        match permit(endpoint) {
            Ok(p) => p,
            Err(r) => return r,
        }
    } else {
        None
    };
    if let Some(web) = &endpoint.web
        && !(health && endpoint.health_open)
        && let Some(r) = refused(req, web, cert).await
    {
        return r;
    }
    match path {
        "/metrics" => metrics(req, endpoint, arrived).await,
        "/healthz" | "/readyz" => plain(StatusCode::OK, "ok\n"),
        "/" => {
            let mut r = plain(StatusCode::OK, INDEX);
            r.headers_mut().insert(
                header::CONTENT_TYPE,
                header::HeaderValue::from_static("text/html; charset=utf-8"),
            );
            r
        }
        _ => plain(StatusCode::NOT_FOUND, "not found; try /metrics\n"),
    }
}

async fn metrics(
    req: &Request<Incoming>,
    endpoint: &Endpoint,
    arrived: Instant,
) -> Response<Full<Bytes>> {
    let header_str = |name| {
        req.headers()
            .get(name)
            .and_then(|v: &header::HeaderValue| v.to_str().ok())
    };
    let format = exposition::negotiate(header_str(header::ACCEPT));
    let gzip = exposition::wants_gzip(header_str(header::ACCEPT_ENCODING));
    match endpoint.scrapes.body(arrived, format, gzip).await {
        Ok(body) => {
            let mut resp = Response::new(Full::new(body));
            let h = resp.headers_mut();
            h.insert(
                header::CONTENT_TYPE,
                header::HeaderValue::from_static(format.content_type()),
            );
            if gzip {
                h.insert(
                    header::CONTENT_ENCODING,
                    header::HeaderValue::from_static("gzip"),
                );
            }
            h.insert(
                header::VARY,
                header::HeaderValue::from_static("Accept, Accept-Encoding"),
            );
            resp
        }
        Err(RenderError::Panicked) => {
            tracing::error!("scrape task panicked");
            plain(
                StatusCode::INTERNAL_SERVER_ERROR,
                "scrape failed; see the agent's log\n",
            )
        }
        Err(e) => {
            tracing::error!(error = %crate::util::chain(&e), "encoding metrics failed");
            plain(
                StatusCode::INTERNAL_SERVER_ERROR,
                "encoding metrics failed; see the agent's log\n",
            )
        }
    }
}

/// Runs every collector once, into OpenMetrics text or protobuf.
fn collect(registry: &Registry, source: Source) -> Result<Vec<u8>, RenderError> {
    match source {
        Source::OpenMetrics => {
            let mut om = String::with_capacity(64 * 1024);
            prometheus_client::encoding::text::encode(&mut om, registry)
                .map_err(|_| RenderError::Encode)?;
            Ok(om.into_bytes())
        }
        Source::Protobuf => exposition::encode_protobuf(registry, exposition::histograms())
            .map_err(|_| RenderError::Encode),
    }
}

/// One collection (of `format`'s [`Source`]) in `format`, gzipped if `gzip`.
fn encode(body: &[u8], format: Format, gzip: bool) -> Result<Vec<u8>, RenderError> {
    let text;
    let body = match format {
        Format::OpenMetrics | Format::Protobuf => body,
        Format::Text => {
            // The collector wrote it with `fmt::Write`: UTF-8.
            text = exposition::openmetrics_to_text(&String::from_utf8_lossy(body));
            text.as_bytes()
        }
    };
    if gzip {
        exposition::gzip(body).map_err(RenderError::Gzip)
    } else {
        Ok(body.to_vec())
    }
}

/// Encodes the registry in `format`; returns the body and whether it is gzipped.
///
/// # Errors
/// If a collector's encoder fails or gzip fails.
pub fn render(
    registry: &Registry,
    format: Format,
    gzip: bool,
) -> Result<(Vec<u8>, bool), RenderError> {
    Ok((
        encode(&collect(registry, Source::of(format))?, format, gzip)?,
        gzip,
    ))
}

#[derive(Debug, thiserror::Error)]
pub enum RenderError {
    #[error("a collector failed to encode its metrics")]
    Encode,
    #[error("gzip")]
    Gzip(#[source] std::io::Error),
    #[error("the collection or encoding task panicked")]
    Panicked,
}

#[cfg(test)]
mod tests {
    use std::{
        fmt,
        sync::atomic::{AtomicUsize, Ordering},
    };

    use prometheus_client::{
        collector::Collector,
        encoding::{DescriptorEncoder, EncodeMetric as _},
        metrics::{MetricType, gauge::ConstGauge},
    };

    use super::*;

    /// Counts its collections, each taking `delay`; exports that count.
    #[derive(Debug)]
    struct Counting {
        n: Arc<AtomicUsize>,
        delay: Duration,
    }

    impl Collector for Counting {
        fn encode(&self, mut enc: DescriptorEncoder) -> Result<(), fmt::Error> {
            std::thread::sleep(self.delay);
            let n = self.n.fetch_add(1, Ordering::SeqCst) + 1;
            let g = ConstGauge::new(i64::try_from(n).unwrap_or(i64::MAX));
            let m =
                enc.encode_descriptor("collections", "Collections.", None, MetricType::Gauge)?;
            g.encode(m)
        }
    }

    fn scrapes(delay: Duration, window: Duration) -> (Arc<Scrapes>, Arc<AtomicUsize>) {
        let n = Arc::new(AtomicUsize::new(0));
        let mut r = Registry::default();
        r.register_collector(Box::new(Counting {
            n: Arc::clone(&n),
            delay,
        }));
        (Arc::new(Scrapes::new(Arc::new(r), window)), n)
    }

    fn rt() -> tokio::runtime::Runtime {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("runtime")
    }

    #[test]
    fn concurrent_scrapes_share_one_collection_and_one_encoding() {
        let (s, n) = scrapes(Duration::from_millis(200), Duration::from_secs(90));
        let bodies = rt().block_on(async {
            let mut tasks = Vec::new();
            for i in 0..16 {
                let s = Arc::clone(&s);
                tasks.push(tokio::spawn(async move {
                    let format = if i % 2 == 0 {
                        Format::Text
                    } else {
                        Format::OpenMetrics
                    };
                    (
                        format,
                        s.body(Instant::now(), format, false).await.expect("body"),
                    )
                }));
            }
            let mut out = Vec::new();
            for t in tasks {
                out.push(t.await.expect("task"));
            }
            out
        });
        assert_eq!(
            n.load(Ordering::SeqCst),
            1,
            "16 concurrent scrapes, one collection"
        );
        let text: Vec<&Bytes> = bodies
            .iter()
            .filter(|(f, _)| *f == Format::Text)
            .map(|(_, b)| b)
            .collect();
        assert!(
            text.iter().all(|b| b.as_ptr() == text[0].as_ptr()),
            "one text encoding, shared"
        );
        assert!(
            std::str::from_utf8(text[0])
                .expect("utf-8")
                .contains("collections 1\n")
        );
        let om: Vec<&Bytes> = bodies
            .iter()
            .filter(|(f, _)| *f == Format::OpenMetrics)
            .map(|(_, b)| b)
            .collect();
        assert!(
            om.iter().all(|b| b.as_ptr() == om[0].as_ptr()),
            "one OpenMetrics encoding"
        );
        assert_ne!(om[0].as_ptr(), text[0].as_ptr());
    }

    #[test]
    fn the_window_bounds_reuse_and_zero_disables_it() {
        let rt = rt();
        let (s, n) = scrapes(Duration::ZERO, Duration::from_millis(300));
        rt.block_on(async {
            s.body(Instant::now(), Format::Text, true)
                .await
                .expect("first");
            s.body(Instant::now(), Format::Text, true)
                .await
                .expect("within the window");
            assert_eq!(n.load(Ordering::SeqCst), 1);
            tokio::time::sleep(Duration::from_millis(400)).await;
            s.body(Instant::now(), Format::Text, true)
                .await
                .expect("after it");
            assert_eq!(n.load(Ordering::SeqCst), 2);
        });
        let (s, n) = scrapes(Duration::ZERO, Duration::ZERO);
        rt.block_on(async {
            for _ in 0..3 {
                s.body(Instant::now(), Format::Text, false)
                    .await
                    .expect("body");
            }
        });
        assert_eq!(
            n.load(Ordering::SeqCst),
            3,
            "window 0: each sequential scrape collects"
        );
    }

    #[test]
    fn a_scrape_during_a_collection_waits_for_it_even_without_a_window() {
        let (s, n) = scrapes(Duration::from_millis(300), Duration::ZERO);
        rt().block_on(async {
            let first = tokio::spawn({
                let s = Arc::clone(&s);
                async move { s.body(Instant::now(), Format::Text, false).await }
            });
            tokio::time::sleep(Duration::from_millis(100)).await;
            s.body(Instant::now(), Format::Text, false)
                .await
                .expect("second");
            first.await.expect("task").expect("first");
        });
        assert_eq!(n.load(Ordering::SeqCst), 1);
    }
}
