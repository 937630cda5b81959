//! Validation of the `plugins:` section: names, phases, limits, and plugin paths confined to
//! `plugin_dir`. Compiling the modules is the plugin runtime's job (`crate::plugin::registry`);
//! it reports its errors at the position recorded here.

use std::collections::HashSet;
use std::path::{Path, PathBuf};
use std::time::Duration;

use bytes::Bytes;

use super::SourceIndexes;
use std::sync::Arc;

use super::schema::{FileConfig, PluginConfig, PluginFailureMode};
use super::validate::Checker;
use super::yaml::ConfigError;
use crate::policy::PolicyStep;

/// Metering points per callback: about 0.1–0.3 s of wasm on one core.
pub const DEFAULT_MAX_FUEL: u64 = 100_000_000;
pub const DEFAULT_MEMORY_LIMIT: u64 = 32 * 1024 * 1024;
pub const DEFAULT_MAX_BUFFERED_BODY: u64 = 1024 * 1024;
/// How long a paused request waits for another context to resume it, by default.
pub const DEFAULT_PAUSE_TIMEOUT: Duration = Duration::from_secs(30);
const MAX_PAUSE_TIMEOUT: Duration = Duration::from_secs(3600);
const WASM_PAGE: u64 = 64 * 1024;

const PHASES: &[&str] = &[
    "on_request_headers",
    "on_request_body",
    "on_request_trailers",
    "on_response_headers",
    "on_response_body",
    "on_response_trailers",
    "on_log",
];

/// One plugin, resolved and checked.
#[derive(Debug, Clone)]
pub struct PluginPlan {
    pub name: String,
    /// Canonical path of the module, inside `plugin_dir`.
    pub wasm_path: PathBuf,
    /// Bytes handed to `on_configure`.
    pub configuration: Bytes,
    /// Bytes handed to `on_vm_start`.
    pub vm_configuration: Bytes,
    /// Envoy's `root_id` and `vm_id` (both "" unless configured).
    pub root_id: String,
    pub vm_id: String,
    pub priority: i32,
    pub on_error: PluginFailureMode,
    pub max_fuel: u64,
    pub memory_limit_pages: u32,
    /// Go Loom's per-callback wall-clock limit (see `PluginConfig::timeout`).
    pub timeout: Option<Duration>,
    pub instances: usize,
    pub max_buffered_body: usize,
    /// Longest wait of a request paused with nothing of its own outstanding.
    pub pause_timeout: Duration,
    pub quarantine_after: u32,
    pub quarantine_for: Duration,
    /// File, line and key path that errors found while loading the module point at.
    pub origin: ConfigError,
}

impl PluginPlan {
    /// Everything that shapes the running plugin (all but its priority, which only orders
    /// route chains), so that a reload keeps an unchanged plugin's instances and their state,
    /// and rebuilds a changed one.
    pub fn same_runtime(&self, other: &PluginPlan) -> bool {
        self.name == other.name
            && self.wasm_path == other.wasm_path
            && self.configuration == other.configuration
            && self.vm_configuration == other.vm_configuration
            && self.root_id == other.root_id
            && self.vm_id == other.vm_id
            && self.max_fuel == other.max_fuel
            && self.memory_limit_pages == other.memory_limit_pages
            && self.timeout == other.timeout
            && self.instances == other.instances
            && self.on_error == other.on_error
            && self.max_buffered_body == other.max_buffered_body
            && self.pause_timeout == other.pause_timeout
            && self.quarantine_after == other.quarantine_after
            && self.quarantine_for == other.quarantine_for
    }

    /// An error about this plugin's module, at its `path` key.
    pub fn error(&self, message: impl Into<String>) -> ConfigError {
        ConfigError {
            message: message.into(),
            ..self.origin.clone()
        }
    }
}

/// The plugin section resolved: the Proxy-Wasm plans, where compiled modules are cached, and
/// the built-in policies compiled.
#[derive(Debug, Clone, Default)]
pub struct PluginsPlan {
    pub plugins: Vec<PluginPlan>,
    pub cache_dir: PathBuf,
    /// Built-in policy entries, by name.
    pub policies: Vec<Arc<PolicyStep>>,
}

/// Keys that only mean something for a Proxy-Wasm module.
const WASM_ONLY_KEYS: &[&str] = &[
    "path",
    "phase",
    "vm_config",
    "root_id",
    "vm_id",
    "on_error",
    "max_fuel",
    "memory_limit",
    "timeout",
    "instances",
    "max_buffered_body",
    "pause_timeout",
    "quarantine",
];

/// Whether a `plugins:` entry is a Proxy-Wasm module (no `type`, or `type: wasm`).
pub fn is_wasm(plugin: &PluginConfig) -> bool {
    plugin.kind.as_deref().is_none_or(|kind| kind == "wasm")
}

pub(super) fn check_plugins(
    checker: &mut Checker,
    config: &FileConfig,
    indexes: &SourceIndexes,
    base_dir: &Path,
) -> PluginsPlan {
    let cache_dir = match &config.plugin_cache_dir {
        Some(dir) => base_dir.join(dir),
        None => std::env::temp_dir().join("loom-plugin-cache"),
    };
    let mut plan = PluginsPlan {
        plugins: Vec::new(),
        cache_dir,
        policies: Vec::new(),
    };
    let plugin_dir = match &config.plugin_dir {
        Some(dir) => base_dir.join(dir),
        None => base_dir.to_path_buf(),
    };
    let plugin_dir = if !config.plugins.iter().any(is_wasm) {
        None
    } else {
        match plugin_dir.canonicalize() {
            Ok(dir) => Some(dir),
            Err(error) => {
                checker.error(
                    "plugin_dir".into(),
                    format!("cannot open {}: {error}", plugin_dir.display()),
                );
                None
            }
        }
    };
    let threads = config.server.threads.unwrap_or_else(|| {
        std::thread::available_parallelism().map_or(1, std::num::NonZeroUsize::get)
    });
    let mut names = HashSet::new();
    for (position, plugin) in config.plugins.iter().enumerate() {
        let key = format!("plugins[{}]", indexes.plugins[position]);
        if !names.insert(plugin.name.as_str()) {
            checker.error(
                format!("{key}.name"),
                format!("duplicate plugin name \"{}\"", plugin.name),
            );
        }
        if plugin.name.is_empty() {
            checker.error(format!("{key}.name"), "must not be empty");
        }
        if !is_wasm(plugin) {
            check_policy_entry(checker, plugin, &key, &mut plan);
            continue;
        }
        let Some(path) = &plugin.path else {
            checker.error(
                format!("{key}.path"),
                format!(
                    "a Proxy-Wasm plugin needs path (the .wasm file), or give a built-in type: {}",
                    crate::policy::TYPES.join(", ")
                ),
            );
            continue;
        };
        if let Some(phase) = &plugin.phase
            && !PHASES.contains(&phase.as_str())
        {
            checker.error(
                format!("{key}.phase"),
                format!(
                    "unknown phase \"{phase}\" (expected one of: {})",
                    PHASES.join(", ")
                ),
            );
        }
        let memory_limit = plugin
            .memory_limit
            .map_or(DEFAULT_MEMORY_LIMIT, |size| size.0);
        if !(WASM_PAGE..=4 * 1024 * 1024 * 1024).contains(&memory_limit) {
            checker.error(
                format!("{key}.memory_limit"),
                "must be between 64KiB and 4GiB",
            );
        }
        if plugin.max_fuel == Some(0) {
            checker.error(format!("{key}.max_fuel"), "must be greater than zero");
        }
        if plugin.instances == Some(0) {
            checker.error(format!("{key}.instances"), "must be at least 1");
        }
        if plugin.timeout.is_some_and(|timeout| timeout.0.is_zero()) {
            checker.error(format!("{key}.timeout"), "must be greater than zero");
        }
        if plugin
            .pause_timeout
            .is_some_and(|timeout| timeout.0.is_zero() || timeout.0 > MAX_PAUSE_TIMEOUT)
        {
            checker.error(
                format!("{key}.pause_timeout"),
                "must be greater than zero and at most 1h",
            );
        }
        if plugin.quarantine.after_failures == 0 {
            checker.error(
                format!("{key}.quarantine.after_failures"),
                "must be at least 1",
            );
        }
        let wasm_path = plugin_dir.as_deref().and_then(|dir| {
            confine(dir, path)
                .map_err(|message| checker.error(format!("{key}.path"), message))
                .ok()
        });
        let origin_key = format!("{key}.path");
        let origin = ConfigError {
            file: checker.file.to_path_buf(),
            mark: checker.mark_of(&origin_key),
            key_path: origin_key,
            message: String::new(),
        };
        let Some(wasm_path) = wasm_path else {
            continue;
        };
        plan.plugins.push(PluginPlan {
            name: plugin.name.clone(),
            wasm_path,
            configuration: configuration_bytes(plugin.config.as_ref()),
            vm_configuration: configuration_bytes(plugin.vm_config.as_ref()),
            root_id: plugin.root_id.clone().unwrap_or_default(),
            vm_id: plugin.vm_id.clone().unwrap_or_default(),
            priority: plugin.priority,
            on_error: plugin.on_error,
            max_fuel: plugin.max_fuel.unwrap_or(DEFAULT_MAX_FUEL),
            memory_limit_pages: (memory_limit / WASM_PAGE).min(u64::from(u32::MAX)) as u32,
            timeout: plugin.timeout.map(|timeout| timeout.0),
            instances: plugin.instances.unwrap_or(threads),
            max_buffered_body: plugin
                .max_buffered_body
                .map_or(DEFAULT_MAX_BUFFERED_BODY, |size| size.0)
                as usize,
            pause_timeout: plugin
                .pause_timeout
                .map_or(DEFAULT_PAUSE_TIMEOUT, |timeout| timeout.0),
            quarantine_after: plugin.quarantine.after_failures,
            quarantine_for: plugin.quarantine.duration.0,
            origin,
        });
    }
    plan
}

/// A built-in policy entry: a known type, none of the wasm-only keys, its `config:` compiled.
fn check_policy_entry(
    checker: &mut Checker,
    plugin: &PluginConfig,
    key: &str,
    plan: &mut PluginsPlan,
) {
    let kind = plugin.kind.as_deref().unwrap_or_default();
    let known = crate::policy::TYPES.contains(&kind) || kind == "body_limit";
    if !known {
        checker.error(
            format!("{key}.type"),
            format!(
                "unknown plugin type \"{kind}\" (expected wasm or one of: {})",
                crate::policy::TYPES.join(", ")
            ),
        );
        return;
    }
    for field in WASM_ONLY_KEYS {
        let field_key = format!("{key}.{field}");
        if !checker.is_absent_or_null(&field_key) {
            checker.error(
                field_key,
                format!("only Proxy-Wasm plugins take {field}; a {kind} policy does not"),
            );
        }
    }
    if let Some(policy) =
        crate::policy::compile(checker, &plugin.name, kind, &format!("{key}.config"))
    {
        plan.policies.push(Arc::new(PolicyStep {
            name: plugin.name.clone(),
            priority: plugin.priority,
            global: false,
            policy,
        }));
    }
}

/// Resolves `path` under `plugin_dir` and refuses anything that lands outside it, through
/// `..` or a symbolic link alike.
fn confine(plugin_dir: &Path, path: &str) -> Result<PathBuf, String> {
    let joined = plugin_dir.join(path);
    let resolved = joined
        .canonicalize()
        .map_err(|error| format!("cannot open {}: {error}", joined.display()))?;
    if !resolved.starts_with(plugin_dir) {
        return Err(format!(
            "{} is outside plugin_dir {}",
            resolved.display(),
            plugin_dir.display()
        ));
    }
    if !resolved.is_file() {
        return Err(format!("{} is not a file", resolved.display()));
    }
    Ok(resolved)
}

/// Strings are handed over as written (Envoy passes its `configuration` string the same
/// way); mappings and other values as JSON.
fn configuration_bytes(value: Option<&serde_json::Value>) -> Bytes {
    match value {
        None | Some(serde_json::Value::Null) => Bytes::new(),
        Some(serde_json::Value::String(text)) => Bytes::copy_from_slice(text.as_bytes()),
        Some(other) => Bytes::from(serde_json::to_vec(other).unwrap_or_default()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paths_outside_the_plugin_dir_are_refused() {
        let root = tempfile::tempdir().unwrap();
        let plugin_dir = root.path().join("plugins");
        std::fs::create_dir(&plugin_dir).unwrap();
        std::fs::write(plugin_dir.join("ok.wasm"), b"\0asm").unwrap();
        std::fs::write(root.path().join("outside.wasm"), b"\0asm").unwrap();
        let plugin_dir = plugin_dir.canonicalize().unwrap();
        assert!(confine(&plugin_dir, "ok.wasm").is_ok());
        let escape = confine(&plugin_dir, "../outside.wasm").unwrap_err();
        assert!(escape.contains("outside plugin_dir"), "{escape}");
        assert!(confine(&plugin_dir, "missing.wasm").is_err());
        #[cfg(unix)]
        {
            std::os::unix::fs::symlink(
                root.path().join("outside.wasm"),
                plugin_dir.join("link.wasm"),
            )
            .unwrap();
            assert!(confine(&plugin_dir, "link.wasm").is_err());
        }
    }

    #[test]
    fn configuration_strings_pass_as_written_and_mappings_as_json() {
        let text = serde_json::Value::String("plain".into());
        assert_eq!(&configuration_bytes(Some(&text))[..], b"plain");
        let mapping = serde_json::json!({"a": 1});
        assert_eq!(&configuration_bytes(Some(&mapping))[..], br#"{"a":1}"#);
        assert!(configuration_bytes(None).is_empty());
    }
}
