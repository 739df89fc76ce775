//! The outbound policy: which IP addresses handlers may reach.
//!
//! Handlers call internal systems (CRMs, switches) on private networks by design, so
//! private ranges stay allowed. What is refused by default is what no handler needs and
//! an attacker wants: link-local addresses and cloud metadata services
//! (`169.254.0.0/16`, `fe80::/10`, `fd00:ec2::254/128`), unspecified addresses
//! (`0.0.0.0/8`, `::/128`), multicast (`224.0.0.0/4`, `ff00::/8`) and broadcast
//! (`255.255.255.255/32`). These built-in entries always apply; operators add deny
//! entries (`--outbound-deny`) and allow entries (`--outbound-allow`).
//!
//! Decision for an address: among all entries containing it (built-in, deny, allow),
//! the **most specific** one (longest prefix) decides; on equal prefixes deny wins; an
//! address no entry contains is allowed. So `--outbound-allow 169.254.10.0/24` opens a
//! part of the link-local range, `--outbound-allow 0.0.0.0/0` opens nothing the defaults
//! deny, and `--outbound-deny 0.0.0.0/0,::/0 --outbound-allow 10.0.0.0/8` allows only
//! `10.0.0.0/8` (minus nothing, as no default lies inside it).
//!
//! IPv4-mapped IPv6 addresses (`::ffff:a.b.c.d`) are judged as the IPv4 address they
//! carry, so `::ffff:169.254.169.254` is refused like `169.254.169.254`.

use std::fmt;
use std::net::IpAddr;
use std::str::FromStr;

/// An IP network: an address and a prefix length, host bits zero.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Cidr {
    network: IpAddr,
    prefix: u8,
}

impl Cidr {
    /// Whether `ip` lies in this network (addresses of the other family never do).
    pub fn contains(&self, ip: IpAddr) -> bool {
        match (self.network, ip) {
            (IpAddr::V4(net), IpAddr::V4(ip)) => {
                mask(u128::from(u32::from(ip)), 32, self.prefix) == u128::from(u32::from(net))
            }
            (IpAddr::V6(net), IpAddr::V6(ip)) => {
                mask(u128::from(ip), 128, self.prefix) == u128::from(net)
            }
            _ => false,
        }
    }

    /// The prefix length.
    pub fn prefix(&self) -> u8 {
        self.prefix
    }
}

/// `value`, an address of `bits` bits, with all but its first `prefix` bits cleared.
fn mask(value: u128, bits: u8, prefix: u8) -> u128 {
    if prefix == 0 {
        return 0;
    }
    let width = if bits == 128 {
        u128::MAX
    } else {
        (1u128 << bits) - 1
    };
    value & (u128::MAX << (bits - prefix)) & width
}

impl FromStr for Cidr {
    type Err = String;

    /// `10.0.0.0/8`, `fe80::/10`, or a bare address (a single host: `/32`, `/128`).
    fn from_str(text: &str) -> Result<Cidr, String> {
        let text = text.trim();
        let (address, prefix) = match text.split_once('/') {
            Some((address, prefix)) => (address, Some(prefix)),
            None => (text, None),
        };
        let network: IpAddr = address
            .parse()
            .map_err(|_| format!("{text:?} is not a CIDR range like 10.0.0.0/8 or fe80::/10"))?;
        let bits = if network.is_ipv4() { 32 } else { 128 };
        let prefix = match prefix {
            None => bits,
            Some(p) => p
                .parse::<u8>()
                .ok()
                .filter(|p| *p <= bits)
                .ok_or_else(|| format!("{text:?}: the prefix length must be 0 to {bits}"))?,
        };
        let cidr = Cidr { network, prefix };
        if !cidr.contains(network) {
            return Err(format!(
                "{text:?} has host bits set: did you mean {}?",
                Cidr {
                    network: masked(network, prefix),
                    prefix
                }
            ));
        }
        Ok(cidr)
    }
}

fn masked(ip: IpAddr, prefix: u8) -> IpAddr {
    match ip {
        IpAddr::V4(v4) => IpAddr::V4((mask(u128::from(u32::from(v4)), 32, prefix) as u32).into()),
        IpAddr::V6(v6) => IpAddr::V6(mask(u128::from(v6), 128, prefix).into()),
    }
}

impl fmt::Display for Cidr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.network, self.prefix)
    }
}

/// What an entry says about the addresses it contains.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Rule {
    /// May be connected to.
    Allow,
    /// Must not be connected to.
    Deny,
}

/// The built-in deny entries, always part of the policy.
pub const DEFAULT_DENY: [&str; 8] = [
    "169.254.0.0/16",     // IPv4 link-local, cloud metadata (169.254.169.254)
    "fe80::/10",          // IPv6 link-local
    "fd00:ec2::254/128",  // AWS metadata over IPv6
    "0.0.0.0/8",          // "this network", unspecified
    "::/128",             // IPv6 unspecified
    "224.0.0.0/4",        // IPv4 multicast
    "ff00::/8",           // IPv6 multicast
    "255.255.255.255/32", // limited broadcast
];

/// Why an address was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("outbound policy denies {address} ({range})")]
pub struct Denied {
    /// The address refused (IPv4 for mapped addresses).
    pub address: IpAddr,
    /// The deny entry that decided.
    pub range: Cidr,
}

/// The operator's outbound policy: the built-in deny entries plus the configured ones.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OutboundPolicy {
    entries: Vec<(Cidr, Rule)>,
}

impl Default for OutboundPolicy {
    /// The built-in entries alone.
    fn default() -> OutboundPolicy {
        OutboundPolicy::new(&[], &[])
    }
}

impl OutboundPolicy {
    /// The built-in deny entries, then `deny`, then `allow`.
    pub fn new(allow: &[Cidr], deny: &[Cidr]) -> OutboundPolicy {
        let builtin = DEFAULT_DENY.iter().filter_map(|text| text.parse().ok());
        let entries = builtin
            .chain(deny.iter().copied())
            .map(|cidr| (cidr, Rule::Deny))
            .chain(allow.iter().map(|cidr| (*cidr, Rule::Allow)))
            .collect();
        OutboundPolicy { entries }
    }

    /// Whether `ip` may be connected to: the most specific entry containing it decides,
    /// deny winning ties; no entry = allowed.
    pub fn check(&self, ip: IpAddr) -> Result<(), Denied> {
        let ip = canonical(ip);
        let decisive = self
            .entries
            .iter()
            .filter(|(cidr, _)| cidr.contains(ip))
            .max_by_key(|(cidr, rule)| (cidr.prefix, *rule == Rule::Deny));
        match decisive {
            Some((range, Rule::Deny)) => Err(Denied {
                address: ip,
                range: *range,
            }),
            _ => Ok(()),
        }
    }
}

/// IPv4-mapped IPv6 addresses as the IPv4 address they carry.
fn canonical(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
            Some(v4) => IpAddr::V4(v4),
            None => IpAddr::V6(v6),
        },
        v4 => v4,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cidr(text: &str) -> Cidr {
        text.parse().unwrap()
    }

    fn ip(text: &str) -> IpAddr {
        text.parse().unwrap()
    }

    fn denied_by(policy: &OutboundPolicy, address: &str) -> Option<String> {
        policy.check(ip(address)).err().map(|d| d.range.to_string())
    }

    #[test]
    fn cidrs_parse_and_contain() {
        assert!(cidr("10.0.0.0/8").contains(ip("10.255.1.2")));
        assert!(!cidr("10.0.0.0/8").contains(ip("11.0.0.1")));
        assert!(cidr("0.0.0.0/0").contains(ip("8.8.8.8")));
        assert!(!cidr("0.0.0.0/0").contains(ip("::1")), "families never mix");
        assert!(cidr("fe80::/10").contains(ip("febf::1")));
        assert!(!cidr("fe80::/10").contains(ip("fec0::1")));
        assert!(cidr("::/0").contains(ip("2001:db8::1")));
        assert_eq!(cidr("192.0.2.7"), cidr("192.0.2.7/32"));
        assert_eq!(cidr("::1").prefix(), 128);
        assert_eq!(cidr(" 10.1.0.0/16 ").to_string(), "10.1.0.0/16");
    }

    #[test]
    fn bad_cidrs_are_refused_with_a_reason() {
        assert!("10.0.0.1/8"
            .parse::<Cidr>()
            .unwrap_err()
            .contains("did you mean 10.0.0.0/8"));
        assert!("10.0.0.0/33"
            .parse::<Cidr>()
            .unwrap_err()
            .contains("0 to 32"));
        assert!("fe80::/129"
            .parse::<Cidr>()
            .unwrap_err()
            .contains("0 to 128"));
        assert!("example.com".parse::<Cidr>().is_err());
        assert!("10.0.0.0/x".parse::<Cidr>().is_err());
        assert!("".parse::<Cidr>().is_err());
    }

    #[test]
    fn defaults_deny_metadata_link_local_unspecified_multicast_and_broadcast() {
        let policy = OutboundPolicy::default();
        for (address, range) in [
            ("169.254.169.254", "169.254.0.0/16"),
            ("fe80::1", "fe80::/10"),
            ("fd00:ec2::254", "fd00:ec2::254/128"),
            ("0.0.0.0", "0.0.0.0/8"),
            ("::", "::/128"),
            ("224.0.0.1", "224.0.0.0/4"),
            ("239.255.255.250", "224.0.0.0/4"),
            ("ff02::1", "ff00::/8"),
            ("255.255.255.255", "255.255.255.255/32"),
        ] {
            assert_eq!(
                denied_by(&policy, address).as_deref(),
                Some(range),
                "{address}"
            );
        }
    }

    #[test]
    fn defaults_allow_loopback_private_and_public_addresses() {
        let policy = OutboundPolicy::default();
        for address in [
            "127.0.0.1",
            "10.1.2.3",
            "172.16.0.1",
            "192.168.1.1",
            "100.64.0.1",
            "8.8.8.8",
            "::1",
            "fd00::1",
            "2001:db8::1",
        ] {
            assert_eq!(policy.check(ip(address)), Ok(()), "{address}");
        }
    }

    #[test]
    fn mapped_ipv6_addresses_are_judged_as_ipv4() {
        let policy = OutboundPolicy::default();
        let denied = policy.check(ip("::ffff:169.254.169.254")).unwrap_err();
        assert_eq!(
            denied.to_string(),
            "outbound policy denies 169.254.169.254 (169.254.0.0/16)"
        );
        let operator = OutboundPolicy::new(&[], &[cidr("10.0.0.0/8")]);
        assert!(operator.check(ip("::ffff:10.0.0.1")).is_err());
        assert!(operator.check(ip("::ffff:11.0.0.1")).is_ok());
    }

    #[test]
    fn the_most_specific_entry_decides_and_deny_wins_ties() {
        // A more specific allow opens a hole in a default deny.
        let policy = OutboundPolicy::new(&[cidr("169.254.10.0/24")], &[]);
        assert!(policy.check(ip("169.254.10.5")).is_ok());
        assert!(policy.check(ip("169.254.169.254")).is_err());
        // A less specific allow opens nothing.
        let policy = OutboundPolicy::new(&[cidr("0.0.0.0/0"), cidr("169.254.0.0/15")], &[]);
        assert!(policy.check(ip("169.254.169.254")).is_err());
        // Equal prefixes: deny wins.
        let policy = OutboundPolicy::new(&[cidr("10.0.0.0/8")], &[cidr("10.0.0.0/8")]);
        assert_eq!(
            denied_by(&policy, "10.1.1.1").as_deref(),
            Some("10.0.0.0/8")
        );
        // Allow-list only: deny everything, allow one range.
        let policy = OutboundPolicy::new(&[cidr("10.0.0.0/8")], &[cidr("0.0.0.0/0"), cidr("::/0")]);
        assert!(policy.check(ip("10.9.9.9")).is_ok());
        assert_eq!(
            denied_by(&policy, "192.168.1.1").as_deref(),
            Some("0.0.0.0/0")
        );
        assert_eq!(denied_by(&policy, "2001:db8::1").as_deref(), Some("::/0"));
        // A more specific deny inside an allow.
        let policy = OutboundPolicy::new(&[cidr("10.0.0.0/8")], &[cidr("10.9.0.0/16")]);
        assert!(policy.check(ip("10.9.0.1")).is_err());
        assert!(policy.check(ip("10.8.0.1")).is_ok());
    }

    #[test]
    fn every_builtin_entry_parses() {
        for text in DEFAULT_DENY {
            assert!(text.parse::<Cidr>().is_ok(), "{text}");
        }
    }
}
