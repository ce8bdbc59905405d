//! A small parser for the Prometheus text format and OpenMetrics text, and a reader of the
//! Prometheus protobuf format (prometheus-client's generated messages): what `podstat top` and
//! `podstat explain` read from `--from URL` (and from the in-process registry), and what the
//! integration tests read from the agent. Both give the same [`Sample`]s: a native histogram
//! reads as classic buckets at every one of its bucket edges, so the views see the kernel's
//! full resolution whichever way the histogram came.

use std::collections::BTreeMap;

/// One sample line: metric name (with any `_total`, `_bucket`, `_sum`, `_count` suffix),
/// labels and value.
#[derive(Debug, Clone, PartialEq)]
pub struct Sample {
    pub name: String,
    pub labels: BTreeMap<String, String>,
    pub value: f64,
}

impl Sample {
    /// The value of label `key`, or `""`.
    pub fn label(&self, key: &str) -> &str {
        self.labels.get(key).map_or("", String::as_str)
    }
}

/// Parses Prometheus/OpenMetrics text samples; comments and blank lines are skipped, an
/// unparsable value reads as NaN. Timestamps and exemplars are ignored.
pub fn parse(text: &str) -> Vec<Sample> {
    let mut out = Vec::new();
    for line in text.lines() {
        if line.starts_with('#') || line.trim().is_empty() {
            continue;
        }
        let (name, rest) = match line.find('{') {
            Some(i) => (&line[..i], &line[i..]),
            None => line.split_once(' ').map_or((line, ""), |(n, r)| (n, r)),
        };
        let mut labels = BTreeMap::new();
        let value_part = if let Some(stripped) = rest.strip_prefix('{') {
            let end = label_end(stripped);
            parse_labels(&stripped[..end], &mut labels);
            stripped.get(end + 1..).unwrap_or("")
        } else {
            rest
        };
        let value = value_part
            .split_whitespace()
            .next()
            .and_then(parse_value)
            .unwrap_or(f64::NAN);
        out.push(Sample {
            name: name.trim().to_owned(),
            labels,
            value,
        });
    }
    out
}

/// Decodes length-delimited `io.prometheus.client.MetricFamily` messages into the samples the
/// text format would have: counters, gauges and untyped values under the family's name, and
/// histograms as `_sum`, `_count` and cumulative `_bucket{le}`. A native histogram's buckets
/// become `le` buckets at its zero threshold and at the upper edge of each populated bucket
/// (and +Inf); classic buckets are taken as they are.
///
/// # Errors
/// If the body is not such messages.
pub fn parse_protobuf(body: &[u8]) -> Result<Vec<Sample>, prost::DecodeError> {
    let mut out = Vec::new();
    for family in decode_families(body)? {
        for m in &family.metric {
            let labels = labels_of(m);
            let mut push = |suffix: &str, extra: Option<(&str, String)>, value: f64| {
                let mut labels = labels.clone();
                if let Some((k, v)) = extra {
                    labels.insert(k.to_owned(), v);
                }
                out.push(Sample {
                    name: format!("{}{suffix}", family.name),
                    labels,
                    value,
                });
            };
            if let Some(h) = &m.histogram {
                #[expect(clippy::cast_precision_loss, reason = "counts below 2^53")]
                let count = h.sample_count as f64;
                push("_sum", None, h.sample_sum);
                push("_count", None, count);
                for (le, cum) in histogram_buckets(h) {
                    push("_bucket", Some(("le", format_le(le))), cum);
                }
            } else if let Some(c) = &m.counter {
                push("", None, c.value);
            } else if let Some(g) = &m.gauge {
                push("", None, g.value);
            } else if let Some(u) = &m.untyped {
                push("", None, u.value);
            }
        }
    }
    Ok(out)
}

/// A series' label set, `__name__` included.
pub type Labels = BTreeMap<String, String>;

/// The series a protobuf body holds as Prometheus stores them, each as its label set with
/// `__name__`: one per counter, gauge or native histogram; a classic histogram gives one per
/// bucket (`_bucket` with `le`) plus `_sum` and `_count`. What the series budget counts.
///
/// # Errors
/// If the body is not length-delimited `MetricFamily` messages.
pub fn protobuf_series(body: &[u8]) -> Result<Vec<Labels>, prost::DecodeError> {
    let mut out = Vec::new();
    for family in decode_families(body)? {
        for m in &family.metric {
            let labels = labels_of(m);
            let named = |name: String, le: Option<String>| {
                let mut l = labels.clone();
                l.insert("__name__".into(), name);
                if let Some(le) = le {
                    l.insert("le".into(), le);
                }
                l
            };
            match &m.histogram {
                Some(h)
                    if h.positive_span.is_empty()
                        && h.zero_threshold == 0.0
                        && h.zero_count == 0 =>
                {
                    for b in &h.bucket {
                        out.push(named(
                            format!("{}_bucket", family.name),
                            Some(format_le(b.upper_bound)),
                        ));
                    }
                    out.push(named(format!("{}_sum", family.name), None));
                    out.push(named(format!("{}_count", family.name), None));
                }
                _ => out.push(named(family.name.clone(), None)),
            }
        }
    }
    Ok(out)
}

/// Cumulative buckets `(upper bound, count)` of a protobuf histogram, +Inf last.
fn histogram_buckets(
    h: &prometheus_client::encoding::prometheus_protobuf::prometheus_data_model::Histogram,
) -> Vec<(f64, f64)> {
    #[expect(clippy::cast_precision_loss, reason = "counts below 2^53")]
    let f = |n: u64| n as f64;
    let native = !h.positive_span.is_empty() || h.zero_threshold > 0.0 || h.zero_count > 0;
    let mut out = Vec::new();
    if native {
        let mut cum = h.zero_count;
        out.push((h.zero_threshold, f(cum)));
        // The body is the agent's or anyone's: saturate rather than overflow, and end the
        // buckets with the deltas (spans longer than the deltas they come with are malformed,
        // and a span of 2^32 - 1 buckets would otherwise be filled in one by one).
        let (mut index, mut count, mut deltas) = (0i32, 0i64, h.positive_delta.iter());
        'spans: for span in &h.positive_span {
            index = index.saturating_add(span.offset);
            for _ in 0..span.length {
                let Some(delta) = deltas.next() else {
                    break 'spans;
                };
                count = count.saturating_add(*delta);
                cum = cum.saturating_add(u64::try_from(count).unwrap_or(0));
                out.push((
                    crate::collector::family::native_bound(h.schema, index),
                    f(cum),
                ));
                index = index.saturating_add(1);
            }
        }
        out.push((f64::INFINITY, f(h.sample_count)));
    } else {
        out.extend(
            h.bucket
                .iter()
                .map(|b| (b.upper_bound, f(b.cumulative_count))),
        );
        if out.last().is_none_or(|b| b.0 != f64::INFINITY) {
            out.push((f64::INFINITY, f(h.sample_count)));
        }
    }
    out
}

/// An `le` label value as the text format writes it.
fn format_le(le: f64) -> String {
    if le == f64::INFINITY {
        "+Inf".into()
    } else {
        format!("{le:?}")
    }
}

fn parse_value(v: &str) -> Option<f64> {
    match v {
        "+Inf" => Some(f64::INFINITY),
        "-Inf" => Some(f64::NEG_INFINITY),
        _ => v.parse().ok(),
    }
}

fn label_end(s: &str) -> usize {
    let mut in_str = false;
    let mut esc = false;
    for (i, c) in s.char_indices() {
        match c {
            _ if esc => esc = false,
            '\\' => esc = true,
            '"' => in_str = !in_str,
            '}' if !in_str => return i,
            _ => {}
        }
    }
    s.len()
}

fn parse_labels(s: &str, out: &mut BTreeMap<String, String>) {
    let mut rest = s;
    while let Some(eq) = rest.find('=') {
        let key = rest[..eq].trim_start_matches(',').trim().to_owned();
        let Some(body) = rest[eq + 1..].strip_prefix('"') else {
            break;
        };
        let mut val = String::new();
        let mut chars = body.char_indices();
        let mut end = body.len();
        while let Some((i, c)) = chars.next() {
            match c {
                '\\' => {
                    if let Some((_, n)) = chars.next() {
                        val.push(if n == 'n' { '\n' } else { n });
                    }
                }
                '"' => {
                    end = i;
                    break;
                }
                _ => val.push(c),
            }
        }
        out.insert(key, val);
        rest = body.get(end + 1..).unwrap_or("");
    }
}

/// The length-delimited `MetricFamily` messages of a protobuf body.
fn decode_families(
    mut body: &[u8],
) -> Result<
    Vec<prometheus_client::encoding::prometheus_protobuf::prometheus_data_model::MetricFamily>,
    prost::DecodeError,
> {
    use prometheus_client::encoding::prometheus_protobuf::prometheus_data_model::MetricFamily;
    use prost::Message as _;
    let mut families = Vec::new();
    while !body.is_empty() {
        families.push(MetricFamily::decode_length_delimited(&mut body)?);
    }
    Ok(families)
}

/// A protobuf metric's labels.
fn labels_of(
    m: &prometheus_client::encoding::prometheus_protobuf::prometheus_data_model::Metric,
) -> Labels {
    m.label
        .iter()
        .map(|l| (l.name.clone(), l.value.clone()))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn protobuf_reads_like_text() {
        use prometheus_client::encoding::prometheus_protobuf::prometheus_data_model::{
            BucketSpan, Counter, Histogram, LabelPair, Metric, MetricFamily, MetricType,
        };
        use prost::Message as _;
        let label = |k: &str, v: &str| LabelPair {
            name: k.into(),
            value: v.into(),
        };
        let families = [
            MetricFamily {
                name: "x_total".into(),
                r#type: MetricType::Counter as i32,
                metric: vec![Metric {
                    label: vec![label("a", "1")],
                    counter: Some(Counter {
                        value: 5.0,
                        ..Counter::default()
                    }),
                    ..Metric::default()
                }],
                ..MetricFamily::default()
            },
            MetricFamily {
                name: "h_seconds".into(),
                r#type: MetricType::Histogram as i32,
                metric: vec![Metric {
                    histogram: Some(Histogram {
                        sample_count: 7,
                        sample_sum: 0.5,
                        schema: 2,
                        zero_threshold: 2f64.powi(-20),
                        zero_count: 1,
                        // Buckets -4 (2^-1 s) and -3, then 0 (1 s): counts 2, 1, 3.
                        positive_span: vec![
                            BucketSpan {
                                offset: -4,
                                length: 2,
                            },
                            BucketSpan {
                                offset: 2,
                                length: 1,
                            },
                        ],
                        positive_delta: vec![2, -1, 2],
                        ..Histogram::default()
                    }),
                    ..Metric::default()
                }],
                ..MetricFamily::default()
            },
        ];
        let mut body = Vec::new();
        for f in &families {
            f.encode_length_delimited(&mut body).expect("encode");
        }
        crate::util::fuzz_seed("expo_protobuf", "counter-and-native-histogram", &body);
        let s = parse_protobuf(&body).expect("decode");
        assert_eq!(s[0].name, "x_total");
        assert_eq!(s[0].label("a"), "1");
        let buckets: Vec<(String, f64)> = s
            .iter()
            .filter(|s| s.name == "h_seconds_bucket")
            .map(|s| (s.label("le").to_owned(), s.value))
            .collect();
        let want: Vec<(String, f64)> = [
            (format_le(2f64.powi(-20)), 1.0),
            ("0.5".into(), 3.0),
            (
                format_le(crate::collector::family::native_bound(2, -3)),
                4.0,
            ),
            ("1.0".into(), 7.0),
            ("+Inf".into(), 7.0),
        ]
        .into_iter()
        .collect();
        assert_eq!(buckets, want);
        assert!(
            s.iter()
                .any(|s| s.name == "h_seconds_count" && (s.value - 7.0).abs() < f64::EPSILON)
        );
        assert!(parse_protobuf(b"\x05garbage").is_err());
    }

    /// Found reading `histogram_buckets` with the `expo_protobuf` target's harness, replayed
    /// by the fuzz binary: native histograms whose bucket index or count overflowed, whose
    /// schema overflowed `native_bound`, and a span of 2^32 - 1 buckets with one delta (kept in
    /// `fuzz/corpus/expo_protobuf/crash-*`).
    #[test]
    fn fuzz_crash_native_histograms() {
        for (name, buckets) in [
            ("crash-index-overflow", 2),
            ("crash-delta-overflow", 2),
            ("crash-schema-min", 1),
            ("crash-span-length-max", 1),
        ] {
            let body = crate::util::fuzz_input("expo_protobuf", name);
            let s = parse_protobuf(&body).unwrap_or_else(|e| panic!("{name}: {e}"));
            let got = s.iter().filter(|s| s.name == "h_bucket").count();
            // The zero bucket, one per delta, and +Inf.
            assert_eq!(got, 1 + buckets + 1, "{name}");
            assert!(protobuf_series(&body).is_ok(), "{name}");
        }
    }

    #[test]
    fn parses_both_formats() {
        let text = "# HELP x X.\n# TYPE x counter\nx_total{a=\"1\",b=\"q\\\"uo,te}\"} 5\nplain 2.5\nh_bucket{le=\"+Inf\"} 3\n\nbad{a=\"1\"} nope\n# EOF\n";
        let s = parse(text);
        assert_eq!(s.len(), 4);
        assert_eq!(s[0].name, "x_total");
        assert_eq!(s[0].label("a"), "1");
        assert_eq!(s[0].label("b"), "q\"uo,te}");
        assert!((s[0].value - 5.0).abs() < f64::EPSILON);
        assert_eq!(s[1].name, "plain");
        assert!(s[1].labels.is_empty());
        assert_eq!(s[2].label("le"), "+Inf");
        assert!(s[3].value.is_nan());
        assert_eq!(s[0].label("missing"), "");
    }
}
