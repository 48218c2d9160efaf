//! An independent comparison of two directory trees, so that the tests do not
//! judge `mirrorfs verify` by itself: type, permission bits, owner, link count,
//! size and bytes, symlink target, `user.*` xattrs, regular-file mtime (to the
//! second, ±1 s: the replica applies writes a moment later) and hard-link groups.
//! Top-level `.mirrorfs*` entries (mirrorfs's own metadata) are skipped.

use std::collections::{BTreeMap, BTreeSet};
use std::fs::{self, File};
use std::io::{self, Read};
use std::os::unix::fs::{FileTypeExt, MetadataExt};
use std::path::{Path, PathBuf};

use anyhow::{Context, Result};

use super::sys;

/// One line per difference between the trees at `a` and `b`; empty if identical.
pub fn diff(a: &Path, b: &Path) -> Result<Vec<String>> {
    let (ta, tb) = (scan(a)?, scan(b)?);
    let mut diffs = Vec::new();
    let names: BTreeSet<&PathBuf> = ta.entries.keys().chain(tb.entries.keys()).collect();
    for rel in names {
        let shown = rel.display();
        let (ea, eb) = match (ta.entries.get(rel), tb.entries.get(rel)) {
            (Some(ea), Some(eb)) => (ea, eb),
            (Some(_), None) => {
                diffs.push(format!("{shown}: only in {}", a.display()));
                continue;
            }
            (None, _) => {
                diffs.push(format!("{shown}: only in {}", b.display()));
                continue;
            }
        };
        for (field, va, vb) in ea.fields(eb) {
            diffs.push(format!("{shown}: {field} {va} vs {vb}"));
        }
        if ea.kind == "file" && ea.size == eb.size && !same_bytes(&a.join(rel), &b.join(rel))? {
            diffs.push(format!("{shown}: contents differ"));
        }
    }
    if ta.link_groups != tb.link_groups {
        diffs.push(format!(
            "hard-link groups differ: {:?} vs {:?}",
            ta.link_groups, tb.link_groups
        ));
    }
    Ok(diffs)
}

struct Tree {
    entries: BTreeMap<PathBuf, Entry>,
    /// Sets of paths that share an inode (regular files with more than one name).
    link_groups: BTreeSet<Vec<PathBuf>>,
}

#[derive(Debug)]
struct Entry {
    kind: &'static str,
    mode: u32,
    uid: u32,
    gid: u32,
    /// `None` for directories, whose link count depends on subdirectories only.
    nlink: Option<u64>,
    size: u64,
    mtime: Option<i64>,
    target: Option<PathBuf>,
    xattrs: Vec<(String, Vec<u8>)>,
}

impl Entry {
    /// The differing fields as `(name, this, other)`; bytes are compared apart.
    fn fields(&self, o: &Self) -> Vec<(&'static str, String, String)> {
        let mut out = Vec::new();
        let mut cmp = |name, a: String, b: String| {
            if a != b {
                out.push((name, a, b));
            }
        };
        cmp("type", self.kind.into(), o.kind.into());
        cmp("mode", format!("{:o}", self.mode), format!("{:o}", o.mode));
        cmp("uid", self.uid.to_string(), o.uid.to_string());
        cmp("gid", self.gid.to_string(), o.gid.to_string());
        cmp(
            "nlink",
            format!("{:?}", self.nlink),
            format!("{:?}", o.nlink),
        );
        if self.kind == "file" {
            cmp("size", self.size.to_string(), o.size.to_string());
        }
        cmp(
            "target",
            format!("{:?}", self.target),
            format!("{:?}", o.target),
        );
        cmp(
            "xattrs",
            format!("{:?}", self.xattrs),
            format!("{:?}", o.xattrs),
        );
        if let (Some(ma), Some(mb)) = (self.mtime, o.mtime) {
            if (ma - mb).abs() > 1 {
                out.push(("mtime", ma.to_string(), mb.to_string()));
            }
        }
        out
    }
}

fn scan(root: &Path) -> Result<Tree> {
    let mut entries = BTreeMap::new();
    let mut inodes: BTreeMap<u64, Vec<PathBuf>> = BTreeMap::new();
    let mut stack = vec![PathBuf::new()];
    while let Some(dir) = stack.pop() {
        let abs = root.join(&dir);
        for item in fs::read_dir(&abs).with_context(|| format!("reading {}", abs.display()))? {
            let item = item?;
            let rel = dir.join(item.file_name());
            if dir.as_os_str().is_empty()
                && item.file_name().to_string_lossy().starts_with(".mirrorfs")
            {
                continue;
            }
            let path = root.join(&rel);
            let md =
                fs::symlink_metadata(&path).with_context(|| format!("lstat {}", path.display()))?;
            let ft = md.file_type();
            let kind = if ft.is_dir() {
                stack.push(rel.clone());
                "dir"
            } else if ft.is_file() {
                inodes.entry(md.ino()).or_default().push(rel.clone());
                "file"
            } else if ft.is_symlink() {
                "symlink"
            } else if ft.is_fifo() {
                "fifo"
            } else if ft.is_socket() {
                "socket"
            } else if ft.is_block_device() {
                "block device"
            } else {
                "char device"
            };
            let entry = Entry {
                kind,
                mode: md.mode() & 0o7777,
                uid: md.uid(),
                gid: md.gid(),
                nlink: (!ft.is_dir()).then(|| md.nlink()),
                size: md.size(),
                mtime: ft.is_file().then(|| md.mtime()),
                target: if ft.is_symlink() {
                    Some(fs::read_link(&path)?)
                } else {
                    None
                },
                xattrs: user_xattrs(&path)
                    .with_context(|| format!("xattrs of {}", path.display()))?,
            };
            entries.insert(rel, entry);
        }
    }
    let link_groups = inodes
        .into_values()
        .filter(|paths| paths.len() > 1)
        .map(|mut paths| {
            paths.sort();
            paths
        })
        .collect();
    Ok(Tree {
        entries,
        link_groups,
    })
}

fn user_xattrs(path: &Path) -> io::Result<Vec<(String, Vec<u8>)>> {
    let mut out = Vec::new();
    for name in sys::xattr_names(path)? {
        if name.starts_with("user.") {
            let value = sys::xattr(path, &name)?;
            out.push((name, value));
        }
    }
    Ok(out)
}

fn same_bytes(a: &Path, b: &Path) -> Result<bool> {
    let (mut fa, mut fb) = (File::open(a)?, File::open(b)?);
    let (mut ba, mut bb) = (vec![0u8; 1 << 20], vec![0u8; 1 << 20]);
    loop {
        let na = read_full(&mut fa, &mut ba)?;
        let nb = read_full(&mut fb, &mut bb)?;
        if ba[..na] != bb[..nb] {
            return Ok(false);
        }
        if na == 0 {
            return Ok(true);
        }
    }
}

/// Reads until `buf` is full or the file ends; returns the bytes read.
fn read_full(f: &mut File, buf: &mut [u8]) -> io::Result<usize> {
    let mut n = 0;
    while n < buf.len() {
        match f.read(&mut buf[n..])? {
            0 => break,
            k => n += k,
        }
    }
    Ok(n)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::symlink;

    fn tree_with(f: impl Fn(&Path)) -> tempfile::TempDir {
        let d = tempfile::Builder::new()
            .prefix("mft-tree.")
            .tempdir_in("/var/tmp")
            .unwrap();
        fs::create_dir(d.path().join("sub")).unwrap();
        fs::write(d.path().join("sub/f"), b"hello").unwrap();
        symlink("sub/f", d.path().join("l")).unwrap();
        fs::create_dir(d.path().join(".mirrorfs")).unwrap();
        f(d.path());
        d
    }

    #[test]
    fn tree_diff_finds_each_kind_of_difference() {
        let a = tree_with(|_| {});
        let same = tree_with(|_| {});
        assert_eq!(diff(a.path(), same.path()).unwrap(), Vec::<String>::new());

        type Change = fn(&Path);
        let cases: [(&str, Change); 5] = [
            ("sub/f: contents differ", |p| {
                fs::write(p.join("sub/f"), b"HELLO").unwrap()
            }),
            ("sub/f: size", |p| {
                fs::write(p.join("sub/f"), b"hello!").unwrap()
            }),
            ("l: target", |p| {
                fs::remove_file(p.join("l")).unwrap();
                symlink("sub", p.join("l")).unwrap();
            }),
            ("extra: only in", |p| {
                fs::write(p.join("extra"), b"").unwrap()
            }),
            ("sub/f: xattrs", |p| {
                sys::set_xattr(&p.join("sub/f"), "user.k", b"v").unwrap()
            }),
        ];
        for (want, change) in cases {
            let b = tree_with(change);
            let diffs = diff(a.path(), b.path()).unwrap();
            assert!(
                diffs.iter().any(|d| d.starts_with(want)),
                "want {want:?}, got {diffs:?}"
            );
        }

        let b = tree_with(|p| fs::write(p.join(".mirrorfs/state"), b"private").unwrap());
        assert_eq!(
            diff(a.path(), b.path()).unwrap(),
            Vec::<String>::new(),
            ".mirrorfs is skipped"
        );
    }
}
