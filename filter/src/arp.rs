//! ARP for a virtual IP, over an `AF_PACKET` socket bound to one interface.
//!
//! Owns: building ARP frames (pure functions: [`gratuitous_frames`],
//! [`gratuitous_frames_as`], [`reply_frame`]), parsing a received request
//! ([`parse_request`], checked: short or hostile frames are ignored, never a
//! panic), sending gratuitous ARP once ([`announce`] for a mirror VIP at the
//! node's own MAC, [`announce_virtual`] for a farm VIP at the virtual MAC), and
//! the farm's [`ArpResponder`], which answers every request for a farm VIP with
//! the virtual MAC. Must not: touch any interface other than the one named, or
//! answer for an address that is not one of the configured VIPs.
//!
//! Gratuitous frames follow RFC 5227 §3 / RFC 5944 §4.6: sender and target
//! protocol address are both the VIP; the request's target hardware address is
//! zero, the reply's is the announced MAC again; both go to the Ethernet
//! broadcast address. Some hosts only update on a request, others only on a
//! reply, so both are sent.
//!
//! Farm frames (replies and announcements) carry the virtual MAC as the ARP
//! sender hardware address but the node's own MAC as the Ethernet source:
//! switches must never learn the virtual MAC on a port, so that frames to it
//! keep being flooded to every farm node.

use std::ffi::CString;
use std::io;
use std::mem;
use std::net::Ipv4Addr;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::thread::{self, JoinHandle};
use std::time::Duration;

/// Length of one Ethernet + ARP (IPv4 over Ethernet) frame, without padding or FCS.
pub const FRAME_LEN: usize = 42;

/// The Ethernet broadcast address.
pub const BROADCAST: [u8; 6] = [0xff; 6];

const ETH_P_ARP: u16 = 0x0806;
const ETH_P_IP: u16 = 0x0800;
const ARPHRD_ETHER: u16 = 1;
const ARPOP_REQUEST: u16 = 1;
const ARPOP_REPLY: u16 = 2;

/// Why an ARP socket could not be opened or used. Each message names the interface and
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
    #[error("ARP on {interface}: {step} failed: {source}")]
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
    gratuitous_frames_as(mac, mac, ip)
}

/// The gratuitous frames of a farm VIP: like [`gratuitous_frames`], but
/// announcing `ip` at `vmac` while the Ethernet source is the node's `own_mac`.
pub fn gratuitous_frames_as(own_mac: [u8; 6], vmac: [u8; 6], ip: Ipv4Addr) -> [[u8; FRAME_LEN]; 2] {
    let request = Arp {
        op: ARPOP_REQUEST,
        sender_mac: vmac,
        sender_ip: ip,
        target_mac: [0; 6],
        target_ip: ip,
    };
    let reply = Arp {
        op: ARPOP_REPLY,
        target_mac: vmac,
        ..request
    };
    [
        frame(BROADCAST, own_mac, &request),
        frame(BROADCAST, own_mac, &reply),
    ]
}

/// An ARP request for IPv4 over Ethernet, as parsed from a received frame.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ArpRequest {
    /// Who asks: the hardware address the reply goes to.
    pub sender_mac: [u8; 6],
    /// Who asks: its IPv4 address (0.0.0.0 in an RFC 5227 probe).
    pub sender_ip: Ipv4Addr,
    /// The address asked about.
    pub target_ip: Ipv4Addr,
}

/// Parses `frame` (Ethernet header included) as an ARP request for IPv4 over
/// Ethernet; `None` for anything else: too short, another hardware or protocol
/// type, other address lengths, another operation, a multicast or broadcast
/// sender MAC. Never panics.
pub fn parse_request(frame: &[u8]) -> Option<ArpRequest> {
    let f = frame.get(..FRAME_LEN)?;
    let u16_at = |i: usize| u16::from_be_bytes([f[i], f[i + 1]]);
    let header_ok = u16_at(12) == ETH_P_ARP
        && u16_at(14) == ARPHRD_ETHER
        && u16_at(16) == ETH_P_IP
        && f[18] == 6
        && f[19] == 4
        && u16_at(20) == ARPOP_REQUEST;
    let mac_at = |i: usize| -> [u8; 6] { std::array::from_fn(|k| f[i + k]) };
    let ip_at = |i: usize| Ipv4Addr::new(f[i], f[i + 1], f[i + 2], f[i + 3]);
    let sender_mac = mac_at(22);
    // Bit 0 of the first byte: group address; a reply to it would be flooded.
    if !header_ok || sender_mac[0] & 1 != 0 || sender_mac == [0; 6] {
        return None;
    }
    Some(ArpRequest {
        sender_mac,
        sender_ip: ip_at(28),
        target_ip: ip_at(38),
    })
}

/// The reply to `req`: "`req.target_ip` is at `vmac`", sent from the node's
/// `own_mac` to the asker's MAC.
pub fn reply_frame(own_mac: [u8; 6], vmac: [u8; 6], req: &ArpRequest) -> [u8; FRAME_LEN] {
    let arp = Arp {
        op: ARPOP_REPLY,
        sender_mac: vmac,
        sender_ip: req.target_ip,
        target_mac: req.sender_mac,
        target_ip: req.sender_ip,
    };
    frame(req.sender_mac, own_mac, &arp)
}

/// Sends one gratuitous ARP request and one reply for `ip` on `interface`, from
/// the interface's own MAC, to the broadcast address. Needs root or CAP_NET_RAW;
/// works in the calling thread's network namespace.
pub fn announce(interface: &str, ip: Ipv4Addr) -> Result<(), ArpError> {
    let sock = PacketSocket::open(interface)?;
    sock.send_all(&gratuitous_frames(sock.mac, ip), BROADCAST)
}

/// Sends the gratuitous ARP of a farm VIP: `ip` is at `vmac`, from the
/// interface's own MAC (see [`gratuitous_frames_as`]).
pub fn announce_virtual(interface: &str, ip: Ipv4Addr, vmac: [u8; 6]) -> Result<(), ArpError> {
    let sock = PacketSocket::open(interface)?;
    sock.send_all(&gratuitous_frames_as(sock.mac, vmac, ip), BROADCAST)
}

/// How long the responder's thread waits for a frame before it checks whether
/// it was told to stop: bounds [`ArpResponder::stop`].
const POLL_TIMEOUT_MS: i32 = 100;

/// Answers ARP requests for the farm VIPs with the virtual MAC, on its own
/// thread, until [`ArpResponder::stop`] or drop.
pub struct ArpResponder {
    interface: String,
    stop: Arc<AtomicBool>,
    answered: Arc<AtomicU64>,
    thread: Option<JoinHandle<()>>,
}

impl ArpResponder {
    /// Opens the packet socket on `interface` in the calling thread's network
    /// namespace (errors come back here) and starts answering on a thread.
    pub fn start(interface: &str, vips: &[Ipv4Addr], vmac: [u8; 6]) -> Result<Self, ArpError> {
        let sock = PacketSocket::open(interface)?;
        sock.bind()?;
        let stop = Arc::new(AtomicBool::new(false));
        let answered = Arc::new(AtomicU64::new(0));
        let vips = vips.to_vec();
        let (stop2, answered2) = (Arc::clone(&stop), Arc::clone(&answered));
        let thread = thread::Builder::new()
            .name(format!("arp-{interface}"))
            .spawn(move || sock.answer(&vips, vmac, &stop2, &answered2))
            .map_err(|source| ArpError::Io {
                interface: interface.to_owned(),
                step: "spawn the responder thread",
                source,
            })?;
        Ok(Self {
            interface: interface.to_owned(),
            stop,
            answered,
            thread: Some(thread),
        })
    }

    /// How many requests it has answered so far.
    pub fn answered(&self) -> u64 {
        self.answered.load(Ordering::Relaxed)
    }

    /// The interface it answers on.
    pub fn interface(&self) -> &str {
        &self.interface
    }

    /// Stops the thread; returns within about [`POLL_TIMEOUT_MS`].
    pub fn stop(mut self) {
        self.stop_inner();
    }

    fn stop_inner(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            if t.join().is_err() {
                tracing::error!(interface = %self.interface, "the ARP responder thread panicked");
            }
        }
    }
}

impl Drop for ArpResponder {
    fn drop(&mut self) {
        self.stop_inner();
    }
}

/// A raw `AF_PACKET` socket for one EtherType (ARP, or the farm's probe) on
/// one interface, with the interface's index and own MAC.
pub(crate) struct PacketSocket {
    pub(crate) fd: OwnedFd,
    interface: String,
    ifindex: i32,
    pub(crate) mac: [u8; 6],
    proto: u16,
}

impl PacketSocket {
    fn open(interface: &str) -> Result<Self, ArpError> {
        Self::open_proto(interface, ETH_P_ARP)
    }

    /// A socket for EtherType `proto` on `interface`.
    pub(crate) fn open_proto(interface: &str, proto: u16) -> Result<Self, ArpError> {
        let name = interface_name(interface)?;
        // SAFETY: plain socket(2); the result is checked before it is owned.
        let fd = unsafe {
            libc::socket(
                libc::AF_PACKET,
                libc::SOCK_RAW | libc::SOCK_CLOEXEC,
                i32::from(proto.to_be()),
            )
        };
        if fd < 0 {
            return Err(classify(
                interface,
                "socket(AF_PACKET)",
                io::Error::last_os_error(),
            ));
        }
        // SAFETY: fd is a fresh, valid descriptor that nothing else owns.
        let fd = unsafe { OwnedFd::from_raw_fd(fd) };
        let (ifindex, mac) = hw_address(&fd, interface, &name)?;
        Ok(Self {
            fd,
            interface: interface.to_owned(),
            ifindex,
            mac,
            proto,
        })
    }

    fn addr(&self, dest: [u8; 6]) -> libc::sockaddr_ll {
        // SAFETY: sockaddr_ll is plain old data; all-zero is a valid value.
        let mut a: libc::sockaddr_ll = unsafe { mem::zeroed() };
        a.sll_family = libc::AF_PACKET as u16;
        a.sll_protocol = self.proto.to_be();
        a.sll_ifindex = self.ifindex;
        a.sll_halen = 6;
        a.sll_addr[..6].copy_from_slice(&dest);
        a
    }

    /// Receive only this socket's EtherType arriving on this interface.
    pub(crate) fn bind(&self) -> Result<(), ArpError> {
        let addr = self.addr([0; 6]);
        // SAFETY: addr is valid for the given length.
        let rc = unsafe {
            libc::bind(
                self.fd.as_raw_fd(),
                (&raw const addr).cast(),
                size_of::<libc::sockaddr_ll>() as libc::socklen_t,
            )
        };
        if rc < 0 {
            return Err(self.error("bind"));
        }
        Ok(())
    }

    fn send_all(&self, frames: &[[u8; FRAME_LEN]], dest: [u8; 6]) -> Result<(), ArpError> {
        for f in frames {
            self.send(f, dest)?;
        }
        Ok(())
    }

    /// Sends one whole frame (Ethernet header included) to `dest`.
    pub(crate) fn send(&self, f: &[u8], dest: [u8; 6]) -> Result<(), ArpError> {
        let dest = self.addr(dest);
        // SAFETY: f and dest are valid for the lengths given for the whole call.
        let n = unsafe {
            libc::sendto(
                self.fd.as_raw_fd(),
                f.as_ptr().cast(),
                f.len(),
                0,
                (&raw const dest).cast(),
                size_of::<libc::sockaddr_ll>() as libc::socklen_t,
            )
        };
        if n < 0 {
            return Err(self.error("sendto"));
        }
        Ok(())
    }

    /// The responder loop: poll with a timeout (to see `stop`), read a frame,
    /// answer it if it asks for one of `vips`.
    fn answer(&self, vips: &[Ipv4Addr], vmac: [u8; 6], stop: &AtomicBool, answered: &AtomicU64) {
        let mut buf = [0u8; 256];
        while !stop.load(Ordering::Relaxed) {
            let mut pfd = libc::pollfd {
                fd: self.fd.as_raw_fd(),
                events: libc::POLLIN,
                revents: 0,
            };
            // SAFETY: pfd is one valid pollfd.
            let rc = unsafe { libc::poll(&mut pfd, 1, POLL_TIMEOUT_MS) };
            if rc <= 0 {
                continue; // timeout, or EINTR
            }
            // SAFETY: sockaddr_ll is plain old data; all-zero is a valid value.
            let mut from: libc::sockaddr_ll = unsafe { mem::zeroed() };
            let mut from_len = size_of::<libc::sockaddr_ll>() as libc::socklen_t;
            // SAFETY: buf and from are valid for the lengths given.
            let n = unsafe {
                libc::recvfrom(
                    self.fd.as_raw_fd(),
                    buf.as_mut_ptr().cast(),
                    buf.len(),
                    libc::MSG_DONTWAIT,
                    (&raw mut from).cast(),
                    &mut from_len,
                )
            };
            let Ok(n) = usize::try_from(n) else {
                let e = io::Error::last_os_error();
                if e.kind() != io::ErrorKind::WouldBlock && e.kind() != io::ErrorKind::Interrupted {
                    tracing::warn!(interface = %self.interface, error = %e, "ARP receive failed");
                    thread::sleep(Duration::from_millis(u64::from(
                        POLL_TIMEOUT_MS.unsigned_abs(),
                    )));
                }
                continue;
            };
            if from.sll_pkttype == libc::PACKET_OUTGOING {
                continue;
            }
            let Some(req) = buf.get(..n).and_then(parse_request) else {
                continue;
            };
            // Another farm node's announcement of a VIP is not a question.
            if !vips.contains(&req.target_ip) || vips.contains(&req.sender_ip) {
                continue;
            }
            let reply = reply_frame(self.mac, vmac, &req);
            match self.send_all(&[reply], req.sender_mac) {
                Ok(()) => {
                    answered.fetch_add(1, Ordering::Relaxed);
                }
                Err(e) => tracing::warn!(error = %e, "cannot send an ARP reply"),
            }
        }
    }

    fn error(&self, step: &'static str) -> ArpError {
        classify(&self.interface, step, io::Error::last_os_error())
    }
}

/// `aa:bb:cc:dd:ee:ff`.
pub fn format_mac(mac: [u8; 6]) -> String {
    mac.iter()
        .map(|b| format!("{b:02x}"))
        .collect::<Vec<_>>()
        .join(":")
}

/// The ARP fields of one frame.
#[derive(Clone, Copy)]
struct Arp {
    op: u16,
    sender_mac: [u8; 6],
    sender_ip: Ipv4Addr,
    target_mac: [u8; 6],
    target_ip: Ipv4Addr,
}

fn frame(eth_dst: [u8; 6], eth_src: [u8; 6], arp: &Arp) -> [u8; FRAME_LEN] {
    let mut f = [0u8; FRAME_LEN];
    // Ethernet header.
    f[0..6].copy_from_slice(&eth_dst);
    f[6..12].copy_from_slice(&eth_src);
    f[12..14].copy_from_slice(&ETH_P_ARP.to_be_bytes());
    // ARP: hardware Ethernet, protocol IPv4, lengths 6 and 4.
    f[14..16].copy_from_slice(&ARPHRD_ETHER.to_be_bytes());
    f[16..18].copy_from_slice(&ETH_P_IP.to_be_bytes());
    f[18] = 6;
    f[19] = 4;
    f[20..22].copy_from_slice(&arp.op.to_be_bytes());
    f[22..28].copy_from_slice(&arp.sender_mac);
    f[28..32].copy_from_slice(&arp.sender_ip.octets());
    f[32..38].copy_from_slice(&arp.target_mac);
    f[38..42].copy_from_slice(&arp.target_ip.octets());
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
