//! The overlay: changes made through the admin API, kept next to the YAML config and applied
//! on top of it wherever the config is loaded (start, reload, `loom -t`).
//!
//! The YAML file is never rewritten, so its comments and layout survive. `conf/loom.yaml`'s
//! overlay is `conf/loom.overlay.json` ([`overlay_path`]):
//!
//! ```json
//! {
//!   "routes": {
//!     "api": {"id": "api", "path": "/api/*", "upstream": "backend"},
//!     "old": null
//!   },
//!   "upstreams": {},
//!   "plugins": {}
//! }
//! ```
//!
//! Each entry stands for one whole list entry of `routes`, `upstreams` or `plugins`, named by
//! its `id` (routes) or `name`: an object replaces the YAML entry of that name where it
//! stands, or is added after the YAML's entries (in overlay order) when there is none; `null`
//! deletes it. The overlay is JSON, which is YAML too: it is parsed by the same parser, so the
//! nodes spliced into the YAML's tree keep their line and column in the overlay, and errors in
//! them are reported against the overlay file with their JSON path (`routes.api.upstream`)
//! after [`remap_errors`].

use std::path::{Path, PathBuf};

use serde_json::Value;

use super::yaml::{self, ConfigError, Mark, Node, NodeValue, child_key_path};

/// The list sections whose entries the overlay replaces, adds and deletes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ResourceKind {
    Route,
    Upstream,
    Plugin,
}

impl ResourceKind {
    pub const ALL: [ResourceKind; 3] = [
        ResourceKind::Route,
        ResourceKind::Upstream,
        ResourceKind::Plugin,
    ];

    /// The top-level key of the list (and of the admin API's path).
    pub fn section(self) -> &'static str {
        match self {
            ResourceKind::Route => "routes",
            ResourceKind::Upstream => "upstreams",
            ResourceKind::Plugin => "plugins",
        }
    }

    /// The key that names an entry.
    pub fn id_key(self) -> &'static str {
        match self {
            ResourceKind::Route => "id",
            ResourceKind::Upstream | ResourceKind::Plugin => "name",
        }
    }

    /// One entry, in messages: "route", "upstream", "plugin".
    pub fn singular(self) -> &'static str {
        match self {
            ResourceKind::Route => "route",
            ResourceKind::Upstream => "upstream",
            ResourceKind::Plugin => "plugin",
        }
    }

    pub fn from_section(section: &str) -> Option<ResourceKind> {
        ResourceKind::ALL
            .into_iter()
            .find(|kind| kind.section() == section)
    }

    /// The name of `entry` (a list entry node), if it has one.
    pub fn id_of(self, entry: &Node) -> Option<&str> {
        entry.get(self.id_key()).and_then(Node::scalar_text)
    }

    /// The name of `entry` (a list entry as JSON), if it has one.
    /// The entry's id or name as text; a YAML `id: 1` arrives as a JSON number and is the
    /// same id as `"1"`.
    pub fn id_of_json(self, entry: &Value) -> Option<String> {
        match entry.get(self.id_key())? {
            Value::String(text) => Some(text.clone()),
            Value::Number(number) => Some(number.to_string()),
            Value::Bool(flag) => Some(flag.to_string()),
            _ => None,
        }
    }
}

/// `conf/loom.yaml` → `conf/loom.overlay.json`.
pub fn overlay_path(config_path: &Path) -> PathBuf {
    let stem = config_path
        .file_stem()
        .map_or_else(|| "loom".into(), |stem| stem.to_string_lossy());
    config_path.with_file_name(format!("{stem}.overlay.json"))
}

/// One overlay entry.
#[derive(Debug, Clone, PartialEq)]
pub struct OverlayEntry {
    pub id: String,
    /// The whole list entry; `None` deletes the entry of that name.
    pub value: Option<Node>,
}

/// The overlay's entries, section by section, in file order.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Overlay {
    sections: [Vec<OverlayEntry>; 3],
}

/// Where a list entry of the merged config came from: `merged` (`routes[3]`) is the
/// overlay's `overlay` (`routes.api`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Provenance {
    pub merged: String,
    pub overlay: String,
}

impl Overlay {
    /// Reads an overlay file's text. It must be JSON: an object with `routes`, `upstreams` and
    /// `plugins` objects (any of them may be left out) that map names to entries or `null`.
    /// Blank text is an empty overlay.
    pub fn parse(file: &Path, text: &str) -> Result<Overlay, Vec<ConfigError>> {
        if text.trim().is_empty() {
            return Ok(Overlay::default());
        }
        // The YAML parser would take YAML too; the overlay is JSON so that tools and people
        // editing it see one format.
        if let Err(error) = serde_json::from_str::<Value>(text) {
            let mark = Mark {
                line: error.line(),
                column: error.column(),
            };
            return Err(vec![ConfigError::new(
                file,
                Some(mark),
                "",
                format!("invalid JSON: {error}"),
            )]);
        }
        let root = yaml::parse_document(file, text).map_err(|error| vec![error])?;
        let mut overlay = Overlay::default();
        let mut errors = Vec::new();
        let NodeValue::Mapping(sections) = &root.value else {
            return Err(vec![ConfigError {
                file: file.to_path_buf(),
                mark: Some(root.mark),
                key_path: String::new(),
                message: "the overlay must be a JSON object of sections (routes, upstreams, \
                          plugins)"
                    .to_string(),
            }]);
        };
        for (key, value) in sections {
            let name = key.scalar_text().unwrap_or_default();
            let Some(kind) = ResourceKind::from_section(name) else {
                errors.push(ConfigError::new(
                    file,
                    Some(key.mark),
                    child_key_path("", name),
                    "unknown key (expected one of: routes, upstreams, plugins)",
                ));
                continue;
            };
            let entries = match &value.value {
                NodeValue::Null => continue,
                NodeValue::Mapping(entries) => entries,
                _ => {
                    errors.push(ConfigError::new(
                        file,
                        Some(value.mark),
                        name,
                        "expected an object of entries by name",
                    ));
                    continue;
                }
            };
            for (id_node, entry) in entries {
                let id = id_node.scalar_text().unwrap_or_default().to_owned();
                let key_path = child_key_path(name, &id);
                if let Err(message) = check_entry(kind, &id, entry) {
                    errors.push(ConfigError::new(file, Some(entry.mark), key_path, message));
                    continue;
                }
                if overlay.entry(kind, &id).is_some() {
                    errors.push(ConfigError::new(
                        file,
                        Some(id_node.mark),
                        key_path,
                        format!("{} \"{id}\" is listed twice", kind.singular()),
                    ));
                    continue;
                }
                let value = match entry.value {
                    NodeValue::Null => None,
                    _ => Some(entry.clone()),
                };
                overlay.sections[kind as usize].push(OverlayEntry { id, value });
            }
        }
        if errors.is_empty() {
            Ok(overlay)
        } else {
            Err(errors)
        }
    }

    /// The file text: pretty JSON, sections and entries in order, empty sections left out.
    pub fn render(&self) -> String {
        let mut text = String::from("{");
        let mut first_section = true;
        for kind in ResourceKind::ALL {
            let entries = self.entries(kind);
            if entries.is_empty() {
                continue;
            }
            if !first_section {
                text.push(',');
            }
            first_section = false;
            text.push_str(&format!("\n  {}: {{", json_string(kind.section())));
            for (index, entry) in entries.iter().enumerate() {
                if index > 0 {
                    text.push(',');
                }
                let value = entry.value.as_ref().map_or(Value::Null, Node::to_json);
                let pretty = serde_json::to_string_pretty(&value).unwrap_or_default();
                text.push_str(&format!(
                    "\n    {}: {}",
                    json_string(&entry.id),
                    pretty.replace('\n', "\n    ")
                ));
            }
            text.push_str("\n  }");
        }
        text.push_str(if first_section { "}\n" } else { "\n}\n" });
        text
    }

    pub fn is_empty(&self) -> bool {
        self.sections.iter().all(Vec::is_empty)
    }

    pub fn entries(&self, kind: ResourceKind) -> &[OverlayEntry] {
        &self.sections[kind as usize]
    }

    pub fn entry(&self, kind: ResourceKind, id: &str) -> Option<&OverlayEntry> {
        self.entries(kind).iter().find(|entry| entry.id == id)
    }

    /// Sets the entry named `id` to `value` (keeping its place when the overlay has it).
    pub fn put(&mut self, kind: ResourceKind, id: &str, value: Node) {
        self.set(kind, id, Some(value));
    }

    /// Deletes the entry named `id`: a `null` when the YAML has it (`in_yaml`), otherwise
    /// the overlay simply forgets the entry it had added.
    pub fn delete(&mut self, kind: ResourceKind, id: &str, in_yaml: bool) {
        if in_yaml {
            self.set(kind, id, None);
        } else {
            self.sections[kind as usize].retain(|entry| entry.id != id);
        }
    }

    fn set(&mut self, kind: ResourceKind, id: &str, value: Option<Node>) {
        let entries = &mut self.sections[kind as usize];
        match entries.iter_mut().find(|entry| entry.id == id) {
            Some(entry) => entry.value = value,
            None => entries.push(OverlayEntry {
                id: id.to_owned(),
                value,
            }),
        }
    }

    /// Splices the overlay into `root`, the YAML's tree: deletions first, then each entry
    /// replaces the YAML entry of its name in place or is appended. Sections the YAML does not
    /// have are created; a section that is not a list is left alone (loading reports it).
    /// Returns where each spliced entry landed.
    pub fn apply(&self, root: &mut Node) -> Vec<Provenance> {
        let mut provenance = Vec::new();
        for kind in ResourceKind::ALL {
            let entries = self.entries(kind);
            if entries.is_empty() {
                continue;
            }
            let Some(items) = section_items(root, kind.section()) else {
                continue;
            };
            for entry in entries.iter().filter(|entry| entry.value.is_none()) {
                items.retain(|item| kind.id_of(item) != Some(entry.id.as_str()));
            }
            for entry in entries {
                let Some(value) = &entry.value else {
                    continue;
                };
                let position = match items
                    .iter()
                    .position(|item| kind.id_of(item) == Some(entry.id.as_str()))
                {
                    Some(position) => {
                        items[position] = value.clone();
                        position
                    }
                    None => {
                        items.push(value.clone());
                        items.len() - 1
                    }
                };
                provenance.push(Provenance {
                    merged: format!("{}[{position}]", kind.section()),
                    overlay: child_key_path(kind.section(), &entry.id),
                });
            }
        }
        provenance
    }
}

/// Points errors found in spliced entries at the overlay file and their JSON path there.
pub fn remap_errors(errors: &mut [ConfigError], overlay_file: &Path, provenance: &[Provenance]) {
    for error in errors {
        for origin in provenance {
            if let Some(rest) = path_within(&error.key_path, &origin.merged) {
                error.key_path = format!("{}{rest}", origin.overlay);
                error.file = overlay_file.to_path_buf();
                break;
            }
        }
    }
}

/// The part of `key_path` after `prefix` when `key_path` is `prefix` or lies below it
/// (`routes[1]` is not a prefix of `routes[10]`).
pub fn path_within<'a>(key_path: &'a str, prefix: &str) -> Option<&'a str> {
    let rest = key_path.strip_prefix(prefix)?;
    (rest.is_empty() || rest.starts_with(['.', '['])).then_some(rest)
}

/// An entry must be an object that names itself as it is listed, or `null`.
fn check_entry(kind: ResourceKind, id: &str, entry: &Node) -> Result<(), String> {
    match &entry.value {
        NodeValue::Null => Ok(()),
        NodeValue::Mapping(_) => match kind.id_of(entry) {
            Some(named) if named == id => Ok(()),
            Some(named) => Err(format!(
                "{} is \"{named}\" but the entry is listed as \"{id}\"; they must be the same",
                kind.id_key()
            )),
            None => Err(format!(
                "the entry needs {}: \"{id}\", as it is listed",
                kind.id_key()
            )),
        },
        _ => Err(format!(
            "expected a whole {} entry (an object) or null to delete it",
            kind.singular()
        )),
    }
}

/// The elements of the list at `section` in `root`, creating it when absent or null.
fn section_items<'a>(root: &'a mut Node, section: &str) -> Option<&'a mut Vec<Node>> {
    let mark = root.mark;
    let NodeValue::Mapping(entries) = &mut root.value else {
        return None;
    };
    let position = match entries
        .iter()
        .position(|(key, _)| key.scalar_text() == Some(section))
    {
        Some(position) => position,
        None => {
            let key = Node {
                value: NodeValue::Scalar {
                    text: section.to_owned(),
                    style_plain: true,
                },
                mark,
            };
            entries.push((
                key,
                Node {
                    value: NodeValue::Null,
                    mark,
                },
            ));
            entries.len() - 1
        }
    };
    let list = &mut entries[position].1;
    if matches!(list.value, NodeValue::Null) {
        list.value = NodeValue::Sequence(Vec::new());
    }
    match &mut list.value {
        NodeValue::Sequence(items) => Some(items),
        _ => None,
    }
}

fn json_string(text: &str) -> String {
    Value::String(text.to_owned()).to_string()
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    const OVERLAY: &str = "conf/loom.overlay.json";

    fn yaml(text: &str) -> Node {
        yaml::parse_document(Path::new("conf/loom.yaml"), text).unwrap()
    }

    fn node(value: Value) -> Node {
        Node::from_json(&value, Mark { line: 1, column: 1 })
    }

    fn ids(root: &Node, kind: ResourceKind) -> Vec<String> {
        match root.get(kind.section()).map(|list| &list.value) {
            Some(NodeValue::Sequence(items)) => items
                .iter()
                .map(|item| kind.id_of(item).unwrap_or("?").to_owned())
                .collect(),
            _ => Vec::new(),
        }
    }

    #[test]
    fn the_overlay_file_sits_next_to_the_config() {
        assert_eq!(
            overlay_path(Path::new("conf/loom.yaml")),
            Path::new("conf/loom.overlay.json")
        );
        assert_eq!(
            overlay_path(Path::new("/etc/loom/gw.yml")),
            Path::new("/etc/loom/gw.overlay.json")
        );
        assert_eq!(
            overlay_path(Path::new("loom")),
            Path::new("loom.overlay.json")
        );
    }

    #[test]
    fn entries_replace_in_place_append_and_delete_by_name() {
        let mut root = yaml(
            "routes:\n  - {id: a, path: /a, upstream: u}\n  - {id: b, path: /b, upstream: u}\n  \
             - {id: c, path: /c, upstream: u}\nupstreams:\n  - {name: u, endpoints: [\"x:1\"]}\n",
        );
        let mut overlay = Overlay::default();
        overlay.put(
            ResourceKind::Route,
            "b",
            node(json!({"id": "b", "path": "/bee", "upstream": "u"})),
        );
        overlay.put(
            ResourceKind::Route,
            "z",
            node(json!({"id": "z", "path": "/z", "upstream": "v"})),
        );
        overlay.delete(ResourceKind::Route, "a", true);
        overlay.put(
            ResourceKind::Upstream,
            "v",
            node(json!({"name": "v", "endpoints": ["y:2"]})),
        );
        let provenance = overlay.apply(&mut root);
        assert_eq!(ids(&root, ResourceKind::Route), ["b", "c", "z"]);
        assert_eq!(ids(&root, ResourceKind::Upstream), ["u", "v"]);
        assert_eq!(
            root.find("routes[0].path").and_then(Node::scalar_text),
            Some("/bee")
        );
        assert_eq!(
            provenance,
            [
                Provenance {
                    merged: "routes[0]".into(),
                    overlay: "routes.b".into()
                },
                Provenance {
                    merged: "routes[2]".into(),
                    overlay: "routes.z".into()
                },
                Provenance {
                    merged: "upstreams[1]".into(),
                    overlay: "upstreams.v".into()
                },
            ]
        );
        // Sections the YAML lacks are created.
        let mut bare = yaml("listeners: []\n");
        let added = overlay.apply(&mut bare);
        assert_eq!(ids(&bare, ResourceKind::Route), ["b", "z"]);
        assert_eq!(added[0].merged, "routes[0]");
    }

    #[test]
    fn deleting_an_added_entry_forgets_it_and_a_yaml_entry_leaves_a_null() {
        let mut overlay = Overlay::default();
        overlay.put(
            ResourceKind::Plugin,
            "p",
            node(json!({"name": "p", "type": "cors"})),
        );
        overlay.delete(ResourceKind::Plugin, "p", false);
        assert!(overlay.is_empty());
        overlay.delete(ResourceKind::Plugin, "q", true);
        assert_eq!(
            overlay.render(),
            "{\n  \"plugins\": {\n    \"q\": null\n  }\n}\n"
        );
    }

    #[test]
    fn rendered_text_parses_back_with_positions_in_the_file() {
        let mut overlay = Overlay::default();
        overlay.put(
            ResourceKind::Route,
            "a.b",
            node(json!({"id": "a.b", "path": "/x", "upstream": "u", "priority": 2})),
        );
        overlay.delete(ResourceKind::Upstream, "old", true);
        let text = overlay.render();
        let parsed = Overlay::parse(Path::new(OVERLAY), &text).unwrap();
        assert_eq!(parsed.render(), text);
        let entry = parsed.entry(ResourceKind::Route, "a.b").unwrap();
        let value = entry.value.as_ref().unwrap();
        assert_eq!(
            value.to_json(),
            json!({"id": "a.b", "path": "/x", "upstream": "u", "priority": 2})
        );
        // The nodes carry their place in the overlay file.
        assert_eq!(value.get("upstream").map(|node| node.mark.line), Some(7));
        assert_eq!(
            Overlay::parse(Path::new(OVERLAY), "  \n").unwrap(),
            Overlay::default()
        );
    }

    #[test]
    fn malformed_overlays_are_refused_with_their_json_path() {
        let messages = |text: &str| -> Vec<String> {
            match Overlay::parse(Path::new(OVERLAY), text) {
                Ok(_) => Vec::new(),
                Err(errors) => errors.iter().map(ToString::to_string).collect(),
            }
        };
        assert_eq!(
            messages("{\"routes\": {\"a\": {\"id\": \"b\"}}, \"listeners\": {}}"),
            [
                "conf/loom.overlay.json:1:18: routes.a: id is \"b\" but the entry is listed as \
                 \"a\"; they must be the same",
                "conf/loom.overlay.json:1:32: listeners: unknown key (expected one of: routes, \
                 upstreams, plugins)",
            ]
        );
        assert_eq!(
            messages("{\"upstreams\": {\"u\": [1]}, \"plugins\": 3}"),
            [
                "conf/loom.overlay.json:1:21: upstreams.u: expected a whole upstream entry (an \
                 object) or null to delete it",
                "conf/loom.overlay.json:1:38: plugins: expected an object of entries by name",
            ]
        );
        assert_eq!(
            messages("routes: {}"),
            ["conf/loom.overlay.json:1:1: invalid JSON: expected value at line 1 column 1"]
        );
        assert_eq!(
            messages("{\"routes\": {\"a\": {\"path\": \"/\"}}}"),
            ["conf/loom.overlay.json:1:18: routes.a: the entry needs id: \"a\", as it is listed"]
        );
    }

    #[test]
    fn errors_in_spliced_entries_name_the_overlay_and_its_path() {
        let provenance = [Provenance {
            merged: "routes[1]".into(),
            overlay: "routes.api".into(),
        }];
        let error =
            |key_path: &str| ConfigError::new(Path::new("conf/loom.yaml"), None, key_path, "x");
        let mut errors = vec![
            error("routes[1].upstream"),
            error("routes[10].upstream"),
            error("routes[1]"),
            error("routes[1].headers[\"x.y\"]"),
        ];
        remap_errors(&mut errors, Path::new(OVERLAY), &provenance);
        let shown: Vec<String> = errors.iter().map(ToString::to_string).collect();
        assert_eq!(
            shown,
            [
                "conf/loom.overlay.json: routes.api.upstream: x",
                "conf/loom.yaml: routes[10].upstream: x",
                "conf/loom.overlay.json: routes.api: x",
                "conf/loom.overlay.json: routes.api.headers[\"x.y\"]: x",
            ]
        );
    }
}

/// The overlay through the whole load: spliced, validated, and its errors placed.
#[cfg(test)]
mod load_tests {
    use std::path::PathBuf;

    use crate::config::{ConfigSources, load_sources};

    const YAML: &str = "listeners:\n  - {name: http, address: \"127.0.0.1:18080\"}\nroutes:\n  \
                        - {id: web, path: /web/*, upstream: web}\nupstreams:\n  - name: web\n    \
                        endpoints: [\"127.0.0.1:3001\"]\n";

    fn sources(overlay: Option<&str>) -> ConfigSources {
        ConfigSources {
            path: PathBuf::from("conf/loom.yaml"),
            yaml: YAML.to_string(),
            overlay_path: PathBuf::from("conf/loom.overlay.json"),
            overlay: overlay.map(str::to_string),
        }
    }

    #[test]
    fn the_overlay_applies_on_top_of_the_yaml_and_changes_the_hash() {
        let overlay = r#"{
  "routes": {
    "api": {"id": "api", "path": "/api/*", "upstream": "api"},
    "web": null
  },
  "upstreams": {
    "api": {"name": "api", "endpoints": [{"address": "127.0.0.1:3002", "drain": true}]}
  }
}"#;
        let plain = load_sources(&sources(None)).unwrap_or_else(|errors| panic!("{errors:?}"));
        let loaded =
            load_sources(&sources(Some(overlay))).unwrap_or_else(|errors| panic!("{errors:?}"));
        let routes: Vec<&str> = loaded
            .validated
            .routes
            .iter()
            .map(|route| route.config.id.as_str())
            .collect();
        assert_eq!(routes, ["api"]);
        let endpoint = &loaded.validated.upstreams[1].endpoints[0];
        assert!(endpoint.drain);
        assert_eq!(plain.hash, crate::config::content_hash(YAML.as_bytes()));
        assert_ne!(loaded.hash, plain.hash);
        assert_eq!(loaded.effective.changes.len(), 3);
    }

    #[test]
    fn errors_in_overlay_entries_name_the_overlay_file_and_json_path() {
        let overlay = r#"{
  "routes": {
    "api": {"id": "api", "path": "/api/*", "upstream": "missing", "colour": "red"}
  },
  "upstreams": {
    "web": {"name": "web", "endpoints": [{"address": "127.0.0.1:3001", "weight": 0}]}
  }
}"#;
        let errors: Vec<String> = match load_sources(&sources(Some(overlay))) {
            Ok(_) => panic!("accepted"),
            Err(errors) => errors.iter().map(ToString::to_string).collect(),
        };
        assert_eq!(
            errors,
            [
                "conf/loom.overlay.json:3:67: routes.api.colour: unknown key \"colour\" \
                 (expected one of: id, host, path, methods, headers, query_params, \
                 client_certificate, upstream, plugins, strip_prefix, timeout, timeouts, priority, preserve_host, retry, \
                 metadata, disable, canary, shadow, cache, coalesce)",
                "conf/loom.overlay.json:6:82: upstreams.web.endpoints[0].weight: weight must \
                 be at least 1",
                "conf/loom.overlay.json:3:56: routes.api.upstream: unknown upstream \"missing\"",
            ]
        );
    }
}
