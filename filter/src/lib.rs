//! The farm packet filter: bucket assignment of clients to nodes (nftables `jhash`
//! over the client address), atomic ruleset updates, and the ARP side of the shared
//! virtual IP (AF_PACKET responder with a virtual MAC).
//!
//! Built so far: [`arp`], the gratuitous ARP that announces a mirror module's
//! virtual IP. The farm's buckets, ruleset and ARP responder come with the
//! farm (issue 9). It must only ever change its own nftables table and send
//! or answer ARP for the configured VIPs.

pub mod arp;
pub mod buckets;
pub mod nft;
pub mod ruleset;
