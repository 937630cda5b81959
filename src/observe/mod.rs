//! Observability: Prometheus metrics (served by the admin listener), the JSON access log and
//! OpenTelemetry traces.

pub mod access_log;
pub mod metrics;
pub mod metrics_push;
pub mod monotonic;
pub mod route_metrics;
pub mod series;
pub mod tracing;
pub mod wall_clock;
