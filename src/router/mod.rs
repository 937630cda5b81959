//! The route table: compiled once per configuration snapshot, then matched against every
//! request without locks or allocation.
//!
//! A [`Router`] is built from the whole route list at once so that every mistake in the
//! configuration is reported together ([`Router::build`] returns all [`RouteError`]s), and so
//! that matching never has to consider a half-built table. It is immutable afterwards; a
//! reload builds a new one and swaps it in.
//!
//! # Path patterns
//!
//! * Exact: `/health`. Every segment is compared byte for byte (case-sensitive).
//! * Parameters: `/users/:id/posts/:post_id`. A parameter matches exactly one non-empty
//!   segment and is captured under its name (letters, digits and `_`).
//! * Catch-all: `/api/*` or `/files/*path`, only as the last segment. It matches the rest of
//!   the path, which may be empty: `/api/*` matches `/api`, `/api/` and `/api/a/b`. A named
//!   catch-all captures the rest without its leading `/` (`a/b`); an unnamed one captures
//!   nothing.
//! * A trailing slash is significant: `/users` and `/users/` are different exact patterns.
//! * Patterns must already be in the form [`normalize_path`] produces (no `//`, `.`, `..` or
//!   escaped unreserved characters), because requests are normalised before matching and a
//!   pattern in any other form could never match.
//!
//! # Hosts, methods, headers and query
//!
//! * `hosts` empty matches any host. `api.example.com` matches that host exactly;
//!   `*.example.com` matches `a.example.com` and `a.b.example.com` but not `example.com`.
//!   The request host is compared case-insensitively, without its `:port` and trailing dot.
//! * `methods` empty matches any method; otherwise the request method must be listed.
//! * `headers`: each named header (name case-insensitive) must be present with exactly the
//!   given value, or with any value when the value is `*`.
//! * `query_params`: each named parameter must be present with exactly the given value (after
//!   percent-decoding and `+` as space), or with any value when the value is `*`.
//! * `client_certificate`: the connection's client certificate, as verified in the TLS
//!   handshake (see [`crate::gateway::client_cert`]). `presented: true` needs one, and when
//!   `subjects` is not empty its subject CN or one of its SANs must be listed;
//!   `presented: false` matches only requests without one.
//!
//! # Precedence
//!
//! Among the routes whose host, path, methods, headers and query all match the request, the
//! winner is decided by these rules, each consulted only when the previous ones tie:
//!
//! 1. Higher `priority` wins.
//! 2. Path specificity: an exact path beats one with parameters, which beats one with a
//!    catch-all; between two paths of the same kind, the longer static prefix (the text before
//!    the first parameter or catch-all) wins.
//! 3. Host specificity: an exact host beats a wildcard host, which beats a route without hosts;
//!    between two wildcard hosts, the longer suffix wins (`*.eu.example.com` over
//!    `*.example.com`).
//! 4. File order: the lower `index` wins (and, if even that ties, the earlier entry in the list
//!    given to [`Router::build`]).
//!
//! If no route matches fully but at least one matches everything except the method, the
//! outcome is [`MatchOutcome::MethodNotAllowed`] listing the methods of all such routes, so the
//! gateway can answer 405 with an `Allow` header. Otherwise it is [`MatchOutcome::NotFound`].
//!
//! [`Router::explain`] gives the same outcome together with the reason every other route lost
//! (a failed condition, or the rule above that ranked it lower), for the admin API.
//!
//! # Example
//!
//! ```
//! use loom::router::{MatchOutcome, RequestView, RouteSpec, Router, normalize_path};
//!
//! let route = RouteSpec {
//!     id: "user".to_string(),
//!     path: "/users/:id".to_string(),
//!     methods: vec!["GET".to_string()],
//!     ..RouteSpec::default()
//! };
//! let router = Router::build(vec![(route, "users-service")]).map_err(|errors| errors.len())?;
//!
//! let path = normalize_path("/users/./42").map_err(|_| 0usize)?;
//! let no_headers = |_: &str| None;
//! let request = RequestView {
//!     method: "GET",
//!     host: Some("api.example.com:8443"),
//!     path: &path,
//!     query: None,
//!     headers: &no_headers,
//!     client_certificate: &loom::router::no_client_certificate,
//! };
//! match router.match_request(&request) {
//!     MatchOutcome::Matched(found) => {
//!         assert_eq!(*found.value, "users-service");
//!         assert_eq!(found.params.get("id"), Some("42"));
//!     }
//!     other => panic!("unexpected outcome {other:?}"),
//! }
//! # Ok::<(), usize>(())
//! ```

mod conditions;
mod explain;
mod fast_hash;
mod host;
mod params;
mod path;
mod pattern;
mod precedence;
mod table;
mod trie;

use std::fmt;

use crate::gateway::client_cert::ClientIdentity;

pub use explain::{Condition, Explanation, Mismatch, NotChosen, RouteVerdict};
pub use params::{PathParams, PathParamsIter};
pub use path::{PathError, normalize_path, strip_static_prefix};
pub use precedence::PrecedenceRule;
pub use table::Router;

/// What a route requires of a request, as written in the configuration.
///
/// The router keeps the spec as given and hands it back in [`RouteMatch::spec`], so the
/// gateway can read the route's id and settings without a second lookup.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RouteSpec {
    /// The route's name, used in logs and metrics. Several specs may share one id (one route
    /// with several paths).
    pub id: String,
    /// Empty means any host; `api.example.com` is exact; `*.example.com` is a wildcard that
    /// matches any subdomain at any depth but not `example.com` itself.
    pub hosts: Vec<String>,
    /// The path pattern; see the module documentation.
    pub path: String,
    /// Empty means any method. Compared with the request method after upper-casing these.
    pub methods: Vec<String>,
    /// Required request headers: name (case-insensitive) and exact value; `*` means present
    /// with any value.
    pub headers: Vec<(String, String)>,
    /// Required query parameters: name and exact value; `*` means present with any value.
    pub query_params: Vec<(String, String)>,
    /// What the connection's client certificate must be; `None` does not look at it.
    pub client_certificate: Option<CertificateRequirement>,
    /// Higher wins, before any other precedence rule.
    pub priority: i32,
    /// Position in the configuration file: the last tie-breaker, and the index reported in
    /// [`RouteError::route_index`].
    pub index: usize,
}

/// A route's requirement on the client certificate (`client_certificate:` on a route).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CertificateRequirement {
    /// `true`: a verified certificate is needed; `false`: only requests without one match.
    pub presented: bool,
    /// With `presented`, the certificate's CN or one of its SANs must be one of these
    /// (compared exactly); empty accepts any certificate the listener's CA verified.
    pub subjects: Vec<String>,
}

/// One problem with one route, found while building the [`Router`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RouteError {
    /// The offending route's [`RouteSpec::index`], so the message can point into the file.
    pub route_index: usize,
    /// The [`RouteSpec`] field at fault (`"path"`, `"hosts"`, `"methods"`, `"headers"`,
    /// `"query_params"` or `"client_certificate"`), so the configuration layer can name the exact key.
    pub field: &'static str,
    /// What is wrong, phrased for the person editing the configuration.
    pub message: String,
}

impl fmt::Display for RouteError {
    fn fmt(&self, formatter: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            formatter,
            "route {} {}: {}",
            self.route_index, self.field, self.message
        )
    }
}

impl std::error::Error for RouteError {}

/// A borrowed view of the request, so that matching needs no allocation to set up.
///
/// Build one per request, together with its header closure: the closure's return type ties
/// `'a` exactly (a trait object's output type cannot be shortened), so a closure reused across
/// requests would demand that every path outlive it.
pub struct RequestView<'a> {
    /// The request method, as received (methods are case-sensitive in HTTP).
    pub method: &'a str,
    /// The `Host` header or `:authority`; may include `:port`.
    pub host: Option<&'a str>,
    /// The path, already normalised by [`normalize_path`], without the query.
    pub path: &'a str,
    /// The raw query string, without the `?`.
    pub query: Option<&'a str>,
    /// Looks a header up by its lowercase name.
    pub headers: &'a dyn Fn(&str) -> Option<&'a str>,
    /// The connection's verified client certificate. A function, so that only a request that
    /// reaches a route with a `client_certificate` condition pays for the lookup.
    pub client_certificate: &'a dyn Fn() -> Option<&'a ClientIdentity>,
}

/// For a [`RequestView`] of a request without a client certificate.
pub fn no_client_certificate<'a>() -> Option<&'a ClientIdentity> {
    None
}

impl fmt::Debug for RequestView<'_> {
    fn fmt(&self, formatter: &mut fmt::Formatter<'_>) -> fmt::Result {
        formatter
            .debug_struct("RequestView")
            .field("method", &self.method)
            .field("host", &self.host)
            .field("path", &self.path)
            .field("query", &self.query)
            .finish_non_exhaustive()
    }
}

/// What the router decided for one request.
#[derive(Debug)]
pub enum MatchOutcome<'r, 'p, T> {
    /// The winning route, by the precedence rules in the module documentation.
    Matched(RouteMatch<'r, 'p, T>),
    /// Some route matched everything but the method: answer 405 with this `Allow` value
    /// (the methods of every such route, sorted, deduplicated, separated by `", "`).
    MethodNotAllowed {
        /// The value for the response's `Allow` header, e.g. `GET, POST`.
        allow: String,
    },
    /// No route matched host, path, headers and query.
    NotFound,
}

/// The route chosen for a request and what was captured from its path.
#[derive(Debug)]
pub struct RouteMatch<'r, 'p, T> {
    /// The value the route was built with (typically the compiled route settings).
    pub value: &'r T,
    /// The route's spec, as given to [`Router::build`].
    pub spec: &'r RouteSpec,
    /// Named parameters: `:id` as `("id", value)`, `*rest` as `("rest", value)`. Names borrow
    /// from the router (`'r`), values from the request path (`'p`).
    pub params: PathParams<'r, 'p>,
    /// Length of the pattern's static prefix (the text before the first parameter or
    /// catch-all, without the `/` that precedes it); pass it to [`strip_static_prefix`].
    pub static_prefix_len: usize,
}

#[cfg(test)]
mod tests;
