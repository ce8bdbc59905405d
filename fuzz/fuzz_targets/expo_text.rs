//! The Prometheus / OpenMetrics text a view reads from `--from URL`. Properties: one sample
//! per line that is neither blank nor a comment; a sample whose name and labels are plain
//! reads back from its rendering with the same name, labels and value.
#![no_main]

use std::fmt::Write as _;

use libfuzzer_sys::fuzz_target;
use podstat::view::expo::{Sample, parse};

/// Renders `s` as a text-format line, if its name and label names need no quoting.
fn render(s: &Sample) -> Option<String> {
    let plain = |n: &str| {
        !n.is_empty()
            && n.bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b':')
    };
    if !plain(&s.name) || !s.labels.keys().all(|k| plain(k)) {
        return None;
    }
    let mut out = s.name.clone();
    if !s.labels.is_empty() {
        out.push('{');
        for (i, (k, v)) in s.labels.iter().enumerate() {
            let v = v
                .replace('\\', "\\\\")
                .replace('"', "\\\"")
                .replace('\n', "\\n");
            let _ = write!(out, "{}{k}=\"{v}\"", if i > 0 { "," } else { "" });
        }
        out.push('}');
    }
    let _ = write!(out, " {:?}", s.value);
    Some(out)
}

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let samples = parse(text);
    let lines = text
        .lines()
        .filter(|l| !l.starts_with('#') && !l.trim().is_empty())
        .count();
    assert_eq!(samples.len(), lines);
    for s in &samples {
        let Some(line) = render(s) else { continue };
        let again = parse(&line);
        assert_eq!(again.len(), 1, "{line:?}");
        let a = &again[0];
        assert_eq!((&a.name, &a.labels), (&s.name, &s.labels), "{line:?}");
        assert!(
            a.value.to_bits() == s.value.to_bits() || (a.value.is_nan() && s.value.is_nan()),
            "{line:?}: {} then {}",
            s.value,
            a.value
        );
    }
});
