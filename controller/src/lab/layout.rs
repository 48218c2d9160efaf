//! Names and places of a lab: its name, its hosts, their namespaces,
//! interfaces and addresses, and every path under its state directory. Pure:
//! nothing here touches the system.

use std::fmt;
use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};
use std::str::FromStr;

use super::LabError;

/// Where labs keep their state: `<ROOT>/<name>/`.
pub(crate) const DEFAULT_ROOT: &str = "/var/lib/mirrorfarm-lab";
/// The virtual IP of the Apache mirror module (`vip` in `apache.ron`).
pub(crate) const VIP: Ipv4Addr = Ipv4Addr::new(10, 77, 0, 100);
/// The prefix length of the lab's segment.
pub(crate) const PREFIX_LEN: u8 = 24;
/// The witness's UDP port (`witness.addr` in `apache.ron`).
pub(crate) const WITNESS_PORT: u16 = 7430;
/// The one module of the lab (its file stem).
pub(crate) const MODULE: &str = "apache";
/// The bridge in the switch namespace.
pub(crate) const BRIDGE: &str = "br0";

/// A lab's name, `[a-z0-9]{1,10}`: short enough that every interface name
/// made from it fits Linux's 15 characters, and safe in paths and commands.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LabName(String);

impl LabName {
    /// The longest name: `NAME-n1` and the like must fit in 15 characters.
    pub const MAX_LEN: usize = 10;

    /// The name as given.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl FromStr for LabName {
    type Err = LabError;

    fn from_str(s: &str) -> Result<Self, LabError> {
        let ok = (1..=Self::MAX_LEN).contains(&s.len())
            && s.bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit());
        if ok {
            Ok(Self(s.to_owned()))
        } else {
            Err(LabError::BadName(s.to_owned()))
        }
    }
}

impl fmt::Display for LabName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// A host of the lab: a network namespace with one `eth0` on the lab's bridge.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, clap::ValueEnum)]
pub enum Host {
    /// The first node of the mirror.
    Node1,
    /// The second node of the mirror.
    Node2,
    /// The third machine that gives the quorum's lease.
    Witness,
    /// Where the operator (or a test) plays the client of the VIP.
    #[value(skip)]
    Client,
}

impl Host {
    /// Every host, in the order they are built.
    pub(crate) const ALL: [Self; 4] = [Self::Node1, Self::Node2, Self::Witness, Self::Client];
    /// The two mirror nodes.
    pub(crate) const NODES: [Self; 2] = [Self::Node1, Self::Node2];

    /// The host's name, as in the configuration (`node1`) and in namespaces.
    pub fn name(self) -> &'static str {
        match self {
            Self::Node1 => "node1",
            Self::Node2 => "node2",
            Self::Witness => "witness",
            Self::Client => "client",
        }
    }

    /// Its address on the lab's segment (a /24).
    pub fn addr(self) -> Ipv4Addr {
        let last = match self {
            Self::Node1 => 1,
            Self::Node2 => 2,
            Self::Witness => 3,
            Self::Client => 10,
        };
        Ipv4Addr::new(10, 77, 0, last)
    }

    /// The short tag of its bridge port (`NAME-<tag>`).
    fn tag(self) -> &'static str {
        match self {
            Self::Node1 => "n1",
            Self::Node2 => "n2",
            Self::Witness => "w",
            Self::Client => "c",
        }
    }
}

impl fmt::Display for Host {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// One lab: its name and state directory, and every name and path derived
/// from them.
#[derive(Clone, Debug)]
pub(crate) struct Lab {
    name: LabName,
    dir: PathBuf,
}

impl Lab {
    /// Lab `name` with its state in `<root>/<name>`.
    pub(crate) fn new(name: LabName, root: &Path) -> Self {
        let dir = root.join(name.as_str());
        Self { name, dir }
    }

    pub(crate) fn name(&self) -> &LabName {
        &self.name
    }

    /// The state directory: certs, configuration, node roots, logs, pid files.
    pub(crate) fn dir(&self) -> &Path {
        &self.dir
    }

    /// The network namespace of `host`: `NAME-node1`.
    pub(crate) fn netns(&self, host: Host) -> String {
        format!("{}-{}", self.name, host.name())
    }

    /// The switch namespace, which holds the bridge: `NAME-sw`.
    pub(crate) fn switch_netns(&self) -> String {
        format!("{}-sw", self.name)
    }

    /// Every namespace of the lab: the hosts', then the switch's.
    pub(crate) fn namespaces(&self) -> Vec<String> {
        let mut all: Vec<String> = Host::ALL.iter().map(|&h| self.netns(h)).collect();
        all.push(self.switch_netns());
        all
    }

    /// The bridge-side end of `host`'s veth (`NAME-n1`; the host's end is
    /// `eth0`). At most 10 + 3 characters, within IFNAMSIZ.
    pub(crate) fn port(&self, host: Host) -> String {
        format!("{}-{}", self.name, host.tag())
    }

    pub(crate) fn certs_dir(&self) -> PathBuf {
        self.dir.join("certs")
    }

    /// `certs/<host>.key`.
    pub(crate) fn key(&self, host: Host) -> PathBuf {
        self.certs_dir().join(format!("{host}.key"))
    }

    /// `certs/<host>.crt`.
    pub(crate) fn cert(&self, host: Host) -> PathBuf {
        self.certs_dir().join(format!("{host}.crt"))
    }

    pub(crate) fn etc_dir(&self) -> PathBuf {
        self.dir.join("etc")
    }

    /// The node file a daemon is started with: `etc/node1.ron`.
    pub(crate) fn node_file(&self, host: Host) -> PathBuf {
        self.etc_dir().join(format!("{host}.ron"))
    }

    /// `etc/modules`: the nodes' `modules` directory.
    pub(crate) fn modules_dir(&self) -> PathBuf {
        self.etc_dir().join("modules")
    }

    /// `etc/modules/apache.ron`.
    pub(crate) fn module_file(&self) -> PathBuf {
        self.modules_dir().join(format!("{MODULE}.ron"))
    }

    /// `etc/modules/apache`: the module's scripts.
    pub(crate) fn scripts_dir(&self) -> PathBuf {
        self.modules_dir().join(MODULE)
    }

    /// `<host>/`: a node's `path_prefix` (every module dir lives under it),
    /// the witness's state.
    pub(crate) fn host_dir(&self, host: Host) -> PathBuf {
        self.dir.join(host.name())
    }

    /// A node's `state_dir`.
    pub(crate) fn state_dir(&self, host: Host) -> PathBuf {
        self.host_dir(host).join("state")
    }

    /// A node daemon's control socket.
    pub(crate) fn socket(&self, host: Host) -> PathBuf {
        self.host_dir(host).join("run").join("mirrorfarm.sock")
    }

    /// The witness's `--state` file.
    pub(crate) fn witness_state(&self) -> PathBuf {
        self.host_dir(Host::Witness).join("state")
    }

    pub(crate) fn logs_dir(&self) -> PathBuf {
        self.dir.join("logs")
    }

    /// The stderr/stdout of `host`'s daemon (or witness): `logs/node1.log`.
    pub(crate) fn log(&self, host: Host) -> PathBuf {
        self.logs_dir().join(format!("{host}.log"))
    }

    /// `<host>.pid`: the pid of `host`'s daemon (or witness).
    pub(crate) fn pid_file(&self, host: Host) -> PathBuf {
        self.dir.join(format!("{host}.pid"))
    }

    /// `path` (absolute, as in `apache.ron`) as seen on `host`: under its
    /// `path_prefix`.
    pub(crate) fn on_node(&self, host: Host, path: &Path) -> PathBuf {
        let relative = path.strip_prefix("/").unwrap_or(path);
        self.host_dir(host).join(relative)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_lowercase_alphanumerics_up_to_ten() {
        for good in ["mf", "a", "0", "mfl4194304", "abcdefghij"] {
            assert_eq!(good.parse::<LabName>().unwrap().as_str(), good);
        }
        for bad in [
            "",
            "abcdefghijk",
            "Mf",
            "m-f",
            "m_f",
            "m f",
            "mf/",
            "../x",
            "é",
            "mf\n",
        ] {
            let err = bad.parse::<LabName>().unwrap_err();
            assert!(
                matches!(&err, LabError::BadName(n) if n == bad),
                "{bad:?}: {err}"
            );
            assert!(err.to_string().contains("--name mf"), "{err}");
        }
    }

    #[test]
    fn interface_names_fit_ifnamsiz_and_differ() {
        let lab = Lab::new("abcdefghij".parse().unwrap(), Path::new("/r"));
        let ports: Vec<String> = Host::ALL.iter().map(|&h| lab.port(h)).collect();
        assert_eq!(
            ports,
            [
                "abcdefghij-n1",
                "abcdefghij-n2",
                "abcdefghij-w",
                "abcdefghij-c"
            ]
        );
        for p in &ports {
            // Linux: IFNAMSIZ is 16 with the NUL.
            assert!(p.len() <= 15, "{p} is longer than 15 characters");
        }
        let mut sorted = ports.clone();
        sorted.sort();
        sorted.dedup();
        assert_eq!(sorted.len(), ports.len());
    }

    #[test]
    fn namespaces_and_paths_follow_the_layout() {
        let lab = Lab::new("mf".parse().unwrap(), Path::new("/var/lib/mirrorfarm-lab"));
        assert_eq!(
            lab.namespaces(),
            ["mf-node1", "mf-node2", "mf-witness", "mf-client", "mf-sw"]
        );
        let htdocs = Path::new("/srv/apache-mirror/htdocs");
        let table = [
            (lab.node_file(Host::Node2), "etc/node2.ron"),
            (lab.module_file(), "etc/modules/apache.ron"),
            (lab.scripts_dir(), "etc/modules/apache"),
            (lab.socket(Host::Node1), "node1/run/mirrorfarm.sock"),
            (lab.state_dir(Host::Node1), "node1/state"),
            (lab.key(Host::Witness), "certs/witness.key"),
            (lab.pid_file(Host::Node2), "node2.pid"),
            (lab.log(Host::Witness), "logs/witness.log"),
            (
                lab.on_node(Host::Node2, htdocs),
                "node2/srv/apache-mirror/htdocs",
            ),
        ];
        for (got, want) in table {
            assert_eq!(got, Path::new("/var/lib/mirrorfarm-lab/mf").join(want));
        }
    }

    #[test]
    fn the_longest_socket_path_fits_sun_path() {
        let lab = Lab::new("abcdefghij".parse().unwrap(), Path::new(DEFAULT_ROOT));
        let len = lab.socket(Host::Node1).as_os_str().len();
        assert!(len < 108, "socket path of {len} bytes");
    }
}
