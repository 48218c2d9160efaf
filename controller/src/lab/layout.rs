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
/// The virtual IP of the Apache farm module (every farm node holds it).
pub(crate) const FARM_VIP: Ipv4Addr = Ipv4Addr::new(10, 77, 0, 200);
/// The farm module of the lab (its file stem).
pub(crate) const FARM_MODULE: &str = "apache-farm";

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
    /// The first node of the farm.
    Farm1,
    /// The second node of the farm.
    Farm2,
    /// The third node of the farm.
    Farm3,
}

impl Host {
    /// Every host, in the order they are built.
    pub(crate) const ALL: [Self; 7] = [
        Self::Node1,
        Self::Node2,
        Self::Witness,
        Self::Client,
        Self::Farm1,
        Self::Farm2,
        Self::Farm3,
    ];
    /// The hosts of the mirror part (every lab has them), in build order.
    pub(crate) const MIRROR_PART: [Self; 4] =
        [Self::Node1, Self::Node2, Self::Witness, Self::Client];
    /// The two mirror nodes.
    pub(crate) const NODES: [Self; 2] = [Self::Node1, Self::Node2];
    /// The farm's nodes (absent from a lab built with `--no-farm`).
    pub(crate) const FARM: [Self; 3] = [Self::Farm1, Self::Farm2, Self::Farm3];

    /// Whether the host is a node of the farm.
    pub(crate) fn is_farm(self) -> bool {
        Self::FARM.contains(&self)
    }

    /// Whether the host runs a `mirrorfarm daemon` (a mirror or farm node).
    pub(crate) fn runs_daemon(self) -> bool {
        matches!(self, Self::Node1 | Self::Node2) || self.is_farm()
    }

    /// The host's name, as in the configuration (`node1`) and in namespaces.
    pub fn name(self) -> &'static str {
        match self {
            Self::Node1 => "node1",
            Self::Node2 => "node2",
            Self::Witness => "witness",
            Self::Client => "client",
            Self::Farm1 => "farm1",
            Self::Farm2 => "farm2",
            Self::Farm3 => "farm3",
        }
    }

    /// Its address on the lab's segment (a /24).
    pub fn addr(self) -> Ipv4Addr {
        let last = match self {
            Self::Node1 => 1,
            Self::Node2 => 2,
            Self::Witness => 3,
            Self::Client => 10,
            Self::Farm1 => 21,
            Self::Farm2 => 22,
            Self::Farm3 => 23,
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
            Self::Farm1 => "f1",
            Self::Farm2 => "f2",
            Self::Farm3 => "f3",
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

    /// Every namespace a lab may have (the farm's too, whether it was built
    /// or not): the hosts', then the switch's.
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

    /// `etc/modules`: the mirror nodes' `modules` directory.
    pub(crate) fn modules_dir(&self) -> PathBuf {
        self.etc_dir().join("modules")
    }

    /// `etc/farm-modules`: the farm nodes' `modules` directory (apart from
    /// the mirror's: a daemon loads every module file of its directory and
    /// must be a node of each).
    pub(crate) fn farm_modules_dir(&self) -> PathBuf {
        self.etc_dir().join("farm-modules")
    }

    /// The `modules` directory of `host`'s node file.
    pub(crate) fn modules_dir_of(&self, host: Host) -> PathBuf {
        if host.is_farm() {
            self.farm_modules_dir()
        } else {
            self.modules_dir()
        }
    }

    /// `etc/farm-modules/apache-farm.ron`.
    pub(crate) fn farm_module_file(&self) -> PathBuf {
        self.farm_modules_dir().join(format!("{FARM_MODULE}.ron"))
    }

    /// `etc/farm-modules/apache-farm`: the farm module's scripts.
    pub(crate) fn farm_scripts_dir(&self) -> PathBuf {
        self.farm_modules_dir().join(FARM_MODULE)
    }

    /// Whether the lab has (or had begun to build) its farm part: the farm's
    /// module file or one of its namespaces exists.
    pub(crate) fn has_farm(&self) -> bool {
        self.farm_module_file().exists()
            || Host::FARM
                .iter()
                .any(|&h| super::sys::netns_exists(&self.netns(h)))
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

    /// The pid file of the Apache that `host`'s module runs: the daemon's
    /// run dir of the module (`<state_dir>/modules/<module>/run`, its
    /// `MIRRORFARM_RUN_DIR`), where start_prim and start_both write it.
    pub(crate) fn app_pid_file(&self, host: Host) -> PathBuf {
        let module = if host.is_farm() { FARM_MODULE } else { MODULE };
        self.state_dir(host)
            .join("modules")
            .join(module)
            .join("run")
            .join("apache2.pid")
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
                "abcdefghij-c",
                "abcdefghij-f1",
                "abcdefghij-f2",
                "abcdefghij-f3",
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
            [
                "mf-node1",
                "mf-node2",
                "mf-witness",
                "mf-client",
                "mf-farm1",
                "mf-farm2",
                "mf-farm3",
                "mf-sw"
            ]
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
            (lab.node_file(Host::Farm3), "etc/farm3.ron"),
            (lab.farm_module_file(), "etc/farm-modules/apache-farm.ron"),
            (lab.farm_scripts_dir(), "etc/farm-modules/apache-farm"),
            (lab.modules_dir_of(Host::Farm1), "etc/farm-modules"),
            (lab.modules_dir_of(Host::Node1), "etc/modules"),
            (lab.socket(Host::Farm2), "farm2/run/mirrorfarm.sock"),
            (lab.key(Host::Farm1), "certs/farm1.key"),
            (lab.pid_file(Host::Farm1), "farm1.pid"),
            (
                lab.app_pid_file(Host::Farm2),
                "farm2/state/modules/apache-farm/run/apache2.pid",
            ),
            (
                lab.app_pid_file(Host::Node1),
                "node1/state/modules/apache/run/apache2.pid",
            ),
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
    fn addresses_are_distinct_on_the_segment_and_miss_the_vips() {
        let mut addrs: Vec<Ipv4Addr> = Host::ALL.iter().map(|h| h.addr()).collect();
        addrs.extend([VIP, FARM_VIP]);
        for a in &addrs {
            assert_eq!(a.octets()[..3], [10, 77, 0], "{a} is off the lab's /24");
        }
        let n = addrs.len();
        addrs.sort();
        addrs.dedup();
        assert_eq!(
            addrs.len(),
            n,
            "two hosts (or a host and a VIP) share an address"
        );
        assert!(Host::FARM.iter().all(|h| h.is_farm() && h.runs_daemon()));
        assert!(!Host::Witness.runs_daemon() && !Host::Client.runs_daemon());
    }

    #[test]
    fn the_longest_socket_path_fits_sun_path() {
        let lab = Lab::new("abcdefghij".parse().unwrap(), Path::new(DEFAULT_ROOT));
        let len = lab.socket(Host::Node1).as_os_str().len();
        assert!(len < 108, "socket path of {len} bytes");
    }
}
