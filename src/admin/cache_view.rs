//! `GET /cache` (the response cache's size and counts) and `DELETE /cache?prefix=` (purge
//! every cached URL under a prefix: `/api/` on every host, or `example.com/api/`).

use http::StatusCode;

use super::auth::Principal;
use super::reply::Reply;

pub fn show() -> Reply {
    let Some(store) = crate::cache::current_store() else {
        return Reply::error(
            StatusCode::NOT_FOUND,
            "not_found",
            "no route caches (see the cache: section)",
        );
    };
    let (bytes, entries, evictions) = store.usage();
    Reply::json(
        StatusCode::OK,
        serde_json::json!({
            "max_size": store.max_size(),
            "size": bytes,
            "entries": entries,
            "evictions": evictions,
        }),
    )
}

pub fn purge(principal: &Principal, query: Option<&str>) -> Reply {
    let prefix = query.and_then(|query| {
        query.split('&').find_map(|pair| {
            let (name, value) = pair.split_once('=')?;
            (name == "prefix").then(|| {
                percent_encoding::percent_decode_str(value)
                    .decode_utf8_lossy()
                    .into_owned()
            })
        })
    });
    let Some(prefix) = prefix.filter(|prefix| !prefix.is_empty()) else {
        return Reply::error(
            StatusCode::BAD_REQUEST,
            "missing_prefix",
            "name what to purge: DELETE /cache?prefix=/api/ (every host) or \
             ?prefix=example.com/api/ (one host)",
        );
    };
    let Some(store) = crate::cache::current_store() else {
        return Reply::error(
            StatusCode::NOT_FOUND,
            "not_found",
            "no route caches (see the cache: section)",
        );
    };
    let purged = store.purge_prefix(&prefix);
    log::info!(
        target: "loom::audit",
        "{} ({}) DELETE /cache?prefix={prefix}: {purged} cached answer(s) purged",
        principal.name,
        principal.role.as_str(),
    );
    Reply::json(
        StatusCode::OK,
        serde_json::json!({"prefix": prefix, "purged": purged}),
    )
}
