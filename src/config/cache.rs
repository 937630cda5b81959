//! Validation of the response cache's settings (top-level `cache:`, a route's `cache:`) and of
//! a route's `coalesce:` into the plans [`crate::cache`] runs.

use std::sync::Arc;
use std::time::Duration;

use super::schema::{CacheSection, CoalesceConfig, FileConfig, RouteConfig};
use super::validate::Checker;
use crate::policy::client_ip::Cidr;

const DEFAULT_MAX_SIZE: u64 = 128 * 1024 * 1024;
const DEFAULT_MAX_ENTRY_SIZE: u64 = 8 * 1024 * 1024;
/// TinyUFO weighs entries in KiB with a `u16`.
const LARGEST_ENTRY: u64 = 64 * 1024 * 1024;
const DEFAULT_LOCK_TIMEOUT: Duration = Duration::from_secs(10);
const DEFAULT_CLEANUP_INTERVAL: Duration = Duration::from_secs(60);
const DEFAULT_COALESCE_TIMEOUT: Duration = Duration::from_secs(10);
const DEFAULT_COALESCE_MAX_BODY: u64 = 1024 * 1024;

/// The store, shared by every caching route.
#[derive(Debug, Clone, PartialEq)]
pub struct CacheStorePlan {
    pub max_size: u64,
    /// The on-disk store's directory, when answers are kept on disk.
    pub disk_path: Option<std::path::PathBuf>,
    pub cleanup_interval: Duration,
    pub purge_allowed: Vec<Cidr>,
}

/// How one route caches.
#[derive(Debug, Clone, PartialEq)]
pub struct CachePolicy {
    /// Freshness when the upstream says nothing (no `Cache-Control` max-age, no `Expires`);
    /// `None`: such answers are not stored.
    pub default_ttl: Option<Duration>,
    pub stale_while_revalidate: u32,
    pub stale_if_error: u32,
    /// Path prefixes cached (empty: all) and not cached.
    pub included_paths: Vec<String>,
    pub excluded_paths: Vec<String>,
    /// Requests carrying this header skip the cache (lowercase).
    pub bypass_header: Option<http::HeaderName>,
    pub max_entry_size: usize,
    pub lock_timeout: Duration,
    pub cache_authorized: bool,
    pub cache_set_cookie: bool,
}

impl CachePolicy {
    /// Whether `path` is one this route caches.
    pub fn covers(&self, path: &str) -> bool {
        let matches = |prefix: &String| path.starts_with(prefix.as_str());
        (self.included_paths.is_empty() || self.included_paths.iter().any(matches))
            && !self.excluded_paths.iter().any(matches)
    }
}

#[derive(Debug, Clone, PartialEq)]
pub struct CoalescePlan {
    pub headers: Vec<http::HeaderName>,
    pub timeout: Duration,
    pub max_body: u64,
}

/// The store's plan, when any route caches.
pub(crate) fn store_plan(checker: &mut Checker, config: &FileConfig) -> Option<CacheStorePlan> {
    let global = config.cache.as_ref().filter(|section| section.enabled);
    let any_route = config
        .routes
        .iter()
        .any(|route| route.cache.as_ref().is_some_and(|section| section.enabled));
    if global.is_none() && !any_route {
        return None;
    }
    let section = config.cache.clone().unwrap_or_default();
    let max_size = section.max_size.map_or(DEFAULT_MAX_SIZE, |size| size.0);
    if max_size < 1024 * 1024 {
        checker.error("cache.max_size".into(), "at least 1MB");
    }
    let cleanup_interval = section
        .cleanup_interval
        .map_or(DEFAULT_CLEANUP_INTERVAL, |interval| interval.0);
    if cleanup_interval < Duration::from_secs(1) {
        checker.error("cache.cleanup_interval".into(), "at least 1s");
    }
    let purge_allowed =
        crate::policy::client_ip::parse_list(&section.purge_allowed, &mut |index, message| {
            checker.error(format!("cache.purge_allowed[{index}]"), message)
        });
    let disk_path = section.disk_path.as_ref().map(|path| {
        let directory = checker.base_dir().join(path);
        if let Err(error) = std::fs::create_dir_all(&directory) {
            checker.error(
                "cache.disk_path".into(),
                format!("cannot create {}: {error}", directory.display()),
            );
        }
        directory
    });
    Some(CacheStorePlan {
        max_size,
        disk_path,
        cleanup_interval,
        purge_allowed,
    })
}

/// The route's cache policy: its own `cache:` over the top-level one; `None` when the route
/// does not cache.
pub(crate) fn route_policy(
    checker: &mut Checker,
    key: &str,
    route: &RouteConfig,
    config: &FileConfig,
) -> Option<Arc<CachePolicy>> {
    let global = config.cache.as_ref().filter(|section| section.enabled);
    if let Some(own) = &route.cache {
        for (field, set) in [
            ("max_size", own.max_size.is_some()),
            ("cleanup_interval", own.cleanup_interval.is_some()),
            ("purge_allowed", !own.purge_allowed.is_empty()),
            ("disk_path", own.disk_path.is_some()),
        ] {
            if set {
                checker.error(
                    format!("{key}.cache.{field}"),
                    "a setting of the whole store: set it in the top-level cache: section",
                );
            }
        }
    }
    let enabled = match &route.cache {
        // A route's own section says whether it caches; without `enabled: true` it only
        // switches the top level's caching off for the route.
        Some(own) => own.enabled,
        None => global.is_some() && !route.disable.iter().any(|kind| kind == "cache"),
    };
    if !enabled {
        return None;
    }
    let empty = CacheSection::default();
    let base = global.unwrap_or(&empty);
    let own = route.cache.as_ref().unwrap_or(&empty);
    // The route's key where it sets one, else the top level's: errors name the one used.
    let pick = |own_set: bool| {
        if own_set {
            format!("{key}.cache")
        } else {
            "cache".to_string()
        }
    };
    let seconds = |value: Option<Duration>| -> u32 {
        value.map_or(0, |duration| {
            duration.as_secs().min(u64::from(u32::MAX)) as u32
        })
    };
    let default_ttl = own.default_ttl.or(base.default_ttl).map(|ttl| ttl.0);
    if default_ttl.is_some_and(|ttl| ttl.is_zero()) {
        checker.error(
            format!("{}.default_ttl", pick(own.default_ttl.is_some())),
            "must be greater than zero (leave it out to store only answers that say how long)",
        );
    }
    let max_entry_size = own
        .max_entry_size
        .or(base.max_entry_size)
        .map_or(DEFAULT_MAX_ENTRY_SIZE, |size| size.0);
    if max_entry_size == 0 || max_entry_size > LARGEST_ENTRY {
        checker.error(
            format!("{}.max_entry_size", pick(own.max_entry_size.is_some())),
            "from 1 byte to 64MB",
        );
    }
    let bypass_text = own.bypass_header.as_ref().or(base.bypass_header.as_ref());
    let bypass_header =
        bypass_text.and_then(|name| match http::HeaderName::from_bytes(name.as_bytes()) {
            Ok(header) => Some(header),
            Err(_) => {
                checker.error(
                    format!("{}.bypass_header", pick(own.bypass_header.is_some())),
                    format!("\"{name}\" is not a header name"),
                );
                None
            }
        });
    let mut paths = |own_paths: &Vec<String>, base_paths: &Vec<String>, field: &str| {
        let (list, where_) = if own_paths.is_empty() {
            (base_paths, "cache".to_string())
        } else {
            (own_paths, format!("{key}.cache"))
        };
        list.iter()
            .enumerate()
            .map(|(index, path)| {
                if !path.starts_with('/') {
                    checker.error(
                        format!("{where_}.{field}[{index}]"),
                        format!("\"{path}\" is not a path (it starts with /)"),
                    );
                }
                // `/static/*` and `/static/` mean the same prefix.
                path.trim_end_matches('*').to_string()
            })
            .collect::<Vec<String>>()
    };
    let included_paths = paths(&own.included_paths, &base.included_paths, "included_paths");
    let excluded_paths = paths(&own.excluded_paths, &base.excluded_paths, "excluded_paths");
    Some(Arc::new(CachePolicy {
        default_ttl,
        stale_while_revalidate: seconds(
            own.stale_while_revalidate
                .or(base.stale_while_revalidate)
                .map(|value| value.0),
        ),
        stale_if_error: seconds(
            own.stale_if_error
                .or(base.stale_if_error)
                .map(|value| value.0),
        ),
        included_paths,
        excluded_paths,
        bypass_header,
        max_entry_size: max_entry_size as usize,
        lock_timeout: own
            .lock_timeout
            .or(base.lock_timeout)
            .map_or(DEFAULT_LOCK_TIMEOUT, |value| value.0),
        cache_authorized: own
            .cache_authorized
            .or(base.cache_authorized)
            .unwrap_or(false),
        cache_set_cookie: own
            .cache_set_cookie
            .or(base.cache_set_cookie)
            .unwrap_or(false),
    }))
}

/// A route's `coalesce:` when it is switched on.
pub(crate) fn coalesce_plan(
    checker: &mut Checker,
    key: &str,
    config: &CoalesceConfig,
) -> Option<CoalescePlan> {
    if !config.enabled {
        return None;
    }
    let mut headers = Vec::new();
    for (index, name) in config.headers.iter().enumerate() {
        match http::HeaderName::from_bytes(name.as_bytes()) {
            Ok(header) => headers.push(header),
            Err(_) => checker.error(
                format!("{key}.coalesce.headers[{index}]"),
                format!("\"{name}\" is not a header name"),
            ),
        }
    }
    let timeout = config
        .timeout
        .map_or(DEFAULT_COALESCE_TIMEOUT, |value| value.0);
    if timeout.is_zero() {
        checker.error(
            format!("{key}.coalesce.timeout"),
            "must be greater than zero",
        );
    }
    Some(CoalescePlan {
        headers,
        timeout,
        max_body: config
            .max_body
            .map_or(DEFAULT_COALESCE_MAX_BODY, |value| value.0),
    })
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    /// One upstream and routes with `routes` (their YAML), under `top` (top-level keys).
    fn load(top: &str, routes: &str) -> Result<super::super::validate::ValidatedConfig, String> {
        let text = format!(
            "listeners:\n  - name: http\n    address: \"127.0.0.1:18080\"\nupstreams:\n\
             \x20 - name: origin\n    endpoints: [\"127.0.0.1:9001\"]\n{top}routes:\n{routes}"
        );
        super::super::load_text(Path::new("cache-test.yaml"), &text).map_err(|errors| {
            errors
                .iter()
                .map(ToString::to_string)
                .collect::<Vec<_>>()
                .join("\n")
        })
    }

    #[test]
    fn the_go_loom_section_caches_every_route_but_those_that_opt_out() {
        let validated = load(
            "cache:\n  enabled: true\n  max_size: 64MB\n  default_ttl: 5m\n  cleanup_interval: 30s\n  \
             stale_while_revalidate: 10s\n  excluded_paths: [/admin/*]\n  included_paths: []\n  \
             bypass_header: X-Skip\n",
            "  - id: a\n    path: /a/*\n    upstream: origin\n\
             \x20 - id: b\n    path: /b/*\n    upstream: origin\n    disable: [cache]\n\
             \x20 - id: c\n    path: /c/*\n    upstream: origin\n    cache:\n      enabled: true\n      default_ttl: 1s\n",
        )
        .unwrap_or_else(|errors| panic!("{errors}"));
        let store = validated.cache_store.as_ref().unwrap();
        assert_eq!(store.max_size, 64 * 1024 * 1024);
        assert_eq!(store.cleanup_interval, std::time::Duration::from_secs(30));
        let a = validated.routes[0].cache.as_ref().unwrap();
        assert_eq!(a.default_ttl, Some(std::time::Duration::from_secs(300)));
        assert_eq!(a.stale_while_revalidate, 10);
        assert_eq!(a.excluded_paths, vec!["/admin/".to_string()]);
        assert!(!a.covers("/admin/x") && a.covers("/a/x"));
        assert_eq!(a.bypass_header.as_ref().unwrap().as_str(), "x-skip");
        assert!(validated.routes[1].cache.is_none());
        let c = validated.routes[2].cache.as_ref().unwrap();
        assert_eq!(c.default_ttl, Some(std::time::Duration::from_secs(1)));
        assert_eq!(c.stale_while_revalidate, 10, "the rest from the top level");
    }

    #[test]
    fn cache_mistakes_are_named_with_their_key() {
        let errors = load(
            "cache:\n  enabled: true\n  max_size: 10KB\n  max_entry_size: 100MB\n  purge_allowed: [nonsense]\n",
            "  - id: a\n    path: /a/*\n    upstream: origin\n    cache:\n      enabled: true\n      max_size: 1GB\n      excluded_paths: [admin]\n\
             \x20   coalesce:\n      enabled: true\n",
        )
        .err()
        .expect("refused");
        for expected in [
            "cache.max_size: at least 1MB",
            "cache.max_entry_size: from 1 byte to 64MB",
            "cache.purge_allowed[0]",
            "routes[0].cache.max_size: a setting of the whole store",
            "routes[0].cache.excluded_paths[0]: \"admin\" is not a path",
            "routes[0].coalesce: this route caches",
        ] {
            assert!(
                errors.contains(expected),
                "missing {expected:?} in:\n{errors}"
            );
        }
        let without_store = load(
            "",
            "  - id: a\n    path: /a/*\n    upstream: origin\n    disable: [cache]\n",
        )
        .err()
        .expect("refused");
        assert!(
            without_store.contains("\"cache\" is not a global policy"),
            "{without_store}"
        );
    }
}
