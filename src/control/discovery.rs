//! DNS service discovery (Go Loom's `service_discovery: {provider: dns}`).
//!
//! Every `refresh_interval` the names behind an upstream are resolved again: each endpoint's
//! own host name, or Go Loom's `service_name`. When an endpoint's name no longer resolves to
//! the address its pool connects to (or `service_name` now resolves to another set of
//! addresses), the control service runs the same forced reload as SIGHUP: validation
//! resolves every name again, and the new snapshot rebuilds only the pools whose addresses
//! moved. Going through the reload keeps a single way for endpoints to change.
//!
//! An endpoint whose name still resolves to its address among others is left alone, so DNS
//! servers that rotate the order of their answers do not cause reloads, and a change must be
//! seen by two lookups in a row. A lookup that fails keeps the current addresses, as Go Loom
//! does, and is logged.

use std::net::SocketAddr;
use std::sync::Arc;

use tokio::sync::Notify;

use crate::config::validate::{UpstreamPlan, preferred_addresses};
use crate::upstream::UpstreamPool;

/// Checks `pool` every refresh interval for as long as some snapshot uses it, and wakes
/// `changed` (the control service's reload) when its addresses moved.
pub fn spawn_loop(pool: &Arc<UpstreamPool>, changed: &Arc<Notify>) {
    let Some(interval) = pool
        .plan
        .discovery
        .as_ref()
        .map(|discovery| discovery.refresh_interval)
    else {
        return;
    };
    let weak = Arc::downgrade(pool);
    let changed = Arc::clone(changed);
    tokio::spawn(async move {
        // A change is followed only when two lookups in a row report the same one: a DNS
        // server that answers with a random subset of its addresses (Consul, Route 53
        // multivalue) would otherwise rebuild the pool, and lose its health and breaker
        // state, at every interval.
        let mut unconfirmed: Option<String> = None;
        loop {
            tokio::time::sleep(interval).await;
            let Some(pool) = weak.upgrade().filter(|pool| !pool.is_retired()) else {
                break;
            };
            let change = find_change(&pool.plan).await;
            match (&change, &unconfirmed) {
                (Some(now), Some(before)) if now == before => {
                    log::info!(
                        "upstream {}: {now}; reloading the config to follow it",
                        pool.name
                    );
                    changed.notify_one();
                    unconfirmed = None;
                }
                _ => unconfirmed = change,
            }
        }
    });
}

/// What moved since `plan` was resolved, if anything.
async fn find_change(plan: &UpstreamPlan) -> Option<String> {
    let discovery = plan.discovery.as_ref()?;
    if let Some(service) = &discovery.service {
        let target = format!("{}:{}", service.name, service.port);
        let resolved = preferred_addresses(lookup(&target).await?);
        let current = preferred_addresses(plan.endpoints.iter().map(|endpoint| endpoint.socket));
        return (!resolved.is_empty() && resolved != current).then(|| {
            format!(
                "service {} now resolves to {}",
                service.name,
                address_list(&resolved)
            )
        });
    }
    for endpoint in &plan.endpoints {
        // An endpoint written as an IP address has no name to follow.
        if endpoint.address.parse::<SocketAddr>().is_ok() {
            continue;
        }
        let Some(resolved) = lookup(&endpoint.address).await.map(preferred_addresses) else {
            continue;
        };
        if !resolved.is_empty() && !resolved.contains(&endpoint.socket) {
            return Some(format!(
                "endpoint {} no longer resolves to {} (now {})",
                endpoint.address,
                endpoint.socket,
                address_list(&resolved)
            ));
        }
    }
    None
}

/// Resolves `host:port`; `None` after logging a failure, which keeps the current addresses.
async fn lookup(target: &str) -> Option<Vec<SocketAddr>> {
    match tokio::net::lookup_host(target).await {
        Ok(addresses) => Some(addresses.collect()),
        Err(error) => {
            log::warn!(
                "service discovery: cannot resolve {target}: {error}; keeping the current addresses"
            );
            None
        }
    }
}

fn address_list(addresses: &[SocketAddr]) -> String {
    addresses
        .iter()
        .map(ToString::to_string)
        .collect::<Vec<_>>()
        .join(", ")
}
