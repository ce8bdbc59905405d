//! A small parser for the Prometheus text format and OpenMetrics text: what `podstat top` and
//! `podstat explain` read from `--from URL` (and from the in-process registry), and what the
//! integration tests read from the agent.

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

#[cfg(test)]
mod tests {
    use super::*;

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
