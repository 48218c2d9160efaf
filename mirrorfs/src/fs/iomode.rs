//! [`IoModes`]: which opens of an inode may use kernel passthrough.
//!
//! The kernel refuses any non-passthrough open of an inode while a passthrough
//! open of it exists (and the reverse: a passthrough open while a read-only
//! open served through mirrorfs exists fails with EIO, so those are counted
//! too). Writable opens can never be passthrough
//! (their writes must come through mirrorfs to be replicated), so a writer that
//! arrives while passthrough readers hold the inode waits for them to close,
//! new readers of that inode wait behind it, and the inode is remembered as
//! written-to so its later read-only opens skip passthrough. A writer that
//! waits longer than the limit fails with `ETXTBSY`, as writing to a running
//! executable does. Owns only this bookkeeping; no I/O.

use std::collections::HashMap;
use std::io;
use std::sync::{Condvar, Mutex, MutexGuard};
use std::time::{Duration, Instant};

#[derive(Debug, Default, Clone, Copy)]
struct Mode {
    writers: u32,
    passthrough: u32,
    /// Read-only opens served through mirrorfs.
    cached: u32,
    waiting_writers: u32,
    /// Written to while passthrough readers held it: read it through mirrorfs.
    hot: bool,
}

/// Per-inode open modes.
#[derive(Debug)]
pub struct IoModes {
    modes: Mutex<HashMap<u64, Mode>>,
    changed: Condvar,
    limit: Duration,
}

/// What kind of open is released.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OpenKind {
    /// Writable (always through mirrorfs).
    Writer,
    /// Read-only through kernel passthrough.
    Passthrough,
    /// Read-only through mirrorfs.
    Cached,
}

/// How a read-only open may be served.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ReadMode {
    /// Through kernel passthrough (released with [`IoModes::release`]).
    Passthrough,
    /// Through mirrorfs.
    Cached,
}

impl IoModes {
    /// Writers wait at most `limit` for passthrough readers to close.
    pub fn new(limit: Duration) -> Self {
        Self {
            modes: Mutex::new(HashMap::new()),
            changed: Condvar::new(),
            limit,
        }
    }

    fn lock(&self) -> MutexGuard<'_, HashMap<u64, Mode>> {
        self.modes.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// A read-only open of `ino`; `allowed` says whether passthrough is possible
    /// at all (kernel support, regular file).
    pub fn open_read(&self, ino: u64, allowed: bool) -> ReadMode {
        let mut m = self.lock();
        let deadline = Instant::now() + self.limit;
        // Readers queue behind a waiting writer, or it could starve.
        while m.get(&ino).is_some_and(|x| x.waiting_writers > 0) && Instant::now() < deadline {
            let left = deadline.saturating_duration_since(Instant::now());
            m = self
                .changed
                .wait_timeout(m, left)
                .unwrap_or_else(|e| e.into_inner())
                .0;
        }
        let e = m.entry(ino).or_default();
        if allowed && e.writers == 0 && e.cached == 0 && e.waiting_writers == 0 && !e.hot {
            e.passthrough += 1;
            ReadMode::Passthrough
        } else {
            e.cached += 1;
            ReadMode::Cached
        }
    }

    /// A writable open of `ino`: waits for passthrough readers to close.
    pub fn open_write(&self, ino: u64) -> io::Result<()> {
        let mut m = self.lock();
        let e = m.entry(ino).or_default();
        if e.passthrough > 0 {
            e.hot = true;
            e.waiting_writers += 1;
            let deadline = Instant::now() + self.limit;
            while m.get(&ino).is_some_and(|x| x.passthrough > 0) && Instant::now() < deadline {
                let left = deadline.saturating_duration_since(Instant::now());
                m = self
                    .changed
                    .wait_timeout(m, left)
                    .unwrap_or_else(|e| e.into_inner())
                    .0;
            }
            let e = m.entry(ino).or_default();
            e.waiting_writers -= 1;
            self.changed.notify_all();
            if e.passthrough > 0 {
                return Err(io::Error::from_raw_os_error(libc::ETXTBSY));
            }
        }
        m.entry(ino).or_default().writers += 1;
        Ok(())
    }

    /// A writable open of `ino` if no passthrough reader holds it (true);
    /// otherwise (false) nothing is taken, and the inode is marked written-to
    /// so that new readers skip passthrough: the caller waits with
    /// [`wait_writable`](Self::wait_writable) (never while holding a lock
    /// others need) and tries again.
    pub fn try_open_write(&self, ino: u64) -> bool {
        let mut m = self.lock();
        let e = m.entry(ino).or_default();
        if e.passthrough > 0 {
            e.hot = true;
            return false;
        }
        e.writers += 1;
        true
    }

    /// Waits until no passthrough reader holds `ino` (new ones queue behind
    /// the waiting writer), at most the limit (`ETXTBSY`). Takes nothing.
    pub fn wait_writable(&self, ino: u64) -> io::Result<()> {
        let mut m = self.lock();
        let e = m.entry(ino).or_default();
        e.hot = true;
        e.waiting_writers += 1;
        let deadline = Instant::now() + self.limit;
        while m.get(&ino).is_some_and(|x| x.passthrough > 0) && Instant::now() < deadline {
            let left = deadline.saturating_duration_since(Instant::now());
            m = self
                .changed
                .wait_timeout(m, left)
                .unwrap_or_else(|e| e.into_inner())
                .0;
        }
        let e = m.entry(ino).or_default();
        e.waiting_writers -= 1;
        let busy = e.passthrough > 0;
        self.changed.notify_all();
        if busy {
            return Err(io::Error::from_raw_os_error(libc::ETXTBSY));
        }
        Ok(())
    }

    /// An open of `ino` was released.
    pub fn release(&self, ino: u64, kind: OpenKind) {
        let mut m = self.lock();
        if let Some(e) = m.get_mut(&ino) {
            match kind {
                OpenKind::Writer => e.writers = e.writers.saturating_sub(1),
                OpenKind::Passthrough => e.passthrough = e.passthrough.saturating_sub(1),
                OpenKind::Cached => e.cached = e.cached.saturating_sub(1),
            }
            let idle =
                e.writers == 0 && e.passthrough == 0 && e.cached == 0 && e.waiting_writers == 0;
            if idle && !e.hot {
                m.remove(&ino);
            }
        }
        self.changed.notify_all();
    }

    /// A read-only open granted passthrough is served through mirrorfs after
    /// all (the kernel would not take the backing file).
    pub fn passthrough_refused(&self, ino: u64) {
        let mut m = self.lock();
        if let Some(e) = m.get_mut(&ino) {
            e.passthrough = e.passthrough.saturating_sub(1);
            e.cached += 1;
        }
        self.changed.notify_all();
    }

    /// The kernel forgot `ino`: forget what we learned about it.
    pub fn forget(&self, ino: u64) {
        let mut m = self.lock();
        if m.get(&ino).is_some_and(|e| {
            e.writers == 0 && e.passthrough == 0 && e.cached == 0 && e.waiting_writers == 0
        }) {
            m.remove(&ino);
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use super::*;

    #[test]
    fn readers_use_passthrough_until_a_writer_comes() {
        let m = IoModes::new(Duration::from_secs(5));
        assert_eq!(m.open_read(7, true), ReadMode::Passthrough);
        assert_eq!(m.open_read(7, false), ReadMode::Cached);
        m.release(7, OpenKind::Passthrough);
        m.release(7, OpenKind::Cached);
        m.open_write(7).unwrap();
        assert_eq!(m.open_read(7, true), ReadMode::Cached);
    }

    /// The kernel fails (EIO) a passthrough open of an inode that has an open
    /// served through mirrorfs: a reader given the cached mode while a
    /// writer was there keeps later readers off passthrough until it closes
    /// (seen as EIO from open(2) under two writers churning a tree).
    #[test]
    fn no_passthrough_while_a_cached_reader_is_open() {
        let m = IoModes::new(Duration::from_secs(5));
        m.open_write(3).unwrap();
        assert_eq!(m.open_read(3, true), ReadMode::Cached);
        m.release(3, OpenKind::Writer);
        assert_eq!(
            m.open_read(3, true),
            ReadMode::Cached,
            "a cached reader is open"
        );
        m.release(3, OpenKind::Cached);
        m.release(3, OpenKind::Cached);
        assert_eq!(m.open_read(3, true), ReadMode::Passthrough);
    }

    #[test]
    fn a_writer_waits_for_passthrough_readers_and_the_inode_stays_hot() {
        let m = Arc::new(IoModes::new(Duration::from_secs(5)));
        assert_eq!(m.open_read(1, true), ReadMode::Passthrough);
        let m2 = m.clone();
        let writer = std::thread::spawn(move || m2.open_write(1));
        // The writer is waiting once the inode is marked hot.
        while m.lock().get(&1).is_none_or(|e| e.waiting_writers != 1) {
            std::thread::yield_now();
        }
        m.release(1, OpenKind::Passthrough);
        writer.join().unwrap().unwrap();
        m.release(1, OpenKind::Writer);
        assert_eq!(m.open_read(1, true), ReadMode::Cached);
    }

    #[test]
    fn a_writer_blocked_too_long_gets_etxtbsy() {
        let m = IoModes::new(Duration::from_millis(20));
        assert_eq!(m.open_read(1, true), ReadMode::Passthrough);
        let e = m.open_write(1).unwrap_err();
        assert_eq!(e.raw_os_error(), Some(libc::ETXTBSY));
        assert_eq!(m.lock()[&1].writers, 0);
    }
}
