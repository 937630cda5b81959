//! `loom_body_rewrite`: replaces strings in response bodies whose content type matches.
//!
//! The body is rewritten as a whole once it is complete: the plugin pauses every body chunk so
//! the host buffers them, which is what lets a replacement span chunk boundaries. The host's
//! body buffer limit therefore bounds the responses this plugin can rewrite.

use loom_plugin_common::config::{self, Validate};
use loom_plugin_common::response_header;
use proxy_wasm::traits::{Context, HttpContext, RootContext};
use proxy_wasm::types::{Action, ContextType};
use serde::Deserialize;
use std::rc::Rc;

const PLUGIN: &str = "loom_body_rewrite";

proxy_wasm::main! {{
    loom_plugin_common::install_logger();
    proxy_wasm::set_root_context(|_| -> Box<dyn RootContext> { Box::new(BodyRewriteRoot::default()) });
}}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct BodyRewriteConfig {
    #[serde(default)]
    replacements: Vec<Replacement>,
    #[serde(default = "default_content_types")]
    content_types: Vec<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct Replacement {
    from: String,
    to: String,
}

fn default_content_types() -> Vec<String> {
    vec!["text/".to_string(), "application/json".to_string()]
}

impl Validate for BodyRewriteConfig {
    fn validate(&self) -> Result<(), String> {
        match self.replacements.iter().position(|r| r.from.is_empty()) {
            Some(index) => Err(format!("replacements[{index}].from: must not be empty")),
            None => Ok(()),
        }
    }
}

impl BodyRewriteConfig {
    /// Prefix match, case-insensitive as media types are.
    fn matches(&self, content_type: &str) -> bool {
        let content_type = content_type.trim_start().to_ascii_lowercase();
        self.content_types
            .iter()
            .any(|prefix| content_type.starts_with(prefix.as_str()))
    }
}

#[derive(Default)]
struct BodyRewriteRoot {
    config: Option<Rc<BodyRewriteConfig>>,
}

impl Context for BodyRewriteRoot {}

impl RootContext for BodyRewriteRoot {
    fn on_configure(&mut self, _plugin_configuration_size: usize) -> bool {
        let Some(mut config) = config::load::<BodyRewriteConfig>(self, PLUGIN) else {
            return false;
        };
        for prefix in &mut config.content_types {
            prefix.make_ascii_lowercase();
        }
        self.config = Some(Rc::new(config));
        true
    }

    fn get_type(&self) -> Option<ContextType> {
        Some(ContextType::HttpContext)
    }

    fn create_http_context(&self, _context_id: u32) -> Option<Box<dyn HttpContext>> {
        Some(Box::new(BodyRewriteHttp {
            config: self.config.clone(),
            rewriting: false,
        }))
    }
}

struct BodyRewriteHttp {
    config: Option<Rc<BodyRewriteConfig>>,
    /// Set in the response headers phase when this response's body is to be rewritten.
    rewriting: bool,
}

impl Context for BodyRewriteHttp {}

impl HttpContext for BodyRewriteHttp {
    fn on_http_response_headers(&mut self, _num_headers: usize, end_of_stream: bool) -> Action {
        let Some(config) = &self.config else {
            return Action::Continue;
        };
        // No body (HEAD, 204, 304): nothing to rewrite, and the content-length of a HEAD
        // response describes a body that is not here, so it must stay.
        if end_of_stream || config.replacements.is_empty() {
            return Action::Continue;
        }
        let content_type_matches =
            response_header(self, "content-type").is_some_and(|value| config.matches(&value));
        // Replacing bytes inside a compressed body would corrupt it.
        let encoded = response_header(self, "content-encoding")
            .is_some_and(|encoding| !encoding.trim().eq_ignore_ascii_case("identity"));
        if content_type_matches && !encoded {
            self.rewriting = true;
            self.set_http_response_header("content-length", None);
        }
        Action::Continue
    }

    fn on_http_response_body(&mut self, body_size: usize, end_of_stream: bool) -> Action {
        if !self.rewriting {
            return Action::Continue;
        }
        if !end_of_stream {
            return Action::Pause;
        }
        self.rewrite_body(body_size);
        Action::Continue
    }

    /// An answer with trailers (gRPC) ends there, not with a last body chunk: the body held
    /// so far is the whole body, still readable and replaceable here, as in Envoy.
    fn on_http_response_trailers(&mut self, _num_trailers: usize) -> Action {
        if self.rewriting {
            self.rewrite_body(usize::MAX);
        }
        Action::Continue
    }
}

impl BodyRewriteHttp {
    /// Rewrites the buffered response body, `size` bytes of it at most.
    fn rewrite_body(&self, size: usize) {
        let Some(config) = &self.config else {
            return;
        };
        let Some(body) = self.get_http_response_body(0, size) else {
            return;
        };
        if let Some(rewritten) = rewrite(&body, &config.replacements) {
            self.set_http_response_body(0, body.len(), &rewritten);
        }
    }
}

/// Applies every replacement in order, each to the output of the one before; `None` when no
/// replacement matched (so an untouched body is not copied back to the host).
fn rewrite(body: &[u8], replacements: &[Replacement]) -> Option<Vec<u8>> {
    let mut current: Option<Vec<u8>> = None;
    for replacement in replacements {
        let input = current.as_deref().unwrap_or(body);
        if let Some(output) = replace_all(
            input,
            replacement.from.as_bytes(),
            replacement.to.as_bytes(),
        ) {
            current = Some(output);
        }
    }
    current
}

/// `haystack` with every non-overlapping occurrence of `from` (searched left to right) replaced
/// by `to`; `None` when there is none.
fn replace_all(haystack: &[u8], from: &[u8], to: &[u8]) -> Option<Vec<u8>> {
    let first = find(haystack, from, 0)?;
    let mut output = Vec::with_capacity(haystack.len());
    let mut copied_up_to = 0;
    let mut next = Some(first);
    while let Some(start) = next {
        output.extend_from_slice(&haystack[copied_up_to..start]);
        output.extend_from_slice(to);
        copied_up_to = start + from.len();
        next = find(haystack, from, copied_up_to);
    }
    output.extend_from_slice(&haystack[copied_up_to..]);
    Some(output)
}

fn find(haystack: &[u8], needle: &[u8], from: usize) -> Option<usize> {
    let rest = haystack.get(from..)?;
    if needle.is_empty() || rest.len() < needle.len() {
        return None;
    }
    rest.windows(needle.len())
        .position(|window| window == needle)
        .map(|position| from + position)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn replacement(from: &str, to: &str) -> Replacement {
        Replacement {
            from: from.to_string(),
            to: to.to_string(),
        }
    }

    #[test]
    fn replaces_every_occurrence_in_order() {
        let replacements = [replacement("foo", "bar"), replacement("bar", "baz!")];
        assert_eq!(
            rewrite(b"foo-bar-foofoo", &replacements).as_deref(),
            Some(&b"baz!-baz!-baz!baz!"[..])
        );
        assert_eq!(rewrite(b"nothing here", &replacements), None);
        assert_eq!(
            replace_all(b"aaa", b"aa", b"b").as_deref(),
            Some(&b"ba"[..])
        );
        assert_eq!(replace_all(b"abc", b"c", b"").as_deref(), Some(&b"ab"[..]));
    }

    #[test]
    fn content_type_prefixes() {
        let config: BodyRewriteConfig = config::parse(None).unwrap();
        assert!(config.matches("text/html; charset=utf-8"));
        assert!(config.matches("Application/JSON"));
        assert!(!config.matches("image/png"));
        let config: BodyRewriteConfig =
            config::parse(Some(br#"{"replacements": [{"from": "", "to": "x"}]}"#)).unwrap();
        assert!(config.validate().is_err());
    }
}
