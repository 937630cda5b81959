//! The order in which matching routes win, as one comparable key.
//!
//! Encoding the rules of the module documentation as a derived `Ord` keeps them in one place
//! and makes the comparison on the hot path a handful of integer comparisons.

use std::cmp::Reverse;

/// How specific a route's path pattern is; later variants win.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub(crate) enum PathKind {
    CatchAll,
    Param,
    Exact,
}

/// How specifically the request's host was matched; later variants win.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub(crate) enum HostSpecificity {
    /// The route has no hosts.
    Any,
    /// Through a wildcard; a longer suffix is more specific.
    Wildcard {
        suffix_len: usize,
    },
    Exact,
}

/// The precedence key of one route matched through one host; the greater key wins.
///
/// Field order is rule order: the derived `Ord` compares fields top to bottom.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub(crate) struct Precedence {
    priority: i32,
    path_kind: PathKind,
    static_prefix_len: usize,
    host: HostSpecificity,
    /// Earlier in the file wins, hence reversed.
    file_index: Reverse<usize>,
    /// Last resort when two specs claim the same index: earlier in the build list wins.
    list_position: Reverse<usize>,
}

/// The part of the key that does not depend on how the host matched, computed at build time.
#[derive(Debug, Clone, Copy)]
pub(crate) struct RouteRank {
    pub(crate) priority: i32,
    pub(crate) path_kind: PathKind,
    pub(crate) static_prefix_len: usize,
    pub(crate) file_index: usize,
    pub(crate) list_position: usize,
}

impl RouteRank {
    pub(crate) fn with_host(&self, host: HostSpecificity) -> Precedence {
        Precedence {
            priority: self.priority,
            path_kind: self.path_kind,
            static_prefix_len: self.static_prefix_len,
            host,
            file_index: Reverse(self.file_index),
            list_position: Reverse(self.list_position),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rank() -> RouteRank {
        RouteRank {
            priority: 0,
            path_kind: PathKind::Param,
            static_prefix_len: 4,
            file_index: 5,
            list_position: 5,
        }
    }

    #[test]
    fn each_rule_outranks_the_ones_after_it() {
        let base = rank();
        let any = HostSpecificity::Any;
        let higher_priority = RouteRank {
            priority: 1,
            path_kind: PathKind::CatchAll,
            static_prefix_len: 0,
            file_index: 9,
            list_position: 9,
        };
        assert!(higher_priority.with_host(any) > base.with_host(HostSpecificity::Exact));

        let exact_path = RouteRank {
            path_kind: PathKind::Exact,
            static_prefix_len: 1,
            file_index: 9,
            ..base
        };
        assert!(exact_path.with_host(any) > base.with_host(HostSpecificity::Exact));

        let longer_prefix = RouteRank {
            static_prefix_len: 5,
            file_index: 9,
            ..base
        };
        assert!(longer_prefix.with_host(any) > base.with_host(HostSpecificity::Exact));

        let later = RouteRank {
            file_index: 9,
            ..base
        };
        assert!(later.with_host(HostSpecificity::Exact) > base.with_host(any));
        assert!(
            later.with_host(HostSpecificity::Wildcard { suffix_len: 3 })
                > base.with_host(HostSpecificity::Any)
        );
        assert!(
            later.with_host(HostSpecificity::Wildcard { suffix_len: 11 })
                > base.with_host(HostSpecificity::Wildcard { suffix_len: 3 })
        );
        assert!(base.with_host(any) > later.with_host(any));
    }
}
