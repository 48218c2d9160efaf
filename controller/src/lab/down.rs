//! `lab down`: removes a lab, whole or half-built, and says what it could not
//! remove. Idempotent: a lab that is not there is removed already.

use std::fs;
use std::time::Duration;

use super::layout::{Host, Lab};
use super::{net, sys, LabError};

/// How long the daemons get to stop their application and unmount.
const DAEMON_GRACE: Duration = Duration::from_secs(20);
/// How long every other process gets after SIGTERM before SIGKILL.
const GRACE: Duration = Duration::from_secs(5);

/// Stops every process in the lab's namespaces (the daemons and the witness
/// first, gracefully), unmounts every mount under its directory (lazily),
/// deletes its namespaces and links, then its directory.
pub(crate) fn down(lab: &Lab) -> Result<(), LabError> {
    sys::require_root()?;
    let name = lab.name();
    let namespaces: Vec<String> = lab
        .namespaces()
        .into_iter()
        .filter(|ns| sys::netns_exists(ns))
        .collect();
    let dir = lab.dir();
    if namespaces.is_empty() && !dir.exists() && net::host_side_ports(lab).is_empty() {
        println!("lab {name}: nothing to remove");
        return Ok(());
    }
    let mut problems = Vec::new();

    let daemons: Vec<i32> = Host::ALL
        .iter()
        .filter(|&&h| h != Host::Client)
        .filter_map(|&h| sys::live_pid(&lab.pid_file(h), &lab.netns(h)))
        .collect();
    if !daemons.is_empty() {
        println!("lab {name}: stopping the daemons and the witness (pids {daemons:?})");
        if !sys::term_and_wait(&daemons, &namespaces, DAEMON_GRACE) {
            println!(
                "lab {name}: still running after {} s: stopping every process",
                DAEMON_GRACE.as_secs()
            );
        }
    }
    // Apache detaches from the daemon that started it (stop_both or
    // stop_prim would have stopped it): stop what its pid files name, also
    // outside the namespaces found (a namespace deleted by hand), before
    // every process left in the namespaces is stopped.
    let apaches: Vec<i32> = Host::ALL
        .iter()
        .filter(|h| h.runs_daemon())
        .filter_map(|&h| sys::pid_of(&lab.app_pid_file(h), "apache2"))
        .collect();
    if !apaches.is_empty() {
        println!("lab {name}: stopping Apache (pids {apaches:?})");
        sys::term_then_kill(&apaches, GRACE);
    }
    if let Err(e) = sys::stop_all(&namespaces, GRACE) {
        problems.push(e);
    }

    for m in sys::mounts_under(dir)? {
        match sys::unmount_lazy(&m.path) {
            Ok(()) => println!("lab {name}: unmounted {}", m.path.display()),
            // Gone meanwhile (its daemon unmounted it as it stopped).
            Err(e) if e.raw_os_error() == Some(libc::EINVAL) => {}
            Err(e) => problems.push(format!("cannot unmount {}: {e}", m.path.display())),
        }
    }

    problems.extend(net::remove(lab));

    let left = sys::mounts_under(dir)?;
    if !left.is_empty() {
        // Removing the directory would walk into the mounts (a node's data).
        let paths: Vec<String> = left.iter().map(|m| m.path.display().to_string()).collect();
        problems.push(format!(
            "still mounted, so {} is kept: {}",
            dir.display(),
            paths.join(", ")
        ));
    } else if dir.exists() {
        if let Err(e) = fs::remove_dir_all(dir) {
            problems.push(format!("cannot remove {}: {e}", dir.display()));
        }
    }

    if problems.is_empty() {
        println!("lab {name}: removed");
        Ok(())
    } else {
        Err(LabError::DownIncomplete {
            name: name.to_string(),
            problems,
        })
    }
}
