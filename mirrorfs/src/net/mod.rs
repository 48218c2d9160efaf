//! The QUIC transport between the primary and the secondary: node identities,
//! pinned peers and the quinn configurations built from them (`tls`).
pub mod tls;
