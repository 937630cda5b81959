//! The error that travels through `serde` while a node is deserialized.
//!
//! Most problems never become one of these: they are recorded on the spot and deserialization
//! goes on (see [`super::de`]). This type carries the failures that `serde` must see, together
//! with the node they belong to, which is attached by the innermost part of the deserializer
//! that the error passes through.

use std::fmt::{self, Display};

use serde::de::{self, Expected, Unexpected};

use super::Mark;

/// A failure that stopped the value being built.
#[derive(Debug, thiserror::Error)]
#[error("{reason}")]
pub(super) struct DeserializeError {
    pub(super) reason: Reason,
    /// None until the error reaches a part of the deserializer that knows the current node.
    pub(super) location: Option<Location>,
}

#[derive(Debug, thiserror::Error)]
pub(super) enum Reason {
    #[error("{0}")]
    Message(String),
    /// Kept apart from other messages: it is the one failure that the removal of a rejected
    /// value causes by itself, and recognising it avoids reporting that value twice.
    #[error("missing required key \"{0}\"")]
    MissingKey(&'static str),
}

/// The node a failure belongs to.
#[derive(Debug)]
pub(super) struct Location {
    /// The node's address, which identifies it within the tree for the rest of the call.
    pub(super) node: usize,
    pub(super) key_path: String,
    pub(super) mark: Mark,
    /// The failure follows from an error already reported (see `Session::is_consequence`).
    pub(super) consequence: bool,
}

impl DeserializeError {
    pub(super) fn message(message: impl Into<String>) -> Self {
        Self {
            reason: Reason::Message(message.into()),
            location: None,
        }
    }
}

impl de::Error for DeserializeError {
    fn custom<T: Display>(message: T) -> Self {
        Self::message(message.to_string())
    }

    fn invalid_type(unexpected: Unexpected<'_>, expected: &dyn Expected) -> Self {
        Self::message(format!("expected {expected}, found {unexpected}"))
    }

    fn invalid_value(unexpected: Unexpected<'_>, expected: &dyn Expected) -> Self {
        Self::message(format!("invalid value {unexpected}, expected {expected}"))
    }

    fn invalid_length(length: usize, expected: &dyn Expected) -> Self {
        Self::message(format!("expected {expected}, found {length} elements"))
    }

    fn unknown_variant(variant: &str, expected: &'static [&'static str]) -> Self {
        Self::message(format!("unknown value {variant:?} {}", OneOf(expected)))
    }

    fn unknown_field(field: &str, expected: &'static [&'static str]) -> Self {
        Self::message(format!("unknown key {field:?} {}", OneOf(expected)))
    }

    fn missing_field(field: &'static str) -> Self {
        Self {
            reason: Reason::MissingKey(field),
            location: None,
        }
    }

    fn duplicate_field(field: &'static str) -> Self {
        Self::message(format!("duplicate key {field:?}"))
    }
}

/// Formats the choices a value or key could have had: `(expected one of: a, b, c)`.
pub(super) struct OneOf<'a>(pub(super) &'a [&'a str]);

impl Display for OneOf<'_> {
    fn fmt(&self, formatter: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.0 {
            [] => formatter.write_str("(nothing is accepted here)"),
            [only] => write!(formatter, "(expected {only})"),
            choices => write!(formatter, "(expected one of: {})", choices.join(", ")),
        }
    }
}
