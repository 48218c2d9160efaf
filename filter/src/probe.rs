//! The flooding probe: does a frame sent to the farm's virtual MAC reach
//! every node? A switch, hypervisor or cloud network that does not flood
//! unknown unicast delivers it to no node (or one), and then every
//! shared-VIP design fails; the farm says so instead of losing clients.
//!
//! Each node sends, now and then, a probe frame to the virtual MAC (EtherType
//! [`PROBE_ETHERTYPE`], IEEE's local experimental one, which no protocol
//! handler takes) naming the module and itself; every node listens for them
//! ([`ProbeListener`]) and reports whose probes it heard. The frame:
//! `vmac | own MAC | 0x88b5 | "MFPROBE1" | len | module | len | node`.
//!
//! Owns: the probe frame (built and parsed here, parsing checked: short or
//! hostile frames are ignored) and its socket. Must not: send anything but
//! probes to the virtual MAC.

use std::collections::BTreeMap;
use std::io;
use std::mem;
use std::os::fd::AsRawFd;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::{self, JoinHandle};
use std::time::Instant;

use crate::arp::{ArpError, PacketSocket};

/// IEEE 802 local experimental EtherType 1.
pub const PROBE_ETHERTYPE: u16 = 0x88b5;

const MAGIC: &[u8; 8] = b"MFPROBE1";
const HEADER: usize = 14;
/// Bounds [`ProbeListener::stop`].
const POLL_TIMEOUT_MS: i32 = 100;

/// The probe frame of `module` from `node`, sent from `own_mac` to `vmac`.
/// Names longer than 255 bytes are cut (module and node names are short).
pub fn frame(vmac: [u8; 6], own_mac: [u8; 6], module: &str, node: &str) -> Vec<u8> {
    let mut f = Vec::with_capacity(64);
    f.extend_from_slice(&vmac);
    f.extend_from_slice(&own_mac);
    f.extend_from_slice(&PROBE_ETHERTYPE.to_be_bytes());
    f.extend_from_slice(MAGIC);
    for part in [module, node] {
        let b = &part.as_bytes()[..part.len().min(255)];
        // Cut to at most 255 above.
        f.push(b.len() as u8);
        f.extend_from_slice(b);
    }
    // The minimum Ethernet payload.
    f.resize(f.len().max(60), 0);
    f
}

/// The module and node a probe frame names, if `f` is one.
pub fn parse(f: &[u8]) -> Option<(String, String)> {
    if f.get(12..14)? != PROBE_ETHERTYPE.to_be_bytes() {
        return None;
    }
    let body = f.get(HEADER..)?;
    let rest = body.strip_prefix(MAGIC.as_slice())?;
    let (&mlen, rest) = rest.split_first()?;
    let module = rest.get(..usize::from(mlen))?;
    let rest = rest.get(usize::from(mlen)..)?;
    let (&nlen, rest) = rest.split_first()?;
    let node = rest.get(..usize::from(nlen))?;
    Some((
        String::from_utf8(module.to_vec()).ok()?,
        String::from_utf8(node.to_vec()).ok()?,
    ))
}

/// Sends one probe of `module` from `node` to `vmac` on `interface` (in the
/// calling thread's network namespace).
pub fn send(interface: &str, vmac: [u8; 6], module: &str, node: &str) -> Result<(), ArpError> {
    let sock = PacketSocket::open_proto(interface, PROBE_ETHERTYPE)?;
    sock.send(&frame(vmac, sock.mac, module, node), vmac)
}

/// Records, on its own thread, which nodes' probes of one module arrive on
/// an interface, and when last.
pub struct ProbeListener {
    heard: Arc<Mutex<BTreeMap<String, Instant>>>,
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

impl ProbeListener {
    /// Opens the socket (errors come back here) and listens on a thread for
    /// the probes of `module` from nodes other than `me`.
    pub fn start(interface: &str, module: &str, me: &str) -> Result<Self, ArpError> {
        let sock = PacketSocket::open_proto(interface, PROBE_ETHERTYPE)?;
        sock.bind()?;
        let heard = Arc::new(Mutex::new(BTreeMap::new()));
        let stop = Arc::new(AtomicBool::new(false));
        let (h, st) = (Arc::clone(&heard), Arc::clone(&stop));
        let (module, me) = (module.to_owned(), me.to_owned());
        let thread = thread::Builder::new()
            .name(format!("probe-{interface}"))
            .spawn(move || listen(&sock, &module, &me, &h, &st))
            .map_err(|source| ArpError::Io {
                interface: interface.to_owned(),
                step: "spawn the probe listener thread",
                source,
            })?;
        Ok(Self {
            heard,
            stop,
            thread: Some(thread),
        })
    }

    /// Every node heard so far, with when its newest probe arrived.
    pub fn heard(&self) -> BTreeMap<String, Instant> {
        self.heard.lock().map(|h| h.clone()).unwrap_or_default()
    }
}

impl Drop for ProbeListener {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

fn listen(
    sock: &PacketSocket,
    module: &str,
    me: &str,
    heard: &Mutex<BTreeMap<String, Instant>>,
    stop: &AtomicBool,
) {
    let mut buf = [0u8; 600];
    while !stop.load(Ordering::Relaxed) {
        let mut pfd = libc::pollfd {
            fd: sock.fd.as_raw_fd(),
            events: libc::POLLIN,
            revents: 0,
        };
        // SAFETY: pfd is one valid pollfd.
        if unsafe { libc::poll(&mut pfd, 1, POLL_TIMEOUT_MS) } <= 0 {
            continue;
        }
        // SAFETY: sockaddr_ll is plain old data; all-zero is a valid value.
        let mut from: libc::sockaddr_ll = unsafe { mem::zeroed() };
        let mut len = size_of::<libc::sockaddr_ll>() as libc::socklen_t;
        // SAFETY: buf and from are valid for the lengths given.
        let n = unsafe {
            libc::recvfrom(
                sock.fd.as_raw_fd(),
                buf.as_mut_ptr().cast(),
                buf.len(),
                libc::MSG_DONTWAIT,
                (&raw mut from).cast(),
                &mut len,
            )
        };
        let Ok(n) = usize::try_from(n) else {
            let e = io::Error::last_os_error();
            if e.kind() != io::ErrorKind::WouldBlock && e.kind() != io::ErrorKind::Interrupted {
                tracing::warn!(error = %e, "probe receive failed");
                thread::sleep(std::time::Duration::from_millis(100));
            }
            continue;
        };
        if from.sll_pkttype == libc::PACKET_OUTGOING {
            continue;
        }
        let Some((m, node)) = buf.get(..n).and_then(parse) else {
            continue;
        };
        if m == module && node != me {
            if let Ok(mut h) = heard.lock() {
                h.insert(node, Instant::now());
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_probe_frame_parses_back_and_anything_else_does_not() {
        let vmac = [2, 1, 2, 3, 4, 5];
        let f = frame(vmac, [2, 9, 9, 9, 9, 9], "apache_farm", "farm2");
        assert_eq!(&f[..6], &vmac);
        assert_eq!(f.len(), 60);
        assert_eq!(parse(&f), Some(("apache_farm".into(), "farm2".into())));
        // Every truncation inside the names is refused, never a panic.
        let end = HEADER + MAGIC.len() + 1 + 11 + 1 + 5;
        for n in 0..end {
            assert_eq!(parse(&f[..n]), None, "{n} bytes");
        }
        let mut other = f.clone();
        other[12] = 0x08;
        assert_eq!(parse(&other), None, "another EtherType");
        let mut bad = f.clone();
        bad[HEADER] = b'X';
        assert_eq!(parse(&bad), None, "no magic");
        let mut long = f;
        long[HEADER + MAGIC.len()] = 255;
        assert_eq!(parse(&long), None, "a length past the end");
    }
}
