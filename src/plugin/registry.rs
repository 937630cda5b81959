//! The set of loaded plugins of one config snapshot. Loading compiles (or takes from the
//! disk cache) and starts every plugin before anything is swapped in: one module that fails
//! rejects the whole config, and the running plugins keep serving. A plugin whose plan and
//! module bytes are unchanged is carried over as is, with its instances and their state.

use std::sync::Arc;

use sha2::{Digest, Sha256};

use super::engine::{self, EngineSettings};
use super::runtime::PluginRuntime;
use crate::config::ConfigError;
use crate::config::plugins::PluginsPlan;

#[derive(Default)]
pub struct PluginSet {
    /// Each plugin with its priority in this config (a carried-over plugin keeps its
    /// instances but takes the new priority).
    plugins: Vec<(Arc<PluginRuntime>, i32)>,
}

impl PluginSet {
    pub fn empty() -> PluginSet {
        PluginSet::default()
    }

    /// Loads every plugin of `plan`, reusing unchanged ones from `previous`. Blocking and
    /// CPU-heavy (compilation): run it off the request path.
    pub fn load(
        plan: &PluginsPlan,
        previous: Option<&PluginSet>,
    ) -> Result<PluginSet, Vec<ConfigError>> {
        let mut errors = Vec::new();
        let mut plugins = Vec::with_capacity(plan.plugins.len());
        let cache_dir = if plan.plugins.is_empty() {
            None
        } else {
            match std::fs::create_dir_all(&plan.cache_dir) {
                Ok(()) => Some(plan.cache_dir.as_path()),
                Err(error) => {
                    log::warn!(
                        "plugin cache directory {} is unusable ({error}); compiling without a cache",
                        plan.cache_dir.display()
                    );
                    None
                }
            }
        };
        for plugin in &plan.plugins {
            let bytes = match std::fs::read(&plugin.wasm_path) {
                Ok(bytes) => bytes,
                Err(error) => {
                    errors.push(plugin.error(format!(
                        "plugin \"{}\": cannot read {}: {error}",
                        plugin.name,
                        plugin.wasm_path.display()
                    )));
                    continue;
                }
            };
            let sha256 = hex(&Sha256::digest(&bytes));
            let unchanged = previous.and_then(|previous| {
                previous
                    .plugins
                    .iter()
                    .map(|(loaded, _)| loaded)
                    .find(|loaded| {
                        loaded.plan.same_runtime(plugin) && loaded.module_sha256() == sha256
                    })
            });
            if let Some(loaded) = unchanged {
                plugins.push((Arc::clone(loaded), plugin.priority));
                continue;
            }
            let settings = EngineSettings {
                max_fuel: plugin.max_fuel,
                memory_limit_pages: plugin.memory_limit_pages,
            };
            let compiled = match engine::compile(&bytes, &settings, cache_dir) {
                Ok(compiled) => compiled,
                Err(error) => {
                    errors.push(plugin.error(format!(
                        "plugin \"{}\" ({}): {error}",
                        plugin.name,
                        plugin.wasm_path.display()
                    )));
                    continue;
                }
            };
            let compile_note = if compiled.from_cache {
                "from the cache".to_string()
            } else {
                format!("compiled in {:?}", compiled.compile_time)
            };
            match PluginRuntime::start(plugin.clone(), compiled) {
                Ok(runtime) => {
                    log::info!(
                        "plugin {} loaded: ABI {}, {} instances started in {:?}, module {} {compile_note}",
                        plugin.name,
                        runtime.abi.label(),
                        runtime.instance_count(),
                        runtime.start_time,
                        &sha256[..12],
                    );
                    plugins.push((Arc::new(runtime), plugin.priority));
                }
                Err(message) => errors.push(plugin.error(format!(
                    "plugin \"{}\" ({}) {message}",
                    plugin.name,
                    plugin.wasm_path.display()
                ))),
            }
        }
        if errors.is_empty() {
            Ok(PluginSet { plugins })
        } else {
            Err(errors)
        }
    }

    pub fn get(&self, name: &str) -> Option<&Arc<PluginRuntime>> {
        self.entry(name).map(|(plugin, _)| plugin)
    }

    fn entry(&self, name: &str) -> Option<&(Arc<PluginRuntime>, i32)> {
        self.plugins
            .iter()
            .find(|(plugin, _)| plugin.name() == name)
    }

    pub fn iter(&self) -> impl Iterator<Item = &Arc<PluginRuntime>> {
        self.plugins.iter().map(|(plugin, _)| plugin)
    }

    pub fn is_empty(&self) -> bool {
        self.plugins.is_empty()
    }
}

fn hex(bytes: &[u8]) -> String {
    use std::fmt::Write;
    bytes
        .iter()
        .fold(String::with_capacity(bytes.len() * 2), |mut text, byte| {
            let _ = write!(text, "{byte:02x}");
            text
        })
}
