//! The farm packet filter and the ARP side of virtual IPs.
//!
//! Every node of a farm holds the same VIPs; frames to them go to a virtual MAC
//! that no node ever sends from, so the switch floods them to every node, and a
//! kernel filter on each node accepts only the clients hashed (nftables `jhash`
//! of the client address, or address and source port, `mod 256`) into the
//! buckets it owns. Userspace only replaces the owned set, atomically.
//!
//! The crate holds:
//! - [`buckets`]: [`BucketSet`], the buckets a node owns, and
//!   [`buckets::assign`], the bucket map of a set of weighted members (pure).
//! - [`ruleset`]: the nft scripts for a [`FarmFilter`] (install, owned-set
//!   update, removal) and the virtual MAC [`ruleset::vmac`] (pure, golden-tested).
//! - [`nft`]: running them: [`nft::check_support`], [`nft::install`] →
//!   [`Installed`], [`Installed::set_owned`], [`Installed::remove`] (also on drop),
//!   plus the interface's `arp_announce` sysctl.
//! - [`probe`]: the flooding probe (does a frame to the virtual MAC reach
//!   every node?) and its listener.
//! - [`arp`]: gratuitous ARP ([`arp::announce`] for a mirror VIP,
//!   [`arp::announce_virtual`] for a farm VIP) and the [`ArpResponder`] that
//!   answers requests for the farm VIPs with the virtual MAC.
//!
//! The controller's use, per farm module and node, in the node's network
//! namespace: `nft::install(&filter)?`, `ArpResponder::start(&iface, &vips,
//! filter.vmac)?`, `arp::announce_virtual(..)` for each VIP, then
//! `installed.set_owned(&buckets)?` on every membership change (release on the
//! old owners before taking on the new ones). All I/O happens in the calling
//! thread's network namespace.
//!
//! Must not: change any nftables table but its own `mirrorfarm_<module>`
//! tables, any sysctl but `arp_announce` of the module's interface, or send or
//! answer ARP for anything but the configured VIPs.

pub mod arp;
pub mod buckets;
pub mod nft;
pub mod probe;
pub mod ruleset;

pub use arp::ArpResponder;
pub use buckets::BucketSet;
pub use nft::{Installed, NftError};
pub use ruleset::{FarmFilter, Proto, Rule};
