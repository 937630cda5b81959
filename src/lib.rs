//! Loom: an API gateway on Cloudflare's Pingora.
//!
//! The binary (`src/main.rs`) wires these modules into one Pingora `Server`:
//! - [`config`]: YAML schema, validation with precise errors, the runtime snapshot.
//! - [`router`]: the route table compiled once per snapshot.
//! - [`upstream`]: load-balanced endpoint pools on Pingora's `LoadBalancer`, health checks.
//! - [`gateway`]: the `ProxyHttp` implementation that carries one request from listener to upstream.
//! - [`cache`]: the response cache and request coalescing on Pingora's HTTP cache.
//! - [`traffic`]: canary releases and shadow traffic on a route.
//! - [`control`]: the background service that runs health checks and reloads the config.
//! - [`admin`]: the admin listener (`/health`, `/ready`, `/info`, `/metrics`).
//! - [`observe`]: Prometheus metrics, the access log, OpenTelemetry traces and metrics push.
//! - [`outbound`]: the HTTP client connector for the gateway's own requests (JWKS, OTLP).
//! - [`stream`]: Loom v4 message streaming over QUIC and HTTP/3 (quinn + h3).
//! - [`echo`]: the echo backend shipped as `loom-echo` for demos, tests and load tests.

pub mod admin;
pub mod cache;
pub mod config;
pub mod control;
pub mod echo;
pub mod gateway;
pub mod ip_text;
pub mod observe;
pub mod outbound;
pub mod plugin;
pub mod policy;
pub mod router;
pub mod stream;
pub mod traffic;
pub mod upstream;
