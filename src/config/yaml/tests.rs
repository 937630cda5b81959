//! Loads documents against a small gateway-like schema and checks every reported error's
//! position, key path and message.

use std::collections::HashMap;
use std::path::Path;
use std::time::Duration;

use serde::Deserialize;

use super::{ConfigError, Mark, Node, NodeValue, deserialize_node, parse_document};
use crate::config::units::{DurationValue, SizeValue};

const FILE: &str = "conf/loom.yaml";

#[derive(Debug, Deserialize, PartialEq)]
struct Config {
    listeners: Vec<Listener>,
    #[serde(default)]
    routes: Vec<Route>,
    #[serde(default)]
    upstreams: Vec<Upstream>,
}

#[derive(Debug, Deserialize, PartialEq)]
struct Listener {
    name: String,
    address: String,
    protocol: Protocol,
}

#[derive(Debug, Deserialize, PartialEq)]
#[serde(rename_all = "snake_case")]
enum Protocol {
    Http,
    Https,
    Tcp,
}

#[derive(Debug, Deserialize, PartialEq)]
struct Route {
    id: String,
    path: String,
    #[serde(default)]
    methods: Vec<String>,
    timeout: Option<DurationValue>,
    #[serde(default)]
    priority: i32,
    #[serde(default)]
    strip_prefix: bool,
    #[serde(default)]
    headers: HashMap<String, String>,
    upstream: String,
}

#[derive(Debug, Deserialize, PartialEq)]
struct Upstream {
    name: String,
    endpoints: Vec<Endpoint>,
    health_check: Option<HealthCheck>,
    #[serde(default)]
    balance: Balance,
}

/// Either `host:port` or `{address, weight}`.
#[derive(Debug, Deserialize, PartialEq)]
#[serde(untagged)]
enum Endpoint {
    Address(String),
    Weighted(WeightedEndpoint),
}

/// `deny_unknown_fields` because untagged variants are matched by `serde`, not by our
/// deserializer (see the module docs).
#[derive(Debug, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
struct WeightedEndpoint {
    address: String,
    #[serde(default = "default_weight")]
    weight: u32,
}

fn default_weight() -> u32 {
    1
}

#[derive(Debug, Deserialize, PartialEq)]
struct HealthCheck {
    interval: DurationValue,
    path: String,
    max_body: Option<SizeValue>,
}

#[derive(Debug, Default, Deserialize, PartialEq)]
#[serde(rename_all = "snake_case")]
enum Balance {
    #[default]
    RoundRobin,
    LeastConnections,
    ConsistentHash {
        key: String,
        #[serde(default)]
        replicas: u32,
    },
    Random(u64),
}

fn parse(text: &str) -> Node {
    match parse_document(Path::new(FILE), text) {
        Ok(node) => node,
        Err(error) => panic!("unexpected parse error: {error}"),
    }
}

/// Deserializes a whole document, returning the value and the errors.
fn load<T: serde::de::DeserializeOwned>(text: &str) -> (Option<T>, Vec<ConfigError>) {
    let root = parse(text);
    let mut errors = Vec::new();
    let value = deserialize_node(Path::new(FILE), &root, "", &mut errors);
    (value, errors)
}

/// The errors as `line:column key_path: message`, which keeps expectations readable.
fn summaries(errors: &[ConfigError]) -> Vec<String> {
    errors
        .iter()
        .map(|error| match error.mark {
            Some(mark) => format!(
                "{}:{} {}: {}",
                mark.line, mark.column, error.key_path, error.message
            ),
            None => format!("{}: {}", error.key_path, error.message),
        })
        .collect()
}

fn parse_error(text: &str) -> ConfigError {
    match parse_document(Path::new(FILE), text) {
        Ok(node) => panic!("expected a parse error, got {node:?}"),
        Err(error) => error,
    }
}

const DURATION_HINT: &str = "expected a number with a unit (ns, us, ms, s, m, h, d), \
                             such as \"100ms\", \"30s\" or \"1m30s\"";

#[test]
fn every_error_in_the_document_is_reported_with_its_position_and_key_path() {
    let text = "\
listeners:
  - name: public
    address: 0.0.0.0:8080
    protocol: http
    backlog: 128
routes:
  - id: users
    path: /users
    methods: [GET, POST]
    timeout: 5x
    priority: high
    upstream: users
  - id: not-found
    path: 404
    strip_prefix: true
    headers:
      X-Debug: true
    upstream: users
    retries: 3
upstreams:
  - name: users
    endpoints:
      - 10.0.0.1:80
      - address: 10.0.0.2:80
        weight: 5
    health_check:
      interval: 10s
      path: /health
      timeout_ms: 100
";
    let (config, errors) = load::<Config>(text);
    assert_eq!(
        summaries(&errors),
        [
            "5:5 listeners[0].backlog: unknown key \"backlog\" (expected one of: name, address, protocol)"
                .to_owned(),
            format!("10:14 routes[0].timeout: invalid duration \"5x\": unknown unit \"x\"; {DURATION_HINT}"),
            "11:15 routes[0].priority: expected an integer, found \"high\"".to_owned(),
            "19:5 routes[1].retries: unknown key \"retries\" (expected one of: id, path, methods, \
             timeout, priority, strip_prefix, headers, upstream)"
                .to_owned(),
            "29:7 upstreams[0].health_check.timeout_ms: unknown key \"timeout_ms\" \
             (expected one of: interval, path, max_body)"
                .to_owned(),
        ]
    );
    // The bad duration was dropped; the rest is still there for cross-reference checks.
    let config = config.expect("partial value");
    assert_eq!(config.routes[0].timeout, None);
    assert_eq!(
        errors[0].to_string(),
        "conf/loom.yaml:5:5: listeners[0].backlog: unknown key \"backlog\" \
         (expected one of: name, address, protocol)"
    );
}

#[test]
fn a_valid_document_builds_the_whole_schema() {
    let text = "\
listeners:
  - {name: public, address: '0.0.0.0:443', protocol: https}
routes:
  - id: not-found
    path: 404
    methods: [GET]
    timeout: 1m30s
    priority: -3
    strip_prefix: True
    headers: {X-Debug: true, X-Version: 2}
    upstream: api
upstreams:
  - name: api
    endpoints:
      - 10.0.0.1:80
      - address: 10.0.0.2:80
        weight: 0x1F
      - address: 10.0.0.3:80
    health_check:
      interval: 250ms
      path: /health
      max_body: 64KB
    balance:
      consistent_hash: {key: client_ip}
";
    let (config, errors) = load::<Config>(text);
    assert_eq!(summaries(&errors), Vec::<String>::new());
    let expected = Config {
        listeners: vec![Listener {
            name: "public".to_owned(),
            address: "0.0.0.0:443".to_owned(),
            protocol: Protocol::Https,
        }],
        routes: vec![Route {
            id: "not-found".to_owned(),
            path: "404".to_owned(),
            methods: vec!["GET".to_owned()],
            timeout: Some(DurationValue(Duration::from_secs(90))),
            priority: -3,
            strip_prefix: true,
            headers: HashMap::from([
                ("X-Debug".to_owned(), "true".to_owned()),
                ("X-Version".to_owned(), "2".to_owned()),
            ]),
            upstream: "api".to_owned(),
        }],
        upstreams: vec![Upstream {
            name: "api".to_owned(),
            endpoints: vec![
                Endpoint::Address("10.0.0.1:80".to_owned()),
                Endpoint::Weighted(WeightedEndpoint {
                    address: "10.0.0.2:80".to_owned(),
                    weight: 31,
                }),
                Endpoint::Weighted(WeightedEndpoint {
                    address: "10.0.0.3:80".to_owned(),
                    weight: 1,
                }),
            ],
            health_check: Some(HealthCheck {
                interval: DurationValue(Duration::from_millis(250)),
                path: "/health".to_owned(),
                max_body: Some(SizeValue(64 * 1024)),
            }),
            balance: Balance::ConsistentHash {
                key: "client_ip".to_owned(),
                replicas: 0,
            },
        }],
    };
    assert_eq!(config, Some(expected));
}

#[test]
fn failures_that_stop_a_struct_are_each_reported_once() {
    let text = "\
listeners:
  - name: a
    address: x
    protocol: ftp
  - address: y
    protocol: tcp
routes:
  - id: r
    path: /r
    timeout: forever
    upstream: u
upstreams:
  - name: u
    endpoints:
      - [1, 2]
      - address: z
        weight: heavy
    health_check:
      interval: 1 minute
      path: 5
";
    let (config, errors) = load::<Config>(text);
    assert_eq!(
        summaries(&errors),
        [
            "4:15 listeners[0].protocol: unknown value \"ftp\" (expected one of: http, https, tcp)"
                .to_owned(),
            "5:5 listeners[1]: missing required key \"name\"".to_owned(),
            format!(
                "10:14 routes[0].timeout: invalid duration \"forever\": \"forever\" has no number \
                 before it; {DURATION_HINT}"
            ),
            "15:9 upstreams[0].endpoints[0]: data did not match any variant of untagged enum Endpoint"
                .to_owned(),
            "16:9 upstreams[0].endpoints[1]: data did not match any variant of untagged enum Endpoint"
                .to_owned(),
            format!(
                "19:17 upstreams[0].health_check.interval: invalid duration \"1 minute\": unknown unit \
                 \" minute\"; {DURATION_HINT}"
            ),
        ]
    );
    assert!(
        config.is_some(),
        "partial value kept for cross-reference checks"
    );
}

#[test]
fn type_errors_use_neutral_values_and_keep_the_value() {
    #[derive(Debug, Deserialize, PartialEq)]
    struct Limits {
        port: u16,
        workers: u8,
        ratio: f64,
        enabled: bool,
        name: String,
        tags: Vec<String>,
        labels: HashMap<String, String>,
        offset: i64,
    }
    let text = "\
port: 70000
workers: -1
ratio: fast
enabled: yes
name: {first: a}
tags: web
labels: [a]
offset: \"42\"
";
    let (limits, errors) = load::<Limits>(text);
    assert_eq!(
        summaries(&errors),
        [
            "1:7 port: expected an integer from 0 to 65535, found \"70000\"",
            "2:10 workers: expected an unsigned integer, found \"-1\"",
            "3:8 ratio: expected a number, found \"fast\"",
            "4:10 enabled: expected a boolean (true or false), found \"yes\"",
            "5:7 name: expected a string, found a mapping",
            "6:7 tags: expected a sequence, found \"web\"",
            "7:9 labels: expected a mapping, found a sequence",
            "8:9 offset: expected an integer, found the quoted string \"42\"",
        ]
    );
    // Nothing had to be dropped, so the value exists, with neutral stand-ins.
    assert_eq!(
        limits,
        Some(Limits {
            port: 0,
            workers: 0,
            ratio: 0.0,
            enabled: false,
            name: String::new(),
            tags: Vec::new(),
            labels: HashMap::new(),
            offset: 0,
        })
    );
}

#[test]
fn several_failures_in_one_struct_are_all_reported() {
    #[derive(Debug, Deserialize)]
    #[expect(dead_code, reason = "only the errors matter")]
    struct Timeouts {
        connect: DurationValue,
        read: DurationValue,
        protocol: Protocol,
        retry: Option<DurationValue>,
        nested: HealthCheck,
        pair: (u8, u8),
        short_pair: (u8, u8),
    }
    let text = "\
connect: soon
read: 10 s
protocol: smtp
retry: never
bogus: 1
nested:
  interval: sometimes
  path: /h
  max_body: lots
pair: [1, 2, 3]
short_pair: [1]
";
    let (value, errors) = load::<Timeouts>(text);
    assert_eq!(
        summaries(&errors),
        [
            format!("1:10 connect: invalid duration \"soon\": \"soon\" has no number before it; {DURATION_HINT}"),
            format!("2:7 read: invalid duration \"10 s\": unknown unit \" s\"; {DURATION_HINT}"),
            "3:11 protocol: unknown value \"smtp\" (expected one of: http, https, tcp)".to_owned(),
            format!("4:8 retry: invalid duration \"never\": \"never\" has no number before it; {DURATION_HINT}"),
            "5:1 bogus: unknown key \"bogus\" (expected one of: connect, read, protocol, retry, nested, \
             pair, short_pair)"
                .to_owned(),
            format!(
                "7:13 nested.interval: invalid duration \"sometimes\": \"sometimes\" has no number \
                 before it; {DURATION_HINT}"
            ),
            "9:13 nested.max_body: invalid size \"lots\": it does not start with a number; expected a \
             whole number of bytes with an optional unit (B, KB, MB, GB, TB, all 1024-based, or KiB, \
             MiB, GiB, TiB), such as \"512KB\" or \"10MB\""
                .to_owned(),
            "10:7 pair: expected a sequence of 2 elements, found 3".to_owned(),
            "11:13 short_pair: expected a tuple of size 2, found 1 elements".to_owned(),
        ]
    );
    assert!(value.is_none());
}

#[test]
fn a_struct_of_the_wrong_shape_is_not_also_reported_as_missing_keys() {
    let text = "\
listeners:
  - name: a
    address: b
    protocol: http
upstreams:
  - name: u
    endpoints: []
    health_check: often
";
    let (config, errors) = load::<Config>(text);
    assert_eq!(
        summaries(&errors),
        ["8:19 upstreams[0].health_check: expected a mapping, found \"often\""]
    );
    // The rejected node is left out; the partial value serves cross-reference checks.
    assert!(config.is_some());
}

#[test]
fn duplicate_and_non_name_keys_are_reported() {
    let text = "\
listeners:
  - name: a
    address: b
    name: c
    protocol: http
    ? [x]
    : y
";
    let (_, errors) = load::<Config>(text);
    assert_eq!(
        summaries(&errors),
        [
            "4:5 listeners[0].name: duplicate key \"name\" (first given at line 2, column 5)",
            "6:7 listeners[0]: expected a key name, found a sequence",
        ]
    );
}

#[test]
fn option_fields_accept_null_empty_and_absence() {
    #[derive(Debug, Deserialize, PartialEq)]
    struct Optional {
        tilde: Option<String>,
        word: Option<u32>,
        empty: Option<DurationValue>,
        quoted: Option<String>,
        present: Option<u32>,
        absent: Option<String>,
    }
    let text = "tilde: ~\nword: null\nempty:\nquoted: \"null\"\npresent: 7\n";
    let (value, errors) = load::<Optional>(text);
    assert!(errors.is_empty(), "{errors:?}");
    assert_eq!(
        value,
        Some(Optional {
            tilde: None,
            word: None,
            empty: None,
            quoted: Some("null".to_owned()),
            present: Some(7),
            absent: None,
        })
    );
}

#[test]
fn null_for_a_required_string_points_at_its_key() {
    #[derive(Debug, Deserialize)]
    struct Named {
        #[expect(dead_code, reason = "only the error matters")]
        name: String,
    }
    let (_, errors) = load::<Named>("name:\n\n");
    assert_eq!(
        summaries(&errors),
        ["1:1 name: expected a string, found null"]
    );
}

#[test]
fn enums_from_names_and_single_key_mappings() {
    #[derive(Debug, Deserialize, PartialEq)]
    struct Balancing {
        plain: Balance,
        quoted: Balance,
        newtype: Balance,
        struct_form: Balance,
        bare_struct: Balance,
    }
    let text = "\
plain: least_connections
quoted: 'round_robin'
newtype: {random: 42}
struct_form:
  consistent_hash:
    key: header
    replicas: 3
bare_struct: consistent_hash
";
    let (value, errors) = load::<Balancing>(text);
    assert_eq!(
        summaries(&errors),
        ["8:14 bare_struct: missing required key \"key\""]
    );
    assert_eq!(value, None);

    let text = "\
plain: least_connections
quoted: 'round_robin'
newtype: {random: 42}
struct_form:
  consistent_hash:
    key: header
    replicas: 3
bare_struct: {round_robin: }
";
    let (value, errors) = load::<Balancing>(text);
    assert!(errors.is_empty(), "{errors:?}");
    assert_eq!(
        value,
        Some(Balancing {
            plain: Balance::LeastConnections,
            quoted: Balance::RoundRobin,
            newtype: Balance::Random(42),
            struct_form: Balance::ConsistentHash {
                key: "header".to_owned(),
                replicas: 3,
            },
            bare_struct: Balance::RoundRobin,
        })
    );
}

#[test]
fn enum_errors_name_the_choices_and_the_place() {
    #[derive(Debug, Deserialize)]
    #[expect(dead_code, reason = "only the errors matter")]
    struct Balancing {
        two_keys: Balance,
        newtype_bare: Balance,
        unit_with_value: Balance,
        unknown_key: Balance,
        bad_setting: Balance,
    }
    let text = "\
two_keys: {random: 1, round_robin: }
newtype_bare: random
unit_with_value: {least_connections: 5}
unknown_key: {sticky: 1}
bad_setting: {consistent_hash: {key: a, ring: 3}}
";
    let (value, errors) = load::<Balancing>(text);
    assert_eq!(
        summaries(&errors),
        [
            "1:11 two_keys: expected a name or a mapping with a name as its only key (expected one \
             of: round_robin, least_connections, consistent_hash, random), found a mapping with 2 keys",
            "2:15 newtype_bare: \"random\" needs a value; write it as a mapping: \"random: ...\"",
            "3:38 unit_with_value.least_connections: \"least_connections\" takes no value, found \"5\"",
            "4:15 unknown_key: unknown value \"sticky\" (expected one of: round_robin, \
             least_connections, consistent_hash, random)",
            "5:41 bad_setting.consistent_hash.ring: unknown key \"ring\" (expected one of: key, replicas)",
        ]
    );
    assert!(value.is_none());
}

#[test]
fn untagged_and_self_describing_targets_see_core_schema_types() {
    let text = "\
count: 42
negative: -3
hex: 0x1F
ratio: 1.5
flag: false
nothing: ~
quoted: \"42\"
literal: |
  two
  lines
list: [a, 1]
map: {1: one}
";
    let (value, errors) = load::<serde_json::Value>(text);
    assert!(errors.is_empty(), "{errors:?}");
    assert_eq!(
        value,
        Some(serde_json::json!({
            "count": 42,
            "negative": -3,
            "hex": 31,
            "ratio": 1.5,
            "flag": false,
            "nothing": null,
            "quoted": "42",
            "literal": "two\nlines\n",
            "list": ["a", 1],
            "map": {"1": "one"},
        }))
    );
}

#[test]
fn aliases_copy_the_anchored_node_and_keep_its_marks() {
    let text = "\
listeners:
  - &public
    name: public
    address: 0.0.0.0:80
    protocol: gopher
  - *public
";
    let root = parse(text);
    let first = root.find("listeners[0]");
    let second = root.find("listeners[1]");
    assert!(first.is_some());
    assert_eq!(first, second);
    let (_, errors) = load::<Config>(text);
    // The copy reports against the anchored text, under its own key path.
    assert_eq!(
        summaries(&errors),
        [
            "5:15 listeners[0].protocol: unknown value \"gopher\" (expected one of: http, https, tcp)",
            "5:15 listeners[1].protocol: unknown value \"gopher\" (expected one of: http, https, tcp)",
        ]
    );
}

#[test]
fn merge_keys_fill_in_without_overriding() {
    #[derive(Debug, Deserialize)]
    struct Document {
        #[expect(dead_code, reason = "holds the anchors only")]
        defaults: serde_json::Value,
        routes: Vec<Route>,
    }
    let text = "\
defaults:
  base: &base {timeout: 5s, priority: 10, strip_prefix: true}
  slow: &slow {timeout: 60s, methods: [GET]}
routes:
  - <<: *base
    id: a
    path: /a
    upstream: u
    priority: 20
  - <<: [*slow, *base]
    id: b
    path: /b
    upstream: u
";
    let (document, errors) = load::<Document>(text);
    assert!(errors.is_empty(), "{errors:?}");
    let routes = document.map(|document| document.routes).unwrap_or_default();
    assert_eq!(routes.len(), 2);
    assert_eq!(
        routes[0].timeout,
        Some(DurationValue(Duration::from_secs(5)))
    );
    assert_eq!(routes[0].priority, 20);
    assert!(routes[0].strip_prefix);
    assert_eq!(
        routes[1].timeout,
        Some(DurationValue(Duration::from_secs(60)))
    );
    assert_eq!(routes[1].methods, ["GET"]);
    assert_eq!(routes[1].priority, 10);

    let error = parse_error("a: &a 1\nb:\n  <<: *a\n");
    assert_eq!(error.mark, Some(Mark { line: 3, column: 3 }));
    assert!(
        error
            .message
            .contains("a merge key `<<` needs a mapping or a list of mappings, found \"1\""),
        "{error}"
    );
    let error = parse_error("a: &a {x: 1}\nb:\n  <<: [*a, [2]]\n");
    assert_eq!(error.mark, Some(Mark { line: 3, column: 3 }));
    assert!(
        error.message.ends_with("found a list holding a sequence"),
        "{error}"
    );
}

#[test]
fn syntax_errors_carry_their_position() {
    let error = parse_error("routes:\n  - id: a\n    methods: [GET, POST\n");
    assert_eq!(error.file, Path::new(FILE));
    assert_eq!(error.mark, Some(Mark { line: 4, column: 1 }));
    assert!(error.message.starts_with("invalid YAML: "), "{error}");

    let error = parse_error("name: a\n  address: b\n");
    assert_eq!(
        error.mark,
        Some(Mark {
            line: 2,
            column: 10
        })
    );
    assert_eq!(
        error.to_string(),
        "conf/loom.yaml:2:10: invalid YAML: mapping values are not allowed in this context"
    );

    let error = parse_error("a: *missing\n");
    assert_eq!(error.mark, Some(Mark { line: 1, column: 4 }));
}

#[test]
fn the_document_must_be_one_mapping() {
    let error = parse_error("a: 1\n---\nb: 2\n");
    assert_eq!(error.mark, Some(Mark { line: 2, column: 1 }));
    assert!(
        error.message.contains("exactly one YAML document"),
        "{error}"
    );

    let error = parse_error("- a\n- b\n");
    assert_eq!(
        error.to_string(),
        "conf/loom.yaml:1:1: expected a mapping at the top level, found a sequence"
    );

    let error = parse_error("# nothing here\n");
    assert_eq!(error.mark, None);
    assert_eq!(
        error.to_string(),
        "conf/loom.yaml: the file holds no YAML document; expected a mapping at the top level"
    );
}

#[test]
fn tags_other_than_str_are_refused_and_str_forces_a_string() {
    let root = parse("a: !!str 42\n");
    assert_eq!(
        root.find("a").map(|node| &node.value),
        Some(&NodeValue::Scalar {
            text: "42".to_owned(),
            style_plain: false
        })
    );
    let error = parse_error("a: !custom 42\n");
    assert_eq!(
        error.mark,
        Some(Mark {
            line: 1,
            column: 12
        })
    );
    assert!(
        error.message.contains("unsupported tag \"!custom\""),
        "{error}"
    );
}

#[test]
fn oversized_documents_are_refused() {
    let deep = format!("{}x\n", "- ".repeat(200));
    assert!(
        parse_error(&deep)
            .message
            .contains("nesting deeper than 128 levels")
    );

    let mut laughs = String::from("a0: &a0 [x, x, x, x, x, x, x, x, x, x]\n");
    for level in 1..8 {
        let previous = format!("*a{}", level - 1);
        let items = [previous.as_str(); 10].join(", ");
        laughs.push_str(&format!("a{level}: &a{level} [{items}]\n"));
    }
    assert!(
        parse_error(&laughs)
            .message
            .contains("more than 1000000 nodes")
    );
}

#[test]
fn find_locates_nodes_for_later_validation() {
    let text = "\
routes:
  - id: a
    upstream: missing
    headers:
      x.request.id: on
";
    let root = parse(text);
    let upstream = root.find("routes[0].upstream");
    assert_eq!(
        upstream.map(|node| node.mark),
        Some(Mark {
            line: 3,
            column: 15
        })
    );
    assert_eq!(upstream.and_then(Node::scalar_text), Some("missing"));
    let header = root.find("routes[0].headers[\"x.request.id\"]");
    assert_eq!(header.and_then(Node::scalar_text), Some("on"));
    assert_eq!(root.find("routes[1]"), None);
    assert_eq!(root.find("routes[0].host"), None);
}

#[test]
fn list_elements_can_be_deserialized_one_by_one() {
    let text = "\
routes:
  - id: a
    path: /a
    upstream: u
    timeout: soon
  - id: b
    path: /b
    upstream: u
";
    let root = parse(text);
    let mut errors = Vec::new();
    let mut routes = Vec::new();
    for index in 0..2 {
        let key_path = super::element_key_path("routes", index);
        if let Some(element) = root.find(&key_path) {
            let route: Option<Route> =
                deserialize_node(Path::new(FILE), element, &key_path, &mut errors);
            routes.extend(route);
        }
    }
    // Both come back; route a without its rejected timeout.
    assert_eq!(routes.len(), 2);
    assert_eq!((routes[0].id.as_str(), routes[0].timeout), ("a", None));
    assert_eq!(routes[1].id, "b");
    assert_eq!(
        summaries(&errors),
        [format!(
            "5:14 routes[0].timeout: invalid duration \"soon\": \"soon\" has no number before it; \
             {DURATION_HINT}"
        )]
    );
}
