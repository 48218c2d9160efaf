//! The farm packet filter: bucket assignment of clients to nodes (nftables `jhash`
//! over the client address), atomic ruleset updates, and the ARP side of the shared
//! virtual IP (AF_PACKET responder with a virtual MAC).
//!
//! Not built yet: it follows the mirror module. It must only ever change its own
//! nftables table and answer ARP for the configured VIPs.

pub mod arp;
