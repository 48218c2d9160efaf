//! The packages the lab needs, installed with apt-get when missing (Debian
//! and its derivatives; elsewhere the commands must already be there).

use std::path::Path;
use std::process::{Command, Stdio};

use super::LabError;

/// Each package the lab uses, with a command that shows it is installed.
const PACKAGES: [(&str, &str); 5] = [
    ("apache2", "apache2"),   // the module's application
    ("curl", "curl"),         // the client's HTTP tool
    ("nftables", "nft"),      // the daemon's fault injection and filters
    ("iproute2", "ip"),       // namespaces, veths, the bridge, the VIP
    ("fuse3", "fusermount3"), // mirrorfs mounts
];

/// Installs whatever of [`PACKAGES`] is missing: `apt-get install`, and if
/// that fails, `apt-get update` once and the install again. apt's output goes
/// to the terminal.
pub(crate) fn ensure_packages() -> Result<(), LabError> {
    let missing = missing()?;
    if missing.is_empty() {
        return Ok(());
    }
    let list = missing.join(" ");
    println!("installing {list} (apt-get)");
    if apt(&["install", "-y", "--no-install-recommends"], &missing).is_err() {
        println!("apt-get install failed: updating the package lists once and trying again");
        apt(&["update"], &[]).map_err(|detail| LabError::Install {
            packages: list.clone(),
            detail,
        })?;
        apt(&["install", "-y", "--no-install-recommends"], &missing).map_err(|detail| {
            LabError::Install {
                packages: list.clone(),
                detail,
            }
        })?;
    }
    Ok(())
}

/// The packages not installed: asked of dpkg where there is one, else judged
/// by their commands.
fn missing() -> Result<Vec<&'static str>, LabError> {
    let mut missing = Vec::new();
    for (package, command) in PACKAGES {
        let status = Command::new("dpkg-query")
            .args(["-W", "-f=${Status}", package])
            .stdin(Stdio::null())
            .stderr(Stdio::null())
            .output();
        let installed = match status {
            Ok(out) => out.stdout == b"install ok installed",
            Err(_) => has_command(command),
        };
        if !installed {
            missing.push(package);
        }
    }
    if !missing.is_empty() && !has_command("apt-get") {
        return Err(LabError::Install {
            packages: missing.join(" "),
            detail: "there is no apt-get on this machine".to_owned(),
        });
    }
    Ok(missing)
}

/// Whether `command` is in PATH or in /usr/sbin (often not in a sudo PATH).
fn has_command(command: &str) -> bool {
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .chain([Path::new("/usr/sbin").to_owned()])
        .any(|dir| dir.join(command).is_file())
}

/// `apt-get ARGS PACKAGES`, non-interactive, output to the terminal.
fn apt(args: &[&str], packages: &[&str]) -> Result<(), String> {
    let status = Command::new("apt-get")
        .args(args)
        .args(packages)
        .env("DEBIAN_FRONTEND", "noninteractive")
        .stdin(Stdio::null())
        .status()
        .map_err(|e| format!("cannot run apt-get: {e}"))?;
    if status.success() {
        Ok(())
    } else {
        Err(format!("apt-get {} exited with {status}", args.join(" ")))
    }
}
