//! [`InodeTable`]: the primary's map from FUSE inode numbers to backing inodes.
//!
//! Owns, per inode the kernel knows: the backing `(dev, ino)`, a cached
//! `O_PATH` descriptor, for a regular file read through the overlay a cached
//! read-only descriptor (shared by its read-only opens, so that an open of a
//! small file costs no `open(2)` and no `close(2)` in mirrorfs: Apache's
//! GETs), the kernel's lookup count (honouring `forget`), and every name it
//! is known under, which is what replication sends to the secondary.
//! Descriptors are a bounded cache (the kernel may know far more
//! inodes than a process may hold descriptors), filled only when an
//! operation needs one (a lookup or a directory listing records the inode
//! from its `fstatat` alone): a missing one is opened from its parent's
//! descriptor by its one name component with `openat2(RESOLVE_BENEATH |
//! RESOLVE_NO_SYMLINKS)` (ancestors first, each cached on the way) and
//! checked to be the same `(dev, ino)`, so nothing outside the backing root is
//! reached and a stale name gives `ESTALE`, never another file. FUSE inode
//! numbers only go up and are never reused. Must not do any replication
//! itself.

use std::collections::HashMap;
use std::ffi::{OsStr, OsString};
use std::fs::File;
use std::io;
use std::os::fd::{AsFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::sync::{Arc, Mutex, MutexGuard};

use crate::proto::path::{PathError, RelPath, MAX_PATH};
use crate::sys;

/// The FUSE inode number of the mount's root.
pub const ROOT_INO: u64 = 1;

/// A backing inode's identity.
pub type Key = (u64, u64);

#[derive(Debug)]
struct Node {
    key: Key,
    /// Cached descriptor (`None`: evicted, reopen from the path).
    fd: Option<Arc<OwnedFd>>,
    /// Cached read-only descriptor of a regular file (only beside `fd`,
    /// evicted with it).
    reader: Option<Arc<File>>,
    /// Used since the last eviction sweep (clock algorithm).
    used: bool,
    /// Lookups the kernel holds (root: never forgotten).
    lookups: u64,
    /// Known names as (parent inode, name); directories have exactly one.
    names: Vec<(u64, OsString)>,
}

#[derive(Debug)]
struct Inner {
    nodes: HashMap<u64, Node>,
    by_key: HashMap<Key, u64>,
    next: u64,
    /// Descriptors cached now.
    cached: usize,
}

/// The inode table (internally locked; every method is short).
#[derive(Debug)]
pub struct InodeTable {
    inner: Mutex<Inner>,
    /// Most descriptors cached at once.
    budget: usize,
}

impl InodeTable {
    /// A table holding only the root, backed by `root_fd` (an O_PATH
    /// directory), caching at most `budget` descriptors.
    pub fn new(root_fd: OwnedFd, root_key: Key, budget: usize) -> Self {
        let root = Arc::new(root_fd);
        let mut inner = Inner {
            nodes: HashMap::new(),
            by_key: HashMap::new(),
            next: ROOT_INO + 1,
            cached: 0,
        };
        inner.nodes.insert(
            ROOT_INO,
            Node {
                key: root_key,
                fd: Some(root),
                reader: None,
                used: true,
                lookups: 1,
                names: Vec::new(),
            },
        );
        inner.by_key.insert(root_key, ROOT_INO);
        Self {
            inner: Mutex::new(inner),
            budget: budget.max(64),
        }
    }

    /// Drops cached descriptors (clock sweep) until there is room for one
    /// more. The root and unlinked inodes (no path to reopen) are kept.
    fn make_room(&self, t: &mut Inner) {
        if t.cached < self.budget {
            return;
        }
        let target = self.budget * 3 / 4;
        for _ in 0..2 {
            for (ino, node) in t.nodes.iter_mut() {
                if t.cached <= target {
                    return;
                }
                if *ino == ROOT_INO || node.fd.is_none() || node.names.is_empty() {
                    continue;
                }
                if node.used {
                    node.used = false;
                } else {
                    node.fd = None;
                    t.cached -= 1 + usize::from(node.reader.take().is_some());
                }
            }
        }
    }

    fn lock(&self) -> MutexGuard<'_, Inner> {
        // A panic while holding this lock leaves plain maps behind, still usable.
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The O_PATH descriptor of `ino` (`ESTALE` if the kernel forgot it, or
    /// if its name no longer leads to the same inode; `ENOENT` if it has no
    /// name left and no descriptor).
    pub fn fd(&self, ino: u64) -> io::Result<Arc<OwnedFd>> {
        // The uncached inodes from `ino` up to the first cached ancestor
        // (the root always is), nearest first.
        let (mut fd, chain) = {
            let mut t = self.lock();
            let mut chain: Vec<(u64, Key, OsString)> = Vec::new();
            let mut cur = ino;
            loop {
                let node = t
                    .nodes
                    .get_mut(&cur)
                    .ok_or_else(|| io::Error::from_raw_os_error(libc::ESTALE))?;
                node.used = true;
                if let Some(fd) = &node.fd {
                    break (fd.clone(), chain);
                }
                let (parent, name) = node
                    .names
                    .first()
                    .ok_or_else(|| io::Error::from_raw_os_error(libc::ENOENT))?;
                chain.push((cur, node.key, name.clone()));
                cur = *parent;
                // Names form a tree rooted at ROOT_INO; this also ends a cycle.
                if chain.len() > MAX_PATH / 2 {
                    return Err(io::Error::from_raw_os_error(libc::ENAMETOOLONG));
                }
            }
        };
        for (ino, key, name) in chain.into_iter().rev() {
            // One name component (checked at the boundary), beneath its parent.
            let child = sys::openat2(
                fd.as_fd(),
                &name,
                libc::O_PATH | libc::O_NOFOLLOW,
                0,
                sys::RESOLVE_STRICT,
            )?;
            let st = sys::fstat(child.as_fd())?;
            if (st.st_dev, st.st_ino) != key {
                return Err(io::Error::from_raw_os_error(libc::ESTALE));
            }
            fd = self.cache_fd(ino, Arc::new(child));
        }
        Ok(fd)
    }

    /// Caches `fd` for `ino` unless another thread did first (whose
    /// descriptor is returned then).
    fn cache_fd(&self, ino: u64, fd: Arc<OwnedFd>) -> Arc<OwnedFd> {
        let mut t = self.lock();
        self.make_room(&mut t);
        let Some(node) = t.nodes.get_mut(&ino) else {
            return fd;
        };
        if let Some(old) = &node.fd {
            return old.clone();
        }
        node.fd = Some(fd.clone());
        t.cached += 1;
        fd
    }

    /// The cached read-only descriptor of `ino`, a regular file, or one
    /// `open` makes (from the inode's O_PATH descriptor, which the caller
    /// got from [`fd`](Self::fd)) and that is cached beside it. Every
    /// read-only open of the file shares it: reads are positional, so no
    /// open needs a descriptor of its own.
    pub fn reader(
        &self,
        ino: u64,
        open: impl FnOnce() -> io::Result<File>,
    ) -> io::Result<Arc<File>> {
        if let Some(r) = self.lock().nodes.get(&ino).and_then(|n| n.reader.clone()) {
            return Ok(r);
        }
        let file = Arc::new(open()?);
        let mut t = self.lock();
        self.make_room(&mut t);
        let Some(node) = t.nodes.get_mut(&ino) else {
            return Ok(file);
        };
        // Only beside the O_PATH descriptor (evicted meanwhile: not cached).
        if node.fd.is_none() {
            return Ok(file);
        }
        if let Some(old) = &node.reader {
            return Ok(old.clone());
        }
        node.reader = Some(file.clone());
        t.cached += 1;
        Ok(file)
    }

    /// A lookup of a name the table already knows for `key`: counts it and
    /// returns the inode, or `None` when the name (or inode) is new.
    pub fn lookup_known(&self, parent: u64, name: &OsStr, key: Key) -> Option<u64> {
        let mut t = self.lock();
        let ino = *t.by_key.get(&key)?;
        let node = t.nodes.get_mut(&ino).expect("by_key and nodes agree");
        if node.names.iter().any(|(p, n)| *p == parent && n == name) {
            node.lookups += 1;
            return Some(ino);
        }
        None
    }

    /// Records a lookup of `parent/name` that found `key`, with its O_PATH
    /// descriptor if the caller has one (else it is opened when first
    /// needed). A new number is given when the inode is new, or when its
    /// number was reused by the backing filesystem: `alive` says whether an
    /// existing node's inode still has links. Returns the FUSE inode number.
    pub fn lookup(
        &self,
        parent: u64,
        name: &OsStr,
        key: Key,
        fd: Option<OwnedFd>,
        alive: impl FnOnce(&OwnedFd) -> bool,
    ) -> u64 {
        let mut t = self.lock();
        if let Some(&ino) = t.by_key.get(&key) {
            let node = t.nodes.get_mut(&ino).expect("by_key and nodes agree");
            // With no cached descriptor, a node that still has names was never
            // unlinked through the mount: it is the same inode.
            let same = match &node.fd {
                Some(old) => alive(old),
                None => !node.names.is_empty(),
            };
            if same {
                node.lookups += 1;
                node.used = true;
                if !node.names.iter().any(|(p, n)| *p == parent && n == name) {
                    node.names.push((parent, name.to_owned()));
                }
                if let (None, Some(fd)) = (&node.fd, fd) {
                    node.fd = Some(Arc::new(fd));
                    t.cached += 1;
                    self.make_room(&mut t);
                }
                return ino;
            }
            // The backing inode number was freed and reused: the old node stays
            // for the kernel to forget, the new file gets a new number.
            t.by_key.remove(&key);
        }
        let ino = t.next;
        t.next += 1;
        self.make_room(&mut t);
        if fd.is_some() {
            t.cached += 1;
        }
        t.nodes.insert(
            ino,
            Node {
                key,
                fd: fd.map(Arc::new),
                reader: None,
                used: true,
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

    /// The kernel dropped `n` lookups of `ino`; true when that was its
    /// last (the inode is gone from the table).
    pub fn forget(&self, ino: u64, n: u64) -> bool {
        if ino == ROOT_INO {
            return false;
        }
        let mut t = self.lock();
        let Some(node) = t.nodes.get_mut(&ino) else {
            return false;
        };
        node.lookups = node.lookups.saturating_sub(n);
        if node.lookups != 0 {
            return false;
        }
        let key = node.key;
        if let Some(n) = t.nodes.remove(&ino) {
            t.cached -= usize::from(n.fd.is_some()) + usize::from(n.reader.is_some());
        }
        if t.by_key.get(&key) == Some(&ino) {
            t.by_key.remove(&key);
        }
        true
    }

    /// The path of `ino` beneath the root, following its first known name.
    /// `ENOENT` when it has no name left (unlinked while open).
    pub fn path(&self, ino: u64) -> io::Result<RelPath> {
        Self::path_locked(&self.lock(), ino)
    }

    fn path_locked(t: &Inner, ino: u64) -> io::Result<RelPath> {
        let too_long = || io::Error::from_raw_os_error(libc::ENAMETOOLONG);
        let mut parts: Vec<&OsStr> = Vec::new();
        let mut len = 0;
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
            len += name.len() + 1;
            cur = *parent;
            // Also ends a cycle (names form a tree rooted at ROOT_INO, and
            // every name takes at least one byte).
            if len > MAX_PATH + 1 {
                return Err(too_long());
            }
        }
        // Built in one piece: joining name by name would copy the path once
        // per level.
        let mut bytes = Vec::with_capacity(len);
        for name in parts.iter().rev() {
            if !bytes.is_empty() {
                bytes.push(b'/');
            }
            bytes.extend_from_slice(name.as_bytes());
        }
        RelPath::new(bytes).map_err(|e| match e {
            PathError::PathTooLong(_) => too_long(),
            _ => io::Error::from_raw_os_error(libc::EINVAL),
        })
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

    /// Descriptors cached now (bounded by the budget).
    pub fn cached(&self) -> usize {
        self.lock().cached
    }

    /// Never true: the root is always there (clippy's `len` companion).
    pub fn is_empty(&self) -> bool {
        false
    }
}
