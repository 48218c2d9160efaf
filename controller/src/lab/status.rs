//! `mirrorfarm lab status`: what the lab is made of and the module's state on
//! each node, as JSON (for tests and scripts) or as a table.
//!
//! A node's state comes from its daemon, asked with the CLI itself
//! (`mirrorfarm --socket SOCK state --json`), bounded in time: a daemon that
//! does not answer shows as `UNREACHABLE`. The farm part (`farm`, absent
//! from a lab built with `--no-farm`) is read the same way from each farm
//! node's daemon, with the node's `share` (its bucket count) where the
//! daemon's answer has one.

use std::collections::BTreeMap;
use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::thread;
use std::time::Duration;

use serde::Serialize;

use super::layout::{Host, Lab, FARM_MODULE, FARM_VIP, MODULE, VIP, WITNESS_PORT};
use super::render::{self, DirSpec};
use super::sys;

/// The state shown for a node whose daemon does not answer.
pub(crate) const UNREACHABLE: &str = "UNREACHABLE";
/// The state shown for a daemon that answers without the lab's module.
pub(crate) const UNKNOWN: &str = "UNKNOWN";
/// How long a daemon gets to answer.
const QUERY_BOUND: Duration = Duration::from_secs(3);

/// A lab as `status --json` prints it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub(crate) struct Status {
    /// The lab's name.
    pub(crate) name: String,
    /// Its state directory.
    pub(crate) dir: PathBuf,
    /// The module the lab runs.
    pub(crate) module: String,
    /// The module's virtual IP.
    pub(crate) vip: String,
    /// `node1`, `node2`.
    pub(crate) nodes: BTreeMap<String, NodeStatus>,
    pub(crate) witness: WitnessStatus,
    pub(crate) client: ClientStatus,
    /// The farm part; absent when the lab has none (`lab up --no-farm`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(crate) farm: Option<FarmStatus>,
}

/// The Apache farm of the lab.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub(crate) struct FarmStatus {
    /// The farm module's name.
    pub(crate) module: String,
    /// The VIP every farm node holds.
    pub(crate) vip: String,
    /// `farm1`, `farm2`, `farm3`.
    pub(crate) nodes: BTreeMap<String, FarmNodeStatus>,
}

/// One node of the farm.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub(crate) struct FarmNodeStatus {
    /// Its network namespace.
    pub(crate) netns: String,
    /// Its address on the lab's segment.
    pub(crate) addr: String,
    /// The farm module's state from its daemon (STOP, WAIT, UP),
    /// [`UNREACHABLE`] or [`UNKNOWN`].
    pub(crate) state: String,
    /// Its share of the farm (buckets it owns), as its daemon says; `null`
    /// when the daemon's answer has none (or there is no answer).
    pub(crate) share: Option<u64>,
    /// Its daemon's control socket.
    pub(crate) socket: PathBuf,
    /// Its daemon's pid, if that runs.
    pub(crate) pid: Option<i32>,
}

/// One node of the mirror.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub(crate) struct NodeStatus {
    /// Its network namespace.
    pub(crate) netns: String,
    /// Its address on the lab's segment.
    pub(crate) addr: String,
    /// Its mount of the module's first dir (the DocumentRoot).
    pub(crate) mount: PathBuf,
    /// The module's state from its daemon (STOP, WAIT, ALONE, PRIM, SECOND),
    /// [`UNREACHABLE`] or [`UNKNOWN`].
    pub(crate) state: String,
    /// Its daemon's control socket.
    pub(crate) socket: PathBuf,
    /// Its daemon's pid, if that runs.
    pub(crate) pid: Option<i32>,
}

/// The witness.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub(crate) struct WitnessStatus {
    pub(crate) netns: String,
    /// Where it listens (UDP).
    pub(crate) addr: String,
    /// Its pid, if it runs.
    pub(crate) pid: Option<i32>,
}

/// The client namespace.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub(crate) struct ClientStatus {
    pub(crate) netns: String,
    pub(crate) addr: String,
}

/// Gathers the status of `lab`, asking each node's daemon through `exe`.
pub(crate) fn collect(lab: &Lab, exe: &Path) -> Status {
    let dirs = lab_dirs(lab);
    let first_mount = dirs.first().map(|d| d.mount.clone()).unwrap_or_default();
    let farm_hosts: &[Host] = if lab.has_farm() { &Host::FARM } else { &[] };
    // Every daemon at once: an unreachable one costs the bound once in all.
    let mut answers: Vec<Answer> = thread::scope(|s| {
        let asks: Vec<_> = Host::NODES
            .iter()
            .chain(farm_hosts)
            .map(|&h| {
                let module = if h.is_farm() { FARM_MODULE } else { MODULE };
                s.spawn(move || daemon_state(exe, &lab.socket(h), module))
            })
            .collect();
        asks.into_iter()
            .map(|a| a.join().unwrap_or_else(|_| Answer::unreachable()))
            .collect()
    });
    let farm_answers = answers.split_off(Host::NODES.len());
    let farm = (!farm_hosts.is_empty()).then(|| FarmStatus {
        module: FARM_MODULE.to_owned(),
        vip: FARM_VIP.to_string(),
        nodes: farm_hosts
            .iter()
            .zip(farm_answers)
            .map(|(&h, a)| {
                let node = FarmNodeStatus {
                    netns: lab.netns(h),
                    addr: h.addr().to_string(),
                    state: a.state,
                    share: a.share,
                    socket: lab.socket(h),
                    pid: sys::live_pid(&lab.pid_file(h), &lab.netns(h)),
                };
                (h.name().to_owned(), node)
            })
            .collect(),
    });
    let nodes = Host::NODES
        .iter()
        .zip(answers)
        .map(|(&h, Answer { state, .. })| {
            let node = NodeStatus {
                netns: lab.netns(h),
                addr: h.addr().to_string(),
                mount: lab.on_node(h, &first_mount),
                state,
                socket: lab.socket(h),
                pid: sys::live_pid(&lab.pid_file(h), &lab.netns(h)),
            };
            (h.name().to_owned(), node)
        })
        .collect();
    Status {
        name: lab.name().to_string(),
        dir: lab.dir().to_owned(),
        module: MODULE.to_owned(),
        vip: VIP.to_string(),
        nodes,
        witness: WitnessStatus {
            netns: lab.netns(Host::Witness),
            addr: format!("{}:{WITNESS_PORT}", Host::Witness.addr()),
            pid: sys::live_pid(&lab.pid_file(Host::Witness), &lab.netns(Host::Witness)),
        },
        client: ClientStatus {
            netns: lab.netns(Host::Client),
            addr: Host::Client.addr().to_string(),
        },
        farm,
    }
}

/// What a daemon said of one module.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct Answer {
    /// The module's state, [`UNREACHABLE`] or [`UNKNOWN`].
    pub(crate) state: String,
    /// The node's share (farm modules), if the answer has one.
    pub(crate) share: Option<u64>,
}

impl Answer {
    fn unreachable() -> Self {
        Self {
            state: UNREACHABLE.to_owned(),
            share: None,
        }
    }
}

/// The mirror module's state on the node whose daemon listens on `socket`.
pub(crate) fn node_state(exe: &Path, socket: &Path) -> String {
    daemon_state(exe, socket, MODULE).state
}

/// `module`'s state (and share) on the node whose daemon listens on `socket`.
pub(crate) fn daemon_state(exe: &Path, socket: &Path, module: &str) -> Answer {
    let mut cmd = Command::new(exe);
    cmd.arg("--socket").arg(socket).args(["state", "--json"]);
    match sys::output_within(cmd, QUERY_BOUND) {
        Some(out) if out.status.success() => Answer {
            state: module_state(&out.stdout, module).unwrap_or_else(|| UNKNOWN.to_owned()),
            share: module_share(&out.stdout, module),
        },
        _ => Answer::unreachable(),
    }
}

/// The entry of `module` in the output of `mirrorfarm state --json`
/// (`{"version":1,"node":..,"modules":[{"module":..,"state":..},..]}`).
fn module_entry(json: &[u8], module: &str) -> Option<serde_json::Value> {
    let v: serde_json::Value = serde_json::from_slice(json).ok()?;
    v.get("modules")?
        .as_array()?
        .iter()
        .find(|m| m.get("module").and_then(|n| n.as_str()) == Some(module))
        .cloned()
}

/// The state of `module` in the output of `mirrorfarm state --json`.
pub(crate) fn module_state(json: &[u8], module: &str) -> Option<String> {
    module_entry(json, module)?
        .get("state")?
        .as_str()
        .map(str::to_owned)
}

/// The share of `module` in the output of `mirrorfarm state --json`: its
/// `farm.share`, the buckets this node's kernel accepts (`null` or absent:
/// `None`).
pub(crate) fn module_share(json: &[u8], module: &str) -> Option<u64> {
    module_entry(json, module)?
        .get("farm")?
        .get("share")?
        .as_u64()
}

/// The module's dirs from the lab's module file, or from the built-in example
/// where that file is missing (a half-built lab): the lab renders its module
/// file from the example without touching `dirs`.
fn lab_dirs(lab: &Lab) -> Vec<DirSpec> {
    fs::read_to_string(lab.module_file())
        .ok()
        .and_then(|text| render::module_dirs(&text).ok())
        .or_else(|| render::module_dirs(render::MODULE_EXAMPLE).ok())
        .unwrap_or_default()
}

/// The status as a table, for people.
pub(crate) fn render_text(st: &Status) -> String {
    let pid = |p: Option<i32>| p.map_or_else(|| "-".to_owned(), |p| p.to_string());
    let mut rows = vec![[
        "HOST".to_owned(),
        "NETNS".to_owned(),
        "ADDRESS".to_owned(),
        "STATE".to_owned(),
        "PID".to_owned(),
        "MOUNT".to_owned(),
    ]];
    for (name, n) in &st.nodes {
        rows.push([
            name.clone(),
            n.netns.clone(),
            n.addr.clone(),
            n.state.clone(),
            pid(n.pid),
            n.mount.display().to_string(),
        ]);
    }
    rows.push([
        "witness".to_owned(),
        st.witness.netns.clone(),
        st.witness.addr.clone(),
        "-".to_owned(),
        pid(st.witness.pid),
        String::new(),
    ]);
    rows.push([
        "client".to_owned(),
        st.client.netns.clone(),
        st.client.addr.clone(),
        "-".to_owned(),
        "-".to_owned(),
        String::new(),
    ]);
    let mut out = format!(
        "lab {} ({}): module {}, VIP {}\n",
        st.name,
        st.dir.display(),
        st.module,
        st.vip
    );
    table(&mut out, &rows);
    match &st.farm {
        None => out.push_str("no farm (built with --no-farm)\n"),
        Some(farm) => {
            out.push_str(&format!(
                "farm: module {}, VIP {} on every node\n",
                farm.module, farm.vip
            ));
            let mut rows = vec![[
                "HOST".to_owned(),
                "NETNS".to_owned(),
                "ADDRESS".to_owned(),
                "STATE".to_owned(),
                "SHARE".to_owned(),
                "PID".to_owned(),
            ]];
            for (name, n) in &farm.nodes {
                rows.push([
                    name.clone(),
                    n.netns.clone(),
                    n.addr.clone(),
                    n.state.clone(),
                    n.share.map_or_else(|| "-".to_owned(), |s| s.to_string()),
                    pid(n.pid),
                ]);
            }
            table(&mut out, &rows);
            let down: Vec<&str> = farm
                .nodes
                .iter()
                .filter(|(_, n)| n.pid.is_none())
                .map(|(name, _)| name.as_str())
                .collect();
            if !down.is_empty() {
                out.push_str(&format!(
                    "farm daemons not running: {} (see their logs in {}/logs; \
                     `mirrorfarm lab start NODE --name {}` restarts one)\n",
                    down.join(", "),
                    st.dir.display(),
                    st.name
                ));
            }
        }
    }
    out
}

/// Appends `rows` to `out` as columns aligned to their widest cell.
fn table<const N: usize>(out: &mut String, rows: &[[String; N]]) {
    let widths: Vec<usize> = (0..N)
        .map(|c| rows.iter().map(|r| r[c].len()).max().unwrap_or(0))
        .collect();
    for row in rows {
        let line: Vec<String> = row
            .iter()
            .zip(&widths)
            .map(|(cell, w)| format!("{cell:<w$}"))
            .collect();
        out.push_str(line.join("  ").trim_end());
        out.push('\n');
    }
}

#[cfg(test)]
mod tests {
    use pretty_assertions::assert_eq;

    use super::*;

    #[test]
    fn the_modules_state_is_read_from_the_daemons_answer() {
        let answer = br#"{"version":1,"node":"node1","modules":[
            {"module":"other","state":"STOP"},
            {"module":"apache","state":"PRIM","peer":"node2"}]}"#;
        assert_eq!(module_state(answer, "apache").as_deref(), Some("PRIM"));
        assert_eq!(module_state(answer, "other").as_deref(), Some("STOP"));
        assert_eq!(module_state(answer, "nope"), None);
        assert_eq!(module_state(b"daemon not running", "apache"), None);
        assert_eq!(module_state(br#"{"version":1}"#, "apache"), None);
    }

    #[test]
    fn the_share_is_read_where_the_answer_has_one() {
        let answer = br#"{"version":1,"node":"farm1","modules":[
            {"module":"apache","state":"PRIM","farm":null},
            {"module":"apache-farm","state":"UP","farm":{"share":86}}]}"#;
        assert_eq!(module_share(answer, "apache-farm"), Some(86));
        assert_eq!(module_state(answer, "apache-farm").as_deref(), Some("UP"));
        assert_eq!(module_share(answer, "apache"), None);
        let without = br#"{"version":1,"node":"farm1","modules":[
            {"module":"apache-farm","state":"WAIT","farm":{"share":null}}]}"#;
        assert_eq!(module_share(without, "apache-farm"), None);
        let absent = daemon_state(Path::new("false"), Path::new("/x.sock"), "apache-farm");
        assert_eq!(
            absent,
            Answer {
                state: UNREACHABLE.into(),
                share: None
            }
        );
    }

    #[test]
    fn an_absent_daemon_is_unreachable() {
        // `false` exits 1 like a CLI whose daemon does not answer.
        let state = node_state(Path::new("false"), Path::new("/nonexistent.sock"));
        assert_eq!(state, UNREACHABLE);
    }

    /// A lab under a root that does not exist: nothing on this machine
    /// (a real lab `mf`, say) shows through.
    fn example() -> Status {
        let lab = Lab::new("mf".parse().unwrap(), Path::new("/nonexistent"));
        let mut st = collect(&lab, Path::new("false"));
        st.nodes.get_mut("node1").unwrap().state = "PRIM".into();
        st.nodes.get_mut("node1").unwrap().pid = Some(1234);
        st.witness.pid = Some(1200);
        // Whatever this machine has (a real lab `mf`'s farm namespaces).
        st.farm = None;
        st
    }

    /// [`example`] with its farm: farm1 UP with a share, farm2 without one,
    /// farm3's daemon gone.
    fn example_with_farm() -> Status {
        let lab = Lab::new("mf".parse().unwrap(), Path::new("/nonexistent"));
        let mut st = example();
        let node = |h: Host, state: &str, share, pid| {
            let n = FarmNodeStatus {
                netns: lab.netns(h),
                addr: h.addr().to_string(),
                state: state.into(),
                share,
                socket: lab.socket(h),
                pid,
            };
            (h.name().to_owned(), n)
        };
        st.farm = Some(FarmStatus {
            module: FARM_MODULE.into(),
            vip: FARM_VIP.to_string(),
            nodes: [
                node(Host::Farm1, "UP", Some(128), Some(1301)),
                node(Host::Farm2, "WAIT", None, Some(1302)),
                node(Host::Farm3, UNREACHABLE, None, None),
            ]
            .into_iter()
            .collect(),
        });
        st
    }

    #[test]
    fn the_farm_json_has_the_contracts_fields() {
        let v = serde_json::to_value(example_with_farm()).unwrap();
        let want = serde_json::json!({
            "module": "apache-farm",
            "vip": "10.77.0.200",
            "nodes": {
                "farm1": {
                    "netns": "mf-farm1",
                    "addr": "10.77.0.21",
                    "state": "UP",
                    "share": 128,
                    "socket": "/nonexistent/mf/farm1/run/mirrorfarm.sock",
                    "pid": 1301,
                },
                "farm2": {
                    "netns": "mf-farm2",
                    "addr": "10.77.0.22",
                    "state": "WAIT",
                    "share": null,
                    "socket": "/nonexistent/mf/farm2/run/mirrorfarm.sock",
                    "pid": 1302,
                },
                "farm3": {
                    "netns": "mf-farm3",
                    "addr": "10.77.0.23",
                    "state": "UNREACHABLE",
                    "share": null,
                    "socket": "/nonexistent/mf/farm3/run/mirrorfarm.sock",
                    "pid": null,
                },
            },
        });
        assert_eq!(v["farm"], want);
        // The mirror part is as without a farm.
        let mut without = v.clone();
        without.as_object_mut().unwrap().remove("farm");
        assert_eq!(without, serde_json::to_value(example()).unwrap());
    }

    #[test]
    fn a_lab_without_a_farm_has_no_farm_key() {
        let lab = Lab::new("mf".parse().unwrap(), Path::new("/nonexistent"));
        // No farm module file under a root that does not exist; the farm's
        // namespaces of a real lab `mf` would show, so only when none exist.
        if !lab.has_farm() {
            assert_eq!(collect(&lab, Path::new("false")).farm, None);
        }
        let v = serde_json::to_value(example()).unwrap();
        assert!(v.get("farm").is_none(), "{v}");
    }

    #[test]
    fn the_text_shows_the_farm() {
        let text = render_text(&example_with_farm());
        let farm = text.split_once("farm: ").unwrap().1;
        let want = "\
module apache-farm, VIP 10.77.0.200 on every node
HOST   NETNS     ADDRESS     STATE        SHARE  PID
farm1  mf-farm1  10.77.0.21  UP           128    1301
farm2  mf-farm2  10.77.0.22  WAIT         -      1302
farm3  mf-farm3  10.77.0.23  UNREACHABLE  -      -
farm daemons not running: farm3 (see their logs in /nonexistent/mf/logs; `mirrorfarm lab start NODE --name mf` restarts one)
";
        assert_eq!(farm, want);
    }

    #[test]
    fn the_json_has_the_contracts_fields() {
        let v = serde_json::to_value(example()).unwrap();
        let want = serde_json::json!({
            "name": "mf",
            "dir": "/nonexistent/mf",
            "module": "apache",
            "vip": "10.77.0.100",
            "nodes": {
                "node1": {
                    "netns": "mf-node1",
                    "addr": "10.77.0.1",
                    "mount": "/nonexistent/mf/node1/srv/apache-mirror/htdocs",
                    "state": "PRIM",
                    "socket": "/nonexistent/mf/node1/run/mirrorfarm.sock",
                    "pid": 1234,
                },
                "node2": {
                    "netns": "mf-node2",
                    "addr": "10.77.0.2",
                    "mount": "/nonexistent/mf/node2/srv/apache-mirror/htdocs",
                    "state": "UNREACHABLE",
                    "socket": "/nonexistent/mf/node2/run/mirrorfarm.sock",
                    "pid": null,
                },
            },
            "witness": {"netns": "mf-witness", "addr": "10.77.0.3:7430", "pid": 1200},
            "client": {"netns": "mf-client", "addr": "10.77.0.10"},
        });
        assert_eq!(v, want);
    }

    #[test]
    fn the_text_is_a_table() {
        let want = "\
lab mf (/nonexistent/mf): module apache, VIP 10.77.0.100
HOST     NETNS       ADDRESS         STATE        PID   MOUNT
node1    mf-node1    10.77.0.1       PRIM         1234  /nonexistent/mf/node1/srv/apache-mirror/htdocs
node2    mf-node2    10.77.0.2       UNREACHABLE  -     /nonexistent/mf/node2/srv/apache-mirror/htdocs
witness  mf-witness  10.77.0.3:7430  -            1200
client   mf-client   10.77.0.10      -            -
no farm (built with --no-farm)
";
        assert_eq!(render_text(&example()), want);
    }
}
