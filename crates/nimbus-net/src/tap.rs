//! Tap devices for VMs, and what a VM needs to configure its address.

use std::fs::OpenOptions;
use std::net::Ipv4Addr;
use std::os::fd::{AsRawFd, OwnedFd};

use crate::{NetError, Result};

const TUNSETIFF: libc::c_ulong = 0x4004_54ca;
const TUNSETPERSIST: libc::c_ulong = 0x4004_54cb;
const IFF_TAP: libc::c_short = 0x0002;
const IFF_NO_PI: libc::c_short = 0x1000;
const IFF_VNET_HDR: libc::c_short = 0x4000;

#[repr(C)]
struct IfReq {
    name: [u8; libc::IFNAMSIZ],
    flags: libc::c_short,
    _pad: [u8; 22],
}

/// Create the tap `name` in the calling thread's network namespace; it
/// lives as long as the returned fd (or a duplicate, e.g. QEMU's) is open.
pub fn create_tap(name: &str, vnet_hdr: bool) -> Result<OwnedFd> {
    if name.is_empty() || name.len() >= libc::IFNAMSIZ {
        return Err(NetError::Invalid(format!(
            "tap name {name:?} must be 1-15 bytes"
        )));
    }
    let file = OpenOptions::new()
        .read(true)
        .write(true)
        .open("/dev/net/tun")
        .map_err(|e| NetError::io("open /dev/net/tun (is the tun module available?)", e))?;
    let mut req = IfReq {
        name: [0; libc::IFNAMSIZ],
        flags: IFF_TAP | IFF_NO_PI | if vnet_hdr { IFF_VNET_HDR } else { 0 },
        _pad: [0; 22],
    };
    req.name[..name.len()].copy_from_slice(name.as_bytes());
    // SAFETY: TUNSETIFF reads and writes an ifreq-sized struct we own.
    let rc = unsafe { libc::ioctl(file.as_raw_fd(), TUNSETIFF as _, &mut req) };
    if rc != 0 {
        return Err(NetError::io(
            format!("create tap {name}"),
            std::io::Error::last_os_error(),
        ));
    }
    Ok(OwnedFd::from(file))
}

/// Make the tap behind `fd` outlive its descriptors (until its link is
/// deleted), so another process can open it by name.
pub fn set_persistent(fd: &OwnedFd) -> Result<()> {
    // SAFETY: TUNSETPERSIST takes an integer argument by value.
    let rc = unsafe { libc::ioctl(fd.as_raw_fd(), TUNSETPERSIST as _, 1 as libc::c_ulong) };
    if rc != 0 {
        return Err(NetError::io(
            "make the tap persistent",
            std::io::Error::last_os_error(),
        ));
    }
    Ok(())
}

/// A VM's address settings: for a NoCloud `network-config` or a DHCP answer.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct VmNetConfig {
    pub mac: String,
    pub ip: Ipv4Addr,
    pub prefix_len: u8,
    pub gateway: Ipv4Addr,
    pub dns: Vec<Ipv4Addr>,
    pub search: Vec<String>,
    pub mtu: u32,
}

impl VmNetConfig {
    /// cloud-init network-config version 2, matching the NIC by MAC. The
    /// default route is `gateway4`: cloud-init renders `routes` for
    /// ifupdown as `route add` commands, and a stock Debian image has no
    /// `route` (net-tools), so such a guest came up without one.
    pub fn network_config_v2(&self) -> String {
        let dns: Vec<String> = self.dns.iter().map(|d| d.to_string()).collect();
        let mut s = format!(
            "version: 2\nethernets:\n  eth0:\n    match:\n      macaddress: \"{}\"\n    set-name: eth0\n    mtu: {}\n    addresses: [\"{}/{}\"]\n    gateway4: {}\n    nameservers:\n      addresses: [{}]\n",
            self.mac,
            self.mtu,
            self.ip,
            self.prefix_len,
            self.gateway,
            dns.join(", ")
        );
        if !self.search.is_empty() {
            s.push_str(&format!("      search: [{}]\n", self.search.join(", ")));
        }
        s
    }

    pub fn netmask(&self) -> Ipv4Addr {
        let bits = if self.prefix_len == 0 {
            0
        } else {
            u32::MAX << (32 - u32::from(self.prefix_len))
        };
        Ipv4Addr::from(bits)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn network_config_names_the_mac_and_address() {
        let c = VmNetConfig {
            mac: "02:01:02:03:04:05".into(),
            ip: Ipv4Addr::new(10, 20, 0, 7),
            prefix_len: 24,
            gateway: Ipv4Addr::new(10, 20, 0, 1),
            dns: vec![Ipv4Addr::new(10, 20, 0, 1)],
            search: vec![],
            mtu: 1500,
        };
        let y = c.network_config_v2();
        assert!(y.contains("macaddress: \"02:01:02:03:04:05\""));
        assert!(y.contains("addresses: [\"10.20.0.7/24\"]"));
        assert!(y.contains("gateway4: 10.20.0.1"), "{y}");
        assert_eq!(c.netmask(), Ipv4Addr::new(255, 255, 255, 0));
    }
}
