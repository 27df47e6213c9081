//! TLS for every PostgreSQL connection: one connector, built from a [`Target`]'s
//! [`TlsSettings`], used by the blocking client (`pg::connect`) and by the runtime
//! store's pool alike (both take tokio-postgres's `MakeTlsConnect`). rustls with the
//! `ring` provider: no system OpenSSL.
//!
//! libpq's `sslmode`: `prefer`/`allow` and `require` encrypt without checking the
//! certificate (handshake signatures are still checked); `verify-ca` checks the chain
//! against `sslrootcert`; `verify-full` also checks the host name (a DNS name or an IP
//! address) against the certificate's subject alternative names. `require` with an
//! existing root certificate file is `verify-ca`, as in libpq (decided in `config`).
//! Under `prefer`, a server without SSL is spoken to in plain text (tokio-postgres).

use std::future::Future;
use std::io;
use std::path::Path;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::client::{verify_server_cert_signed_by_trust_anchor, verify_server_name};
use rustls::crypto::WebPkiSupportedAlgorithms;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName, UnixTime};
use rustls::server::ParsedCertificate;
use rustls::{CertificateError, ClientConfig, DigitallySignedStruct, RootCertStore};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio_postgres::tls::{ChannelBinding, MakeTlsConnect, TlsConnect};

use crate::config::{Target, TlsFile, TlsSettings, Verify};
use crate::error::{Error, Result};

/// The connector of one target: cheap to clone (the rustls config is shared).
#[derive(Clone)]
pub struct MakeTls {
    config: Arc<ClientConfig>,
    check_host: bool,
}

/// Build the connector for `t`: reads the root certificate and the client certificate
/// and key it names. A missing or unreadable file is a setting error that names it.
pub fn connector(t: &Target) -> Result<MakeTls> {
    let tls = &t.tls;
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let algs = provider.signature_verification_algorithms;
    let roots = match (tls.verify, &tls.root_cert) {
        (Verify::Nothing, _) => None,
        (_, None) => {
            return Err(Error::SettingInvalid {
                name: "sslrootcert".into(),
                message: format!(
                    "sslmode={} (from {}) needs the CA certificate that signed the server's: give it with sslrootcert=/path/to/ca.crt in the connection string or PGSSLROOTCERT ($HOME is not set, so ~/.postgresql/root.crt cannot be looked for)",
                    tls.mode, tls.mode_from
                ),
            });
        }
        (_, Some(f)) => Some(Arc::new(root_store(f, tls)?)),
    };
    let builder = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| Error::SettingInvalid {
            name: "sslmode".into(),
            message: format!("cannot set up TLS: {e}"),
        })?
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(Verifier {
            roots,
            check_host: tls.verify == Verify::ChainAndHost,
            algs,
        }));
    let mut config = match (&tls.client_cert, &tls.client_key) {
        (Some(cert), Some(key)) => {
            let chain = certificates(cert, "sslcert")?;
            let key_der = private_key(key, cert)?;
            builder
                .with_client_auth_cert(chain, key_der)
                .map_err(|e| Error::SettingInvalid {
                    name: "sslkey".into(),
                    message: format!(
                        "{} (from {}) does not go with the client certificate {}: {e}",
                        key.path.display(),
                        key.from,
                        cert.path.display()
                    ),
                })?
        }
        _ => builder.with_no_client_auth(),
    };
    // As libpq 17 does; PostgreSQL 17 insists on it for sslnegotiation=direct.
    config.alpn_protocols = vec![b"postgresql".to_vec()];
    Ok(MakeTls {
        config: Arc::new(config),
        check_host: tls.verify == Verify::ChainAndHost,
    })
}

/// A certificate or key file's bytes, or why there are none ("does not exist").
fn read(f: &TlsFile) -> std::result::Result<Vec<u8>, String> {
    std::fs::read(&f.path).map_err(|e| {
        if e.kind() == io::ErrorKind::NotFound {
            "does not exist".to_owned()
        } else {
            format!("cannot be read: {e}")
        }
    })
}

fn read_file(f: &TlsFile, key: &str, what: &str) -> Result<Vec<u8>> {
    read(f).map_err(|why| Error::SettingInvalid {
        name: key.into(),
        message: format!("{what} {} (from {}) {why}", f.path.display(), f.from),
    })
}

fn root_store(f: &TlsFile, tls: &TlsSettings) -> Result<RootCertStore> {
    if f.path == Path::new("system") {
        return Err(Error::SettingInvalid {
            name: "sslrootcert".into(),
            message: format!(
                "sslrootcert=system (from {}): the system's trusted roots are not supported; give the CA certificate file",
                f.from
            ),
        });
    }
    let bytes = read(f).map_err(|why| Error::SettingInvalid {
        name: "sslrootcert".into(),
        message: format!(
            "sslmode={} (from {}) checks the server's certificate against a root certificate, and {} (from {}) {why}: give the CA file with sslrootcert=/path/to/ca.crt or PGSSLROOTCERT, or use sslmode=require to encrypt without verifying",
            tls.mode,
            tls.mode_from,
            f.path.display(),
            f.from
        ),
    })?;
    let mut store = RootCertStore::empty();
    let mut bad = None;
    for c in CertificateDer::pem_slice_iter(&bytes) {
        match c.map_err(|e| e.to_string()).and_then(|c| {
            store
                .add(c)
                .map_err(|e| format!("not a usable CA certificate: {e}"))
        }) {
            Ok(()) => {}
            Err(e) => bad = bad.or(Some(e)),
        }
    }
    if store.is_empty() {
        return Err(Error::SettingInvalid {
            name: "sslrootcert".into(),
            message: format!(
                "{} (from {}) holds no PEM certificate{}",
                f.path.display(),
                f.from,
                bad.map(|b| format!(" ({b})")).unwrap_or_default()
            ),
        });
    }
    Ok(store)
}

fn certificates(f: &TlsFile, key: &str) -> Result<Vec<CertificateDer<'static>>> {
    let bytes = read_file(f, key, "the client certificate")?;
    let certs = CertificateDer::pem_slice_iter(&bytes)
        .collect::<std::result::Result<Vec<_>, _>>()
        .map_err(|e| Error::SettingInvalid {
            name: key.into(),
            message: format!("{} (from {}): {e}", f.path.display(), f.from),
        })?;
    if certs.is_empty() {
        return Err(Error::SettingInvalid {
            name: key.into(),
            message: format!(
                "{} (from {}) holds no PEM certificate",
                f.path.display(),
                f.from
            ),
        });
    }
    Ok(certs)
}

fn private_key(f: &TlsFile, cert: &TlsFile) -> Result<PrivateKeyDer<'static>> {
    let what = format!("the key of the client certificate {}", cert.path.display());
    let bytes = read_file(f, "sslkey", &what)?;
    PrivateKeyDer::from_pem_slice(&bytes).map_err(|e| Error::SettingInvalid {
        name: "sslkey".into(),
        message: format!(
            "{} (from {}) holds no unencrypted PEM private key: {e}",
            f.path.display(),
            f.from
        ),
    })
}

/// The server certificate check of one `sslmode`: nothing (`roots` is `None`), the
/// chain, or the chain and the name. Handshake signatures are always checked.
#[derive(Debug)]
struct Verifier {
    roots: Option<Arc<RootCertStore>>,
    check_host: bool,
    algs: WebPkiSupportedAlgorithms,
}

impl ServerCertVerifier for Verifier {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        now: UnixTime,
    ) -> std::result::Result<ServerCertVerified, rustls::Error> {
        if let Some(roots) = &self.roots {
            let cert = ParsedCertificate::try_from(end_entity)?;
            verify_server_cert_signed_by_trust_anchor(
                &cert,
                roots,
                intermediates,
                now,
                self.algs.all,
            )?;
            if self.check_host {
                verify_server_name(&cert, server_name)?;
            }
        }
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> std::result::Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(message, cert, dss, &self.algs)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> std::result::Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(message, cert, dss, &self.algs)
    }

    fn supported_verify_schemes(&self) -> Vec<rustls::SignatureScheme> {
        self.algs.supported_schemes()
    }
}

/// Why TLS could not be set up on one connection.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    /// rustls refused the handshake (our check of the server, or the server's alert).
    #[error("{0}")]
    Handshake(rustls::Error),
    /// The connection broke during the handshake.
    #[error("{0}")]
    Io(io::Error),
    /// `verify-full` with a host that is neither a DNS name nor an IP address.
    #[error(
        "host {0:?} is neither a DNS name nor an IP address, so the server's certificate cannot be checked against it"
    )]
    HostName(String),
}

impl MakeTls {
    /// The name the handshake presents (SNI) and checks. Without the host check any
    /// name will do: a host that is not a DNS name gets a placeholder address (no SNI).
    fn server_name(&self, host: &str) -> std::result::Result<ServerName<'static>, TlsError> {
        match ServerName::try_from(host.to_owned()) {
            Ok(n) => Ok(n),
            Err(_) if !self.check_host => Ok(ServerName::IpAddress(
                std::net::IpAddr::from([127, 0, 0, 1]).into(),
            )),
            Err(_) => Err(TlsError::HostName(host.to_owned())),
        }
    }
}

impl<S> MakeTlsConnect<S> for MakeTls
where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    type Stream = TlsStream<S>;
    type TlsConnect = Connect;
    type Error = TlsError;

    fn make_tls_connect(&mut self, host: &str) -> std::result::Result<Connect, TlsError> {
        // A bad name fails the handshake, not this call: over a Unix socket (no host),
        // the server's "no SSL" answer comes first and is the clearer error.
        Ok(Connect {
            config: self.config.clone(),
            name: self.server_name(host),
        })
    }
}

/// One connection's handshake.
pub struct Connect {
    config: Arc<ClientConfig>,
    name: std::result::Result<ServerName<'static>, TlsError>,
}

type Handshake<S> =
    Pin<Box<dyn Future<Output = std::result::Result<TlsStream<S>, TlsError>> + Send>>;

impl<S> TlsConnect<S> for Connect
where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    type Stream = TlsStream<S>;
    type Error = TlsError;
    type Future = Handshake<S>;

    fn connect(self, stream: S) -> Handshake<S> {
        Box::pin(async move {
            let name = self.name?;
            let s = tokio_rustls::TlsConnector::from(self.config)
                .connect(name, stream)
                .await
                .map_err(|e| {
                    match e
                        .get_ref()
                        .and_then(|inner| inner.downcast_ref::<rustls::Error>())
                    {
                        Some(r) => TlsError::Handshake(r.clone()),
                        None => TlsError::Io(e),
                    }
                })?;
            Ok(TlsStream(s))
        })
    }
}

/// An encrypted connection.
pub struct TlsStream<S>(tokio_rustls::client::TlsStream<S>);

impl<S: AsyncRead + AsyncWrite + Unpin> AsyncRead for TlsStream<S> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.0).poll_read(cx, buf)
    }
}

impl<S: AsyncRead + AsyncWrite + Unpin> AsyncWrite for TlsStream<S> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.0).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.0).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.0).poll_shutdown(cx)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.0).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.0.is_write_vectored()
    }
}

impl<S: AsyncRead + AsyncWrite + Unpin> tokio_postgres::tls::TlsStream for TlsStream<S> {
    /// SCRAM-SHA-256-PLUS binds the login to this TLS session with the server's
    /// certificate hash.
    fn channel_binding(&self) -> ChannelBinding {
        let (_, conn) = self.0.get_ref();
        match conn
            .peer_certificates()
            .and_then(|c| c.first())
            .and_then(|c| end_point_hash(c))
        {
            Some(h) => ChannelBinding::tls_server_end_point(h),
            None => ChannelBinding::none(),
        }
    }
}

/// The `tls-server-end-point` channel binding (RFC 5929 §4.1): the certificate hashed
/// with the hash of its signature algorithm, SHA-256 for MD5 and SHA-1. `None` for an
/// algorithm without one (Ed25519, RSASSA-PSS): the login then goes without binding.
fn end_point_hash(cert: &[u8]) -> Option<Vec<u8>> {
    use sha2::Digest;
    // The DER contents of the signature algorithm OIDs.
    const RSA: &[u8] = &[0x2a, 0x86, 0x48, 0x86, 0xf7, 0x0d, 0x01, 0x01];
    const ECDSA: &[u8] = &[0x2a, 0x86, 0x48, 0xce, 0x3d, 0x04];
    let oid = signature_algorithm(cert)?;
    let bits = if let Some(last) = oid.strip_prefix(RSA) {
        match last {
            [0x04] | [0x05] | [0x0b] => 256, // md5, sha1, sha256 WithRSAEncryption
            [0x0c] => 384,
            [0x0d] => 512,
            _ => return None,
        }
    } else if let Some(last) = oid.strip_prefix(ECDSA) {
        match last {
            [0x01] | [0x03, 0x02] => 256, // ecdsa-with-SHA1, ecdsa-with-SHA256
            [0x03, 0x03] => 384,
            [0x03, 0x04] => 512,
            _ => return None,
        }
    } else {
        return None;
    };
    Some(match bits {
        256 => sha2::Sha256::digest(cert).to_vec(),
        384 => sha2::Sha384::digest(cert).to_vec(),
        _ => sha2::Sha512::digest(cert).to_vec(),
    })
}

/// The signature algorithm OID of a DER certificate:
/// `SEQUENCE { tbsCertificate, SEQUENCE { OID, params }, signature }`.
fn signature_algorithm(cert: &[u8]) -> Option<&[u8]> {
    let (0x30, body, _) = der(cert)? else {
        return None;
    };
    let (0x30, _, rest) = der(body)? else {
        return None;
    };
    let (0x30, alg, _) = der(rest)? else {
        return None;
    };
    let (0x06, oid, _) = der(alg)? else {
        return None;
    };
    Some(oid)
}

/// One DER element: its tag, its contents, and what follows it.
fn der(b: &[u8]) -> Option<(u8, &[u8], &[u8])> {
    let (&tag, b) = b.split_first()?;
    let (&first, b) = b.split_first()?;
    let (len, b) = if first < 0x80 {
        (first as usize, b)
    } else {
        let n = (first & 0x7f) as usize;
        if n == 0 || n > 4 || b.len() < n {
            return None;
        }
        let len = b[..n]
            .iter()
            .fold(0usize, |acc, &x| (acc << 8) | x as usize);
        (len, &b[n..])
    };
    (b.len() >= len).then(|| (tag, &b[..len], &b[len..]))
}

/// Why a connection to `t` failed at TLS, in plain words; `None` when it did not fail
/// there. The rustls error is a source of the driver's error.
pub fn failure(err: &tokio_postgres::Error, t: &Target) -> Option<String> {
    let mut cur: Option<&(dyn std::error::Error + 'static)> = Some(err);
    while let Some(e) = cur {
        if let Some(te) = e.downcast_ref::<TlsError>() {
            return Some(explain(te, t));
        }
        cur = e.source();
    }
    let text = crate::error::error_chain(err);
    if text.contains("server does not support TLS") {
        return Some(
            "the server does not support SSL (it refused the SSL request): turn ssl on in its postgresql.conf, or use sslmode=prefer to connect without encryption"
                .into(),
        );
    }
    if text.contains("no hostname provided for TLS") {
        return Some("TLS needs a host name, and this connection has none (a Unix socket)".into());
    }
    None
}

fn explain(e: &TlsError, t: &Target) -> String {
    let root = || {
        t.tls
            .root_cert
            .as_ref()
            .map(|r| r.path.display().to_string())
            .unwrap_or_else(|| "the root certificate".into())
    };
    let cert = match e {
        TlsError::Handshake(rustls::Error::InvalidCertificate(c)) => c,
        TlsError::Handshake(rustls::Error::AlertReceived(a)) => {
            let hint = match a {
                rustls::AlertDescription::CertificateRequired
                | rustls::AlertDescription::HandshakeFailure
                    if t.tls.client_cert.is_none() =>
                {
                    " (does it want a client certificate? give sslcert and sslkey)"
                }
                rustls::AlertDescription::UnknownCA | rustls::AlertDescription::BadCertificate => {
                    " (it does not accept the client certificate)"
                }
                _ => "",
            };
            return format!("the server ended the TLS handshake with the alert {a:?}{hint}");
        }
        TlsError::Handshake(other) => return format!("the TLS handshake failed: {other}"),
        TlsError::Io(e) => return format!("the connection broke during the TLS handshake: {e}"),
        TlsError::HostName(_) => return e.to_string(),
    };
    match cert {
        CertificateError::UnknownIssuer | CertificateError::BadSignature => {
            format!(
                "the server's certificate is not signed by the CA in {}",
                root()
            )
        }
        CertificateError::NotValidForName => {
            "the server's certificate is not valid for the host name it was reached by".into()
        }
        CertificateError::NotValidForNameContext {
            expected,
            presented,
        } => {
            let names: Vec<String> = presented.iter().map(|p| name_of(p)).collect();
            format!(
                "the server's certificate is not valid for host {} (it names {})",
                expected.to_str(),
                if names.is_empty() {
                    "no host".into()
                } else {
                    names.join(", ")
                }
            )
        }
        CertificateError::Expired | CertificateError::ExpiredContext { .. } => {
            "the server's certificate has expired".into()
        }
        CertificateError::NotValidYet | CertificateError::NotValidYetContext { .. } => {
            "the server's certificate is not valid yet (check the clocks)".into()
        }
        other => format!("the server's certificate was refused: {other:?}"),
    }
}

/// `DnsName("db.example")` → `db.example`, `IpAddress(127.0.0.1)` → `127.0.0.1`.
fn name_of(presented: &str) -> String {
    presented
        .strip_prefix("DnsName(\"")
        .and_then(|s| s.strip_suffix("\")"))
        .or_else(|| {
            presented
                .strip_prefix("IpAddress(")
                .and_then(|s| s.strip_suffix(')'))
        })
        .unwrap_or(presented)
        .to_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn channel_binding_hash_follows_the_signature_algorithm() {
        let key = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P384_SHA384).unwrap();
        let cert = rcgen::CertificateParams::new(vec!["db.test".into()])
            .unwrap()
            .self_signed(&key)
            .unwrap();
        let der = cert.der().to_vec();
        assert_eq!(
            signature_algorithm(&der),
            Some(&[0x2a, 0x86, 0x48, 0xce, 0x3d, 0x04, 0x03, 0x03][..])
        );
        use sha2::Digest;
        assert_eq!(
            end_point_hash(&der),
            Some(sha2::Sha384::digest(&der).to_vec())
        );
        let ed = rcgen::KeyPair::generate_for(&rcgen::PKCS_ED25519).unwrap();
        let cert = rcgen::CertificateParams::new(vec!["db.test".into()])
            .unwrap()
            .self_signed(&ed)
            .unwrap();
        assert_eq!(end_point_hash(cert.der()), None);
        assert_eq!(end_point_hash(b"\x30\x82"), None);
    }

    #[test]
    fn presented_names_read_plainly() {
        assert_eq!(name_of("DnsName(\"localhost\")"), "localhost");
        assert_eq!(name_of("IpAddress(127.0.0.1)"), "127.0.0.1");
        assert_eq!(name_of("DirectoryName"), "DirectoryName");
    }
}
