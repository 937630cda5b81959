//! TLS 1.3 for the streaming endpoint and its client: certificates from files or a
//! self-signed one made at start (as the reference server does), optional client
//! certificates checked against a CA, and ALPN for both protocols on one port.

use std::path::Path;
use std::sync::Arc;

use rustls::DigitallySignedStruct;
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::CryptoProvider;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName, UnixTime};
use rustls::server::WebPkiClientVerifier;
use sha2::{Digest, Sha256};

use crate::config::stream::TlsPlan;

/// ALPN of raw QUIC Loom streams (Loom-go and Loom-net since v1.0.1).
pub const ALPN_LOOM: &[u8] = b"loom/1";
/// ALPN of HTTP/3 (`POST /stream`).
pub const ALPN_H3: &[u8] = b"h3";

#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error("{path}: {message}")]
    File { path: String, message: String },
    #[error("TLS setup failed: {0}")]
    Setup(String),
}

fn setup(error: impl std::fmt::Display) -> TlsError {
    TlsError::Setup(error.to_string())
}

fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

pub struct ServerTls {
    pub config: Arc<rustls::ServerConfig>,
    /// SHA-256 of the leaf certificate, `AA:BB:...`, for pinning a self-signed certificate.
    pub fingerprint: String,
    pub self_signed: bool,
}

/// rustls' WebPKI verifier for client certificates signed by the CAs in `ca_file`; with
/// `required: false` clients without a certificate are let in too. Shared by the stream
/// listener and the gateway's HTTPS listeners (`crate::gateway::client_cert`).
pub fn client_verifier(
    ca_file: &Path,
    required: bool,
) -> Result<Arc<dyn rustls::server::danger::ClientCertVerifier>, TlsError> {
    let mut roots = rustls::RootCertStore::empty();
    for certificate in load_certificates(ca_file)? {
        roots.add(certificate).map_err(setup)?;
    }
    let verifier = WebPkiClientVerifier::builder_with_provider(roots.into(), provider());
    let verifier = if required {
        verifier.build()
    } else {
        verifier.allow_unauthenticated().build()
    };
    verifier.map_err(setup)
}

pub fn load_certificates(path: &Path) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    let file_error = |message: String| TlsError::File {
        path: path.display().to_string(),
        message,
    };
    let bytes = std::fs::read(path).map_err(|error| file_error(error.to_string()))?;
    let certificates = rustls_pemfile::certs(&mut bytes.as_slice())
        .collect::<Result<Vec<_>, _>>()
        .map_err(|error| file_error(error.to_string()))?;
    if certificates.is_empty() {
        return Err(file_error("no PEM certificate found".into()));
    }
    Ok(certificates)
}

pub fn load_private_key(path: &Path) -> Result<PrivateKeyDer<'static>, TlsError> {
    let file_error = |message: String| TlsError::File {
        path: path.display().to_string(),
        message,
    };
    let bytes = std::fs::read(path).map_err(|error| file_error(error.to_string()))?;
    rustls_pemfile::private_key(&mut bytes.as_slice())
        .map_err(|error| file_error(error.to_string()))?
        .ok_or_else(|| file_error("no PEM private key found".into()))
}

pub fn fingerprint(certificate: &[u8]) -> String {
    Sha256::digest(certificate)
        .iter()
        .map(|byte| format!("{byte:02X}"))
        .collect::<Vec<_>>()
        .join(":")
}

pub fn server_config(plan: &TlsPlan) -> Result<ServerTls, TlsError> {
    let (chain, key, self_signed) = match (&plan.cert_file, &plan.key_file) {
        (Some(cert), Some(key)) => (load_certificates(cert)?, load_private_key(key)?, false),
        _ => {
            let generated = rcgen::generate_simple_self_signed(vec![
                "localhost".to_string(),
                "127.0.0.1".to_string(),
                "::1".to_string(),
            ])
            .map_err(setup)?;
            let key =
                PrivateKeyDer::try_from(generated.signing_key.serialize_der()).map_err(setup)?;
            (vec![generated.cert.der().clone()], key, true)
        }
    };
    let fingerprint = fingerprint(&chain[0]);
    let builder = rustls::ServerConfig::builder_with_provider(provider())
        .with_protocol_versions(&[&rustls::version::TLS13])
        .map_err(setup)?;
    let builder = match &plan.client_ca_file {
        Some(ca_file) => {
            builder.with_client_cert_verifier(client_verifier(ca_file, plan.require_client_cert)?)
        }
        None => builder.with_no_client_auth(),
    };
    let mut config = builder.with_single_cert(chain, key).map_err(setup)?;
    config.alpn_protocols = vec![ALPN_LOOM.to_vec(), ALPN_H3.to_vec()];
    config.max_early_data_size = 0;
    Ok(ServerTls {
        config: Arc::new(config),
        fingerprint,
        self_signed,
    })
}

/// The subject CN of the peer's leaf certificate, for `mtls` grants.
pub fn peer_common_name(connection: &quinn::Connection) -> Option<String> {
    let identity = connection.peer_identity()?;
    let chain = identity.downcast::<Vec<CertificateDer<'static>>>().ok()?;
    let leaf = chain.first()?;
    let (_, certificate) = x509_parser::parse_x509_certificate(leaf).ok()?;
    let common_name = certificate
        .subject()
        .iter_common_name()
        .next()?
        .as_str()
        .ok()?
        .to_string();
    Some(common_name)
}

/// How a client checks the server.
#[derive(Debug, Clone, Default)]
pub struct ClientTlsOptions {
    /// Accept any server certificate (development, or the self-signed default).
    pub insecure_skip_verify: bool,
    pub ca_file: Option<std::path::PathBuf>,
    /// Client certificate and key for `mtls` and `both`.
    pub client_cert: Option<(std::path::PathBuf, std::path::PathBuf)>,
}

pub fn client_config(
    options: &ClientTlsOptions,
    alpn: &[u8],
) -> Result<rustls::ClientConfig, TlsError> {
    let builder = rustls::ClientConfig::builder_with_provider(provider())
        .with_protocol_versions(&[&rustls::version::TLS13])
        .map_err(setup)?;
    let builder = if options.insecure_skip_verify {
        builder
            .dangerous()
            .with_custom_certificate_verifier(Arc::new(AcceptAnyServer(provider())))
    } else {
        let mut roots = rustls::RootCertStore::empty();
        if let Some(ca_file) = &options.ca_file {
            for certificate in load_certificates(ca_file)? {
                roots.add(certificate).map_err(setup)?;
            }
        }
        builder.with_root_certificates(roots)
    };
    let mut config = match &options.client_cert {
        Some((cert, key)) => builder
            .with_client_auth_cert(load_certificates(cert)?, load_private_key(key)?)
            .map_err(setup)?,
        None => builder.with_no_client_auth(),
    };
    config.alpn_protocols = vec![alpn.to_vec()];
    Ok(config)
}

/// A verifier that trusts any server certificate (the stream client's
/// `insecure_skip_verify`, plugin callouts to upstreams with `tls.verify: false`).
pub(crate) fn accept_any_server(provider: Arc<CryptoProvider>) -> Arc<dyn ServerCertVerifier> {
    Arc::new(AcceptAnyServer(provider))
}

/// `insecure_skip_verify`: trusts any certificate but still checks the handshake
/// signatures, so the session is at least bound to the key the server presented.
#[derive(Debug)]
struct AcceptAnyServer(Arc<CryptoProvider>);

impl ServerCertVerifier for AcceptAnyServer {
    fn verify_server_cert(
        &self,
        _end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        certificate: &CertificateDer<'_>,
        signature: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(
            message,
            certificate,
            signature,
            &self.0.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        certificate: &CertificateDer<'_>,
        signature: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(
            message,
            certificate,
            signature,
            &self.0.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<rustls::SignatureScheme> {
        self.0.signature_verification_algorithms.supported_schemes()
    }
}
