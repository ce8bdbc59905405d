//! Test certificates, made with openssl (a prerequisite), and [`Secure`]: an agent's web
//! config asking for TLS and basic auth, with the CA and the password a client needs.

use std::{
    fs,
    net::SocketAddr,
    path::{Path, PathBuf},
    process::Command,
    sync::Arc,
};

use crate::http::{Response, get_url};

/// Runs openssl in `dir`; panics with its stderr if it fails.
pub fn openssl(dir: &Path, args: &[&str]) {
    let out = Command::new("openssl")
        .current_dir(dir)
        .args(args)
        .output()
        .unwrap_or_else(|e| panic!("openssl is needed for the test certificates: {e}"));
    assert!(
        out.status.success(),
        "openssl {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// A self-signed CA in `dir`: `<ca>.crt` and `<ca>.key`.
pub fn ca(dir: &Path, ca: &str) {
    openssl(
        dir,
        &[
            "req",
            "-x509",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-days",
            "1",
            "-subj",
            &format!("/CN=podstat-test-{ca}"),
            "-keyout",
            &format!("{ca}.key"),
            "-out",
            &format!("{ca}.crt"),
        ],
    );
}

/// The extensions of a server certificate for 127.0.0.1.
pub const SERVER_EXT: &str = "subjectAltName=IP:127.0.0.1\nbasicConstraints=CA:FALSE\n";

/// A certificate `name` (`<name>.crt`, `<name>.key`) that `ca` signs, with extensions `ext`.
pub fn signed(dir: &Path, ca: &str, name: &str, ext: &str) {
    openssl(
        dir,
        &[
            "req",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-subj",
            &format!("/CN={name}"),
            "-keyout",
            &format!("{name}.key"),
            "-out",
            &format!("{name}.csr"),
        ],
    );
    fs::write(dir.join(format!("{name}.cnf")), ext).expect("ext");
    openssl(
        dir,
        &[
            "x509",
            "-req",
            "-in",
            &format!("{name}.csr"),
            "-CA",
            &format!("{ca}.crt"),
            "-CAkey",
            &format!("{ca}.key"),
            "-CAcreateserial",
            "-days",
            "1",
            "-extfile",
            &format!("{name}.cnf"),
            "-out",
            &format!("{name}.crt"),
        ],
    );
}

/// A directory (removed on drop) with a CA, a server certificate for 127.0.0.1 it signs, a
/// web config (`web.yml`: TLS with that certificate, basic auth for [`Secure::USER`] with a
/// bcrypt hash) and the password in `password`.
pub struct Secure {
    pub dir: PathBuf,
    client: podstat::http::Client,
}

impl Drop for Secure {
    fn drop(&mut self) {
        let _ = fs::remove_dir_all(&self.dir);
    }
}

impl Secure {
    pub const USER: &str = "prometheus";
    pub const PASSWORD: &str = "podstat-test-s3cret";

    /// Makes the files under a fresh `podstat-test-<pid>-<tag>` directory.
    pub fn new(tag: &str) -> Self {
        let dir = std::env::temp_dir().join(format!("podstat-test-{}-{tag}", std::process::id()));
        let _ = fs::remove_dir_all(&dir);
        fs::create_dir_all(&dir).expect("certificate dir");
        ca(&dir, "ca");
        signed(&dir, "ca", "server", SERVER_EXT);
        let hash = bcrypt::hash(Self::PASSWORD, 6).expect("bcrypt");
        fs::write(
            dir.join("web.yml"),
            format!(
                "tls_server_config:\n  cert_file: server.crt\n  key_file: server.key\nbasic_auth_users:\n  {}: {hash}\n",
                Self::USER
            ),
        )
        .expect("web.yml");
        fs::write(dir.join("password"), Self::PASSWORD).expect("password");
        let cfg = podstat::tls::client_config(&podstat::tls::ClientOptions {
            ca_file: Some(&dir.join("ca.crt")),
            ..podstat::tls::ClientOptions::default()
        })
        .expect("client TLS settings from the test CA");
        Self {
            client: podstat::http::Client::new(Some(Arc::new(cfg))),
            dir,
        }
    }

    /// For `--web.config.file`.
    pub fn web_config(&self) -> PathBuf {
        self.dir.join("web.yml")
    }

    pub fn ca_file(&self) -> PathBuf {
        self.dir.join("ca.crt")
    }

    pub fn password_file(&self) -> PathBuf {
        self.dir.join("password")
    }

    /// GET `https://addr/path`, verifying the server against the CA and with the password
    /// (bounded to 10 s, as [`crate::http_get`]).
    ///
    /// # Errors
    /// Connecting, TLS, the exchange or the body failed, or took longer than 10 s.
    pub fn get(
        &self,
        addr: SocketAddr,
        path: &str,
        headers: &[(&str, &str)],
    ) -> std::io::Result<Response> {
        let auth = podstat::http::basic_auth(Self::USER, Self::PASSWORD);
        let mut all = vec![("authorization", auth.as_str())];
        all.extend_from_slice(headers);
        get_url(&self.client, &format!("https://{addr}{path}"), &all)
    }
}
