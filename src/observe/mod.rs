//! Observability: Prometheus metrics (served by the admin listener).

pub mod metrics;
