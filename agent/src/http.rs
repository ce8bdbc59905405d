//! A one-shot HTTP/1.1 GET, over plain TCP or TLS, on hyper's client (`client::conn::http1`),
//! bounded in time and size: `podstat top/explain --from URL`, the kubelet provider, and the
//! test and bench harnesses that scrape an agent.
//!
//! Imports only [`crate::tls`] (the rustls client side). The connection is not pooled; each
//! call connects, sends one request and reads the whole body.

use std::{sync::Arc, time::Duration};

use http_body_util::{BodyExt as _, Empty, LengthLimitError, Limited};
use hyper::{
    HeaderMap, Request, StatusCode, Uri,
    body::Bytes,
    client::conn::http1,
    header::{self, HeaderName, HeaderValue},
};
use hyper_util::rt::TokioIo;
use rustls::ClientConfig;
use tokio::{net::TcpStream, task::JoinHandle};

use crate::tls;

/// Largest body accepted (an agent on a 300-pod node answers in a few MiB).
pub const MAX_BODY: usize = 256 << 20;

/// What failed, and where.
#[derive(Debug, thiserror::Error)]
pub enum HttpError {
    #[error("{url:?}: not an http(s)://HOST[:PORT][/PATH] URL")]
    BadUrl { url: String },
    #[error("{url:?}: an https URL, and no TLS settings to reach it with")]
    NoTls { url: String },
    #[error("header {name:?}: not a valid HTTP header")]
    Header { name: String },
    #[error("starting a runtime for the request")]
    Runtime(#[source] std::io::Error),
    #[error("connecting to {authority}")]
    Connect {
        authority: String,
        #[source]
        source: std::io::Error,
    },
    #[error("TLS with {authority}")]
    Tls {
        authority: String,
        #[source]
        source: tls::HandshakeError,
    },
    #[error("timed out after {0:?}")]
    Timeout(Duration),
    #[error("HTTP/1.1 handshake with {authority}")]
    Handshake {
        authority: String,
        #[source]
        source: hyper::Error,
    },
    #[error(
        "{authority} sent no HTTP answer (closed, or answered something else: if it serves TLS, use https://)"
    )]
    NotHttp {
        authority: String,
        #[source]
        source: hyper::Error,
    },
    #[error("sending the request")]
    Request(#[source] hyper::Error),
    #[error("reading the body")]
    Body(#[source] Box<dyn std::error::Error + Send + Sync>),
    #[error("the body exceeds {MAX_BODY} bytes")]
    TooLarge,
}

/// A response, whatever its status (the caller decides what a non-200 means).
#[derive(Debug)]
pub struct Response {
    pub status: StatusCode,
    pub headers: HeaderMap,
    /// As sent: a `Content-Encoding` (gzip) is not undone.
    pub body: Bytes,
}

/// How to reach servers: plain HTTP always, `https://` URLs with the TLS settings given.
#[derive(Debug, Clone, Default)]
pub struct Client {
    tls: Option<Arc<ClientConfig>>,
}

impl Client {
    /// `tls`: the settings for `https://` URLs (see [`tls::client_config`]); `None` takes
    /// `http://` only.
    pub fn new(tls: Option<Arc<ClientConfig>>) -> Self {
        Self { tls }
    }

    /// GET `url` with extra request headers (`Host` and `User-Agent: podstat` are added unless
    /// given; an `Authorization` value is marked sensitive), all of it (connect, TLS, request,
    /// body) within `timeout`.
    pub async fn get(
        &self,
        url: &str,
        headers: &[(&str, &str)],
        timeout: Duration,
    ) -> Result<Response, HttpError> {
        let (uri, authority, https) = parse(url)?;
        let tls = match (https, &self.tls) {
            (false, _) => None,
            (true, Some(cfg)) => Some(cfg),
            (true, None) => return Err(HttpError::NoTls { url: url.into() }),
        };
        let req = request(&uri, &authority, headers)?;
        tokio::time::timeout(timeout, exchange(&uri, authority, tls, req))
            .await
            .unwrap_or(Err(HttpError::Timeout(timeout)))
    }

    /// [`Client::get`] for callers without an async runtime: runs it on a current-thread
    /// runtime of its own. Must not be called from within a runtime.
    pub fn get_blocking(
        &self,
        url: &str,
        headers: &[(&str, &str)],
        timeout: Duration,
    ) -> Result<Response, HttpError> {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .map_err(HttpError::Runtime)?
            .block_on(self.get(url, headers, timeout))
    }
}

/// GET `url` (plain HTTP) with `Accept: accept`, all of it (connect, request, body) within
/// `timeout`.
pub async fn get(
    url: &str,
    accept: &str,
    timeout: Duration,
) -> Result<(StatusCode, Bytes), HttpError> {
    let r = get_with(url, &[("accept", accept)], timeout).await?;
    Ok((r.status, r.body))
}

/// [`Client::get`] over plain HTTP.
pub async fn get_with(
    url: &str,
    headers: &[(&str, &str)],
    timeout: Duration,
) -> Result<Response, HttpError> {
    Client::default().get(url, headers, timeout).await
}

/// [`Client::get_blocking`] over plain HTTP.
pub fn get_blocking(
    url: &str,
    headers: &[(&str, &str)],
    timeout: Duration,
) -> Result<Response, HttpError> {
    Client::default().get_blocking(url, headers, timeout)
}

/// Whether `url` is one [`Client::get`] takes: `http(s)://HOST[:PORT][/PATH]`; `true` for
/// `https`.
pub fn parse_url(url: &str) -> Result<bool, HttpError> {
    parse(url).map(|(_, _, https)| https)
}

/// The value of an `Authorization` header for basic auth.
pub fn basic_auth(user: &str, password: &str) -> String {
    use base64::Engine as _;
    let pair = base64::engine::general_purpose::STANDARD.encode(format!("{user}:{password}"));
    format!("Basic {pair}")
}

/// The URI, its `host[:port]`, and whether it is `https`; only `http(s)://` with a host and no
/// user part (credentials go in headers).
fn parse(url: &str) -> Result<(Uri, String, bool), HttpError> {
    let bad = || HttpError::BadUrl { url: url.into() };
    let uri: Uri = url.parse().map_err(|_| bad())?;
    let https = match uri.scheme_str() {
        Some("http") => false,
        Some("https") => true,
        _ => return Err(bad()),
    };
    let authority = uri
        .authority()
        .filter(|a| !a.host().is_empty())
        .ok_or_else(bad)?
        .as_str()
        .to_owned();
    if authority.contains('@') {
        return Err(bad());
    }
    Ok((uri, authority, https))
}

fn request(
    uri: &Uri,
    authority: &str,
    headers: &[(&str, &str)],
) -> Result<Request<Empty<Bytes>>, HttpError> {
    let target = uri.path_and_query().map_or("/", |p| p.as_str());
    let mut req = Request::get(target)
        .body(Empty::new())
        .map_err(|_| HttpError::BadUrl {
            url: uri.to_string(),
        })?;
    let map = req.headers_mut();
    for (name, value) in headers {
        let bad = || HttpError::Header {
            name: (*name).to_owned(),
        };
        let n = HeaderName::from_bytes(name.as_bytes()).map_err(|_| bad())?;
        let mut v = HeaderValue::from_str(value).map_err(|_| bad())?;
        v.set_sensitive(n == header::AUTHORIZATION);
        map.append(n, v);
    }
    if !map.contains_key(header::HOST) {
        let host = HeaderValue::from_str(authority).map_err(|_| HttpError::BadUrl {
            url: uri.to_string(),
        })?;
        map.insert(header::HOST, host);
    }
    if !map.contains_key(header::USER_AGENT) {
        map.insert(header::USER_AGENT, HeaderValue::from_static("podstat"));
    }
    Ok(req)
}

/// Aborts the connection's task when the exchange ends, or is dropped by the timeout.
struct AbortOnDrop(JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

async fn exchange(
    uri: &Uri,
    authority: String,
    tls: Option<&Arc<ClientConfig>>,
    req: Request<Empty<Bytes>>,
) -> Result<Response, HttpError> {
    let host = uri.host().unwrap_or_default().trim_matches(['[', ']']);
    let port = uri
        .port_u16()
        .unwrap_or(if tls.is_some() { 443 } else { 80 });
    let tcp = match TcpStream::connect((host, port)).await {
        Ok(s) => s,
        Err(source) => return Err(HttpError::Connect { authority, source }),
    };
    match tls {
        None => send(TokioIo::new(tcp), authority, false, req).await,
        Some(cfg) => match tls::connect(cfg, host, tcp).await {
            Ok(stream) => send(TokioIo::new(stream), authority, true, req).await,
            Err(source) => Err(HttpError::Tls { authority, source }),
        },
    }
}

/// The HTTP/1.1 exchange on a connected stream.
async fn send<IO>(
    io: IO,
    authority: String,
    tls: bool,
    req: Request<Empty<Bytes>>,
) -> Result<Response, HttpError>
where
    IO: hyper::rt::Read + hyper::rt::Write + Unpin + Send + 'static,
{
    let (mut send, conn) = match http1::handshake(io).await {
        Ok(h) => h,
        Err(source) => return Err(HttpError::Handshake { authority, source }),
    };
    let _driver = AbortOnDrop(tokio::spawn(async move {
        if let Err(e) = conn.await {
            tracing::debug!(error = %e, "HTTP connection ended");
        }
    }));
    let resp = match send.send_request(req).await {
        Ok(r) => r,
        // A TLS 1.3 server checks the client certificate after the handshake: its alert
        // arrives on the first read.
        Err(e) if tls && tls::rustls_cause(&e).is_some() => {
            return Err(HttpError::Tls {
                authority,
                source: tls::classify(std::io::Error::other(e)),
            });
        }
        Err(source) if !tls && (source.is_incomplete_message() || source.is_parse()) => {
            return Err(HttpError::NotHttp { authority, source });
        }
        Err(e) => return Err(HttpError::Request(e)),
    };
    let (parts, body) = resp.into_parts();
    let body = Limited::new(body, MAX_BODY)
        .collect()
        .await
        .map_err(|e| {
            if e.is::<LengthLimitError>() {
                HttpError::TooLarge
            } else {
                HttpError::Body(e)
            }
        })?
        .to_bytes();
    Ok(Response {
        status: parts.status,
        headers: parts.headers,
        body,
    })
}

/// A one-connection HTTP server for unit tests of HTTP clients.
#[cfg(test)]
pub mod test_server {
    use std::{
        io::{Read as _, Write as _},
        net::{SocketAddr, TcpListener},
        thread,
    };

    /// Serves one connection: reads the request head, hands it to `answer`, writes the reply
    /// and closes (the unread rest of a TLS ClientHello may make that a reset).
    pub fn serve_once(answer: impl FnOnce(&str) -> Vec<u8> + Send + 'static) -> SocketAddr {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
        let addr = listener.local_addr().expect("addr");
        thread::spawn(move || {
            let Ok((mut c, _)) = listener.accept() else {
                return;
            };
            let mut head: Vec<u8> = Vec::new();
            let mut buf = [0u8; 512];
            // Until the end of the head; bytes that are not HTTP (a TLS ClientHello) after
            // their first read.
            while !head.windows(4).any(|w| w == b"\r\n\r\n")
                && head.first().is_none_or(u8::is_ascii_alphabetic)
            {
                match c.read(&mut buf) {
                    Ok(0) | Err(_) => break,
                    Ok(n) => head.extend_from_slice(&buf[..n]),
                }
            }
            let reply = answer(&String::from_utf8_lossy(&head));
            let _ = c.write_all(&reply);
        });
        addr
    }
}

#[cfg(test)]
mod tests {
    use std::{net::TcpListener, thread};

    use super::{test_server::serve_once, *};

    const T: Duration = Duration::from_secs(5);

    #[test]
    fn sends_accept_host_and_user_agent_and_reads_the_body() {
        let addr = serve_once(|head| {
            let lower = head.to_ascii_lowercase();
            let ok = head.starts_with("GET /metrics?x=1 HTTP/1.1\r\n")
                && lower.contains("\r\naccept: text/plain;version=0.0.4\r\n")
                && lower.contains("\r\nuser-agent: podstat\r\n")
                && lower.contains("\r\nhost: 127.0.0.1:");
            let body = if ok { "yes" } else { "no" };
            format!("HTTP/1.1 200 OK\r\nContent-Length: 3\r\n\r\n{body}").into_bytes()
        });
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("runtime");
        let (status, body) = rt
            .block_on(get(
                &format!("http://{addr}/metrics?x=1"),
                "text/plain;version=0.0.4",
                T,
            ))
            .expect("get");
        assert_eq!(status, StatusCode::OK);
        assert_eq!(&body[..], b"yes");
    }

    #[test]
    fn chunked_bodies_and_headers_come_back_whole() {
        let addr = serve_once(|_| {
            b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n2\r\nde\r\n0\r\n\r\n".to_vec()
        });
        let r = get_blocking(&format!("http://{addr}/"), &[("x-test", "1")], T).expect("get");
        assert_eq!(&r.body[..], b"abcde");
        assert_eq!(
            r.headers
                .get(header::CONTENT_TYPE)
                .map(HeaderValue::as_bytes),
            Some(&b"text/plain"[..])
        );
    }

    #[test]
    fn a_non_200_status_is_returned_not_an_error() {
        let addr = serve_once(|_| {
            b"HTTP/1.1 406 Not Acceptable\r\nContent-Length: 4\r\n\r\nnope".to_vec()
        });
        let r = get_blocking(&format!("http://{addr}/metrics"), &[], T).expect("get");
        assert_eq!(r.status, StatusCode::NOT_ACCEPTABLE);
        assert_eq!(&r.body[..], b"nope");
    }

    #[test]
    fn failures_say_what_failed() {
        // Nobody listens: connect.
        let addr = TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .expect("free port");
        let e = get_blocking(&format!("http://{addr}/"), &[], T).expect_err("refused");
        assert!(matches!(e, HttpError::Connect { .. }), "{e:?}");
        assert!(e.to_string().contains(&addr.to_string()), "{e}");
        // Accepts and never answers: the time bound.
        let addr = serve_once(|_| {
            thread::sleep(Duration::from_secs(3));
            Vec::new()
        });
        let started = std::time::Instant::now();
        let e = get_blocking(&format!("http://{addr}/"), &[], Duration::from_millis(300))
            .expect_err("hangs");
        assert!(matches!(e, HttpError::Timeout(_)), "{e:?}");
        assert!(started.elapsed() < Duration::from_secs(2));
        // Not HTTP.
        let addr = serve_once(|_| b"SSH-2.0-OpenSSH\r\n\r\n".to_vec());
        let e = get_blocking(&format!("http://{addr}/"), &[], T).expect_err("garbage");
        assert!(matches!(e, HttpError::NotHttp { .. }), "{e:?}");
        // Closed without an answer.
        let addr = serve_once(|_| Vec::new());
        let e = get_blocking(&format!("http://{addr}/"), &[], T).expect_err("closed");
        assert!(matches!(e, HttpError::NotHttp { .. }), "{e:?}");
        assert!(e.to_string().contains("use https://"), "{e}");
        // The body ends before its length.
        let addr = serve_once(|_| b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\nabc".to_vec());
        let e = get_blocking(&format!("http://{addr}/"), &[], T).expect_err("short body");
        assert!(matches!(e, HttpError::Body(_)), "{e:?}");
    }

    #[test]
    fn only_http_and_https_urls_with_a_host() {
        for bad in [
            "x:1/metrics",
            "http:///m",
            "http://",
            "https://",
            "ftp://x/",
            "http://user@x/",
            "https://user:pw@x/",
        ] {
            assert!(
                matches!(parse(bad), Err(HttpError::BadUrl { .. })),
                "{bad} accepted"
            );
        }
        for (url, authority, https) in [
            ("http://10.0.0.1:9977/metrics", "10.0.0.1:9977", false),
            ("http://node", "node", false),
            ("http://[::1]:9977/metrics", "[::1]:9977", false),
            ("https://node/metrics", "node", true),
            ("https://10.0.0.1:9977", "10.0.0.1:9977", true),
        ] {
            let (_, a, s) = parse(url).expect(url);
            assert_eq!((a.as_str(), s), (authority, https), "{url}");
        }
        assert!(matches!(
            get_blocking("http://127.0.0.1:1/", &[("bad header", "x")], T),
            Err(HttpError::Header { .. })
        ));
        // https without TLS settings is refused before connecting.
        assert!(matches!(
            get_blocking("https://127.0.0.1:1/", &[], T),
            Err(HttpError::NoTls { .. })
        ));
    }

    #[test]
    fn basic_auth_header() {
        // RFC 7617's example.
        assert_eq!(
            basic_auth("Aladdin", "open sesame"),
            "Basic QWxhZGRpbjpvcGVuIHNlc2FtZQ=="
        );
    }

    /// TLS to a port that answers plain HTTP: the handshake fails, and says so.
    #[test]
    fn tls_to_a_plain_http_port() {
        let addr =
            serve_once(|_| b"HTTP/1.1 400 Bad Request\r\nContent-Length: 0\r\n\r\n".to_vec());
        let cfg = tls::client_config(&tls::ClientOptions {
            insecure_skip_verify: true,
            ..tls::ClientOptions::default()
        })
        .expect("config");
        let e = Client::new(Some(Arc::new(cfg)))
            .get_blocking(&format!("https://{addr}/metrics"), &[], T)
            .expect_err("not TLS");
        assert!(
            matches!(
                e,
                HttpError::Tls {
                    source: tls::HandshakeError::NotTls(_),
                    ..
                }
            ),
            "{e:?}"
        );
    }
}
