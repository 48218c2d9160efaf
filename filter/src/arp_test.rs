//! Frame layout byte by byte, and a real announcement over a veth pair in a
//! network namespace private to the test thread.

use std::process::Command;
use std::thread;
use std::time::Duration;

use super::*;

const MAC: [u8; 6] = [0x02, 0x11, 0x22, 0x33, 0x44, 0x55];
const VIP: Ipv4Addr = Ipv4Addr::new(10, 77, 0, 100);

#[test]
fn frames_byte_by_byte() {
    let [request, reply] = gratuitous_frames(MAC, VIP);
    #[rustfmt::skip]
    let want_request: [u8; FRAME_LEN] = [
        // Ethernet: broadcast destination, our MAC, EtherType ARP.
        0xff, 0xff, 0xff, 0xff, 0xff, 0xff,
        0x02, 0x11, 0x22, 0x33, 0x44, 0x55,
        0x08, 0x06,
        // ARP: Ethernet, IPv4, hlen 6, plen 4, op 1 (request).
        0x00, 0x01, 0x08, 0x00, 6, 4, 0x00, 0x01,
        // sender MAC, sender IP
        0x02, 0x11, 0x22, 0x33, 0x44, 0x55, 10, 77, 0, 100,
        // target MAC (zero in a request), target IP = sender IP
        0, 0, 0, 0, 0, 0, 10, 77, 0, 100,
    ];
    #[rustfmt::skip]
    let want_reply: [u8; FRAME_LEN] = [
        0xff, 0xff, 0xff, 0xff, 0xff, 0xff,
        0x02, 0x11, 0x22, 0x33, 0x44, 0x55,
        0x08, 0x06,
        // op 2 (reply)
        0x00, 0x01, 0x08, 0x00, 6, 4, 0x00, 0x02,
        0x02, 0x11, 0x22, 0x33, 0x44, 0x55, 10, 77, 0, 100,
        // target MAC = our MAC in the reply (RFC 5944 §4.6)
        0x02, 0x11, 0x22, 0x33, 0x44, 0x55, 10, 77, 0, 100,
    ];
    assert_eq!(request, want_request);
    assert_eq!(reply, want_reply);
}

#[test]
fn mac_formatting() {
    assert_eq!(format_mac(MAC), "02:11:22:33:44:55");
}

#[test]
fn bad_names_are_refused_before_any_syscall() {
    for name in ["", "a/b", "sixteen-bytes-xx", "nul\0"] {
        let err = announce(name, VIP).unwrap_err();
        assert!(
            matches!(err, ArpError::InvalidName { .. }),
            "{name:?}: {err}"
        );
    }
}

#[test]
fn announce_reaches_the_peer_of_a_veth() {
    in_private_netns(|| {
        ip(&["link", "add", "ga0", "type", "veth", "peer", "name", "gb0"]);
        ip(&["link", "set", "ga0", "up"]);
        ip(&["link", "set", "gb0", "up"]);
        let capture = capture_socket("gb0");
        announce("ga0", VIP).expect("announce on ga0");

        let sock = raw_socket();
        let name = interface_name("ga0").unwrap();
        let (_, mac) = hw_address(&sock, "ga0", &name).unwrap();
        let want = gratuitous_frames(mac, VIP);
        for (i, want) in want.iter().enumerate() {
            let mut buf = [0u8; 128];
            // SAFETY: buf is valid for its length.
            let n =
                unsafe { libc::recv(capture.as_raw_fd(), buf.as_mut_ptr().cast(), buf.len(), 0) };
            assert!(
                n >= FRAME_LEN as isize,
                "frame {i}: recv returned {n}: {}",
                io::Error::last_os_error()
            );
            assert_eq!(&buf[..FRAME_LEN], &want[..], "frame {i}");
        }
    });
}

#[test]
fn errors_name_the_problem() {
    in_private_netns(|| {
        let err = announce("nosuch0", VIP).unwrap_err();
        assert!(matches!(err, ArpError::NoSuchInterface { .. }), "{err}");
        assert!(err.to_string().contains("nosuch0"), "{err}");

        ip(&["link", "set", "lo", "up"]);
        let err = announce("lo", VIP).unwrap_err();
        assert!(
            matches!(err, ArpError::NotEthernet { hw_type: 772, .. }),
            "{err}"
        );

        ip(&["link", "add", "gc0", "type", "veth", "peer", "name", "gd0"]);
        let err = announce("gc0", VIP).unwrap_err();
        assert!(matches!(err, ArpError::InterfaceDown { .. }), "{err}");
        assert!(err.to_string().contains("ip link set gc0 up"), "{err}");
    });
}

/// Runs `f` on a thread that has its own, fresh network namespace; the kernel
/// frees the namespace (and the interfaces made in it) when the thread ends,
/// even if `f` panics. Child processes started from the thread inherit it.
fn in_private_netns(f: impl FnOnce() + Send + 'static) {
    let res = thread::spawn(move || {
        // SAFETY: unshare(2) only changes this thread's namespace membership.
        if unsafe { libc::unshare(libc::CLONE_NEWNET) } != 0 {
            panic!(
                "unshare(CLONE_NEWNET): {} (these tests need root)",
                io::Error::last_os_error()
            );
        }
        f();
    })
    .join();
    if let Err(panic) = res {
        std::panic::resume_unwind(panic);
    }
}

fn ip(args: &[&str]) {
    let out = Command::new("ip").args(args).output().expect("run ip");
    assert!(
        out.status.success(),
        "ip {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

fn raw_socket() -> OwnedFd {
    // SAFETY: plain socket(2), checked.
    let fd = unsafe {
        libc::socket(
            libc::AF_PACKET,
            libc::SOCK_RAW | libc::SOCK_CLOEXEC,
            i32::from(ETH_P_ARP.to_be()),
        )
    };
    assert!(fd >= 0, "socket: {}", io::Error::last_os_error());
    // SAFETY: fresh descriptor owned by nobody else.
    unsafe { OwnedFd::from_raw_fd(fd) }
}

/// A packet socket that receives only ARP arriving on `interface`, with a
/// receive timeout so that a missing frame fails the test instead of hanging.
fn capture_socket(interface: &str) -> OwnedFd {
    let sock = raw_socket();
    let name = interface_name(interface).unwrap();
    // SAFETY: if_nametoindex reads a NUL-terminated string.
    let ifindex = unsafe { libc::if_nametoindex(name.as_ptr()) };
    assert!(ifindex > 0, "{interface}: {}", io::Error::last_os_error());
    // SAFETY: zeroed sockaddr_ll is valid; fields set below.
    let mut addr: libc::sockaddr_ll = unsafe { mem::zeroed() };
    addr.sll_family = libc::AF_PACKET as u16;
    addr.sll_protocol = ETH_P_ARP.to_be();
    addr.sll_ifindex = ifindex as i32;
    // SAFETY: addr is valid for the given length.
    let rc = unsafe {
        libc::bind(
            sock.as_raw_fd(),
            (&raw const addr).cast(),
            size_of::<libc::sockaddr_ll>() as libc::socklen_t,
        )
    };
    assert_eq!(rc, 0, "bind: {}", io::Error::last_os_error());
    let timeout = Duration::from_secs(5);
    let tv = libc::timeval {
        tv_sec: timeout.as_secs() as libc::time_t,
        tv_usec: 0,
    };
    // SAFETY: tv is valid for the given length.
    let rc = unsafe {
        libc::setsockopt(
            sock.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_RCVTIMEO,
            (&raw const tv).cast(),
            size_of::<libc::timeval>() as libc::socklen_t,
        )
    };
    assert_eq!(rc, 0, "SO_RCVTIMEO: {}", io::Error::last_os_error());
    sock
}
