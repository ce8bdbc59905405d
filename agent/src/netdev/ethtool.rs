//! The one ethtool netlink question podstat asks: is ntuple filtering (`rx-ntuple-filter`, the
//! switch that lets the kernel program aRFS rules into the NIC) active on a device?
//!
//! A small generic-netlink exchange over a raw `AF_NETLINK`/`NETLINK_GENERIC` socket, so no
//! `ethtool` binary and no netlink crate: resolve the `ethtool` family id once
//! (`CTRL_CMD_GETFAMILY`), then `ETHTOOL_MSG_FEATURES_GET` per device. Feature bitsets come back
//! in the verbose form (bit names included), so no string-set lookup is needed.
//! Constants from
//! <https://github.com/torvalds/linux/blob/v6.18/include/uapi/linux/ethtool_netlink_generated.h>
//! (5.6+: ethtool netlink) and `include/uapi/linux/genetlink.h`.

use std::{
    io,
    os::fd::{AsRawFd, FromRawFd, OwnedFd},
};

const NETLINK_GENERIC: i32 = 16;
const NLM_F_REQUEST: u16 = 1;
const NLM_F_ACK: u16 = 4;
const NLMSG_ERROR: u16 = 2;
const NLMSG_DONE: u16 = 3;
const NLA_F_NESTED: u16 = 1 << 15;
const NLA_TYPE_MASK: u16 = !(NLA_F_NESTED | (1 << 14));

const GENL_ID_CTRL: u16 = 0x10;
const CTRL_CMD_GETFAMILY: u8 = 3;
const CTRL_ATTR_FAMILY_ID: u16 = 1;
const CTRL_ATTR_FAMILY_NAME: u16 = 2;

const ETHTOOL_GENL_VERSION: u8 = 1;
const ETHTOOL_MSG_FEATURES_GET: u8 = 11;
const ETHTOOL_A_HEADER_DEV_INDEX: u16 = 1;
const ETHTOOL_A_HEADER_DEV_NAME: u16 = 2;
const ETHTOOL_A_FEATURES_HEADER: u16 = 1;
const ETHTOOL_A_FEATURES_ACTIVE: u16 = 4;
const ETHTOOL_A_BITSET_NOMASK: u16 = 1;
const ETHTOOL_A_BITSET_BITS: u16 = 3;
const ETHTOOL_A_BITSET_BITS_BIT: u16 = 1;
const ETHTOOL_A_BITSET_BIT_NAME: u16 = 2;
const ETHTOOL_A_BITSET_BIT_VALUE: u16 = 3;

/// The feature name of `NETIF_F_NTUPLE` (`net/ethtool/common.c`).
pub const NTUPLE_FEATURE: &str = "rx-ntuple-filter";

/// Why the question could not be answered.
#[derive(Debug, thiserror::Error)]
pub enum EthtoolError {
    #[error("netlink socket")]
    Socket(#[source] io::Error),
    #[error("netlink send/receive")]
    Io(#[source] io::Error),
    /// The kernel has no `ethtool` generic netlink family (before 5.6, or CONFIG_ETHTOOL_NETLINK off).
    #[error("no ethtool generic netlink family (kernel before 5.6 or CONFIG_ETHTOOL_NETLINK=n)")]
    NoFamily,
    /// The kernel answered with an error (ENODEV: no such device in this network namespace).
    #[error("kernel error {0}")]
    Kernel(#[source] io::Error),
    #[error("malformed netlink reply: {0}")]
    Malformed(&'static str),
}

/// What `ETHTOOL_MSG_FEATURES_GET` said about a device.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Features {
    /// The device's ifindex in this network namespace (from the reply header).
    pub ifindex: u32,
    /// Whether `rx-ntuple-filter` is active.
    pub ntuple: bool,
}

/// An open generic netlink socket with the ethtool family resolved.
#[derive(Debug)]
pub struct Ethtool {
    fd: OwnedFd,
    family: u16,
    seq: u32,
}

impl Ethtool {
    /// Opens the socket and resolves the `ethtool` family.
    pub fn open() -> Result<Self, EthtoolError> {
        // SAFETY: plain socket(2) call; the result is checked before use.
        let raw = unsafe {
            libc::socket(
                libc::AF_NETLINK,
                libc::SOCK_RAW | libc::SOCK_CLOEXEC,
                NETLINK_GENERIC,
            )
        };
        if raw < 0 {
            return Err(EthtoolError::Socket(io::Error::last_os_error()));
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
            family: 0,
            seq: 0,
        };
        let mut attrs = Vec::new();
        put_attr(&mut attrs, CTRL_ATTR_FAMILY_NAME, b"ethtool\0");
        let reply = match this.request(GENL_ID_CTRL, CTRL_CMD_GETFAMILY, 1, &attrs) {
            Ok(r) => r,
            Err(EthtoolError::Kernel(e)) if e.raw_os_error() == Some(libc::ENOENT) => {
                return Err(EthtoolError::NoFamily);
            }
            Err(e) => return Err(e),
        };
        let id = attrs_of(&reply)
            .find(|(t, _)| *t == CTRL_ATTR_FAMILY_ID)
            .and_then(|(_, v)| v.get(..2))
            .map(|b| u16::from_ne_bytes([b[0], b[1]]))
            .ok_or(EthtoolError::Malformed("no CTRL_ATTR_FAMILY_ID"))?;
        this.family = id;
        Ok(this)
    }

    /// The active features of device `name` that podstat cares about.
    pub fn features(&mut self, name: &str) -> Result<Features, EthtoolError> {
        let mut header = Vec::new();
        let mut dev = name.as_bytes().to_vec();
        dev.push(0);
        put_attr(&mut header, ETHTOOL_A_HEADER_DEV_NAME, &dev);
        let mut attrs = Vec::new();
        put_attr(
            &mut attrs,
            ETHTOOL_A_FEATURES_HEADER | NLA_F_NESTED,
            &header,
        );
        let reply = self.request(
            self.family,
            ETHTOOL_MSG_FEATURES_GET,
            ETHTOOL_GENL_VERSION,
            &attrs,
        )?;
        parse_features(&reply)
    }

    /// Sends one request and returns the payload (after the genl header) of its reply.
    fn request(
        &mut self,
        family: u16,
        cmd: u8,
        version: u8,
        attrs: &[u8],
    ) -> Result<Vec<u8>, EthtoolError> {
        self.seq = self.seq.wrapping_add(1);
        let len = 16 + 4 + attrs.len();
        let mut msg = Vec::with_capacity(len);
        msg.extend_from_slice(
            &u32::try_from(len)
                .map_err(|_| EthtoolError::Malformed("request too long"))?
                .to_ne_bytes(),
        );
        msg.extend_from_slice(&family.to_ne_bytes());
        msg.extend_from_slice(&(NLM_F_REQUEST | NLM_F_ACK).to_ne_bytes());
        msg.extend_from_slice(&self.seq.to_ne_bytes());
        msg.extend_from_slice(&0u32.to_ne_bytes());
        msg.extend_from_slice(&[cmd, version, 0, 0]);
        msg.extend_from_slice(attrs);
        // SAFETY: `msg` is a valid buffer of `msg.len()` bytes; a netlink socket with no
        // address sends to the kernel.
        let sent = unsafe { libc::send(self.fd.as_raw_fd(), msg.as_ptr().cast(), msg.len(), 0) };
        if sent < 0 {
            return Err(EthtoolError::Io(io::Error::last_os_error()));
        }
        let mut buf = vec![0u8; 16384];
        let mut payload = None;
        loop {
            // SAFETY: `buf` is a valid writable buffer of `buf.len()` bytes.
            let n =
                unsafe { libc::recv(self.fd.as_raw_fd(), buf.as_mut_ptr().cast(), buf.len(), 0) };
            let n = usize::try_from(n).map_err(|_| EthtoolError::Io(io::Error::last_os_error()))?;
            let mut rest = &buf[..n];
            while rest.len() >= 16 {
                let mlen = u32::from_ne_bytes([rest[0], rest[1], rest[2], rest[3]]) as usize;
                let mtype = u16::from_ne_bytes([rest[4], rest[5]]);
                let mseq = u32::from_ne_bytes([rest[8], rest[9], rest[10], rest[11]]);
                if mlen < 16 || mlen > rest.len() {
                    return Err(EthtoolError::Malformed("netlink message length"));
                }
                let body = &rest[16..mlen];
                rest = &rest[align4(mlen).min(rest.len())..];
                if mseq != self.seq {
                    continue;
                }
                match mtype {
                    NLMSG_ERROR => {
                        let code = body
                            .get(..4)
                            .map(|b| i32::from_ne_bytes([b[0], b[1], b[2], b[3]]))
                            .ok_or(EthtoolError::Malformed("short NLMSG_ERROR"))?;
                        if code != 0 {
                            return Err(EthtoolError::Kernel(io::Error::from_raw_os_error(-code)));
                        }
                        // The ACK: the reply came before it.
                        return payload.ok_or(EthtoolError::Malformed("ACK without a reply"));
                    }
                    NLMSG_DONE => {
                        return payload.ok_or(EthtoolError::Malformed("DONE without a reply"));
                    }
                    _ => {
                        let genl = body
                            .get(4..)
                            .ok_or(EthtoolError::Malformed("short genl message"))?;
                        payload = Some(genl.to_vec());
                    }
                }
            }
        }
    }
}

const fn align4(n: usize) -> usize {
    (n + 3) & !3
}

fn put_attr(buf: &mut Vec<u8>, kind: u16, value: &[u8]) {
    let len = u16::try_from(4 + value.len()).unwrap_or(u16::MAX);
    buf.extend_from_slice(&len.to_ne_bytes());
    buf.extend_from_slice(&kind.to_ne_bytes());
    buf.extend_from_slice(value);
    buf.resize(align4(buf.len()), 0);
}

/// The attributes in `buf`, as (type without flags, value).
fn attrs_of(buf: &[u8]) -> impl Iterator<Item = (u16, &[u8])> {
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

fn nested(buf: &[u8], kind: u16) -> Option<&[u8]> {
    attrs_of(buf).find(|(t, _)| *t == kind).map(|(_, v)| v)
}

/// Parses an `ETHTOOL_MSG_FEATURES_GET` reply (attributes after the genl header).
pub fn parse_features(reply: &[u8]) -> Result<Features, EthtoolError> {
    let header = nested(reply, ETHTOOL_A_FEATURES_HEADER)
        .ok_or(EthtoolError::Malformed("no ETHTOOL_A_FEATURES_HEADER"))?;
    let ifindex = nested(header, ETHTOOL_A_HEADER_DEV_INDEX)
        .and_then(|v| v.get(..4))
        .map(|b| u32::from_ne_bytes([b[0], b[1], b[2], b[3]]))
        .ok_or(EthtoolError::Malformed("no ETHTOOL_A_HEADER_DEV_INDEX"))?;
    let active = nested(reply, ETHTOOL_A_FEATURES_ACTIVE)
        .ok_or(EthtoolError::Malformed("no ETHTOOL_A_FEATURES_ACTIVE"))?;
    // Verbose bitset: with NOMASK (a "list", how ACTIVE comes) only set bits are listed;
    // otherwise a listed bit is set when it carries the VALUE flag.
    let list = nested(active, ETHTOOL_A_BITSET_NOMASK).is_some();
    let ntuple = nested(active, ETHTOOL_A_BITSET_BITS).is_some_and(|bits| {
        attrs_of(bits)
            .filter(|(t, _)| *t == ETHTOOL_A_BITSET_BITS_BIT)
            .any(|(_, bit)| {
                let name = nested(bit, ETHTOOL_A_BITSET_BIT_NAME)
                    .map(|n| n.strip_suffix(b"\0").unwrap_or(n));
                name == Some(NTUPLE_FEATURE.as_bytes())
                    && (list || nested(bit, ETHTOOL_A_BITSET_BIT_VALUE).is_some())
            })
    });
    Ok(Features { ifindex, ntuple })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn bit(name: &str, value: bool) -> Vec<u8> {
        let mut b = Vec::new();
        put_attr(&mut b, 1, &7u32.to_ne_bytes());
        let mut n = name.as_bytes().to_vec();
        n.push(0);
        put_attr(&mut b, ETHTOOL_A_BITSET_BIT_NAME, &n);
        if value {
            put_attr(&mut b, ETHTOOL_A_BITSET_BIT_VALUE, &[]);
        }
        b
    }

    fn reply(active: &[&str]) -> Vec<u8> {
        let mut header = Vec::new();
        put_attr(
            &mut header,
            ETHTOOL_A_HEADER_DEV_INDEX,
            &42u32.to_ne_bytes(),
        );
        put_attr(&mut header, ETHTOOL_A_HEADER_DEV_NAME, b"eth9\0");
        let mut bits = Vec::new();
        for name in active {
            put_attr(
                &mut bits,
                ETHTOOL_A_BITSET_BITS_BIT | NLA_F_NESTED,
                &bit(name, false),
            );
        }
        let mut set = Vec::new();
        put_attr(&mut set, ETHTOOL_A_BITSET_NOMASK, &[]);
        put_attr(&mut set, 2, &64u32.to_ne_bytes());
        put_attr(&mut set, ETHTOOL_A_BITSET_BITS | NLA_F_NESTED, &bits);
        let mut r = Vec::new();
        put_attr(&mut r, ETHTOOL_A_FEATURES_HEADER | NLA_F_NESTED, &header);
        put_attr(&mut r, ETHTOOL_A_FEATURES_ACTIVE | NLA_F_NESTED, &set);
        r
    }

    #[test]
    fn ntuple_found_among_active_features() {
        let on =
            parse_features(&reply(&["rx-checksum", "rx-ntuple-filter", "rx-gro"])).expect("parse");
        assert_eq!(
            on,
            Features {
                ifindex: 42,
                ntuple: true
            }
        );
        let off = parse_features(&reply(&["rx-checksum", "rx-ntuple-filter-x"])).expect("parse");
        assert!(!off.ntuple);
        assert!(parse_features(&[]).is_err());
    }

    /// The running kernel answers for loopback (ntuple is never on there).
    #[test]
    fn asks_the_running_kernel_about_loopback() {
        let mut e = match Ethtool::open() {
            Ok(e) => e,
            Err(EthtoolError::NoFamily) => panic!("this kernel has no ethtool netlink family"),
            Err(e) => panic!("opening the ethtool netlink socket: {e}"),
        };
        let f = e.features("lo").expect("FEATURES_GET lo");
        assert_eq!(f.ifindex, 1);
        assert!(!f.ntuple);
        match e.features("podstat-test-nonexistent") {
            Err(EthtoolError::Kernel(err)) => assert_eq!(err.raw_os_error(), Some(libc::ENODEV)),
            other => panic!("expected ENODEV, got {other:?}"),
        }
    }
}
