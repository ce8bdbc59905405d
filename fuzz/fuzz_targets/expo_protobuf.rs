//! The Prometheus protobuf format a view reads from `--from URL` (length-delimited
//! `MetricFamily` messages), through both readers: samples and series. Properties: the two
//! readers accept the same bodies; the families re-encoded give the same samples and series.
#![no_main]

use libfuzzer_sys::fuzz_target;
use podstat::view::expo::{Sample, parse_protobuf, protobuf_series};
use prometheus_client::encoding::prometheus_protobuf::prometheus_data_model::MetricFamily;
use prost::Message as _;

/// The same samples. Values compare as numbers: the encoder leaves out a field equal to its
/// default, so a -0.0 read from the body comes back as 0.0.
fn same(a: &[Sample], b: &[Sample]) -> bool {
    a.len() == b.len()
        && a.iter().zip(b).all(|(x, y)| {
            x.name == y.name
                && x.labels == y.labels
                && (x.value == y.value || (x.value.is_nan() && y.value.is_nan()))
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
