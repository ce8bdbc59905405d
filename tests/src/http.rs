//! The one HTTP GET of the tests and the benches: the agent's own hyper client
//! (`podstat::http`), with the response in the shape the tests assert on.

use std::{
    net::{SocketAddr, TcpListener},
    time::Duration,
};

use crate::{Sample, parse_exposition};

/// A free loopback port.
pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("binding an ephemeral loopback port")
}

/// An HTTP response.
pub struct Response {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
}

impl Response {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }
    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }
}

/// GET `path` on `addr` with extra request headers, through the agent's own client
/// (`podstat::http`, hyper), bounded to 10 s. A chunked body is decoded by hyper; a gzip body is
/// returned as sent.
///
/// # Errors
/// Connecting, the exchange or the body failed, or took longer than 10 s.
pub fn http_get(
    addr: SocketAddr,
    path: &str,
    headers: &[(&str, &str)],
) -> std::io::Result<Response> {
    get_url(
        &podstat::http::Client::default(),
        &format!("http://{addr}{path}"),
        headers,
    )
}

/// GET `url` through `client` (TLS for https URLs), bounded to 10 s, as [`http_get`].
///
/// # Errors
/// Connecting, TLS, the exchange or the body failed, or took longer than 10 s.
pub fn get_url(
    client: &podstat::http::Client,
    url: &str,
    headers: &[(&str, &str)],
) -> std::io::Result<Response> {
    let r = client
        .get_blocking(url, headers, Duration::from_secs(10))
        .map_err(|e| std::io::Error::other(podstat::util::chain(&e)))?;
    Ok(Response {
        status: r.status.as_u16(),
        headers: r
            .headers
            .iter()
            .map(|(k, v)| {
                (
                    k.as_str().to_owned(),
                    String::from_utf8_lossy(v.as_bytes()).into_owned(),
                )
            })
            .collect(),
        body: r.body.to_vec(),
    })
}

/// What [`scrape`] asks for: protobuf, whose native histograms carry every kernel bucket (the
/// tests' quantiles need them), the text format otherwise.
pub const SCRAPE_ACCEPT: &str = "application/vnd.google.protobuf;proto=io.prometheus.client.MetricFamily;encoding=delimited;q=0.9,text/plain;version=0.0.4;q=0.5";

/// The samples of a `/metrics` answer, protobuf or text (by its content type); a native
/// histogram reads as classic buckets at every kernel edge ([`podstat::view::expo`]).
///
/// # Errors
/// If a protobuf body does not decode.
pub fn samples_of(r: &Response) -> std::io::Result<Vec<Sample>> {
    if r.header("content-type")
        .is_some_and(|t| t.starts_with("application/vnd.google.protobuf"))
    {
        podstat::view::expo::parse_protobuf(&r.body).map_err(std::io::Error::other)
    } else {
        Ok(parse_exposition(&r.text()))
    }
}

/// Scrapes `/metrics` (protobuf, see [`SCRAPE_ACCEPT`]) and parses it, panicking with context
/// on failure.
pub fn scrape(addr: SocketAddr) -> Vec<Sample> {
    let r = http_get(addr, "/metrics", &[("accept", SCRAPE_ACCEPT)])
        .unwrap_or_else(|e| panic!("scraping {addr}: {e}"));
    assert_eq!(r.status, 200, "/metrics answered {}", r.status);
    samples_of(&r).unwrap_or_else(|e| panic!("scraping {addr}: {e}"))
}
