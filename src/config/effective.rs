//! The config as the gateway runs it (the YAML with its overlay applied) in JSON, with the
//! revisions the admin API hands out as `ETag`s and what the overlay changes.
//!
//! A revision is a digest of an entry's JSON with keys in sorted order, so it depends on
//! what the entry says and on nothing else: the same entry has the same revision after a
//! restart, and a change anywhere in it (made through the admin API or in the YAML) gives a
//! new one.

use std::path::PathBuf;

use serde_json::Value;

use super::overlay::{Overlay, ResourceKind};
use super::yaml::{Node, NodeValue};
use crate::policy::credentials::sha256;

/// What the overlay does to one entry.
#[derive(Debug, Clone, PartialEq)]
pub struct OverlayChange {
    pub kind: ResourceKind,
    pub id: String,
    /// The YAML's entry; `None` when the overlay adds the entry.
    pub before: Option<Value>,
    /// The overlay's entry; `None` when the overlay deletes it.
    pub after: Option<Value>,
}

impl OverlayChange {
    pub fn label(&self) -> &'static str {
        match (&self.before, &self.after) {
            (None, _) => "added",
            (Some(_), Some(_)) => "replaced",
            (Some(_), None) => "deleted",
        }
    }
}

#[derive(Debug, Clone)]
pub struct EffectiveConfig {
    /// The whole merged config.
    pub document: Value,
    /// The whole config's revision.
    pub revision: String,
    /// Where the overlay is (whether or not it exists).
    pub overlay_path: PathBuf,
    /// The overlay as loaded (empty when there is no file).
    pub overlay: Overlay,
    /// Entries the overlay adds, replaces with something else, or deletes from the YAML.
    pub changes: Vec<OverlayChange>,
    /// The names of the YAML's own entries, section by section: deleting one of them takes
    /// a `null` in the overlay, deleting one the overlay added does not.
    yaml_names: [Vec<String>; 3],
}

impl EffectiveConfig {
    /// `yaml` is the YAML's own tree, `merged` the same with `overlay` applied.
    pub fn build(yaml: &Node, merged: &Node, overlay: Overlay, overlay_path: PathBuf) -> Self {
        let document = merged.to_json();
        let mut changes = Vec::new();
        for kind in ResourceKind::ALL {
            for entry in overlay.entries(kind) {
                let before = yaml_entry(yaml, kind, &entry.id).map(Node::to_json);
                let after = entry.value.as_ref().map(Node::to_json);
                if before != after {
                    changes.push(OverlayChange {
                        kind,
                        id: entry.id.clone(),
                        before,
                        after,
                    });
                }
            }
        }
        let yaml_names = ResourceKind::ALL.map(|kind| match yaml.get(kind.section()) {
            Some(Node {
                value: NodeValue::Sequence(items),
                ..
            }) => items
                .iter()
                .filter_map(|item| kind.id_of(item).map(str::to_owned))
                .collect(),
            _ => Vec::new(),
        });
        EffectiveConfig {
            revision: revision_of(&document),
            yaml_names,
            document,
            overlay_path,
            overlay,
            changes,
        }
    }

    /// Every entry of a list section.
    pub fn resources(&self, kind: ResourceKind) -> &[Value] {
        self.document
            .get(kind.section())
            .and_then(Value::as_array)
            .map_or(&[], Vec::as_slice)
    }

    /// The entry named `id` (the first, should the name repeat).
    pub fn resource(&self, kind: ResourceKind, id: &str) -> Option<&Value> {
        self.resources(kind)
            .iter()
            .find(|entry| kind.id_of_json(entry).as_deref() == Some(id))
    }

    pub fn resource_revision(&self, kind: ResourceKind, id: &str) -> Option<String> {
        self.resource(kind, id).map(revision_of)
    }

    /// Whether the YAML itself (not the overlay) has an entry named `id`.
    pub fn in_yaml(&self, kind: ResourceKind, id: &str) -> bool {
        self.yaml_names[kind as usize].iter().any(|name| name == id)
    }
}

/// A digest of `value`'s JSON text (object keys sorted): 32 hex digits.
pub fn revision_of(value: &Value) -> String {
    let digest = sha256(value.to_string().as_bytes());
    digest[..16]
        .iter()
        .map(|byte| format!("{byte:02x}"))
        .collect()
}

fn yaml_entry<'a>(root: &'a Node, kind: ResourceKind, id: &str) -> Option<&'a Node> {
    match &root.get(kind.section())?.value {
        NodeValue::Sequence(items) => items.iter().find(|item| kind.id_of(item) == Some(id)),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    use serde_json::json;

    use super::*;
    use crate::config::yaml::{Mark, parse_document};

    fn effective(yaml_text: &str, overlay: Overlay) -> EffectiveConfig {
        let yaml = parse_document(Path::new("loom.yaml"), yaml_text).unwrap();
        let mut merged = yaml.clone();
        overlay.apply(&mut merged);
        EffectiveConfig::build(&yaml, &merged, overlay, "loom.overlay.json".into())
    }

    #[test]
    fn changes_say_what_the_overlay_adds_replaces_and_deletes() {
        let yaml =
            "routes:\n  - {id: a, path: /a, upstream: u}\n  - {id: b, path: /b, upstream: u}\n";
        let node = |value: Value| Node::from_json(&value, Mark { line: 1, column: 1 });
        let mut overlay = Overlay::default();
        overlay.put(
            ResourceKind::Route,
            "a",
            node(json!({"id": "a", "path": "/a2", "upstream": "u"})),
        );
        overlay.delete(ResourceKind::Route, "b", true);
        overlay.put(
            ResourceKind::Route,
            "c",
            node(json!({"id": "c", "path": "/c", "upstream": "u"})),
        );
        // Equal to the YAML's entry: no change to report.
        overlay.put(
            ResourceKind::Upstream,
            "same",
            node(json!({"name": "same", "endpoints": ["x:1"]})),
        );
        let config = effective(
            &format!("{yaml}upstreams:\n  - {{name: same, endpoints: [\"x:1\"]}}\n"),
            overlay,
        );
        let labels: Vec<(&str, &str)> = config
            .changes
            .iter()
            .map(|change| (change.id.as_str(), change.label()))
            .collect();
        assert_eq!(
            labels,
            [("a", "replaced"), ("b", "deleted"), ("c", "added")]
        );
        assert_eq!(
            config.changes[0].before,
            Some(json!({"id": "a", "path": "/a", "upstream": "u"}))
        );
        assert!(config.in_yaml(ResourceKind::Route, "a"));
        assert!(config.in_yaml(ResourceKind::Route, "b"));
        assert!(!config.in_yaml(ResourceKind::Route, "c"));
        assert!(config.in_yaml(ResourceKind::Upstream, "same"));
        assert_eq!(
            config.resource(ResourceKind::Route, "c"),
            Some(&json!({"id": "c", "path": "/c", "upstream": "u"}))
        );
        assert!(config.resource(ResourceKind::Route, "b").is_none());
    }

    #[test]
    fn revisions_follow_content_not_spelling() {
        let flow = effective(
            "routes: [{id: a, path: /a, upstream: u}]\n",
            Overlay::default(),
        );
        let block = effective(
            "# a comment\nroutes:\n  - upstream: u\n    id: a\n    path: \"/a\"\n",
            Overlay::default(),
        );
        assert_eq!(
            flow.resource_revision(ResourceKind::Route, "a"),
            block.resource_revision(ResourceKind::Route, "a")
        );
        let changed = effective(
            "routes: [{id: a, path: /b, upstream: u}]\n",
            Overlay::default(),
        );
        assert_ne!(
            flow.resource_revision(ResourceKind::Route, "a"),
            changed.resource_revision(ResourceKind::Route, "a")
        );
        assert_ne!(flow.revision, changed.revision);
        assert_eq!(flow.revision.len(), 32);
    }
}
