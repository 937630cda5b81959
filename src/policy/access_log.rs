//! `access_log`: one JSON line per request, to a file or stdout (top-level `access_log:` for
//! every route, or a `type: access_log` entry for some). The line is written in `logging`
//! straight into a bounded buffer of the worker thread, which a writer thread empties
//! (`crate::observe::access_log`): a full buffer drops and counts the line, it never makes a
//! request wait.

use std::path::Path;
use std::sync::{Arc, OnceLock};

use serde::Deserialize;

use crate::observe::access_log::{AccessLogDestination, AccessLogRecord, AccessLogSink};

#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(default)]
pub struct AccessLogConfig {
    pub enabled: bool,
    /// A file (relative paths are resolved against the config's directory), or `stdout`.
    pub path: String,
}

impl Default for AccessLogConfig {
    fn default() -> Self {
        AccessLogConfig {
            enabled: true,
            path: "stdout".to_string(),
        }
    }
}

#[derive(Debug)]
pub struct AccessLog {
    enabled: bool,
    destination: AccessLogDestination,
    /// Opened on the first line, so that validating a config (`loom -t`) starts no writer.
    sink: OnceLock<Arc<AccessLogSink>>,
}

impl AccessLog {
    pub fn compile(
        config: AccessLogConfig,
        base_dir: &Path,
        report: &mut dyn FnMut(&str, String),
    ) -> Option<AccessLog> {
        let destination = match config.path.as_str() {
            "stdout" | "-" => AccessLogDestination::Stdout,
            "" => {
                report("path", "must name a file or stdout".to_string());
                return None;
            }
            path => {
                let path = base_dir.join(path);
                match path.parent() {
                    Some(parent) if !parent.as_os_str().is_empty() && !parent.is_dir() => {
                        report(
                            "path",
                            format!("the directory {} does not exist", parent.display()),
                        );
                        return None;
                    }
                    _ => AccessLogDestination::File(path),
                }
            }
        };
        Some(AccessLog {
            enabled: config.enabled,
            destination,
            sink: OnceLock::new(),
        })
    }

    pub fn is_enabled(&self) -> bool {
        self.enabled
    }

    /// Starts (or finds) the writer; called when a snapshot is built, so that the first
    /// request never waits for it.
    pub fn open(&self) {
        if self.enabled {
            self.sink
                .get_or_init(|| crate::observe::access_log::sink(&self.destination));
        }
    }

    pub fn write(&self, record: &AccessLogRecord<'_>) {
        if !self.enabled {
            return;
        }
        let sink = self
            .sink
            .get_or_init(|| crate::observe::access_log::sink(&self.destination));
        sink.append_with(|line| record.write_json_line(line));
    }

    pub fn describe(&self) -> serde_json::Value {
        serde_json::json!({
            "enabled": self.enabled,
            "path": match &self.destination {
                AccessLogDestination::Stdout => "stdout".to_string(),
                AccessLogDestination::File(path) => path.display().to_string(),
            },
        })
    }
}
