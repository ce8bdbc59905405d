//! The kubelet's `/pods` JSON (a PodList). Properties: no panic; every pod and container in
//! the snapshot has a non-empty key, and container ids have their runtime prefix removed.
#![no_main]

use libfuzzer_sys::fuzz_target;
use podstat::metadata::kubelet::parse_pods;

fuzz_target!(|data: &[u8]| {
    let Ok(snap) = parse_pods(data) else {
        return;
    };
    assert!(snap.pods.keys().all(|uid| !uid.is_empty()));
    assert!(snap.containers.keys().all(|id| !id.is_empty()));
    assert!(
        snap.sandboxes.is_empty(),
        "the kubelet lists no sandbox ids"
    );
});
