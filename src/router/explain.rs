//! Why a request reaches one route and not the others, for the admin API's `/explain`.
//!
//! The chosen route is [`Router::match_request`]'s own answer, so an explanation cannot
//! disagree with what the gateway does with the same request. Why each other route was not
//! chosen comes from checking its host, path, method, headers and query one at a time, with
//! the same compiled patterns and conditions the table matches with; for a route that meets
//! them all, it is the precedence rule that put the chosen route ahead. Nothing here runs for
//! proxied requests, so it allocates freely.

use std::fmt;

use super::host::{
    HostBuffer, HostPattern, MAX_HOST_LEN, host_name, lowercase_host, wildcard_suffixes,
};
use super::precedence::{HostSpecificity, Precedence, PrecedenceRule};
use super::table::{CompiledRoute, Router};
use super::{MatchOutcome, RequestView, RouteSpec};

/// One kind of requirement a route can place on a request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Condition {
    Host,
    Path,
    Method,
    Header,
    QueryParam,
    ClientCertificate,
}

impl Condition {
    /// The name the admin API reports.
    pub fn as_str(self) -> &'static str {
        match self {
            Condition::Host => "host",
            Condition::Path => "path",
            Condition::Method => "method",
            Condition::Header => "header",
            Condition::QueryParam => "query_param",
            Condition::ClientCertificate => "client_certificate",
        }
    }
}

/// One requirement the request does not meet.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Mismatch {
    pub condition: Condition,
    /// Says what the route wanted and what the request had, e.g. `header x-tenant is "red",
    /// wanted "blue"`.
    pub message: String,
}

impl fmt::Display for Mismatch {
    fn fmt(&self, formatter: &mut fmt::Formatter<'_>) -> fmt::Result {
        formatter.write_str(&self.message)
    }
}

/// Why a route other than the chosen one does not get the request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum NotChosen<'r> {
    /// The requirements it fails; never empty.
    Mismatched(Vec<Mismatch>),
    /// It meets every requirement, but the chosen route ranks higher by `rule`.
    Outranked {
        winner: &'r RouteSpec,
        rule: PrecedenceRule,
        /// How the winner compares on that rule, e.g. `priority 5 over 0`.
        detail: String,
    },
}

/// The verdict on one route that was not chosen.
#[derive(Debug)]
pub struct RouteVerdict<'r, T> {
    pub spec: &'r RouteSpec,
    pub value: &'r T,
    pub not_chosen: NotChosen<'r>,
}

/// The router's decision for one request and the reason every other route lost.
#[derive(Debug)]
pub struct Explanation<'r, 'p, T> {
    /// Exactly what [`Router::match_request`] returns for the request.
    pub outcome: MatchOutcome<'r, 'p, T>,
    /// Every route except the chosen one, in the order given to [`Router::build`].
    pub others: Vec<RouteVerdict<'r, T>>,
}

impl<T> Router<T> {
    /// Matches `request` as [`Router::match_request`] does and says, for every route that
    /// did not win, which of its requirements the request fails or which precedence rule
    /// ranked it below the winner.
    ///
    /// For the admin API, not the request path: it checks every route and allocates.
    pub fn explain<'r, 'p>(&'r self, request: &RequestView<'p>) -> Explanation<'r, 'p, T> {
        let outcome = self.match_request(request);
        let winner = match &outcome {
            MatchOutcome::Matched(found) => self
                .routes
                .iter()
                .find(|route| std::ptr::eq(&route.spec, found.spec)),
            MatchOutcome::MethodNotAllowed { .. } | MatchOutcome::NotFound => None,
        };
        let winner = winner.and_then(|route| {
            let host = host_specificity(&route.hosts, request.host)?;
            Some((route, route.rank.with_host(host)))
        });
        let others = self
            .routes
            .iter()
            .filter(|route| !winner.is_some_and(|(chosen, _)| std::ptr::eq(chosen, *route)))
            .map(|route| RouteVerdict {
                spec: &route.spec,
                value: &route.value,
                not_chosen: not_chosen(route, request, winner),
            })
            .collect();
        Explanation { outcome, others }
    }
}

fn not_chosen<'r, T>(
    route: &CompiledRoute<T>,
    request: &RequestView<'_>,
    winner: Option<(&'r CompiledRoute<T>, Precedence)>,
) -> NotChosen<'r> {
    let mut mismatches = Vec::new();
    let host = host_specificity(&route.hosts, request.host);
    if host.is_none() {
        let wanted = route.spec.hosts.join(", ");
        let message = match request.host {
            Some(raw) => format!("host {raw:?} is not one of {wanted}"),
            None => format!("the request has no host; the route needs one of {wanted}"),
        };
        mismatches.push(Mismatch {
            condition: Condition::Host,
            message,
        });
    }
    if !route.pattern.matches(request.path) {
        mismatches.push(Mismatch {
            condition: Condition::Path,
            message: format!(
                "path {:?} does not match the pattern {:?}",
                request.path, route.spec.path
            ),
        });
    }
    route.conditions.mismatches(request, &mut mismatches);
    match (host, winner) {
        (Some(host), Some((chosen, chosen_precedence))) if mismatches.is_empty() => {
            let (rule, detail) = chosen_precedence.deciding_rule(&route.rank.with_host(host));
            NotChosen::Outranked {
                winner: &chosen.spec,
                rule,
                detail,
            }
        }
        // Empty only if these checks disagreed with the table, which the tests below rule out.
        _ => NotChosen::Mismatched(mismatches),
    }
}

/// How specifically the request's host matches one of `hosts` (the best of them, as the
/// table keeps the best bucket a route is found in), or `None` when it matches none. Reduces
/// the host exactly as the table's walk does.
fn host_specificity(hosts: &[HostPattern], request_host: Option<&str>) -> Option<HostSpecificity> {
    if hosts.is_empty() {
        return Some(HostSpecificity::Any);
    }
    let mut buffer: HostBuffer = [0; MAX_HOST_LEN];
    let host = lowercase_host(host_name(request_host?), &mut buffer)?;
    hosts
        .iter()
        .filter_map(|pattern| match pattern {
            HostPattern::Exact(name) => (**name == *host).then_some(HostSpecificity::Exact),
            HostPattern::Wildcard(suffix) => wildcard_suffixes(host)
                .any(|candidate| candidate == &**suffix)
                .then_some(HostSpecificity::Wildcard {
                    suffix_len: suffix.len(),
                }),
        })
        .max()
}

#[cfg(test)]
mod tests {
    use super::super::pattern::{Pattern, after_root};
    use super::super::trie::Node;
    use super::*;

    fn spec(id: &str, path: &str) -> RouteSpec {
        RouteSpec {
            id: id.to_string(),
            path: path.to_string(),
            ..RouteSpec::default()
        }
    }

    fn owned(pairs: &[(&str, &str)]) -> Vec<(String, String)> {
        pairs
            .iter()
            .map(|(name, value)| (name.to_string(), value.to_string()))
            .collect()
    }

    /// The table of the integration test's kind: hosts, prefixes against exact paths,
    /// methods, headers, query and priorities, with some routes overlapping on purpose.
    fn specs() -> Vec<RouteSpec> {
        let mut specs = vec![
            RouteSpec {
                hosts: vec!["api.example.com".into()],
                ..spec("exact-host", "/api/*")
            },
            RouteSpec {
                hosts: vec!["*.example.com".into(), "*.eu.example.com".into()],
                ..spec("wildcard-host", "/api/*")
            },
            spec("api-prefix", "/api/*"),
            spec("api-exact", "/api/users"),
            spec("user", "/api/users/:id"),
            RouteSpec {
                methods: vec!["POST".into(), "put".into()],
                ..spec("writes", "/items")
            },
            RouteSpec {
                headers: owned(&[("x-tenant", "blue")]),
                ..spec("tenant-blue", "/tenant")
            },
            RouteSpec {
                headers: owned(&[("x-debug", "*")]),
                query_params: owned(&[("v", "2")]),
                ..spec("debug-v2", "/tenant")
            },
            spec("low", "/contest/*"),
            RouteSpec {
                priority: 5,
                ..spec("high", "/contest/*")
            },
            spec("tie-first", "/tie"),
            spec("tie-second", "/tie"),
            spec("slash", "/dir/"),
            spec("root", "/"),
        ];
        for (index, spec) in specs.iter_mut().enumerate() {
            spec.index = index;
        }
        specs
    }

    fn build(specs: Vec<RouteSpec>) -> Router<String> {
        let routes = specs
            .into_iter()
            .map(|spec| {
                let id = spec.id.clone();
                (spec, id)
            })
            .collect();
        match Router::build(routes) {
            Ok(router) => router,
            Err(errors) => panic!("routes should build: {errors:?}"),
        }
    }

    struct Probe {
        method: &'static str,
        host: Option<&'static str>,
        path: &'static str,
        query: Option<&'static str>,
        headers: &'static [(&'static str, &'static str)],
    }

    const fn get(path: &'static str) -> Probe {
        Probe {
            method: "GET",
            host: None,
            path,
            query: None,
            headers: &[],
        }
    }

    const PROBES: &[Probe] = &[
        Probe {
            host: Some("api.example.com"),
            ..get("/api/x")
        },
        Probe {
            host: Some("API.Example.com:8443"),
            ..get("/api/users")
        },
        Probe {
            host: Some("a.eu.example.com"),
            ..get("/api/x")
        },
        Probe {
            host: Some("example.com"),
            ..get("/api")
        },
        get("/api/users/7"),
        get("/api/users/"),
        get("/items"),
        Probe {
            method: "POST",
            ..get("/items")
        },
        Probe {
            method: "post",
            ..get("/items")
        },
        get("/tenant"),
        Probe {
            headers: &[("x-tenant", "blue")],
            ..get("/tenant")
        },
        Probe {
            headers: &[("x-tenant", "red"), ("x-debug", "1")],
            query: Some("v=2"),
            ..get("/tenant")
        },
        Probe {
            headers: &[("x-debug", "")],
            query: Some("v=3&v"),
            ..get("/tenant")
        },
        get("/contest/a/b"),
        get("/tie"),
        get("/dir"),
        get("/dir/"),
        get("/"),
        get("/nothing/here"),
        get("relative"),
    ];

    /// What a test reads of an explanation; it borrows only the router, not the request.
    struct Summary<'r> {
        chosen: Option<String>,
        others: Vec<(&'r RouteSpec, NotChosen<'r>)>,
    }

    fn explain_probe<'r>(router: &'r Router<String>, probe: &Probe) -> Summary<'r> {
        let lookup = |name: &str| {
            probe
                .headers
                .iter()
                .find(|(candidate, _)| *candidate == name)
                .map(|&(_, value)| value)
        };
        let request = RequestView {
            method: probe.method,
            host: probe.host,
            path: probe.path,
            query: probe.query,
            headers: &lookup,
            client_certificate: &crate::router::no_client_certificate,
        };
        let explanation = router.explain(&request);
        Summary {
            chosen: match &explanation.outcome {
                MatchOutcome::Matched(found) => Some(found.value.clone()),
                _ => None,
            },
            others: explanation
                .others
                .into_iter()
                .map(|verdict| (verdict.spec, verdict.not_chosen))
                .collect(),
        }
    }

    /// The per-condition checks agree with the table: a route has no mismatch exactly when a
    /// table holding only that route matches the request, and every route that meets all its
    /// conditions but lost is ranked below the winner by the rule named.
    #[test]
    fn reasons_agree_with_the_table() {
        let all = specs();
        let router = build(all.clone());
        for probe in PROBES {
            let explanation = explain_probe(&router, probe);
            let winner = explanation.chosen;
            assert_eq!(
                explanation.others.len() + usize::from(winner.is_some()),
                all.len()
            );
            for (spec, not_chosen) in &explanation.others {
                let alone = build(vec![(*spec).clone()]);
                let alone_matches = explain_probe(&alone, probe).chosen.is_some();
                match not_chosen {
                    NotChosen::Mismatched(mismatches) => {
                        assert!(
                            !mismatches.is_empty(),
                            "{} lost for no reason on {}",
                            spec.id,
                            probe.path
                        );
                        assert!(
                            !alone_matches,
                            "{} has mismatches {mismatches:?} but matches {} on its own",
                            spec.id, probe.path
                        );
                    }
                    NotChosen::Outranked { winner: by, .. } => {
                        assert!(alone_matches, "{} outranked but cannot match", by.id);
                        assert_eq!(Some(&by.id), winner.as_ref());
                    }
                }
            }
        }
    }

    fn reasons<'r>(router: &'r Router<String>, probe: &Probe, id: &str) -> NotChosen<'r> {
        explain_probe(router, probe)
            .others
            .into_iter()
            .find(|(spec, _)| spec.id == id)
            .map(|(_, not_chosen)| not_chosen)
            .unwrap_or_else(|| panic!("{id} was chosen or does not exist"))
    }

    fn conditions(not_chosen: &NotChosen<'_>) -> Vec<Condition> {
        match not_chosen {
            NotChosen::Mismatched(mismatches) => mismatches
                .iter()
                .map(|mismatch| mismatch.condition)
                .collect(),
            NotChosen::Outranked { .. } => Vec::new(),
        }
    }

    fn rule(not_chosen: &NotChosen<'_>) -> Option<PrecedenceRule> {
        match not_chosen {
            NotChosen::Outranked { rule, .. } => Some(*rule),
            NotChosen::Mismatched(_) => None,
        }
    }

    #[test]
    fn names_the_failing_condition() {
        let router = build(specs());
        let api = &PROBES[0];
        assert_eq!(
            explain_probe(&router, api).chosen.as_deref(),
            Some("exact-host")
        );
        assert_eq!(
            rule(&reasons(&router, api, "wildcard-host")),
            Some(PrecedenceRule::Host)
        );
        assert_eq!(
            rule(&reasons(&router, api, "api-prefix")),
            Some(PrecedenceRule::Host)
        );
        assert_eq!(
            conditions(&reasons(&router, api, "api-exact")),
            [Condition::Path]
        );

        let bare = &PROBES[3];
        assert_eq!(
            conditions(&reasons(&router, bare, "exact-host")),
            [Condition::Host]
        );
        assert_eq!(
            conditions(&reasons(&router, bare, "wildcard-host")),
            [Condition::Host]
        );

        let items = &PROBES[6];
        assert!(explain_probe(&router, items).chosen.is_none());
        let NotChosen::Mismatched(method) = reasons(&router, items, "writes") else {
            panic!("writes should be a method mismatch");
        };
        assert_eq!(method[0].condition, Condition::Method);
        assert_eq!(
            method[0].message,
            "method GET is not allowed (allowed: POST, PUT)"
        );

        let tenant = &PROBES[9];
        let NotChosen::Mismatched(header) = reasons(&router, tenant, "tenant-blue") else {
            panic!("tenant-blue should be a header mismatch");
        };
        assert_eq!(
            header[0].message,
            "header x-tenant is missing (wanted \"blue\")"
        );
        let red = &PROBES[11];
        assert_eq!(
            explain_probe(&router, red).chosen.as_deref(),
            Some("debug-v2")
        );
        let NotChosen::Mismatched(header) = reasons(&router, red, "tenant-blue") else {
            panic!("tenant-blue should be a header mismatch");
        };
        assert_eq!(
            header[0].message,
            "header x-tenant is \"red\", wanted \"blue\""
        );
        let wrong_version = &PROBES[12];
        let NotChosen::Mismatched(query) = reasons(&router, wrong_version, "debug-v2") else {
            panic!("debug-v2 should be a query mismatch");
        };
        assert_eq!(query.len(), 1);
        assert_eq!(query[0].condition, Condition::QueryParam);
        assert_eq!(
            query[0].message,
            "query parameter v is present but not \"2\""
        );

        let contest = &PROBES[13];
        let low = reasons(&router, contest, "low");
        assert_eq!(rule(&low), Some(PrecedenceRule::Priority));
        assert!(
            matches!(low, NotChosen::Outranked { detail, .. } if detail == "priority 5 over 0")
        );
        let tie = &PROBES[14];
        assert_eq!(
            explain_probe(&router, tie).chosen.as_deref(),
            Some("tie-first")
        );
        assert_eq!(
            rule(&reasons(&router, tie, "tie-second")),
            Some(PrecedenceRule::FileOrder)
        );
        let user = &PROBES[4];
        assert_eq!(
            rule(&reasons(&router, user, "api-prefix")),
            Some(PrecedenceRule::PathKind)
        );
        let nowhere = &PROBES[18];
        assert_eq!(
            conditions(&reasons(&router, nowhere, "exact-host")),
            [Condition::Host, Condition::Path]
        );
    }

    /// [`Pattern::matches`] accepts exactly the paths for which the trie reports the pattern.
    #[test]
    fn pattern_check_agrees_with_the_trie() {
        let patterns = [
            "/", "/a", "/a/", "/a/b", "/a/:x", "/a/:x/", "/a/:x/c", "/a/*", "/a/*rest", "/*",
            "/:x", "/:x/*", "/a/b/*",
        ];
        let paths = [
            "/", "/a", "/a/", "/a/b", "/a/b/", "/a/b/c", "/a/x/c", "/b", "/b/", "//", "/a//", "",
            "a",
        ];
        for raw in patterns {
            let pattern = match Pattern::parse(raw) {
                Ok(pattern) => pattern,
                Err(errors) => panic!("{raw}: {errors:?}"),
            };
            let mut root = Node::default();
            root.insert(&pattern, 0);
            for path in paths {
                let mut in_trie = false;
                if path.starts_with('/') {
                    root.for_each_match(after_root(path), &mut |_| in_trie = true);
                }
                assert_eq!(
                    pattern.matches(path),
                    in_trie,
                    "pattern {raw} on path {path:?}"
                );
            }
        }
    }
}
