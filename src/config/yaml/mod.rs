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
//! Recorded where they are found, with a neutral value (`0`, `""`, an empty list or mapping)
//! handed on so that the same pass goes on checking the rest:
//! - unknown keys in a struct (every struct acts as if it had `deny_unknown_fields`; maps such
//!   as `HashMap` accept any key), and struct keys that are not names;
//! - duplicate keys in any mapping;
//! - a value of the wrong type or shape for an integer (range included), float, boolean,
//!   character, string, option, unit, sequence, tuple (too many elements), map or struct.
//!
//! Failures of a second kind stop the struct that holds them, and every struct around it,
//! because only a `serde` visitor or a `Deserialize` impl notices them and a visitor that
//! returned an error is used up: an error from a custom `Deserialize` impl (a bad duration,
//! say), a missing required key, an unknown enum variant, an enum in the wrong shape, an
//! untagged enum that matched no variant, a tuple that is too short. [`deserialize_node`]
//! records such a failure against the node it came from, drops that node and deserializes
//! again, the dropped node now counting as absent (a dropped list element is skipped). It
//! repeats until the value is built or the top-level node itself fails, so these failures too
//! are reported for the whole document, at the cost of one more pass each. What stays unseen:
//! - the value under an unknown enum variant name, whose schema is unknown;
//! - the inside of a value that `serde` buffers: an `#[serde(untagged)]` or internally tagged
//!   enum, or a `#[serde(flatten)]` field (whose struct is deserialized as a map, so none of its
//!   unknown keys is reported). Such a value gets one error at its node ("data did not match any
//!   variant of untagged enum Endpoint"); unknown keys inside it are caught only when the
//!   variant's struct has `#[serde(deny_unknown_fields)]`, and a number given to a string field
//!   inside it is refused;
//! - whatever a hand-written `Deserialize` impl had not read when it failed.
//!
//! Errors that follow from one already reported are not reported again: a missing key whose
//! value was dropped, a failure at a node that already has an error (a struct written as a
//! string, say) or some of whose content was dropped.
//!
//! # Limits
//! - Nodes copied from an anchor keep the marks of the anchored text, since that is where the
//!   text to fix is; their key paths are those of the place they were copied to.
//! - Integers are read into `i128`, so a `u128` field accepts at most `i128::MAX`.

mod access;
mod de;
mod error;
mod json;
mod node;
mod parse;
mod scalar;
mod session;
#[cfg(test)]
mod tests;

use std::fmt;
use std::path::{Path, PathBuf};

pub use node::{Node, NodeValue, child_key_path, element_key_path};
pub use parse::parse_document;
pub use session::deserialize_node;

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
#[derive(Clone, Debug, PartialEq, Eq)]
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

// Written by hand because the parts that are absent change the punctuation around them.
impl fmt::Display for ConfigError {
    fn fmt(&self, formatter: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(formatter, "{}", self.file.display())?;
        if let Some(mark) = self.mark {
            write!(formatter, ":{mark}")?;
        }
        formatter.write_str(": ")?;
        if !self.key_path.is_empty() {
            write!(formatter, "{}: ", self.key_path)?;
        }
        formatter.write_str(&self.message)
    }
}

impl std::error::Error for ConfigError {}
