//! A small generic-netlink client over a raw `AF_NETLINK`/`NETLINK_GENERIC` socket, for the two
//! families podstat asks: `ethtool` ([`super::ethtool`]) and `netdev` ([`super::qstats`]).
//! Resolve the family id once (`CTRL_CMD_GETFAMILY`), then requests (one reply) and dumps (many).
//!
//! Written here rather than taken from a netlink crate: podstat needs two requests and a dump,
//! a few hundred lines, where `neli` or the `netlink-packet-*` stack would add their generic
//! machinery and a family definition for each. Constants from
//! <https://github.com/torvalds/linux/blob/v6.18/include/uapi/linux/netlink.h> and
//! `include/uapi/linux/genetlink.h`.

use std::{
    io,
    os::fd::{AsRawFd, FromRawFd, OwnedFd},
};

const NETLINK_GENERIC: i32 = 16;
const NLM_F_REQUEST: u16 = 1;
const NLM_F_ACK: u16 = 4;
/// `NLM_F_ROOT | NLM_F_MATCH`.
const NLM_F_DUMP: u16 = 0x300;
const NLMSG_ERROR: u16 = 2;
const NLMSG_DONE: u16 = 3;
pub const NLA_F_NESTED: u16 = 1 << 15;
const NLA_TYPE_MASK: u16 = !(NLA_F_NESTED | (1 << 14));

const GENL_ID_CTRL: u16 = 0x10;
const CTRL_CMD_GETFAMILY: u8 = 3;
const CTRL_ATTR_FAMILY_ID: u16 = 1;
const CTRL_ATTR_FAMILY_NAME: u16 = 2;

/// Why a generic netlink question could not be answered.
#[derive(Debug, thiserror::Error)]
pub enum GenlError {
    #[error("netlink socket")]
    Socket(#[source] io::Error),
    #[error("netlink send/receive")]
    Io(#[source] io::Error),
    /// The kernel has no such generic netlink family (named, with what provides it).
    #[error("no {name} generic netlink family ({needs})")]
    NoFamily {
        name: &'static str,
        needs: &'static str,
    },
    /// The kernel answered with an error (ENODEV: no such device in this network namespace).
    #[error("kernel error {0}")]
    Kernel(#[source] io::Error),
    #[error("malformed netlink reply: {0}")]
    Malformed(&'static str),
}

/// An open generic netlink socket with one family resolved.
#[derive(Debug)]
pub struct Genl {
    fd: OwnedFd,
    family: u16,
    seq: u32,
}

impl Genl {
    /// Opens the socket and resolves family `name`; `needs` says what provides it, for the
    /// error when the kernel has none.
    pub fn open(name: &'static str, needs: &'static str) -> Result<Self, GenlError> {
        // SAFETY: plain socket(2) call; the result is checked before use.
        let raw = unsafe {
            libc::socket(
                libc::AF_NETLINK,
                libc::SOCK_RAW | libc::SOCK_CLOEXEC,
                NETLINK_GENERIC,
            )
        };
        if raw < 0 {
            return Err(GenlError::Socket(io::Error::last_os_error()));
        }
        // SAFETY: `raw` is a fresh descriptor that nothing else owns.
        let fd = unsafe { OwnedFd::from_raw_fd(raw) };
        let tv = libc::timeval {
            tv_sec: 1,
            tv_usec: 0,
        };
        // SAFETY: `tv` is a valid timeval of the size passed; a failure only leaves the socket
        // blocking, which the kernel's prompt netlink answers make harmless.
        unsafe {
            libc::setsockopt(
                fd.as_raw_fd(),
                libc::SOL_SOCKET,
                libc::SO_RCVTIMEO,
                (&raw const tv).cast(),
                u32::try_from(size_of::<libc::timeval>()).unwrap_or(16),
            );
        }
        let mut this = Self {
            fd,
            family: GENL_ID_CTRL,
            seq: 0,
        };
        let mut attrs = Vec::new();
        let mut n = name.as_bytes().to_vec();
        n.push(0);
        put_attr(&mut attrs, CTRL_ATTR_FAMILY_NAME, &n);
        let reply = match this.request(CTRL_CMD_GETFAMILY, 1, &attrs) {
            Ok(r) => r,
            Err(GenlError::Kernel(e)) if e.raw_os_error() == Some(libc::ENOENT) => {
                return Err(GenlError::NoFamily { name, needs });
            }
            Err(e) => return Err(e),
        };
        let id = attrs_of(&reply)
            .find(|(t, _)| *t == CTRL_ATTR_FAMILY_ID)
            .and_then(|(_, v)| v.get(..2))
            .map(|b| u16::from_ne_bytes([b[0], b[1]]))
            .ok_or(GenlError::Malformed("no CTRL_ATTR_FAMILY_ID"))?;
        this.family = id;
        Ok(this)
    }

    /// Sends one request and returns the payload (after the genl header) of its reply.
    pub fn request(&mut self, cmd: u8, version: u8, attrs: &[u8]) -> Result<Vec<u8>, GenlError> {
        let mut replies = self.exchange(cmd, version, attrs, NLM_F_REQUEST | NLM_F_ACK)?;
        replies
            .pop()
            .ok_or(GenlError::Malformed("ACK without a reply"))
    }

    /// Sends a dump request and returns the payload of every message of the answer.
    pub fn dump(&mut self, cmd: u8, version: u8, attrs: &[u8]) -> Result<Vec<Vec<u8>>, GenlError> {
        self.exchange(cmd, version, attrs, NLM_F_REQUEST | NLM_F_DUMP)
    }

    fn exchange(
        &mut self,
        cmd: u8,
        version: u8,
        attrs: &[u8],
        flags: u16,
    ) -> Result<Vec<Vec<u8>>, GenlError> {
        self.seq = self.seq.wrapping_add(1);
        let len = 16 + 4 + attrs.len();
        let mut msg = Vec::with_capacity(len);
        msg.extend_from_slice(
            &u32::try_from(len)
                .map_err(|_| GenlError::Malformed("request too long"))?
                .to_ne_bytes(),
        );
        msg.extend_from_slice(&self.family.to_ne_bytes());
        msg.extend_from_slice(&flags.to_ne_bytes());
        msg.extend_from_slice(&self.seq.to_ne_bytes());
        msg.extend_from_slice(&0u32.to_ne_bytes());
        msg.extend_from_slice(&[cmd, version, 0, 0]);
        msg.extend_from_slice(attrs);
        // SAFETY: `msg` is a valid buffer of `msg.len()` bytes; a netlink socket with no
        // address sends to the kernel.
        let sent = unsafe { libc::send(self.fd.as_raw_fd(), msg.as_ptr().cast(), msg.len(), 0) };
        if sent < 0 {
            return Err(GenlError::Io(io::Error::last_os_error()));
        }
        let mut buf = vec![0u8; 32768];
        let mut payloads = Vec::new();
        loop {
            // SAFETY: `buf` is a valid writable buffer of `buf.len()` bytes.
            let n =
                unsafe { libc::recv(self.fd.as_raw_fd(), buf.as_mut_ptr().cast(), buf.len(), 0) };
            let n = usize::try_from(n).map_err(|_| GenlError::Io(io::Error::last_os_error()))?;
            if read_datagram(&buf[..n], self.seq, &mut payloads)? {
                return Ok(payloads);
            }
        }
    }
}

/// Reads one datagram of the kernel's answer to request `seq`: appends the payload (after the
/// genl header) of each of its messages to `payloads`, skipping other requests' messages.
/// `Ok(true)` when the answer is complete (the ACK or `NLMSG_DONE`), `Ok(false)` when more
/// datagrams follow.
pub fn read_datagram(
    datagram: &[u8],
    seq: u32,
    payloads: &mut Vec<Vec<u8>>,
) -> Result<bool, GenlError> {
    let mut rest = datagram;
    while rest.len() >= 16 {
        let mlen = u32::from_ne_bytes([rest[0], rest[1], rest[2], rest[3]]) as usize;
        let mtype = u16::from_ne_bytes([rest[4], rest[5]]);
        let mseq = u32::from_ne_bytes([rest[8], rest[9], rest[10], rest[11]]);
        if mlen < 16 || mlen > rest.len() {
            return Err(GenlError::Malformed("netlink message length"));
        }
        let body = &rest[16..mlen];
        rest = &rest[align4(mlen).min(rest.len())..];
        if mseq != seq {
            continue;
        }
        match mtype {
            NLMSG_ERROR => {
                let code = body
                    .get(..4)
                    .map(|b| i32::from_ne_bytes([b[0], b[1], b[2], b[3]]))
                    .ok_or(GenlError::Malformed("short NLMSG_ERROR"))?;
                if code != 0 {
                    // A negative errno; i32::MIN has no positive counterpart.
                    let errno = code
                        .checked_neg()
                        .ok_or(GenlError::Malformed("NLMSG_ERROR code"))?;
                    return Err(GenlError::Kernel(io::Error::from_raw_os_error(errno)));
                }
                // The ACK: the replies came before it.
                return Ok(true);
            }
            NLMSG_DONE => return Ok(true),
            _ => {
                let genl = body
                    .get(4..)
                    .ok_or(GenlError::Malformed("short genl message"))?;
                payloads.push(genl.to_vec());
            }
        }
    }
    Ok(false)
}

const fn align4(n: usize) -> usize {
    (n + 3) & !3
}

/// Appends attribute `kind` with `value` (padded to 4 bytes).
pub fn put_attr(buf: &mut Vec<u8>, kind: u16, value: &[u8]) {
    let len = u16::try_from(4 + value.len()).unwrap_or(u16::MAX);
    buf.extend_from_slice(&len.to_ne_bytes());
    buf.extend_from_slice(&kind.to_ne_bytes());
    buf.extend_from_slice(value);
    buf.resize(align4(buf.len()), 0);
}

/// The attributes in `buf`, as (type without flags, value).
pub fn attrs_of(buf: &[u8]) -> impl Iterator<Item = (u16, &[u8])> {
    let mut rest = buf;
    std::iter::from_fn(move || {
        if rest.len() < 4 {
            return None;
        }
        let len = usize::from(u16::from_ne_bytes([rest[0], rest[1]]));
        let kind = u16::from_ne_bytes([rest[2], rest[3]]) & NLA_TYPE_MASK;
        if len < 4 || len > rest.len() {
            return None;
        }
        let value = &rest[4..len];
        rest = &rest[align4(len).min(rest.len())..];
        Some((kind, value))
    })
}

/// The value of the first attribute `kind` in `buf`.
pub fn nested(buf: &[u8], kind: u16) -> Option<&[u8]> {
    attrs_of(buf).find(|(t, _)| *t == kind).map(|(_, v)| v)
}

/// An `NLA_U32` or `NLA_UINT` (4 or 8 bytes) value.
pub fn uint(v: &[u8]) -> Option<u64> {
    match v.len() {
        4 => Some(u64::from(u32::from_ne_bytes([v[0], v[1], v[2], v[3]]))),
        8 => Some(u64::from_ne_bytes([
            v[0], v[1], v[2], v[3], v[4], v[5], v[6], v[7],
        ])),
        _ => None,
    }
}

/// A datagram as the kernel sends it: each payload as a genl message (`nlmsghdr` and genl
/// header) of request `seq`, then `NLMSG_DONE`. For the parsers' tests and fuzz seeds.
#[cfg(test)]
pub fn datagram(seq: u32, payloads: &[&[u8]]) -> Vec<u8> {
    let mut out = Vec::new();
    let mut message = |kind: u16, body: &[u8]| {
        let len = u32::try_from(16 + body.len()).expect("a small message");
        out.extend_from_slice(&len.to_ne_bytes());
        out.extend_from_slice(&kind.to_ne_bytes());
        out.extend_from_slice(&0u16.to_ne_bytes());
        out.extend_from_slice(&seq.to_ne_bytes());
        out.extend_from_slice(&0u32.to_ne_bytes());
        out.extend_from_slice(body);
        out.resize(align4(out.len()), 0);
    };
    for p in payloads {
        let mut body = vec![1, 1, 0, 0];
        body.extend_from_slice(p);
        message(0x20, &body);
    }
    message(NLMSG_DONE, &0i32.to_ne_bytes());
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A netlink message header and body, as `datagram` writes them.
    fn message(kind: u16, seq: u32, body: &[u8]) -> Vec<u8> {
        let mut m = Vec::new();
        m.extend_from_slice(&u32::try_from(16 + body.len()).expect("small").to_ne_bytes());
        m.extend_from_slice(&kind.to_ne_bytes());
        m.extend_from_slice(&[0, 0]);
        m.extend_from_slice(&seq.to_ne_bytes());
        m.extend_from_slice(&[0; 4]);
        m.extend_from_slice(body);
        m
    }

    #[test]
    fn datagrams_split_into_payloads() {
        let mut payloads = Vec::new();
        assert!(read_datagram(&datagram(7, &[b"ab\0\0", b""]), 7, &mut payloads).expect("done"));
        assert_eq!(payloads, [b"ab\0\0".to_vec(), Vec::new()]);

        // Another request's messages are skipped; without DONE or an ACK, more follow.
        let mut payloads = Vec::new();
        let other = message(0x20, 6, &[1, 1, 0, 0, 9, 9, 9, 9]);
        assert!(!read_datagram(&other, 7, &mut payloads).expect("more"));
        assert!(payloads.is_empty());

        // The ACK ends the answer; an error code is the kernel's errno.
        let ack = message(NLMSG_ERROR, 7, &0i32.to_ne_bytes());
        assert!(read_datagram(&ack, 7, &mut payloads).expect("ack"));
        let enoent = message(NLMSG_ERROR, 7, &(-libc::ENOENT).to_ne_bytes());
        let e = read_datagram(&enoent, 7, &mut payloads).expect_err("errno");
        assert!(
            matches!(&e, GenlError::Kernel(k) if k.raw_os_error() == Some(libc::ENOENT)),
            "{e:?}"
        );

        for (bad, what) in [
            (message(NLMSG_ERROR, 7, &[0, 0]), "short NLMSG_ERROR"),
            (
                message(NLMSG_ERROR, 7, &i32::MIN.to_ne_bytes()),
                "NLMSG_ERROR code",
            ),
            (message(0x20, 7, &[1, 1]), "short genl message"),
            (
                [&[8, 0, 0, 0][..], &[0; 12]].concat(),
                "netlink message length",
            ),
            (
                [&[255, 0, 0, 0][..], &[0; 12]].concat(),
                "netlink message length",
            ),
        ] {
            let e = read_datagram(&bad, 7, &mut payloads).expect_err(what);
            assert!(matches!(e, GenlError::Malformed(m) if m == what), "{what}");
        }
    }

    /// Found by the `netlink` fuzz target: an `NLMSG_ERROR` with code `i32::MIN`, whose
    /// negation overflowed.
    #[test]
    fn fuzz_crash_error_code_min() {
        let input =
            crate::util::fuzz_input("netlink", "crash-6e6b3b792778c816b85d222516e9d7b7035c897b");
        let e = read_datagram(&input, 1, &mut Vec::new()).expect_err("malformed");
        assert!(
            matches!(e, GenlError::Malformed("NLMSG_ERROR code")),
            "{e:?}"
        );
    }
}
