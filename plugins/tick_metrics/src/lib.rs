//! `loom_tick_metrics`: exercises timer ticks, metrics and shared data together.
//!
//! Each VM instance's root context ticks every `tick_ms`: it counts the tick in the
//! `ticks_total` metric and in the shared-data counter `tick_metrics:ticks` (shared by every
//! instance, so it is the total over all of them) and records the time in
//! `last_tick_unix_seconds`. Each request counts in `requests_total`, and its response carries
//! the shared tick count as `x-loom-ticks`.

use log::warn;
use loom_plugin_common::config::{self, Validate};
use loom_plugin_common::{counter, now_unix_seconds};
use proxy_wasm::hostcalls;
use proxy_wasm::traits::{Context, HttpContext, RootContext};
use proxy_wasm::types::{Action, ContextType, MetricType};
use serde::Deserialize;
use std::time::Duration;

const PLUGIN: &str = "loom_tick_metrics";
const TICKS_KEY: &str = "tick_metrics:ticks";

proxy_wasm::main! {{
    loom_plugin_common::install_logger();
    proxy_wasm::set_root_context(|_| -> Box<dyn RootContext> { Box::new(TickRoot::default()) });
}}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct TickConfig {
    #[serde(default = "default_tick_ms")]
    tick_ms: u64,
}

fn default_tick_ms() -> u64 {
    200
}

impl Validate for TickConfig {
    fn validate(&self) -> Result<(), String> {
        if self.tick_ms == 0 || self.tick_ms > u64::from(u32::MAX) {
            return Err(format!("tick_ms: {} is out of range", self.tick_ms));
        }
        Ok(())
    }
}

/// Metric ids as the host handed them out. The host keys metrics by name, so every VM
/// instance defining the same names gets the same metrics.
#[derive(Debug, Clone, Copy)]
struct Metrics {
    ticks_total: u32,
    requests_total: u32,
    last_tick_unix_seconds: u32,
}

impl Metrics {
    fn define() -> Metrics {
        Metrics {
            ticks_total: define(MetricType::Counter, "ticks_total"),
            requests_total: define(MetricType::Counter, "requests_total"),
            last_tick_unix_seconds: define(MetricType::Gauge, "last_tick_unix_seconds"),
        }
    }
}

fn define(metric_type: MetricType, name: &str) -> u32 {
    // The SDK only returns Ok here; any other status traps inside it.
    hostcalls::define_metric(metric_type, name).unwrap_or_default()
}

#[derive(Default)]
struct TickRoot {
    /// Set by `on_configure`, which the host calls before it creates HTTP contexts.
    metrics: Option<Metrics>,
}

impl Context for TickRoot {}

impl RootContext for TickRoot {
    fn on_configure(&mut self, _plugin_configuration_size: usize) -> bool {
        let Some(config) = config::load::<TickConfig>(self, PLUGIN) else {
            return false;
        };
        self.metrics = Some(Metrics::define());
        self.set_tick_period(Duration::from_millis(config.tick_ms));
        true
    }

    fn on_tick(&mut self) {
        let Some(metrics) = self.metrics else {
            return;
        };
        if let Err(status) = hostcalls::increment_metric(metrics.ticks_total, 1) {
            warn!("{PLUGIN}: ticks_total not incremented: {status:?}");
        }
        let now = now_unix_seconds(self);
        if let Err(status) = hostcalls::record_metric(metrics.last_tick_unix_seconds, now) {
            warn!("{PLUGIN}: last_tick_unix_seconds not recorded: {status:?}");
        }
        counter::add(TICKS_KEY, 1);
    }

    fn get_type(&self) -> Option<ContextType> {
        Some(ContextType::HttpContext)
    }

    fn create_http_context(&self, _context_id: u32) -> Option<Box<dyn HttpContext>> {
        Some(Box::new(TickHttp {
            requests_total: self.metrics.map(|metrics| metrics.requests_total),
        }))
    }
}

struct TickHttp {
    requests_total: Option<u32>,
}

impl Context for TickHttp {}

impl HttpContext for TickHttp {
    fn on_http_request_headers(&mut self, _num_headers: usize, _end_of_stream: bool) -> Action {
        if let Some(requests_total) = self.requests_total
            && let Err(status) = hostcalls::increment_metric(requests_total, 1)
        {
            warn!("{PLUGIN}: requests_total not incremented: {status:?}");
        }
        Action::Continue
    }

    fn on_http_response_headers(&mut self, _num_headers: usize, _end_of_stream: bool) -> Action {
        self.add_http_response_header("x-loom-ticks", &counter::read(TICKS_KEY).to_string());
        Action::Continue
    }
}
