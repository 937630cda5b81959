//! Turns YAML text into a [`Node`] tree, resolving aliases and merge keys as it goes.

use std::collections::HashMap;
use std::path::Path;

use yaml_rust2::parser::{Event, MarkedEventReceiver, Parser, Tag};
use yaml_rust2::scanner::{Marker, TScalarStyle};

use super::node::{Node, NodeValue};
use super::{ConfigError, Mark, scalar};

/// Deeper nesting than this is refused: no config needs it, and dropping or walking a much
/// deeper tree would recurse far enough to overflow the stack.
const MAX_DEPTH: usize = 128;

/// Aliases copy nodes, so a few lines can describe an exponentially large tree ("billion
/// laughs"); past this many nodes the document is refused.
const MAX_NODES: usize = 1_000_000;

/// The prefix `yaml-rust2` gives the `!!` tag handle.
const CORE_TAG_PREFIX: &str = "tag:yaml.org,2002:";

/// Parses one YAML document. Syntax errors become a ConfigError with the position; multiple
/// documents, and a non-mapping top level, are errors. Anchors/aliases are resolved (aliases
/// expand to a copy of the anchored node). Merge keys `<<` are supported for mappings.
///
/// Only the first problem is reported: after a syntax error the parser cannot tell what the
/// rest of the text means.
pub fn parse_document(file: &Path, text: &str) -> Result<Node, ConfigError> {
    let mut builder = TreeBuilder::new(file);
    let mut parser = Parser::new_from_str(text);
    // Pulling events, rather than handing the builder to `Parser::load`, lets the builder stop
    // the parser at the first problem, before deep nesting can make it recurse.
    loop {
        let (event, marker) = parser.next_token().map_err(|error| {
            error_at(
                file,
                *error.marker(),
                format!("invalid YAML: {}", error.info()),
            )
        })?;
        let finished = event == Event::StreamEnd;
        builder.on_event(event, marker);
        if let Some(error) = builder.error.take() {
            return Err(error);
        }
        if finished {
            break;
        }
    }
    let Some(root) = builder.root else {
        return Err(ConfigError::new(
            file,
            None,
            "",
            "the file holds no YAML document; expected a mapping at the top level",
        ));
    };
    if !matches!(root.value, NodeValue::Mapping(_)) {
        return Err(ConfigError::new(
            file,
            Some(root.mark),
            "",
            format!(
                "expected a mapping at the top level, found {}",
                root.describe()
            ),
        ));
    }
    Ok(root)
}

/// A collection whose end event has not arrived yet.
enum Frame {
    Sequence {
        elements: Vec<Node>,
        mark: Mark,
        anchor: usize,
    },
    Mapping {
        entries: Vec<(Node, Node)>,
        pending_key: Option<Node>,
        mark: Mark,
        anchor: usize,
    },
}

/// Builds the tree from parser events. `on_event` cannot return an error, so the first problem
/// is kept in `error` and every later event is ignored.
struct TreeBuilder<'file> {
    file: &'file Path,
    stack: Vec<Frame>,
    anchors: HashMap<usize, Node>,
    documents: usize,
    nodes: usize,
    root: Option<Node>,
    error: Option<ConfigError>,
}

impl MarkedEventReceiver for TreeBuilder<'_> {
    fn on_event(&mut self, event: Event, marker: Marker) {
        if self.error.is_some() {
            return;
        }
        let mark = to_mark(marker);
        if let Err(error) = self.handle(event, mark) {
            self.error = Some(error);
        }
    }
}

impl<'file> TreeBuilder<'file> {
    fn new(file: &'file Path) -> Self {
        Self {
            file,
            stack: Vec::new(),
            anchors: HashMap::new(),
            documents: 0,
            nodes: 0,
            root: None,
            error: None,
        }
    }

    fn handle(&mut self, event: Event, mark: Mark) -> Result<(), ConfigError> {
        match event {
            Event::Nothing | Event::StreamStart | Event::StreamEnd | Event::DocumentEnd => Ok(()),
            Event::DocumentStart => {
                self.documents += 1;
                if self.documents > 1 {
                    return Err(self.error(
                        mark,
                        "a config file must hold exactly one YAML document, \
                         but a second one starts here",
                    ));
                }
                Ok(())
            }
            Event::Scalar(text, style, anchor, tag) => {
                let forced_string = self.check_tag(tag.as_ref(), "str", mark)?;
                let style_plain = style == TScalarStyle::Plain && !forced_string;
                let implicit_null = style_plain && text.is_empty();
                let value = if style_plain && scalar::is_null(&text) {
                    NodeValue::Null
                } else {
                    NodeValue::Scalar { text, style_plain }
                };
                self.complete(Node { value, mark }, anchor, implicit_null)
            }
            Event::SequenceStart(anchor, tag) => {
                self.check_tag(tag.as_ref(), "seq", mark)?;
                self.open(
                    Frame::Sequence {
                        elements: Vec::new(),
                        mark,
                        anchor,
                    },
                    mark,
                )
            }
            Event::MappingStart(anchor, tag) => {
                self.check_tag(tag.as_ref(), "map", mark)?;
                self.open(
                    Frame::Mapping {
                        entries: Vec::new(),
                        pending_key: None,
                        mark,
                        anchor,
                    },
                    mark,
                )
            }
            Event::SequenceEnd | Event::MappingEnd => self.close(mark),
            Event::Alias(anchor) => {
                let Some(anchored) = self.anchors.get(&anchor) else {
                    return Err(self.error(mark, "alias to an unknown anchor"));
                };
                // A deep anchor copied deep down could pass the depth limit.
                if self.stack.len() + depth(anchored) > MAX_DEPTH {
                    return Err(self.error(mark, "this alias nests the document too deeply"));
                }
                // Measured before copying, so that an oversized copy is never made.
                let size = anchored.count();
                if self.nodes.saturating_add(size) > MAX_NODES {
                    return Err(self.too_many_nodes(mark));
                }
                let copy = anchored.clone();
                self.add_nodes(size, mark)?;
                self.complete(copy, 0, false)
            }
        }
    }

    /// Accepts no tag, or the core tag named `allowed` (`!!str` is the one with an effect: the
    /// scalar stays a string). Any other tag is refused, since it would be silently ignored.
    fn check_tag(&self, tag: Option<&Tag>, allowed: &str, mark: Mark) -> Result<bool, ConfigError> {
        let Some(tag) = tag else {
            return Ok(false);
        };
        if tag.handle == CORE_TAG_PREFIX && tag.suffix == allowed {
            return Ok(true);
        }
        let shown = if tag.handle == CORE_TAG_PREFIX {
            format!("!!{}", tag.suffix)
        } else {
            format!("{}{}", tag.handle, tag.suffix)
        };
        Err(self.error(
            mark,
            format!("unsupported tag \"{shown}\" (only !!{allowed} is allowed here)"),
        ))
    }

    fn open(&mut self, frame: Frame, mark: Mark) -> Result<(), ConfigError> {
        if self.stack.len() >= MAX_DEPTH {
            return Err(self.error(mark, format!("nesting deeper than {MAX_DEPTH} levels")));
        }
        self.stack.push(frame);
        Ok(())
    }

    fn close(&mut self, end_mark: Mark) -> Result<(), ConfigError> {
        let Some(frame) = self.stack.pop() else {
            return Err(self.error(end_mark, "collection ends without having started"));
        };
        match frame {
            Frame::Sequence {
                elements,
                mark,
                anchor,
            } => self.complete(
                Node {
                    value: NodeValue::Sequence(elements),
                    mark,
                },
                anchor,
                false,
            ),
            Frame::Mapping {
                entries,
                mark,
                anchor,
                ..
            } => {
                // The parser marks a block mapping one column after its first key, while a flow
                // mapping is marked at its `{`; the earlier of the two is where it starts.
                let mark = entries
                    .first()
                    .map_or(mark, |(first_key, _)| mark.min(first_key.mark));
                let entries = self.apply_merge_keys(entries)?;
                self.complete(
                    Node {
                        value: NodeValue::Mapping(entries),
                        mark,
                    },
                    anchor,
                    false,
                )
            }
        }
    }

    /// Replaces `<<` entries by the entries of the mappings they name. Keys written in the
    /// mapping itself win over merged ones, and an earlier merged mapping wins over a later one.
    fn apply_merge_keys(
        &mut self,
        entries: Vec<(Node, Node)>,
    ) -> Result<Vec<(Node, Node)>, ConfigError> {
        let (merges, mut result): (Vec<_>, Vec<_>) =
            entries.into_iter().partition(|(key, _)| is_merge_key(key));
        for (merge_key, source) in merges {
            // Errors point at the `<<` key: the value may be a copy whose marks are elsewhere.
            let not_mappings = |found: &str| {
                self.error(
                    merge_key.mark,
                    format!(
                        "a merge key `<<` needs a mapping or a list of mappings, found {found}"
                    ),
                )
            };
            let sources = match source.value {
                NodeValue::Mapping(source_entries) => vec![source_entries],
                NodeValue::Sequence(elements) => {
                    let mut mappings = Vec::with_capacity(elements.len());
                    for element in elements {
                        match element.value {
                            NodeValue::Mapping(source_entries) => mappings.push(source_entries),
                            _ => {
                                let found = format!("a list holding {}", element.describe());
                                return Err(not_mappings(&found));
                            }
                        }
                    }
                    mappings
                }
                _ => return Err(not_mappings(&source.describe())),
            };
            for (key, value) in sources.into_iter().flatten() {
                // Entries are moved out of the source, not copied, so the node count stays.
                if !result.iter().any(|(existing, _)| same_key(existing, &key)) {
                    result.push((key, value));
                }
            }
        }
        Ok(result)
    }

    /// Places a finished node in its parent, or makes it the document's root.
    fn complete(
        &mut self,
        mut node: Node,
        anchor: usize,
        implicit_null: bool,
    ) -> Result<(), ConfigError> {
        self.add_nodes(1, node.mark)?;
        if anchor > 0 {
            self.anchors.insert(anchor, node.clone());
        }
        match self.stack.last_mut() {
            None => self.root = Some(node),
            Some(Frame::Sequence { elements, .. }) => elements.push(node),
            Some(Frame::Mapping {
                entries,
                pending_key,
                ..
            }) => match pending_key.take() {
                None => *pending_key = Some(node),
                Some(key) => {
                    // `key:` with nothing after it is marked where the next token starts, often
                    // on a later line; the key is where a reader looks for it.
                    if implicit_null {
                        node.mark = key.mark;
                    }
                    entries.push((key, node));
                }
            },
        }
        Ok(())
    }

    /// Counts nodes towards [`MAX_NODES`]: each node once as it completes, plus the whole of
    /// every copy an alias makes.
    fn add_nodes(&mut self, added: usize, mark: Mark) -> Result<(), ConfigError> {
        self.nodes = self.nodes.saturating_add(added);
        if self.nodes > MAX_NODES {
            return Err(self.too_many_nodes(mark));
        }
        Ok(())
    }

    fn too_many_nodes(&self, mark: Mark) -> ConfigError {
        self.error(
            mark,
            format!("the document expands to more than {MAX_NODES} nodes through aliases"),
        )
    }

    fn error(&self, mark: Mark, message: impl Into<String>) -> ConfigError {
        ConfigError::new(self.file, Some(mark), "", message)
    }
}

fn to_mark(marker: Marker) -> Mark {
    // `yaml-rust2` counts lines from 1 but columns from 0.
    Mark {
        line: marker.line(),
        column: marker.col() + 1,
    }
}

fn error_at(file: &Path, marker: Marker, message: String) -> ConfigError {
    ConfigError::new(file, Some(to_mark(marker)), "", message)
}

fn is_merge_key(key: &Node) -> bool {
    matches!(&key.value, NodeValue::Scalar { text, style_plain: true } if text == "<<")
}

/// Whether two mapping keys name the same entry: equal text (quoting does not matter), or both
/// null. Keys that are collections never match, which at worst keeps a merged duplicate.
fn same_key(left: &Node, right: &Node) -> bool {
    match (&left.value, &right.value) {
        (NodeValue::Null, NodeValue::Null) => true,
        (NodeValue::Scalar { text: left, .. }, NodeValue::Scalar { text: right, .. }) => {
            left == right
        }
        _ => false,
    }
}

fn depth(node: &Node) -> usize {
    1 + node.children().map(depth).max().unwrap_or(0)
}
