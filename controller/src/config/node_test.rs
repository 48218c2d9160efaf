//! Tests of node file loading: the example loads to the exact expected
//! [`NodeConfig`], defaults and relative paths, and each rule's exact message.

use std::fs;
use std::net::SocketAddr;
use std::os::unix::fs::PermissionsExt;
use std::path::PathBuf;

use pretty_assertions::assert_eq;

use super::testkit::{edit, parse_cases, write_executable, Fixture};
use super::*;

#[test]
fn the_example_node_file_loads_to_the_expected_config() {
    let f = Fixture::new();
    assert_eq!(
        f.node,
        NodeConfig {
            file: f.root().join("node.ron"),
            name: "node1".to_owned(),
            key: f.certs.join("node1.key"),
            cert: f.certs.join("node1.crt"),
            modules: f.modules.clone(),
            socket: PathBuf::from("/run/mirrorfarm/mirrorfarm.sock"),
            state_dir: PathBuf::from("/var/lib/mirrorfarm"),
            mirrorfs: None,
            metrics: Some(SocketAddr::from(([127, 0, 0, 1], 9480))),
            path_prefix: None,
        }
    );
}

#[test]
fn a_minimal_node_file_gets_defaults_and_relative_paths_from_its_directory() {
    let f = Fixture::new();
    let dir = f.root().join("etc");
    fs::create_dir_all(&dir).expect("mkdir");
    let path = dir.join("node.ron");
    fs::write(
        &path,
        r#"(name: "node2", key: "../certs/node2.key", cert: "../certs/node2.crt")"#,
    )
    .expect("write");
    let node = load_node(&path).expect("loads");
    assert_eq!(
        node,
        NodeConfig {
            file: path,
            name: "node2".to_owned(),
            key: dir.join("../certs/node2.key"),
            cert: dir.join("../certs/node2.crt"),
            modules: dir.join("modules"),
            socket: PathBuf::from(DEFAULT_SOCKET),
            state_dir: PathBuf::from(DEFAULT_STATE_DIR),
            mirrorfs: None,
            metrics: None,
            path_prefix: None,
        }
    );
}

#[test]
fn the_lab_fields_load() {
    let f = Fixture::new();
    let bin = f.root().join("mirrorfs");
    write_executable(&bin);
    let text = edit(
        &f.example("node.ron"),
        &[
            (
                "metrics: Some(\"127.0.0.1:9480\"),",
                "metrics: None, mirrorfs: Some(\"mirrorfs\"), path_prefix: Some(\"/lab/node1\"),",
            ),
            ("state_dir: \"/var/lib/mirrorfarm\"", "state_dir: \"state\""),
        ],
    );
    let path = f.root().join("node.ron");
    fs::write(&path, text).expect("write");
    let node = load_node(&path).expect("loads");
    assert_eq!(node.mirrorfs, Some(bin));
    assert_eq!(node.path_prefix, Some(PathBuf::from("/lab/node1")));
    assert_eq!(node.metrics, None);
    assert_eq!(node.state_dir, f.root().join("state"));
}

#[test]
fn each_rule_refuses_its_bad_node_file_with_place_field_and_fix() {
    let f = Fixture::new();
    let readable = f.root().join("readable");
    mirrorfs::net::tls::keygen(&readable, "node1").expect("keygen");
    fs::set_permissions(
        readable.join("node1.key"),
        fs::Permissions::from_mode(0o644),
    )
    .expect("chmod");
    fs::write(f.root().join("plain"), "x").expect("write");

    let cases = parse_cases(include_str!("testdata/node_errors.txt"));
    assert!(
        cases.len() > 10,
        "the case file parsed to {} cases",
        cases.len()
    );
    let example = Fixture::example_raw("node.ron");
    let path = f.root().join("bad-node.ron");
    let mut failures = Vec::new();
    for c in &cases {
        let edits: Vec<(&str, &str)> = c
            .edits
            .iter()
            .map(|(a, b)| (a.as_str(), b.as_str()))
            .collect();
        fs::write(&path, f.substitute(&edit(&example, &edits))).expect("write");
        let got = match load_node(&path) {
            Ok(_) => "loaded".to_owned(),
            Err(err) => f.message(&err),
        };
        if got != c.want {
            failures.push(format!("case: {}\n got: {got}\nwant: {}", c.name, c.want));
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n\n"));
}
