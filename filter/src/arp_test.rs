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

const VMAC: [u8; 6] = [0x02, 0xaa, 0xbb, 0xcc, 0xdd, 0xee];
const CLIENT_MAC: [u8; 6] = [0x52, 0x54, 0x00, 0x01, 0x02, 0x03];
const CLIENT: Ipv4Addr = Ipv4Addr::new(10, 77, 0, 7);

/// A request from CLIENT for VIP, as a client's kernel sends it.
fn request() -> [u8; FRAME_LEN] {
    #[rustfmt::skip]
    let f: [u8; FRAME_LEN] = [
        0xff, 0xff, 0xff, 0xff, 0xff, 0xff,
        0x52, 0x54, 0x00, 0x01, 0x02, 0x03,
        0x08, 0x06,
        0x00, 0x01, 0x08, 0x00, 6, 4, 0x00, 0x01,
        0x52, 0x54, 0x00, 0x01, 0x02, 0x03, 10, 77, 0, 7,
        0, 0, 0, 0, 0, 0, 10, 77, 0, 100,
    ];
    f
}

#[test]
fn a_request_is_parsed_and_answered_with_the_virtual_mac() {
    let req = parse_request(&request()).expect("a valid request");
    assert_eq!(
        req,
        ArpRequest {
            sender_mac: CLIENT_MAC,
            sender_ip: CLIENT,
            target_ip: VIP
        }
    );
    // Padding to the Ethernet minimum (60 bytes) is fine.
    let mut padded = request().to_vec();
    padded.resize(60, 0);
    assert_eq!(parse_request(&padded), Some(req));

    #[rustfmt::skip]
    let want: [u8; FRAME_LEN] = [
        // Ethernet: to the asker, from the node's own MAC.
        0x52, 0x54, 0x00, 0x01, 0x02, 0x03,
        0x02, 0x11, 0x22, 0x33, 0x44, 0x55,
        0x08, 0x06,
        0x00, 0x01, 0x08, 0x00, 6, 4, 0x00, 0x02,
        // sender: the VIP at the virtual MAC
        0x02, 0xaa, 0xbb, 0xcc, 0xdd, 0xee, 10, 77, 0, 100,
        // target: the asker
        0x52, 0x54, 0x00, 0x01, 0x02, 0x03, 10, 77, 0, 7,
    ];
    assert_eq!(reply_frame(MAC, VMAC, &req), want);
}

#[test]
fn hostile_or_foreign_frames_are_ignored() {
    let r = request();
    for len in 0..FRAME_LEN {
        assert_eq!(parse_request(&r[..len]), None, "truncated to {len}");
    }
    let edits: [(usize, u8); 8] = [
        (13, 0x00), // EtherType IPv4
        (15, 6),    // hardware type IEEE 802
        (17, 0xdd), // protocol IPv6
        (18, 8),    // hardware length
        (19, 16),   // protocol length
        (21, 2),    // a reply, not a request
        (22, 0x01), // multicast sender MAC
        (21, 0xff), // unknown operation
    ];
    for (i, v) in edits {
        let mut f = r;
        f[i] = v;
        assert_eq!(parse_request(&f), None, "byte {i} = {v:#x}");
    }
    let mut zero_mac = r;
    zero_mac[22..28].fill(0);
    assert_eq!(parse_request(&zero_mac), None);
}

#[test]
fn farm_gratuitous_frames_carry_the_virtual_mac() {
    let [request, reply] = gratuitous_frames_as(MAC, VMAC, VIP);
    assert_eq!(&request[6..12], &MAC, "Ethernet source: the node's own MAC");
    assert_eq!(&request[22..28], &VMAC, "ARP sender: the virtual MAC");
    assert_eq!(&reply[32..38], &VMAC, "reply target: the virtual MAC");
    assert_eq!(&reply[..6], &BROADCAST);
}

#[test]
fn the_responder_answers_for_its_vips_only_and_stops() {
    in_private_netns(|| {
        ip(&["link", "add", "ra0", "type", "veth", "peer", "name", "rb0"]);
        ip(&["link", "set", "ra0", "up"]);
        ip(&["link", "set", "rb0", "up"]);
        let responder = ArpResponder::start("ra0", &[VIP], VMAC).expect("start");
        let capture = capture_socket("rb0");
        let client = PacketSocket::open("rb0").unwrap();
        let mut other = request();
        other[41] = 99; // asks for 10.77.0.99: not ours
        client
            .send_all(&[other, [0u8; FRAME_LEN], request()], BROADCAST)
            .unwrap();
        let mut buf = [0u8; 128];
        // SAFETY: buf is valid for its length.
        let n = unsafe { libc::recv(capture.as_raw_fd(), buf.as_mut_ptr().cast(), buf.len(), 0) };
        assert!(
            n >= FRAME_LEN as isize,
            "no reply: {}",
            io::Error::last_os_error()
        );
        let sock = PacketSocket::open("ra0").unwrap();
        let req = parse_request(&request()).unwrap();
        assert_eq!(&buf[..FRAME_LEN], &reply_frame(sock.mac, VMAC, &req)[..]);
        // The counter moves just after the send: give it a bounded moment.
        let deadline = std::time::Instant::now() + Duration::from_secs(2);
        while responder.answered() < 1 && std::time::Instant::now() < deadline {
            thread::sleep(Duration::from_millis(5));
        }
        assert_eq!(responder.answered(), 1);
        let started = std::time::Instant::now();
        responder.stop();
        assert!(started.elapsed() < Duration::from_secs(2));
    });
}
