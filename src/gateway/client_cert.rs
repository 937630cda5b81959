//! Client certificates on HTTPS listeners (`tls.client_ca`, `tls.client_auth`).
//!
//! rustls verifies the chain against the listener's CA in the handshake (expired,
//! not-yet-valid and foreign certificates are refused there). Pingora then exposes only the
//! certificate's SHA-256 digest to requests, so the verifier here also records the verified
//! certificate's subject CN and DNS/URI/email SANs under that digest; a request looks its
//! connection's digest up once (see [`identity_of`]) for routes with a `client_certificate`
//! condition, the `mtls_auth` policy and plugins.

use std::sync::{Arc, LazyLock};

use pingora::proxy::Session;
use rustls::client::danger::HandshakeSignatureValid;
use rustls::pki_types::{CertificateDer, UnixTime};
use rustls::server::danger::{ClientCertVerified, ClientCertVerifier};
use rustls::{DigitallySignedStruct, DistinguishedName, SignatureScheme};

use crate::policy::keyed_hash::DigestMap;

/// Who a verified client certificate names.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct ClientIdentity {
    pub common_name: Option<String>,
    /// The whole subject, RFC 4514 style (`CN=client,O=Example`), as Envoy's
    /// `connection.subject_peer_certificate` property shows it.
    pub subject: String,
    /// The first DNS and the first URI subject alternative name, as Envoy's
    /// `connection.dns_san_peer_certificate` and `connection.uri_san_peer_certificate`.
    pub first_dns_name: Option<String>,
    pub first_uri: Option<String>,
    /// DNS names, URIs and e-mail addresses of the subject alternative names.
    pub alternative_names: Vec<String>,
}

impl ClientIdentity {
    /// The names a route or `mtls_auth` can list: the CN, then every SAN.
    pub fn names(&self) -> impl Iterator<Item = &str> {
        self.common_name
            .iter()
            .chain(&self.alternative_names)
            .map(String::as_str)
    }
}

/// Identities by the first 16 bytes of the certificate's SHA-256 digest.
static IDENTITIES: LazyLock<DigestMap<Arc<ClientIdentity>>> = LazyLock::new(DigestMap::default);
/// Distinct client certificates remembered before the table starts over.
const MAX_IDENTITIES: usize = 100_000;

fn digest_key(digest: &[u8]) -> Option<u128> {
    let bytes: [u8; 16] = digest.get(..16)?.try_into().ok()?;
    Some(u128::from_le_bytes(bytes))
}

/// The verified client certificate of the request's connection, if any.
///
/// A certificate the handshake verified but whose names are not on record (the table was
/// started over, or its names could not be parsed) comes back as an identity without names:
/// it is still a verified certificate (`client_certificate: {}` and `mtls_auth` without a
/// list accept it), but it matches no list of names and not `presented: false`. Failing
/// closed: such a client is never taken for one without a certificate.
pub fn identity_of(session: &Session) -> Option<Arc<ClientIdentity>> {
    identity_for_digest(&session.digest()?.ssl_digest.as_ref()?.cert_digest)
}

/// [`identity_of`] for the SHA-256 digest of the connection's certificate (empty: none).
fn identity_for_digest(certificate_digest: &[u8]) -> Option<Arc<ClientIdentity>> {
    static UNKNOWN: LazyLock<Arc<ClientIdentity>> =
        LazyLock::new(|| Arc::new(ClientIdentity::default()));
    let key = digest_key(certificate_digest)?;
    Some(
        IDENTITIES
            .get(&key)
            .map_or_else(|| Arc::clone(&UNKNOWN), |identity| Arc::clone(&identity)),
    )
}

fn record(certificate: &CertificateDer<'_>) {
    let digest = <sha2::Sha256 as sha2::Digest>::digest(certificate.as_ref());
    let Some(key) = digest_key(&digest) else {
        return;
    };
    if IDENTITIES.contains_key(&key) {
        return;
    }
    let Ok((_, parsed)) = x509_parser::parse_x509_certificate(certificate.as_ref()) else {
        return;
    };
    let common_name = parsed
        .subject()
        .iter_common_name()
        .next()
        .and_then(|name| name.as_str().ok())
        .map(str::to_string);
    let subject = parsed.subject().to_string();
    let mut alternative_names = Vec::new();
    let mut first_dns_name = None;
    let mut first_uri = None;
    if let Ok(Some(extension)) = parsed.subject_alternative_name() {
        for name in &extension.value.general_names {
            use x509_parser::extensions::GeneralName;
            match name {
                GeneralName::DNSName(text) => {
                    first_dns_name.get_or_insert_with(|| text.to_string());
                    alternative_names.push(text.to_string());
                }
                GeneralName::URI(text) => {
                    first_uri.get_or_insert_with(|| text.to_string());
                    alternative_names.push(text.to_string());
                }
                GeneralName::RFC822Name(text) => alternative_names.push(text.to_string()),
                _ => {}
            }
        }
    }
    if IDENTITIES.len() >= MAX_IDENTITIES {
        IDENTITIES.clear();
    }
    IDENTITIES.insert(
        key,
        Arc::new(ClientIdentity {
            common_name,
            subject,
            first_dns_name,
            first_uri,
            alternative_names,
        }),
    );
}

/// rustls' WebPKI verifier, recording each certificate it accepts.
#[derive(Debug)]
pub struct RecordingVerifier {
    inner: Arc<dyn ClientCertVerifier>,
}

impl RecordingVerifier {
    /// A verifier for the CA certificates in `ca_file`; `required: false` also lets clients
    /// without a certificate in (routes then decide, through `mtls_auth`).
    pub fn from_ca_file(ca_file: &str, required: bool) -> Result<Arc<RecordingVerifier>, String> {
        let inner = crate::stream::tls::client_verifier(std::path::Path::new(ca_file), required)
            .map_err(|error| error.to_string())?;
        Ok(Arc::new(RecordingVerifier { inner }))
    }
}

impl ClientCertVerifier for RecordingVerifier {
    fn offer_client_auth(&self) -> bool {
        self.inner.offer_client_auth()
    }

    fn client_auth_mandatory(&self) -> bool {
        self.inner.client_auth_mandatory()
    }

    fn root_hint_subjects(&self) -> &[DistinguishedName] {
        self.inner.root_hint_subjects()
    }

    fn verify_client_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        now: UnixTime,
    ) -> Result<ClientCertVerified, rustls::Error> {
        let verified = self
            .inner
            .verify_client_cert(end_entity, intermediates, now)?;
        record(end_entity);
        Ok(verified)
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        certificate: &CertificateDer<'_>,
        signature: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.inner
            .verify_tls12_signature(message, certificate, signature)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        certificate: &CertificateDer<'_>,
        signature: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.inner
            .verify_tls13_signature(message, certificate, signature)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.inner.supported_verify_schemes()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_verified_certificate_without_a_record_has_no_names_but_is_not_absent() {
        assert_eq!(identity_for_digest(&[]), None);
        let unknown = identity_for_digest(&[7; 32]).expect("a certificate was presented");
        assert_eq!(unknown.names().count(), 0);

        let key = rcgen::KeyPair::generate().unwrap();
        let mut params = rcgen::CertificateParams::new(vec!["ops.example.com".into()]).unwrap();
        params
            .distinguished_name
            .push(rcgen::DnType::CommonName, "ops");
        let certificate = params.self_signed(&key).unwrap();
        record(certificate.der());
        let digest = <sha2::Sha256 as sha2::Digest>::digest(certificate.der().as_ref());
        let known = identity_for_digest(&digest).expect("recorded");
        assert_eq!(
            known.names().collect::<Vec<_>>(),
            ["ops", "ops.example.com"]
        );
    }
}
