//! This node's settings, validated: [`NodeConfig`] and the conversion from
//! [`RawNode`].
//!
//! Owns: the rules about `node.ron` (a name, a usable identity whose key only root
//! reads and whose CN is the name, a short absolute control socket) and the
//! defaults of its optional fields. Relative paths in the file are taken from the
//! file's directory, except `socket` (the CLI finds it without reading the file)
//! and `path_prefix`, which must be absolute.

use std::fs;
use std::io::ErrorKind;
use std::net::SocketAddr;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

use mirrorfs::net::tls;

use super::error::ConfigError;
use super::locate::Src;
use super::module::{executable, invalid, is_plain_absolute, resolve};
use super::raw::RawNode;

/// Default control socket of the daemon.
pub const DEFAULT_SOCKET: &str = "/run/mirrorfarm/mirrorfarm.sock";
/// Default state directory of the daemon.
pub const DEFAULT_STATE_DIR: &str = "/var/lib/mirrorfarm";
/// Longest Unix socket path, in bytes (`sun_path` holds 108 with the NUL).
const MAX_SOCKET_PATH: usize = 107;

/// This node's settings, validated.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NodeConfig {
    /// Where it was read from (absolute).
    pub file: PathBuf,
    /// This node's name: the CN of `cert`.
    pub name: String,
    /// This node's private key; readable, not world-readable, and belonging to `cert`.
    pub key: PathBuf,
    /// This node's certificate, the one its peers pin.
    pub cert: PathBuf,
    /// The directory of the module files; default `<dir of the node file>/modules`.
    pub modules: PathBuf,
    /// The daemon's control socket (absolute, < 108 bytes); default
    /// [`DEFAULT_SOCKET`].
    pub socket: PathBuf,
    /// The daemon's state directory; default [`DEFAULT_STATE_DIR`].
    pub state_dir: PathBuf,
    /// The `mirrorfs` binary (an executable file) if set; `None`: the daemon looks
    /// beside its own binary, then in `PATH`.
    pub mirrorfs: Option<PathBuf>,
    /// Where to serve metrics; `None`: not served.
    pub metrics: Option<SocketAddr>,
    /// Lab only: prefixed to every module dir's backing and mount on this node
    /// (absolute); see [`super::Module::dirs_for`].
    pub path_prefix: Option<PathBuf>,
}

/// Checks every rule on `raw` read from `src` and builds the [`NodeConfig`].
pub(crate) fn validate(raw: RawNode, src: Src<'_>) -> Result<NodeConfig, ConfigError> {
    // The file is absolute, so it has a parent.
    let base = src.file.parent().unwrap_or(Path::new("/"));
    if raw.name.trim().is_empty() {
        return Err(invalid(
            &src,
            "name",
            format!("{:?}", raw.name),
            "is empty",
            "set name to this node's name, the CN of its certificate (e.g. \"node1\")",
        ));
    }
    let key = resolve(base, &raw.key);
    let cert = resolve(base, &raw.cert);
    for (field, path) in [("key", &key), ("cert", &cert)] {
        let meta = fs::metadata(path).map_err(|err| {
            let problem = if err.kind() == ErrorKind::NotFound {
                "does not exist".to_owned()
            } else {
                format!("cannot be read ({err})")
            };
            invalid(
                &src,
                field,
                path.display(),
                problem,
                "generate this node's key and certificate with `mirrorfs keygen DIR NAME` \
                 or correct the path",
            )
        })?;
        if field == "key" && meta.permissions().mode() & 0o004 != 0 {
            return Err(ConfigError::KeyReadable {
                at: src.at("key"),
                path: key.clone(),
                mode: meta.permissions().mode() & 0o7777,
            });
        }
    }
    let identity = tls::load_identity(&key, &cert).map_err(|source| ConfigError::Identity {
        at: src.at("key"),
        source,
    })?;
    if identity.name != raw.name {
        return Err(ConfigError::NodeName {
            at: src.at("name"),
            name: raw.name,
            cert,
            cn: identity.name.clone(),
        });
    }

    let modules = match &raw.modules {
        Some(dir) => resolve(base, dir),
        None => base.join("modules"),
    };
    let socket = raw.socket;
    if !is_plain_absolute(&socket) {
        return Err(ConfigError::NotAbsolute {
            at: src.at("socket"),
            field: "socket".to_owned(),
            path: socket,
        });
    }
    let len = socket.as_os_str().as_bytes().len();
    if len > MAX_SOCKET_PATH {
        return Err(invalid(
            &src,
            "socket",
            socket.display(),
            format!("is {len} bytes long; a Unix socket path has at most {MAX_SOCKET_PATH}"),
            "choose a shorter path",
        ));
    }
    let state_dir = resolve(base, &raw.state_dir);
    let mirrorfs = raw.mirrorfs.as_deref().map(|p| resolve(base, p));
    if let Some(path) = &mirrorfs {
        executable(&src, "mirrorfs", path)?;
    }
    if let Some(prefix) = &raw.path_prefix {
        if !is_plain_absolute(prefix) {
            return Err(ConfigError::NotAbsolute {
                at: src.at("path_prefix"),
                field: "path_prefix".to_owned(),
                path: prefix.clone(),
            });
        }
    }
    Ok(NodeConfig {
        file: src.file.to_path_buf(),
        name: raw.name,
        key,
        cert,
        modules,
        socket,
        state_dir,
        mirrorfs,
        metrics: raw.metrics,
        path_prefix: raw.path_prefix,
    })
}
