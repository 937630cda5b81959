//! A `serde` deserializer over one [`Node`] that records what it can step over.
//!
//! A type mismatch is recorded in the [`Session`] and the visitor gets a neutral value (`0`,
//! `""`, an empty list or mapping), so it never learns of the problem and the rest of the
//! document is still checked. Failures raised by visitors leave through [`Session::attach`],
//! which gives them this node.

use serde::de::Visitor;

use super::access::{EnumReader, MapReader, SeqReader};
use super::error::{DeserializeError, OneOf};
use super::node::{Node, NodeValue, child_key_path};
use super::scalar::{self, IntegerText};
use super::session::Session;

/// Deserializes one node.
pub(super) struct ValueDeserializer<'node, 'session> {
    node: &'node Node,
    key_path: String,
    session: &'session mut Session,
}

impl<'node, 'session> ValueDeserializer<'node, 'session> {
    pub(super) fn new(node: &'node Node, key_path: String, session: &'session mut Session) -> Self {
        Self {
            node,
            key_path,
            session,
        }
    }

    /// Records that the node is not what the visitor asked for.
    fn mismatch(&mut self, expected: &str) {
        let message = format!("expected {expected}, found {}", self.node.describe());
        self.session.record_at(self.node, &self.key_path, message);
    }

    fn place<T>(&self, result: Result<T, DeserializeError>) -> Result<T, DeserializeError> {
        self.session.attach(result, self.node, &self.key_path)
    }

    /// The integer in the node, or 0 after recording why there is none. `minimum` and
    /// `maximum` are the target type's range (`u128` is limited to `i128::MAX`).
    fn integer<T: TryFrom<i128> + Default>(&mut self, minimum: i128, maximum: i128) -> T {
        let kind = if minimum == 0 {
            "an unsigned integer"
        } else {
            "an integer"
        };
        let parsed = match &self.node.value {
            NodeValue::Scalar {
                text,
                style_plain: true,
            } => scalar::parse_integer(text),
            _ => IntegerText::NotInteger,
        };
        match parsed {
            IntegerText::Value(value) => {
                if let Ok(converted) = T::try_from(value) {
                    return converted;
                }
                if value < 0 && minimum == 0 {
                    self.mismatch(kind);
                } else {
                    self.mismatch(&format!("an integer from {minimum} to {maximum}"));
                }
            }
            IntegerText::OutOfRange => {
                self.mismatch(&format!("an integer from {minimum} to {maximum}"));
            }
            IntegerText::NotInteger => self.mismatch(kind),
        }
        T::default()
    }

    fn float(&mut self) -> f64 {
        if let NodeValue::Scalar {
            text,
            style_plain: true,
        } = &self.node.value
        {
            if let Some(value) = scalar::parse_float(text) {
                return value;
            }
            if let IntegerText::Value(value) = scalar::parse_integer(text) {
                // Precision lost on integers past 2^53 is what any float target accepts.
                return value as f64;
            }
        }
        self.mismatch("a number");
        0.0
    }

    /// Visits a plain scalar as the YAML 1.2 core schema reads it.
    fn visit_plain_scalar<V: Visitor<'node>>(
        text: &'node str,
        visitor: V,
    ) -> Result<V::Value, DeserializeError> {
        if let Some(value) = scalar::parse_bool(text) {
            return visitor.visit_bool(value);
        }
        match scalar::parse_integer(text) {
            IntegerText::Value(value) => {
                if let Ok(unsigned) = u64::try_from(value) {
                    return visitor.visit_u64(unsigned);
                }
                if let Ok(signed) = i64::try_from(value) {
                    return visitor.visit_i64(signed);
                }
                // Formats like JSON hold integers this large only as floats.
                return visitor.visit_f64(value as f64);
            }
            IntegerText::OutOfRange => {
                // Decimal text past i128 still reads as a float; hex and octal stay text.
                return match text.parse() {
                    Ok(value) => visitor.visit_f64(value),
                    Err(_) => visitor.visit_borrowed_str(text),
                };
            }
            IntegerText::NotInteger => {}
        }
        match scalar::parse_float(text) {
            Some(value) => visitor.visit_f64(value),
            None => visitor.visit_borrowed_str(text),
        }
    }
}

/// Implements the integer methods, which differ only in the type and its range.
macro_rules! deserialize_integers {
    ($($method:ident => $visit:ident($type:ty, $minimum:expr, $maximum:expr);)*) => {
        $(
            fn $method<V: Visitor<'node>>(mut self, visitor: V) -> Result<V::Value, Self::Error> {
                let value: $type = self.integer($minimum, $maximum);
                let result = visitor.$visit(value);
                self.place(result)
            }
        )*
    };
}

impl<'node> serde::Deserializer<'node> for ValueDeserializer<'node, '_> {
    type Error = DeserializeError;

    deserialize_integers! {
        deserialize_i8 => visit_i8(i8, i128::from(i8::MIN), i128::from(i8::MAX));
        deserialize_i16 => visit_i16(i16, i128::from(i16::MIN), i128::from(i16::MAX));
        deserialize_i32 => visit_i32(i32, i128::from(i32::MIN), i128::from(i32::MAX));
        deserialize_i64 => visit_i64(i64, i128::from(i64::MIN), i128::from(i64::MAX));
        deserialize_i128 => visit_i128(i128, i128::MIN, i128::MAX);
        deserialize_u8 => visit_u8(u8, 0, i128::from(u8::MAX));
        deserialize_u16 => visit_u16(u16, 0, i128::from(u16::MAX));
        deserialize_u32 => visit_u32(u32, 0, i128::from(u32::MAX));
        deserialize_u64 => visit_u64(u64, 0, i128::from(u64::MAX));
        deserialize_u128 => visit_u128(u128, 0, i128::MAX);
    }

    fn deserialize_any<V: Visitor<'node>>(self, visitor: V) -> Result<V::Value, Self::Error> {
        let node = self.node;
        let result = match &node.value {
            NodeValue::Null => visitor.visit_unit(),
            NodeValue::Scalar {
                text,
                style_plain: true,
            } => Self::visit_plain_scalar(text, visitor),
            NodeValue::Scalar { text, .. } => visitor.visit_borrowed_str(text),
            NodeValue::Sequence(elements) => {
                visitor.visit_seq(SeqReader::new(elements, &self.key_path, &mut *self.session))
            }
            NodeValue::Mapping(entries) => visitor.visit_map(MapReader::new(
                entries,
                &self.key_path,
                None,
                &mut *self.session,
            )),
        };
        self.place(result)
    }

    fn deserialize_bool<V: Visitor<'node>>(mut self, visitor: V) -> Result<V::Value, Self::Error> {
        let value = match &self.node.value {
            NodeValue::Scalar {
                text,
                style_plain: true,
            } => scalar::parse_bool(text),
            _ => None,
        };
        let value = value.unwrap_or_else(|| {
            self.mismatch("a boolean (true or false)");
            false
        });
        let result = visitor.visit_bool(value);
        self.place(result)
    }

    fn deserialize_f32<V: Visitor<'node>>(mut self, visitor: V) -> Result<V::Value, Self::Error> {
        let value = self.float();
        // Narrowing to the target's precision is the point of asking for an f32.
        let result = visitor.visit_f32(value as f32);
        self.place(result)
    }

    fn deserialize_f64<V: Visitor<'node>>(mut self, visitor: V) -> Result<V::Value, Self::Error> {
        let value = self.float();
        let result = visitor.visit_f64(value);
        self.place(result)
    }

    fn deserialize_char<V: Visitor<'node>>(mut self, visitor: V) -> Result<V::Value, Self::Error> {
        let single = self.node.scalar_text().and_then(|text| {
            let mut characters = text.chars();
            characters.next().filter(|_| characters.next().is_none())
        });
        let value = single.unwrap_or_else(|| {
            self.mismatch("a single character");
            '\0'
        });
        let result = visitor.visit_char(value);
        self.place(result)
    }

    /// Any scalar is accepted as its text, so `version: 1` and `path: 404` work as strings.
    fn deserialize_str<V: Visitor<'node>>(mut self, visitor: V) -> Result<V::Value, Self::Error> {
        let node = self.node;
        let result = match node.scalar_text() {
            Some(text) => visitor.visit_borrowed_str(text),
            None => {
                self.mismatch("a string");
                visitor.visit_borrowed_str("")
            }
        };
        self.place(result)
    }

    fn deserialize_string<V: Visitor<'node>>(self, visitor: V) -> Result<V::Value, Self::Error> {
        self.deserialize_str(visitor)
    }

    fn deserialize_bytes<V: Visitor<'node>>(mut self, visitor: V) -> Result<V::Value, Self::Error> {
        let node = self.node;
        let result = match node.scalar_text() {
            Some(text) => visitor.visit_borrowed_bytes(text.as_bytes()),
            None => {
                self.mismatch("a string");
                visitor.visit_borrowed_bytes(&[])
            }
        };
        self.place(result)
    }

    fn deserialize_byte_buf<V: Visitor<'node>>(self, visitor: V) -> Result<V::Value, Self::Error> {
        self.deserialize_bytes(visitor)
    }

    /// Null is None; anything else, quoted `"null"` included, is Some.
    fn deserialize_option<V: Visitor<'node>>(self, visitor: V) -> Result<V::Value, Self::Error> {
        if self.node.value == NodeValue::Null {
            let result = visitor.visit_none();
            self.place(result)
        } else {
            // The inner deserializer places its own errors on this same node.
            visitor.visit_some(self)
        }
    }

    fn deserialize_unit<V: Visitor<'node>>(mut self, visitor: V) -> Result<V::Value, Self::Error> {
        if self.node.value != NodeValue::Null {
            self.mismatch("null");
        }
        let result = visitor.visit_unit();
        self.place(result)
    }

    fn deserialize_unit_struct<V: Visitor<'node>>(
        self,
        _name: &'static str,
        visitor: V,
    ) -> Result<V::Value, Self::Error> {
        self.deserialize_unit(visitor)
    }

    fn deserialize_newtype_struct<V: Visitor<'node>>(
        self,
        _name: &'static str,
        visitor: V,
    ) -> Result<V::Value, Self::Error> {
        visitor.visit_newtype_struct(self)
    }

    fn deserialize_seq<V: Visitor<'node>>(mut self, visitor: V) -> Result<V::Value, Self::Error> {
        let node = self.node;
        let elements: &[Node] = match &node.value {
            NodeValue::Sequence(elements) => elements,
            _ => {
                self.mismatch("a sequence");
                &[]
            }
        };
        let result =
            visitor.visit_seq(SeqReader::new(elements, &self.key_path, &mut *self.session));
        self.place(result)
    }

    /// A tuple's visitor stops reading at its length, so extra elements are reported here
    /// (too few make the visitor fail).
    fn deserialize_tuple<V: Visitor<'node>>(
        self,
        length: usize,
        visitor: V,
    ) -> Result<V::Value, Self::Error> {
        if let NodeValue::Sequence(elements) = &self.node.value
            && elements.len() > length
        {
            let message = format!(
                "expected a sequence of {length} elements, found {}",
                elements.len()
            );
            self.session.record_at(self.node, &self.key_path, message);
        }
        self.deserialize_seq(visitor)
    }

    fn deserialize_tuple_struct<V: Visitor<'node>>(
        self,
        _name: &'static str,
        length: usize,
        visitor: V,
    ) -> Result<V::Value, Self::Error> {
        self.deserialize_tuple(length, visitor)
    }

    /// Maps accept any key; only duplicates are reported.
    fn deserialize_map<V: Visitor<'node>>(mut self, visitor: V) -> Result<V::Value, Self::Error> {
        let node = self.node;
        let entries: &[(Node, Node)] = match &node.value {
            NodeValue::Mapping(entries) => entries,
            _ => {
                self.mismatch("a mapping");
                &[]
            }
        };
        let result = visitor.visit_map(MapReader::new(
            entries,
            &self.key_path,
            None,
            &mut *self.session,
        ));
        self.place(result)
    }

    /// Every key that is not one of `fields` is reported and then hidden from the visitor, so
    /// all unknown keys are found and the struct is still built from the known ones.
    fn deserialize_struct<V: Visitor<'node>>(
        mut self,
        _name: &'static str,
        fields: &'static [&'static str],
        visitor: V,
    ) -> Result<V::Value, Self::Error> {
        let node = self.node;
        let entries: &[(Node, Node)] = match &node.value {
            NodeValue::Mapping(entries) => entries,
            _ => {
                self.mismatch("a mapping");
                &[]
            }
        };
        let reader = MapReader::new(entries, &self.key_path, Some(fields), &mut *self.session);
        let result = visitor.visit_map(reader);
        self.place(result)
    }

    /// A unit variant is a scalar (`round_robin`); any variant can be a mapping with the variant
    /// as its only key (`weighted: {...}`).
    fn deserialize_enum<V: Visitor<'node>>(
        self,
        _name: &'static str,
        variants: &'static [&'static str],
        visitor: V,
    ) -> Result<V::Value, Self::Error> {
        let node = self.node;
        let result = match &node.value {
            NodeValue::Scalar { .. } => visitor.visit_enum(EnumReader::new(
                node,
                &self.key_path,
                None,
                &mut *self.session,
            )),
            NodeValue::Mapping(entries) if entries.len() == 1 => {
                let (variant, value) = &entries[0];
                if self.session.is_rejected(variant) || self.session.is_rejected(value) {
                    // Already reported; failing here lets the next round skip this node.
                    Err(DeserializeError::message("the variant was rejected"))
                } else {
                    let value_path =
                        child_key_path(&self.key_path, variant.scalar_text().unwrap_or(""));
                    visitor.visit_enum(EnumReader::new(
                        variant,
                        &self.key_path,
                        Some((value, value_path)),
                        &mut *self.session,
                    ))
                }
            }
            other => {
                let found = match other {
                    NodeValue::Mapping(entries) => format!("a mapping with {} keys", entries.len()),
                    _ => node.describe(),
                };
                Err(DeserializeError::message(format!(
                    "expected a name or a mapping with a name as its only key {}, found {found}",
                    OneOf(variants)
                )))
            }
        };
        self.place(result)
    }

    fn deserialize_identifier<V: Visitor<'node>>(
        self,
        visitor: V,
    ) -> Result<V::Value, Self::Error> {
        self.deserialize_str(visitor)
    }

    fn deserialize_ignored_any<V: Visitor<'node>>(
        self,
        visitor: V,
    ) -> Result<V::Value, Self::Error> {
        visitor.visit_unit()
    }
}
