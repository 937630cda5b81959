//! Configuration: the YAML schema, loading with precise errors, and validation.
//!
//! Loading never stops at the first problem: every section and every list entry is
//! deserialized on its own, unknown keys are all reported, and cross-reference checks run over
//! whatever parsed. Each [`ConfigError`] names the file, line, column and key path.
//!
//! The YAML file's overlay (changes made through the admin API, see [`overlay`]) is applied
//! to its tree before anything is read from it, so start, reload, `loom -t` and the admin
//! API's own checks all see one config.
//!
//! The result, [`ValidatedConfig`], is what the runtime snapshot is built from
//! (see [`crate::gateway::snapshot`]).

pub mod atomic_file;
pub mod cache;
pub mod effective;
pub mod overlay;
pub mod plugins;
pub mod resilience;
pub mod schema;
pub mod stream;
pub mod tracing;
pub mod traffic;
pub mod units;
pub mod validate;
pub mod yaml;

#[cfg(test)]
mod go_loom_tests;

use std::hash::{Hash, Hasher};
use std::path::{Path, PathBuf};
use std::sync::Arc;

pub use effective::EffectiveConfig;
pub use overlay::{Overlay, ResourceKind};
pub use schema::FileConfig;
pub use validate::ValidatedConfig;
pub use yaml::ConfigError;

use yaml::{Node, NodeValue};

/// A config file read from disk and fully validated.
pub struct LoadedConfig {
    pub path: PathBuf,
    /// Hex digest of the file's bytes (and of its overlay's, when there is one), shown by the
    /// admin API and used to skip no-op reloads.
    pub hash: String,
    pub validated: ValidatedConfig,
    /// The merged config in JSON, for the admin API.
    pub effective: Arc<EffectiveConfig>,
    /// Where the overlay's entries landed in the merged config.
    provenance: Vec<overlay::Provenance>,
    overlay_read: bool,
}

impl LoadedConfig {
    /// Points errors found later about this config (plugin modules that fail to compile) at
    /// the overlay when the entry came from it.
    pub fn remap_errors(&self, errors: &mut [ConfigError]) {
        overlay::remap_errors(errors, &self.effective.overlay_path, &self.provenance);
    }

    /// Whether an overlay file was read with the YAML.
    pub fn has_overlay(&self) -> bool {
        self.overlay_read
    }
}

/// The texts a config is loaded from: the YAML file and its overlay, if there is one.
#[derive(Debug, Clone)]
pub struct ConfigSources {
    pub path: PathBuf,
    pub yaml: String,
    pub overlay_path: PathBuf,
    pub overlay: Option<String>,
}

impl ConfigSources {
    /// Reads `path` and, when it exists, its overlay ([`overlay::overlay_path`]).
    pub fn read(path: &Path) -> Result<ConfigSources, Vec<ConfigError>> {
        let read_error = |file: &Path, error: std::io::Error| {
            vec![ConfigError {
                file: file.to_path_buf(),
                mark: None,
                key_path: String::new(),
                message: format!("cannot read config file: {error}"),
            }]
        };
        let yaml = std::fs::read_to_string(path).map_err(|error| read_error(path, error))?;
        let overlay_path = overlay::overlay_path(path);
        let overlay = match std::fs::read_to_string(&overlay_path) {
            Ok(text) => Some(text),
            Err(error) if error.kind() == std::io::ErrorKind::NotFound => None,
            Err(error) => return Err(read_error(&overlay_path, error)),
        };
        Ok(ConfigSources {
            path: path.to_path_buf(),
            yaml,
            overlay_path,
            overlay,
        })
    }

    /// The digest of what was read: the YAML's alone when there is no overlay, so a config
    /// without one keeps the hash it always had.
    pub fn hash(&self) -> String {
        match &self.overlay {
            None => content_hash(self.yaml.as_bytes()),
            Some(overlay) => content_hash(format!("{}\0{overlay}", self.yaml).as_bytes()),
        }
    }
}

/// Reads, parses and validates `path` with its overlay. Returns every error found.
pub fn load_file(path: &Path) -> Result<LoadedConfig, Vec<ConfigError>> {
    load_sources(&ConfigSources::read(path)?)
}

/// Parses and validates a YAML file's text with its overlay's.
pub fn load_sources(sources: &ConfigSources) -> Result<LoadedConfig, Vec<ConfigError>> {
    let merged = merge(sources)?;
    let mut errors = Vec::new();
    let validated = check(&sources.path, &merged.root, &mut errors);
    overlay::remap_errors(&mut errors, &sources.overlay_path, &merged.provenance);
    if !errors.is_empty() {
        return Err(errors);
    }
    let provenance = merged.provenance.clone();
    Ok(LoadedConfig {
        path: sources.path.clone(),
        hash: sources.hash(),
        validated,
        effective: Arc::new(merged.effective(&sources.overlay_path)),
        provenance,
        overlay_read: sources.overlay.is_some(),
    })
}

/// The merged config of `sources` without validating it: what the admin API compares a
/// change's preconditions against, and the overlay the change is made to.
pub fn inspect(sources: &ConfigSources) -> Result<EffectiveConfig, Vec<ConfigError>> {
    Ok(merge(sources)?.effective(&sources.overlay_path))
}

/// Parses and validates config text; `path` is only used in error messages and to resolve
/// relative file names (certificates) against the config's directory. No overlay applies.
pub fn load_text(path: &Path, text: &str) -> Result<ValidatedConfig, Vec<ConfigError>> {
    let root = yaml::parse_document(path, text).map_err(|error| vec![error])?;
    let mut errors = Vec::new();
    let validated = check(path, &root, &mut errors);
    if errors.is_empty() {
        Ok(validated)
    } else {
        Err(errors)
    }
}

/// A YAML tree with its overlay spliced in.
struct Merged {
    yaml: Node,
    root: Node,
    overlay: Overlay,
    provenance: Vec<overlay::Provenance>,
}

impl Merged {
    fn effective(self, overlay_path: &Path) -> EffectiveConfig {
        EffectiveConfig::build(
            &self.yaml,
            &self.root,
            self.overlay,
            overlay_path.to_path_buf(),
        )
    }
}

fn merge(sources: &ConfigSources) -> Result<Merged, Vec<ConfigError>> {
    let yaml = yaml::parse_document(&sources.path, &sources.yaml).map_err(|error| vec![error])?;
    let overlay = match &sources.overlay {
        Some(text) => Overlay::parse(&sources.overlay_path, text)?,
        None => Overlay::default(),
    };
    let mut root = yaml.clone();
    let provenance = overlay.apply(&mut root);
    Ok(Merged {
        yaml,
        root,
        overlay,
        provenance,
    })
}

/// Reads the sections of `root` and validates them as a whole.
fn check(path: &Path, root: &Node, errors: &mut Vec<ConfigError>) -> ValidatedConfig {
    let mut indexes = SourceIndexes::default();
    let file_config = read_sections(path, root, errors, &mut indexes);
    validate::validate(path, root, file_config, &indexes, errors)
}

/// Prints a config's errors to stderr, one per line, under a count (`loom -t` and startup).
pub fn print_errors(path: &Path, errors: &[ConfigError]) {
    eprintln!(
        "{}: {} error(s) in the config:",
        path.display(),
        errors.len()
    );
    for error in errors {
        eprintln!("  {error}");
    }
}

/// The digest used for `/info` and change detection.
pub fn content_hash(bytes: &[u8]) -> String {
    let mut hasher = std::collections::hash_map::DefaultHasher::new();
    bytes.hash(&mut hasher);
    format!("{:016x}", hasher.finish())
}

const SECTIONS: &[&str] = &[
    "server",
    "listeners",
    "routes",
    "upstreams",
    "plugins",
    "plugin_dir",
    "plugin_cache_dir",
    "admin",
    "metrics",
    "reload",
    "stream",
    "cors",
    "access_log",
    "rate_limit",
    "tracing",
    "cache",
];

/// Where each parsed list entry stood in the file. Entries that failed to deserialize are
/// left out of [`FileConfig`], so validation maps positions back through this to name the
/// right `routes[i]`.
#[derive(Debug, Default)]
pub struct SourceIndexes {
    pub listeners: Vec<usize>,
    pub routes: Vec<usize>,
    pub upstreams: Vec<usize>,
    pub plugins: Vec<usize>,
}

/// Deserializes each top-level section separately, and list sections entry by entry, so one
/// bad entry does not hide the errors of the others.
fn read_sections(
    file: &Path,
    root: &Node,
    errors: &mut Vec<ConfigError>,
    indexes: &mut SourceIndexes,
) -> FileConfig {
    let mut config = FileConfig::default();
    let NodeValue::Mapping(entries) = &root.value else {
        return config;
    };
    for (key, value) in entries {
        let NodeValue::Scalar { text: name, .. } = &key.value else {
            errors.push(error_at(file, key, "", "top-level keys must be strings"));
            continue;
        };
        match name.as_str() {
            "server" => read_one(file, value, name, errors, &mut config.server),
            "admin" => read_one(file, value, name, errors, &mut config.admin),
            "metrics" => read_one(file, value, name, errors, &mut config.metrics),
            "reload" => read_one(file, value, name, errors, &mut config.reload),
            "stream" => read_one(file, value, name, errors, &mut config.stream),
            "listeners" => {
                (config.listeners, indexes.listeners) = read_list(file, value, name, errors)
            }
            "routes" => (config.routes, indexes.routes) = read_list(file, value, name, errors),
            "upstreams" => {
                (config.upstreams, indexes.upstreams) = read_list(file, value, name, errors)
            }
            "plugins" => (config.plugins, indexes.plugins) = read_list(file, value, name, errors),
            "plugin_dir" => read_one(file, value, name, errors, &mut config.plugin_dir),
            "plugin_cache_dir" => read_one(file, value, name, errors, &mut config.plugin_cache_dir),
            // Global policies: compiled by `crate::policy` during validation.
            "cors" | "access_log" => {}
            "rate_limit" => read_one(file, value, name, errors, &mut config.rate_limit),
            "tracing" => read_one(file, value, name, errors, &mut config.tracing),
            "cache" => read_one(file, value, name, errors, &mut config.cache),
            unknown => errors.push(error_at(
                file,
                key,
                unknown,
                &format!(
                    "unknown key \"{unknown}\" (expected one of: {})",
                    SECTIONS.join(", ")
                ),
            )),
        }
    }
    config
}

fn read_one<T: serde::de::DeserializeOwned>(
    file: &Path,
    node: &Node,
    key_path: &str,
    errors: &mut Vec<ConfigError>,
    target: &mut T,
) {
    if matches!(node.value, NodeValue::Null) {
        return;
    }
    if let Some(value) = yaml::deserialize_node(file, node, key_path, errors) {
        *target = value;
    }
}

fn read_list<T: serde::de::DeserializeOwned>(
    file: &Path,
    node: &Node,
    key_path: &str,
    errors: &mut Vec<ConfigError>,
) -> (Vec<T>, Vec<usize>) {
    match &node.value {
        NodeValue::Null => (Vec::new(), Vec::new()),
        NodeValue::Sequence(items) => items
            .iter()
            .enumerate()
            .filter_map(|(index, item)| {
                yaml::deserialize_node(file, item, &format!("{key_path}[{index}]"), errors)
                    .map(|value| (value, index))
            })
            .unzip(),
        _ => {
            errors.push(error_at(file, node, key_path, "expected a list"));
            (Vec::new(), Vec::new())
        }
    }
}

fn error_at(file: &Path, node: &Node, key_path: &str, message: &str) -> ConfigError {
    ConfigError {
        file: file.to_path_buf(),
        mark: Some(node.mark),
        key_path: key_path.to_string(),
        message: message.to_string(),
    }
}
