//! `mirrorfs discard --root DIR`: resolve a split brain (or a refused resync) by
//! giving up this side's changes, without destroying them.
//!
//! Owns the one operator action that lets a peer overwrite this tree: every
//! path this side changed on its own (its dirty log) is first copied into
//! `DIR/.mirrorfs/discarded-<UTC time>/`, then the generation history is
//! emptied, so that the next connection treats this side as new and the
//! primary compares and replaces every file. Must be run while nothing serves
//! or mounts DIR; it never deletes anything outside the metadata area.

use std::fs;
use std::io;
use std::os::unix::fs::{DirBuilderExt, MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::time::SystemTime;

use crate::meta::Meta;
use crate::proto::generation::History;

/// What `discard` kept and where.
#[derive(Debug)]
pub struct Discarded {
    /// The dated folder holding the kept copies.
    pub folder: PathBuf,
    /// The kept paths (relative to the folder), in order.
    pub kept: Vec<PathBuf>,
    /// Dirty paths that no longer existed (deletions: nothing to keep).
    pub absent: Vec<PathBuf>,
}

/// Discards this side's own changes under `root` (see the module doc).
pub fn discard(root: &Path) -> io::Result<Discarded> {
    let meta = Meta::open(root)?;
    // Not under a running mount or serve, which write the same log.
    let _lock = meta.lock("discard").map_err(io::Error::other)?;
    let mut dirty = meta.dirty_log()?;
    let stamp = utc_stamp(SystemTime::now());
    let folder = meta.dir().join(format!("discarded-{stamp}"));
    fs::DirBuilder::new().mode(0o700).create(&folder)?;
    let mut kept = Vec::new();
    let mut absent = Vec::new();
    for p in dirty.paths() {
        let rel = PathBuf::from(p.as_os_str());
        let src = root.join(&rel);
        match fs::symlink_metadata(&src) {
            Ok(_) => {
                copy_tree(&src, &folder.join(&rel))?;
                kept.push(rel);
            }
            Err(e) if e.kind() == io::ErrorKind::NotFound => absent.push(rel),
            Err(e) => return Err(e),
        }
    }
    // Without a history this side counts as new: the next primary compares
    // every file and replaces what differs.
    meta.save_history(&History::default())?;
    dirty.clear()?;
    meta.activity_log()?.clear()?;
    Ok(Discarded {
        folder,
        kept,
        absent,
    })
}

/// Copies a file, symlink or directory tree (never following symlinks),
/// keeping modes, owners and times.
fn copy_tree(src: &Path, dst: &Path) -> io::Result<()> {
    if let Some(parent) = dst.parent() {
        fs::create_dir_all(parent)?;
    }
    let md = fs::symlink_metadata(src)?;
    let ft = md.file_type();
    if ft.is_dir() {
        fs::create_dir_all(dst)?;
        for e in fs::read_dir(src)? {
            let e = e?;
            copy_tree(&e.path(), &dst.join(e.file_name()))?;
        }
    } else if ft.is_symlink() {
        std::os::unix::fs::symlink(fs::read_link(src)?, dst)?;
        return Ok(());
    } else if ft.is_file() {
        fs::copy(src, dst)?;
    } else {
        // Device nodes, FIFOs, sockets carry no data worth keeping.
        return Ok(());
    }
    fs::set_permissions(dst, fs::Permissions::from_mode(md.mode() & 0o7777))?;
    std::os::unix::fs::lchown(dst, Some(md.uid()), Some(md.gid()))?;
    Ok(())
}

/// `YYYYmmdd-HHMMSS` in UTC.
fn utc_stamp(t: SystemTime) -> String {
    let secs = t
        .duration_since(SystemTime::UNIX_EPOCH)
        .map(|d| d.as_secs() as i64)
        .unwrap_or(0);
    let (days, rem) = (secs.div_euclid(86_400), secs.rem_euclid(86_400));
    // Civil date from days since 1970-01-01 (Howard Hinnant's algorithm).
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + i64::from(m <= 2);
    format!(
        "{y:04}{m:02}{d:02}-{:02}{:02}{:02}",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::proto::generation::GenerationId;
    use crate::proto::path::RelPath;

    #[test]
    fn stamps_are_utc_calendar_times() {
        let t = SystemTime::UNIX_EPOCH + std::time::Duration::from_secs(1_764_189_296);
        assert_eq!(utc_stamp(t), "20251126-203456");
        assert_eq!(utc_stamp(SystemTime::UNIX_EPOCH), "19700101-000000");
    }

    #[test]
    fn discard_keeps_changed_files_and_forgets_the_history() {
        let dir = tempfile::Builder::new()
            .prefix("mfs-discard")
            .tempdir_in("/var/tmp")
            .unwrap();
        let root = dir.path();
        fs::create_dir(root.join("d")).unwrap();
        fs::write(root.join("d/changed"), b"mine").unwrap();
        let meta = Meta::open(root).unwrap();
        let mut h = History::default();
        h.advance(GenerationId(7));
        meta.save_history(&h).unwrap();
        let p = |s: &str| RelPath::new(s.as_bytes().to_vec()).unwrap();
        meta.dirty_log()
            .unwrap()
            .mark([&p("d/changed"), &p("gone")])
            .unwrap();
        let r = discard(root).unwrap();
        assert_eq!(r.kept, vec![PathBuf::from("d/changed")]);
        assert_eq!(r.absent, vec![PathBuf::from("gone")]);
        assert_eq!(fs::read(r.folder.join("d/changed")).unwrap(), b"mine");
        assert_eq!(meta.load_history().unwrap(), History::default());
        assert!(meta.dirty_log().unwrap().is_empty());
        // The tree itself is untouched until a primary replaces it.
        assert_eq!(fs::read(root.join("d/changed")).unwrap(), b"mine");
    }
}
