//! Tests of module loading: the example loads to the exact expected [`Module`];
//! each rule refuses a small bad edit of it with the exact message (place, field,
//! value, fix); `load_modules` keeps the good files and reports the bad ones.

use std::fs;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::os::unix::fs::PermissionsExt;
use std::path::PathBuf;
use std::time::Duration;

use mirrorfs::ctl::AckMode;
use pretty_assertions::assert_eq;

use super::testkit::{edit, parse_cases, write_executable, Fixture};
use super::*;

/// What the example module must load to, in fixture `f`.
fn expected_example(f: &Fixture, digest: u64) -> Module {
    let scripts = f.modules.join("apache");
    Module {
        name: "apache".to_owned(),
        file: f.modules.join("apache.ron"),
        digest,
        kind: ModuleKind::Mirror,
        nodes: vec![
            NodeSpec {
                name: "node1".to_owned(),
                cert: f.certs.join("node1.crt"),
                addrs: vec![IpAddr::from([10, 77, 0, 1])],
                weight: 1,
            },
            NodeSpec {
                name: "node2".to_owned(),
                cert: f.certs.join("node2.crt"),
                addrs: vec![IpAddr::from([10, 77, 0, 2])],
                weight: 1,
            },
        ],
        heartbeat_port: 7420,
        mirrorfs_port: 7421,
        ack: AckMode::EachOp,
        dirs: vec![
            DirSpec {
                backing: PathBuf::from("/var/lib/apache-mirror/htdocs"),
                mount: PathBuf::from("/srv/apache-mirror/htdocs"),
            },
            DirSpec {
                backing: PathBuf::from("/var/lib/apache-mirror/uploads"),
                mount: PathBuf::from("/srv/apache-mirror/uploads"),
            },
        ],
        vip: Some(Vip {
            addr: Ipv4Addr::new(10, 77, 0, 100),
            prefix: 24,
            interface: "eth0".to_owned(),
        }),
        farm: None,
        witness: Some(WitnessSpec {
            addr: SocketAddr::from(([10, 77, 0, 3], 7430)),
            cert: f.certs.join("witness.crt"),
        }),
        timing: Timing {
            heartbeat_interval: Duration::from_millis(250),
            heartbeat_timeout: Duration::from_millis(1500),
            lease: Duration::from_millis(3000),
        },
        scripts: Scripts {
            prestart: None,
            start_prim: Some(scripts.join("start_prim")),
            stop_prim: Some(scripts.join("stop_prim")),
            poststop: None,
            start_both: None,
            stop_both: None,
            dir: scripts,
            timeout: Duration::from_secs(30),
            stop_timeout: Duration::from_secs(10),
        },
        checkers: vec![Checker {
            name: "apache-http".to_owned(),
            check: Check::Http {
                url: "http://127.0.0.1/".to_owned(),
                expect_status: 200,
            },
            interval: Duration::from_secs(1),
            timeout: Duration::from_secs(2),
            failures: 3,
            on_failure: OnFailure::Restart {
                times: 3,
                window: Duration::from_secs(300),
                then: Then::Swap,
            },
        }],
        maxloop: MaxLoop {
            count: 3,
            window: Duration::from_secs(3600),
        },
    }
}

#[test]
fn the_example_module_loads_to_the_expected_module() {
    let f = Fixture::new();
    let text = f.example("apache.ron");
    let module = f.load(&text).expect("the example module loads");
    let digest = xxhash_rust::xxh3::xxh3_64(text.as_bytes());
    assert_eq!(module, expected_example(&f, digest));
}

#[test]
fn issue_10_7_a_mirror_module_may_mount_its_dirs_with_ack_on_sync() {
    let f = Fixture::new();
    let text = f.example("apache.ron");
    assert_eq!(f.load(&text).expect("loads").ack, AckMode::EachOp);
    let on_sync = edit(
        &text,
        &[("mirrorfs_port: 7421,", "mirrorfs_port: 7421, ack: OnSync,")],
    );
    assert_eq!(f.load(&on_sync).expect("loads").ack, AckMode::OnSync);
}

#[test]
fn the_digest_is_of_the_file_bytes_so_any_difference_shows() {
    let f = Fixture::new();
    let text = f.example("apache.ron");
    let a = f.load(&text).expect("loads").digest;
    let b = f
        .load(&format!("{text}// a comment\n"))
        .expect("loads")
        .digest;
    assert_ne!(a, b);
    assert_eq!(a, f.load(&text).expect("loads").digest);
}

#[test]
fn a_minimal_module_gets_the_documented_defaults() {
    let f = Fixture::new();
    let text = r#"(
        kind: Mirror,
        nodes: [
            (name: "node1", cert: "../certs/node1.crt", addrs: ["192.168.1.1", "fd00::1"]),
            (name: "node2", cert: "../certs/node2.crt", addrs: ["192.168.1.2", "fd00::2"]),
        ],
        heartbeat_port: 9000,
        mirrorfs_port: 9001,
        dirs: [(backing: "/data/b", mount: "/data/m")],
        accept_split_brain_risk: true,
        checkers: [(name: "p", check: Process(name: "apache2"))],
    )"#;
    let path = f.write_module("web", text);
    let m = load_module(&path, &f.node).expect("the minimal module loads");
    // Relative certificate paths are taken from the module file's directory.
    assert_eq!(m.nodes[1].cert, f.modules.join("../certs/node2.crt"));
    assert_eq!(
        m.nodes[1].addrs,
        vec![
            IpAddr::from([192, 168, 1, 2]),
            "fd00::2".parse::<IpAddr>().expect("literal")
        ]
    );
    assert_eq!(m.vip, None);
    assert_eq!(m.witness, None);
    assert_eq!(
        m.timing,
        Timing {
            heartbeat_interval: Duration::from_millis(250),
            heartbeat_timeout: Duration::from_millis(1500),
            lease: Duration::from_millis(3000),
        }
    );
    assert_eq!(
        m.scripts,
        Scripts {
            dir: f.modules.join("web"),
            prestart: None,
            start_prim: None,
            stop_prim: None,
            poststop: None,
            start_both: None,
            stop_both: None,
            timeout: Duration::from_secs(30),
            stop_timeout: Duration::from_secs(10),
        }
    );
    assert_eq!(
        m.checkers,
        vec![Checker {
            name: "p".to_owned(),
            check: Check::Process {
                name: "apache2".to_owned()
            },
            interval: Duration::from_secs(1),
            timeout: Duration::from_secs(2),
            failures: 3,
            on_failure: OnFailure::Restart {
                times: 3,
                window: Duration::from_secs(300),
                then: Then::Swap,
            },
        }]
    );
    assert_eq!(
        m.maxloop,
        MaxLoop {
            count: 3,
            window: Duration::from_secs(3600),
        }
    );
}

#[test]
fn scripts_and_commands_resolve_in_the_scripts_dir_or_stay_absolute() {
    let f = Fixture::new();
    let elsewhere = f.root().join("bin");
    fs::create_dir_all(&elsewhere).expect("mkdir");
    write_executable(&elsewhere.join("pre"));
    write_executable(&f.modules.join("apache/probe"));
    let pre = elsewhere.join("pre");
    let text = edit(
        &f.example("apache.ron"),
        &[
            (
                "start_prim: Some(\"start_prim\"),",
                &format!(
                    "start_prim: Some(\"start_prim\"), prestart: Some({:?}),",
                    pre
                ),
            ),
            (
                "check: Http(url: \"http://127.0.0.1/\", expect_status: 200),",
                "check: Command(path: \"probe\", args: [\"-q\"]), on_failure: Stop,",
            ),
            (
                "            on_failure: Restart(times: 3, window_s: 300, then: Swap),\n",
                "",
            ),
        ],
    );
    let m = f.load(&text).expect("loads");
    assert_eq!(m.scripts.prestart, Some(pre));
    assert_eq!(
        m.checkers[0].check,
        Check::Command {
            path: f.modules.join("apache/probe"),
            args: vec!["-q".to_owned()],
        }
    );
    assert_eq!(m.checkers[0].on_failure, OnFailure::Stop);
}

#[test]
fn node_index_peer_of_and_dirs_for() {
    let f = Fixture::new();
    let m = f.load(&f.example("apache.ron")).expect("loads");
    assert_eq!(m.node_index("node1"), Some(0));
    assert_eq!(m.node_index("node2"), Some(1));
    assert_eq!(m.node_index("node3"), None);
    assert_eq!(m.peer_of("node1").map(|n| n.name.as_str()), Some("node2"));
    assert_eq!(m.peer_of("node2").map(|n| n.name.as_str()), Some("node1"));
    assert_eq!(m.peer_of("node3"), None);

    assert_eq!(m.dirs_for(&f.node), m.dirs);
    let lab = NodeConfig {
        path_prefix: Some(PathBuf::from("/lab/node1")),
        ..f.node.clone()
    };
    assert_eq!(
        m.dirs_for(&lab),
        vec![
            DirSpec {
                backing: PathBuf::from("/lab/node1/var/lib/apache-mirror/htdocs"),
                mount: PathBuf::from("/lab/node1/srv/apache-mirror/htdocs"),
            },
            DirSpec {
                backing: PathBuf::from("/lab/node1/var/lib/apache-mirror/uploads"),
                mount: PathBuf::from("/lab/node1/srv/apache-mirror/uploads"),
            },
        ]
    );
}

#[test]
fn each_rule_refuses_its_bad_file_with_place_field_and_fix() {
    let f = Fixture::new();
    // Files some cases point at.
    let other = f.root().join("other");
    mirrorfs::net::tls::keygen(&other, "node1").expect("keygen");
    let scripts = f.modules.join("apache");
    fs::write(scripts.join("README"), "not a script").expect("write");
    fs::set_permissions(scripts.join("README"), fs::Permissions::from_mode(0o644)).expect("chmod");
    fs::create_dir_all(scripts.join("subdir")).expect("mkdir");

    let cases = parse_cases(include_str!("testdata/module_errors.txt"));
    assert!(
        cases.len() > 50,
        "the case file parsed to {} cases",
        cases.len()
    );
    let example = Fixture::example_raw("apache.ron");
    let mut failures = Vec::new();
    for c in &cases {
        let edits: Vec<(&str, &str)> = c
            .edits
            .iter()
            .map(|(a, b)| (a.as_str(), b.as_str()))
            .collect();
        let text = f.substitute(&edit(&example, &edits));
        let got = match f.load(&text) {
            Ok(_) => "loaded".to_owned(),
            Err(err) => f.message(&err),
        };
        if got != c.want {
            failures.push(format!("case: {}\n got: {got}\nwant: {}", c.name, c.want));
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n\n"));
}

#[test]
fn the_module_name_is_the_file_stem_and_must_be_valid() {
    let f = Fixture::new();
    let text = f.example("apache.ron");
    for good in ["a", "web-2", "x_y", "0abc", &"a".repeat(32)] {
        let path = f.write_module(good, &text);
        let m = load_module(&path, &f.node).unwrap_or_else(|e| panic!("{good}: {e}"));
        assert_eq!(m.name, good);
        assert_eq!(m.file, path);
    }
    for bad in [
        "Apache",
        "-web",
        "_web",
        "web.site",
        "web site",
        &"a".repeat(33),
    ] {
        let path = f.write_module(bad, &text);
        let err = load_module(&path, &f.node).expect_err(bad);
        assert_eq!(
            f.message(&err),
            format!(
                "$TMP/modules/{bad}.ron: module name {bad:?} (the file name without .ron) is \
                 invalid: a module name is 1 to 32 characters of a-z 0-9 _ - starting with a-z or \
                 0-9; rename the file"
            )
        );
    }
}

#[test]
fn unreadable_and_non_utf8_files_are_reported_with_their_place() {
    let f = Fixture::new();
    let missing = f.modules.join("gone.ron");
    let err = load_module(&missing, &f.node).expect_err("missing file");
    assert_eq!(
        f.message(&err),
        "$TMP/modules/gone.ron: cannot read it: No such file or directory (os error 2); check the \
         path and that it is readable by root"
    );
    let path = f.modules.join("latin.ron");
    fs::write(&path, b"(\n  kind: Mirror, // caf\xe9\n)").expect("write");
    let err = load_module(&path, &f.node).expect_err("not UTF-8");
    assert_eq!(
        f.message(&err),
        "$TMP/modules/latin.ron:2:23: the file is not UTF-8 text (invalid byte at offset 24); \
         save it as UTF-8"
    );
}

#[test]
fn a_relative_module_path_is_made_absolute() {
    let f = Fixture::new();
    f.write_module("apache", &f.example("apache.ron"));
    // Relative to the current directory: reach the file through "..".
    let cwd = std::env::current_dir().expect("cwd");
    let mut relative = PathBuf::new();
    for _ in cwd.components().skip(1) {
        relative.push("..");
    }
    let relative = relative.join(f.modules.join("apache.ron").strip_prefix("/").expect("abs"));
    let m = load_module(&relative, &f.node).expect("loads");
    assert!(m.file.is_absolute(), "{}", m.file.display());
    assert_eq!(m.scripts.dir, f.modules.join("apache"));
}

/// A second module that shares nothing with the example.
fn other_module(name: &str, heartbeat: u16, vip: &str, dir: &str) -> String {
    format!(
        r#"(
    kind: Mirror,
    nodes: [
        (name: "node1", cert: "../certs/node1.crt", addrs: ["10.77.0.1"]),
        (name: "node2", cert: "../certs/node2.crt", addrs: ["10.77.0.2"]),
    ],
    heartbeat_port: {heartbeat},
    mirrorfs_port: {},
    dirs: [(backing: "/var/lib/{name}/{dir}", mount: "/srv/{name}/{dir}")],
    vip: Some((addr: "{vip}", prefix: 24, interface: "eth0")),
    accept_split_brain_risk: true,
)"#,
        heartbeat + 1
    )
}

#[test]
fn load_modules_keeps_the_good_files_and_reports_the_bad_ones() {
    let f = Fixture::new();
    f.write_module("apache", &f.example("apache.ron"));
    f.write_module("mail", &other_module("mail", 7520, "10.77.0.101", "spool"));
    f.write_module("broken", "(kind: Mirror,");
    f.write_module(
        "notmine",
        &f.example("apache.ron").replace("node1", "node3"),
    );
    // Clashes with apache (loaded before it): same heartbeat port, then same VIP,
    // then a directory inside one of apache's.
    f.write_module("zport", &other_module("zport", 7420, "10.77.0.102", "d"));
    f.write_module("zvip", &other_module("zvip", 7620, "10.77.0.100", "d"));
    let nested = other_module("zdir", 7720, "10.77.0.103", "d")
        .replace("/var/lib/zdir/d", "/var/lib/apache-mirror/htdocs/zdir");
    f.write_module("zdir", &nested);
    // Not module files: another extension, a backup, a directory named *.ron.
    fs::write(f.modules.join("README"), "x").expect("write");
    fs::write(f.modules.join("apache.ron~"), "x").expect("write");
    fs::create_dir_all(f.modules.join("dir.ron")).expect("mkdir");

    let (modules, errors) = load_modules(&f.node);
    let names: Vec<&str> = modules.iter().map(|m| m.name.as_str()).collect();
    assert_eq!(names, ["apache", "mail"]);
    let messages: Vec<String> = errors.iter().map(|e| f.message(e)).collect();
    assert_eq!(
        messages,
        [
            "$TMP/modules/broken.ron:1:15: the file ends early; close every ( and [ that is opened",
            "$TMP/modules/notmine.ron:10:5: nodes: node \"node1\" is not listed in nodes: \"node3\", \
             \"node2\"; install this module only on its nodes, or correct `name` in $TMP/node.ron",
            "$TMP/modules/zdir.ron: directory /var/lib/apache-mirror/htdocs/zdir (dirs[0].backing) \
             or one nested with it is also used by module \"apache\" ($TMP/modules/apache.ron); \
             give each module its own directories",
            "$TMP/modules/zport.ron: port 7420 (heartbeat_port) is also used by module \"apache\" \
             ($TMP/modules/apache.ron); give each module its own heartbeat_port and mirrorfs_port \
             range",
            "$TMP/modules/zvip.ron: vip.addr 10.77.0.100 is also used by module \"apache\" \
             ($TMP/modules/apache.ron); give each module its own virtual IPs",
        ]
    );
}

#[test]
fn load_modules_reports_a_missing_directory() {
    let f = Fixture::new();
    let node = NodeConfig {
        modules: f.root().join("nowhere"),
        ..f.node.clone()
    };
    let (modules, errors) = load_modules(&node);
    assert!(modules.is_empty());
    let messages: Vec<String> = errors.iter().map(|e| f.message(e)).collect();
    assert_eq!(
        messages,
        [
            "$TMP/nowhere: cannot read it: No such file or directory (os error 2); check the path \
          and that it is readable by root"
        ]
    );
}

#[test]
fn the_farm_example_loads_with_its_vips_ports_rule_and_weights() {
    let f = Fixture::new();
    let text = f.substitute(&Fixture::example_raw_in("apache-farm", "apache-farm.ron"));
    let m = f.load(&text).expect("the farm example loads");
    assert_eq!(m.kind, ModuleKind::Farm);
    assert_eq!(
        m.farm,
        Some(FarmSpec {
            vips: vec![Vip {
                addr: Ipv4Addr::new(10, 78, 0, 100),
                prefix: 24,
                interface: "eth0".to_owned(),
            }],
            ports: vec![(Proto::Tcp, 80)],
            rule: Rule::Address,
        })
    );
    let names: Vec<(&str, u32)> = m
        .nodes
        .iter()
        .map(|n| (n.name.as_str(), n.weight))
        .collect();
    assert_eq!(names, [("node1", 1), ("node2", 1), ("node3", 1)]);
    assert_eq!(
        (m.mirrorfs_port, m.dirs.len(), m.vip.is_none()),
        (0, 0, true)
    );
    assert_eq!(m.witness, None);
    let scripts = f.modules.join("apache-farm");
    assert_eq!(m.scripts.start_both, Some(scripts.join("start_both")));
    assert_eq!(m.scripts.stop_both, Some(scripts.join("stop_both")));
    assert_eq!(
        m.checkers[0].on_failure,
        OnFailure::Restart {
            times: 3,
            window: Duration::from_secs(300),
            then: Then::Leave
        }
    );
}

#[test]
fn each_farm_rule_refuses_its_bad_file_with_place_field_and_fix() {
    let f = Fixture::new();
    let cases = parse_cases(include_str!("testdata/farm_errors.txt"));
    assert!(
        cases.len() > 10,
        "the case file parsed to {} cases",
        cases.len()
    );
    let example = Fixture::example_raw_in("apache-farm", "apache-farm.ron");
    let mut failures = Vec::new();
    for c in &cases {
        let edits: Vec<(&str, &str)> = c
            .edits
            .iter()
            .map(|(a, b)| (a.as_str(), b.as_str()))
            .collect();
        let text = f.substitute(&edit(&example, &edits));
        let got = match f.load(&text) {
            Ok(_) => "loaded".to_owned(),
            Err(err) => f.message(&err),
        };
        if got != c.want {
            failures.push(format!("case: {}\n got: {got}\nwant: {}", c.name, c.want));
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n\n"));
}

#[test]
fn two_farms_on_one_virtual_ip_clash() {
    let f = Fixture::new();
    let farm = f.substitute(&Fixture::example_raw_in("apache-farm", "apache-farm.ron"));
    let scripts = "dir: \"/etc/mirrorfarm/modules/apache-farm\"";
    assert!(farm.contains(&f.substitute(scripts)));
    f.write_module("a", &farm);
    f.write_module(
        "b",
        &edit(&farm, &[("heartbeat_port: 7440", "heartbeat_port: 7450")]),
    );
    let (modules, errors) = load_modules(&f.node);
    assert_eq!(modules.len(), 1);
    let msgs: Vec<String> = errors.iter().map(|e| f.message(e)).collect();
    assert_eq!(msgs.len(), 1, "{msgs:?}");
    assert!(
        msgs[0].contains("farm.vips[0].addr 10.78.0.100") && msgs[0].contains("own virtual IPs"),
        "{msgs:?}"
    );
}
