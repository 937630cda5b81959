//! Metric families keyed by their full label values.
//!
//! The prometheus crate's `*Vec` types find a series by a hash of its label values written
//! one after another with no separator, and trust the hash: route `x20` with status `0` and
//! route `x` with status `200` hash alike, and the second silently counts into the first's
//! series. A [`Family`] keeps each series under its exact label values (the hash only picks
//! the bucket; every candidate is compared value by value), and makes each series a metric
//! with its labels fixed, which the registry gathers under the family's name.
//!
//! The request path does not look series up at all: it holds handles resolved once
//! ([`StatusCounters`] per route and per endpoint), and a family is searched only the first
//! time a handle is used and for rare events (refusals, breaker transitions).

use std::collections::HashMap;
use std::hash::{Hash, Hasher};
use std::sync::{Arc, OnceLock, RwLock};

use prometheus::core::{Collector, Desc};
use prometheus::proto::MetricFamily;
use prometheus::{Histogram, HistogramOpts, IntCounter, IntGauge, Opts};

type Make<M> = Box<dyn Fn(HashMap<String, String>) -> prometheus::Result<M> + Send + Sync>;

/// One metric name with its series, each under its exact label values.
pub struct Family<M> {
    inner: Arc<Inner<M>>,
}

impl<M> Clone for Family<M> {
    fn clone(&self) -> Self {
        Family {
            inner: Arc::clone(&self.inner),
        }
    }
}

type Series<M> = Vec<(Box<[Box<str>]>, M)>;

struct Inner<M> {
    desc: Desc,
    label_names: &'static [&'static str],
    make: Make<M>,
    /// Buckets by a length-prefixed hash of the label values.
    series: RwLock<HashMap<u64, Series<M>>>,
}

impl<M: Collector + Clone + 'static> Family<M> {
    fn new(name: &str, help: &str, label_names: &'static [&'static str], make: Make<M>) -> Self {
        let desc = Desc::new(
            name.to_string(),
            help.to_string(),
            label_names.iter().map(|label| label.to_string()).collect(),
            HashMap::new(),
        )
        .unwrap_or_else(|error| unreachable!("static metric definition {name}: {error}"));
        Family {
            inner: Arc::new(Inner {
                desc,
                label_names,
                make,
                series: RwLock::new(HashMap::new()),
            }),
        }
    }

    /// The series with exactly these label values, created on first use.
    pub fn with_label_values<V: AsRef<str>>(&self, values: &[V]) -> M {
        debug_assert_eq!(values.len(), self.inner.label_names.len());
        let hash = hash_values(values);
        if let Ok(series) = self.inner.series.read()
            && let Some(metric) = find(series.get(&hash), values)
        {
            return metric.clone();
        }
        let labels: HashMap<String, String> = self
            .inner
            .label_names
            .iter()
            .zip(values)
            .map(|(name, value)| (name.to_string(), value.as_ref().to_string()))
            .collect();
        let Ok(mut series) = self.inner.series.write() else {
            // A panic while another thread held the lock: count into a detached series
            // rather than fail the request.
            return (self.inner.make)(labels).unwrap_or_else(|_| self.detached());
        };
        if let Some(metric) = find(series.get(&hash), values) {
            return metric.clone();
        }
        let metric = (self.inner.make)(labels).unwrap_or_else(|_| self.detached());
        let key: Box<[Box<str>]> = values.iter().map(|value| value.as_ref().into()).collect();
        series.entry(hash).or_default().push((key, metric.clone()));
        metric
    }

    /// Removes the series with exactly these label values; whether there was one.
    pub fn remove_label_values<V: AsRef<str>>(&self, values: &[V]) -> bool {
        let hash = hash_values(values);
        let Ok(mut series) = self.inner.series.write() else {
            return false;
        };
        let Some(bucket) = series.get_mut(&hash) else {
            return false;
        };
        let before = bucket.len();
        bucket.retain(|(key, _)| !same(key, values));
        let removed = bucket.len() != before;
        if bucket.is_empty() {
            series.remove(&hash);
        }
        removed
    }

    /// Removes every series whose labels have all of these values (a route or an endpoint
    /// that is gone).
    pub fn remove_where(&self, labels: &[(&str, &str)]) {
        let positions: Vec<(usize, &str)> = labels
            .iter()
            .filter_map(|(label, value)| {
                let position = self
                    .inner
                    .label_names
                    .iter()
                    .position(|name| name == label)?;
                Some((position, *value))
            })
            .collect();
        if positions.len() != labels.len() {
            return;
        }
        if let Ok(mut series) = self.inner.series.write() {
            series.retain(|_, bucket| {
                bucket.retain(|(key, _)| {
                    !positions
                        .iter()
                        .all(|(position, value)| &*key[*position] == *value)
                });
                !bucket.is_empty()
            });
        }
    }

    /// A metric with no labels that no scrape shows, for the impossible failure paths.
    fn detached(&self) -> M {
        (self.inner.make)(HashMap::new())
            .unwrap_or_else(|error| unreachable!("metric without labels: {error}"))
    }
}

impl<M: Collector + Clone + 'static> Collector for Family<M> {
    fn desc(&self) -> Vec<&Desc> {
        vec![&self.inner.desc]
    }

    fn collect(&self) -> Vec<MetricFamily> {
        // The registry merges families of one name into one.
        let Ok(series) = self.inner.series.read() else {
            return Vec::new();
        };
        series
            .values()
            .flatten()
            .flat_map(|(_, metric)| metric.collect())
            .collect()
    }
}

fn find<'a, M, V: AsRef<str>>(bucket: Option<&'a Series<M>>, values: &[V]) -> Option<&'a M> {
    bucket?
        .iter()
        .find(|(key, _)| same(key, values))
        .map(|(_, metric)| metric)
}

fn same<V: AsRef<str>>(key: &[Box<str>], values: &[V]) -> bool {
    key.len() == values.len()
        && key
            .iter()
            .zip(values)
            .all(|(stored, value)| **stored == *value.as_ref())
}

/// Each value's length goes in before its bytes, so no two label sets share their input.
fn hash_values<V: AsRef<str>>(values: &[V]) -> u64 {
    let mut hasher = ahash::AHasher::default();
    for value in values {
        let value = value.as_ref();
        hasher.write_usize(value.len());
        value.hash(&mut hasher);
    }
    hasher.finish()
}

pub fn counter_family(
    name: &str,
    help: &str,
    label_names: &'static [&'static str],
) -> Family<IntCounter> {
    opts_family(name, help, label_names, IntCounter::with_opts)
}

pub fn gauge_family(
    name: &str,
    help: &str,
    label_names: &'static [&'static str],
) -> Family<IntGauge> {
    opts_family(name, help, label_names, IntGauge::with_opts)
}

/// A family of metrics built from plain `Opts` (counters, gauges).
fn opts_family<M: Collector + Clone + 'static>(
    name: &str,
    help: &str,
    label_names: &'static [&'static str],
    build: fn(Opts) -> prometheus::Result<M>,
) -> Family<M> {
    let (metric_name, metric_help) = (name.to_string(), help.to_string());
    Family::new(
        name,
        help,
        label_names,
        Box::new(move |labels| {
            build(Opts::new(metric_name.clone(), metric_help.clone()).const_labels(labels))
        }),
    )
}

pub fn histogram_family(
    name: &str,
    help: &str,
    label_names: &'static [&'static str],
    buckets: &[f64],
) -> Family<Histogram> {
    let (metric_name, metric_help, buckets) =
        (name.to_string(), help.to_string(), buckets.to_vec());
    Family::new(
        name,
        help,
        label_names,
        Box::new(move |labels| {
            Histogram::with_opts(
                HistogramOpts::new(metric_name.clone(), metric_help.clone())
                    .const_labels(labels)
                    .buckets(buckets.clone()),
            )
        }),
    )
}

/// Counters by HTTP status for one fixed set of leading label values (a route and method,
/// an endpoint): the status indexes a slot, so counting takes no lookup after the first
/// request with that status. Slots come in blocks of a hundred statuses, allocated when the
/// first status of the block is seen.
pub struct StatusCounters {
    family: Family<IntCounter>,
    /// Every label value but the last (the status).
    leading: Box<[Box<str>]>,
    blocks: [OnceLock<Box<[OnceLock<IntCounter>; 100]>>; 10],
}

impl StatusCounters {
    pub fn new(family: &Family<IntCounter>, leading: &[&str]) -> StatusCounters {
        StatusCounters {
            family: family.clone(),
            leading: leading.iter().map(|value| (*value).into()).collect(),
            blocks: Default::default(),
        }
    }

    /// Counts one response with `status` (0: none; 1000 and above count as 0).
    pub fn increment(&self, status: u16) {
        let status = if status >= 1000 { 0 } else { status };
        let block = self.blocks[usize::from(status / 100)]
            .get_or_init(|| Box::new(std::array::from_fn(|_| OnceLock::new())));
        block[usize::from(status % 100)]
            .get_or_init(|| {
                let status_label = status_text(status);
                let mut values: Vec<&str> = self.leading.iter().map(|value| &**value).collect();
                values.push(status_label);
                self.family.with_label_values(&values)
            })
            .inc();
    }
}

/// Status label text without allocating: "0" for no response, "100".."999".
pub fn status_text(status: u16) -> &'static str {
    static LABELS: std::sync::LazyLock<Vec<String>> =
        std::sync::LazyLock::new(|| (0..1000).map(|code| code.to_string()).collect());
    LABELS.get(usize::from(status)).map_or("0", String::as_str)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn render(family: &Family<IntCounter>) -> String {
        let registry = prometheus::Registry::new();
        registry.register(Box::new(family.clone())).unwrap();
        let mut out = Vec::new();
        prometheus::Encoder::encode(
            &prometheus::TextEncoder::new(),
            &registry.gather(),
            &mut out,
        )
        .unwrap();
        String::from_utf8(out).unwrap()
    }

    #[test]
    fn label_sets_that_concatenate_alike_are_separate_series() {
        let family = counter_family("test_requests_total", "help", &["route", "status"]);
        family.with_label_values(&["x20", "0"]).inc();
        family.with_label_values(&["x", "200"]).inc_by(5);
        assert_eq!(family.with_label_values(&["x20", "0"]).get(), 1);
        assert_eq!(family.with_label_values(&["x", "200"]).get(), 5);
        let text = render(&family);
        assert!(
            text.contains("test_requests_total{route=\"x20\",status=\"0\"} 1"),
            "{text}"
        );
        assert!(
            text.contains("test_requests_total{route=\"x\",status=\"200\"} 5"),
            "{text}"
        );
        // The crate's own vector merges them: the defect this module exists for.
        let vector =
            prometheus::IntCounterVec::new(Opts::new("vector_total", "help"), &["route", "status"])
                .unwrap();
        vector.with_label_values(&["x20", "0"]).inc();
        assert_eq!(vector.with_label_values(&["x", "200"]).get(), 1);
    }

    #[test]
    fn series_are_removed_by_exact_values_or_by_one_label() {
        let family = counter_family("test_removed_total", "help", &["route", "status"]);
        family.with_label_values(&["a", "200"]).inc();
        family.with_label_values(&["a", "404"]).inc();
        family.with_label_values(&["b", "200"]).inc();
        assert!(family.remove_label_values(&["a", "404"]));
        assert!(!family.remove_label_values(&["a", "404"]));
        family.remove_where(&[("route", "a")]);
        let text = render(&family);
        assert!(!text.contains("route=\"a\""), "{text}");
        assert!(text.contains("route=\"b\""), "{text}");
    }

    #[test]
    fn status_counters_resolve_each_status_once() {
        let family = counter_family("test_status_total", "help", &["method", "route", "status"]);
        let counters = StatusCounters::new(&family, &["GET", "api"]);
        counters.increment(200);
        counters.increment(200);
        counters.increment(503);
        counters.increment(0);
        assert_eq!(family.with_label_values(&["GET", "api", "200"]).get(), 2);
        assert_eq!(family.with_label_values(&["GET", "api", "503"]).get(), 1);
        assert_eq!(family.with_label_values(&["GET", "api", "0"]).get(), 1);
    }
}
