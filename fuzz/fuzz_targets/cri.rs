//! CRI responses as the runtime's socket returns them: a gRPC frame (`unframe`) holding a
//! `ListPodSandboxResponse` or a `ListContainersResponse` (the same bytes are decoded as
//! both), joined into a snapshot. Properties: a decoded message re-encoded (and re-framed)
//! decodes to itself; the snapshot holds only what the messages said.
#![no_main]

use libfuzzer_sys::fuzz_target;
use podstat::metadata::cri::{
    api::{ListContainersResponse, ListPodSandboxResponse},
    frame, join, unframe,
};
use prost::Message;

/// `msg` through the encoder and back, framed and bare.
fn round_trip<M: Message + Default + PartialEq + std::fmt::Debug>(msg: &M) {
    let framed = frame(msg);
    let inner = unframe(&framed).expect("a frame of ours unframes");
    assert_eq!(inner, msg.encode_to_vec().as_slice());
    let again = M::decode(inner).expect("what we encoded decodes");
    assert_eq!(&again, msg);
}

fuzz_target!(|data: &[u8]| {
    let Ok(msg) = unframe(data) else {
        return;
    };
    let sandboxes = ListPodSandboxResponse::decode(msg).ok();
    let containers = ListContainersResponse::decode(msg).ok();
    if let Some(s) = &sandboxes {
        round_trip(s);
    }
    if let Some(c) = &containers {
        round_trip(c);
    }
    let sandboxes = sandboxes.unwrap_or_default();
    let containers = containers.unwrap_or_default();
    let snap = join(&sandboxes, &containers);
    for (uid, meta) in &snap.pods {
        // The last sandbox with this uid names the pod.
        let m = sandboxes
            .items
            .iter()
            .rev()
            .find_map(|s| s.metadata.as_ref().filter(|m| &m.uid == uid))
            .expect("a pod of the snapshot comes from a sandbox");
        assert!(!uid.is_empty());
        assert_eq!((&m.name, &m.namespace), (&meta.name, &meta.namespace));
    }
    for id in snap.containers.keys() {
        assert!(containers.containers.iter().any(|c| &c.id == id));
    }
    assert!(snap.sandboxes.len() <= sandboxes.items.len());
});
