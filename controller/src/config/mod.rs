//! The controller's configuration: this node's file (`node.ron`) and the module
//! files (`modules/NAME.ron`), parsed from RON and validated into the types the
//! daemon runs on.
//!
//! Owns: reading and parsing the files ([`load_node`], [`load_module`],
//! [`load_modules`]), the schema (`raw.rs`), every validation rule
//! (`module.rs`, `node.rs`) and the errors that name `FILE:LINE:COL`, the field, the bad
//! value and the fix ([`ConfigError`]). Parse, don't validate: a [`Module`] or
//! [`NodeConfig`] exists only if every rule held, and no other code re-checks.
//!
//! Must not: act on the configuration (no sockets, no mounts, no scripts run). It
//! reads the files it names (certificates, keys) and looks at the metadata of the
//! scripts, nothing more.
//!
//! Layout: `raw.rs` (serde structs), `module.rs` and `node.rs` (validated types and
//! their rules), `error.rs`, `locate.rs` (field path → line:col); tests in
//! `module_test.rs` and `node_test.rs` (fixture in `testkit.rs`, one case per rule
//! in `testdata/*_errors.txt`).

// ConfigError carries the place, the field path and the values of each rule, which
// makes it larger than clippy likes in a Result. Configuration is loaded once per
// file at start or reload, so the size costs nothing; boxing would only add noise.
#![allow(clippy::result_large_err)]

mod error;
mod locate;
mod module;
mod node;
mod raw;

#[cfg(test)]
mod module_test;
#[cfg(test)]
mod node_test;
#[cfg(test)]
mod testkit;

use std::fs;
use std::path::{Path, PathBuf};

use ron::error::{Error as RonError, SpannedError};
use serde::de::DeserializeOwned;

pub use error::{ConfigError, Place};
pub use module::{
    Check, Checker, DirSpec, FarmSpec, MaxLoop, Module, ModuleKind, NodeSpec, OnFailure, Proto,
    Rule, Scripts, Then, Timing, Vip, WitnessSpec, MAX_FARM_NODES, VIP_LIFE,
};
pub use node::{NodeConfig, DEFAULT_SOCKET, DEFAULT_STATE_DIR};

use locate::Src;

/// Longest module name.
const MAX_MODULE_NAME: usize = 32;

/// Loads and validates this node's settings from `path`.
pub fn load_node(path: &Path) -> Result<NodeConfig, ConfigError> {
    let file = absolute(path)?;
    let bytes = read(&file)?;
    let text = utf8(&file, &bytes)?;
    let src = Src {
        file: &file,
        text: &text,
    };
    let raw: raw::RawNode = parse(&src)?;
    node::validate(raw, src)
}

/// Loads and validates the module file at `path` for `node`: the module's name is
/// the file's stem; `node` must be one of its nodes and gives the default scripts
/// directory (`<node.modules>/<name>`).
pub fn load_module(path: &Path, node: &NodeConfig) -> Result<Module, ConfigError> {
    let file = absolute(path)?;
    let name = module_name(&file)?;
    let bytes = read(&file)?;
    let text = utf8(&file, &bytes)?;
    let src = Src {
        file: &file,
        text: &text,
    };
    let raw: raw::RawModule = parse(&src)?;
    let loaded = module::Loaded {
        name,
        digest: xxhash_rust::xxh3::xxh3_64(&bytes),
        src,
    };
    module::validate(raw, loaded, node)
}

/// Loads every `*.ron` file in `node.modules`, sorted by module name. Returns the
/// modules that loaded and, apart, the errors of those that did not (one per file;
/// an unreadable directory gives one error and no module). A module that clashes
/// with one loaded before it (same port, VIP or overlapping directory) is refused
/// too, since both could not run on this node.
pub fn load_modules(node: &NodeConfig) -> (Vec<Module>, Vec<ConfigError>) {
    let mut errors = Vec::new();
    let entries = match fs::read_dir(&node.modules) {
        Ok(entries) => entries,
        Err(source) => {
            let err = ConfigError::Read {
                path: node.modules.clone(),
                source,
            };
            return (Vec::new(), vec![err]);
        }
    };
    let mut files: Vec<PathBuf> = Vec::new();
    for entry in entries {
        match entry {
            Ok(entry) => {
                let path = entry.path();
                // Follows symlinks: a linked module file counts, a directory does not.
                if path.extension().is_some_and(|e| e == "ron") && path.is_file() {
                    files.push(path);
                }
            }
            Err(source) => errors.push(ConfigError::Read {
                path: node.modules.clone(),
                source,
            }),
        }
    }
    files.sort();

    let mut modules: Vec<Module> = Vec::new();
    for file in files {
        match load_module(&file, node).and_then(|m| no_clash(&m, &modules).map(|()| m)) {
            Ok(module) => modules.push(module),
            Err(err) => errors.push(err),
        }
    }
    (modules, errors)
}

/// Refuses `module` if it shares a port, the VIP or a directory with a module
/// already loaded on this node.
fn no_clash(module: &Module, loaded: &[Module]) -> Result<(), ConfigError> {
    let clash = |what: String, other: &Module, fix| ConfigError::Clash {
        file: module.file.clone(),
        what,
        other: other.name.clone(),
        other_file: other.file.clone(),
        fix,
    };
    for other in loaded {
        let other_ports = ports(other);
        for (port, role) in ports(module) {
            if other_ports.iter().any(|(p, _)| *p == port) {
                return Err(clash(
                    format!("port {port} ({role})"),
                    other,
                    "give each module its own heartbeat_port and mirrorfs_port range",
                ));
            }
        }
        let other_vips = vips(other);
        for (field, addr) in vips(module) {
            if other_vips.iter().any(|(_, a)| *a == addr) {
                return Err(clash(
                    format!("{field} {addr}"),
                    other,
                    "give each module its own virtual IPs",
                ));
            }
        }
        for (field, path) in dir_paths(module) {
            let overlaps = dir_paths(other)
                .iter()
                .any(|(_, p)| p.starts_with(&path) || path.starts_with(p));
            if overlaps {
                return Err(clash(
                    format!(
                        "directory {} ({field}) or one nested with it",
                        path.display()
                    ),
                    other,
                    "give each module its own directories",
                ));
            }
        }
    }
    Ok(())
}

/// Every virtual IP of a module (a mirror's `vip`, a farm's `farm.vips`),
/// with its field path.
fn vips(module: &Module) -> Vec<(String, std::net::Ipv4Addr)> {
    let mut out: Vec<(String, std::net::Ipv4Addr)> = module
        .vip
        .iter()
        .map(|v| ("vip.addr".to_owned(), v.addr))
        .collect();
    if let Some(farm) = &module.farm {
        out.extend(
            farm.vips
                .iter()
                .enumerate()
                .map(|(i, v)| (format!("farm.vips[{i}].addr"), v.addr)),
        );
    }
    out
}

/// The ports a module listens on, with their role.
fn ports(module: &Module) -> Vec<(u16, String)> {
    let mut ports = vec![(module.heartbeat_port, "heartbeat_port".to_owned())];
    // Validated: mirrorfs_port + i fits in u16 for every dir.
    ports.extend((0..module.dirs.len()).filter_map(|i| {
        let port = u16::try_from(usize::from(module.mirrorfs_port) + i).ok()?;
        Some((port, format!("mirrorfs_port + {i}")))
    }));
    ports
}

/// Every backing and mount path of a module, with its field path.
fn dir_paths(module: &Module) -> Vec<(String, PathBuf)> {
    module
        .dirs
        .iter()
        .enumerate()
        .flat_map(|(i, d)| {
            [
                (format!("dirs[{i}].backing"), d.backing.clone()),
                (format!("dirs[{i}].mount"), d.mount.clone()),
            ]
        })
        .collect()
}

/// The module name of `file`: its stem, `[a-z0-9][a-z0-9_-]{0,31}`.
fn module_name(file: &Path) -> Result<String, ConfigError> {
    let stem = file
        .file_stem()
        .map(|s| s.to_string_lossy().into_owned())
        .unwrap_or_default();
    let valid = (1..=MAX_MODULE_NAME).contains(&stem.len())
        && stem.bytes().enumerate().all(|(i, b)| {
            b.is_ascii_lowercase() || b.is_ascii_digit() || (i > 0 && (b == b'_' || b == b'-'))
        });
    if valid {
        Ok(stem)
    } else {
        Err(ConfigError::ModuleName {
            file: file.to_path_buf(),
            name: stem,
        })
    }
}

/// `path` made absolute against the current directory (symlinks are kept).
fn absolute(path: &Path) -> Result<PathBuf, ConfigError> {
    std::path::absolute(path).map_err(|source| ConfigError::Read {
        path: path.to_path_buf(),
        source,
    })
}

fn read(file: &Path) -> Result<Vec<u8>, ConfigError> {
    fs::read(file).map_err(|source| ConfigError::Read {
        path: file.to_path_buf(),
        source,
    })
}

fn utf8(file: &Path, bytes: &[u8]) -> Result<String, ConfigError> {
    String::from_utf8(bytes.to_vec()).map_err(|err| {
        let offset = err.utf8_error().valid_up_to();
        let before = &bytes[..offset];
        let line = before.iter().filter(|&&b| b == b'\n').count() + 1;
        let col = offset
            - before
                .iter()
                .rposition(|&b| b == b'\n')
                .map_or(0, |p| p + 1)
            + 1;
        ConfigError::NotUtf8 {
            at: Place {
                file: file.to_path_buf(),
                line_col: Some((line, col)),
            },
            offset,
        }
    })
}

/// Parses `src` as RON into `T`, turning `ron`'s error into a
/// [`ConfigError::Syntax`] with its position and a fix.
fn parse<T: DeserializeOwned>(src: &Src<'_>) -> Result<T, ConfigError> {
    ron::Options::default()
        .from_str(src.text)
        .map_err(|err: SpannedError| {
            let (message, fix) = explain(&err.code);
            ConfigError::Syntax {
                at: Place {
                    file: src.file.to_path_buf(),
                    line_col: Some((err.position.line, err.position.col)),
                },
                message,
                fix,
            }
        })
}

/// What went wrong and how to fix it, for a `ron` error.
fn explain(code: &RonError) -> (String, String) {
    const EXAMPLE: &str = "see examples/apache-mirror/ for a complete file";
    match code {
        RonError::NoSuchStructField {
            expected, found, ..
        } => (
            format!("unknown field `{found}`"),
            format!(
                "remove it or correct its spelling; the fields here are: {}",
                expected.join(", ")
            ),
        ),
        RonError::MissingStructField { field, .. } => (
            format!("missing field `{field}`"),
            format!("add `{field}: …` to the enclosing ( … ); {EXAMPLE}"),
        ),
        RonError::DuplicateStructField { field, .. } => (
            format!("field `{field}` is given twice"),
            "keep one of them".to_owned(),
        ),
        RonError::NoSuchEnumVariant {
            expected, found, ..
        } => (
            format!("unknown variant `{found}`"),
            format!("use one of: {}", expected.join(", ")),
        ),
        RonError::ExpectedOption => (
            "expected an optional value".to_owned(),
            "write Some(…) or None".to_owned(),
        ),
        RonError::ExpectedString | RonError::ExpectedStringEnd => (
            code.to_string(),
            "write strings, paths and addresses in double quotes, e.g. \"10.0.0.1\"".to_owned(),
        ),
        RonError::IntegerOutOfBounds => (
            "the number is out of range for this field".to_owned(),
            "ports are 1-65535, prefix lengths 1-32, counts and durations are non-negative"
                .to_owned(),
        ),
        RonError::ExpectedInteger | RonError::ExpectedFloat => (
            "expected a number".to_owned(),
            "write the number without quotes, e.g. 7420".to_owned(),
        ),
        RonError::ExpectedBoolean => (
            "expected true or false".to_owned(),
            "write true or false without quotes".to_owned(),
        ),
        RonError::ExpectedDifferentStructName { found, .. } => (
            format!("unexpected `{found}` where a value was expected"),
            "check that every ( and [ before it is closed and that items are separated by commas"
                .to_owned(),
        ),
        RonError::ExpectedStructLike | RonError::ExpectedNamedStructLike(_) => (
            "expected `(`".to_owned(),
            "write this value as (field: value, …)".to_owned(),
        ),
        RonError::ExpectedComma => (
            code.to_string(),
            "separate fields and list items with commas".to_owned(),
        ),
        RonError::Eof => (
            "the file ends early".to_owned(),
            "close every ( and [ that is opened".to_owned(),
        ),
        RonError::Message(message) => (
            message.clone(),
            "correct this value (addresses are quoted: \"10.0.0.1\", \"10.0.0.1:7420\")".to_owned(),
        ),
        _ => (
            code.to_string(),
            format!("correct the RON syntax at this position; {EXAMPLE}"),
        ),
    }
}
