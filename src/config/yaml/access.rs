//! The `serde` access types that walk a mapping, a sequence or an enum for a visitor.
//!
//! Each one skips nodes that an earlier round rejected, and gives a failure that reaches it
//! without a node (a `Deserialize` impl that failed after the deserializer had returned, such
//! as one that parses a string it was given) the node it was reading.

use std::collections::HashMap;

use serde::de::{DeserializeSeed, EnumAccess, MapAccess, SeqAccess, VariantAccess, Visitor};

use super::Mark;
use super::de::ValueDeserializer;
use super::error::{DeserializeError, OneOf};
use super::node::{Node, NodeValue, child_key_path, element_key_path};
use super::session::Session;

/// One mapping entry that the visitor will see.
struct Entry<'node> {
    key: &'node Node,
    value: &'node Node,
    key_path: String,
}

/// Hands a mapping's entries to a visitor.
pub(super) struct MapReader<'node, 'session> {
    entries: std::vec::IntoIter<Entry<'node>>,
    /// The value whose key was just handed out, with its key path.
    pending_value: Option<(&'node Node, String)>,
    session: &'session mut Session,
}

impl<'node, 'session> MapReader<'node, 'session> {
    /// Reports duplicate keys and, when `known_keys` is given (a struct's fields), every key
    /// outside it; those entries, and rejected ones, are left out.
    pub(super) fn new(
        entries: &'node [(Node, Node)],
        parent_path: &str,
        known_keys: Option<&[&str]>,
        session: &'session mut Session,
    ) -> Self {
        let mut first_marks: HashMap<&str, Mark> = HashMap::new();
        let mut kept = Vec::with_capacity(entries.len());
        for (key, value) in entries {
            let key_text = key.scalar_text();
            let key_path = match key_text {
                Some(text) => child_key_path(parent_path, text),
                None => parent_path.to_owned(),
            };
            if let Some(known_keys) = known_keys {
                match key_text {
                    None => {
                        let message = format!("expected a key name, found {}", key.describe());
                        session.record_at(key, &key_path, message);
                        continue;
                    }
                    Some(text) if !known_keys.contains(&text) => {
                        let message = format!("unknown key {text:?} {}", OneOf(known_keys));
                        session.record_at(key, &key_path, message);
                        continue;
                    }
                    Some(_) => {}
                }
            }
            if let Some(text) = key_text {
                if let Some(first) = first_marks.get(text) {
                    let message = format!(
                        "duplicate key {text:?} (first given at line {}, column {})",
                        first.line, first.column
                    );
                    session.record_at(key, &key_path, message);
                    continue;
                }
                first_marks.insert(text, key.mark);
            }
            if session.is_rejected(key) || session.is_rejected(value) {
                continue;
            }
            kept.push(Entry {
                key,
                value,
                key_path,
            });
        }
        Self {
            entries: kept.into_iter(),
            pending_value: None,
            session,
        }
    }

    /// A reader with no entries, for a struct variant written without settings.
    pub(super) fn empty(session: &'session mut Session) -> Self {
        Self {
            entries: Vec::new().into_iter(),
            pending_value: None,
            session,
        }
    }
}

impl<'node> MapAccess<'node> for MapReader<'node, '_> {
    type Error = DeserializeError;

    fn next_key_seed<K: DeserializeSeed<'node>>(
        &mut self,
        seed: K,
    ) -> Result<Option<K::Value>, Self::Error> {
        let Some(entry) = self.entries.next() else {
            return Ok(None);
        };
        let deserializer =
            ValueDeserializer::new(entry.key, entry.key_path.clone(), &mut *self.session);
        let result = seed.deserialize(deserializer);
        let result = self.session.attach(result, entry.key, &entry.key_path);
        self.pending_value = Some((entry.value, entry.key_path));
        result.map(Some)
    }

    fn next_value_seed<V: DeserializeSeed<'node>>(
        &mut self,
        seed: V,
    ) -> Result<V::Value, Self::Error> {
        let Some((value, key_path)) = self.pending_value.take() else {
            return Err(DeserializeError::message(
                "a mapping value was asked for before its key",
            ));
        };
        let deserializer = ValueDeserializer::new(value, key_path.clone(), &mut *self.session);
        let result = seed.deserialize(deserializer);
        self.session.attach(result, value, &key_path)
    }

    fn size_hint(&self) -> Option<usize> {
        Some(self.entries.len())
    }
}

/// Hands a sequence's elements to a visitor.
pub(super) struct SeqReader<'node, 'session> {
    /// Elements with their index in the document, which key paths keep even when an earlier
    /// element was rejected and is skipped.
    elements: std::vec::IntoIter<(usize, &'node Node)>,
    parent_path: String,
    session: &'session mut Session,
}

impl<'node, 'session> SeqReader<'node, 'session> {
    pub(super) fn new(
        elements: &'node [Node],
        parent_path: &str,
        session: &'session mut Session,
    ) -> Self {
        let kept: Vec<_> = elements
            .iter()
            .enumerate()
            .filter(|(_, element)| !session.is_rejected(element))
            .collect();
        Self {
            elements: kept.into_iter(),
            parent_path: parent_path.to_owned(),
            session,
        }
    }
}

impl<'node> SeqAccess<'node> for SeqReader<'node, '_> {
    type Error = DeserializeError;

    fn next_element_seed<T: DeserializeSeed<'node>>(
        &mut self,
        seed: T,
    ) -> Result<Option<T::Value>, Self::Error> {
        let Some((index, element)) = self.elements.next() else {
            return Ok(None);
        };
        let key_path = element_key_path(&self.parent_path, index);
        let deserializer = ValueDeserializer::new(element, key_path.clone(), &mut *self.session);
        let result = seed.deserialize(deserializer);
        self.session.attach(result, element, &key_path).map(Some)
    }

    fn size_hint(&self) -> Option<usize> {
        Some(self.elements.len())
    }
}

/// Hands an enum's variant name, and its value when it has one, to a visitor.
pub(super) struct EnumReader<'node, 'session> {
    /// The scalar or single mapping key that names the variant.
    variant: &'node Node,
    enum_path: String,
    /// The node under the variant's key and its key path; None for the scalar form.
    value: Option<(&'node Node, String)>,
    session: &'session mut Session,
}

impl<'node, 'session> EnumReader<'node, 'session> {
    pub(super) fn new(
        variant: &'node Node,
        enum_path: &str,
        value: Option<(&'node Node, String)>,
        session: &'session mut Session,
    ) -> Self {
        Self {
            variant,
            enum_path: enum_path.to_owned(),
            value,
            session,
        }
    }

    fn variant_name(&self) -> &str {
        self.variant.scalar_text().unwrap_or_default()
    }

    /// The failure for a variant that needs a value but was given as a bare name.
    fn needs_value(&self) -> DeserializeError {
        let name = self.variant_name();
        DeserializeError::message(format!(
            "{name:?} needs a value; write it as a mapping: \"{name}: ...\""
        ))
    }
}

impl<'node, 'session> EnumAccess<'node> for EnumReader<'node, 'session> {
    type Error = DeserializeError;
    type Variant = Self;

    fn variant_seed<V: DeserializeSeed<'node>>(
        self,
        seed: V,
    ) -> Result<(V::Value, Self::Variant), Self::Error> {
        let deserializer =
            ValueDeserializer::new(self.variant, self.enum_path.clone(), &mut *self.session);
        let result = seed.deserialize(deserializer);
        let variant = self.session.attach(result, self.variant, &self.enum_path)?;
        Ok((variant, self))
    }
}

impl<'node> VariantAccess<'node> for EnumReader<'node, '_> {
    type Error = DeserializeError;

    /// A unit variant written as a mapping must have nothing under its key.
    fn unit_variant(self) -> Result<(), Self::Error> {
        if let Some((value, key_path)) = &self.value
            && value.value != NodeValue::Null
        {
            let message = format!(
                "{:?} takes no value, found {}",
                self.variant_name(),
                value.describe()
            );
            self.session.record_at(value, key_path, message);
        }
        Ok(())
    }

    fn newtype_variant_seed<T: DeserializeSeed<'node>>(
        self,
        seed: T,
    ) -> Result<T::Value, Self::Error> {
        let Some((value, key_path)) = self.value else {
            return Err(self.needs_value());
        };
        let deserializer = ValueDeserializer::new(value, key_path.clone(), &mut *self.session);
        let result = seed.deserialize(deserializer);
        self.session.attach(result, value, &key_path)
    }

    fn tuple_variant<V: Visitor<'node>>(
        self,
        _length: usize,
        visitor: V,
    ) -> Result<V::Value, Self::Error> {
        let Some((value, key_path)) = self.value else {
            return Err(self.needs_value());
        };
        serde::Deserializer::deserialize_seq(
            ValueDeserializer::new(value, key_path, self.session),
            visitor,
        )
    }

    /// A struct variant given as a bare name is read as having no settings, which works when
    /// all of them have defaults and otherwise reports the missing ones.
    fn struct_variant<V: Visitor<'node>>(
        self,
        fields: &'static [&'static str],
        visitor: V,
    ) -> Result<V::Value, Self::Error> {
        match self.value {
            Some((value, key_path)) => serde::Deserializer::deserialize_struct(
                ValueDeserializer::new(value, key_path, self.session),
                "",
                fields,
                visitor,
            ),
            None => visitor.visit_map(MapReader::empty(self.session)),
        }
    }
}
