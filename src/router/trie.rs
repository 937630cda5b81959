//! A segment trie of path patterns, one per host bucket.
//!
//! Routes sharing a pattern end in the same node. Matching walks every branch that can match
//! (the static child for the segment and the parameter child) and reports each route found.
//! Every node has one parent, so a walk visits each node at most once and only along branches
//! that fit the request path: its cost follows the path's depth and the patterns that overlap
//! it, not the number of routes.

use super::fast_hash::FastMap;
use super::pattern::{Pattern, Segment, split_segment};

/// Up to this many static children are found by scanning; more get a hash index. Scanning a
/// few short keys is cheaper than hashing, and hashing beats binary search over thousands.
const SCAN_LIMIT: usize = 8;

#[derive(Debug, Default)]
pub(crate) struct Node {
    /// In insertion order; `static_index` maps their text to positions when there are many.
    static_children: Vec<(Box<str>, Node)>,
    /// Empty (and unallocated) while the children are few enough to scan.
    static_index: FastMap<usize>,
    /// All `:name` segments at this depth share one child; names belong to each route.
    param_child: Option<Box<Node>>,
    /// Routes whose pattern ends with a catch-all right after this node.
    catch_all_routes: Vec<usize>,
    /// Routes whose pattern ends exactly at this node.
    terminal_routes: Vec<usize>,
}

impl Node {
    pub(crate) fn insert(&mut self, pattern: &Pattern, route_id: usize) {
        let mut node = self;
        for segment in pattern.segments() {
            node = match segment {
                Segment::Static(text) => node.static_child_or_insert(text),
                Segment::Param(_) => node.param_child.get_or_insert_with(Box::default),
            };
        }
        if pattern.has_catch_all() {
            node.catch_all_routes.push(route_id);
        } else {
            node.terminal_routes.push(route_id);
        }
    }

    fn static_child_or_insert(&mut self, text: &str) -> &mut Node {
        let position = match self.find_static(text) {
            Some(position) => position,
            None => {
                let position = self.static_children.len();
                self.static_children
                    .push((Box::from(text), Node::default()));
                if position == SCAN_LIMIT {
                    self.static_index = self
                        .static_children
                        .iter()
                        .enumerate()
                        .map(|(index, (key, _))| (key.clone(), index))
                        .collect();
                } else if position > SCAN_LIMIT {
                    self.static_index.insert(Box::from(text), position);
                }
                position
            }
        };
        &mut self.static_children[position].1
    }

    fn find_static(&self, text: &str) -> Option<usize> {
        if self.static_children.len() > SCAN_LIMIT {
            self.static_index.get(text).copied()
        } else {
            self.static_children
                .iter()
                .position(|(candidate, _)| &**candidate == text)
        }
    }

    /// Frees the spare capacity left by building, since the table lives for a whole snapshot.
    pub(crate) fn shrink(&mut self) {
        self.static_children.shrink_to_fit();
        self.static_index.shrink_to_fit();
        self.catch_all_routes.shrink_to_fit();
        self.terminal_routes.shrink_to_fit();
        for (_, child) in &mut self.static_children {
            child.shrink();
        }
        if let Some(child) = &mut self.param_child {
            child.shrink();
        }
    }

    /// Calls `visit` with every route whose pattern matches the path. `rest` is the part of the
    /// path not consumed yet, as produced by [`after_root`](super::pattern::after_root).
    pub(crate) fn for_each_match<F: FnMut(usize)>(&self, rest: Option<&str>, visit: &mut F) {
        for &route_id in &self.catch_all_routes {
            visit(route_id);
        }
        let Some(remaining) = rest else {
            for &route_id in &self.terminal_routes {
                visit(route_id);
            }
            return;
        };
        let (segment, next) = split_segment(remaining);
        if let Some((_, child)) = self
            .find_static(segment)
            .and_then(|position| self.static_children.get(position))
        {
            child.for_each_match(next, visit);
        }
        if let Some(child) = &self.param_child
            && !segment.is_empty()
        {
            child.for_each_match(next, visit);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::super::pattern::after_root;
    use super::*;

    fn trie(patterns: &[&str]) -> Node {
        let mut root = Node::default();
        for (route_id, raw) in patterns.iter().enumerate() {
            match Pattern::parse(raw) {
                Ok(pattern) => root.insert(&pattern, route_id),
                Err(errors) => panic!("{raw}: {errors:?}"),
            }
        }
        root
    }

    fn matches(root: &Node, path: &str) -> Vec<usize> {
        let mut found = Vec::new();
        root.for_each_match(after_root(path), &mut |route_id| found.push(route_id));
        found.sort_unstable();
        found
    }

    #[test]
    fn walks_static_param_and_catch_all_branches() {
        let root = trie(&[
            "/users/me",
            "/users/:id",
            "/users/*",
            "/*",
            "/users/:id/",
            "/",
        ]);
        assert_eq!(matches(&root, "/users/me"), [0, 1, 2, 3]);
        assert_eq!(matches(&root, "/users/42"), [1, 2, 3]);
        assert_eq!(matches(&root, "/users/42/"), [2, 3, 4]);
        assert_eq!(matches(&root, "/users"), [2, 3]);
        assert_eq!(matches(&root, "/users/"), [2, 3]);
        assert_eq!(matches(&root, "/"), [3, 5]);
        assert_eq!(matches(&root, "/other"), [3]);
    }

    #[test]
    fn many_static_children_are_found_through_the_index() {
        let patterns: Vec<String> = (0..100).map(|index| format!("/s{index}/x")).collect();
        let borrowed: Vec<&str> = patterns.iter().map(String::as_str).collect();
        let mut root = trie(&borrowed);
        root.shrink();
        assert_eq!(root.static_index.len(), 100);
        for index in [0, 7, 8, 9, 99] {
            assert_eq!(matches(&root, &format!("/s{index}/x")), [index]);
        }
        assert!(matches(&root, "/s100/x").is_empty());
    }

    #[test]
    fn shared_patterns_share_a_node() {
        let root = trie(&["/a/:x", "/a/:y", "/a/b"]);
        assert_eq!(root.static_children.len(), 1);
        let a = &root.static_children[0].1;
        assert_eq!(a.static_children.len(), 1);
        assert!(
            a.param_child
                .as_ref()
                .is_some_and(|param| param.terminal_routes == [0, 1])
        );
    }
}
