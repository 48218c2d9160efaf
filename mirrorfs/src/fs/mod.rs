//! The primary's filesystem: a passthrough overlay of the backing directory whose
//! every mutation is replicated before it returns.
//!
//! `ops` is the `io::Result` API (unit-tested without mounting), `inode` the inode
//! table, `fuse` the thin fuser adapter that only calls `ops` and replies,
//! `ahead` the threads that look up a listing's next names before the kernel
//! asks. Local
//! calls act on `O_PATH` descriptors of the backing inodes, never on a path
//! resolved again from the root: a descriptor not cached is opened from its
//! parent's by one name component, beneath it and following no symlink, and
//! checked to be the same inode, so nothing outside the backing directory is
//! touched.

mod ahead;
pub mod fuse;
pub mod inode;
pub mod iomode;
pub mod ops;
pub mod replicate;
pub mod resync;

pub use ops::{Ctx, Overlay};
pub use replicate::{Replicate, Ticket, Touched};
