//! The farm filter's I/O: runs the scripts of [`crate::ruleset`] with
//! `nft -f -` in the calling thread's network namespace, and sets the one
//! sysctl the shared VIP needs.
//!
//! Owns: this module's three `mirrorfarm_<module>` tables and the interface's
//! `net.ipv4.conf.<if>.arp_announce` (set to 2 on install so the node's own ARP
//! requests carry its own address, never the VIP; the old value is restored by
//! [`Installed::remove`]). Must not: touch any other table, sysctl or interface.
//!
//! [`install`] works in the calling thread's network namespace and remembers
//! it: [`Installed`]'s later calls (and its drop) act in that same namespace,
//! whichever thread makes them.
//!
//! The old `arp_announce` is kept in memory only: after a crash, the next
//! install reads 2 and a later remove restores 2 (harmless: it only makes the
//! node's ARP requests more precise).

use std::fs::File;
use std::io::{self, Write};
use std::os::fd::AsRawFd;
use std::process::{Command, Stdio};
use std::thread;

use crate::buckets::BucketSet;
use crate::ruleset::{self, FarmFilter, RulesetError};

/// Why the filter could not be checked, installed, updated or removed. Each
/// message names what failed and the fix.
#[derive(Debug, thiserror::Error)]
pub enum NftError {
    /// The filter's fields are invalid (nothing was changed).
    #[error(transparent)]
    Ruleset(#[from] RulesetError),
    /// There is no `nft` program in `PATH`.
    #[error("the `nft` program was not found: install nftables (`apt install nftables`)")]
    NotInstalled,
    /// The kernel refused for lack of privilege.
    #[error("nft {action}: permission denied: run the daemon as root (or with CAP_NET_ADMIN)")]
    PermissionDenied { action: &'static str },
    /// The kernel lacks a feature the filter needs.
    #[error(
        "nft {action}: the kernel lacks {feature}: load or build it ({hint}); nft said: {stderr}"
    )]
    KernelLacks {
        action: &'static str,
        feature: &'static str,
        hint: &'static str,
        stderr: String,
    },
    /// The interface does not exist in this network namespace.
    #[error(
        "no interface named {interface} in this network namespace: check the farm module's \
         interface against `ip link` on this node"
    )]
    NoSuchInterface { interface: String },
    /// `nft` refused the script for another reason (a bug: the script is shown).
    #[error("nft {action} failed: {stderr}\nscript:\n{script}")]
    Rejected {
        action: &'static str,
        stderr: String,
        script: String,
    },
    /// Reading or writing the `arp_announce` sysctl failed.
    #[error(
        "{path}: cannot {step}: {source}: run as root, in the namespace that holds the interface"
    )]
    Sysctl {
        path: String,
        step: &'static str,
        #[source]
        source: io::Error,
    },
    /// Entering the network namespace the filter was installed in failed.
    #[error("cannot enter the filter's network namespace ({step}): {source}")]
    Namespace {
        step: &'static str,
        #[source]
        source: io::Error,
    },
    /// Running `nft` failed at the system-call level.
    #[error("cannot run nft ({step}): {source}")]
    Io {
        step: &'static str,
        #[source]
        source: io::Error,
    },
}

/// The filter of one farm module, installed on this node. Dropping it removes
/// the tables and restores the sysctl (best effort, logged); call
/// [`Installed::remove`] to see errors.
#[derive(Debug)]
pub struct Installed {
    module: String,
    interface: String,
    /// `arp_announce` before install, restored on remove.
    old_arp_announce: String,
    /// The network namespace it was installed in (`/proc/thread-self/ns/net`).
    netns: File,
    removed: bool,
}

/// Validates everything `install` would do without changing anything: the
/// fields, the interface, the sysctl, and the whole install script against the
/// kernel (`nft -c -f -`).
pub fn check_support(f: &FarmFilter) -> Result<(), NftError> {
    let script = ruleset::install_script(f)?;
    check_interface(&f.interface)?;
    read_sysctl(&arp_announce_path(&f.interface))?;
    run_nft(&["-c", "-f", "-"], "check", &script)
}

/// Installs (or reinstalls, replacing an older copy) the filter of `f` in one
/// transaction, after [`check_support`]; then sets `arp_announce` to 2.
pub fn install(f: &FarmFilter) -> Result<Installed, NftError> {
    check_support(f)?;
    let path = arp_announce_path(&f.interface);
    let old_arp_announce = read_sysctl(&path)?;
    let netns = File::open("/proc/thread-self/ns/net").map_err(|source| NftError::Namespace {
        step: "open /proc/thread-self/ns/net",
        source,
    })?;
    run_nft(&["-f", "-"], "install", &ruleset::install_script(f)?)?;
    let installed = Installed {
        module: f.module.clone(),
        interface: f.interface.clone(),
        old_arp_announce,
        netns,
        removed: false,
    };
    // On error, `installed` is dropped here and removes the tables again.
    write_sysctl(&path, "2")?;
    Ok(installed)
}

impl Installed {
    /// Replaces the owned buckets atomically (one transaction); an empty set
    /// makes the node accept no new client. Established connections stay.
    pub fn set_owned(&self, owned: &BucketSet) -> Result<(), NftError> {
        let script = ruleset::set_owned_script(&self.module, owned)?;
        self.in_netns(|| run_nft(&["-f", "-"], "set owned buckets", &script))
    }

    /// Deletes the module's tables and restores `arp_announce`.
    pub fn remove(mut self) -> Result<(), NftError> {
        self.removed = true;
        self.remove_inner()
    }

    /// The farm module this filter belongs to.
    pub fn module(&self) -> &str {
        &self.module
    }

    fn remove_inner(&self) -> Result<(), NftError> {
        let script = ruleset::remove_script(&self.module)?;
        self.in_netns(|| {
            let tables = run_nft(&["-f", "-"], "remove", &script);
            let path = arp_announce_path(&self.interface);
            let sysctl = write_sysctl(&path, &self.old_arp_announce);
            tables.and(sysctl)
        })
    }

    /// Runs `f` on a short-lived thread that first joins the filter's network
    /// namespace (namespaces are per thread; `nft` children inherit it), so
    /// the caller's own thread never changes namespace.
    fn in_netns(&self, f: impl FnOnce() -> Result<(), NftError> + Send) -> Result<(), NftError> {
        let fd = self.netns.as_raw_fd();
        thread::scope(|s| {
            let worker = s.spawn(move || {
                // SAFETY: setns(2) on a namespace fd we hold open; it only
                // changes this (scoped, short-lived) thread.
                if unsafe { libc::setns(fd, libc::CLONE_NEWNET) } != 0 {
                    return Err(NftError::Namespace {
                        step: "setns",
                        source: io::Error::last_os_error(),
                    });
                }
                f()
            });
            worker
                .join()
                .unwrap_or_else(|panic| std::panic::resume_unwind(panic))
        })
    }
}

impl Drop for Installed {
    fn drop(&mut self) {
        if !self.removed {
            if let Err(e) = self.remove_inner() {
                tracing::warn!(module = %self.module, error = %e, "cannot remove the farm filter");
            }
        }
    }
}

fn arp_announce_path(interface: &str) -> String {
    format!("/proc/sys/net/ipv4/conf/{interface}/arp_announce")
}

/// `/proc/sys/net` shows the network namespace of the calling thread.
fn read_sysctl(path: &str) -> Result<String, NftError> {
    std::fs::read_to_string(path)
        .map(|s| s.trim().to_owned())
        .map_err(|source| NftError::Sysctl {
            path: path.to_owned(),
            step: "read",
            source,
        })
}

fn write_sysctl(path: &str, value: &str) -> Result<(), NftError> {
    std::fs::write(path, value).map_err(|source| NftError::Sysctl {
        path: path.to_owned(),
        step: "write",
        source,
    })
}

fn check_interface(interface: &str) -> Result<(), NftError> {
    // The name was validated by the ruleset (no NUL), so CString cannot fail.
    let name = std::ffi::CString::new(interface).map_err(|_| NftError::NoSuchInterface {
        interface: interface.to_owned(),
    })?;
    // SAFETY: name is a valid NUL-terminated string for the whole call.
    // (Kernels from 6.16 accept a netdev hook on a missing device, so nft
    // alone would not catch a typo.)
    if unsafe { libc::if_nametoindex(name.as_ptr()) } == 0 {
        return Err(NftError::NoSuchInterface {
            interface: interface.to_owned(),
        });
    }
    Ok(())
}

/// Runs `nft ARGS` with `script` on stdin, in the calling thread's namespaces.
fn run_nft(args: &[&str], action: &'static str, script: &str) -> Result<(), NftError> {
    let mut child = Command::new("nft")
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|source| match source.kind() {
            io::ErrorKind::NotFound => NftError::NotInstalled,
            _ => NftError::Io {
                step: "spawn",
                source,
            },
        })?;
    let written = match child.stdin.take() {
        Some(mut stdin) => stdin.write_all(script.as_bytes()),
        None => Ok(()),
    };
    let out = child.wait_with_output().map_err(|source| NftError::Io {
        step: "wait",
        source,
    })?;
    if out.status.success() {
        return written.map_err(|source| NftError::Io {
            step: "write the script",
            source,
        });
    }
    Err(classify(
        action,
        String::from_utf8_lossy(&out.stderr).trim().to_owned(),
        script,
    ))
}

/// Maps nft's message to the variant that names the fix. nft quotes the line
/// the kernel refused, so the feature is recognised by its keyword there.
fn classify(action: &'static str, stderr: String, script: &str) -> NftError {
    if stderr.contains("Operation not permitted") {
        return NftError::PermissionDenied { action };
    }
    let missing = stderr.contains("No such file or directory")
        || stderr.contains("Operation not supported")
        || stderr.contains("Protocol not supported");
    let features: [(&str, &str, &str); 4] = [
        (
            "jhash",
            "the nftables hash expression (jhash)",
            "CONFIG_NFT_HASH, module nft_hash",
        ),
        (
            "hook ingress",
            "netdev ingress hooks",
            "CONFIG_NF_TABLES_NETDEV",
        ),
        ("arp", "the nftables arp family", "CONFIG_NF_TABLES_ARP"),
        (
            "ct state",
            "connection tracking in nftables",
            "CONFIG_NFT_CT, module nft_ct",
        ),
    ];
    if missing {
        for (keyword, feature, hint) in features {
            if stderr.contains(keyword) {
                return NftError::KernelLacks {
                    action,
                    feature,
                    hint,
                    stderr,
                };
            }
        }
    }
    NftError::Rejected {
        action,
        stderr,
        script: script.to_owned(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nft_messages_name_the_missing_feature() {
        let stderr = "/dev/stdin:15:3-80: Error: Could not process rule: No such file or \
                      directory\n\t\ttcp dport { 80 } jhash ip saddr . th sport mod 256";
        let err = classify("install", stderr.into(), "");
        assert!(
            matches!(err, NftError::KernelLacks { feature, .. } if feature.contains("jhash")),
            "{err}"
        );
        let err = classify("install", "Error: Operation not permitted".into(), "");
        assert!(matches!(err, NftError::PermissionDenied { .. }), "{err}");
        let err = classify("install", "Error: syntax error".into(), "table x");
        assert!(err.to_string().contains("table x"), "{err}");
    }

    #[test]
    fn a_missing_interface_is_named() {
        let err = check_interface("mfnosuch0").unwrap_err();
        assert!(err.to_string().contains("mfnosuch0"), "{err}");
    }
}
