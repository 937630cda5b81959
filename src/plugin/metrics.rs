//! Plugin metrics: the gateway's own (`loom_plugin_errors_total`,
//! `loom_plugin_duration_seconds`) and the ones plugins define through `proxy_define_metric`,
//! exported as `loom_wasm_<name>{plugin="..."}`.

use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::{Arc, LazyLock, Mutex, Weak};

use prometheus::core::Collector;
use prometheus::proto::{self, MetricFamily, MetricType};
use prometheus::{Histogram, HistogramOpts, IntCounter};

use crate::observe::series::Family;

use super::abi::{MetricKind, status};

/// Plugin callbacks are short: buckets from 1 µs to 1 s.
const CALLBACK_BUCKETS: &[f64] = &[
    0.000_001,
    0.000_002_5,
    0.000_005,
    0.000_01,
    0.000_025,
    0.000_05,
    0.000_1,
    0.000_25,
    0.000_5,
    0.001,
    0.002_5,
    0.005,
    0.01,
    0.025,
    0.05,
    0.1,
    0.25,
    0.5,
    1.0,
];

pub struct RuntimeMetrics {
    pub errors_total: Family<IntCounter>,
    pub duration_seconds: Family<Histogram>,
}

pub static RUNTIME_METRICS: LazyLock<RuntimeMetrics> = LazyLock::new(|| {
    // Families keyed by exact label values (see `crate::observe::series`): plugin names are
    // the user's, so `plugin` + `kind` must not run together.
    let errors_total = crate::observe::series::counter_family(
        "loom_plugin_errors_total",
        "Plugin failures by kind: trap, fuel_exhausted, memory_limit, timeout, instance_lost, quarantined, load",
        &["plugin", "kind"],
    );
    let duration_seconds = crate::observe::series::histogram_family(
        "loom_plugin_duration_seconds",
        "Time spent in one plugin callback, by phase",
        &["plugin", "phase"],
        CALLBACK_BUCKETS,
    );
    for collector in [
        Box::new(errors_total.clone()) as Box<dyn Collector>,
        Box::new(duration_seconds.clone()),
    ] {
        if let Err(error) = prometheus::register(collector) {
            log::error!("plugin metric registration failed: {error}");
        }
    }
    RuntimeMetrics {
        errors_total,
        duration_seconds,
    }
});

/// One metric a plugin defined. Counters and gauges keep an integer; histograms observe
/// recorded values.
pub struct PluginMetric {
    pub name: String,
    pub kind: MetricKind,
    value: AtomicI64,
    histogram: Option<Histogram>,
}

impl PluginMetric {
    pub fn increment(&self, delta: i64) -> i32 {
        match self.kind {
            MetricKind::Counter if delta < 0 => status::BAD_ARGUMENT,
            MetricKind::Counter | MetricKind::Gauge => {
                self.value.fetch_add(delta, Ordering::Relaxed);
                status::OK
            }
            MetricKind::Histogram => status::BAD_ARGUMENT,
        }
    }

    pub fn record(&self, value: u64) -> i32 {
        match (&self.kind, &self.histogram) {
            (MetricKind::Histogram, Some(histogram)) => {
                histogram.observe(value as f64);
                status::OK
            }
            _ => {
                self.value
                    .store(i64::try_from(value).unwrap_or(i64::MAX), Ordering::Relaxed);
                status::OK
            }
        }
    }

    pub fn get(&self) -> Result<u64, i32> {
        match self.kind {
            MetricKind::Histogram => Err(status::BAD_ARGUMENT),
            _ => Ok(self.value.load(Ordering::Relaxed) as u64),
        }
    }
}

/// The metrics one plugin defined, shared by all of its instances and kept across instance
/// replacement and reloads of an unchanged plugin.
pub struct PluginMetricSet {
    plugin: String,
    metrics: Mutex<Vec<Arc<PluginMetric>>>,
}

/// One set per plugin name, alive while any version of that plugin is loaded: a reloaded
/// plugin keeps counting where the old one stopped, and two versions alive during a swap
/// never export the same series twice.
static LIVE_SETS: LazyLock<Mutex<HashMap<String, Weak<PluginMetricSet>>>> =
    LazyLock::new(|| Mutex::new(HashMap::new()));

impl PluginMetricSet {
    pub fn for_plugin(plugin: &str) -> Arc<PluginMetricSet> {
        let mut live = LIVE_SETS
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        live.retain(|_, weak| weak.strong_count() > 0);
        if let Some(existing) = live.get(plugin).and_then(Weak::upgrade) {
            return existing;
        }
        let set = Arc::new(PluginMetricSet {
            plugin: plugin.to_string(),
            metrics: Mutex::new(Vec::new()),
        });
        live.insert(plugin.to_string(), Arc::downgrade(&set));
        set
    }

    /// Defines (or finds) a metric; the same name with another kind is refused.
    pub fn define(&self, name: &str, kind: MetricKind) -> Result<Arc<PluginMetric>, i32> {
        let mut metrics = self
            .metrics
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        if let Some(existing) = metrics.iter().find(|metric| metric.name == name) {
            return if existing.kind == kind {
                Ok(Arc::clone(existing))
            } else {
                Err(status::BAD_ARGUMENT)
            };
        }
        if name.is_empty() || metrics.len() >= 1000 {
            return Err(status::BAD_ARGUMENT);
        }
        let histogram = (kind == MetricKind::Histogram).then(|| {
            Histogram::with_opts(HistogramOpts::new("plugin_histogram", "plugin histogram"))
                .unwrap_or_else(|error| unreachable!("static histogram options: {error}"))
        });
        let metric = Arc::new(PluginMetric {
            name: name.to_string(),
            kind,
            value: AtomicI64::new(0),
            histogram,
        });
        metrics.push(Arc::clone(&metric));
        Ok(metric)
    }
}

/// Prometheus name for a plugin metric: `loom_wasm_` and the name with every character
/// outside `[a-zA-Z0-9_]` replaced by `_`.
pub fn exported_name(name: &str) -> String {
    let mut exported = String::with_capacity(name.len() + 10);
    exported.push_str("loom_wasm_");
    exported.extend(name.chars().map(|character| {
        if character.is_ascii_alphanumeric() || character == '_' {
            character
        } else {
            '_'
        }
    }));
    exported
}

/// The plugin-defined metrics of every live plugin, one family per exported name.
pub fn gather() -> Vec<MetricFamily> {
    let sets: Vec<Arc<PluginMetricSet>> = LIVE_SETS
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
        .values()
        .filter_map(Weak::upgrade)
        .collect();
    let mut families: BTreeMap<String, MetricFamily> = BTreeMap::new();
    for set in &sets {
        let metrics = set
            .metrics
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
            .clone();
        for metric in metrics {
            let name = exported_name(&metric.name);
            let family = families.entry(name.clone()).or_insert_with(|| {
                let mut family = MetricFamily::default();
                family.set_name(name);
                family.set_help(format!("Plugin metric \"{}\"", metric.name));
                family.set_field_type(match metric.kind {
                    MetricKind::Counter => MetricType::COUNTER,
                    MetricKind::Gauge => MetricType::GAUGE,
                    MetricKind::Histogram => MetricType::HISTOGRAM,
                });
                family
            });
            let mut label = proto::LabelPair::default();
            label.set_name("plugin".to_string());
            label.set_value(set.plugin.clone());
            let mut sample = match (&metric.histogram, metric.kind) {
                (Some(histogram), MetricKind::Histogram) => {
                    let mut collected = histogram.collect();
                    match collected
                        .pop()
                        .and_then(|mut family| family.take_metric().pop())
                    {
                        Some(sample) => sample,
                        None => continue,
                    }
                }
                (_, MetricKind::Counter) => {
                    let mut sample = proto::Metric::default();
                    let mut counter = proto::Counter::default();
                    counter.set_value(metric.value.load(Ordering::Relaxed) as f64);
                    sample.set_counter(counter);
                    sample
                }
                _ => {
                    let mut sample = proto::Metric::default();
                    let mut gauge = proto::Gauge::default();
                    gauge.set_value(metric.value.load(Ordering::Relaxed) as f64);
                    sample.set_gauge(gauge);
                    sample
                }
            };
            // A family's samples must agree on the type the first definer chose.
            if family.get_field_type()
                != match metric.kind {
                    MetricKind::Counter => MetricType::COUNTER,
                    MetricKind::Gauge => MetricType::GAUGE,
                    MetricKind::Histogram => MetricType::HISTOGRAM,
                }
            {
                continue;
            }
            sample.set_label(vec![label]);
            family.mut_metric().push(sample);
        }
    }
    families.into_values().collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defined_metrics_are_shared_by_name_and_exported() {
        let set = PluginMetricSet::for_plugin("metrics-test-plugin");
        let first = set.define("requests.total", MetricKind::Counter).unwrap();
        let again = set.define("requests.total", MetricKind::Counter).unwrap();
        assert!(Arc::ptr_eq(&first, &again));
        assert_eq!(
            set.define("requests.total", MetricKind::Gauge).err(),
            Some(status::BAD_ARGUMENT)
        );
        assert_eq!(first.increment(3), status::OK);
        assert_eq!(first.increment(-1), status::BAD_ARGUMENT);
        assert_eq!(first.get(), Ok(3));
        let families = gather();
        let family = families
            .iter()
            .find(|family| family.name() == "loom_wasm_requests_total")
            .expect("exported family");
        let sample = family
            .get_metric()
            .iter()
            .find(|sample| sample.get_label()[0].value() == "metrics-test-plugin")
            .expect("sample for this plugin");
        assert_eq!(sample.get_counter().value(), 3.0);
    }
}
