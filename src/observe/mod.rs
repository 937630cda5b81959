//! Observability: Prometheus metrics (served by the admin listener) and the JSON access log.

pub mod access_log;
pub mod metrics;
