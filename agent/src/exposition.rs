//! Exposition formats: OpenMetrics text (what prometheus-client writes), the Prometheus
//! text format 0.0.4 (derived from it) and the Prometheus protobuf format (prometheus-client's
//! encoder; native histograms), chosen by the `Accept` header, optionally gzipped.

use std::io::Write as _;

use flate2::{Compression, write::GzEncoder};

pub const OPENMETRICS_CONTENT_TYPE: &str =
    "application/openmetrics-text; version=1.0.0; charset=utf-8";
pub const TEXT_CONTENT_TYPE: &str = "text/plain; version=0.0.4; charset=utf-8";
pub const PROTOBUF_CONTENT_TYPE: &str =
    "application/vnd.google.protobuf; proto=io.prometheus.client.MetricFamily; encoding=delimited";

/// The formats we serve.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    OpenMetrics,
    Text,
    /// Length-delimited `io.prometheus.client.MetricFamily` messages.
    Protobuf,
}

impl Format {
    pub fn content_type(self) -> &'static str {
        match self {
            Self::OpenMetrics => OPENMETRICS_CONTENT_TYPE,
            Self::Text => TEXT_CONTENT_TYPE,
            Self::Protobuf => PROTOBUF_CONTENT_TYPE,
        }
    }
}

/// Which histograms the protobuf exposition carries (`--web.histograms`). The text formats
/// always carry the classic buckets.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, clap::ValueEnum)]
pub enum Histograms {
    /// Classic buckets only, at the same edges as the text formats.
    Classic,
    /// Native histograms only: one series per histogram, every kernel bucket.
    #[default]
    Native,
    /// Both: Prometheus keeps both with `scrape_classic_histograms` (2.45+), else the native.
    Both,
}

static HISTOGRAMS: std::sync::OnceLock<Histograms> = std::sync::OnceLock::new();

/// Sets what the protobuf exposition carries, once, at start (`--web.histograms`). Later
/// calls are ignored.
pub fn set_histograms(h: Histograms) {
    let _ = HISTOGRAMS.set(h);
}

/// What the protobuf exposition carries: as set at start, else [`Histograms::Native`].
pub fn histograms() -> Histograms {
    HISTOGRAMS.get().copied().unwrap_or_default()
}

/// Encodes the registry as length-delimited protobuf `MetricFamily` messages, with the
/// histograms `hist` asks for: the collectors encode both kinds, this drops the other.
///
/// # Errors
/// If a collector's encoder fails.
pub fn encode_protobuf(
    registry: &prometheus_client::registry::Registry,
    hist: Histograms,
) -> Result<Vec<u8>, prometheus_client::encoding::prometheus_protobuf::EncodeError> {
    use prometheus_client::encoding::prometheus_protobuf::{encode, prometheus_data_model as pb};
    use prost::Message as _;
    let mut families = encode(registry)?;
    let mut out = Vec::with_capacity(64 * 1024);
    for family in &mut families {
        for h in family
            .metric
            .iter_mut()
            .filter_map(|m| m.histogram.as_mut())
        {
            match hist {
                Histograms::Native => h.bucket.clear(),
                Histograms::Classic => {
                    *h = pb::Histogram {
                        sample_count: h.sample_count,
                        sample_sum: h.sample_sum,
                        bucket: std::mem::take(&mut h.bucket),
                        ..pb::Histogram::default()
                    };
                }
                Histograms::Both => {}
            }
        }
        family.encode_length_delimited(&mut out)?;
    }
    Ok(out)
}

/// Whether one `Accept` entry (media type and parameters) is the Prometheus protobuf format:
/// `application/vnd.google.protobuf` with `proto=io.prometheus.client.MetricFamily` and
/// `encoding=delimited`.
fn is_protobuf(part: &str) -> bool {
    let mut params = part.split(';').map(str::trim);
    if !params
        .next()
        .is_some_and(|v| v.eq_ignore_ascii_case("application/vnd.google.protobuf"))
    {
        return false;
    }
    let (mut proto, mut delimited) = (false, false);
    for p in params {
        let Some((k, v)) = p.split_once('=') else {
            continue;
        };
        let v = v.trim().trim_matches('"');
        match k.trim().to_ascii_lowercase().as_str() {
            "proto" => proto = v == "io.prometheus.client.MetricFamily",
            "encoding" => delimited = v.eq_ignore_ascii_case("delimited"),
            _ => {}
        }
    }
    proto && delimited
}

/// One `Accept` or `Accept-Encoding` entry: value and quality.
fn entries(header: &str) -> impl Iterator<Item = (&str, f32)> {
    header.split(',').filter_map(|part| {
        let mut params = part.split(';').map(str::trim);
        let value = params.next().filter(|v| !v.is_empty())?;
        let mut q = 1.0_f32;
        for p in params {
            if let Some(v) = p.strip_prefix("q=").or_else(|| p.strip_prefix("Q=")) {
                q = v.trim().parse().unwrap_or(0.0);
            }
        }
        Some((value, q))
    })
}

/// Picks the format from an `Accept` header: protobuf when the client ranks it highest
/// (Prometheus does with native histograms on), OpenMetrics when the client ranks it at least
/// as high as plain text (Prometheus does), the Prometheus text format otherwise and by default.
pub fn negotiate(accept: Option<&str>) -> Format {
    let Some(accept) = accept else {
        return Format::Text;
    };
    let (mut om, mut text, mut pb) = (0.0_f32, 0.0_f32, 0.0_f32);
    for part in accept.split(',') {
        let Some((value, q)) = entries(part).next() else {
            continue;
        };
        let value = value.to_ascii_lowercase();
        if is_protobuf(part) {
            pb = pb.max(q);
        } else if value == "application/openmetrics-text" {
            om = om.max(q);
        } else if value == "text/plain" || value == "*/*" || value == "text/*" {
            text = text.max(q);
        }
    }
    if pb > 0.0 && pb >= om && pb >= text {
        Format::Protobuf
    } else if om > 0.0 && om >= text {
        Format::OpenMetrics
    } else {
        Format::Text
    }
}

/// Whether the client accepts gzip (`Accept-Encoding: gzip` with q > 0).
pub fn wants_gzip(accept_encoding: Option<&str>) -> bool {
    accept_encoding.is_some_and(|h| {
        entries(h).any(|(v, q)| (v.eq_ignore_ascii_case("gzip") || v == "*") && q > 0.0)
    })
}

/// Rewrites OpenMetrics text (as prometheus-client encodes it) into the Prometheus text
/// format 0.0.4: counter families are named with their `_total` suffix, `info` becomes a
/// gauge named `<name>_info`, `# UNIT` and `# EOF` lines go away. Samples are unchanged.
pub fn openmetrics_to_text(om: &str) -> String {
    let mut out = String::with_capacity(om.len());
    let mut pending_help: Option<&str> = None;
    for line in om.lines() {
        if let Some(rest) = line.strip_prefix("# HELP ") {
            pending_help = Some(rest);
            continue;
        }
        if let Some(rest) = line.strip_prefix("# TYPE ") {
            let (name, kind) = rest.rsplit_once(' ').unwrap_or((rest, "unknown"));
            let (name_suffix, new_kind) = match kind {
                "counter" => ("_total", "counter"),
                "info" => ("_info", "gauge"),
                "gaugehistogram" => ("", "histogram"),
                "stateset" => ("", "gauge"),
                "unknown" => ("", "untyped"),
                other => ("", other),
            };
            if let Some(help) = pending_help.take() {
                let text = help.strip_prefix(name).map_or(help, str::trim_start);
                out.push_str("# HELP ");
                out.push_str(name);
                out.push_str(name_suffix);
                out.push(' ');
                out.push_str(text);
                out.push('\n');
            }
            out.push_str("# TYPE ");
            out.push_str(name);
            out.push_str(name_suffix);
            out.push(' ');
            out.push_str(new_kind);
            out.push('\n');
            continue;
        }
        if line.starts_with("# UNIT ") || line == "# EOF" {
            continue;
        }
        out.push_str(line);
        out.push('\n');
    }
    out
}

/// gzip at a fast level: scrapes are frequent and the body compresses ~10x anyway.
pub fn gzip(body: &[u8]) -> std::io::Result<Vec<u8>> {
    let mut enc = GzEncoder::new(Vec::with_capacity(body.len() / 8 + 64), Compression::fast());
    enc.write_all(body)?;
    enc.finish()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn negotiation_table() {
        let prom3 = "application/openmetrics-text;version=1.0.0,application/openmetrics-text;version=0.0.1;q=0.75,text/plain;version=0.0.4;q=0.5,*/*;q=0.1";
        // Prometheus 2.42 with --enable-feature=native-histograms.
        let prom_native = "application/vnd.google.protobuf;proto=io.prometheus.client.MetricFamily;encoding=delimited;q=0.8,application/openmetrics-text;version=1.0.0;q=0.6,application/openmetrics-text;version=0.0.1;q=0.5,text/plain;version=0.0.4;q=0.3,*/*;q=0.2";
        // Prometheus 3 with scrape_protocols: [PrometheusProto, OpenMetricsText1.0.0, ...].
        let prom3_protobuf_first = "application/vnd.google.protobuf;proto=io.prometheus.client.MetricFamily;encoding=delimited;q=0.5,application/openmetrics-text;version=1.0.0;q=0.4,text/plain;version=0.0.4;q=0.3,*/*;q=0.1";
        let cases: &[(Option<&str>, Format)] = &[
            (None, Format::Text),
            (Some(""), Format::Text),
            (Some("*/*"), Format::Text),
            (Some("text/plain"), Format::Text),
            (Some(prom3), Format::OpenMetrics),
            (Some("application/openmetrics-text"), Format::OpenMetrics),
            (
                Some("application/openmetrics-text;q=0.2, text/plain;q=0.9"),
                Format::Text,
            ),
            (Some("application/openmetrics-text;q=0"), Format::Text),
            (Some("garbage;;;q=zz,,"), Format::Text),
            (Some(prom_native), Format::Protobuf),
            (Some(prom3_protobuf_first), Format::Protobuf),
            (
                Some("application/vnd.google.protobuf;proto=io.prometheus.client.MetricFamily"),
                Format::Text,
            ),
            (
                Some("application/vnd.google.protobuf;proto=other.Message;encoding=delimited"),
                Format::Text,
            ),
            (
                Some(
                    "application/vnd.google.protobuf;proto=io.prometheus.client.MetricFamily;encoding=delimited;q=0.1,text/plain;q=0.5",
                ),
                Format::Text,
            ),
        ];
        for (accept, want) in cases {
            assert_eq!(negotiate(*accept), *want, "Accept: {accept:?}");
        }
    }

    #[test]
    fn gzip_table() {
        let cases = [
            (None, false),
            (Some("gzip"), true),
            (Some("deflate, gzip;q=0.5"), true),
            (Some("gzip;q=0"), false),
            (Some("br"), false),
            (Some("*"), true),
        ];
        for (h, want) in cases {
            assert_eq!(wants_gzip(h), want, "Accept-Encoding: {h:?}");
        }
    }

    #[test]
    fn converts_openmetrics_to_text() {
        let om = "# HELP podstat_cpu_periods Enforcement periods.\n# TYPE podstat_cpu_periods counter\npodstat_cpu_periods_total{pod_uid=\"a\"} 5\n# HELP podstat_build podstat's version.\n# TYPE podstat_build info\npodstat_build_info{version=\"0.1.0\"} 1\n# HELP x_seconds Seconds.\n# TYPE x_seconds gauge\n# UNIT x_seconds seconds\nx_seconds 1.5\n# EOF\n";
        let want = "# HELP podstat_cpu_periods_total Enforcement periods.\n# TYPE podstat_cpu_periods_total counter\npodstat_cpu_periods_total{pod_uid=\"a\"} 5\n# HELP podstat_build_info podstat's version.\n# TYPE podstat_build_info gauge\npodstat_build_info{version=\"0.1.0\"} 1\n# HELP x_seconds Seconds.\n# TYPE x_seconds gauge\nx_seconds 1.5\n";
        assert_eq!(openmetrics_to_text(om), want);
    }

    #[test]
    fn gzip_round_trips() {
        use std::io::Read as _;
        let body = "podstat_x 1\n".repeat(100);
        let z = gzip(body.as_bytes()).expect("gzip");
        let mut back = String::new();
        flate2::read::GzDecoder::new(&z[..])
            .read_to_string(&mut back)
            .expect("gunzip");
        assert_eq!(back, body);
    }
}
