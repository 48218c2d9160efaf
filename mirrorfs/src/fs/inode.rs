//! [`InodeTable`]: the primary's map from FUSE inode numbers to backing inodes.
//!
//! Owns, per inode the kernel knows: the backing `(dev, ino)`, an `O_PATH`
//! descriptor (so local calls never resolve a path again), the kernel's lookup
//! count (honouring `forget`), and every name it is known under, which is what
//! replication sends to the secondary. FUSE inode numbers only go up and are
//! never reused. Must not do any replication itself.

use std::collections::HashMap;
use std::ffi::{OsStr, OsString};
use std::io;
use std::os::fd::OwnedFd;
use std::sync::{Arc, Mutex, MutexGuard};

use crate::proto::path::RelPath;

/// The FUSE inode number of the mount's root.
pub const ROOT_INO: u64 = 1;

/// A backing inode's identity.
pub type Key = (u64, u64);

#[derive(Debug)]
struct Node {
    key: Key,
    fd: Arc<OwnedFd>,
    /// Lookups the kernel holds (root: never forgotten).
    lookups: u64,
    /// Known names as (parent inode, name); directories have exactly one.
    names: Vec<(u64, OsString)>,
}

#[derive(Debug, Default)]
struct Inner {
    nodes: HashMap<u64, Node>,
    by_key: HashMap<Key, u64>,
    next: u64,
}

/// The inode table (internally locked; every method is short).
#[derive(Debug)]
pub struct InodeTable {
    inner: Mutex<Inner>,
}

impl InodeTable {
    /// A table holding only the root, backed by `root_fd` (an O_PATH directory).
    pub fn new(root_fd: OwnedFd, root_key: Key) -> Self {
        let mut inner = Inner {
            next: ROOT_INO + 1,
            ..Inner::default()
        };
        inner.nodes.insert(
            ROOT_INO,
            Node {
                key: root_key,
                fd: Arc::new(root_fd),
                lookups: 1,
                names: Vec::new(),
            },
        );
        inner.by_key.insert(root_key, ROOT_INO);
        Self {
            inner: Mutex::new(inner),
        }
    }

    fn lock(&self) -> MutexGuard<'_, Inner> {
        // A panic while holding this lock leaves plain maps behind, still usable.
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The O_PATH descriptor of `ino` (`ESTALE` if the kernel forgot it).
    pub fn fd(&self, ino: u64) -> io::Result<Arc<OwnedFd>> {
        self.lock()
            .nodes
            .get(&ino)
            .map(|n| n.fd.clone())
            .ok_or_else(|| io::Error::from_raw_os_error(libc::ESTALE))
    }

    /// Records a lookup of `parent/name` that found `key`. `open` makes the
    /// O_PATH descriptor when the inode is new (or its number was reused by the
    /// backing filesystem: `alive` says whether an existing node's inode still
    /// has links). Returns the FUSE inode number.
    pub fn lookup(
        &self,
        parent: u64,
        name: &OsStr,
        key: Key,
        fd: OwnedFd,
        alive: impl FnOnce(&OwnedFd) -> bool,
    ) -> u64 {
        let mut t = self.lock();
        if let Some(&ino) = t.by_key.get(&key) {
            let node = t.nodes.get_mut(&ino).expect("by_key and nodes agree");
            if alive(&node.fd) {
                node.lookups += 1;
                if !node.names.iter().any(|(p, n)| *p == parent && n == name) {
                    node.names.push((parent, name.to_owned()));
                }
                return ino;
            }
            // The backing inode number was freed and reused: the old node stays
            // for the kernel to forget, the new file gets a new number.
            t.by_key.remove(&key);
        }
        let ino = t.next;
        t.next += 1;
        t.nodes.insert(
            ino,
            Node {
                key,
                fd: Arc::new(fd),
                lookups: 1,
                names: vec![(parent, name.to_owned())],
            },
        );
        t.by_key.insert(key, ino);
        ino
    }

    /// The FUSE inode of a backing inode, if the kernel knows it.
    pub fn by_key(&self, key: Key) -> Option<u64> {
        self.lock().by_key.get(&key).copied()
    }

    /// The kernel dropped `n` lookups of `ino`.
    pub fn forget(&self, ino: u64, n: u64) {
        if ino == ROOT_INO {
            return;
        }
        let mut t = self.lock();
        let Some(node) = t.nodes.get_mut(&ino) else {
            return;
        };
        node.lookups = node.lookups.saturating_sub(n);
        if node.lookups == 0 {
            let key = node.key;
            t.nodes.remove(&ino);
            if t.by_key.get(&key) == Some(&ino) {
                t.by_key.remove(&key);
            }
        }
    }

    /// The path of `ino` beneath the root, following its first known name.
    /// `ENOENT` when it has no name left (unlinked while open).
    pub fn path(&self, ino: u64) -> io::Result<RelPath> {
        let t = self.lock();
        let mut parts: Vec<&OsStr> = Vec::new();
        let mut cur = ino;
        while cur != ROOT_INO {
            let node = t
                .nodes
                .get(&cur)
                .ok_or_else(|| io::Error::from_raw_os_error(libc::ESTALE))?;
            let (parent, name) = node
                .names
                .first()
                .ok_or_else(|| io::Error::from_raw_os_error(libc::ENOENT))?;
            parts.push(name);
            cur = *parent;
            if parts.len() > 2048 {
                // Names form a tree rooted at ROOT_INO; a longer chain is a cycle.
                return Err(io::Error::from_raw_os_error(libc::ELOOP));
            }
        }
        let mut path = RelPath::root();
        for name in parts.iter().rev() {
            path = path
                .join(name)
                .map_err(|_| io::Error::from_raw_os_error(libc::ENAMETOOLONG))?;
        }
        Ok(path)
    }

    /// The parent directory of `ino` by its first known name.
    pub fn parent(&self, ino: u64) -> Option<u64> {
        self.lock().nodes.get(&ino)?.names.first().map(|(p, _)| *p)
    }

    /// `parent/name` was removed (unlink, rmdir, or replaced by a rename).
    pub fn remove_name(&self, key: Key, parent: u64, name: &OsStr) {
        let mut t = self.lock();
        if let Some(ino) = t.by_key.get(&key).copied() {
            let node = t.nodes.get_mut(&ino).expect("by_key and nodes agree");
            node.names.retain(|(p, n)| !(*p == parent && n == name));
        }
    }

    /// `key` was renamed from `parent/name` to `newparent/newname`.
    pub fn rename(&self, key: Key, parent: u64, name: &OsStr, newparent: u64, newname: &OsStr) {
        let mut t = self.lock();
        if let Some(ino) = t.by_key.get(&key).copied() {
            let node = t.nodes.get_mut(&ino).expect("by_key and nodes agree");
            node.names.retain(|(p, n)| !(*p == parent && n == name));
            if !node
                .names
                .iter()
                .any(|(p, n)| *p == newparent && n == newname)
            {
                node.names.insert(0, (newparent, newname.to_owned()));
            }
        }
    }

    /// Inodes currently known to the kernel (for status and tests).
    pub fn len(&self) -> usize {
        self.lock().nodes.len()
    }

    /// Never true: the root is always there (clippy's `len` companion).
    pub fn is_empty(&self) -> bool {
        false
    }
}
