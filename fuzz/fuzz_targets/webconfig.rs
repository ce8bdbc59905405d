//! `--web.config.file` (exporter-toolkit YAML) and the `Authorization: Basic` header the
//! endpoint reads from every request. Properties: no panic; a config that loads has only
//! bcrypt hashes; credentials encoded as a client would send them decode to themselves.
//!
//! The config is parsed relative to a directory that does not exist, so relative certificate
//! paths cannot open anything. Inputs that could name a device or a pseudo-file (`/dev/zero`
//! would never end) are skipped: ones spelling `dev`, `proc`, `sys` or `run`, and ones with
//! YAML escapes (`\`) or tags (`!`, e.g. `!!binary`) that could spell them otherwise.
#![no_main]

use std::path::Path;

use base64::Engine as _;
use libfuzzer_sys::fuzz_target;
use podstat::webconfig::{WebConfig, basic_credentials};

fn may_open_a_device(text: &str) -> bool {
    text.contains(['\\', '!'])
        || ["dev", "proc", "sys", "run"]
            .iter()
            .any(|w| text.contains(w))
}

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    for line in text.lines() {
        let _ = basic_credentials(line);
        // The line as a user and password (the user ends at the first ':').
        let (user, password) = line.split_once(':').unwrap_or((line, ""));
        let header = format!(
            "Basic {}",
            base64::engine::general_purpose::STANDARD.encode(format!("{user}:{password}"))
        );
        assert_eq!(
            basic_credentials(&header),
            Some((user.to_owned(), password.to_owned()))
        );
    }
    if may_open_a_device(text) {
        return;
    }
    for health_open in [false, true] {
        if let Ok(c) = WebConfig::parse(text, Path::new("/nonexistent/web.yml"), health_open) {
            assert!(c.users.values().all(|h| h.starts_with('$')));
        }
    }
});
