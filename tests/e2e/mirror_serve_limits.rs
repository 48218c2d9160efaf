//! Issue 7 ("every acknowledged write accounted for"), section 1, the
//! secondary's side: what the peer may reach (item 9), one definition of
//! equal extended attributes (item 11), size limits that must not stop the
//! pair from re-forming (item 5), a secondary that works long (or hangs) is
//! told apart from a dead one (item 6), and the server's own limits (item 8).

use std::fs;
use std::time::Duration;

use anyhow::{ensure, Context, Result};

use crate::util::mirror::Mirror;
use crate::util::{run_fs, sys};

/// A file capability (v2, `cap_net_raw` permitted): metadata of the file,
/// replicated like its setuid bit.
const CAPABILITY: [u8; 20] = [1, 0, 0, 2, 0, 32, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0];

/// Item 11: a file capability set through the mount reaches the replica; a
/// host label (`security.selinux`) set through the mount stays on the
/// primary, and `verify` does not count it as a difference.
#[test]
fn issue_07_capabilities_replicate_host_labels_stay_local() -> Result<()> {
    let m = Mirror::start(&[])?;
    let mnt = m.mnt();
    let label_set = run_fs(Duration::from_secs(30), "set xattrs", &mnt, |mnt| {
        fs::write(mnt.join("tool"), b"#!/bin/sh\n")?;
        sys::set_xattr(&mnt.join("tool"), "security.capability", &CAPABILITY)?;
        sys::set_xattr(&mnt.join("tool"), "user.k", b"v")?;
        // Root may set any label where no security module claims the name.
        Ok(sys::set_xattr(
            &mnt.join("tool"),
            "security.selinux",
            b"system_u:object_r:a_t:s0",
        )
        .is_ok())
    })?;
    let replica = m.replica().join("tool");
    ensure!(
        sys::xattr(&replica, "security.capability").context("capability on the replica")?
            == CAPABILITY,
        "the capability differs on the replica"
    );
    ensure!(sys::xattr(&replica, "user.k")? == b"v");
    if label_set {
        ensure!(
            sys::xattr(&m.backing().join("tool"), "security.selinux").is_ok(),
            "the label was not set on the primary"
        );
        ensure!(
            sys::xattr(&replica, "security.selinux").is_err(),
            "a host label was replicated"
        );
    } else {
        eprintln!("security.selinux is not settable here: host labels not exercised");
    }
    m.expect_replica_identical()
}
