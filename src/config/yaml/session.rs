//! One [`deserialize_node`] call: its rounds, and what they have learned so far.
//!
//! Problems the deserializer can step over are recorded here while a neutral value goes on to
//! the visitor. A failure only a visitor or a `Deserialize` impl notices comes back as a
//! [`DeserializeError`] that knows its node; [`deserialize_node`] records it, marks the node as
//! *rejected* and starts again. Every part of the deserializer skips rejected nodes, so the next
//! round gets past the failure and finds what else is wrong.

use std::collections::HashSet;
use std::path::{Path, PathBuf};

use serde::de::DeserializeOwned;

use super::de::ValueDeserializer;
use super::error::{DeserializeError, Location, Reason};
use super::node::{Node, NodeValue};
use super::{ConfigError, Mark};

/// Deserializes `node` into T, appending every error found to `errors`. Returns None when the
/// value could not be built.
///
/// `key_path` is the path of `node` in its document (`""` for the top level); error paths are
/// built on it. The returned value is `Some` whenever it could be built, possibly with the
/// neutral stand-ins for recorded type errors (`0`, `""`, an empty list) and with rejected
/// nodes left out (a dropped key counts as absent, a dropped list element is skipped). Callers
/// use such a partial value only to find further errors (cross-references), never as a valid
/// config: any appended error rejects the file. It is `None` when the node itself could not be
/// built. Errors are appended in document order.
pub fn deserialize_node<T: DeserializeOwned>(
    file: &Path,
    node: &Node,
    key_path: &str,
    errors: &mut Vec<ConfigError>,
) -> Option<T> {
    let mut session = Session::new(file);
    let value = loop {
        let deserializer = ValueDeserializer::new(node, key_path.to_owned(), &mut session);
        match T::deserialize(deserializer) {
            Ok(value) => break Some(value),
            Err(error) => {
                let location = match error.location {
                    Some(location) => location,
                    None => session.locate(node, key_path, &error.reason),
                };
                if !location.consequence {
                    session.record(
                        location.node,
                        location.mark,
                        &location.key_path,
                        error.reason.to_string(),
                    );
                }
                // Each round rejects a node that earlier rounds kept, so the loop ends; the
                // top-level node cannot be skipped, so its failure ends it at once.
                if location.node == address(node) || !session.rejected.insert(location.node) {
                    break None;
                }
            }
        }
    };
    let mut found = session.errors;
    found.sort_by_key(|error| error.mark);
    errors.extend(found);
    value
}

/// What one [`deserialize_node`] call has learned, shared by every deserializer it creates and
/// kept across its rounds.
pub(super) struct Session {
    file: PathBuf,
    errors: Vec<ConfigError>,
    /// Nodes that already have an error, whose later failures are not reported again.
    nodes_with_errors: HashSet<usize>,
    /// Nodes whose deserialization failed; skipped from then on.
    rejected: HashSet<usize>,
}

impl Session {
    fn new(file: &Path) -> Self {
        Self {
            file: file.to_path_buf(),
            errors: Vec::new(),
            nodes_with_errors: HashSet::new(),
            rejected: HashSet::new(),
        }
    }

    /// Records an error, once: later rounds meet the same recorded problems again.
    pub(super) fn record(&mut self, node: usize, mark: Mark, key_path: &str, message: String) {
        self.nodes_with_errors.insert(node);
        let duplicate = self.errors.iter().any(|error| {
            error.mark == Some(mark) && error.key_path == key_path && error.message == message
        });
        if !duplicate {
            self.errors
                .push(ConfigError::new(&self.file, Some(mark), key_path, message));
        }
    }

    pub(super) fn record_at(&mut self, node: &Node, key_path: &str, message: String) {
        self.record(address(node), node.mark, key_path, message);
    }

    pub(super) fn is_rejected(&self, node: &Node) -> bool {
        self.rejected.contains(&address(node))
    }

    /// Gives an error that has no node yet the node being deserialized.
    pub(super) fn attach<T>(
        &self,
        result: Result<T, DeserializeError>,
        node: &Node,
        key_path: &str,
    ) -> Result<T, DeserializeError> {
        result.map_err(|mut error| {
            if error.location.is_none() {
                error.location = Some(self.locate(node, key_path, &error.reason));
            }
            error
        })
    }

    fn locate(&self, node: &Node, key_path: &str, reason: &Reason) -> Location {
        Location {
            node: address(node),
            key_path: key_path.to_owned(),
            mark: node.mark,
            consequence: self.is_consequence(node, reason),
        }
    }

    /// Whether a failure at `node` follows from an error that is already reported: the node has
    /// an error of its own (a type error made it hand a neutral value to the visitor), the
    /// missing key is one whose value was rejected, or part of its content was rejected and
    /// skipped.
    fn is_consequence(&self, node: &Node, reason: &Reason) -> bool {
        if self.nodes_with_errors.contains(&address(node)) {
            return true;
        }
        match reason {
            Reason::MissingKey(name) => match &node.value {
                NodeValue::Mapping(entries) => entries.iter().any(|(key, value)| {
                    key.scalar_text() == Some(name)
                        && (self.is_rejected(key) || self.is_rejected(value))
                }),
                _ => false,
            },
            Reason::Message(_) => node.children().any(|child| self.is_rejected(child)),
        }
    }
}

/// Identifies a node for the length of one call: the tree is borrowed, so it cannot move.
pub(super) fn address(node: &Node) -> usize {
    std::ptr::from_ref(node).addr()
}
