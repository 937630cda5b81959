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

/// The precedence rule that decided between two routes that both match a request, in the
/// order of the module documentation; [`Precedence::deciding_rule`] names it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PrecedenceRule {
    /// Rule 1: higher `priority`.
    Priority,
    /// Rule 2: exact path over parameters over catch-all.
    PathKind,
    /// Rule 2: the longer static prefix, between two paths of the same kind.
    StaticPrefix,
    /// Rule 3: exact host over wildcard (longer suffix first) over no host.
    Host,
    /// Rule 4: earlier in the file.
    FileOrder,
}

impl PrecedenceRule {
    /// The name the admin API reports.
    pub fn as_str(self) -> &'static str {
        match self {
            PrecedenceRule::Priority => "priority",
            PrecedenceRule::PathKind => "path_kind",
            PrecedenceRule::StaticPrefix => "static_prefix",
            PrecedenceRule::Host => "host",
            PrecedenceRule::FileOrder => "file_order",
        }
    }
}

impl PathKind {
    fn describe(self) -> &'static str {
        match self {
            PathKind::CatchAll => "a catch-all path",
            PathKind::Param => "a path with parameters",
            PathKind::Exact => "an exact path",
        }
    }
}

impl HostSpecificity {
    fn describe(self) -> String {
        match self {
            HostSpecificity::Any => "no host".to_string(),
            HostSpecificity::Wildcard { suffix_len } => {
                format!("a wildcard host with a {suffix_len}-byte suffix")
            }
            HostSpecificity::Exact => "an exact host".to_string(),
        }
    }
}

impl Precedence {
    /// The first rule on which `self` and `other` differ, with a sentence saying how this key
    /// compares on it, e.g. `priority 5 over 0`. Follows the field order of the derived `Ord`,
    /// so it names the rule that made one of them win.
    pub(crate) fn deciding_rule(&self, other: &Precedence) -> (PrecedenceRule, String) {
        if self.priority != other.priority {
            let detail = format!("priority {} over {}", self.priority, other.priority);
            (PrecedenceRule::Priority, detail)
        } else if self.path_kind != other.path_kind {
            let detail = format!(
                "{} over {}",
                self.path_kind.describe(),
                other.path_kind.describe()
            );
            (PrecedenceRule::PathKind, detail)
        } else if self.static_prefix_len != other.static_prefix_len {
            let detail = format!(
                "a {}-byte static path prefix over {} bytes",
                self.static_prefix_len, other.static_prefix_len
            );
            (PrecedenceRule::StaticPrefix, detail)
        } else if self.host != other.host {
            let detail = format!("{} over {}", self.host.describe(), other.host.describe());
            (PrecedenceRule::Host, detail)
        } else {
            let detail = format!(
                "route {} comes before route {} in the file",
                self.file_index.0, other.file_index.0
            );
            (PrecedenceRule::FileOrder, detail)
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

    #[test]
    fn names_the_rule_that_decided() {
        let base = rank();
        let any = HostSpecificity::Any;
        let cases = [
            (
                RouteRank {
                    priority: 2,
                    ..base
                },
                PrecedenceRule::Priority,
            ),
            (
                RouteRank {
                    path_kind: PathKind::Exact,
                    ..base
                },
                PrecedenceRule::PathKind,
            ),
            (
                RouteRank {
                    static_prefix_len: 9,
                    ..base
                },
                PrecedenceRule::StaticPrefix,
            ),
            (
                RouteRank {
                    file_index: 1,
                    list_position: 1,
                    ..base
                },
                PrecedenceRule::FileOrder,
            ),
        ];
        for (winner, rule) in cases {
            let (found, _) = winner.with_host(any).deciding_rule(&base.with_host(any));
            assert_eq!(found, rule);
        }
        let (found, detail) = base
            .with_host(HostSpecificity::Exact)
            .deciding_rule(&base.with_host(HostSpecificity::Wildcard { suffix_len: 3 }));
        assert_eq!(found, PrecedenceRule::Host);
        assert_eq!(
            detail,
            "an exact host over a wildcard host with a 3-byte suffix"
        );
        let (_, detail) = RouteRank {
            priority: 5,
            ..base
        }
        .with_host(any)
        .deciding_rule(&base.with_host(any));
        assert_eq!(detail, "priority 5 over 0");
    }
}
