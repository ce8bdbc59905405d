//! The Prometheus protobuf format a view reads from `--from URL` (length-delimited
//! `MetricFamily` messages), through both readers: samples and series. Properties: the two
//! readers accept the same bodies; the families re-encoded give the same samples and series.
#![no_main]

use libfuzzer_sys::fuzz_target;
use podstat::view::expo::{Sample, parse_protobuf, protobuf_series};
use prometheus_client::encoding::prometheus_protobuf::prometheus_data_model::MetricFamily;
use prost::Message as _;

/// The same samples. Numbers compare as numbers (values, and `le` labels): the encoder leaves
/// out a field equal to its default, so a -0.0 read from the body comes back as 0.0.
fn same(a: &[Sample], b: &[Sample]) -> bool {
    let number = |x: f64, y: f64| x == y || (x.is_nan() && y.is_nan());
    let le = |x: &str, y: &str| match (x.parse::<f64>(), y.parse::<f64>()) {
        (Ok(x), Ok(y)) => number(x, y),
        _ => x == y,
    };
    a.len() == b.len()
        && a.iter().zip(b).all(|(x, y)| {
            x.name == y.name
                && number(x.value, y.value)
                && x.labels.len() == y.labels.len()
                && x.labels
                    .iter()
                    .zip(&y.labels)
                    .all(|((k, v), (k2, v2))| k == k2 && (v == v2 || (k == "le" && le(v, v2))))
        })
}

fuzz_target!(|data: &[u8]| {
    let samples = parse_protobuf(data);
    let series = protobuf_series(data);
    assert_eq!(samples.is_ok(), series.is_ok());
    let (Ok(samples), Ok(series)) = (samples, series) else {
        return;
    };
    let mut body = data;
    let mut again = Vec::new();
    while !body.is_empty() {
        MetricFamily::decode_length_delimited(&mut body)
            .expect("decodes as it did in parse_protobuf")
            .encode_length_delimited(&mut again)
            .expect("a Vec grows");
    }
    assert!(same(&parse_protobuf(&again).expect("re-encoded"), &samples));
    assert_eq!(protobuf_series(&again).expect("re-encoded"), series);
});
