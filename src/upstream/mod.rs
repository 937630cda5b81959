//! Upstream pools: one Pingora `LoadBalancer` per configured upstream, its active health
//! check, and the template for connecting to its endpoints.
//!
//! A pool is immutable apart from health state. A reload that leaves an upstream's config
//! unchanged hands the same `Arc<UpstreamPool>` to the new snapshot, so health state and
//! the keep-alive pool survive reloads.

pub mod breaker;
pub mod bulkhead;
pub mod endpoint;
pub mod health;
pub mod outlier;
pub mod pool;
pub mod retry;

pub use pool::{SelectError, Selection, Unselectable, UpstreamPool};
