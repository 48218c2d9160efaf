//! `mirrorfarm lab status`: what the lab is made of and the module's state on
//! each node, as JSON (for tests and scripts) or as a table.
//!
//! A node's state comes from its daemon, asked with the CLI itself
//! (`mirrorfarm --socket SOCK state --json`), bounded in time: a daemon that
//! does not answer shows as `UNREACHABLE`.

use std::collections::BTreeMap;
use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::thread;
use std::time::Duration;

use serde::Serialize;

use super::layout::{Host, Lab, MODULE, VIP, WITNESS_PORT};
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
    // Both daemons at once: an unreachable one costs the bound once, not twice.
    let states: Vec<String> = thread::scope(|s| {
        let asks: Vec<_> = Host::NODES
            .iter()
            .map(|&h| s.spawn(move || node_state(exe, &lab.socket(h))))
            .collect();
        asks.into_iter()
            .map(|a| a.join().unwrap_or_else(|_| UNREACHABLE.to_owned()))
            .collect()
    });
    let nodes = Host::NODES
        .iter()
        .zip(states)
        .map(|(&h, state)| {
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
    }
}

/// The module's state on the node whose daemon listens on `socket`.
pub(crate) fn node_state(exe: &Path, socket: &Path) -> String {
    let mut cmd = Command::new(exe);
    cmd.arg("--socket").arg(socket).args(["state", "--json"]);
    match sys::output_within(cmd, QUERY_BOUND) {
        Some(out) if out.status.success() => {
            module_state(&out.stdout, MODULE).unwrap_or_else(|| UNKNOWN.to_owned())
        }
        _ => UNREACHABLE.to_owned(),
    }
}

/// The state of `module` in the output of `mirrorfarm state --json`
/// (`{"version":1,"node":..,"modules":[{"module":..,"state":..},..]}`).
pub(crate) fn module_state(json: &[u8], module: &str) -> Option<String> {
    let v: serde_json::Value = serde_json::from_slice(json).ok()?;
    v.get("modules")?
        .as_array()?
        .iter()
        .find(|m| m.get("module").and_then(|n| n.as_str()) == Some(module))?
        .get("state")?
        .as_str()
        .map(str::to_owned)
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
    let widths: Vec<usize> = (0..6)
        .map(|c| rows.iter().map(|r| r[c].len()).max().unwrap_or(0))
        .collect();
    let mut out = format!(
        "lab {} ({}): module {}, VIP {}\n",
        st.name,
        st.dir.display(),
        st.module,
        st.vip
    );
    for row in &rows {
        let line: Vec<String> = row
            .iter()
            .zip(&widths)
            .map(|(cell, w)| format!("{cell:<w$}"))
            .collect();
        out.push_str(line.join("  ").trim_end());
        out.push('\n');
    }
    out
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
        st
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
";
        assert_eq!(render_text(&example()), want);
    }
}
