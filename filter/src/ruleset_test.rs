//! Golden files for the nft scripts (`testdata/<case>.nft`): a new case is a
//! few lines here; `UPDATE_GOLDEN=1` rewrites the files from the code.

use std::path::Path;

use pretty_assertions::assert_eq;

use super::*;

const VIP: Ipv4Addr = Ipv4Addr::new(10, 77, 0, 100);

fn farm(rule: Rule) -> FarmFilter {
    FarmFilter {
        module: "web".into(),
        interface: "eth0".into(),
        vips: vec![VIP, Ipv4Addr::new(10, 77, 0, 101)],
        ports: vec![
            (Proto::Tcp, 443),
            (Proto::Tcp, 80),
            (Proto::Udp, 53),
            (Proto::Tcp, 80),
        ],
        rule,
        vmac: vmac("web", VIP),
        seed: 0x6d66_0001,
        owned: (0..=84).chain([200, 255]).collect(),
    }
}

/// Compares `got` with `testdata/<name>.nft`, or writes it there with `UPDATE_GOLDEN=1`.
fn golden(name: &str, got: &str) {
    let path = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("src/testdata")
        .join(format!("{name}.nft"));
    if std::env::var_os("UPDATE_GOLDEN").is_some() {
        std::fs::write(&path, got).expect("cannot write the golden file");
        return;
    }
    let want = std::fs::read_to_string(&path)
        .unwrap_or_else(|e| panic!("{}: {e}; create it with UPDATE_GOLDEN=1", path.display()));
    assert_eq!(
        want, got,
        "{name}: rerun with UPDATE_GOLDEN=1 if the change is meant"
    );
}

#[test]
fn install_by_address_and_port() {
    golden(
        "install_by_address_and_port",
        &install_script(&farm(Rule::ByAddressAndPort)).unwrap(),
    );
}

#[test]
fn install_by_address_with_no_bucket() {
    let mut f = farm(Rule::ByAddress);
    f.owned = BucketSet::empty();
    f.vips.truncate(1);
    golden("install_by_address_empty", &install_script(&f).unwrap());
}

#[test]
fn set_update_and_removal() {
    let owned: BucketSet = (0..=84).chain(170..=171).collect();
    golden("set_owned", &set_owned_script("web", &owned).unwrap());
    golden(
        "set_owned_empty",
        &set_owned_script("web", &BucketSet::empty()).unwrap(),
    );
    golden("remove", &remove_script("web").unwrap());
}

#[test]
fn bad_fields_are_refused_with_their_name() {
    type Breaker = fn(&mut FarmFilter);
    let cases: [(&str, Breaker); 7] = [
        ("module", |f| f.module = "web; flush ruleset".into()),
        ("module", |f| f.module = String::new()),
        ("interface", |f| f.interface = "eth0\" ; flush".into()),
        ("interface", |f| f.interface = "sixteen-bytes-xx".into()),
        ("VIP", |f| f.vips.clear()),
        ("MAC", |f| f.vmac[0] = 0x03),
        ("port 0", |f| f.ports.push((Proto::Udp, 0))),
    ];
    for (what, break_it) in cases {
        let mut f = farm(Rule::ByAddress);
        break_it(&mut f);
        let err = install_script(&f).unwrap_err().to_string();
        assert!(err.contains(what), "{what}: {err}");
    }
    assert!(set_owned_script("a-b", &BucketSet::full()).is_err());
    assert!(remove_script(&"x".repeat(MAX_MODULE_LEN + 1)).is_err());
}

#[test]
fn vmac_is_local_unicast_and_deterministic() {
    let m = vmac("web", VIP);
    assert_eq!(m[0], 0x02);
    assert_eq!(m, vmac("web", VIP));
    assert_ne!(m, vmac("web2", VIP));
    assert_ne!(m, vmac("web", Ipv4Addr::new(10, 77, 0, 101)));
    // Pinned: every node (and every version) must compute the same MAC.
    assert_eq!(crate::arp::format_mac(m), "02:dd:7f:e1:2a:c3");
}
