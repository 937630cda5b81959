//! The gateway's own outbound HTTP connections (JWKS fetches, OTLP exports): `http` and
//! `https` over rustls on ring, the crypto Pingora's TLS already links, with the Mozilla
//! roots, so no second TLS stack is compiled in.

use hyper_rustls::HttpsConnector;
use hyper_util::client::legacy::connect::HttpConnector;

/// An HTTP/1.1 connector for `http` and `https` URLs.
pub fn connector() -> Result<HttpsConnector<HttpConnector>, String> {
    Ok(hyper_rustls::HttpsConnectorBuilder::new()
        .with_provider_and_webpki_roots(rustls::crypto::ring::default_provider())
        .map_err(|error| format!("TLS setup: {error}"))?
        .https_or_http()
        .enable_http1()
        .build())
}
