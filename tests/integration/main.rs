//! End-to-end tests: the real `loom` binary and real echo backends on 127.0.0.1.

mod admin_api;
mod auth;
mod balancing;
mod cli;
mod explain;
mod fault;
mod go_loom;
mod malformed;
mod metrics;
mod mtls;
mod otlp_receiver;
mod plugins;
mod policies;
mod proxying;
mod rate_limit;
mod redis_support;
mod reload;
mod resilience;
mod routing;
mod stream;
mod stream_process;
mod stream_support;
mod support;
mod tracing;
mod traffic;
mod upgrade;
