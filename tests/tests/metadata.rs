//! The metadata providers against real servers: a kubelet `/pods` over HTTPS (a certificate
//! made here, the token checked by the server), and a CRI socket that answers garbage or
//! never answers. Names appear; a broken provider never stalls or empties the scrape, and the
//! series keep their uid labels.

use std::{
    fs,
    path::{Path, PathBuf},
    process::{Command, Stdio},
    thread,
    time::{Duration, Instant},
};

use podstat_tests::{
    CgroupTree, Proc, find, free_port, http_get, parse_exposition, require_root, start_agent,
    test_ids, v1_hierarchies,
};

/// A scratch directory removed on drop.
struct Scratch(PathBuf);

impl Scratch {
    fn new(name: &str) -> Self {
        let p = std::env::temp_dir().join(format!("podstat-test-{name}-{}", std::process::id()));
        let _ = fs::remove_dir_all(&p);
        fs::create_dir_all(&p).expect("scratch dir");
        Self(p)
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        let _ = fs::remove_dir_all(&self.0);
    }
}

fn python() -> &'static str {
    let ok = Command::new("python3")
        .arg("--version")
        .output()
        .is_ok_and(|o| o.status.success());
    assert!(
        ok,
        "python3 is missing: the fake kubelet and CRI servers of this test are python3 scripts"
    );
    "python3"
}

/// A pod cgroup with one container, in the v1 cpu and cpuacct hierarchies.
fn pod_tree(seed: u32) -> (CgroupTree, String, String) {
    let v1 = v1_hierarchies();
    let (uid, cid) = test_ids(seed);
    let ctr = format!(
        "podstat-test-{}-meta{seed}/kubepods/burstable/pod{uid}/{cid}",
        std::process::id()
    );
    let mut tree = CgroupTree::new(&[&v1.cpu, &v1.cpuacct]);
    tree.mkdir(&ctr);
    (tree, uid, cid)
}

const FAKE_KUBELET: &str = r#"
import http.server, ssl, sys, json
port, cert, key, token, body = int(sys.argv[1]), sys.argv[2], sys.argv[3], sys.argv[4], sys.argv[5]
class H(http.server.BaseHTTPRequestHandler):
    def do_GET(self):
        if self.headers.get("Authorization") != "Bearer " + token:
            self.send_response(401); self.end_headers(); return
        data = open(body, "rb").read()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)
    def log_message(self, *a): pass
srv = http.server.HTTPServer(("127.0.0.1", port), H)
ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
ctx.load_cert_chain(cert, key)
srv.socket = ctx.wrap_socket(srv.socket, server_side=True)
srv.serve_forever()
"#;

fn start_python(script: &str, args: &[&str]) -> Proc {
    Proc(Some(
        Command::new(python())
            .arg("-c")
            .arg(script)
            .args(args)
            .stdin(Stdio::null())
            .spawn()
            .expect("spawning python3"),
    ))
}

fn wait_for(what: &str, within: Duration, mut ok: impl FnMut() -> Option<String>) -> String {
    let deadline = Instant::now() + within;
    loop {
        if let Some(v) = ok() {
            return v;
        }
        assert!(Instant::now() < deadline, "{what} within {within:?}");
        thread::sleep(Duration::from_millis(200));
    }
}

/// A cluster CA and a kubelet serving certificate it signed, for 127.0.0.1; returns
/// (CA certificate, server certificate, server key).
fn make_certs(dir: &Path) -> (PathBuf, PathBuf, PathBuf) {
    podstat_tests::tls::ca(dir, "ca");
    podstat_tests::tls::signed(dir, "ca", "kubelet", podstat_tests::tls::SERVER_EXT);
    let p = |f: &str| dir.join(f);
    (p("ca.crt"), p("kubelet.crt"), p("kubelet.key"))
}

#[test]
#[expect(clippy::too_many_lines, reason = "one scenario, read top to bottom")]
fn kubelet_names_pods_over_https_with_token_and_escaped_labels() {
    require_root();
    let scratch = Scratch::new("kubelet");
    let (ca, cert, key) = make_certs(&scratch.0);
    let (_tree, uid, cid) = pod_tree(61);
    let token = scratch.0.join("token");
    fs::write(&token, "podstat-test-token\n").expect("token");
    // A namespace with characters the exposition must escape.
    let body = scratch.0.join("pods.json");
    fs::write(
        &body,
        format!(
            r#"{{"items":[{{"metadata":{{"name":"web-0","namespace":"we\"ird\\ns","uid":"{uid}"}},
               "status":{{"containerStatuses":[{{"name":"app","containerID":"containerd://{cid}"}}]}}}}]}}"#
        ),
    )
    .expect("pods.json");
    let port = free_port();
    let _kubelet = start_python(
        FAKE_KUBELET,
        &[
            &port.to_string(),
            &cert.display().to_string(),
            &key.display().to_string(),
            "podstat-test-token",
            &body.display().to_string(),
        ],
    );
    let url = format!("https://127.0.0.1:{port}");
    let (_agent, addr) = start_agent(&[
        "--metadata.provider",
        "kubelet",
        "--metadata.kubelet-url",
        &url,
        "--metadata.kubelet-ca-file",
        &ca.display().to_string(),
        "--metadata.kubelet-token-file",
        &token.display().to_string(),
        "--metadata.refresh-interval",
        "1s",
    ]);
    let text = wait_for(
        "the kubelet's names in the scrape",
        Duration::from_secs(20),
        || {
            let text = http_get(addr, "/metrics", &[]).ok()?.text();
            let s = parse_exposition(&text);
            let hit = find(
                &s,
                "podstat_cpu_usage_seconds_total",
                &[
                    ("container_id", cid.as_str()),
                    ("pod", "web-0"),
                    ("container", "app"),
                ],
            );
            (!hit.is_empty()).then_some(text)
        },
    );
    // The namespace went through the exposition escaped and parses back whole.
    assert!(
        text.contains(r#"namespace="we\"ird\\ns""#),
        "label value not escaped as the text format wants"
    );
    let s = parse_exposition(&text);
    let hit = find(
        &s,
        "podstat_cpu_usage_seconds_total",
        &[("container_id", cid.as_str())],
    );
    assert_eq!(
        hit[0].labels.get("namespace").map(String::as_str),
        Some("we\"ird\\ns")
    );
    assert_eq!(
        find(&s, "podstat_metadata_up", &[("provider", "kubelet")])
            .first()
            .map(|x| x.value),
        Some(1.0)
    );

    // A wrong token: 401, the agent says so and keeps the names it had.
    fs::write(&token, "wrong\n").expect("token");
    let text = wait_for(
        "podstat_metadata_up 0 after a 401",
        Duration::from_secs(20),
        || {
            let text = http_get(addr, "/metrics", &[]).ok()?.text();
            let s = parse_exposition(&text);
            let up = find(&s, "podstat_metadata_up", &[("provider", "kubelet")])
                .first()?
                .value;
            (up == 0.0).then_some(text)
        },
    );
    let s = parse_exposition(&text);
    assert!(
        !find(
            &s,
            "podstat_cpu_usage_seconds_total",
            &[("container_id", cid.as_str()), ("pod", "web-0")]
        )
        .is_empty(),
        "names were lost when the kubelet started refusing"
    );
    drop(scratch);
}

/// A unix socket server that accepts and then either answers `reply` or says nothing.
const FAKE_CRI: &str = r#"
import socket, sys, os, threading, time
path, mode = sys.argv[1], sys.argv[2]
s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
s.bind(path); s.listen(16)
def serve(c):
    try:
        c.recv(65536)
        if mode == "garbage":
            c.sendall(b"HTTP/1.1 200 OK\r\n\r\n" + os.urandom(4096))
            c.close()
        else:
            time.sleep(3600)
    except Exception:
        pass
while True:
    c, _ = s.accept()
    threading.Thread(target=serve, args=(c,), daemon=True).start()
"#;

#[test]
fn cri_that_answers_garbage_or_hangs_never_stalls_or_empties_the_scrape() {
    require_root();
    for (mode, seed) in [("garbage", 62), ("hang", 63)] {
        let scratch = Scratch::new(&format!("cri-{mode}"));
        let (_tree, uid, cid) = pod_tree(seed);
        let sock = scratch.0.join("cri.sock");
        let _cri = start_python(FAKE_CRI, &[&sock.display().to_string(), mode]);
        wait_for("the fake CRI socket", Duration::from_secs(10), || {
            sock.exists().then(String::new)
        });
        let (_agent, addr) = start_agent(&[
            "--metadata.provider",
            "cri",
            "--metadata.cri-socket",
            &sock.display().to_string(),
            "--metadata.refresh-interval",
            "1s",
            "--metadata.timeout",
            "1s",
        ]);
        let text = wait_for(
            &format!("{mode}: a failed refresh counted"),
            Duration::from_secs(20),
            || {
                let text = http_get(addr, "/metrics", &[]).ok()?.text();
                let s = parse_exposition(&text);
                let failures = find(
                    &s,
                    "podstat_metadata_refresh_failures_total",
                    &[("provider", "cri")],
                )
                .first()?
                .value;
                (failures >= 1.0).then_some(text)
            },
        );
        let s = parse_exposition(&text);
        let series = find(
            &s,
            "podstat_cpu_usage_seconds_total",
            &[("pod_uid", uid.as_str()), ("container_id", cid.as_str())],
        );
        assert_eq!(series.len(), 1, "{mode}: the pod lost its series:\n{text}");
        assert_eq!(series[0].labels.get("pod").map(String::as_str), Some(""));
        // Scrapes stay fast while the provider misbehaves.
        for _ in 0..5 {
            let t = Instant::now();
            let r = http_get(addr, "/metrics", &[]).expect("scrape");
            assert_eq!(r.status, 200);
            assert!(
                t.elapsed() < Duration::from_secs(2),
                "{mode}: a scrape took {:?} while the CRI misbehaved",
                t.elapsed()
            );
            thread::sleep(Duration::from_millis(300));
        }
        drop(scratch);
    }
}
