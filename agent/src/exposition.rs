//! Exposition formats: OpenMetrics text (what prometheus-client writes) and the Prometheus
//! text format 0.0.4 (derived from it), chosen by the `Accept` header, optionally gzipped.

use std::io::Write as _;

use flate2::{Compression, write::GzEncoder};

pub const OPENMETRICS_CONTENT_TYPE: &str =
    "application/openmetrics-text; version=1.0.0; charset=utf-8";
pub const TEXT_CONTENT_TYPE: &str = "text/plain; version=0.0.4; charset=utf-8";

/// The two text formats we serve.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    OpenMetrics,
    Text,
}

impl Format {
    pub fn content_type(self) -> &'static str {
        match self {
            Self::OpenMetrics => OPENMETRICS_CONTENT_TYPE,
            Self::Text => TEXT_CONTENT_TYPE,
        }
    }
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

/// Picks the format from an `Accept` header: OpenMetrics when the client ranks it at least as
/// high as plain text (Prometheus does), the Prometheus text format otherwise and by default.
pub fn negotiate(accept: Option<&str>) -> Format {
    let Some(accept) = accept else {
        return Format::Text;
    };
    let (mut om, mut text) = (0.0_f32, 0.0_f32);
    for (value, q) in entries(accept) {
        let value = value.to_ascii_lowercase();
        if value == "application/openmetrics-text" {
            om = om.max(q);
        } else if value == "text/plain" || value == "*/*" || value == "text/*" {
            text = text.max(q);
        }
    }
    if om > 0.0 && om >= text {
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
