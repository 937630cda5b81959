//! The OTLP exporters' HTTP client: hyper on the gateway's outbound connector
//! (`crate::outbound`), so exporting adds no second HTTP or TLS stack.

use bytes::Bytes;
use http::{Request, Response};
use http_body_util::{BodyExt, Full, Limited};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use opentelemetry_http::HttpError;

/// The most of a collector's answer that is read (it is a small protobuf message).
const ANSWER_LIMIT: usize = 64 * 1024;

type Inner = Client<hyper_rustls::HttpsConnector<HttpConnector>, Full<Bytes>>;

#[derive(Clone)]
pub struct CollectorClient {
    inner: Inner,
}

impl std::fmt::Debug for CollectorClient {
    fn fmt(&self, formatter: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        formatter.write_str("CollectorClient")
    }
}

impl CollectorClient {
    pub fn new() -> Result<CollectorClient, String> {
        let connector = crate::outbound::connector()?;
        // Exports follow each other within seconds: a kept-alive connection saves a
        // handshake per batch.
        let inner = Client::builder(TokioExecutor::new())
            .pool_max_idle_per_host(2)
            .pool_idle_timeout(std::time::Duration::from_secs(30))
            .build(connector);
        Ok(CollectorClient { inner })
    }
}

#[async_trait::async_trait]
impl opentelemetry_http::HttpClient for CollectorClient {
    async fn send_bytes(&self, request: Request<Bytes>) -> Result<Response<Bytes>, HttpError> {
        let response = self.inner.request(request.map(Full::new)).await?;
        let (parts, body) = response.into_parts();
        let body = Limited::new(body, ANSWER_LIMIT).collect().await?.to_bytes();
        Ok(Response::from_parts(parts, body))
    }
}
