//! The one ethtool netlink question podstat asks: is ntuple filtering (`rx-ntuple-filter`, the
//! switch that lets the kernel program aRFS rules into the NIC) active on a device?
//!
//! `ETHTOOL_MSG_FEATURES_GET` per device over [`Genl`], so no `ethtool` binary and no netlink
//! crate. Feature bitsets come back in the verbose form (bit names included), so no string-set
//! lookup is needed. Constants from
//! <https://github.com/torvalds/linux/blob/v6.18/include/uapi/linux/ethtool_netlink_generated.h>
//! (5.6+: ethtool netlink).

use super::genl::{Genl, GenlError, NLA_F_NESTED, attrs_of, nested, put_attr};

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
pub type EthtoolError = GenlError;

/// What `ETHTOOL_MSG_FEATURES_GET` said about a device.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Features {
    /// The device's ifindex in this network namespace (from the reply header).
    pub ifindex: u32,
    /// Whether `rx-ntuple-filter` is active.
    pub ntuple: bool,
}

/// A generic netlink socket with the ethtool family resolved.
#[derive(Debug)]
pub struct Ethtool(Genl);

impl Ethtool {
    /// Opens the socket and resolves the `ethtool` family.
    pub fn open() -> Result<Self, EthtoolError> {
        Genl::open("ethtool", "kernel before 5.6 or CONFIG_ETHTOOL_NETLINK=n").map(Self)
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
        let reply = self
            .0
            .request(ETHTOOL_MSG_FEATURES_GET, ETHTOOL_GENL_VERSION, &attrs)?;
        parse_features(&reply)
    }
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
    fn fuzz_seeds() {
        let features = reply(&["rx-checksum", "rx-ntuple-filter", "rx-gro"]);
        crate::util::fuzz_seed(
            "netlink",
            "ethtool-features",
            &crate::netdev::genl::datagram(1, &[&features]),
        );
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
            Err(EthtoolError::NoFamily { .. }) => {
                panic!("this kernel has no ethtool netlink family")
            }
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
