//! YAML loading that reports every problem in a config file at once, each with its file, line,
//! column and key path.
//!
//! `serde_yaml` forgets where nodes came from and stops at the first error, which turns fixing a
//! config into a loop of edit, reload, read one error. This module instead:
//!
//! 1. parses the text with `yaml-rust2`'s event parser into a [`Node`] tree that keeps a [`Mark`]
//!    on every node, resolving anchors, aliases and merge keys on the way ([`parse_document`]);
//! 2. deserializes a node into any `serde` type through its own deserializer, which records
//!    problems in a list instead of stopping at them ([`deserialize_node`]).
//!
//! # Which errors are collected
//!
//! *Every occurrence* is reported, and deserialization carries on past it, for:
//! - unknown keys in a struct (every struct behaves as if it had `deny_unknown_fields`; maps such
//!   as `HashMap` accept any key);
//! - duplicate keys in any mapping;
//! - a value of the wrong shape or type for a primitive, string, option, sequence, map or struct
//!   (a neutral value such as `0`, `""` or an empty list is used in its place so the rest of the
//!   document is still checked).
//!
//! Other failures cannot be recovered in place, because a `serde` visitor that returned an error
//! has been consumed: an error from a custom `Deserialize` impl (for example a bad duration), a
//! missing required key, an unknown enum variant, an enum written in the wrong shape, and an
//! untagged enum that matched no variant. Each of these stops the struct that contains it, so
//! [`deserialize_node`] records the error, drops the failing node and deserializes again from
//! the start; a struct whose required key was dropped is dropped in turn, and a dropped list
//! element is skipped. The result is that these errors are also reported for the whole document,
//! with one limit: once a struct is dropped, *further failures of this second kind inside that
//! same struct* are not seen (unknown keys and type errors inside it are still reported). In
//! practice that means one such error per struct, which is why callers can still choose to call
//! [`deserialize_node`] per list element.
//!
//! An error that follows from one already reported (a missing-key error for a key whose value was
//! rejected, a failure on a node that already has a type error) is not reported again.
//!
//! # Limits
//! - Inside `#[serde(untagged)]` and internally tagged enums, `serde` buffers the value and
//!   matches it without this deserializer, so a failure there is one error at the enum's node
//!   ("data did not match any variant ...") and unknown keys there are only caught when the
//!   variant's struct has `#[serde(deny_unknown_fields)]`. A number given to a string field of
//!   such a variant is rejected, unlike elsewhere.
//! - Structs with `#[serde(flatten)]` are deserialized as maps, so their unknown keys are not
//!   reported.
//! - Nodes copied from an anchor keep the marks of the anchored text, since that is where the
//!   text to fix is; their key paths are those of the place they were copied to.

mod access;
mod de;
mod error;
mod node;
mod parse;
mod scalar;
#[cfg(test)]
mod tests;

use std::fmt;
use std::path::{Path, PathBuf};

pub use de::deserialize_node;
pub use node::{Node, NodeValue, child_key_path, element_key_path};
pub use parse::parse_document;

/// A position in a source file (1-based line and column, columns counted in characters).
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Mark {
    pub line: usize,
    pub column: usize,
}

impl fmt::Display for Mark {
    fn fmt(&self, formatter: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(formatter, "{}:{}", self.line, self.column)
    }
}

/// One problem in a config file.
///
/// Displays as `conf/loom.yaml:12:5: routes[2].upstream: unknown upstream "foo"`, leaving out the
/// position when there is none and the key path when it is empty (the whole document).
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error(fmt = format_config_error)]
pub struct ConfigError {
    pub file: PathBuf,
    pub mark: Option<Mark>,
    pub key_path: String,
    pub message: String,
}

impl ConfigError {
    /// Builds an error; a convenience for validation code that reports against a node.
    pub fn new(
        file: &Path,
        mark: Option<Mark>,
        key_path: impl Into<String>,
        message: impl Into<String>,
    ) -> Self {
        Self {
            file: file.to_path_buf(),
            mark,
            key_path: key_path.into(),
            message: message.into(),
        }
    }
}

fn format_config_error(error: &ConfigError, formatter: &mut fmt::Formatter<'_>) -> fmt::Result {
    write!(formatter, "{}", error.file.display())?;
    if let Some(mark) = error.mark {
        write!(formatter, ":{mark}")?;
    }
    formatter.write_str(": ")?;
    if !error.key_path.is_empty() {
        write!(formatter, "{}: ", error.key_path)?;
    }
    formatter.write_str(&error.message)
}
