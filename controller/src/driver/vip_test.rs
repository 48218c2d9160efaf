//! The VIP on a veth pair inside a network namespace private to the test
//! thread (the kernel frees it, with its links, when the thread ends).

use std::thread;
use std::time::Instant;

use super::*;

fn spec(interface: &str) -> VipSpec {
    VipSpec {
        addr: Ipv4Addr::new(10, 77, 0, 100),
        prefix: 24,
        interface: interface.into(),
    }
}

#[test]
fn add_present_renew_remove() {
    in_private_netns(|| {
        veth_up("va0", "vb0");
        let vip = spec("va0");
        assert!(!present(&vip).unwrap());
        add(&vip, Duration::from_secs(30)).expect("add");
        assert!(present(&vip).unwrap());
        assert_eq!(prefix_and_lifetime(&vip), Some((24, 30)));

        // Adding again renews rather than failing; a fraction rounds up.
        renew(&vip, Duration::from_millis(100_500)).expect("renew");
        let (_, lft) = prefix_and_lifetime(&vip).unwrap();
        assert!((100..=101).contains(&lft), "{lft}");
        add(&vip, Duration::from_secs(30)).expect("add again");

        remove(&vip).expect("remove");
        assert!(!present(&vip).unwrap());
        remove(&vip).expect("removing an absent VIP is not an error");
    });
}

#[test]
fn the_kernel_drops_an_address_that_is_not_renewed() {
    in_private_netns(|| {
        veth_up("va0", "vb0");
        let vip = spec("va0");
        renew(&vip, Duration::ZERO).expect("add with the shortest lifetime (1 s)");
        assert!(present(&vip).unwrap());
        let end = Instant::now() + Duration::from_secs(10);
        while present(&vip).unwrap() {
            assert!(Instant::now() < end, "the VIP outlived its lifetime by 9 s");
            thread::sleep(Duration::from_millis(50));
        }
    });
}

#[test]
fn errors_name_the_interface_and_the_fix() {
    in_private_netns(|| {
        let vip = spec("nosuch0");
        let err = add(&vip, Duration::from_secs(5)).unwrap_err();
        assert!(matches!(err, VipError::NoSuchInterface { .. }), "{err}");
        let msg = err.to_string();
        assert!(
            msg.contains("nosuch0") && msg.contains("fix the VIP's `interface`"),
            "{msg}"
        );
        assert!(matches!(
            present(&vip),
            Err(VipError::NoSuchInterface { .. })
        ));
        remove(&vip).expect("no interface: nothing to remove");

        // The address goes on, but loopback has no ARP.
        run_ip(&["link", "set", "lo", "up"]);
        let lo = spec("lo");
        let err = add(&lo, Duration::from_secs(5)).unwrap_err();
        assert!(
            matches!(
                err,
                VipError::Announce {
                    source: filter::arp::ArpError::NotEthernet { .. },
                    ..
                }
            ),
            "{err}"
        );
        assert!(present(&lo).unwrap());

        let bad = VipSpec {
            prefix: 40,
            ..spec("lo")
        };
        let err = renew(&bad, Duration::from_secs(5)).unwrap_err();
        assert!(matches!(err, VipError::IpFailed { .. }), "{err}");
        assert!(err.to_string().contains("10.77.0.100/40"), "{err}");
    });
}

/// The prefix length and valid lifetime `ip` reports for the VIP.
fn prefix_and_lifetime(vip: &VipSpec) -> Option<(u64, u64)> {
    let out = run_ip(&["-j", "-4", "addr", "show", "dev", &vip.interface]);
    let json: serde_json::Value = serde_json::from_str(&out).unwrap();
    let want = vip.addr.to_string();
    json.as_array()?
        .iter()
        .filter_map(|l| l.get("addr_info")?.as_array())
        .flatten()
        .find(|a| a["local"].as_str() == Some(want.as_str()))
        .map(|a| {
            (
                a["prefixlen"].as_u64().unwrap(),
                a["valid_life_time"].as_u64().unwrap(),
            )
        })
}

fn veth_up(a: &str, b: &str) {
    run_ip(&["link", "add", a, "type", "veth", "peer", "name", b]);
    run_ip(&["link", "set", a, "up"]);
    run_ip(&["link", "set", b, "up"]);
}

fn run_ip(args: &[&str]) -> String {
    let out = Command::new("ip").args(args).output().expect("run ip");
    assert!(
        out.status.success(),
        "ip {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}

/// Runs `f` on a thread with a fresh network namespace of its own; children it
/// starts (`ip`) inherit it. Nothing outside the test is touched, and the
/// namespace goes away with the thread even if `f` panics.
fn in_private_netns(f: impl FnOnce() + Send + 'static) {
    let res = thread::spawn(move || {
        // SAFETY: unshare(2) changes only this thread's namespace membership.
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

#[test]
fn the_interface_s_networks_tell_whether_a_vip_belongs_there() {
    in_private_netns(|| {
        veth_up("vc0", "vd0");
        let vip = spec("vc0");
        assert_eq!(networks(&vip).unwrap(), Vec::new(), "no address yet");
        run_ip(&["addr", "add", "10.77.0.5/24", "dev", "vc0"]);
        run_ip(&["addr", "add", "10.99.0.5/16", "dev", "vc0"]);
        add(&vip, Duration::from_secs(30)).expect("add");
        let nets = networks(&vip).unwrap();
        assert_eq!(
            nets,
            vec![
                (Ipv4Addr::new(10, 77, 0, 5), 24),
                (Ipv4Addr::new(10, 99, 0, 5), 16)
            ],
            "the VIP itself is left out"
        );
        assert!(nets.iter().any(|n| within(vip.addr, *n)));
        assert!(!within(Ipv4Addr::new(10, 78, 0, 100), nets[0]));
        assert!(within(Ipv4Addr::new(10, 99, 200, 1), nets[1]));
        assert!(within(
            Ipv4Addr::new(1, 2, 3, 4),
            (Ipv4Addr::UNSPECIFIED, 0)
        ));
        assert!(within(
            Ipv4Addr::new(10, 77, 0, 5),
            (Ipv4Addr::new(10, 77, 0, 5), 32)
        ));
        assert!(!within(
            Ipv4Addr::new(10, 77, 0, 6),
            (Ipv4Addr::new(10, 77, 0, 5), 32)
        ));
    });
}
