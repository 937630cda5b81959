//! The YAML tree with a source position on every node, and the key paths that name its nodes.
//!
//! A key path is what error messages show and what [`Node::find`] reads: mapping keys joined
//! with `.` and sequence indexes in brackets, as in `upstreams[0].health_check.interval`. A key
//! that would make the path ambiguous (it holds `.`, `[`, `]`, `"`, `\` or whitespace, or is
//! empty) is written quoted in brackets instead: `routes[1].headers["x.request.id"]`.

use super::Mark;

/// The content of a node.
#[derive(Clone, Debug, PartialEq)]
pub enum NodeValue {
    /// `~`, `null`, or nothing at all, written plain.
    Null,
    /// Any other scalar, kept as text: what it means depends on the type asked for.
    /// `style_plain` is false for quoted and block scalars and for `!!str`, which are always
    /// strings.
    Scalar {
        text: String,
        style_plain: bool,
    },
    Sequence(Vec<Node>),
    /// Entries in document order, merge keys already applied.
    Mapping(Vec<(Node, Node)>),
}

/// A YAML node and where it starts in the source.
#[derive(Clone, Debug, PartialEq)]
pub struct Node {
    pub value: NodeValue,
    pub mark: Mark,
}

impl Node {
    /// Finds the node at a key path such as "routes[2].upstream" or "upstreams[0]"; None if absent.
    ///
    /// The empty path is the node itself. Validation code uses this to point an error that it
    /// found in a deserialized value back at the text.
    pub fn find(&self, key_path: &str) -> Option<&Node> {
        let mut current = self;
        let mut rest = key_path;
        let mut at_start = true;
        while !rest.is_empty() {
            if let Some(bracketed) = rest.strip_prefix('[') {
                if let Some(quoted) = bracketed.strip_prefix('"') {
                    let (key, after) = read_quoted_key(quoted)?;
                    current = current.get(&key)?;
                    rest = after;
                } else {
                    let (index, after) = bracketed.split_once(']')?;
                    current = current.element(index.parse().ok()?)?;
                    rest = after;
                }
            } else {
                let bare = if at_start {
                    rest
                } else {
                    rest.strip_prefix('.')?
                };
                let end = bare.find(['.', '[']).unwrap_or(bare.len());
                let (key, after) = bare.split_at(end);
                if key.is_empty() {
                    return None;
                }
                current = current.get(key)?;
                rest = after;
            }
            at_start = false;
        }
        Some(current)
    }

    /// The value under `key` when this node is a mapping (the first one, should the key repeat).
    pub fn get(&self, key: &str) -> Option<&Node> {
        match &self.value {
            NodeValue::Mapping(entries) => entries
                .iter()
                .find(|(entry_key, _)| entry_key.scalar_text() == Some(key))
                .map(|(_, value)| value),
            _ => None,
        }
    }

    /// The element at `index` when this node is a sequence.
    pub fn element(&self, index: usize) -> Option<&Node> {
        match &self.value {
            NodeValue::Sequence(elements) => elements.get(index),
            _ => None,
        }
    }

    /// The text of a scalar, quoted or not; None for null and collections.
    pub fn scalar_text(&self) -> Option<&str> {
        match &self.value {
            NodeValue::Scalar { text, .. } => Some(text),
            _ => None,
        }
    }

    /// Says what the node is, for "expected X, found Y" messages.
    pub(super) fn describe(&self) -> String {
        /// Long scalars are cut so one bad value cannot flood the report.
        const SHOWN_CHARACTERS: usize = 60;
        match &self.value {
            NodeValue::Null => "null".to_owned(),
            NodeValue::Sequence(_) => "a sequence".to_owned(),
            NodeValue::Mapping(_) => "a mapping".to_owned(),
            NodeValue::Scalar { text, style_plain } => {
                let shown = if text.chars().count() > SHOWN_CHARACTERS {
                    let cut: String = text.chars().take(SHOWN_CHARACTERS).collect();
                    format!("{cut:?}...")
                } else {
                    format!("{text:?}")
                };
                if *style_plain {
                    shown
                } else {
                    format!("the quoted string {shown}")
                }
            }
        }
    }

    /// The nodes directly below this one, keys included.
    pub(super) fn children(&self) -> Box<dyn Iterator<Item = &Node> + '_> {
        match &self.value {
            NodeValue::Sequence(elements) => Box::new(elements.iter()),
            NodeValue::Mapping(entries) => {
                Box::new(entries.iter().flat_map(|(key, value)| [key, value]))
            }
            NodeValue::Null | NodeValue::Scalar { .. } => Box::new(std::iter::empty()),
        }
    }

    /// How many nodes this subtree holds; bounds the copies that aliases and merges make.
    pub(super) fn count(&self) -> usize {
        1 + self.children().map(Node::count).sum::<usize>()
    }
}

/// The key path of `key` inside the mapping at `parent` (`""` for the top level).
pub fn child_key_path(parent: &str, key: &str) -> String {
    let needs_quotes = key.is_empty()
        || key
            .chars()
            .any(|c| matches!(c, '.' | '[' | ']' | '"' | '\\') || c.is_whitespace());
    if needs_quotes {
        let escaped = key.replace('\\', "\\\\").replace('"', "\\\"");
        format!("{parent}[\"{escaped}\"]")
    } else if parent.is_empty() {
        key.to_owned()
    } else {
        format!("{parent}.{key}")
    }
}

/// The key path of element `index` of the sequence at `parent`.
pub fn element_key_path(parent: &str, index: usize) -> String {
    format!("{parent}[{index}]")
}

/// Reads the rest of a `["..."]` segment, starting after the opening quote: the unescaped key
/// and what follows the closing `"]`.
fn read_quoted_key(text: &str) -> Option<(String, &str)> {
    let mut key = String::new();
    let mut characters = text.char_indices();
    while let Some((position, character)) = characters.next() {
        match character {
            '\\' => key.push(characters.next()?.1),
            '"' => return Some((key, text[position + 1..].strip_prefix(']')?)),
            other => key.push(other),
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    fn scalar(text: &str, line: usize) -> Node {
        Node {
            value: NodeValue::Scalar {
                text: text.to_owned(),
                style_plain: true,
            },
            mark: Mark { line, column: 1 },
        }
    }

    fn mapping(entries: Vec<(&str, Node)>, line: usize) -> Node {
        Node {
            value: NodeValue::Mapping(
                entries
                    .into_iter()
                    .map(|(key, value)| (scalar(key, line), value))
                    .collect(),
            ),
            mark: Mark { line, column: 1 },
        }
    }

    fn sample() -> Node {
        let route = mapping(
            vec![
                ("upstream", scalar("api", 3)),
                ("headers", mapping(vec![("x.id", scalar("7", 4))], 4)),
            ],
            2,
        );
        let routes = Node {
            value: NodeValue::Sequence(vec![scalar("first", 1), route]),
            mark: Mark { line: 1, column: 1 },
        };
        mapping(vec![("routes", routes)], 1)
    }

    #[test]
    fn key_paths_quote_only_when_needed() {
        assert_eq!(child_key_path("", "routes"), "routes");
        assert_eq!(
            child_key_path("routes[1]", "upstream"),
            "routes[1].upstream"
        );
        assert_eq!(child_key_path("h", "x.id"), "h[\"x.id\"]");
        assert_eq!(child_key_path("h", "say \"hi\""), "h[\"say \\\"hi\\\"\"]");
        assert_eq!(child_key_path("", ""), "[\"\"]");
        assert_eq!(element_key_path("routes", 2), "routes[2]");
    }

    #[test]
    fn find_follows_keys_indexes_and_quoted_keys() {
        let root = sample();
        assert_eq!(root.find(""), Some(&root));
        assert_eq!(
            root.find("routes[1].upstream").and_then(Node::scalar_text),
            Some("api")
        );
        assert_eq!(
            root.find("routes[1].headers[\"x.id\"]")
                .map(|node| node.mark.line),
            Some(4)
        );
        assert_eq!(
            root.find(&child_key_path("routes[1].headers", "x.id"))
                .and_then(Node::scalar_text),
            Some("7")
        );
        for absent in [
            "routes[2]",
            "routes[x]",
            "routes.upstream",
            "routes[1]upstream",
            "routes[1].",
            ".routes",
            "routes[1].headers[\"x.id",
            "missing",
        ] {
            assert_eq!(root.find(absent), None, "{absent}");
        }
    }

    #[test]
    fn describe_says_what_was_found() {
        assert_eq!(scalar("abc", 1).describe(), "\"abc\"");
        let quoted = Node {
            value: NodeValue::Scalar {
                text: "42".to_owned(),
                style_plain: false,
            },
            mark: Mark { line: 1, column: 1 },
        };
        assert_eq!(quoted.describe(), "the quoted string \"42\"");
        assert_eq!(sample().describe(), "a mapping");
        assert!(scalar(&"x".repeat(100), 1).describe().ends_with("\"..."));
        assert_eq!(sample().count(), 11);
    }
}
