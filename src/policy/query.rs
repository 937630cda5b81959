//! Reading and removing one query parameter, for policies that take a credential from the
//! query string (`key_auth`, `jwt_auth`). Names and values are compared percent-decoded, as
//! clients encode them differently.

use std::borrow::Cow;

use percent_encoding::percent_decode_str;

/// The first value of the query parameter `name`, percent-decoded (`+` is not a space here:
/// credentials are base64-like and a literal `+` must survive).
pub fn query_parameter<'uri>(uri: &'uri http::Uri, name: &str) -> Option<Cow<'uri, str>> {
    let query = uri.query()?;
    query.split('&').find_map(|pair| {
        let (key, value) = pair.split_once('=').unwrap_or((pair, ""));
        (percent_decode_str(key).decode_utf8_lossy() == name)
            .then(|| percent_decode_str(value).decode_utf8_lossy())
    })
}

/// `uri` without any `name=` parameter; `None` when it has none (so nothing is rebuilt).
pub fn remove_query_parameter(uri: &http::Uri, name: &str) -> Option<http::Uri> {
    let query = uri.query()?;
    let is_named = |pair: &&str| {
        let key = pair.split_once('=').map_or(*pair, |(key, _)| key);
        percent_decode_str(key).decode_utf8_lossy() == name
    };
    if !query.split('&').any(|pair| is_named(&pair)) {
        return None;
    }
    let kept: Vec<&str> = query
        .split('&')
        .filter(|pair| !pair.is_empty() && !is_named(pair))
        .collect();
    let mut path_and_query = String::with_capacity(uri.path().len() + query.len());
    path_and_query.push_str(uri.path());
    if !kept.is_empty() {
        path_and_query.push('?');
        path_and_query.push_str(&kept.join("&"));
    }
    let mut parts = uri.clone().into_parts();
    parts.path_and_query = path_and_query.parse().ok();
    http::Uri::from_parts(parts).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_decoded_values_and_removes_every_copy() {
        let uri: http::Uri = "/a/b?x=1&api%5Fkey=k%2B1&y=2&api_key=again"
            .parse()
            .unwrap();
        assert_eq!(query_parameter(&uri, "api_key").as_deref(), Some("k+1"));
        assert_eq!(query_parameter(&uri, "missing"), None);
        let stripped = remove_query_parameter(&uri, "api_key").unwrap();
        assert_eq!(stripped.to_string(), "/a/b?x=1&y=2");
        let only: http::Uri = "/a?api_key=k".parse().unwrap();
        assert_eq!(
            remove_query_parameter(&only, "api_key")
                .unwrap()
                .to_string(),
            "/a"
        );
        assert!(remove_query_parameter(&only, "other").is_none());
    }
}
