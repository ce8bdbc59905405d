//! The CRI provider: `ListPodSandbox` and `ListContainers` over the runtime's unix socket
//! (containerd, CRI-O), as gRPC unary calls on HTTP/2.
//!
//! The messages ([`api`]) are generated at build time from the vendored cri-api
//! `runtime/v1/api.proto` (see `agent/proto/README.md` for its version) by prost-build with
//! protox, so no `protoc` is needed. The transport is written here rather than taken from
//! tonic: a unary call is one HTTP/2 POST with a 5-byte frame, and the hyper that serves
//! /metrics already speaks HTTP/2, so tonic's service stack would add a dependency tree for
//! two calls.

use std::path::{Path, PathBuf};

use http_body_util::{BodyExt as _, Full};
use hyper::{Request, StatusCode, body::Bytes, client::conn::http2, header::HeaderValue};
use hyper_util::rt::{TokioExecutor, TokioIo};
use prost::Message;

use self::api::{
    ListContainersRequest, ListContainersResponse, ListPodSandboxRequest, ListPodSandboxResponse,
};
use super::{PodMeta, Snapshot};

/// Largest response accepted (a node with thousands of containers answers in a few MiB).
pub const MAX_MESSAGE: usize = 64 << 20;

#[derive(Debug, thiserror::Error)]
pub enum CriError {
    #[error("connecting")]
    Connect(#[source] std::io::Error),
    #[error("HTTP/2 handshake")]
    Handshake(#[source] hyper::Error),
    #[error("{method}: request")]
    Request {
        method: String,
        #[source]
        source: hyper::Error,
    },
    #[error("{method}: HTTP status {status}")]
    Status { method: String, status: StatusCode },
    #[error("{method}: gRPC status {code}: {message}")]
    Grpc {
        method: String,
        code: u32,
        message: String,
    },
    #[error("{method}: building the request")]
    BuildRequest {
        method: String,
        #[source]
        source: hyper::http::Error,
    },
    #[error("{method}: malformed response: reading the body")]
    Body {
        method: String,
        #[source]
        source: Box<dyn std::error::Error + Send + Sync>,
    },
    #[error("{method}: malformed response: grpc-status {value:?}")]
    GrpcStatus { method: String, value: HeaderValue },
    #[error("{method}: malformed response")]
    Frame {
        method: String,
        #[source]
        source: FrameError,
    },
    #[error("{method}: malformed response")]
    Decode {
        method: String,
        #[source]
        source: prost::DecodeError,
    },
}

/// Why a unary response's body is not one gRPC message frame.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum FrameError {
    #[error("{0} bytes, shorter than a gRPC frame header")]
    Short(usize),
    #[error("compressed message (podstat asks for none)")]
    Compressed,
    #[error("message of {0} bytes exceeds {MAX_MESSAGE}")]
    TooLarge(usize),
    #[error("frame says {says} bytes, body has {has}")]
    Truncated { says: usize, has: usize },
}

/// A CRI client on one socket; the HTTP/2 connection is reused until it fails.
#[derive(Debug)]
pub struct Client {
    socket: PathBuf,
    conn: Option<http2::SendRequest<Full<Bytes>>>,
}

impl Client {
    pub fn new(socket: PathBuf) -> Self {
        Self { socket, conn: None }
    }

    pub fn socket(&self) -> &Path {
        &self.socket
    }

    /// Drops the connection; the next call reconnects.
    pub fn reset(&mut self) {
        self.conn = None;
    }

    async fn connection(&mut self) -> Result<&mut http2::SendRequest<Full<Bytes>>, CriError> {
        let send = match self.conn.take() {
            Some(send) if !send.is_closed() => send,
            _ => self.connect().await?,
        };
        Ok(self.conn.insert(send))
    }

    async fn connect(&self) -> Result<http2::SendRequest<Full<Bytes>>, CriError> {
        let stream = tokio::net::UnixStream::connect(&self.socket)
            .await
            .map_err(CriError::Connect)?;
        let (send, conn) = http2::Builder::new(TokioExecutor::new())
            .handshake(TokioIo::new(stream))
            .await
            .map_err(CriError::Handshake)?;
        tokio::spawn(async move {
            if let Err(e) = conn.await {
                tracing::debug!(error = %e, "CRI connection ended");
            }
        });
        Ok(send)
    }

    /// One gRPC unary call: `method` is `/package.Service/Method`.
    pub async fn unary<Req: Message, Resp: Message + Default>(
        &mut self,
        method: &str,
        req: &Req,
    ) -> Result<Resp, CriError> {
        let m = || method.to_owned();
        let body = frame(req);
        let request = Request::post(format!("http://localhost{method}"))
            .header("content-type", "application/grpc")
            .header("te", "trailers")
            .body(Full::new(Bytes::from(body)))
            .map_err(|source| CriError::BuildRequest {
                method: m(),
                source,
            })?;
        let conn = self.connection().await?;
        conn.ready().await.map_err(|source| CriError::Request {
            method: m(),
            source,
        })?;
        let resp = match conn.send_request(request).await {
            Ok(r) => r,
            Err(source) => {
                self.conn = None;
                return Err(CriError::Request {
                    method: m(),
                    source,
                });
            }
        };
        let status = resp.status();
        let (parts, body) = resp.into_parts();
        if status != StatusCode::OK {
            return Err(CriError::Status {
                method: m(),
                status,
            });
        }
        // A trailers-only response carries grpc-status in the headers.
        grpc_status(method, &parts.headers)?;
        let collected = http_body_util::Limited::new(body, MAX_MESSAGE + 5)
            .collect()
            .await
            .map_err(|source| CriError::Body {
                method: m(),
                source,
            })?;
        if let Some(trailers) = collected.trailers() {
            grpc_status(method, trailers)?;
        }
        let bytes = collected.to_bytes();
        let msg = unframe(&bytes).map_err(|source| CriError::Frame {
            method: m(),
            source,
        })?;
        Resp::decode(msg).map_err(|source| CriError::Decode {
            method: m(),
            source,
        })
    }

    /// Pods and containers the runtime knows now.
    pub async fn snapshot(&mut self) -> Result<Snapshot, CriError> {
        let sandboxes: ListPodSandboxResponse = self
            .unary(LIST_POD_SANDBOX, &ListPodSandboxRequest::default())
            .await?;
        let containers: ListContainersResponse = self
            .unary(LIST_CONTAINERS, &ListContainersRequest::default())
            .await?;
        Ok(join(&sandboxes, &containers))
    }
}

pub const LIST_POD_SANDBOX: &str = "/runtime.v1.RuntimeService/ListPodSandbox";
pub const LIST_CONTAINERS: &str = "/runtime.v1.RuntimeService/ListContainers";

/// Builds the snapshot: pod uid → names from the sandboxes; container id → name, for the
/// containers whose sandbox is known.
pub fn join(sandboxes: &ListPodSandboxResponse, containers: &ListContainersResponse) -> Snapshot {
    let mut snap = Snapshot::default();
    for s in &sandboxes.items {
        snap.sandboxes.insert(s.id.clone());
        let Some(m) = &s.metadata else { continue };
        if m.uid.is_empty() {
            continue;
        }
        snap.pods.insert(
            m.uid.clone(),
            PodMeta {
                namespace: m.namespace.clone(),
                name: m.name.clone(),
            },
        );
    }
    for c in &containers.containers {
        if let Some(m) = &c.metadata {
            snap.containers.insert(c.id.clone(), m.name.clone());
        }
    }
    snap
}

/// gRPC message framing: 1 byte "compressed" flag, 4 bytes big-endian length, the message.
pub fn frame(msg: &impl Message) -> Vec<u8> {
    let len = msg.encoded_len();
    let mut out = Vec::with_capacity(5 + len);
    out.push(0);
    out.extend_from_slice(&u32::try_from(len).unwrap_or(u32::MAX).to_be_bytes());
    msg.encode(&mut out)
        .unwrap_or_else(|_| unreachable!("a Vec grows as needed"));
    out
}

/// The single message of a unary response.
pub fn unframe(body: &[u8]) -> Result<&[u8], FrameError> {
    let Some((head, rest)) = body.split_at_checked(5) else {
        return Err(FrameError::Short(body.len()));
    };
    if head[0] != 0 {
        return Err(FrameError::Compressed);
    }
    let len = u32::from_be_bytes([head[1], head[2], head[3], head[4]]) as usize;
    if len > MAX_MESSAGE {
        return Err(FrameError::TooLarge(len));
    }
    rest.get(..len).ok_or(FrameError::Truncated {
        says: len,
        has: rest.len(),
    })
}

fn grpc_status(method: &str, headers: &hyper::HeaderMap) -> Result<(), CriError> {
    let Some(code) = headers.get("grpc-status") else {
        return Ok(());
    };
    let code: u32 = code
        .to_str()
        .ok()
        .and_then(|c| c.parse().ok())
        .ok_or_else(|| CriError::GrpcStatus {
            method: method.to_owned(),
            value: code.clone(),
        })?;
    if code == 0 {
        return Ok(());
    }
    let message = headers
        .get("grpc-message")
        .and_then(|m| m.to_str().ok())
        .unwrap_or("")
        .to_owned();
    Err(CriError::Grpc {
        method: method.to_owned(),
        code,
        message,
    })
}

/// The CRI's `runtime.v1` messages, generated by `build.rs` from the vendored
/// `proto/runtime/v1/api.proto` (messages only: the transport is [`Client`]).
#[expect(
    clippy::doc_lazy_continuation,
    clippy::doc_overindented_list_items,
    reason = "the doc comments are api.proto's, as upstream wrote them"
)]
#[expect(
    clippy::struct_excessive_bools,
    reason = "generated: the CRI's messages carry the flags they carry"
)]
pub mod api {
    include!(concat!(env!("OUT_DIR"), "/runtime.v1.rs"));
}

#[cfg(test)]
mod tests {
    use super::{
        api::{Container, ContainerMetadata, PodSandbox, PodSandboxMetadata, PodSandboxState},
        *,
    };

    fn sandbox(id: &str, uid: &str, ns: &str, name: &str) -> PodSandbox {
        PodSandbox {
            id: id.into(),
            metadata: Some(PodSandboxMetadata {
                name: name.into(),
                uid: uid.into(),
                namespace: ns.into(),
                attempt: 0,
            }),
            state: PodSandboxState::SandboxReady.into(),
            ..PodSandbox::default()
        }
    }

    #[test]
    fn frame_round_trip() {
        let resp = ListPodSandboxResponse {
            items: vec![sandbox("s1", "u1", "shop", "web-0")],
        };
        let framed = frame(&resp);
        assert_eq!(framed[0], 0);
        let back =
            ListPodSandboxResponse::decode(unframe(&framed).expect("frame")).expect("decode");
        assert_eq!(back, resp);
    }

    #[test]
    fn unframe_rejects_bad_frames() {
        for (body, want, why) in [
            (&b""[..], FrameError::Short(0), "shorter"),
            (&[1, 0, 0, 0, 0][..], FrameError::Compressed, "compressed"),
            (
                &[0, 0, 0, 0, 9, 1][..],
                FrameError::Truncated { says: 9, has: 1 },
                "says 9 bytes",
            ),
            (
                &[0, 0xff, 0xff, 0xff, 0xff][..],
                FrameError::TooLarge(0xffff_ffff),
                "exceeds",
            ),
        ] {
            let e = unframe(body).expect_err("must fail");
            assert_eq!(e, want);
            assert!(e.to_string().contains(why), "{e:?} should say {why:?}");
        }
    }

    /// The generated messages decode what a runtime sends field by field, and skip fields a
    /// newer runtime adds that the vendored proto does not know: encode a message by hand
    /// (with a field 99 no api.proto has) and decode it.
    #[test]
    fn unknown_fields_are_skipped() {
        // Container { id = 1: "c1", 4 (image, a message): {1: "busybox"}, 3 (metadata): {1: "app"},
        // 7: created_at varint, 99: a varint from the future }
        let bytes = [
            0x0a, 2, b'c', b'1', // id
            0x22, 9, 0x0a, 7, b'b', b'u', b's', b'y', b'b', b'o', b'x', // image
            0x1a, 5, 0x0a, 3, b'a', b'p', b'p', // metadata.name
            0x38, 0x96, 0x01, // created_at = 150
            0x98, 0x06, 0x01, // field 99 = 1
        ];
        let c = Container::decode(&bytes[..]).expect("decode");
        assert_eq!(c.id, "c1");
        assert_eq!(c.created_at, 150);
        assert_eq!(c.image.map(|i| i.image).as_deref(), Some("busybox"));
        assert_eq!(c.metadata.map(|m| m.name).as_deref(), Some("app"));
    }

    #[test]
    fn join_maps_uids_and_container_ids() {
        let sandboxes = ListPodSandboxResponse {
            items: vec![
                sandbox("s1", "u1", "shop", "web-0"),
                sandbox("s2", "", "x", "no-uid"),
                PodSandbox {
                    id: "s3".into(),
                    metadata: None,
                    state: PodSandboxState::SandboxNotready.into(),
                    ..PodSandbox::default()
                },
            ],
        };
        let containers = ListContainersResponse {
            containers: vec![Container {
                id: "c1".into(),
                pod_sandbox_id: "s1".into(),
                metadata: Some(ContainerMetadata {
                    name: "app".into(),
                    attempt: 1,
                }),
                ..Container::default()
            }],
        };
        crate::util::fuzz_seed("cri", "list-pod-sandbox", &frame(&sandboxes));
        crate::util::fuzz_seed("cri", "list-containers", &frame(&containers));
        let snap = join(&sandboxes, &containers);
        assert_eq!(snap.pods.len(), 1);
        assert_eq!(snap.pods["u1"].name, "web-0");
        assert_eq!(snap.containers["c1"], "app");
        assert_eq!(snap.sandboxes.len(), 3);
    }

    /// A socket nobody listens on fails with a connect error, quickly.
    #[test]
    fn missing_socket_is_a_connect_error() {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("runtime");
        let mut c = Client::new("/nonexistent/podstat-test-cri.sock".into());
        let e = rt.block_on(c.snapshot()).expect_err("no socket");
        assert!(matches!(e, CriError::Connect(_)), "{e:?}");
    }
}
