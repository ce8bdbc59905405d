//! The client side of TLS, shared by every HTTPS client podstat has (the kubelet provider, and
//! `top`/`explain --from https://…` through [`crate::http`]): a rustls [`ClientConfig`] on the
//! ring provider built from PEM files, the connect, and what a failed handshake means.
//!
//! A leaf: it imports no other podstat module.

use std::{path::Path, sync::Arc};

use rustls::{
    ClientConfig, DigitallySignedStruct, RootCertStore, SignatureScheme,
    client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier},
    pki_types::{
        CertificateDer, InvalidDnsNameError, PrivateKeyDer, ServerName, UnixTime,
        pem::{self, PemObject as _},
    },
};
use tokio::net::TcpStream;
use tokio_rustls::client::TlsStream;

/// How the client checks the server and shows itself.
#[derive(Debug, Clone, Copy, Default)]
pub struct ClientOptions<'a> {
    /// PEM bundle of the CAs the server's certificate must chain to.
    pub ca_file: Option<&'a Path>,
    /// A client certificate (PEM chain) and its private key (PEM), for servers that ask.
    pub client_cert: Option<(&'a Path, &'a Path)>,
    /// Accept any server certificate (the handshake must still be signed by it).
    pub insecure_skip_verify: bool,
}

/// Why a client configuration could not be built.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("no CA file to verify the server's certificate with, and verification not skipped")]
    NoTrust,
    #[error("reading the PEM in {path}")]
    Pem {
        path: Box<Path>,
        #[source]
        source: pem::Error,
    },
    #[error("{path}: no {what} in it")]
    Empty { path: Box<Path>, what: &'static str },
    #[error("CA file {path}: a certificate in it")]
    CaCert {
        path: Box<Path>,
        #[source]
        source: rustls::Error,
    },
    #[error("the client certificate {cert} with the key {key}")]
    ClientCert {
        cert: Box<Path>,
        key: Box<Path>,
        #[source]
        source: rustls::Error,
    },
    #[error("TLS settings")]
    Rustls(#[source] rustls::Error),
}

/// Why a TLS connection failed: the kinds an operator acts on differently.
#[derive(Debug, thiserror::Error)]
pub enum HandshakeError {
    #[error("{host:?} is not a TLS server name")]
    ServerName {
        host: String,
        #[source]
        source: InvalidDnsNameError,
    },
    #[error("the server's certificate is not trusted: {0}")]
    Untrusted(rustls::CertificateError),
    #[error(
        "the server refused the handshake ({0:?}): it may want a client certificate signed by a CA it trusts"
    )]
    Refused(rustls::AlertDescription),
    #[error("no TLS answer: the port may serve plain HTTP (use http://)")]
    NotTls(#[source] std::io::Error),
    #[error("TLS handshake")]
    Other(#[source] std::io::Error),
}

/// The PEM certificates in `path`, at least one.
pub fn certs(path: &Path) -> Result<Vec<CertificateDer<'static>>, ConfigError> {
    let pem = |source| ConfigError::Pem {
        path: path.into(),
        source,
    };
    let certs = CertificateDer::pem_file_iter(path)
        .map_err(pem)?
        .collect::<Result<Vec<_>, _>>()
        .map_err(pem)?;
    if certs.is_empty() {
        return Err(ConfigError::Empty {
            path: path.into(),
            what: "certificate",
        });
    }
    Ok(certs)
}

/// The PEM private key in `path`.
pub fn key(path: &Path) -> Result<PrivateKeyDer<'static>, ConfigError> {
    PrivateKeyDer::from_pem_file(path).map_err(|source| ConfigError::Pem {
        path: path.into(),
        source,
    })
}

/// The CAs in the PEM bundle `path`, at least one.
pub fn roots(path: &Path) -> Result<RootCertStore, ConfigError> {
    let mut roots = RootCertStore::empty();
    for cert in certs(path)? {
        roots.add(cert).map_err(|source| ConfigError::CaCert {
            path: path.into(),
            source,
        })?;
    }
    Ok(roots)
}

/// A client configuration on the ring provider, TLS 1.2 and 1.3, offering HTTP/1.1.
pub fn client_config(o: &ClientOptions<'_>) -> Result<ClientConfig, ConfigError> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let builder = ClientConfig::builder_with_provider(Arc::clone(&provider))
        .with_safe_default_protocol_versions()
        .map_err(ConfigError::Rustls)?;
    let builder = if o.insecure_skip_verify {
        builder
            .dangerous()
            .with_custom_certificate_verifier(Arc::new(NoVerify(provider)))
    } else {
        builder.with_root_certificates(roots(o.ca_file.ok_or(ConfigError::NoTrust)?)?)
    };
    let mut cfg = match o.client_cert {
        None => builder.with_no_client_auth(),
        Some((cert, key_file)) => builder
            .with_client_auth_cert(certs(cert)?, key(key_file)?)
            .map_err(|source| ConfigError::ClientCert {
                cert: cert.into(),
                key: key_file.into(),
                source,
            })?,
    };
    cfg.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(cfg)
}

/// The TLS handshake with `host` over `tcp`.
pub async fn connect(
    cfg: &Arc<ClientConfig>,
    host: &str,
    tcp: TcpStream,
) -> Result<TlsStream<TcpStream>, HandshakeError> {
    let name =
        ServerName::try_from(host.to_owned()).map_err(|source| HandshakeError::ServerName {
            host: host.to_owned(),
            source,
        })?;
    tokio_rustls::TlsConnector::from(Arc::clone(cfg))
        .connect(name, tcp)
        .await
        .map_err(classify)
}

/// What a failed handshake, or a failed first read after it, means.
pub fn classify(e: std::io::Error) -> HandshakeError {
    match rustls_cause(&e) {
        Some(rustls::Error::InvalidCertificate(c)) => HandshakeError::Untrusted(c.clone()),
        Some(rustls::Error::AlertReceived(a)) => HandshakeError::Refused(*a),
        // Bytes that are not a TLS record (an HTTP server's 400), or the peer hung up on the
        // ClientHello.
        Some(rustls::Error::InvalidMessage(_)) => HandshakeError::NotTls(e),
        None if e.kind() == std::io::ErrorKind::UnexpectedEof => HandshakeError::NotTls(e),
        _ => HandshakeError::Other(e),
    }
}

/// The rustls error somewhere in `e`'s chain (tokio-rustls wraps it in an `io::Error`, hyper
/// in its own): a server that checks the client certificate after a TLS 1.3 handshake
/// completes sends its alert on the first read.
pub fn rustls_cause<'a>(e: &'a (dyn std::error::Error + 'static)) -> Option<&'a rustls::Error> {
    let mut cur = Some(e);
    while let Some(err) = cur {
        if let Some(r) = err.downcast_ref::<rustls::Error>() {
            return Some(r);
        }
        // An `io::Error`'s `source()` skips the error it wraps: step into that one instead.
        cur = match err
            .downcast_ref::<std::io::Error>()
            .and_then(std::io::Error::get_ref)
        {
            Some(inner) => Some(inner as &(dyn std::error::Error + 'static)),
            None => err.source(),
        };
    }
    None
}

/// `insecure_skip_verify`: accepts any certificate, still checks that the handshake is signed
/// by it.
#[derive(Debug)]
struct NoVerify(Arc<rustls::crypto::CryptoProvider>);

impl ServerCertVerifier for NoVerify {
    fn verify_server_cert(
        &self,
        _end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.0.signature_verification_algorithms.supported_schemes()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn needs_a_ca_or_an_explicit_skip() {
        let e = client_config(&ClientOptions::default()).expect_err("no trust");
        assert!(matches!(e, ConfigError::NoTrust), "{e:?}");
        let cfg = client_config(&ClientOptions {
            insecure_skip_verify: true,
            ..ClientOptions::default()
        })
        .expect("skip verify");
        assert_eq!(cfg.alpn_protocols, vec![b"http/1.1".to_vec()]);
        assert!(!cfg.client_auth_cert_resolver.has_certs());
    }

    #[test]
    fn pem_files_that_do_not_load_are_named() {
        let dir = std::env::temp_dir().join(format!("podstat-test-tls-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("dir");
        let empty = dir.join("empty.pem");
        std::fs::write(&empty, "not a pem\n").expect("write");
        let missing = dir.join("missing.pem");
        let cases = [
            (
                ClientOptions {
                    ca_file: Some(&missing),
                    ..ClientOptions::default()
                },
                "missing.pem",
            ),
            (
                ClientOptions {
                    ca_file: Some(&empty),
                    ..ClientOptions::default()
                },
                "empty.pem: no certificate in it",
            ),
            (
                ClientOptions {
                    insecure_skip_verify: true,
                    client_cert: Some((&empty, &empty)),
                    ..ClientOptions::default()
                },
                "empty.pem: no certificate in it",
            ),
        ];
        for (o, want) in cases {
            let e = client_config(&o).expect_err(want);
            assert!(e.to_string().contains(want), "{e} lacks {want}");
        }
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn handshake_failures_are_classified() {
        let io = |e: rustls::Error| std::io::Error::new(std::io::ErrorKind::InvalidData, e);
        assert!(matches!(
            classify(io(rustls::Error::InvalidCertificate(
                rustls::CertificateError::UnknownIssuer
            ))),
            HandshakeError::Untrusted(rustls::CertificateError::UnknownIssuer)
        ));
        assert!(matches!(
            classify(io(rustls::Error::AlertReceived(
                rustls::AlertDescription::CertificateRequired
            ))),
            HandshakeError::Refused(_)
        ));
        assert!(matches!(
            classify(io(rustls::Error::InvalidMessage(
                rustls::InvalidMessage::InvalidContentType
            ))),
            HandshakeError::NotTls(_)
        ));
        assert!(matches!(
            classify(std::io::ErrorKind::UnexpectedEof.into()),
            HandshakeError::NotTls(_)
        ));
        assert!(matches!(
            classify(std::io::ErrorKind::ConnectionReset.into()),
            HandshakeError::Other(_)
        ));
        // Wrapped again (hyper's error around the io::Error of a TLS 1.3 alert after the
        // handshake), the cause is still found.
        let twice = std::io::Error::other(io(rustls::Error::AlertReceived(
            rustls::AlertDescription::UnknownCA,
        )));
        assert!(matches!(classify(twice), HandshakeError::Refused(_)));
    }
}
