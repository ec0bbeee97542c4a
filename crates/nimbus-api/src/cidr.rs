//! IPv4 subnets in CIDR form, shared by the server (IPAM) and the agent.

use std::net::Ipv4Addr;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Subnet {
    pub network: Ipv4Addr,
    pub prefix_len: u8,
}

impl Subnet {
    /// Parse `10.20.0.0/24`; host bits must be zero.
    pub fn parse(text: &str) -> Result<Subnet, String> {
        let (addr, len) = text.split_once('/').ok_or_else(|| {
            format!("subnet {text:?} is not in CIDR form; write it like 10.20.0.0/24")
        })?;
        let network: Ipv4Addr = addr
            .parse()
            .map_err(|_| format!("{addr:?} in subnet {text:?} is not an IPv4 address"))?;
        let prefix_len: u8 = Some(len)
            .filter(|l| !l.is_empty() && l.len() <= 2 && l.bytes().all(|b| b.is_ascii_digit()))
            .and_then(|l| l.parse().ok())
            .filter(|l| *l <= 32)
            .ok_or_else(|| format!("prefix length {len:?} in {text:?} must be 0 to 32"))?;
        let s = Subnet {
            network,
            prefix_len,
        };
        if u32::from(network) & !s.mask() != 0 {
            let fixed = Ipv4Addr::from(u32::from(network) & s.mask());
            return Err(format!(
                "subnet {text:?} has host bits set; did you mean {fixed}/{prefix_len}?"
            ));
        }
        Ok(s)
    }

    pub fn mask(&self) -> u32 {
        if self.prefix_len == 0 {
            0
        } else {
            u32::MAX << (32 - u32::from(self.prefix_len))
        }
    }

    pub fn contains(&self, ip: Ipv4Addr) -> bool {
        u32::from(ip) & self.mask() == u32::from(self.network)
    }

    pub fn broadcast(&self) -> Ipv4Addr {
        Ipv4Addr::from(u32::from(self.network) | !self.mask())
    }

    /// The first usable address: the default gateway.
    pub fn first_host(&self) -> Ipv4Addr {
        Ipv4Addr::from(u32::from(self.network) + 1)
    }

    /// Usable host addresses (without network and broadcast).
    pub fn hosts(&self) -> impl Iterator<Item = Ipv4Addr> {
        let first = u32::from(self.network) + 1;
        let last = u32::from(self.broadcast()).saturating_sub(1);
        (first..=last).map(Ipv4Addr::from)
    }

    pub fn host_count(&self) -> u32 {
        (!self.mask()).saturating_sub(1)
    }
}

impl std::fmt::Display for Subnet {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}/{}", self.network, self.prefix_len)
    }
}

/// Parse a source CIDR for a rule; a bare address means /32.
pub fn parse_source(text: &str) -> Result<Subnet, String> {
    if text.contains('/') {
        Subnet::parse(text)
    } else {
        let ip: Ipv4Addr = text
            .parse()
            .map_err(|_| format!("{text:?} is not an IPv4 address or CIDR like 10.0.0.0/8"))?;
        Ok(Subnet {
            network: ip,
            prefix_len: 32,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_and_rejects() {
        assert!(
            Subnet::parse("10.0.0.0/+24").is_err(),
            "a signed prefix is refused"
        );
        let s = Subnet::parse("10.20.0.0/24").unwrap();
        assert_eq!(s.first_host(), Ipv4Addr::new(10, 20, 0, 1));
        assert_eq!(s.broadcast(), Ipv4Addr::new(10, 20, 0, 255));
        assert_eq!(s.host_count(), 254);
        assert_eq!(s.hosts().count(), 254);
        assert!(s.contains(Ipv4Addr::new(10, 20, 0, 9)));
        assert!(!s.contains(Ipv4Addr::new(10, 21, 0, 9)));
        let e = Subnet::parse("10.20.0.1/24").unwrap_err();
        assert!(e.contains("10.20.0.0/24"), "{e}");
        assert!(Subnet::parse("10.20.0.0").is_err());
        assert!(Subnet::parse("10.20.0.0/33").is_err());
        assert_eq!(parse_source("1.2.3.4").unwrap().prefix_len, 32);
    }
}
