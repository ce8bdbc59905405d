//! Generic netlink answers from the kernel: one datagram (the reply to request 1) split into
//! messages (`read_datagram`), whose payloads are read as an ethtool `FEATURES_GET` reply and
//! as a netdev qstats dump. Properties: no panic; every payload lies inside the datagram;
//! attributes re-encoded with `put_attr` read back the same.
#![no_main]

use libfuzzer_sys::fuzz_target;
use podstat::netdev::{
    ethtool::parse_features,
    genl::{attrs_of, put_attr, read_datagram, uint},
    qstats::parse_qstats,
};

fuzz_target!(|data: &[u8]| {
    let mut payloads = Vec::new();
    let _ = read_datagram(data, 1, &mut payloads);
    assert!(payloads.iter().map(Vec::len).sum::<usize>() <= data.len());
    for p in &payloads {
        let _ = parse_features(p);
        let attrs: Vec<(u16, &[u8])> = attrs_of(p).collect();
        let mut again = Vec::new();
        for (kind, value) in &attrs {
            put_attr(&mut again, *kind, value);
            let _ = uint(value);
        }
        let reread: Vec<(u16, &[u8])> = attrs_of(&again).collect();
        assert_eq!(reread, attrs);
    }
    let _ = parse_qstats(&payloads);
    // The input as attributes too: the replies' payloads are attribute lists.
    let _ = parse_features(data);
});
