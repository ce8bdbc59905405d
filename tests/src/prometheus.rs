//! A Prometheus of our own, scraping the agent with the shipped rules, for the end-to-end
//! test and the node scenario. Stopped and its directory removed by `Drop`.

use std::{
    fmt::Write as _,
    fs,
    net::SocketAddr,
    path::Path,
    process::{Command, Stdio},
    thread,
    time::{Duration, Instant},
};

use serde_json::Value;

use crate::{Proc, free_port, http_get, rules};

/// A Prometheus we started, with its data directory.
pub struct Prometheus {
    pub addr: SocketAddr,
    proc: Proc,
    dir: std::path::PathBuf,
}

impl Drop for Prometheus {
    fn drop(&mut self) {
        self.proc.stop(libc::SIGTERM, Duration::from_secs(10));
        let _ = fs::remove_dir_all(&self.dir);
    }
}

impl Prometheus {
    /// Starts Prometheus scraping `target` every 2 s as job `podstat`, with the shipped
    /// rules (their `for:` shortened to 10 s). Panics with its log if it is not ready in 30 s.
    /// `native`: with `--enable-feature=native-histograms` (Prometheus then asks for protobuf
    /// and stores native histograms); else the default text scrape with classic buckets.
    pub fn start(target: SocketAddr, native: bool) -> Self {
        Self::start_with(target, native, None)
    }

    /// [`Prometheus::start`], scraping over HTTPS with basic auth when `secure` is given:
    /// `scheme: https`, `tls_config.ca_file` and `basic_auth` with a `password_file`, as an
    /// operator configures it for an agent with `--web.config.file`.
    pub fn start_with(
        target: SocketAddr,
        native: bool,
        secure: Option<&crate::tls::Secure>,
    ) -> Self {
        let bin = ["/usr/bin/prometheus", "/usr/local/bin/prometheus"]
            .into_iter()
            .find(|p| Path::new(p).is_file())
            .unwrap_or_else(|| {
                panic!("prometheus is missing: install the Debian package `prometheus` (cargo xtask test does)")
            });
        let dir = std::env::temp_dir().join(format!(
            "podstat-test-prometheus-{}-{}",
            std::process::id(),
            if native { "native" } else { "classic" }
        ));
        let _ = fs::remove_dir_all(&dir);
        fs::create_dir_all(dir.join("data")).expect("prometheus dir");
        let rules_src = fs::read_to_string(rules::rules_path()).expect("reading the shipped rules");
        // The shipped `for:` durations (15 m) are shortened so the alert can fire in a minute.
        fs::write(
            dir.join("rules.yaml"),
            rules::rules_with_for(&rules_src, "10s"),
        )
        .expect("writing rules");
        fs::write(
            dir.join("prometheus.yml"),
            format!(
                "global:\n  scrape_interval: 2s\n  evaluation_interval: 2s\nrule_files:\n  - {}\nscrape_configs:\n  - job_name: podstat\n{}    static_configs:\n      - targets: ['{target}']\n",
                dir.join("rules.yaml").display(),
                secure.map_or_else(String::new, |s| format!(
                    "    scheme: https\n    tls_config:\n      ca_file: {}\n    basic_auth:\n      username: {}\n      password_file: {}\n",
                    s.ca_file().display(),
                    crate::tls::Secure::USER,
                    s.password_file().display()
                ))
            ),
        )
        .expect("writing prometheus.yml");
        let port = free_port();
        let addr: SocketAddr = format!("127.0.0.1:{port}").parse().expect("addr");
        let log = fs::File::create(dir.join("prometheus.log")).expect("log");
        let child = Command::new(bin)
            .arg(format!(
                "--config.file={}",
                dir.join("prometheus.yml").display()
            ))
            .arg(format!(
                "--storage.tsdb.path={}",
                dir.join("data").display()
            ))
            .arg(format!("--web.listen-address={addr}"))
            .args(native.then_some("--enable-feature=native-histograms"))
            .stdin(Stdio::null())
            .stdout(log.try_clone().expect("log"))
            .stderr(log)
            .spawn()
            .expect("spawning prometheus");
        let mut p = Self {
            addr,
            proc: Proc(Some(child)),
            dir,
        };
        let deadline = Instant::now() + Duration::from_secs(30);
        while !http_get(addr, "/-/ready", &[]).is_ok_and(|r| r.status == 200) {
            if let Some(c) = p.proc.0.as_mut()
                && let Ok(Some(status)) = c.try_wait()
            {
                panic!("prometheus exited with {status}:\n{}", p.log());
            }
            assert!(
                Instant::now() < deadline,
                "prometheus not ready in 30 s:\n{}",
                p.log()
            );
            thread::sleep(Duration::from_millis(200));
        }
        p
    }

    pub fn log(&self) -> String {
        fs::read_to_string(self.dir.join("prometheus.log")).unwrap_or_default()
    }

    /// An instant query; the `result` array.
    pub fn query(&self, expr: &str) -> Vec<Value> {
        let path = format!("/api/v1/query?query={}", urlencode(expr));
        // A loaded 2-CPU machine can make one query slow: retry twice before failing.
        let mut tries = 0;
        let r = loop {
            match http_get(self.addr, &path, &[]) {
                Ok(r) => break r,
                Err(e) if tries < 2 => {
                    eprintln!("retrying query {expr}: {e}");
                    tries += 1;
                }
                Err(e) => panic!("querying {expr}: {e}"),
            }
        };
        let v: Value = serde_json::from_slice(&r.body)
            .unwrap_or_else(|e| panic!("query {expr}: {e}: {}", r.text()));
        assert_eq!(v["status"], "success", "query {expr} failed: {}", r.text());
        v["data"]["result"].as_array().cloned().unwrap_or_default()
    }

    /// The alerts named `alert` that are firing.
    pub fn firing(&self, alert: &str) -> Vec<Value> {
        self.query(&format!(
            "ALERTS{{alertname=\"{alert}\",alertstate=\"firing\"}}"
        ))
    }
}

fn urlencode(s: &str) -> String {
    let mut out = String::with_capacity(s.len() * 3);
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || b"-_.~".contains(&b) {
            out.push(char::from(b));
        } else {
            let _ = write!(out, "%{b:02X}");
        }
    }
    out
}

/// A label of a query result.
pub fn label<'a>(v: &'a Value, name: &str) -> &'a str {
    v["metric"][name].as_str().unwrap_or("")
}
