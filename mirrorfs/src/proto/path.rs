//! Replicated paths: relative, validated names beneath a replica root.
//!
//! Owns the one check every path from the wire passes before any syscall sees it:
//! no leading `/`, no empty, `.` or `..` component, no NUL byte, each component at
//! most 255 bytes and the whole path at most [`MAX_PATH`] bytes. The empty path names
//! the root itself. No I/O.
//!
//! [`MAX_PATH`] is larger than the kernel's `PATH_MAX`: FUSE hands the mount names,
//! not paths, and a local file system accepts trees of any depth, so a path below
//! the root may be longer than one system call takes. Whoever resolves a
//! [`RelPath`] must do it in pieces ([`crate::sys::openat2`] does). Symlink
//! targets are stored by the kernel as they are and keep its limit,
//! [`MAX_SYMLINK_TARGET`].

use std::ffi::{OsStr, OsString};
use std::fmt;
use std::os::unix::ffi::{OsStrExt, OsStringExt};

/// Longest replicated path below the root, in bytes (32 KiB). Beyond it an
/// operation fails with `ENAMETOOLONG` before anything is applied. Eight times
/// Linux `PATH_MAX`; the wire format's 16-bit lengths hold it twice over.
pub const MAX_PATH: usize = 32 * 1024;
/// Longest symlink target in bytes (Linux `PATH_MAX` less the terminating NUL:
/// `symlink(2)` refuses longer ones).
pub const MAX_SYMLINK_TARGET: usize = 4095;
/// Longest single name in bytes (Linux `NAME_MAX`).
pub const MAX_NAME: usize = 255;

/// Why a path or name was rejected.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PathError {
    /// The path starts with `/`: replicated paths are relative to the root.
    #[error("absolute path {0:?}: replicated paths are relative to the replica root")]
    Absolute(String),
    /// A component is `..`, which could climb out of the root.
    #[error("path {0:?} contains '..'")]
    DotDot(String),
    /// A component is empty (`a//b`, trailing `/`) or `.`.
    #[error("path {0:?} has an empty or '.' component")]
    EmptyComponent(String),
    /// A NUL byte, which no Linux name may contain.
    #[error("path {0:?} contains a NUL byte")]
    Nul(String),
    /// A component longer than [`MAX_NAME`].
    #[error("a component of {0:?} is longer than {MAX_NAME} bytes")]
    NameTooLong(String),
    /// The whole path is longer than [`MAX_PATH`].
    #[error("path of {0} bytes is longer than {MAX_PATH} bytes")]
    PathTooLong(usize),
    /// The operation needs a name but was given the root.
    #[error("the operation needs a name, not the root")]
    Root,
}

/// A validated path relative to the replica root (empty = the root).
#[derive(Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub struct RelPath(Vec<u8>);

impl RelPath {
    /// The root directory itself.
    pub fn root() -> Self {
        Self(Vec::new())
    }

    /// Validates `bytes` as a relative path.
    pub fn new(bytes: Vec<u8>) -> Result<Self, PathError> {
        if bytes.len() > MAX_PATH {
            return Err(PathError::PathTooLong(bytes.len()));
        }
        if bytes.is_empty() {
            return Ok(Self(bytes));
        }
        let shown = || String::from_utf8_lossy(&bytes).into_owned();
        if bytes[0] == b'/' {
            return Err(PathError::Absolute(shown()));
        }
        if bytes.contains(&0) {
            return Err(PathError::Nul(shown()));
        }
        for c in bytes.split(|b| *b == b'/') {
            match c {
                b"" | b"." => return Err(PathError::EmptyComponent(shown())),
                b".." => return Err(PathError::DotDot(shown())),
                c if c.len() > MAX_NAME => return Err(PathError::NameTooLong(shown())),
                _ => {}
            }
        }
        Ok(Self(bytes))
    }

    /// `self/name`, with `name` checked by [`check_name`].
    pub fn join(&self, name: &OsStr) -> Result<Self, PathError> {
        check_name(name)?;
        let mut v = Vec::with_capacity(self.0.len() + 1 + name.len());
        v.extend_from_slice(&self.0);
        if !v.is_empty() {
            v.push(b'/');
        }
        v.extend_from_slice(name.as_bytes());
        if v.len() > MAX_PATH {
            return Err(PathError::PathTooLong(v.len()));
        }
        Ok(Self(v))
    }

    /// Splits into the parent directory and the last name; `None` for the root.
    pub fn split(&self) -> Option<(Self, &OsStr)> {
        if self.0.is_empty() {
            return None;
        }
        Some(match self.0.iter().rposition(|b| *b == b'/') {
            Some(i) => (
                Self(self.0[..i].to_vec()),
                OsStr::from_bytes(&self.0[i + 1..]),
            ),
            None => (Self::root(), OsStr::from_bytes(&self.0)),
        })
    }

    /// The proper ancestors, nearest first, ending with the root.
    pub fn ancestors(&self) -> impl Iterator<Item = Self> + '_ {
        let b = &self.0;
        let cuts = b
            .iter()
            .enumerate()
            .rev()
            .filter(|(_, c)| **c == b'/')
            .map(|(i, _)| i);
        let root = (!b.is_empty()).then_some(0);
        cuts.chain(root).map(move |i| Self(b[..i].to_vec()))
    }

    /// Bounds of the paths strictly below `self` in the sort order, for
    /// range queries on ordered sets of paths (`None` for the root: all of
    /// them). The bounds themselves are not valid paths and name nothing.
    pub fn below(&self) -> Option<(Self, Self)> {
        if self.0.is_empty() {
            return None;
        }
        let bound = |last: u8| {
            let mut v = self.0.clone();
            v.push(last);
            Self(v)
        };
        Some((bound(b'/'), bound(b'/' + 1)))
    }

    /// The raw bytes (no leading `/`, no NUL).
    pub fn as_bytes(&self) -> &[u8] {
        &self.0
    }

    /// True for the root.
    pub fn is_root(&self) -> bool {
        self.0.is_empty()
    }

    /// As an `OsStr` (`"."` for the root, so it can be handed to `*at` calls).
    pub fn as_os_str(&self) -> &OsStr {
        if self.0.is_empty() {
            OsStr::new(".")
        } else {
            OsStr::from_bytes(&self.0)
        }
    }

    /// Converts into an `OsString` (the root becomes `"."`).
    pub fn into_os_string(self) -> OsString {
        if self.0.is_empty() {
            OsString::from(".")
        } else {
            OsString::from_vec(self.0)
        }
    }
}

impl fmt::Debug for RelPath {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:?}", String::from_utf8_lossy(&self.0))
    }
}

impl fmt::Display for RelPath {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.0.is_empty() {
            f.write_str(".")
        } else {
            f.write_str(&String::from_utf8_lossy(&self.0))
        }
    }
}

/// Checks one name component: not empty, `.` or `..`, no `/` or NUL, at most
/// [`MAX_NAME`] bytes.
pub fn check_name(name: &OsStr) -> Result<(), PathError> {
    let b = name.as_bytes();
    let shown = || name.to_string_lossy().into_owned();
    match b {
        b"" | b"." => Err(PathError::EmptyComponent(shown())),
        b".." => Err(PathError::DotDot(shown())),
        _ if b.len() > MAX_NAME => Err(PathError::NameTooLong(shown())),
        _ if b.contains(&0) => Err(PathError::Nul(shown())),
        _ if b.contains(&b'/') => Err(PathError::EmptyComponent(shown())),
        _ => Ok(()),
    }
}

/// A path of exactly `len` bytes made of 200-byte names (the last one
/// shorter), for tests of deep trees.
#[cfg(test)]
pub(crate) fn deep_path_bytes(len: usize) -> Vec<u8> {
    let mut v = Vec::with_capacity(len);
    loop {
        let left = len - v.len();
        if left <= 200 {
            v.extend(std::iter::repeat_n(b'n', left));
            return v;
        }
        // Leave at least "/x" after this name.
        v.extend(std::iter::repeat_n(b'n', 200.min(left - 2)));
        v.push(b'/');
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accepts_plain_relative_paths() {
        for p in ["", "a", "a/b", "dir/.hidden", "a/b...c/d"] {
            RelPath::new(p.as_bytes().to_vec()).unwrap();
        }
    }

    type Case = (&'static [u8], fn(&PathError) -> bool);

    #[test]
    fn rejects_hostile_paths() {
        let cases: &[Case] = &[
            (b"/etc/passwd", |e| matches!(e, PathError::Absolute(_))),
            (b"..", |e| matches!(e, PathError::DotDot(_))),
            (b"a/../../b", |e| matches!(e, PathError::DotDot(_))),
            (b"a//b", |e| matches!(e, PathError::EmptyComponent(_))),
            (b"a/./b", |e| matches!(e, PathError::EmptyComponent(_))),
            (b"a/", |e| matches!(e, PathError::EmptyComponent(_))),
            (b"a\0b", |e| matches!(e, PathError::Nul(_))),
        ];
        for (p, want) in cases {
            let e = RelPath::new(p.to_vec()).unwrap_err();
            assert!(want(&e), "{p:?} gave {e:?}");
        }
        let long = vec![b'x'; 256];
        assert!(matches!(RelPath::new(long), Err(PathError::NameTooLong(_))));
        let huge = [b"ab/".repeat(MAX_PATH / 3), b"cde".to_vec()].concat();
        assert_eq!(huge.len(), MAX_PATH + 1);
        assert_eq!(
            RelPath::new(huge),
            Err(PathError::PathTooLong(MAX_PATH + 1))
        );
    }

    #[test]
    fn paths_longer_than_path_max_up_to_the_bound() {
        // Longer than the kernel takes in one call, still a valid path.
        for len in [4096, 10_000, MAX_PATH] {
            let p = RelPath::new(deep_path_bytes(len)).unwrap();
            assert_eq!(p.as_bytes().len(), len);
        }
        assert_eq!(
            RelPath::new(deep_path_bytes(MAX_PATH + 1)),
            Err(PathError::PathTooLong(MAX_PATH + 1))
        );
        // Every other check still holds at any length.
        let mut dotdot = deep_path_bytes(10_000);
        dotdot.extend_from_slice(b"/../x");
        assert!(matches!(RelPath::new(dotdot), Err(PathError::DotDot(_))));
        let mut long_name = deep_path_bytes(10_000);
        long_name.extend_from_slice(&[b'/'; 1]);
        long_name.extend(std::iter::repeat_n(b'x', MAX_NAME + 1));
        assert!(matches!(
            RelPath::new(long_name),
            Err(PathError::NameTooLong(_))
        ));
        // join stops at the bound, counting the separator.
        let almost = RelPath::new(deep_path_bytes(MAX_PATH - 2)).unwrap();
        assert!(almost.join(OsStr::new("a")).is_ok());
        assert_eq!(
            almost.join(OsStr::new("ab")),
            Err(PathError::PathTooLong(MAX_PATH + 1))
        );
    }

    #[test]
    fn join_and_split_round_trip() {
        let p = RelPath::root().join(OsStr::new("a")).unwrap();
        let p = p.join(OsStr::new("b")).unwrap();
        assert_eq!(p.as_bytes(), b"a/b");
        let (parent, name) = p.split().unwrap();
        assert_eq!(parent.as_bytes(), b"a");
        assert_eq!(name, "b");
        let (parent, name) = parent.split().unwrap();
        assert!(parent.is_root());
        assert_eq!(name, "a");
        assert!(RelPath::root().split().is_none());
        assert!(RelPath::root().join(OsStr::new("..")).is_err());
        assert!(RelPath::root().join(OsStr::new("a/b")).is_err());
    }
}
