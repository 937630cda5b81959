//! Proxy-Wasm plugins on wasmer (Cranelift): ABI 0.2.0 and 0.2.1, as the Envoy Rust SDK
//! builds them.
//!
//! - [`registry`]: the plugins of one config snapshot, compiled (or cached) and started.
//! - [`runtime`]: one plugin's instance pool, failure handling and quarantine.
//! - [`instance`]: one instance, its callbacks, fuel per callback.
//! - [`host`]: the host functions and the data a callback is lent.
//! - [`pipeline`]: one request through a route's plugin chain.
//! - [`engine`], [`fuel`], [`tunables`], [`cache`]: compilation with fuel metering and a memory cap, and
//!   the on-disk module cache.
//! - [`shared`], [`metrics`], [`ticker`]: shared data and queues, plugin metrics, and the
//!   background task for ticks and queues.
//! - [`callout`], [`http_call`], [`grpc_call`], [`callout_client`]: calls plugins dispatch,
//!   on pooled connections.
//! - [`paused`]: requests paused until another context resumes them.

pub mod abi;
pub mod cache;
pub mod callout;
pub mod callout_client;
pub mod engine;
pub mod fuel;
pub mod grpc_call;
pub mod host;
pub mod http_call;
pub mod instance;
pub mod metrics;
pub mod paused;
pub mod pipeline;
pub mod registry;
pub mod runtime;
pub mod shared;
pub mod ticker;
pub mod tunables;
