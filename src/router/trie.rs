//! A segment trie of path patterns, one per host bucket.
//!
//! Routes sharing a pattern end in the same node. Matching walks every branch that can match
//! (the static child for the segment and the parameter child) and reports each route found;
//! since every node has one parent, a walk visits each node at most once, so its cost is
//! bounded by the depth of the request path times the branching of the table, not by the
//! number of routes.

use super::pattern::{Pattern, Segment, split_segment};

#[derive(Debug, Default)]
pub(crate) struct Node {
    /// Sorted by segment text, for binary search: cheaper than hashing short segments.
    static_children: Vec<(Box<str>, Node)>,
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
            Ok(position) => position,
            Err(position) => {
                self.static_children
                    .insert(position, (Box::from(text), Node::default()));
                position
            }
        };
        &mut self.static_children[position].1
    }

    fn find_static(&self, text: &str) -> Result<usize, usize> {
        self.static_children
            .binary_search_by(|(candidate, _)| (**candidate).cmp(text))
    }

    /// Frees the spare capacity left by building, since the table lives for a whole snapshot.
    pub(crate) fn shrink(&mut self) {
        self.static_children.shrink_to_fit();
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
        if let Ok(position) = self.find_static(segment) {
            self.static_children[position].1.for_each_match(next, visit);
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
