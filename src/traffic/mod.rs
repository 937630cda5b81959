//! Traffic management on a route beyond its one upstream: canary releases ([`canary`], with
//! automatic rollback in [`canary_analysis`]) and shadow traffic ([`shadow`], compared by
//! [`shadow_compare`]). Routes without them pay one `Option` check per request phase.

pub mod canary;
pub mod canary_analysis;
pub mod metrics;
pub mod shadow;
pub mod shadow_compare;
