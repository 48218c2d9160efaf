//! Which extended attributes are part of the replicated data: the one
//! definition that the secondary's apply, the resync's comparison, `verify`
//! and the primary's live `setxattr`/`removexattr` all use, so that "equal"
//! means the same thing everywhere.
//!
//! Replicated (they belong to the file, wherever it lives):
//! - `user.*` and `trusted.*`;
//! - `security.capability` (file capabilities are metadata of the file, as
//!   setuid bits are: replicated for POSIX fidelity; `serve` warns when the
//!   replica's file system lets them act, see `net::server`);
//! - `system.posix_acl_access` and `system.posix_acl_default` (ACLs).
//!
//! Not replicated: everything else, in particular the labels each host's
//! security policy sets for itself (`security.selinux`, `security.apparmor`,
//! `security.SMACK64*`, `security.ima`, `security.evm`). A difference in them
//! is not a difference of the data: the resync never sends them and `verify`
//! does not report them.
//!
//! Owns also the reading of attributes through a descriptor (any kind, `O_PATH`
//! included: symlinks, devices and FIFOs are never opened for real).

use std::ffi::OsStr;
use std::io;
use std::os::fd::BorrowedFd;
use std::os::unix::ffi::OsStrExt;

use xxhash_rust::xxh3::xxh3_64;

use crate::sys;

/// True when the extended attribute `name` (with its namespace) is part of
/// the replicated data.
pub fn is_replicated(name: &[u8]) -> bool {
    name.starts_with(b"user.")
        || name.starts_with(b"trusted.")
        || name == b"security.capability"
        || name == b"system.posix_acl_access"
        || name == b"system.posix_acl_default"
}

/// The names of every extended attribute of the inode `fd` holds, sorted;
/// empty where its file system has none (`ENOTSUP`).
pub fn names(fd: BorrowedFd<'_>) -> io::Result<Vec<Vec<u8>>> {
    loop {
        let size = match sys::listxattr_fd(fd, &mut []) {
            Ok(0) => return Ok(Vec::new()),
            Ok(n) => n,
            Err(e) if e.raw_os_error() == Some(libc::ENOTSUP) => return Ok(Vec::new()),
            Err(e) => return Err(e),
        };
        let mut buf = vec![0u8; size];
        match sys::listxattr_fd(fd, &mut buf) {
            Ok(n) => {
                let mut names: Vec<Vec<u8>> = buf[..n]
                    .split(|b| *b == 0)
                    .filter(|s| !s.is_empty())
                    .map(<[u8]>::to_vec)
                    .collect();
                names.sort_unstable();
                return Ok(names);
            }
            // The list grew between the two calls: ask for its size again.
            Err(e) if e.raw_os_error() == Some(libc::ERANGE) => {}
            Err(e) => return Err(e),
        }
    }
}

/// The value of the attribute `name` of the inode `fd` holds; `None` when it
/// does not exist (any more).
pub fn value(fd: BorrowedFd<'_>, name: &[u8]) -> io::Result<Option<Vec<u8>>> {
    let n = OsStr::from_bytes(name);
    loop {
        let size = match sys::getxattr_fd(fd, n, &mut []) {
            Ok(size) => size,
            Err(e) if e.raw_os_error() == Some(libc::ENODATA) => return Ok(None),
            Err(e) => return Err(e),
        };
        let mut v = vec![0u8; size];
        match sys::getxattr_fd(fd, n, &mut v) {
            Ok(len) => {
                v.truncate(len);
                return Ok(Some(v));
            }
            Err(e) if e.raw_os_error() == Some(libc::ENODATA) => return Ok(None),
            // The value grew between the two calls: ask for its size again.
            Err(e) if e.raw_os_error() == Some(libc::ERANGE) => {}
            Err(e) => return Err(e),
        }
    }
}

/// The replicated extended attributes of the inode `fd` holds, as (name,
/// value), sorted by name.
pub fn read(fd: BorrowedFd<'_>) -> io::Result<Vec<(Vec<u8>, Vec<u8>)>> {
    let mut attrs = Vec::new();
    for name in names(fd)? {
        if !is_replicated(&name) {
            continue;
        }
        if let Some(v) = value(fd, &name)? {
            attrs.push((name, v));
        }
    }
    Ok(attrs)
}

/// A digest of [`read`]'s result: equal on both sides when the replicated
/// extended attributes are.
pub fn digest(attrs: &[(Vec<u8>, Vec<u8>)]) -> u64 {
    let mut b = Vec::new();
    for (name, value) in attrs {
        b.extend_from_slice(&(name.len() as u64).to_be_bytes());
        b.extend_from_slice(name);
        b.extend_from_slice(&(value.len() as u64).to_be_bytes());
        b.extend_from_slice(value);
    }
    xxh3_64(&b)
}

#[cfg(test)]
mod tests {
    use std::os::fd::AsFd;

    use super::*;

    #[test]
    fn the_definition_keeps_data_and_leaves_host_labels() {
        for name in [
            &b"user.color"[..],
            b"trusted.overlay.x",
            b"security.capability",
            b"system.posix_acl_access",
            b"system.posix_acl_default",
        ] {
            assert!(is_replicated(name), "{}", name.escape_ascii());
        }
        for name in [
            &b"security.selinux"[..],
            b"security.apparmor",
            b"security.SMACK64",
            b"security.ima",
            b"security.evm",
            b"security.capability.x",
            b"system.posix_acl_accessx",
            b"system.nfs4_acl",
            b"user",
            b"other.x",
        ] {
            assert!(!is_replicated(name), "{}", name.escape_ascii());
        }
    }

    #[test]
    fn read_returns_only_replicated_attributes_sorted() {
        let dir = tempfile::Builder::new()
            .prefix("mfs-xattr")
            .tempdir_in("/var/tmp")
            .unwrap();
        let f = std::fs::File::create(dir.path().join("f")).unwrap();
        let fd = f.as_fd();
        sys::setxattr_fd(fd, OsStr::new("user.b"), b"2", 0).unwrap();
        sys::setxattr_fd(fd, OsStr::new("user.a"), b"1", 0).unwrap();
        // A host label: settable by root where no security module claims it.
        let label = sys::setxattr_fd(fd, OsStr::new("security.selinux"), b"x_t", 0).is_ok();
        let attrs = read(fd).unwrap();
        assert_eq!(
            attrs,
            vec![
                (b"user.a".to_vec(), b"1".to_vec()),
                (b"user.b".to_vec(), b"2".to_vec())
            ]
        );
        if label {
            assert!(names(fd).unwrap().contains(&b"security.selinux".to_vec()));
        }
        assert_eq!(value(fd, b"user.none").unwrap(), None);
        assert_ne!(digest(&attrs), digest(&attrs[..1]));
    }
}
