//! Path patterns: parsing and validation at build time, parameter capture after a match.

use super::params::PathParams;
use super::path::normalize_path;
use super::precedence::PathKind;
use std::borrow::Cow;

/// One segment of a pattern before any catch-all.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Segment {
    /// Must equal the request segment byte for byte.
    Static(Box<str>),
    /// `:name`: any non-empty segment.
    Param(Box<str>),
}

/// A trailing `*` or `*name`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum CatchAll {
    Unnamed,
    Named(Box<str>),
}

/// A validated path pattern.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Pattern {
    segments: Box<[Segment]>,
    catch_all: Option<CatchAll>,
    /// Names of the parameters and of a named catch-all, in capture order.
    capture_names: Box<[Box<str>]>,
    static_prefix_len: usize,
}

impl Pattern {
    /// Parses `raw`, returning every problem found rather than the first.
    pub(crate) fn parse(raw: &str) -> Result<Pattern, Vec<String>> {
        if !raw.starts_with('/') {
            return Err(vec![format!("path pattern {raw:?} must start with '/'")]);
        }
        match normalize_path(raw) {
            Err(error) => return Err(vec![format!("path pattern {raw:?}: {error}")]),
            Ok(Cow::Owned(normal)) if normal != raw => {
                return Err(vec![format!(
                    "path pattern {raw:?} could never match, because request paths are \
                     normalised first; write {normal:?}"
                )]);
            }
            Ok(_) => {}
        }

        let mut errors = Vec::new();
        let mut segments = Vec::new();
        let mut catch_all = None;
        let mut static_prefix_len = None;
        let mut names: Vec<&str> = Vec::new();
        let mut offset = 0;
        let mut rest = after_root(raw);
        while let Some(remaining) = rest {
            let (segment, next) = split_segment(remaining);
            // `offset` is where this segment's leading '/' sits in `raw`.
            let is_dynamic = segment.starts_with(':') || segment.starts_with('*');
            if is_dynamic && static_prefix_len.is_none() {
                static_prefix_len = Some(offset);
            }
            if catch_all.is_some() {
                errors.push(format!(
                    "path pattern {raw:?}: the catch-all '*' must be the last segment"
                ));
                break;
            }
            if let Some(name) = segment.strip_prefix(':') {
                if check_name(raw, name, &mut names, &mut errors) {
                    segments.push(Segment::Param(Box::from(name)));
                }
            } else if let Some(name) = segment.strip_prefix('*') {
                catch_all = Some(if name.is_empty() {
                    CatchAll::Unnamed
                } else {
                    check_name(raw, name, &mut names, &mut errors);
                    CatchAll::Named(Box::from(name))
                });
            } else {
                segments.push(Segment::Static(Box::from(segment)));
            }
            offset += 1 + segment.len();
            rest = next;
        }

        if errors.is_empty() {
            let capture_names = names.iter().map(|&name| Box::from(name)).collect();
            Ok(Pattern {
                segments: segments.into_boxed_slice(),
                catch_all,
                capture_names,
                static_prefix_len: static_prefix_len.unwrap_or(raw.len()),
            })
        } else {
            Err(errors)
        }
    }

    pub(crate) fn segments(&self) -> &[Segment] {
        &self.segments
    }

    pub(crate) fn has_catch_all(&self) -> bool {
        self.catch_all.is_some()
    }

    pub(crate) fn static_prefix_len(&self) -> usize {
        self.static_prefix_len
    }

    pub(crate) fn kind(&self) -> PathKind {
        if self.catch_all.is_some() {
            PathKind::CatchAll
        } else if self
            .segments
            .iter()
            .any(|segment| matches!(segment, Segment::Param(_)))
        {
            PathKind::Param
        } else {
            PathKind::Exact
        }
    }

    /// Whether `path` (normalised) matches this pattern on its own, by the rules the trie
    /// walks ([`Node::for_each_match`](super::trie::Node::for_each_match)): static segments
    /// equal, parameters non-empty, a catch-all takes any rest. Only the explanation uses it;
    /// matching goes through the trie.
    pub(crate) fn matches(&self, path: &str) -> bool {
        if !path.starts_with('/') {
            return false;
        }
        let mut rest = after_root(path);
        for segment in self.segments.iter() {
            let Some(remaining) = rest else {
                return false;
            };
            let (value, next) = split_segment(remaining);
            let fits = match segment {
                Segment::Static(text) => value == &**text,
                Segment::Param(_) => !value.is_empty(),
            };
            if !fits {
                return false;
            }
            rest = next;
        }
        self.catch_all.is_some() || rest.is_none()
    }

    /// Captures the named parameters of `path`, which this pattern is known to match.
    pub(crate) fn capture<'r, 'p>(&'r self, path: &'p str) -> PathParams<'r, 'p> {
        let mut params = PathParams::with_names(&self.capture_names);
        let mut rest = after_root(path);
        for segment in self.segments.iter() {
            let Some(remaining) = rest else {
                break;
            };
            let (value, next) = split_segment(remaining);
            if let Segment::Param(_) = segment {
                params.push(value);
            }
            rest = next;
        }
        if let Some(CatchAll::Named(_)) = &self.catch_all {
            params.push(rest.unwrap_or_default());
        }
        params
    }
}

/// The path after its leading `/`, or `None` when no segment follows (the path `/`).
///
/// Matching walks segments as `Some(text)` = "segments remain" and `None` = "path ended", so
/// that `/a/` (segments `a` and an empty one) and `/a` (segment `a`) stay distinct.
pub(crate) fn after_root(path: &str) -> Option<&str> {
    path.strip_prefix('/').filter(|rest| !rest.is_empty())
}

/// Splits the next segment off `rest`; the second half is `None` when it was the last.
///
/// A plain byte scan: segments are short, and `str::split_once` pays for a `memchr` call
/// that showed up in profiles.
pub(crate) fn split_segment(rest: &str) -> (&str, Option<&str>) {
    match rest.bytes().position(|byte| byte == b'/') {
        Some(slash) => (&rest[..slash], rest.get(slash + 1..)),
        None => (rest, None),
    }
}

/// Checks a parameter name, records it, and says whether it is usable.
fn check_name<'a>(
    raw: &str,
    name: &'a str,
    names: &mut Vec<&'a str>,
    errors: &mut Vec<String>,
) -> bool {
    if name.is_empty() {
        errors.push(format!(
            "path pattern {raw:?}: empty parameter name after ':'"
        ));
        return false;
    }
    if !name
        .bytes()
        .all(|byte| byte.is_ascii_alphanumeric() || byte == b'_')
    {
        errors.push(format!(
            "path pattern {raw:?}: parameter name {name:?} may only use letters, digits and \
             '_' (a parameter always spans a whole segment)"
        ));
        return false;
    }
    if names.contains(&name) {
        errors.push(format!(
            "path pattern {raw:?}: duplicate parameter name {name:?}"
        ));
        return false;
    }
    names.push(name);
    true
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(raw: &str) -> Pattern {
        match Pattern::parse(raw) {
            Ok(pattern) => pattern,
            Err(errors) => panic!("{raw}: {errors:?}"),
        }
    }

    fn errors(raw: &str) -> Vec<String> {
        Pattern::parse(raw).err().unwrap_or_default()
    }

    #[test]
    fn classifies_patterns() {
        assert_eq!(parse("/health").kind(), PathKind::Exact);
        assert_eq!(parse("/").kind(), PathKind::Exact);
        assert_eq!(parse("/users/:id").kind(), PathKind::Param);
        assert_eq!(parse("/api/*").kind(), PathKind::CatchAll);
        assert_eq!(parse("/users/:id/*rest").kind(), PathKind::CatchAll);
    }

    #[test]
    fn measures_the_static_prefix() {
        assert_eq!(parse("/health").static_prefix_len(), 7);
        assert_eq!(parse("/health/").static_prefix_len(), 8);
        assert_eq!(parse("/").static_prefix_len(), 1);
        assert_eq!(parse("/api/*").static_prefix_len(), 4);
        assert_eq!(parse("/api/v1/users/:id").static_prefix_len(), 13);
        assert_eq!(parse("/:id").static_prefix_len(), 0);
        assert_eq!(parse("/*").static_prefix_len(), 0);
    }

    #[test]
    fn captures_params_and_named_catch_all() {
        let pattern = parse("/users/:id/files/*path");
        let params = pattern.capture("/users/42/files/a/b.txt");
        assert_eq!(params.get("id"), Some("42"));
        assert_eq!(params.get("path"), Some("a/b.txt"));
        assert_eq!(pattern.capture("/users/42/files").get("path"), Some(""));
        assert_eq!(pattern.capture("/users/42/files/").get("path"), Some(""));
        assert!(parse("/api/*").capture("/api/x").is_empty());
    }

    #[test]
    fn colons_and_stars_inside_a_segment_are_literal() {
        let pattern = parse("/v1/items:batchGet");
        assert_eq!(pattern.kind(), PathKind::Exact);
        assert_eq!(
            pattern.segments(),
            [
                Segment::Static("v1".into()),
                Segment::Static("items:batchGet".into())
            ]
        );
    }

    #[test]
    fn rejects_bad_patterns() {
        assert!(errors("api")[0].contains("must start with '/'"));
        assert!(errors("/api/*/x")[0].contains("must be the last segment"));
        assert!(errors("/api/*rest/")[0].contains("must be the last segment"));
        assert!(errors("/users/:")[0].contains("empty parameter name"));
        assert!(errors("/users/:id/:id")[0].contains("duplicate parameter name"));
        assert!(errors("/users/:id/*id")[0].contains("duplicate parameter name"));
        assert!(errors("/files/:name.json")[0].contains("may only use letters"));
        assert!(errors("/a//b")[0].contains("write \"/a/b\""));
        assert!(errors("/a/../b")[0].contains("write \"/b\""));
        assert!(errors("/%7Euser")[0].contains("write \"/~user\""));
        assert!(errors("/a%2Fb")[0].contains("encoded"));
    }

    #[test]
    fn reports_every_problem_of_a_pattern() {
        assert_eq!(errors("/:/:a-b/:c/:c").len(), 3);
    }
}
