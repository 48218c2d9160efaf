//! `mirrorfarm lab`: the whole Apache mirror cluster on one machine, for the
//! demo, the tests and operators trying mirrorfarm out.
//!
//! Owns lab NAME's pieces and nothing else: its state directory
//! `/var/lib/mirrorfarm-lab/NAME/`, its network namespaces `NAME-node1`,
//! `NAME-node2`, `NAME-witness`, `NAME-client`, the farm's `NAME-farm1`,
//! `NAME-farm2`, `NAME-farm3` (unless built with `--no-farm`) and `NAME-sw`
//! (a bridge joining one `eth0` of each host; nothing on the machine's own
//! network), the processes in those namespaces and the mounts under its
//! directory.
//!
//! ```text
//! NAME/certs/            node1, node2, witness key pairs (mirrorfs keygen)
//! NAME/etc/node1.ron     the node files: everything inside the lab, and
//! NAME/etc/node2.ron       path_prefix NAME/nodeN (the nodes share one file system)
//! NAME/etc/modules/      apache.ron (the example, certs and scripts moved) and apache/ (scripts)
//! NAME/etc/farmN.ron     the farm nodes' files (modules: etc/farm-modules)
//! NAME/etc/farm-modules/ apache-farm.ron (the farm example, nodes farm1..3 with the lab's
//!                          addresses and certs, the lab's farm VIP) and apache-farm/ (scripts)
//! NAME/node1/            node1's path_prefix (srv/..., var/lib/...), state/, run/mirrorfarm.sock
//! NAME/node2/            the same for node2
//! NAME/farmN/            farm node N: state/ (the module's run dir: Apache's conf, pid,
//!                          site), run/mirrorfarm.sock
//! NAME/witness/state     the witness's state
//! NAME/logs/HOST.log     each daemon's (and the witness's) output
//! NAME/HOST.pid          their pids
//! ```
//!
//! Addresses (the same in every lab; each has its own switch): node1
//! 10.77.0.1, node2 10.77.0.2, witness 10.77.0.3 (UDP 7430), client
//! 10.77.0.10, the module's VIP 10.77.0.100, farm1..3 10.77.0.21..23 and the
//! farm's VIP 10.77.0.200, all /24 on the one bridge. Processes run with
//! `nsenter --net` (not `ip netns exec`, which would also give them a private
//! mount namespace and hide the FUSE mounts).
//!
//! Must not: touch anything of another lab or of the machine (other
//! namespaces, interfaces, processes, mounts), nor talk to the daemons other
//! than through the `mirrorfarm` command line.

mod down;
mod error;
mod install;
mod layout;
mod net;
mod render;
mod status;
mod sys;
mod up;

#[cfg(test)]
mod lab_test;

use std::path::{Path, PathBuf};

pub use error::LabError;
pub use layout::{Host, LabName};

use layout::{Lab, DEFAULT_ROOT};

/// The `mirrorfarm lab` subcommands.
#[derive(Debug, Clone, PartialEq, Eq, clap::Subcommand)]
pub enum LabCmd {
    /// Build lab NAME (namespaces, certificates, configuration, witness and
    /// two daemons) and wait until the Apache mirror is PRIM + SECOND and the
    /// client fetches the VIP; also the Apache farm (three nodes, a daemon
    /// each), then wait (bounded) for it to be UP: a farm that does not come
    /// up is reported, and leaves the mirror lab up. Installs missing
    /// packages with apt-get.
    Up {
        /// The lab's name: 1 to 10 of a-z, 0-9.
        #[arg(long, default_value = "mf")]
        name: LabName,
        /// Build the mirror part only: no farm namespaces, files or daemons.
        #[arg(long)]
        no_farm: bool,
    },
    /// Show the lab: namespaces, addresses, each node's mount and module state.
    Status {
        /// The lab's name.
        #[arg(long, default_value = "mf")]
        name: LabName,
        /// Print JSON (`vip`, `nodes.node1.{netns,mount,state,socket}`, ...,
        /// `farm.{vip,nodes.farm1.{netns,state,share,...}}`).
        #[arg(long)]
        json: bool,
    },
    /// Restart a host whose processes were killed: stops what is left of it,
    /// unmounts its dead FUSE mounts and starts its daemon (or the witness).
    Start {
        /// The host to start.
        #[arg(value_enum)]
        node: Host,
        /// The lab's name.
        #[arg(long, default_value = "mf")]
        name: LabName,
    },
    /// Remove the lab: processes, mounts, namespaces, its directory. Also a
    /// half-built one; a missing one is no error.
    Down {
        /// The lab's name.
        #[arg(long, default_value = "mf")]
        name: LabName,
    },
}

/// Runs a `mirrorfarm lab` subcommand. Progress goes to stdout, log tails of a
/// failed `up` to stderr.
pub fn run(cmd: LabCmd) -> Result<(), LabError> {
    let root = Path::new(DEFAULT_ROOT);
    match cmd {
        LabCmd::Up { name, no_farm } => up::up(&Lab::new(name, root), !no_farm),
        LabCmd::Status { name, json } => status_cmd(&Lab::new(name, root), json),
        LabCmd::Start { node, name } => up::start(&Lab::new(name, root), node),
        LabCmd::Down { name } => down::down(&Lab::new(name, root)),
    }
}

fn status_cmd(lab: &Lab, json: bool) -> Result<(), LabError> {
    if existing(lab).is_none() {
        return Err(not_found(lab));
    }
    let st = status::collect(lab, &current_exe()?);
    if json {
        let text = serde_json::to_string_pretty(&st).expect("the status is plain data");
        println!("{text}");
    } else {
        print!("{}", status::render_text(&st));
    }
    Ok(())
}

/// What of `lab` exists (its directory, a namespace), if anything.
fn existing(lab: &Lab) -> Option<String> {
    if lab.dir().exists() {
        return Some(format!("its directory {} exists", lab.dir().display()));
    }
    lab.namespaces()
        .into_iter()
        .find(|ns| sys::netns_exists(ns))
        .map(|ns| format!("its network namespace {ns} exists"))
}

fn not_found(lab: &Lab) -> LabError {
    LabError::NotFound {
        name: lab.name().to_string(),
        dir: lab.dir().to_owned(),
    }
}

/// The path of this binary: the lab's daemons and witness run it.
fn current_exe() -> Result<PathBuf, LabError> {
    std::env::current_exe().map_err(LabError::CurrentExe)
}
