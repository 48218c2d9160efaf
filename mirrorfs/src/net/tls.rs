//! Node identities, pinned peers, and the quinn client/server configurations
//! built from them.
//!
//! Owns: generating a node's key pair and self-signed certificate (`keygen`),
//! loading an identity (key + certificate, checked to belong together) and the one
//! peer certificate a node trusts, and the rustls verifiers that accept exactly that
//! pinned certificate, byte for byte, on both ends of a mutual-TLS QUIC connection.
//!
//! Trust model: there is no CA. Each node has one self-signed certificate; each
//! node is configured with its peer's certificate file, and a connection is
//! accepted only if the peer presents exactly that certificate (and proves it
//! holds the key). Validity dates, names and chains play no part: a pinned
//! certificate is trusted until the operator replaces the file.
//!
//! Must not: accept any certificate other than the pinned one (no fallback, no
//! "insecure" switch), accept certificate chains, negotiate anything below TLS 1.3,
//! or resume sessions (every connection proves its identity again). It opens no
//! sockets and spawns no tasks: the QUIC drivers own those.

use std::fmt;
use std::fs::{self, DirBuilder, File, OpenOptions};
use std::io::{self, BufReader, Write};
use std::os::unix::fs::{DirBuilderExt, MetadataExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

use quinn::crypto::rustls::{NoInitialCipherSuite, QuicClientConfig, QuicServerConfig};
use rcgen::{
    CertificateParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose, KeyPair, KeyUsagePurpose,
};
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::{CryptoProvider, WebPkiSupportedAlgorithms};
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName, UnixTime};
use rustls::server::danger::{ClientCertVerified, ClientCertVerifier};
use rustls::sign::CertifiedKey;
use rustls::{
    CertificateError, DigitallySignedStruct, DistinguishedName as TlsDistinguishedName,
    InconsistentKeys, OtherError, SignatureScheme,
};
use tracing::warn;

/// The ALPN protocol identifier both ends require; a peer speaking anything else
/// is refused during the handshake.
pub const ALPN: &[u8] = b"mirrorfs/1";

/// Longest node name `keygen` accepts (and that a certificate's CN may carry).
const MAX_NAME_LEN: usize = 64;

/// How long a generated certificate is valid. Nothing in mirrorfs checks the dates
/// (the certificate is pinned), but other tools reading the file do.
const VALIDITY_YEARS: i32 = 20;

/// A node's own identity: its name (the certificate's CN) plus key and certificate.
///
/// Built only by [`load_identity`], which has checked that the key belongs to the
/// certificate. `Debug` never prints the key.
pub struct Identity {
    /// The node name: the subject CN of the certificate.
    pub name: String,
    /// The node's self-signed certificate (DER).
    cert: CertificateDer<'static>,
    /// The private key belonging to `cert` (DER).
    key: PrivateKeyDer<'static>,
    /// Lowercase hex SHA-256 of `cert`, as the peer's operator sees it.
    fingerprint: String,
    /// Where the key was loaded from, for error messages.
    key_path: PathBuf,
    /// Where the certificate was loaded from, for error messages.
    cert_path: PathBuf,
}

/// The one peer certificate this node accepts (pinned by exact DER), with its CN
/// name and SHA-256 fingerprint.
#[derive(Clone)]
pub struct PinnedPeer {
    /// The peer's node name: the subject CN of its certificate. The client also
    /// uses it as the TLS server name (which the pinned verifier ignores).
    pub name: String,
    /// Lowercase hex SHA-256 of the certificate's DER, the same value as
    /// `openssl x509 -in NAME.crt -outform der | sha256sum`.
    pub fingerprint: String,
    /// The pinned certificate (DER); a peer must present exactly these bytes.
    der: CertificateDer<'static>,
    /// Where the certificate was loaded from, for error messages.
    path: PathBuf,
}

/// Why loading or using a node identity or a pinned peer failed. Each message
/// names the file involved and says how to fix it.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    /// The node name given to `keygen`, or found as a certificate's CN, cannot be
    /// used as a node name.
    #[error(
        "invalid node name {name:?}: {why}; use 1 to 64 characters of A-Z a-z 0-9 . _ - \
         forming a DNS-style name such as node1 or web-a.example"
    )]
    InvalidName {
        /// The rejected name (possibly truncated).
        name: String,
        /// Which rule it breaks.
        why: &'static str,
    },
    /// The key directory did not exist and could not be created.
    #[error(
        "cannot create key directory {}: {source}; create it yourself (mode 0700) or choose \
         another directory",
        path.display()
    )]
    CreateDir {
        /// The directory.
        path: PathBuf,
        /// The OS error.
        #[source]
        source: io::Error,
    },
    /// `keygen` would overwrite an existing key or certificate.
    #[error(
        "{} already exists and keygen never overwrites a key or certificate: remove it first \
         (and re-pin the new certificate on the peer), or choose another name",
        path.display()
    )]
    AlreadyExists {
        /// The existing file.
        path: PathBuf,
    },
    /// Generating the key pair or the self-signed certificate failed.
    #[error(
        "cannot generate a key pair and certificate for {name:?}: {source}; check the name, \
         or report this as a bug"
    )]
    Generate {
        /// The node name.
        name: String,
        /// The generator's error.
        #[source]
        source: rcgen::Error,
    },
    /// Writing a generated key or certificate failed.
    #[error(
        "cannot write {}: {source}; check that its directory is writable and not full",
        path.display()
    )]
    Write {
        /// The file being written.
        path: PathBuf,
        /// The OS error.
        #[source]
        source: io::Error,
    },
    /// Reading a key or certificate file failed.
    #[error(
        "cannot read {}: {source}; check the path and that this user may read the file",
        path.display()
    )]
    Read {
        /// The file.
        path: PathBuf,
        /// The OS error.
        #[source]
        source: io::Error,
    },
    /// The file is not well-formed PEM.
    #[error(
        "{} is not valid PEM: {source}; pass a file written by `mirrorfs keygen`",
        path.display()
    )]
    Pem {
        /// The file.
        path: PathBuf,
        /// The parser's error.
        #[source]
        source: io::Error,
    },
    /// The key file holds no private key.
    #[error(
        "{} holds no PEM private key: pass the NAME.key file written by `mirrorfs keygen` \
         (not the .crt)",
        path.display()
    )]
    NoKey {
        /// The file.
        path: PathBuf,
    },
    /// The certificate file holds no certificate.
    #[error(
        "{} holds no PEM certificate: pass the NAME.crt file written by `mirrorfs keygen` \
         (not the .key)",
        path.display()
    )]
    NoCert {
        /// The file.
        path: PathBuf,
    },
    /// The certificate file holds a chain; nodes use one self-signed certificate.
    #[error(
        "{} holds {count} certificates, but a node has exactly one self-signed certificate: \
         keep only the NAME.crt written by `mirrorfs keygen`",
        path.display()
    )]
    TooManyCerts {
        /// The file.
        path: PathBuf,
        /// How many certificates it holds.
        count: usize,
    },
    /// The private key is not one the TLS provider can sign with.
    #[error(
        "{}: unusable private key: {source}; generate a new pair with `mirrorfs keygen`",
        path.display()
    )]
    BadKey {
        /// The key file.
        path: PathBuf,
        /// The provider's error.
        #[source]
        source: rustls::Error,
    },
    /// The certificate could not be understood (malformed, or no usable CN).
    #[error(
        "{}: {why}; pass a NAME.crt written by `mirrorfs keygen`, or regenerate it",
        path.display()
    )]
    BadCert {
        /// The certificate file.
        path: PathBuf,
        /// What is wrong with it.
        why: String,
    },
    /// The private key does not belong to the certificate.
    #[error(
        "the private key {} does not belong to the certificate {}: pass the .key and .crt \
         that `mirrorfs keygen` wrote together",
        key.display(),
        cert.display()
    )]
    KeyMismatch {
        /// The key file.
        key: PathBuf,
        /// The certificate file.
        cert: PathBuf,
    },
    /// Whether the key belongs to the certificate could not be checked.
    #[error(
        "cannot check that the key {} belongs to the certificate {}: {source}; regenerate both \
         with `mirrorfs keygen`",
        key.display(),
        cert.display()
    )]
    KeyCheck {
        /// The key file.
        key: PathBuf,
        /// The certificate file.
        cert: PathBuf,
        /// The provider's error.
        #[source]
        source: rustls::Error,
    },
    /// rustls refused the identity when building a client or server config.
    #[error(
        "cannot build the TLS config from the identity {} / {}: {source}; regenerate them with \
         `mirrorfs keygen`",
        key.display(),
        cert.display()
    )]
    Config {
        /// The identity's key file.
        key: PathBuf,
        /// The identity's certificate file.
        cert: PathBuf,
        /// The rustls error.
        #[source]
        source: rustls::Error,
    },
    /// The rustls config lacks the cipher suite QUIC needs for its initial packets.
    #[error(
        "the TLS config built from {} cannot be used for QUIC: {source}; this is a bug in \
         mirrorfs (the ring provider must offer TLS13_AES_128_GCM_SHA256)",
        cert.display()
    )]
    Quic {
        /// The identity's certificate file.
        cert: PathBuf,
        /// quinn's error.
        #[source]
        source: NoInitialCipherSuite,
    },
}

/// Generates a node identity: writes `DIR/NAME.key` (PEM PKCS#8, ECDSA P-256, mode
/// 0600) and `DIR/NAME.crt` (PEM, self-signed, CN=NAME, SAN dns NAME, valid for 20
/// years), creating `DIR` with mode 0700 if missing. Returns `(key, cert)` paths.
///
/// Never overwrites: if either file exists this fails with
/// [`TlsError::AlreadyExists`] and leaves both untouched.
pub fn keygen(dir: &Path, name: &str) -> Result<(PathBuf, PathBuf), TlsError> {
    validate_name(name)?;
    let key_path = dir.join(format!("{name}.key"));
    let cert_path = dir.join(format!("{name}.crt"));

    DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(dir)
        .map_err(|source| TlsError::CreateDir {
            path: dir.to_path_buf(),
            source,
        })?;
    for path in [&key_path, &cert_path] {
        // symlink_metadata: a dangling symlink counts as existing too.
        if fs::symlink_metadata(path).is_ok() {
            return Err(TlsError::AlreadyExists { path: path.clone() });
        }
    }

    let (key_pem, cert_pem) = generate(name).map_err(|source| TlsError::Generate {
        name: name.to_owned(),
        source,
    })?;

    // `create_new` makes the no-overwrite rule hold even against a concurrent keygen.
    write_new(&key_path, 0o600, key_pem.as_bytes())?;
    if let Err(err) = write_new(&cert_path, 0o644, cert_pem.as_bytes()) {
        // A key without its certificate is useless and would block the next try.
        let _ = fs::remove_file(&key_path);
        return Err(err);
    }
    Ok((key_path, cert_path))
}

/// Loads this node's identity from its key and certificate files, checking that
/// the key belongs to the certificate (by comparing public keys).
///
/// The certificate file must hold exactly one certificate whose CN is a valid node
/// name; that CN becomes [`Identity::name`].
pub fn load_identity(key: &Path, cert: &Path) -> Result<Identity, TlsError> {
    let cert_der = read_single_cert(cert)?;
    let name = subject_cn(cert, &cert_der)?;
    let key_der = read_key(key)?;
    warn_if_key_readable_by_others(key);

    let provider = provider();
    let signing_key = provider
        .key_provider
        .load_private_key(key_der.clone_key())
        .map_err(|source| TlsError::BadKey {
            path: key.to_path_buf(),
            source,
        })?;
    match CertifiedKey::new(vec![cert_der.clone()], signing_key).keys_match() {
        Ok(()) => {}
        Err(rustls::Error::InconsistentKeys(InconsistentKeys::KeyMismatch)) => {
            return Err(TlsError::KeyMismatch {
                key: key.to_path_buf(),
                cert: cert.to_path_buf(),
            });
        }
        Err(source) => {
            return Err(TlsError::KeyCheck {
                key: key.to_path_buf(),
                cert: cert.to_path_buf(),
                source,
            });
        }
    }

    Ok(Identity {
        name,
        fingerprint: fingerprint(&cert_der),
        cert: cert_der,
        key: key_der,
        key_path: key.to_path_buf(),
        cert_path: cert.to_path_buf(),
    })
}

/// Loads the peer certificate this node will pin: the file must hold exactly one
/// certificate whose CN is a valid node name.
pub fn load_peer(cert: &Path) -> Result<PinnedPeer, TlsError> {
    let der = read_single_cert(cert)?;
    Ok(PinnedPeer {
        name: subject_cn(cert, &der)?,
        fingerprint: fingerprint(&der),
        der,
        path: cert.to_path_buf(),
    })
}

/// Builds the QUIC server config for `mirrorfs serve`: presents `id`, requires a
/// client certificate and accepts only `peer`'s, TLS 1.3 only, ALPN [`ALPN`].
pub fn server_config(id: &Identity, peer: &PinnedPeer) -> Result<quinn::ServerConfig, TlsError> {
    server_config_for(id, &[peer], ALPN)
}

/// A QUIC server config that presents `id` and accepts a client presenting
/// any one of `peers`' certificates, with ALPN `alpn` (the controller's
/// heartbeats and witness use the same node identities as mirrorfs).
pub fn server_config_for(
    id: &Identity,
    peers: &[&PinnedPeer],
    alpn: &[u8],
) -> Result<quinn::ServerConfig, TlsError> {
    let provider = Arc::new(provider());
    let verifier = PinnedClientVerifier(Pin::new(peers, &provider));
    let mut tls = rustls::ServerConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13])
        .and_then(|builder| {
            builder
                .with_client_cert_verifier(Arc::new(verifier))
                .with_single_cert(vec![id.cert.clone()], id.key.clone_key())
        })
        .map_err(|source| id.config_error(source))?;
    tls.alpn_protocols = vec![alpn.to_vec()];
    // No resumption: a resumed session would skip the client certificate, and we
    // want every connection to be checked against the pin in force right now.
    tls.session_storage = Arc::new(rustls::server::NoServerSessionStorage {});
    tls.send_tls13_tickets = 0;

    let quic = QuicServerConfig::try_from(tls).map_err(|source| TlsError::Quic {
        cert: id.cert_path.clone(),
        source,
    })?;
    Ok(quinn::ServerConfig::with_crypto(Arc::new(quic)))
}

/// Builds the QUIC client config for the primary: presents `id` and accepts only
/// `peer`'s certificate, TLS 1.3 only, ALPN [`ALPN`]. Connect with
/// `server_name = peer.name`; the name is not checked (the pin is).
pub fn client_config(id: &Identity, peer: &PinnedPeer) -> Result<quinn::ClientConfig, TlsError> {
    client_config_for(id, peer, ALPN)
}

/// A QUIC client config that presents `id` and accepts only `peer`'s
/// certificate, with ALPN `alpn`.
pub fn client_config_for(
    id: &Identity,
    peer: &PinnedPeer,
    alpn: &[u8],
) -> Result<quinn::ClientConfig, TlsError> {
    let provider = Arc::new(provider());
    let verifier = PinnedServerVerifier(Pin::new(&[peer], &provider));
    let mut tls = rustls::ClientConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13])
        .and_then(|builder| {
            builder
                .dangerous()
                .with_custom_certificate_verifier(Arc::new(verifier))
                .with_client_auth_cert(vec![id.cert.clone()], id.key.clone_key())
        })
        .map_err(|source| id.config_error(source))?;
    tls.alpn_protocols = vec![alpn.to_vec()];
    // See server_config: every connection does a full, pinned handshake.
    tls.resumption = rustls::client::Resumption::disabled();
    // The server does not look at SNI, so do not send the peer's name in clear.
    tls.enable_sni = false;

    let quic = QuicClientConfig::try_from(tls).map_err(|source| TlsError::Quic {
        cert: id.cert_path.clone(),
        source,
    })?;
    Ok(quinn::ClientConfig::new(Arc::new(quic)))
}

/// Which of `peers` is at the other end of `conn` (its handshake presented
/// that certificate); None if none (or no certificate).
pub fn connected_peer<'a>(
    conn: &quinn::Connection,
    peers: &[&'a PinnedPeer],
) -> Option<&'a PinnedPeer> {
    let chain = conn
        .peer_identity()?
        .downcast::<Vec<CertificateDer<'static>>>()
        .ok()?;
    let end = chain.first()?;
    peers
        .iter()
        .copied()
        .find(|p| p.der.as_ref() == end.as_ref())
}

impl Identity {
    /// Lowercase hex SHA-256 of this node's certificate: what the peer's
    /// [`PinnedPeer::fingerprint`] shows when it pins us.
    pub fn fingerprint(&self) -> &str {
        &self.fingerprint
    }

    fn config_error(&self, source: rustls::Error) -> TlsError {
        TlsError::Config {
            key: self.key_path.clone(),
            cert: self.cert_path.clone(),
            source,
        }
    }
}

impl fmt::Debug for Identity {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // The key stays out of logs: name, fingerprint and files only.
        f.debug_struct("Identity")
            .field("name", &self.name)
            .field("fingerprint", &self.fingerprint)
            .field("key_path", &self.key_path)
            .field("cert_path", &self.cert_path)
            .finish_non_exhaustive()
    }
}

impl fmt::Debug for PinnedPeer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PinnedPeer")
            .field("name", &self.name)
            .field("fingerprint", &self.fingerprint)
            .field("path", &self.path)
            .finish_non_exhaustive()
    }
}

/// The check both verifiers share: the peer presented exactly one of the
/// pinned certificates, alone, and signs the handshake with its key.
#[derive(Debug)]
struct Pin {
    /// The pinned certificates: DER, CN and fingerprint (for messages).
    pins: Vec<(CertificateDer<'static>, String, String)>,
    /// Signature algorithms used to check the handshake signature.
    algs: WebPkiSupportedAlgorithms,
}

impl Pin {
    fn new(peers: &[&PinnedPeer], provider: &CryptoProvider) -> Self {
        Self {
            pins: peers
                .iter()
                .map(|p| (p.der.clone(), p.name.clone(), p.fingerprint.clone()))
                .collect(),
            algs: provider.signature_verification_algorithms,
        }
    }

    /// Accepts `end_entity` only if it is byte-for-byte a pinned certificate and
    /// no other certificate came with it. Validity dates are deliberately ignored.
    fn check(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
    ) -> Result<(), rustls::Error> {
        let pinned = || {
            self.pins
                .iter()
                .map(|(_, name, fp)| format!("CN={name} sha256={fp}"))
                .collect::<Vec<_>>()
                .join(" or ")
        };
        let found = self
            .pins
            .iter()
            .find(|(der, ..)| der.as_ref() == end_entity.as_ref());
        let mismatch = match found {
            None => format!(
                "peer presented certificate CN={} sha256={} but the pinned peer certificate is \
                 {} (check --peer-cert)",
                presented_cn(end_entity),
                fingerprint(end_entity),
                pinned()
            ),
            Some((_, name, fp)) if !intermediates.is_empty() => format!(
                "peer presented the pinned certificate CN={name} sha256={fp} with {} more \
                 certificate(s); a pinned peer presents its certificate alone",
                intermediates.len()
            ),
            Some(_) => return Ok(()),
        };
        warn!(pinned = %pinned(), "refused peer: {mismatch}");
        Err(rustls::Error::InvalidCertificate(CertificateError::Other(
            OtherError(Arc::new(PinMismatch(mismatch))),
        )))
    }

    fn verify_tls12(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(message, cert, dss, &self.algs)
    }

    fn verify_tls13(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(message, cert, dss, &self.algs)
    }
}

/// A pinned-certificate mismatch, carried inside the rustls error so that the
/// connection error (and the log) says which certificate came and which was wanted.
struct PinMismatch(String);

// rustls formats `CertificateError::Other` with `{:?}`; print the plain message so
// the operator reads a sentence rather than a struct dump.
impl fmt::Debug for PinMismatch {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl fmt::Display for PinMismatch {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for PinMismatch {}

/// The client's verifier of the server: accepts only the pinned certificate.
#[derive(Debug)]
struct PinnedServerVerifier(Pin);

impl ServerCertVerifier for PinnedServerVerifier {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        // The server name is not checked: the pin identifies the peer.
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        self.0.check(end_entity, intermediates)?;
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.0.verify_tls12(message, cert, dss)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.0.verify_tls13(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.0.algs.supported_schemes()
    }
}

/// The server's verifier of the client: requires a certificate and accepts only
/// the pinned one.
#[derive(Debug)]
struct PinnedClientVerifier(Pin);

impl ClientCertVerifier for PinnedClientVerifier {
    fn client_auth_mandatory(&self) -> bool {
        true
    }

    fn root_hint_subjects(&self) -> &[TlsDistinguishedName] {
        // No CA to hint at: an empty list tells the client to send its certificate.
        &[]
    }

    fn verify_client_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        _now: UnixTime,
    ) -> Result<ClientCertVerified, rustls::Error> {
        self.0.check(end_entity, intermediates)?;
        Ok(ClientCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.0.verify_tls12(message, cert, dss)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.0.verify_tls13(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.0.algs.supported_schemes()
    }
}

/// The one crypto provider mirrorfs uses, passed explicitly so that no
/// process-wide default is needed.
fn provider() -> CryptoProvider {
    rustls::crypto::ring::default_provider()
}

/// Checks a node name: 1..=64 characters of `[A-Za-z0-9._-]` that also form a
/// valid DNS name, since the client uses the peer's name as its TLS server name.
fn validate_name(name: &str) -> Result<(), TlsError> {
    let invalid = |why| TlsError::InvalidName {
        name: name.chars().take(MAX_NAME_LEN + 16).collect(),
        why,
    };
    if name.is_empty() {
        return Err(invalid("it is empty"));
    }
    if name.len() > MAX_NAME_LEN {
        return Err(invalid("it is longer than 64 characters"));
    }
    if !name
        .bytes()
        .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'))
    {
        return Err(invalid(
            "it contains a character other than A-Z a-z 0-9 . _ -",
        ));
    }
    if ServerName::try_from(name).is_err() {
        return Err(invalid(
            "it is not a valid DNS-style name (empty label, label over 63 characters, label \
             ending in '-', or an all-digit last label)",
        ));
    }
    Ok(())
}

/// Generates a P-256 key pair and a self-signed certificate for `name`, as PEM.
fn generate(name: &str) -> Result<(String, String), rcgen::Error> {
    let key_pair = KeyPair::generate()?;
    let mut params = CertificateParams::new(vec![name.to_owned()])?;
    let mut dn = DistinguishedName::new();
    dn.push(DnType::CommonName, name);
    params.distinguished_name = dn;
    // Whole years keep this free of a date library: from January 1st of last year
    // (tolerates clock skew between nodes) to 20 years ahead. `year` comes from the
    // clock, so it is a sane calendar year and `date_time_ymd` cannot panic on it.
    let year = current_year();
    params.not_before = rcgen::date_time_ymd(year - 1, 1, 1);
    params.not_after = rcgen::date_time_ymd(year + VALIDITY_YEARS + 1, 1, 1);
    params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
    params.extended_key_usages = vec![
        ExtendedKeyUsagePurpose::ServerAuth,
        ExtendedKeyUsagePurpose::ClientAuth,
    ];
    let cert = params.self_signed(&key_pair)?;
    Ok((key_pair.serialize_pem(), cert.pem()))
}

/// The current calendar year, within a day (good enough for whole-year validity).
fn current_year() -> i32 {
    const SECS_PER_YEAR: u64 = 31_556_952; // 365.2425 days
    let secs = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |since| since.as_secs());
    // Clamp so that a wildly wrong clock cannot push the year out of range.
    1970 + i32::try_from(secs / SECS_PER_YEAR).map_or(0, |years| years.min(5000))
}

/// Creates `path` (failing if it exists) with `mode`, writes `contents` and syncs.
fn write_new(path: &Path, mode: u32, contents: &[u8]) -> Result<(), TlsError> {
    let write_error = |source| TlsError::Write {
        path: path.to_path_buf(),
        source,
    };
    let mut file = OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(mode)
        .open(path)
        .map_err(|source| match source.kind() {
            io::ErrorKind::AlreadyExists => TlsError::AlreadyExists {
                path: path.to_path_buf(),
            },
            _ => write_error(source),
        })?;
    file.write_all(contents).map_err(write_error)?;
    file.sync_all().map_err(write_error)
}

/// Reads the only certificate in the PEM file `path`.
fn read_single_cert(path: &Path) -> Result<CertificateDer<'static>, TlsError> {
    let mut reader = open(path)?;
    let mut certs = rustls_pemfile::certs(&mut reader)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|source| TlsError::Pem {
            path: path.to_path_buf(),
            source,
        })?;
    match certs.len() {
        0 => Err(TlsError::NoCert {
            path: path.to_path_buf(),
        }),
        1 => Ok(certs.remove(0)),
        count => Err(TlsError::TooManyCerts {
            path: path.to_path_buf(),
            count,
        }),
    }
}

/// Reads the first private key in the PEM file `path`.
fn read_key(path: &Path) -> Result<PrivateKeyDer<'static>, TlsError> {
    let mut reader = open(path)?;
    rustls_pemfile::private_key(&mut reader)
        .map_err(|source| TlsError::Pem {
            path: path.to_path_buf(),
            source,
        })?
        .ok_or_else(|| TlsError::NoKey {
            path: path.to_path_buf(),
        })
}

fn open(path: &Path) -> Result<BufReader<File>, TlsError> {
    File::open(path)
        .map(BufReader::new)
        .map_err(|source| TlsError::Read {
            path: path.to_path_buf(),
            source,
        })
}

/// Warns (does not fail) when the key file is readable or writable by group or
/// others: the operator may have a reason, but should know.
fn warn_if_key_readable_by_others(path: &Path) {
    if let Ok(meta) = fs::metadata(path) {
        let mode = meta.mode() & 0o777;
        if mode & 0o077 != 0 {
            warn!(
                key = %path.display(),
                mode = format_args!("{mode:04o}"),
                "private key is accessible to group or others; run chmod 600 on it"
            );
        }
    }
}

/// The subject CN of the certificate loaded from `path`, checked to be a valid
/// node name.
fn subject_cn(path: &Path, der: &CertificateDer<'_>) -> Result<String, TlsError> {
    let bad = |why: String| TlsError::BadCert {
        path: path.to_path_buf(),
        why,
    };
    let name = der::subject_common_name(der.as_ref())
        .ok_or_else(|| bad("the certificate has no readable subject CN".to_owned()))?;
    validate_name(&name).map_err(|err| bad(format!("its subject CN is unusable: {err}")))?;
    Ok(name)
}

/// The CN of a certificate presented by a peer, made safe to print: unknown
/// peers choose their own CN, so it is escaped and truncated before it reaches a
/// log line or an error message.
fn presented_cn(der: &CertificateDer<'_>) -> String {
    match der::subject_common_name(der.as_ref()) {
        None => "<none>".to_owned(),
        Some(cn) if cn.chars().count() > MAX_NAME_LEN => {
            let head: String = cn.chars().take(MAX_NAME_LEN).collect();
            format!("{}…", head.escape_debug())
        }
        Some(cn) => cn.escape_debug().to_string(),
    }
}

/// Lowercase hex SHA-256 of a certificate's DER.
fn fingerprint(der: &CertificateDer<'_>) -> String {
    let digest = ring::digest::digest(&ring::digest::SHA256, der.as_ref());
    digest.as_ref().iter().map(|b| format!("{b:02x}")).collect()
}

/// Just enough DER to find a certificate's subject CN, for names and messages.
///
/// Why not a full X.509 parser: we never trust anything read here (trust is the
/// byte-for-byte pin), we only need one string, and the input may come from an
/// unknown peer, so this reader is small, bounds-checked at every step, and
/// returns `None` on anything it does not expect.
mod der {
    const SEQUENCE: u8 = 0x30;
    const SET: u8 = 0x31;
    const OID: u8 = 0x06;
    const INTEGER: u8 = 0x02;
    const VERSION: u8 = 0xa0; // [0] EXPLICIT
    const UTF8_STRING: u8 = 0x0c;
    const PRINTABLE_STRING: u8 = 0x13;
    const IA5_STRING: u8 = 0x16;
    /// id-at-commonName, 2.5.4.3.
    const COMMON_NAME: &[u8] = &[0x55, 0x04, 0x03];

    /// The first CommonName attribute of the certificate's subject, if it is a
    /// UTF8String, PrintableString or IA5String.
    pub(super) fn subject_common_name(cert: &[u8]) -> Option<String> {
        let (cert, _) = expect(cert, SEQUENCE)?;
        let (tbs, _) = expect(cert, SEQUENCE)?;
        let mut rest = tbs;
        if rest.first() == Some(&VERSION) {
            rest = tlv(rest)?.2;
        }
        let (_serial, rest) = expect(rest, INTEGER)?;
        let (_signature, rest) = expect(rest, SEQUENCE)?;
        let (_issuer, rest) = expect(rest, SEQUENCE)?;
        let (_validity, rest) = expect(rest, SEQUENCE)?;
        let (mut subject, _) = expect(rest, SEQUENCE)?;
        while !subject.is_empty() {
            let (mut rdn, next) = expect(subject, SET)?;
            subject = next;
            while !rdn.is_empty() {
                let (attribute, next) = expect(rdn, SEQUENCE)?;
                rdn = next;
                let (oid, value) = expect(attribute, OID)?;
                if oid != COMMON_NAME {
                    continue;
                }
                let (tag, bytes, _) = tlv(value)?;
                return match tag {
                    UTF8_STRING | PRINTABLE_STRING | IA5_STRING => {
                        String::from_utf8(bytes.to_vec()).ok()
                    }
                    _ => None,
                };
            }
        }
        None
    }

    /// Reads one TLV with tag `tag`: returns its contents and what follows it.
    fn expect(input: &[u8], tag: u8) -> Option<(&[u8], &[u8])> {
        match tlv(input)? {
            (found, contents, rest) if found == tag => Some((contents, rest)),
            _ => None,
        }
    }

    /// Reads one DER TLV (single-byte tag, definite length of at most 4 bytes):
    /// returns the tag, the contents and what follows.
    fn tlv(input: &[u8]) -> Option<(u8, &[u8], &[u8])> {
        let (&tag, rest) = input.split_first()?;
        if tag & 0x1f == 0x1f {
            return None; // multi-byte tag: never used on the path we walk
        }
        let (&first, rest) = rest.split_first()?;
        let (len, rest) = if first < 0x80 {
            (usize::from(first), rest)
        } else {
            let count = usize::from(first & 0x7f);
            if count == 0 || count > 4 || rest.len() < count {
                return None; // indefinite length (not DER), absurd, or truncated
            }
            let (bytes, rest) = rest.split_at(count);
            let len = bytes
                .iter()
                .fold(0usize, |len, &b| (len << 8) | usize::from(b));
            (len, rest)
        };
        if rest.len() < len {
            return None;
        }
        let (contents, rest) = rest.split_at(len);
        Some((tag, contents, rest))
    }
}

#[cfg(test)]
mod tests {
    use std::future::Future;
    use std::net::{Ipv4Addr, SocketAddr};
    use std::time::Duration;

    use proptest::prelude::*;
    use quinn::{ConnectionError, Endpoint};

    use super::*;

    /// Upper bound for any one network step; a hang fails the test instead.
    const STEP: Duration = Duration::from_secs(10);

    /// Generates `name` in `dir` and loads it both as an identity and as the pin
    /// its peer would use.
    fn node(dir: &Path, name: &str) -> (Identity, PinnedPeer) {
        let (key, cert) = keygen(dir, name).expect("keygen");
        let id = load_identity(&key, &cert).expect("load_identity");
        let pin = load_peer(&cert).expect("load_peer");
        (id, pin)
    }

    async fn bounded<T>(what: &str, fut: impl Future<Output = T>) -> T {
        match tokio::time::timeout(STEP, fut).await {
            Ok(out) => out,
            Err(_) => panic!("timed out after {STEP:?}: {what}"),
        }
    }

    fn localhost() -> SocketAddr {
        (Ipv4Addr::LOCALHOST, 0).into()
    }

    /// Starts a server endpoint and a task accepting one connection, returning
    /// the address and the task's handle (the handshake's outcome).
    fn serve_one(
        config: quinn::ServerConfig,
    ) -> (
        SocketAddr,
        tokio::task::JoinHandle<Result<quinn::Connection, ConnectionError>>,
    ) {
        let server = Endpoint::server(config, localhost()).expect("bind server");
        let addr = server.local_addr().expect("server address");
        let task = tokio::spawn(async move {
            let incoming = server.accept().await.expect("endpoint closed");
            incoming.await
        });
        (addr, task)
    }

    /// Connects, then sends `ping` on a bi stream and reads the reply: any failure
    /// along the way is returned as text.
    async fn connect_and_ping(
        config: quinn::ClientConfig,
        addr: SocketAddr,
        server_name: &str,
    ) -> Result<(quinn::Connection, Vec<u8>), String> {
        let client = Endpoint::client(localhost()).expect("bind client");
        let connecting = client
            .connect_with(config, addr, server_name)
            .expect("connect_with");
        let conn = connecting.await.map_err(|e| e.to_string())?;
        let (mut send, mut recv) = conn.open_bi().await.map_err(|e| e.to_string())?;
        send.write_all(b"ping").await.map_err(|e| e.to_string())?;
        send.finish().map_err(|e| e.to_string())?;
        let reply = recv.read_to_end(64).await.map_err(|e| e.to_string())?;
        Ok((conn, reply))
    }

    fn presented_certs(conn: &quinn::Connection) -> Vec<CertificateDer<'static>> {
        let identity = conn.peer_identity().expect("peer presented an identity");
        *identity
            .downcast::<Vec<CertificateDer<'static>>>()
            .expect("rustls peer identity is a certificate chain")
    }

    #[test]
    fn keygen_writes_private_key_and_certificate_and_never_overwrites() {
        let tmp = tempfile::tempdir().expect("tempdir");
        let dir = tmp.path().join("keys");

        let (key, cert) = keygen(&dir, "node1").expect("keygen");

        assert_eq!(key, dir.join("node1.key"));
        assert_eq!(cert, dir.join("node1.crt"));
        let mode = |p: &Path| fs::metadata(p).expect("stat").mode() & 0o777;
        assert_eq!(mode(&dir), 0o700);
        assert_eq!(mode(&key), 0o600);
        let key_pem = fs::read_to_string(&key).expect("read key");
        assert!(
            key_pem.starts_with("-----BEGIN PRIVATE KEY-----"),
            "{key_pem}"
        );
        let id = load_identity(&key, &cert).expect("load_identity");
        assert_eq!(id.name, "node1");

        let err = keygen(&dir, "node1").expect_err("second keygen must refuse");
        assert!(matches!(&err, TlsError::AlreadyExists { path } if *path == key));
        let msg = err.to_string();
        assert!(msg.contains(&key.display().to_string()), "{msg}");
        assert!(msg.contains("remove it first"), "{msg}");
        assert_eq!(fs::read_to_string(&key).expect("reread key"), key_pem);

        // A certificate alone is not overwritten either (a peer may pin it).
        fs::remove_file(&key).expect("remove key");
        let err = keygen(&dir, "node1").expect_err("keygen over a certificate");
        assert!(matches!(&err, TlsError::AlreadyExists { path } if *path == cert));
        assert!(!key.exists(), "no key may be left behind");
    }

    #[test]
    fn node_names_are_validated() {
        for good in [
            "node1",
            "web-a.example",
            "a_b",
            "N",
            &format!("{}.{}", "x".repeat(32), "y".repeat(31)),
        ] {
            assert!(validate_name(good).is_ok(), "{good:?} should be valid");
        }
        let long = "x".repeat(65);
        let long_label = "x".repeat(64);
        for bad in [
            "",
            "a/b",
            "..",
            "node 1",
            "node-",
            "123",
            "é",
            &long,
            &long_label,
        ] {
            assert!(
                matches!(validate_name(bad), Err(TlsError::InvalidName { .. })),
                "{bad:?} should be invalid"
            );
        }
        let tmp = tempfile::tempdir().expect("tempdir");
        let err = keygen(tmp.path(), "../escape").expect_err("bad name");
        assert!(matches!(err, TlsError::InvalidName { .. }), "{err}");
        assert_eq!(fs::read_dir(tmp.path()).expect("ls").count(), 0);
    }

    #[test]
    fn identity_and_pin_agree_on_name_and_fingerprint() {
        let tmp = tempfile::tempdir().expect("tempdir");
        let (id, pin) = node(tmp.path(), "node1");
        assert_eq!(pin.name, "node1");
        assert_eq!(id.fingerprint(), pin.fingerprint);
        assert_eq!(pin.fingerprint.len(), 64);
        assert!(pin.fingerprint.bytes().all(|b| b.is_ascii_hexdigit()));
        // Debug shows who, never the key.
        let shown = format!("{id:?}");
        assert!(
            shown.contains("node1") && !shown.contains("key:"),
            "{shown}"
        );
    }

    #[test]
    fn load_identity_rejects_a_key_from_another_identity() {
        let tmp = tempfile::tempdir().expect("tempdir");
        let (key1, _) = keygen(tmp.path(), "node1").expect("keygen node1");
        let (_, cert2) = keygen(tmp.path(), "node2").expect("keygen node2");

        let err = load_identity(&key1, &cert2).expect_err("mismatched pair");

        assert!(matches!(err, TlsError::KeyMismatch { .. }), "{err}");
        let msg = err.to_string();
        assert!(msg.contains(&key1.display().to_string()), "{msg}");
        assert!(msg.contains(&cert2.display().to_string()), "{msg}");
    }

    #[test]
    fn files_of_the_wrong_kind_are_named_in_the_error() {
        let tmp = tempfile::tempdir().expect("tempdir");
        let (key, cert) = keygen(tmp.path(), "node1").expect("keygen node1");
        let (_, other) = keygen(tmp.path(), "node2").expect("keygen node2");

        assert!(matches!(load_peer(&key), Err(TlsError::NoCert { path }) if path == key));
        assert!(matches!(
            load_identity(&cert, &cert),
            Err(TlsError::NoKey { path }) if path == cert
        ));
        let missing = tmp.path().join("missing.crt");
        assert!(matches!(load_peer(&missing), Err(TlsError::Read { path, .. }) if path == missing));

        let chain = tmp.path().join("chain.crt");
        let pems = [&cert, &other].map(|p| fs::read_to_string(p).expect("read cert"));
        fs::write(&chain, pems.concat()).expect("write chain");
        assert!(matches!(
            load_peer(&chain),
            Err(TlsError::TooManyCerts { path, count: 2 }) if path == chain
        ));
    }

    #[test]
    fn pin_accepts_only_the_pinned_certificate_alone() {
        let tmp = tempfile::tempdir().expect("tempdir");
        let (_, pinned) = node(tmp.path(), "node1");
        let (_, other) = node(tmp.path(), "intruder");
        let pin = Pin::new(&[&pinned], &provider());

        assert!(pin.check(&pinned.der, &[]).is_ok());
        let wrong = pin
            .check(&other.der, &[])
            .expect_err("other cert")
            .to_string();
        let expected = format!(
            "peer presented certificate CN=intruder sha256={} but the pinned peer certificate \
             is CN=node1 sha256={} (check --peer-cert)",
            other.fingerprint, pinned.fingerprint
        );
        assert!(wrong.contains(&expected), "{wrong}");
        let chain = pin
            .check(&pinned.der, std::slice::from_ref(&other.der))
            .expect_err("pinned cert with a chain")
            .to_string();
        assert!(chain.contains("presents its certificate alone"), "{chain}");
    }

    #[tokio::test]
    async fn pinned_pair_connects_and_exchanges_bytes() {
        let tmp = tempfile::tempdir().expect("tempdir");
        let (server_id, server_pin) = node(tmp.path(), "node1");
        let (client_id, client_pin) = node(tmp.path(), "node2");
        let server_cfg = server_config(&server_id, &client_pin).expect("server_config");
        let client_cfg = client_config(&client_id, &server_pin).expect("client_config");
        let (addr, accepted) = serve_one(server_cfg);
        let echo = tokio::spawn(async move {
            let conn = accepted.await.expect("accept task")?;
            let presented = presented_certs(&conn);
            let (mut send, mut recv) = conn.accept_bi().await?;
            let got = recv.read_to_end(64).await.expect("server read");
            send.write_all(&got).await.expect("server write");
            send.finish().expect("server finish");
            // Keep the connection until the client has read the reply and closed.
            conn.closed().await;
            Ok::<_, ConnectionError>(presented)
        });

        let (conn, reply) = bounded(
            "client handshake and echo",
            connect_and_ping(client_cfg, addr, &server_pin.name),
        )
        .await
        .expect("pinned pair must connect");

        assert_eq!(reply, b"ping");
        assert_eq!(presented_certs(&conn), vec![server_pin.der.clone()]);
        let alpn = conn
            .handshake_data()
            .and_then(|data| data.downcast::<quinn::crypto::rustls::HandshakeData>().ok())
            .and_then(|data| data.protocol);
        assert_eq!(alpn.as_deref(), Some(ALPN));
        conn.close(0u32.into(), b"done");
        let seen_by_server = bounded("server side", echo)
            .await
            .expect("echo task")
            .expect("server connection");
        assert_eq!(seen_by_server, vec![client_pin.der.clone()]);
    }

    #[tokio::test]
    async fn client_with_unknown_certificate_is_refused() {
        let tmp = tempfile::tempdir().expect("tempdir");
        let (server_id, server_pin) = node(tmp.path(), "node1");
        let (_, client_pin) = node(tmp.path(), "node2");
        let (intruder, _) = node(tmp.path(), "intruder");
        let server_cfg = server_config(&server_id, &client_pin).expect("server_config");
        // The intruder pins the real server, so only the server can refuse.
        let client_cfg = client_config(&intruder, &server_pin).expect("client_config");
        let (addr, accepted) = serve_one(server_cfg);

        let client_result = bounded(
            "intruder client",
            connect_and_ping(client_cfg, addr, &server_pin.name),
        )
        .await;
        let server_result = bounded("server side", accepted).await.expect("accept task");

        let client_err = client_result
            .map(|(_, reply)| reply)
            .expect_err("an unknown client must not get a reply");
        let server_err = server_result
            .map(|_| ())
            .expect_err("the server must refuse an unknown client")
            .to_string();
        assert!(server_err.contains("pinned"), "{server_err}");
        assert!(server_err.contains("CN=intruder"), "{server_err}");
        assert!(server_err.contains(&client_pin.fingerprint), "{server_err}");
        assert!(!client_err.is_empty());
    }

    #[tokio::test]
    async fn server_with_unknown_certificate_is_refused() {
        let tmp = tempfile::tempdir().expect("tempdir");
        let (_, server_pin) = node(tmp.path(), "node1");
        let (client_id, client_pin) = node(tmp.path(), "node2");
        let (intruder, _) = node(tmp.path(), "intruder");
        // The intruder pins the real client, so only the client can refuse.
        let server_cfg = server_config(&intruder, &client_pin).expect("server_config");
        let client_cfg = client_config(&client_id, &server_pin).expect("client_config");
        let (addr, accepted) = serve_one(server_cfg);

        let client_err = bounded(
            "client against intruder",
            connect_and_ping(client_cfg, addr, &server_pin.name),
        )
        .await
        .map(|(_, reply)| reply)
        .expect_err("the client must refuse an unknown server");
        let server_result = bounded("intruder server", accepted)
            .await
            .expect("accept task");

        assert!(client_err.contains("pinned"), "{client_err}");
        assert!(client_err.contains("CN=intruder"), "{client_err}");
        assert!(client_err.contains(&server_pin.fingerprint), "{client_err}");
        assert!(
            server_result.is_err(),
            "the intruder must not get a connection"
        );
    }

    #[test]
    fn common_name_is_read_from_generated_certificates() {
        let tmp = tempfile::tempdir().expect("tempdir");
        let (_, pin) = node(tmp.path(), "web-a.example");
        assert_eq!(
            der::subject_common_name(pin.der.as_ref()).as_deref(),
            Some("web-a.example")
        );
        // Every truncation is rejected without panicking.
        for len in 0..pin.der.len() {
            assert_eq!(der::subject_common_name(&pin.der[..len]), None, "len {len}");
        }
    }

    #[test]
    fn presented_names_are_escaped_before_they_are_logged() {
        let key_pair = KeyPair::generate().expect("key pair");
        let mut params = CertificateParams::new(Vec::<String>::new()).expect("params");
        let mut dn = DistinguishedName::new();
        dn.push(DnType::CommonName, "evil\nWARN forged line");
        params.distinguished_name = dn;
        let cert = params.self_signed(&key_pair).expect("self-signed");

        assert_eq!(presented_cn(cert.der()), "evil\\nWARN forged line");
    }

    proptest! {
        #[test]
        fn common_name_reader_never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..600)) {
            let _ = der::subject_common_name(&bytes);
        }
    }
}
