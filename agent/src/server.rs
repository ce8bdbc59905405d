//! The HTTP endpoint: `/metrics`, `/healthz`, `/readyz`. Read-only.

use std::{convert::Infallible, future::Future, net::SocketAddr, sync::Arc, time::Duration};

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
use tokio::net::TcpListener;

use crate::exposition::{self, Format};

/// How long in-flight scrapes may take to finish after a shutdown signal.
const DRAIN: Duration = Duration::from_secs(5);

/// Serves until `shutdown` resolves, then drains open connections.
///
/// # Errors
/// Only if the listener itself fails; a bad connection is logged and dropped.
pub async fn serve(
    listener: TcpListener,
    registry: Arc<Registry>,
    shutdown: impl Future<Output = ()>,
) -> std::io::Result<()> {
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
                let registry = Arc::clone(&registry);
                let service = service_fn(move |req| handle(req, Arc::clone(&registry), peer));
                let conn = http1::Builder::new()
                    .timer(TokioTimer::new())
                    .header_read_timeout(Duration::from_secs(10))
                    .serve_connection(TokioIo::new(stream), service);
                let conn = graceful.watch(conn);
                tokio::spawn(async move {
                    if let Err(e) = conn.await {
                        tracing::debug!(%peer, error = %e, "connection ended with an error");
                    }
                });
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
    registry: Arc<Registry>,
    peer: SocketAddr,
) -> Result<Response<Full<Bytes>>, Infallible> {
    if req.method() != Method::GET && req.method() != Method::HEAD {
        return Ok(plain(StatusCode::METHOD_NOT_ALLOWED, "only GET and HEAD\n"));
    }
    let resp = match req.uri().path() {
        "/metrics" => metrics(&req, registry).await,
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
    };
    tracing::debug!(%peer, path = req.uri().path(), status = resp.status().as_u16(), "request");
    Ok(resp)
}

async fn metrics(req: &Request<Incoming>, registry: Arc<Registry>) -> Response<Full<Bytes>> {
    let header_str = |name| {
        req.headers()
            .get(name)
            .and_then(|v: &header::HeaderValue| v.to_str().ok())
    };
    let format = exposition::negotiate(header_str(header::ACCEPT));
    let gzip = exposition::wants_gzip(header_str(header::ACCEPT_ENCODING));
    // Collectors read files and eBPF maps: blocking work, off the async workers.
    let rendered = tokio::task::spawn_blocking(move || render(&registry, format, gzip)).await;
    match rendered {
        Ok(Ok((body, encoded))) => {
            let mut resp = Response::new(Full::new(Bytes::from(body)));
            let h = resp.headers_mut();
            h.insert(
                header::CONTENT_TYPE,
                header::HeaderValue::from_static(format.content_type()),
            );
            if encoded {
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
        Ok(Err(e)) => {
            tracing::error!(error = %e, "encoding metrics failed");
            plain(
                StatusCode::INTERNAL_SERVER_ERROR,
                "encoding metrics failed; see the agent's log\n",
            )
        }
        Err(e) => {
            tracing::error!(error = %e, "scrape task panicked");
            plain(
                StatusCode::INTERNAL_SERVER_ERROR,
                "scrape failed; see the agent's log\n",
            )
        }
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
    let body = if format == Format::Protobuf {
        exposition::encode_protobuf(registry, exposition::histograms())
            .map_err(|_| RenderError::Encode)?
    } else {
        let mut om = String::with_capacity(64 * 1024);
        prometheus_client::encoding::text::encode(&mut om, registry)
            .map_err(|_| RenderError::Encode)?;
        match format {
            Format::Text => exposition::openmetrics_to_text(&om),
            _ => om,
        }
        .into_bytes()
    };
    if gzip {
        Ok((exposition::gzip(&body).map_err(RenderError::Gzip)?, true))
    } else {
        Ok((body, false))
    }
}

#[derive(Debug, thiserror::Error)]
pub enum RenderError {
    #[error("a collector failed to encode its metrics")]
    Encode,
    #[error("gzip")]
    Gzip(#[source] std::io::Error),
}
