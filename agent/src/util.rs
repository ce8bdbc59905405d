//! The leaf of the agent's layers: error chains, duration parsing and the kernel release.
//! Everything may import this module; it imports nothing of the agent's.

use std::{fmt::Write as _, time::Duration};

/// An error with its sources, joined by ": ".
pub fn chain(e: &dyn std::error::Error) -> String {
    let mut s = e.to_string();
    let mut src = e.source();
    while let Some(cause) = src {
        let _ = write!(s, ": {cause}");
        src = cause.source();
    }
    s
}

/// Why a duration flag was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DurationError {
    #[error("{0:?} is not a duration like 5s or 250ms")]
    NotANumber(String),
    #[error("unknown unit {unit:?} in {input:?}; use ms, s or m")]
    UnknownUnit { unit: String, input: String },
    #[error("{0:?} must be between 1ms and 1h")]
    OutOfRange(String),
}

/// Parses `250ms`, `5s`, `1m` or a bare number of seconds, between 1 ms and 1 h.
pub fn parse_duration(s: &str) -> Result<Duration, DurationError> {
    let s = s.trim();
    let (num, unit) = s
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .map_or((s, "s"), |i| s.split_at(i));
    let v: f64 = num
        .parse()
        .map_err(|_| DurationError::NotANumber(s.to_owned()))?;
    let secs = match unit {
        "ms" => v / 1000.0,
        "s" => v,
        "m" => v * 60.0,
        _ => {
            return Err(DurationError::UnknownUnit {
                unit: unit.to_owned(),
                input: s.to_owned(),
            });
        }
    };
    if !(secs.is_finite() && secs > 0.0 && secs <= 3600.0) {
        return Err(DurationError::OutOfRange(s.to_owned()));
    }
    Ok(Duration::from_secs_f64(secs))
}

/// As [`parse_duration`], and `0`, `0s` or `0ms` for "every time".
pub fn parse_duration_or_zero(s: &str) -> Result<Duration, DurationError> {
    if s.trim().trim_end_matches(['m', 's']).trim() == "0" {
        return Ok(Duration::ZERO);
    }
    parse_duration(s)
}

/// The running kernel's release, as `uname -r` prints it.
pub fn kernel_release() -> String {
    nix::sys::utsname::uname().map_or_else(
        |_| "unknown".into(),
        |u| u.release().to_string_lossy().into_owned(),
    )
}

/// Makes every thread allocate from one glibc arena. By default glibc gives threads arenas of
/// their own (up to 8 per CPU); the tokio blocking pool's threads come and go, and freed memory
/// stays behind in arenas no thread uses any more: under pod churn the RSS grew by about
/// 140 bytes per container cgroup (10,000 churned, tests/churn.rs), and with one arena it is
/// flat. The agent's few threads barely contend for it. Call before any thread starts; a no-op
/// on other C libraries.
pub fn one_malloc_arena() {
    #[cfg(target_env = "gnu")]
    // SAFETY: mallopt only sets an allocator parameter; called before other threads exist.
    unsafe {
        libc::mallopt(libc::M_ARENA_MAX, 1);
    }
}

/// Gives the heap's free memory back to the kernel (glibc keeps freed memory in each thread's
/// arena, and a long-running process that frees as much as it allocates still grows its RSS
/// that way). A no-op on other C libraries.
pub fn release_free_memory() {
    #[cfg(target_env = "gnu")]
    // SAFETY: malloc_trim only releases free heap memory; no pointer is invalidated.
    unsafe {
        libc::malloc_trim(0);
    }
}

/// The fuzz targets' seed corpus (`fuzz/corpus/<target>/<name>`): binary seeds are made by
/// the unit tests that build them (a framed CRI response, BTF, netlink replies), and this keeps
/// the files in the repository equal to what the tests build. `UPDATE_SNAPSHOTS=1 cargo test
/// -p podstat` writes them.
#[cfg(test)]
pub fn fuzz_seed(target: &str, name: &str, bytes: &[u8]) {
    let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../fuzz/corpus")
        .join(target)
        .join(name);
    if std::env::var_os("UPDATE_SNAPSHOTS").is_some_and(|v| v == "1") {
        std::fs::create_dir_all(path.parent().expect("a corpus dir")).expect("corpus dir");
        std::fs::write(&path, bytes).expect("writing the seed");
        return;
    }
    let kept = std::fs::read(&path).unwrap_or_else(|e| {
        panic!(
            "{}: {e} (UPDATE_SNAPSHOTS=1 cargo test -p podstat writes it)",
            path.display()
        )
    });
    assert!(
        kept == bytes,
        "{} differs from what the test builds (UPDATE_SNAPSHOTS=1 cargo test -p podstat rewrites it)",
        path.display()
    );
}

/// A crash input the fuzzer found, kept in the corpus, for the regression test that replays
/// it: `fuzz/corpus/<target>/<name>`.
#[cfg(test)]
pub fn fuzz_input(target: &str, name: &str) -> Vec<u8> {
    let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../fuzz/corpus")
        .join(target)
        .join(name);
    std::fs::read(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations() {
        assert_eq!(parse_duration("5s"), Ok(Duration::from_secs(5)));
        assert_eq!(parse_duration("250ms"), Ok(Duration::from_millis(250)));
        assert_eq!(parse_duration("2"), Ok(Duration::from_secs(2)));
        assert_eq!(parse_duration("1m"), Ok(Duration::from_mins(1)));
        for bad in ["", "x", "abc", "nanms", "5h", "0s", "2m0", "-1s", "61m"] {
            assert!(parse_duration(bad).is_err(), "{bad:?} accepted");
        }
        for zero in ["0", "0s", "0ms", " 0 "] {
            assert_eq!(parse_duration_or_zero(zero), Ok(Duration::ZERO), "{zero:?}");
        }
        assert_eq!(parse_duration_or_zero("10s"), Ok(Duration::from_secs(10)));
    }

    #[test]
    fn chains_join_sources() {
        #[derive(Debug, thiserror::Error)]
        #[error("outer")]
        struct Outer(#[source] std::io::Error);
        let inner = std::io::Error::other("inner");
        assert_eq!(chain(&Outer(inner)), "outer: inner");
    }
}
