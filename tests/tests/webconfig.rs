//! `--web.config.file` on the real agent: TLS with a client certificate required, basic auth
//! with a bcrypt hash, the health checks left open, the server certificate reloaded when its
//! file changes, and a config with an unknown key refused at start. Driven with curl and
//! openssl (both prerequisites). Then `podstat explain --from https://…` reads the same agent
//! with the CA, the client certificate and the password, and says which one is missing or
//! wrong when one is.

use std::{
    fs,
    path::{Path, PathBuf},
    process::{Command, Stdio},
    thread,
    time::{Duration, Instant},
};

use podstat_tests::{
    CgroupTree, Proc, agent_command, free_addr, podstat_bin, require_root, test_ids,
    tls::{SERVER_EXT, ca, signed},
    v1_hierarchies,
};

/// The HTTP status curl got (0: no HTTP answer, e.g. a refused handshake).
fn curl(dir: &Path, url: &str, args: &[&str]) -> u16 {
    let out = Command::new("curl")
        .current_dir(dir)
        .args([
            "-s",
            "-o",
            "/dev/null",
            "-w",
            "%{http_code}",
            "--max-time",
            "10",
            "--cacert",
            "ca.crt",
        ])
        .args(args)
        .arg(url)
        .output()
        .unwrap_or_else(|e| panic!("curl is needed: {e}"));
    String::from_utf8_lossy(&out.stdout)
        .trim()
        .parse()
        .unwrap_or(0)
}

/// The serial number of the certificate the agent serves.
fn served_serial(dir: &Path, addr: &str) -> String {
    let s = Command::new("openssl")
        .current_dir(dir)
        .args(["s_client", "-connect", addr])
        .stdin(Stdio::null())
        .output()
        .expect("openssl s_client");
    let mut x = Command::new("openssl")
        .args(["x509", "-noout", "-serial"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .expect("openssl x509");
    std::io::Write::write_all(x.stdin.as_mut().expect("stdin"), &s.stdout).expect("pipe");
    let out = x.wait_with_output().expect("x509");
    String::from_utf8_lossy(&out.stdout).trim().to_owned()
}

/// `podstat explain` with `args` (run in `dir`, the environment cleared of `PODSTAT_FROM*`
/// except `env`), bounded to 60 s: (success, stdout, stderr).
fn explain(dir: &Path, args: &[&str], env: &[(&str, &str)]) -> (bool, String, String) {
    let mut cmd = Command::new(podstat_bin());
    cmd.current_dir(dir)
        .arg("explain")
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    for (k, _) in std::env::vars() {
        if k.starts_with("PODSTAT_FROM") {
            cmd.env_remove(k);
        }
    }
    cmd.envs(env.iter().copied());
    let mut child = cmd.spawn().expect("spawning podstat explain");
    let deadline = Instant::now() + Duration::from_mins(1);
    while child.try_wait().ok().flatten().is_none() {
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            panic!("podstat explain {args:?} did not finish within 60 s");
        }
        thread::sleep(Duration::from_millis(100));
    }
    let out = child.wait_with_output().expect("explain's output");
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

struct TempDir(PathBuf);
impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = fs::remove_dir_all(&self.0);
    }
}

#[test]
#[expect(
    clippy::too_many_lines,
    reason = "one scenario: each refusal, then the reload, then a bad file"
)]
fn tls_client_certificates_and_basic_auth_guard_the_endpoint() {
    require_root();
    let dir =
        TempDir(std::env::temp_dir().join(format!("podstat-test-{}-web", std::process::id())));
    let d = dir.0.as_path();
    fs::create_dir_all(d).expect("dir");
    ca(d, "ca");
    ca(d, "rogue-ca");
    signed(d, "ca", "server", SERVER_EXT);
    signed(
        d,
        "ca",
        "client",
        "basicConstraints=CA:FALSE\nextendedKeyUsage=clientAuth\n",
    );
    signed(
        d,
        "rogue-ca",
        "rogue",
        "basicConstraints=CA:FALSE\nextendedKeyUsage=clientAuth\n",
    );
    let hash = bcrypt::hash("s3cret", 6).expect("bcrypt");
    fs::write(
        d.join("web.yml"),
        format!(
            "tls_server_config:\n  cert_file: server.crt\n  key_file: server.key\n  client_auth_type: RequireAndVerifyClientCert\n  client_ca_file: ca.crt\n  min_version: TLS12\nbasic_auth_users:\n  prometheus: {hash}\n"
        ),
    )
    .expect("web.yml");
    let web = d.join("web.yml");
    let addr = free_addr();
    let mut agent = Proc(Some(
        agent_command(
            None,
            addr,
            &[
                "--no-collector.sched",
                "--no-collector.throttle",
                "--no-collector.net",
                "--web.config.file",
                web.to_str().expect("utf-8"),
                "--web.health-open",
            ],
        )
        .spawn()
        .expect("spawning the agent"),
    ));
    let base = format!("https://{addr}");
    let cert = ["--cert", "client.crt", "--key", "client.key"];
    let deadline = Instant::now() + Duration::from_secs(30);
    while curl(d, &format!("{base}/healthz"), &[]) != 200 {
        assert!(agent.exited().is_none(), "the agent exited at start");
        assert!(
            Instant::now() < deadline,
            "/healthz over TLS did not answer within 30 s"
        );
        thread::sleep(Duration::from_millis(200));
    }
    let metrics = format!("{base}/metrics");
    let ok_auth = ["-u", "prometheus:s3cret"];
    assert_eq!(
        curl(d, &metrics, &[&cert[..], &ok_auth[..]].concat()),
        200,
        "certificate and password"
    );
    assert_eq!(
        curl(
            d,
            &metrics,
            &[&cert[..], &["-u", "prometheus:wrong"][..]].concat()
        ),
        401,
        "wrong password"
    );
    assert_eq!(curl(d, &metrics, &cert), 401, "no password");
    assert_eq!(curl(d, &metrics, &ok_auth), 403, "no client certificate");
    assert_eq!(
        curl(
            d,
            &metrics,
            &[
                &["--cert", "rogue.crt", "--key", "rogue.key"][..],
                &ok_auth[..]
            ]
            .concat()
        ),
        0,
        "a certificate from another CA fails the handshake"
    );
    assert_eq!(
        curl(d, &format!("{base}/readyz"), &[]),
        200,
        "--web.health-open"
    );
    assert_eq!(
        curl(d, &format!("http://{addr}/healthz"), &[]),
        0,
        "plain HTTP on a TLS port"
    );

    // A renewed certificate is served without a restart.
    let before = served_serial(d, &addr.to_string());
    signed(d, "ca", "server2", SERVER_EXT);
    fs::copy(d.join("server2.key"), d.join("server.key.new")).expect("key");
    fs::copy(d.join("server2.crt"), d.join("server.crt.new")).expect("crt");
    fs::rename(d.join("server.key.new"), d.join("server.key")).expect("key");
    fs::rename(d.join("server.crt.new"), d.join("server.crt")).expect("crt");
    let deadline = Instant::now() + Duration::from_secs(10);
    let mut after = before.clone();
    while after == before && Instant::now() < deadline {
        thread::sleep(Duration::from_millis(500));
        after = served_serial(d, &addr.to_string());
    }
    assert!(
        before.starts_with("serial=") && after != before,
        "the certificate was not reloaded: {before} then {after}"
    );
    assert_eq!(
        curl(d, &metrics, &[&cert[..], &ok_auth[..]].concat()),
        200,
        "after the reload"
    );

    // `explain --from https://…` on a pod cgroup the agent exports.
    let v1 = v1_hierarchies();
    let mut tree = CgroupTree::new(&[&v1.cpu, &v1.cpuacct]);
    let (uid, cid) = test_ids(61);
    let ctr = format!(
        "podstat-test-{}-web/kubepods/burstable/pod{uid}/{cid}",
        std::process::id()
    );
    tree.mkdir(&ctr);
    fs::write(d.join("password"), "s3cret\n").expect("password file");
    fs::write(d.join("wrong"), "wrong\n").expect("password file");
    let from = format!("https://{addr}");
    let tls_flags = [
        "--from.ca-file",
        "ca.crt",
        "--from.cert-file",
        "client.crt",
        "--from.key-file",
        "client.key",
    ];
    let view = |extra: &[&str], env: &[(&str, &str)]| {
        let mut args = vec![
            uid.as_str(),
            "--duration",
            "1s",
            "--output",
            "json",
            "--from",
        ];
        args.push(&from);
        args.extend_from_slice(extra);
        explain(d, &args, env)
    };
    let (ok, out, err) = view(
        &[
            &tls_flags[..],
            &[
                "--from.username",
                "prometheus",
                "--from.password-file",
                "password",
            ],
        ]
        .concat(),
        &[],
    );
    assert!(ok, "explain over TLS with basic auth failed: {err}");
    let json: serde_json::Value =
        serde_json::from_str(&out).unwrap_or_else(|e| panic!("explain --output json: {e}: {out}"));
    assert!(
        json.to_string().contains(&uid),
        "explain did not diagnose pod {uid}: {out}"
    );
    // The password from the environment works as well.
    let (ok, _, err) = view(
        &[&tls_flags[..], &["--from.username", "prometheus"]].concat(),
        &[("PODSTAT_FROM_PASSWORD", "s3cret")],
    );
    assert!(ok, "password from PODSTAT_FROM_PASSWORD: {err}");
    // Each credential missing or wrong, and the message that names it.
    for (what, extra, needle) in [
        (
            "no CA",
            vec![
                "--from.username",
                "prometheus",
                "--from.password-file",
                "password",
            ],
            "needs --from.ca-file",
        ),
        (
            "another CA",
            vec![
                "--from.ca-file",
                "rogue-ca.crt",
                "--from.cert-file",
                "client.crt",
                "--from.key-file",
                "client.key",
                "--from.username",
                "prometheus",
                "--from.password-file",
                "password",
            ],
            "certificate is not trusted",
        ),
        (
            "no user",
            tls_flags.to_vec(),
            "401 Unauthorized: the agent wants a user and password",
        ),
        (
            "wrong password",
            [
                &tls_flags[..],
                &[
                    "--from.username",
                    "prometheus",
                    "--from.password-file",
                    "wrong",
                ],
            ]
            .concat(),
            "refused user \"prometheus\" with the password from --from.password-file",
        ),
        (
            "no client certificate",
            vec![
                "--from.ca-file",
                "ca.crt",
                "--from.username",
                "prometheus",
                "--from.password-file",
                "password",
            ],
            "--from.cert-file and --from.key-file",
        ),
    ] {
        let (ok, _, err) = view(&extra, &[]);
        assert!(!ok, "{what}: explain succeeded");
        assert!(err.contains(needle), "{what}: {needle:?} not in: {err}");
        eprintln!("{what}: {}", err.trim());
    }
    // Plain HTTP to the TLS port.
    let (ok, _, err) = explain(
        d,
        &[
            &uid,
            "--duration",
            "1s",
            "--from",
            &format!("http://{addr}"),
        ],
        &[],
    );
    assert!(
        !ok && err.contains("use https://"),
        "plain HTTP to TLS: {err}"
    );
    eprintln!("plain HTTP to TLS: {}", err.trim());
    drop(agent);
    drop(tree);

    // An unknown key stops the agent at start, naming it.
    fs::write(
        &web,
        "tls_server_config:\n  cert_file: server.crt\n  key_file: server.key\n  client_auth: x\n",
    )
    .expect("web.yml");
    let out = Command::new(podstat_bin())
        .args([
            "agent",
            "--web.listen-address",
            &free_addr().to_string(),
            "--web.config.file",
            web.to_str().expect("utf-8"),
        ])
        .output()
        .expect("podstat agent");
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success() && err.contains("unknown field `client_auth`"),
        "{}: {err}",
        out.status
    );
}
