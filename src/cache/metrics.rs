//! `loom_cache_*` series: lookups by route and result, and the store's size, entries and
//! evictions (read from the store when `/metrics` is gathered, so the request path keeps no
//! gauge up to date).

use std::sync::LazyLock;

use prometheus::core::{Collector, Desc};
use prometheus::proto::MetricFamily;
use prometheus::{IntCounter, IntGauge};

use super::storage::CacheStore;
use crate::observe::series::{Family, counter_family};

pub struct CacheMetrics {
    /// `loom_cache_requests_total{route, result}`: hit, miss, stale, expired, revalidated,
    /// bypass.
    pub requests: Family<IntCounter>,
    /// `loom_coalesced_requests_total{route}`: requests answered with another's upstream
    /// answer.
    pub coalesced: Family<IntCounter>,
}

static METRICS: LazyLock<CacheMetrics> = LazyLock::new(|| {
    let register = |family: Family<IntCounter>| {
        if let Err(error) = prometheus::default_registry().register(Box::new(family.clone())) {
            log::error!("metric registration failed: {error}");
        }
        family
    };
    CacheMetrics {
        requests: register(counter_family(
            "loom_cache_requests_total",
            "Requests on caching routes by route and cache result (hit, miss, stale, expired, revalidated, bypass).",
            &["route", "result"],
        )),
        coalesced: register(counter_family(
            "loom_coalesced_requests_total",
            "Requests answered with the upstream answer of an identical request in flight.",
            &["route"],
        )),
    }
});

pub fn cache_metrics() -> &'static CacheMetrics {
    &METRICS
}

/// One route's cache series, resolved when the snapshot is built so that a request counts
/// itself without a label lookup.
pub struct RouteCacheCounters {
    hit: IntCounter,
    miss: IntCounter,
    stale: IntCounter,
    expired: IntCounter,
    revalidated: IntCounter,
    bypass: IntCounter,
    pub coalesced: IntCounter,
}

impl RouteCacheCounters {
    pub fn new(route: &str) -> RouteCacheCounters {
        let metrics = cache_metrics();
        let result = |name: &str| metrics.requests.with_label_values(&[route, name]);
        RouteCacheCounters {
            hit: result("hit"),
            miss: result("miss"),
            stale: result("stale"),
            expired: result("expired"),
            revalidated: result("revalidated"),
            bypass: result("bypass"),
            coalesced: metrics.coalesced.with_label_values(&[route]),
        }
    }

    /// The counter of an `X-Cache` value.
    pub fn of(&self, result: &str) -> &IntCounter {
        match result {
            "HIT" => &self.hit,
            "STALE" => &self.stale,
            "EXPIRED" => &self.expired,
            "REVALIDATED" => &self.revalidated,
            "BYPASS" => &self.bypass,
            _ => &self.miss,
        }
    }
}

/// The store's gauges and eviction counter, read at gather time.
struct StoreCollector {
    store: &'static dyn CacheStore,
    size: IntGauge,
    entries: IntGauge,
    evictions: IntCounter,
    descriptions: Vec<Desc>,
}

impl Collector for StoreCollector {
    fn desc(&self) -> Vec<&Desc> {
        self.descriptions.iter().collect()
    }

    fn collect(&self) -> Vec<MetricFamily> {
        let (bytes, entries, evictions) = self.store.usage();
        self.size.set(bytes as i64);
        self.entries.set(entries as i64);
        self.evictions
            .inc_by(evictions.saturating_sub(self.evictions.get()));
        let mut families = self.size.collect();
        families.extend(self.entries.collect());
        families.extend(self.evictions.collect());
        families
    }
}

/// Registers the store's series (once, with the store).
pub fn register_store(store: &'static dyn CacheStore) {
    let built = (|| -> prometheus::Result<StoreCollector> {
        let size = IntGauge::new("loom_cache_size_bytes", "Bytes held by the response cache.")?;
        let entries = IntGauge::new("loom_cache_entries", "Answers held by the response cache.")?;
        let evictions = IntCounter::new(
            "loom_cache_evictions_total",
            "Answers evicted from the response cache to make room.",
        )?;
        let descriptions = size
            .desc()
            .into_iter()
            .chain(entries.desc())
            .chain(evictions.desc())
            .cloned()
            .collect();
        Ok(StoreCollector {
            store,
            size,
            entries,
            evictions,
            descriptions,
        })
    })();
    match built {
        Ok(collector) => {
            if let Err(error) = prometheus::default_registry().register(Box::new(collector)) {
                log::error!("metric registration failed: {error}");
            }
        }
        Err(error) => log::error!("cache metrics: {error}"),
    }
}
