//! The compiled [`Router`]: building it from route specs and matching requests against it.
//!
//! Routes are bucketed by host (exact hosts, wildcard suffixes, and routes for any host), each
//! bucket a segment trie. A request walks only the buckets its host can reach and keeps the
//! best candidate by [`Precedence`], so nothing is sorted or allocated per request.

use super::conditions::Conditions;
use super::fast_hash::FastMap;
use super::host::{
    HostBuffer, HostPattern, MAX_HOST_LEN, host_name, lowercase_host, wildcard_suffixes,
};
use super::pattern::{Pattern, after_root};
use super::precedence::{HostSpecificity, Precedence, RouteRank};
use super::trie::Node;
use super::{MatchOutcome, RequestView, RouteError, RouteMatch, RouteSpec};
use std::fmt;
use std::ops::RangeInclusive;

/// An immutable route table, built once per configuration snapshot.
///
/// Matching takes `&self`, holds no lock and does not allocate unless the outcome is
/// [`MatchOutcome::MethodNotAllowed`]; the table is `Send + Sync` whenever `T` is.
pub struct Router<T> {
    pub(super) routes: Vec<CompiledRoute<T>>,
    any_host: Node,
    exact_hosts: FastMap<Node>,
    /// Keyed by the suffix after `*.`.
    wildcard_hosts: FastMap<Node>,
    /// Shortest and longest wildcard suffix, so a request host's suffixes outside that range
    /// (usually the bare top-level domain) are not even hashed.
    wildcard_suffix_lengths: RangeInclusive<usize>,
}

/// One route in the form matching reads; the explanation ([`super::explain`]) reads it too.
pub(super) struct CompiledRoute<T> {
    pub(super) spec: RouteSpec,
    pub(super) value: T,
    pub(super) pattern: Pattern,
    pub(super) hosts: Vec<HostPattern>,
    pub(super) conditions: Conditions,
    pub(super) rank: RouteRank,
}

impl<T> Router<T> {
    /// A router with no routes: every request is `NotFound`.
    pub fn empty() -> Router<T> {
        Router {
            routes: Vec::new(),
            any_host: Node::default(),
            exact_hosts: FastMap::default(),
            wildcard_hosts: FastMap::default(),
            wildcard_suffix_lengths: 0..=0,
        }
    }

    /// Compiles `routes`.
    ///
    /// # Errors
    ///
    /// Every problem found in any route (bad path pattern, host, method or condition), each
    /// tagged with the route's [`RouteSpec::index`], so one run of the validator shows them all.
    pub fn build(routes: Vec<(RouteSpec, T)>) -> Result<Router<T>, Vec<RouteError>> {
        let mut errors = Vec::new();
        let mut compiled = Vec::with_capacity(routes.len());
        for (list_position, (spec, value)) in routes.into_iter().enumerate() {
            match compile_route(spec, value, list_position) {
                Ok(route) => compiled.push(route),
                Err(route_errors) => errors.extend(route_errors),
            }
        }
        if !errors.is_empty() {
            return Err(errors);
        }

        let mut router = Router {
            routes: Vec::new(),
            any_host: Node::default(),
            exact_hosts: FastMap::default(),
            wildcard_hosts: FastMap::default(),
            // Only read when `wildcard_hosts` is non-empty, by which time it is set below.
            wildcard_suffix_lengths: 0..=0,
        };
        for (route_id, route) in compiled.iter().enumerate() {
            if route.hosts.is_empty() {
                router.any_host.insert(&route.pattern, route_id);
            }
            for host in &route.hosts {
                let bucket = match host {
                    HostPattern::Exact(name) => router.exact_hosts.entry(name.clone()),
                    HostPattern::Wildcard(suffix) => router.wildcard_hosts.entry(suffix.clone()),
                };
                bucket.or_default().insert(&route.pattern, route_id);
            }
        }
        let suffix_lengths = router.wildcard_hosts.keys().map(|suffix| suffix.len());
        if let (Some(shortest), Some(longest)) =
            (suffix_lengths.clone().min(), suffix_lengths.max())
        {
            router.wildcard_suffix_lengths = shortest..=longest;
        }
        router.any_host.shrink();
        for node in router
            .exact_hosts
            .values_mut()
            .chain(router.wildcard_hosts.values_mut())
        {
            node.shrink();
        }
        router.routes = compiled;
        Ok(router)
    }

    /// Finds the route for `request`; see the module documentation for the rules.
    pub fn match_request<'r, 'p>(&'r self, request: &RequestView<'p>) -> MatchOutcome<'r, 'p, T> {
        let mut best: Option<(Precedence, &'r CompiledRoute<T>)> = None;
        let mut other_method_matched = false;
        self.for_each_path_match(request, |route, host| {
            let precedence = route.rank.with_host(host);
            // Once something matched, a route that cannot win needs no further checks: the
            // 405 answer only matters when nothing matched.
            if best.is_some_and(|(best_precedence, _)| precedence <= best_precedence) {
                return;
            }
            if !route.conditions.request_matches(request) {
                return;
            }
            if route.conditions.accepts_method(request.method) {
                best = Some((precedence, route));
            } else {
                other_method_matched = true;
            }
        });

        match best {
            Some((_, route)) => MatchOutcome::Matched(RouteMatch {
                value: &route.value,
                spec: &route.spec,
                params: route.pattern.capture(request.path),
                static_prefix_len: route.pattern.static_prefix_len(),
            }),
            None if other_method_matched => MatchOutcome::MethodNotAllowed {
                allow: self.allowed_methods(request),
            },
            None => MatchOutcome::NotFound,
        }
    }

    /// Number of routes in the table.
    pub fn len(&self) -> usize {
        self.routes.len()
    }

    /// Whether the table has no routes (every request is then [`MatchOutcome::NotFound`]).
    pub fn is_empty(&self) -> bool {
        self.routes.is_empty()
    }

    /// The `Allow` value: methods of every route matching all but the method. A second walk,
    /// because collecting during the first would allocate on the success path.
    fn allowed_methods(&self, request: &RequestView<'_>) -> String {
        let mut methods: Vec<&str> = Vec::new();
        self.for_each_path_match(request, |route, _host| {
            if route.conditions.request_matches(request) {
                methods.extend(route.conditions.methods());
            }
        });
        methods.sort_unstable();
        methods.dedup();
        methods.join(", ")
    }

    /// Calls `visit` for every route whose host and path match, with how the host matched.
    fn for_each_path_match<'r, F>(&'r self, request: &RequestView<'_>, mut visit: F)
    where
        F: FnMut(&'r CompiledRoute<T>, HostSpecificity),
    {
        if !request.path.starts_with('/') {
            return;
        }
        let rest = after_root(request.path);
        let mut visit_in = |node: &Node, host: HostSpecificity| {
            node.for_each_match(rest, &mut |route_id| {
                if let Some(route) = self.routes.get(route_id) {
                    visit(route, host);
                }
            });
        };

        visit_in(&self.any_host, HostSpecificity::Any);
        let Some(raw_host) = request.host else {
            return;
        };
        if self.exact_hosts.is_empty() && self.wildcard_hosts.is_empty() {
            return;
        }
        let mut buffer: HostBuffer = [0; MAX_HOST_LEN];
        let Some(host) = lowercase_host(host_name(raw_host), &mut buffer) else {
            return;
        };
        if let Some(node) = self.exact_hosts.get(host) {
            visit_in(node, HostSpecificity::Exact);
        }
        if !self.wildcard_hosts.is_empty() {
            let candidates = wildcard_suffixes(host)
                .filter(|suffix| self.wildcard_suffix_lengths.contains(&suffix.len()));
            for suffix in candidates {
                if let Some(node) = self.wildcard_hosts.get(suffix) {
                    let specificity = HostSpecificity::Wildcard {
                        suffix_len: suffix.len(),
                    };
                    visit_in(node, specificity);
                }
            }
        }
    }
}

impl<T> fmt::Debug for Router<T> {
    fn fmt(&self, formatter: &mut fmt::Formatter<'_>) -> fmt::Result {
        formatter
            .debug_struct("Router")
            .field("routes", &self.routes.len())
            .field("exact_hosts", &self.exact_hosts.len())
            .field("wildcard_hosts", &self.wildcard_hosts.len())
            .finish_non_exhaustive()
    }
}

fn compile_route<T>(
    spec: RouteSpec,
    value: T,
    list_position: usize,
) -> Result<CompiledRoute<T>, Vec<RouteError>> {
    let mut messages: Vec<(&'static str, String)> = Vec::new();
    let pattern = Pattern::parse(&spec.path)
        .map_err(|errors| messages.extend(errors.into_iter().map(|message| ("path", message))));
    let mut hosts = Vec::with_capacity(spec.hosts.len());
    for raw in &spec.hosts {
        match HostPattern::parse(raw) {
            Ok(host) => hosts.push(host),
            Err(message) => messages.push(("hosts", message)),
        }
    }
    hosts.sort();
    hosts.dedup();
    let conditions = Conditions::compile(&spec, &mut messages);

    match pattern {
        Ok(pattern) if messages.is_empty() => Ok(CompiledRoute {
            rank: RouteRank {
                priority: spec.priority,
                path_kind: pattern.kind(),
                static_prefix_len: pattern.static_prefix_len(),
                file_index: spec.index,
                list_position,
            },
            spec,
            value,
            pattern,
            hosts,
            conditions,
        }),
        _ => Err(messages
            .into_iter()
            .map(|(field, message)| RouteError {
                route_index: spec.index,
                field,
                message,
            })
            .collect()),
    }
}
