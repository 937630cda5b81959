//! Between the [`Node`] tree and JSON: the admin API shows the config as JSON and takes
//! changes as JSON, while validation only reads nodes.
//!
//! A plain scalar becomes what the YAML 1.2 core schema reads it as (null, boolean, integer,
//! float, or else a string), so `weight: 2` is the number 2 and `timeout: 10s` the string
//! "10s"; a quoted scalar is always a string. The other way, a JSON string becomes a quoted
//! scalar and a number or boolean a plain one, which is how the same value would be written in
//! YAML. Deserialization then treats a JSON document exactly as the YAML it stands for.

use serde_json::{Map, Number, Value};

use super::Mark;
use super::node::{Node, NodeValue};
use super::scalar::{self, IntegerText};

impl Node {
    /// The node as JSON. Mapping keys that are not scalars (YAML allows them, the config
    /// never uses them) are written as their JSON text.
    pub fn to_json(&self) -> Value {
        match &self.value {
            NodeValue::Null => Value::Null,
            NodeValue::Scalar {
                text,
                style_plain: false,
            } => Value::String(text.clone()),
            NodeValue::Scalar {
                text,
                style_plain: true,
            } => plain_scalar(text),
            NodeValue::Sequence(elements) => {
                Value::Array(elements.iter().map(Node::to_json).collect())
            }
            NodeValue::Mapping(entries) => {
                let mut map = Map::new();
                for (key, value) in entries {
                    let key = match key.scalar_text() {
                        Some(text) => text.to_owned(),
                        None => key.to_json().to_string(),
                    };
                    // The first of repeated keys wins, as in `Node::get`; validation reports
                    // the repetition anyway.
                    map.entry(key).or_insert_with(|| value.to_json());
                }
                Value::Object(map)
            }
        }
    }

    /// A tree for `value`, every node marked at `mark` (JSON from a request body has no
    /// useful position).
    pub fn from_json(value: &Value, mark: Mark) -> Node {
        let node_value = match value {
            Value::Null => NodeValue::Null,
            Value::Bool(flag) => NodeValue::Scalar {
                text: flag.to_string(),
                style_plain: true,
            },
            Value::Number(number) => NodeValue::Scalar {
                text: number.to_string(),
                style_plain: true,
            },
            Value::String(text) => NodeValue::Scalar {
                text: text.clone(),
                style_plain: false,
            },
            Value::Array(elements) => NodeValue::Sequence(
                elements
                    .iter()
                    .map(|element| Node::from_json(element, mark))
                    .collect(),
            ),
            Value::Object(map) => NodeValue::Mapping(
                map.iter()
                    .map(|(key, value)| {
                        (
                            Node::from_json(&Value::String(key.clone()), mark),
                            Node::from_json(value, mark),
                        )
                    })
                    .collect(),
            ),
        };
        Node {
            value: node_value,
            mark,
        }
    }
}

/// A plain scalar as the core schema reads it; text that JSON cannot hold as a number
/// (`.inf`, integers past 64 bits) stays text.
fn plain_scalar(text: &str) -> Value {
    if scalar::is_null(text) {
        return Value::Null;
    }
    if let Some(flag) = scalar::parse_bool(text) {
        return Value::Bool(flag);
    }
    if let IntegerText::Value(integer) = scalar::parse_integer(text) {
        if let Ok(unsigned) = u64::try_from(integer) {
            return Value::Number(unsigned.into());
        }
        if let Ok(signed) = i64::try_from(integer) {
            return Value::Number(signed.into());
        }
    }
    match scalar::parse_float(text).and_then(Number::from_f64) {
        Some(number) => Value::Number(number),
        None => Value::String(text.to_owned()),
    }
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    use serde_json::json;

    use super::*;
    use crate::config::yaml::parse_document;

    #[test]
    fn yaml_scalars_become_the_json_the_core_schema_reads() {
        let root = parse_document(
            Path::new("t.yaml"),
            "a: 10s\nb: 2\nc: \"2\"\nd: true\ne: ~\nf: 1.5\ng: [x, 0x10]\nh: .inf\ni: 127.0.0.1:80\n",
        )
        .unwrap();
        assert_eq!(
            root.to_json(),
            json!({"a": "10s", "b": 2, "c": "2", "d": true, "e": null, "f": 1.5,
                   "g": ["x", 16], "h": ".inf", "i": "127.0.0.1:80"})
        );
    }

    #[test]
    fn json_round_trips_through_nodes() {
        let value = json!({"id": "api", "priority": -3, "weight": 2.5, "on": false,
                           "list": ["a", 1, null], "nested": {"k": "42"}});
        let node = Node::from_json(&value, Mark { line: 1, column: 1 });
        assert_eq!(node.to_json(), value);
        // A string that looks like a number stays a string: it was quoted.
        assert_eq!(
            node.find("nested.k").map(|node| node.value.clone()),
            Some(NodeValue::Scalar {
                text: "42".to_owned(),
                style_plain: false
            })
        );
    }
}
