//! The lab's errors: each names what failed and what to do about it.

use std::io;
use std::path::PathBuf;

/// Why a `mirrorfarm lab` command failed. `main` prints the message and exits 2.
#[derive(Debug, thiserror::Error)]
pub enum LabError {
    /// The `--name` is not 1 to 10 characters of `[a-z0-9]`.
    #[error(
        "lab name {0:?} is not valid: use 1 to 10 characters from a-z and 0-9 (namespace and \
         interface names are made from it), e.g. --name mf"
    )]
    BadName(String),
    /// Namespaces, veths and FUSE mounts need root.
    #[error(
        "mirrorfarm lab must run as root (it creates network namespaces, FUSE mounts and \
         processes in them): run it with sudo"
    )]
    NotRoot,
    /// `up` found something of a lab of that name.
    #[error("lab {name} exists ({what}): `mirrorfarm lab down --name {name}` first")]
    Exists {
        /// The lab.
        name: String,
        /// What was found (its directory, a namespace).
        what: String,
    },
    /// `status`/`start` on a lab that is not there.
    #[error(
        "there is no lab {name} (no {} and none of its namespaces): create it with \
         `mirrorfarm lab up --name {name}`",
        dir.display()
    )]
    NotFound {
        /// The lab.
        name: String,
        /// Its state directory.
        dir: PathBuf,
    },
    /// A program could not be started at all.
    #[error("cannot run {program}: {source}: {fix}")]
    Spawn {
        /// The program.
        program: String,
        /// Why exec failed.
        source: io::Error,
        /// What to do.
        fix: String,
    },
    /// A command ran and failed.
    #[error("`{command}` failed ({status}): {stderr}: {fix}")]
    Command {
        /// The command line.
        command: String,
        /// Its exit status.
        status: String,
        /// The end of its stderr.
        stderr: String,
        /// What to do.
        fix: String,
    },
    /// A file or directory of the lab could not be read, written or removed.
    #[error("{}: {source}: {fix}", path.display())]
    Io {
        /// The file or directory.
        path: PathBuf,
        /// The error.
        source: io::Error,
        /// What to do.
        fix: String,
    },
    /// The binary running the lab could not find itself.
    #[error("cannot find the path of the running mirrorfarm binary: {0}: run it by its full path")]
    CurrentExe(#[source] io::Error),
    /// No mirrorfs binary where the lab looks for it.
    #[error(
        "no mirrorfs binary at {}: build it (`cargo build -p mirrorfs` puts it beside \
         mirrorfarm) or set MIRRORFS_BIN to its path",
        path.display()
    )]
    NoMirrorfs {
        /// Where it was looked for.
        path: PathBuf,
    },
    /// A package the lab needs is missing and apt-get could not install it.
    #[error(
        "cannot install {packages}: {detail}: install them by hand \
         (`apt-get install {packages}`) and run `mirrorfarm lab up` again"
    )]
    Install {
        /// The missing packages, space-separated.
        packages: String,
        /// What went wrong.
        detail: String,
    },
    /// A daemon or the witness exited or did not come up.
    #[error("{what} did not start: {detail}; its log is {}", log.display())]
    NotStarted {
        /// Which process (`the node1 daemon`).
        what: String,
        /// What was seen.
        detail: String,
        /// Its log file.
        log: PathBuf,
    },
    /// The lab did not reach PRIM + SECOND (or the VIP did not answer) in time.
    #[error(
        "{what} within {secs} s (last seen: {seen}); the log tails are above and the lab is \
         left up for inspection (`mirrorfarm lab status --name {name}`, logs in {}): remove \
         it with `mirrorfarm lab down --name {name}`",
        logs.display()
    )]
    NotReady {
        /// The lab.
        name: String,
        /// What did not happen.
        what: String,
        /// The bound waited.
        secs: u64,
        /// The last states seen.
        seen: String,
        /// The lab's log directory.
        logs: PathBuf,
    },
    /// `up` failed after it had started building: the pieces are left in place.
    #[error(
        "{source}\nthe half-built lab {name} is left as it is for inspection: remove it with \
         `mirrorfarm lab down --name {name}`"
    )]
    UpFailed {
        /// The lab.
        name: String,
        /// What failed.
        source: Box<Self>,
    },
    /// `down` could not remove everything.
    #[error(
        "lab {name} is not fully removed: {}; fix that and run `mirrorfarm lab down --name \
         {name}` again",
        problems.join("; ")
    )]
    DownIncomplete {
        /// The lab.
        name: String,
        /// What is left, and why.
        problems: Vec<String>,
    },
}

impl LabError {
    /// An [`LabError::Io`] for `path` with the fix `fix`.
    pub(crate) fn io(
        path: impl Into<PathBuf>,
        fix: impl Into<String>,
    ) -> impl FnOnce(io::Error) -> Self {
        let (path, fix) = (path.into(), fix.into());
        move |source| Self::Io { path, source, fix }
    }
}
