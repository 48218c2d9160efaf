//! The lab's configuration, rendered from the Apache mirror example that is
//! built into the binary (`examples/apache-mirror/`): the module file with its
//! certificate and scripts paths moved into the lab, one node file per node,
//! and the module's scripts. Pure: returns text; `up` writes it.

use std::path::{Path, PathBuf};

use serde::Deserialize;

use super::layout::{Host, Lab, FARM_VIP};

/// The example module, as shipped.
pub(crate) const MODULE_EXAMPLE: &str = include_str!("../../../examples/apache-mirror/apache.ron");
/// The module's scripts (name, text), installed executable in its scripts dir.
pub(crate) const SCRIPTS: [(&str, &str); 2] = [
    (
        "start_prim",
        include_str!("../../../examples/apache-mirror/start_prim"),
    ),
    (
        "stop_prim",
        include_str!("../../../examples/apache-mirror/stop_prim"),
    ),
];

/// The example farm module, as shipped.
pub(crate) const FARM_EXAMPLE: &str = include_str!("../../../examples/apache-farm/apache-farm.ron");
/// The farm module's scripts (name, text), installed executable in its
/// scripts dir.
pub(crate) const FARM_SCRIPTS: [(&str, &str); 2] = [
    (
        "start_both",
        include_str!("../../../examples/apache-farm/start_both"),
    ),
    (
        "stop_both",
        include_str!("../../../examples/apache-farm/stop_both"),
    ),
];
/// The farm example's VIP (the whole string literal).
const FARM_EXAMPLE_VIP: &str = "\"10.78.0.100\"";
/// The farm example's scripts directory (the whole `scripts.dir` value).
const FARM_EXAMPLE_SCRIPTS_DIR: &str = "\"/etc/mirrorfarm/modules/apache-farm\"";

/// Where the example keeps certificates (a prefix of each `cert` path).
const EXAMPLE_CERTS: &str = "\"/etc/mirrorfarm/certs/";
/// The example's scripts directory (the whole `scripts.dir` value).
const EXAMPLE_SCRIPTS_DIR: &str = "\"/etc/mirrorfarm/modules/apache\"";

/// One replicated directory of the module, as in its file (before a node's
/// `path_prefix`).
#[derive(Clone, Debug, PartialEq, Eq, Deserialize)]
pub(crate) struct DirSpec {
    pub(crate) backing: PathBuf,
    pub(crate) mount: PathBuf,
}

/// The part of a module file the lab reads; the rest is the daemon's.
#[derive(Debug, Deserialize)]
struct ModuleDirs {
    dirs: Vec<DirSpec>,
}

/// The lab's `apache.ron`: the example with exactly two substitutions, the
/// certificates directory (`/etc/mirrorfarm/certs/` → `<lab>/certs/`) and the
/// scripts directory (`/etc/mirrorfarm/modules/apache` →
/// `<lab>/etc/modules/apache`). Comments are left as they are.
pub(crate) fn module_file(lab: &Lab) -> String {
    let certs = format!("\"{}/", lab.certs_dir().display());
    let scripts = format!("\"{}\"", lab.scripts_dir().display());
    MODULE_EXAMPLE
        .replace(EXAMPLE_CERTS, &certs)
        .replace(EXAMPLE_SCRIPTS_DIR, &scripts)
}

/// The lab's `apache-farm.ron`: the farm example with its string literals
/// substituted, as the mirror's file is made: each example node `nodeI`
/// (name, `/etc/mirrorfarm/certs/nodeI.crt`, address `10.78.0.I`) becomes
/// the lab's `farmI` (its name, `<lab>/certs/farmI.crt`, its address), the
/// VIP `10.78.0.100` the lab's [`FARM_VIP`] (same prefix, interface `eth0`
/// as in the lab), and the scripts dir `<lab>/etc/farm-modules/apache-farm`.
/// Everything else (ports, rule, weights, timing, checkers, comments) is the
/// example's.
pub(crate) fn farm_module_file(lab: &Lab) -> String {
    let q = |s: &str| format!("\"{s}\"");
    let mut text = FARM_EXAMPLE.to_owned();
    for (i, host) in Host::FARM.iter().enumerate() {
        let n = i + 1;
        let cert = lab.cert(*host).display().to_string();
        for (from, to) in [
            (q(&format!("node{n}")), q(host.name())),
            (q(&format!("/etc/mirrorfarm/certs/node{n}.crt")), q(&cert)),
            (q(&format!("10.78.0.{n}")), q(&host.addr().to_string())),
        ] {
            text = text.replace(&from, &to);
        }
    }
    let scripts = q(&lab.farm_scripts_dir().display().to_string());
    text.replace(FARM_EXAMPLE_VIP, &q(&FARM_VIP.to_string()))
        .replace(FARM_EXAMPLE_SCRIPTS_DIR, &scripts)
}

/// The node file of `host` (a mirror or farm node): the schema of `examples/apache-mirror/
/// node.ron` with everything inside the lab, `path_prefix` set to the node's
/// directory (the nodes share one file system) and the mirrorfs binary given.
pub(crate) fn node_file(lab: &Lab, host: Host, mirrorfs: &Path) -> String {
    // RON's own quoting, so that any path is a valid string literal.
    let q = |p: &Path| {
        ron::to_string(&p.display().to_string()).expect("a string always serializes to RON")
    };
    format!(
        "// Node {host} of lab {name}, written by `mirrorfarm lab up --name {name}`\n\
         // (schema: examples/apache-mirror/node.ron). Its daemon runs in network\n\
         // namespace {netns}; the metrics port is per namespace.\n\
         (\n    \
             name: \"{host}\",\n    \
             key: {key},\n    \
             cert: {cert},\n    \
             modules: {modules},\n    \
             socket: {socket},\n    \
             state_dir: {state},\n    \
             mirrorfs: Some({mirrorfs}),\n    \
             metrics: Some(\"127.0.0.1:9480\"),\n    \
             path_prefix: Some({prefix}),\n\
         )\n",
        name = lab.name(),
        netns = lab.netns(host),
        key = q(&lab.key(host)),
        cert = q(&lab.cert(host)),
        modules = q(&lab.modules_dir_of(host)),
        socket = q(&lab.socket(host)),
        state = q(&lab.state_dir(host)),
        mirrorfs = q(mirrorfs),
        prefix = q(&lab.host_dir(host)),
    )
}

/// The replicated directories of a module file's text.
pub(crate) fn module_dirs(module: &str) -> Result<Vec<DirSpec>, ron::error::SpannedError> {
    ron::from_str::<ModuleDirs>(module).map(|m| m.dirs)
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeSet;
    use std::net::{Ipv4Addr, SocketAddr};

    use pretty_assertions::assert_eq;

    use super::*;
    use crate::lab::layout::{MODULE, PREFIX_LEN, VIP, WITNESS_PORT};

    fn lab() -> Lab {
        Lab::new("mf".parse().unwrap(), Path::new("/var/lib/mirrorfarm-lab"))
    }

    #[test]
    fn the_module_file_is_the_example_with_two_substitutions() {
        let got = module_file(&lab());
        let want = MODULE_EXAMPLE
            .replace(
                "\"/etc/mirrorfarm/certs/",
                "\"/var/lib/mirrorfarm-lab/mf/certs/",
            )
            .replace(
                "dir: \"/etc/mirrorfarm/modules/apache\"",
                "dir: \"/var/lib/mirrorfarm-lab/mf/etc/modules/apache\"",
            );
        assert_eq!(got, want);
        // Both patterns are there: three certificates, one scripts dir.
        assert_eq!(
            got.matches("\"/var/lib/mirrorfarm-lab/mf/certs/").count(),
            3
        );
        assert_eq!(
            got.matches("\"/var/lib/mirrorfarm-lab/mf/etc/modules/apache\"")
                .count(),
            1
        );
        // No path of the example is left outside comments.
        for line in got.lines().filter(|l| !l.trim_start().starts_with("//")) {
            assert!(!line.contains("/etc/mirrorfarm"), "left over: {line}");
        }
    }

    #[test]
    fn the_node_file_puts_everything_in_the_lab() {
        let got = node_file(&lab(), Host::Node2, Path::new("/opt/mf/mirrorfs"));
        let want = r#"// Node node2 of lab mf, written by `mirrorfarm lab up --name mf`
// (schema: examples/apache-mirror/node.ron). Its daemon runs in network
// namespace mf-node2; the metrics port is per namespace.
(
    name: "node2",
    key: "/var/lib/mirrorfarm-lab/mf/certs/node2.key",
    cert: "/var/lib/mirrorfarm-lab/mf/certs/node2.crt",
    modules: "/var/lib/mirrorfarm-lab/mf/etc/modules",
    socket: "/var/lib/mirrorfarm-lab/mf/node2/run/mirrorfarm.sock",
    state_dir: "/var/lib/mirrorfarm-lab/mf/node2/state",
    mirrorfs: Some("/opt/mf/mirrorfs"),
    metrics: Some("127.0.0.1:9480"),
    path_prefix: Some("/var/lib/mirrorfarm-lab/mf/node2"),
)
"#;
        assert_eq!(got, want);
    }

    /// The node file's fields as the config module takes them (names and
    /// shapes from its contract): the rendered file must be valid RON of
    /// that shape, and carry every field the example shows.
    #[derive(Debug, Deserialize)]
    #[serde(deny_unknown_fields)]
    #[allow(dead_code)] // read through Debug only: the test is that it parses
    struct NodeShape {
        name: String,
        key: PathBuf,
        cert: PathBuf,
        #[serde(default)]
        modules: PathBuf,
        #[serde(default)]
        socket: PathBuf,
        #[serde(default)]
        state_dir: PathBuf,
        #[serde(default)]
        mirrorfs: Option<PathBuf>,
        #[serde(default)]
        metrics: Option<SocketAddr>,
        #[serde(default)]
        path_prefix: Option<PathBuf>,
    }

    /// The field names of a top-level RON struct in `text` (lines `NAME: `
    /// at one indentation level, comments skipped).
    fn field_names(text: &str) -> BTreeSet<String> {
        text.lines()
            .filter(|l| l.starts_with("    ") && !l.starts_with("     "))
            .filter(|l| !l.trim_start().starts_with("//"))
            .filter_map(|l| l.trim().split_once(':').map(|(f, _)| f.to_owned()))
            .collect()
    }

    #[test]
    fn the_node_file_parses_and_has_the_examples_fields() {
        let text = node_file(&lab(), Host::Node1, Path::new("/opt/mf/mirrorfs"));
        let node: NodeShape = ron::from_str(&text).unwrap();
        assert_eq!(
            node.path_prefix,
            Some(PathBuf::from("/var/lib/mirrorfarm-lab/mf/node1"))
        );
        let example = include_str!("../../../examples/apache-mirror/node.ron");
        let _: NodeShape = ron::from_str(example).unwrap();
        let (ours, theirs) = (field_names(&text), field_names(example));
        assert!(
            theirs.is_subset(&ours),
            "the example node.ron has fields the lab does not write: {:?}",
            theirs.difference(&ours).collect::<Vec<_>>()
        );
    }

    #[test]
    fn the_module_dirs_are_read_from_the_module_file() {
        let dirs = module_dirs(&module_file(&lab())).unwrap();
        let d = |b: &str, m: &str| DirSpec {
            backing: b.into(),
            mount: m.into(),
        };
        assert_eq!(
            dirs,
            [
                d("/var/lib/apache-mirror/htdocs", "/srv/apache-mirror/htdocs"),
                d(
                    "/var/lib/apache-mirror/uploads",
                    "/srv/apache-mirror/uploads"
                ),
            ]
        );
    }

    /// The lab's network is built from constants; they must be the example's.
    #[derive(Debug, Deserialize)]
    struct NetShape {
        nodes: Vec<NodeSpec>,
        vip: Option<VipSpec>,
        witness: Option<WitnessSpec>,
    }
    #[derive(Debug, Deserialize)]
    struct NodeSpec {
        name: String,
        addrs: Vec<Ipv4Addr>,
    }
    #[derive(Debug, Deserialize)]
    struct VipSpec {
        addr: Ipv4Addr,
        prefix: u8,
        interface: String,
    }
    #[derive(Debug, Deserialize)]
    struct WitnessSpec {
        addr: SocketAddr,
    }

    #[test]
    fn the_labs_addresses_are_the_examples() {
        let net: NetShape = ron::from_str(MODULE_EXAMPLE).unwrap();
        let nodes: Vec<(String, Vec<Ipv4Addr>)> =
            net.nodes.into_iter().map(|n| (n.name, n.addrs)).collect();
        let want: Vec<(String, Vec<Ipv4Addr>)> = Host::NODES
            .iter()
            .map(|&h| (h.name().to_owned(), vec![h.addr()]))
            .collect();
        assert_eq!(nodes, want);
        let vip = net.vip.unwrap();
        assert_eq!(
            (vip.addr, vip.prefix, vip.interface.as_str()),
            (VIP, PREFIX_LEN, "eth0")
        );
        assert_eq!(
            net.witness.unwrap().addr,
            SocketAddr::from((Host::Witness.addr(), WITNESS_PORT))
        );
        assert!(MODULE_EXAMPLE.contains(&format!("dir: \"/etc/mirrorfarm/modules/{MODULE}\"")));
        for (name, _) in SCRIPTS {
            assert!(
                MODULE_EXAMPLE.contains(&format!("Some(\"{name}\")")),
                "{name}"
            );
        }
    }
}
