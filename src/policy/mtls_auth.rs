//! `mtls_auth`: lets in only clients whose certificate (verified in the TLS handshake
//! against the listener's `tls.client_ca`, see `crate::gateway::client_cert`) names an
//! allowed subject, and tells the upstream who they are.
//!
//! No certificate (a listener with `client_auth: optional`, or plain HTTP) is 401; a
//! certificate whose CN and SANs are all unlisted is 403. The CN (else the first SAN) becomes
//! the request's consumer.

use std::collections::HashSet;
use std::sync::Arc;

use http::{HeaderName, HeaderValue};
use pingora::proxy::Session;
use serde::Deserialize;

use super::auth::{consumer_header, refuse, remove_client_header, set_consumer};
use super::{RequestInput, Verdict};
use crate::gateway::client_cert::identity_of;

#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct MtlsAuthConfig {
    /// Subject CNs or SANs let in; empty lets in any certificate the CA signed.
    pub allowed_subjects: Vec<String>,
    /// Carries the CN upstream; `""` sends nothing.
    pub subject_header: String,
    /// Carries the SANs upstream, comma-separated; `""` sends nothing.
    pub san_header: String,
    pub consumer_header: Option<String>,
}

impl Default for MtlsAuthConfig {
    fn default() -> Self {
        MtlsAuthConfig {
            allowed_subjects: Vec::new(),
            subject_header: "X-Client-Cert-Subject".to_string(),
            san_header: "X-Client-Cert-SAN".to_string(),
            consumer_header: None,
        }
    }
}

#[derive(Debug)]
pub struct MtlsAuth {
    allowed: HashSet<String>,
    subject_header: Option<HeaderName>,
    san_header: Option<HeaderName>,
    consumer_header: Option<HeaderName>,
}

fn optional_header(
    text: &str,
    field: &str,
    report: &mut dyn FnMut(&str, String),
) -> Option<HeaderName> {
    if text.is_empty() {
        return None;
    }
    super::header_name(text)
        .map_err(|message| report(field, message))
        .ok()
}

impl MtlsAuth {
    pub fn compile(
        config: MtlsAuthConfig,
        report: &mut dyn FnMut(&str, String),
    ) -> Option<MtlsAuth> {
        Some(MtlsAuth {
            allowed: config.allowed_subjects.iter().cloned().collect(),
            subject_header: optional_header(&config.subject_header, "subject_header", report),
            san_header: optional_header(&config.san_header, "san_header", report),
            consumer_header: consumer_header(config.consumer_header.as_deref(), report),
        })
    }

    pub fn on_request(&self, session: &mut Session, input: &mut RequestInput<'_>) -> Verdict {
        for header in [
            &self.subject_header,
            &self.san_header,
            &self.consumer_header,
        ]
        .into_iter()
        .flatten()
        {
            remove_client_header(session, header);
        }
        let Some(identity) = identity_of(session) else {
            return Verdict::Fail(refuse(
                input,
                input.step_name,
                401,
                "missing",
                "a client certificate is required",
            ));
        };
        let listed =
            self.allowed.is_empty() || identity.names().any(|name| self.allowed.contains(name));
        if !listed {
            return Verdict::Fail(refuse(
                input,
                input.step_name,
                403,
                "forbidden",
                "the client certificate is not allowed here",
            ));
        }
        let request = session.req_header_mut();
        if let (Some(header), Some(name)) = (&self.subject_header, &identity.common_name)
            && let Ok(value) = HeaderValue::from_str(name)
        {
            let _ = request.insert_header(header.clone(), value);
        }
        if let Some(header) = &self.san_header
            && !identity.alternative_names.is_empty()
            && let Ok(value) = HeaderValue::from_str(&identity.alternative_names.join(","))
        {
            let _ = request.insert_header(header.clone(), value);
        }
        let consumer = identity
            .common_name
            .as_ref()
            .or(identity.alternative_names.first());
        if let Some(consumer) = consumer {
            let consumer: Arc<str> = Arc::from(consumer.as_str());
            set_consumer(session, input, self.consumer_header.as_ref(), &consumer);
        }
        Verdict::Continue
    }

    pub fn describe(&self) -> serde_json::Value {
        let mut allowed: Vec<&String> = self.allowed.iter().collect();
        allowed.sort_unstable();
        serde_json::json!({
            "allowed_subjects": allowed,
            "subject_header": self.subject_header.as_ref().map(HeaderName::as_str),
            "san_header": self.san_header.as_ref().map(HeaderName::as_str),
            "consumer_header": self.consumer_header.as_ref().map(HeaderName::as_str),
        })
    }
}
