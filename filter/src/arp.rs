//! Gratuitous ARP for a virtual IP: after a node takes the address, it tells the
//! segment "this IP is at my MAC" so that switches and neighbours update their
//! caches at once instead of waiting for their entries to expire.
//!
//! Owns: building the two frames (a pure function, [`gratuitous_frames`]) and
//! sending them once over an `AF_PACKET` socket bound to nothing but the one
//! interface ([`announce`]). Must not: listen, answer ARP, or touch any
//! interface other than the one named.
//!
//! The frames follow RFC 5227 §3 / RFC 5944 §4.6: sender and target protocol
//! address are both the VIP, the sender hardware address is the interface's own
//! MAC; the request's target hardware address is zero (unused in a request), the
//! reply's is the MAC again; both go to the Ethernet broadcast address. Some
//! hosts only update on a request, others only on a reply, so both are sent.

use std::ffi::CString;
use std::io;
use std::mem;
use std::net::Ipv4Addr;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};

/// Length of one Ethernet + ARP (IPv4 over Ethernet) frame, without padding or FCS.
pub const FRAME_LEN: usize = 42;

/// The Ethernet broadcast address.
pub const BROADCAST: [u8; 6] = [0xff; 6];

const ETH_P_ARP: u16 = 0x0806;
const ETH_P_IP: u16 = 0x0800;
const ARPHRD_ETHER: u16 = 1;
const ARPOP_REQUEST: u16 = 1;
const ARPOP_REPLY: u16 = 2;

/// Why a gratuitous ARP could not be sent. Each message names the interface and
/// what to do about it.
#[derive(Debug, thiserror::Error)]
pub enum ArpError {
    /// The name is empty, too long for the kernel (15 bytes) or holds a NUL or `/`.
    #[error("invalid interface name {interface:?}: use the name `ip link` shows (1 to 15 bytes)")]
    InvalidName { interface: String },
    /// The interface does not exist in this network namespace.
    #[error(
        "no interface named {interface} in this network namespace: check the VIP's \
         `interface` field against `ip link` on this node"
    )]
    NoSuchInterface { interface: String },
    /// Opening a packet socket needs root or CAP_NET_RAW.
    #[error(
        "cannot open a packet socket to announce on {interface}: permission denied; run the \
         daemon as root (or give it CAP_NET_RAW)"
    )]
    PermissionDenied { interface: String },
    /// The interface has no Ethernet MAC (loopback, a tunnel…): ARP means nothing there.
    #[error(
        "{interface} is not an Ethernet interface (hardware type {hw_type}): put the VIP on an \
         Ethernet (or veth/bridge/bond) interface"
    )]
    NotEthernet { interface: String, hw_type: u16 },
    /// The interface exists but is down.
    #[error("{interface} is down: bring it up (`ip link set {interface} up`) and announce again")]
    InterfaceDown { interface: String },
    /// Any other system call failure, with the step that failed.
    #[error("gratuitous ARP on {interface}: {step} failed: {source}")]
    Io {
        interface: String,
        step: &'static str,
        #[source]
        source: io::Error,
    },
}

/// Builds the two gratuitous ARP frames for `ip` at `mac`: `[request, reply]`,
/// each a complete Ethernet frame to the broadcast address.
pub fn gratuitous_frames(mac: [u8; 6], ip: Ipv4Addr) -> [[u8; FRAME_LEN]; 2] {
    [
        frame(mac, ip, ARPOP_REQUEST, [0; 6]),
        frame(mac, ip, ARPOP_REPLY, mac),
    ]
}

/// Sends one gratuitous ARP request and one reply for `ip` on `interface`, from
/// the interface's own MAC, to the broadcast address. Needs root or CAP_NET_RAW;
/// works in the calling thread's network namespace.
pub fn announce(interface: &str, ip: Ipv4Addr) -> Result<(), ArpError> {
    let name = interface_name(interface)?;
    let io_err = |step: &'static str| {
        let source = io::Error::last_os_error();
        classify(interface, step, source)
    };

    // SAFETY: plain socket(2); the result is checked before it is owned.
    let fd = unsafe {
        libc::socket(
            libc::AF_PACKET,
            libc::SOCK_RAW | libc::SOCK_CLOEXEC,
            i32::from(ETH_P_ARP.to_be()),
        )
    };
    if fd < 0 {
        return Err(io_err("socket(AF_PACKET)"));
    }
    // SAFETY: fd is a fresh, valid descriptor that nothing else owns.
    let sock = unsafe { OwnedFd::from_raw_fd(fd) };

    let (ifindex, mac) = hw_address(&sock, interface, &name)?;
    let frames = gratuitous_frames(mac, ip);

    // SAFETY: sockaddr_ll is plain old data; all-zero is a valid value.
    let mut dest: libc::sockaddr_ll = unsafe { mem::zeroed() };
    dest.sll_family = libc::AF_PACKET as u16;
    dest.sll_protocol = ETH_P_ARP.to_be();
    dest.sll_ifindex = ifindex;
    dest.sll_halen = 6;
    dest.sll_addr[..6].copy_from_slice(&BROADCAST);
    for f in &frames {
        // SAFETY: f and dest are valid for the lengths given for the whole call.
        let n = unsafe {
            libc::sendto(
                sock.as_raw_fd(),
                f.as_ptr().cast(),
                f.len(),
                0,
                (&raw const dest).cast(),
                size_of::<libc::sockaddr_ll>() as libc::socklen_t,
            )
        };
        if n < 0 {
            return Err(io_err("sendto"));
        }
    }
    Ok(())
}

/// `aa:bb:cc:dd:ee:ff`.
pub fn format_mac(mac: [u8; 6]) -> String {
    mac.iter()
        .map(|b| format!("{b:02x}"))
        .collect::<Vec<_>>()
        .join(":")
}

fn frame(mac: [u8; 6], ip: Ipv4Addr, op: u16, target_mac: [u8; 6]) -> [u8; FRAME_LEN] {
    let ip = ip.octets();
    let mut f = [0u8; FRAME_LEN];
    // Ethernet header.
    f[0..6].copy_from_slice(&BROADCAST);
    f[6..12].copy_from_slice(&mac);
    f[12..14].copy_from_slice(&ETH_P_ARP.to_be_bytes());
    // ARP: hardware Ethernet, protocol IPv4, lengths 6 and 4.
    f[14..16].copy_from_slice(&ARPHRD_ETHER.to_be_bytes());
    f[16..18].copy_from_slice(&ETH_P_IP.to_be_bytes());
    f[18] = 6;
    f[19] = 4;
    f[20..22].copy_from_slice(&op.to_be_bytes());
    f[22..28].copy_from_slice(&mac);
    f[28..32].copy_from_slice(&ip);
    f[32..38].copy_from_slice(&target_mac);
    f[38..42].copy_from_slice(&ip);
    f
}

/// Checks the name the way the kernel will (IFNAMSIZ, no NUL, no `/`).
fn interface_name(interface: &str) -> Result<CString, ArpError> {
    let invalid = || ArpError::InvalidName {
        interface: interface.to_owned(),
    };
    if interface.is_empty() || interface.len() >= libc::IFNAMSIZ || interface.contains('/') {
        return Err(invalid());
    }
    CString::new(interface).map_err(|_| invalid())
}

/// The interface's index and MAC (SIOCGIFINDEX, SIOCGIFHWADDR), refusing
/// interfaces that are not Ethernet.
fn hw_address(sock: &OwnedFd, interface: &str, name: &CString) -> Result<(i32, [u8; 6]), ArpError> {
    // SAFETY: ifreq is plain old data; all-zero is a valid value.
    let mut req: libc::ifreq = unsafe { mem::zeroed() };
    for (dst, src) in req.ifr_name.iter_mut().zip(name.as_bytes()) {
        *dst = *src as libc::c_char;
    }
    // SAFETY: req is a valid ifreq with a NUL-terminated name (checked length < IFNAMSIZ).
    if unsafe { libc::ioctl(sock.as_raw_fd(), libc::SIOCGIFINDEX, &mut req) } < 0 {
        return Err(classify(
            interface,
            "SIOCGIFINDEX",
            io::Error::last_os_error(),
        ));
    }
    // SAFETY: the kernel filled ifru_ifindex for SIOCGIFINDEX.
    let ifindex = unsafe { req.ifr_ifru.ifru_ifindex };
    // SAFETY: as above; the name is still in place.
    if unsafe { libc::ioctl(sock.as_raw_fd(), libc::SIOCGIFHWADDR, &mut req) } < 0 {
        return Err(classify(
            interface,
            "SIOCGIFHWADDR",
            io::Error::last_os_error(),
        ));
    }
    // SAFETY: the kernel filled ifru_hwaddr for SIOCGIFHWADDR.
    let hw = unsafe { req.ifr_ifru.ifru_hwaddr };
    if hw.sa_family != ARPHRD_ETHER {
        return Err(ArpError::NotEthernet {
            interface: interface.to_owned(),
            hw_type: hw.sa_family,
        });
    }
    let mut mac = [0u8; 6];
    for (dst, src) in mac.iter_mut().zip(hw.sa_data.iter()) {
        *dst = *src as u8;
    }
    Ok((ifindex, mac))
}

/// Maps the errno of a failed step to the variant that names the fix.
fn classify(interface: &str, step: &'static str, source: io::Error) -> ArpError {
    let interface = interface.to_owned();
    match source.raw_os_error() {
        Some(libc::ENODEV) | Some(libc::ENXIO) => ArpError::NoSuchInterface { interface },
        Some(libc::EPERM) | Some(libc::EACCES) => ArpError::PermissionDenied { interface },
        Some(libc::ENETDOWN) => ArpError::InterfaceDown { interface },
        _ => ArpError::Io {
            interface,
            step,
            source,
        },
    }
}

#[cfg(test)]
#[path = "arp_test.rs"]
mod tests;
