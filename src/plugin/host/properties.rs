//! `proxy_get_property`: the well-known attributes of Envoy that plugins read (request,
//! source, destination, connection, response, upstream, plugin), plus values the request's
//! plugins stored with `proxy_set_property`. Numbers are 8-byte little-endian integers and
//! addresses `ip:port` strings, as Envoy encodes them.

use bytes::Bytes;

use super::HostState;
use crate::plugin::abi::property_segments;

/// The canonical (dotted) form of a property path, used as the key of stored properties.
pub fn normalize(path: &[u8]) -> Vec<u8> {
    property_segments(path).join(&b'.')
}

fn number(value: u64) -> Option<Bytes> {
    Some(Bytes::copy_from_slice(&value.to_le_bytes()))
}

fn text(value: &str) -> Option<Bytes> {
    Some(Bytes::copy_from_slice(value.as_bytes()))
}

/// The entry of the route's `metadata:` that a route-metadata property names: Envoy's
/// `route_metadata` (or `xds.route_metadata`) `.filter_metadata.envoy.filters.http.wasm.KEY`,
/// where the Wasm filter's own metadata lives.
fn route_metadata_key(key: &str) -> Option<&str> {
    const FILTER: &str = "filter_metadata.envoy.filters.http.wasm.";
    key.strip_prefix("route_metadata.")
        .or_else(|| key.strip_prefix("xds.route_metadata."))?
        .strip_prefix(FILTER)
        .filter(|name| !name.is_empty())
}

/// The host's name, read once.
fn node_id() -> &'static str {
    static NODE_ID: std::sync::LazyLock<String> = std::sync::LazyLock::new(|| {
        std::fs::read_to_string("/proc/sys/kernel/hostname")
            .map(|name| name.trim().to_string())
            .ok()
            .filter(|name| !name.is_empty())
            .unwrap_or_else(|| "loom".to_string())
    });
    &NODE_ID
}

pub fn get(state: &mut HostState, path: &[u8]) -> Option<Bytes> {
    let key = normalize(path);
    if let Some((_, value)) = state
        .stream()
        .properties
        .iter()
        .find(|(stored, _)| *stored == key)
    {
        return Some(value.clone());
    }
    let key = std::str::from_utf8(&key).ok()?.to_string();
    match key.as_str() {
        "plugin_name" => return text(&state.shared.name),
        "plugin_root_id" => return text(&state.shared.root_id),
        "plugin_vm_id" => return text(&state.shared.vm_id),
        _ => {}
    }
    let facts = state.facts().clone();
    match key.as_str() {
        "request.id" if !facts.request_id.is_empty() => {
            return Some(facts.request_id.clone());
        }
        "request.time" if facts.started_unix_nanos != 0 => {
            return number(facts.started_unix_nanos);
        }
        "request.protocol" if !facts.protocol.is_empty() => return text(facts.protocol),
        "request.scheme" if !facts.scheme.is_empty() => return text(facts.scheme),
        "source.address" => {
            return facts
                .client
                .map(|address| address.to_string())
                .and_then(|a| text(&a));
        }
        "source.port" => {
            return facts
                .client
                .and_then(|address| number(u64::from(address.port())));
        }
        "destination.address" => {
            return facts
                .server
                .map(|address| address.to_string())
                .and_then(|a| text(&a));
        }
        "destination.port" => {
            return facts
                .server
                .and_then(|address| number(u64::from(address.port())));
        }
        "connection.id" if facts.connection_id != 0 => return number(facts.connection_id),
        // Envoy's connection properties; a bool is one byte, as Envoy serializes it.
        "connection.mtls" => {
            return Some(Bytes::from_static(if facts.client_certificate.is_some() {
                &[1]
            } else {
                &[0]
            }));
        }
        "connection.tls_version" if !facts.tls_version.is_empty() => {
            return text(&facts.tls_version);
        }
        "connection.subject_peer_certificate" => {
            return facts
                .client_certificate
                .as_ref()
                .and_then(|identity| text(&identity.subject));
        }
        "connection.dns_san_peer_certificate" => {
            return facts
                .client_certificate
                .as_ref()
                .and_then(|identity| identity.first_dns_name.as_deref())
                .and_then(text);
        }
        "connection.uri_san_peer_certificate" => {
            return facts
                .client_certificate
                .as_ref()
                .and_then(|identity| identity.first_uri.as_deref())
                .and_then(text);
        }
        "route_name" | "xds.route_name" => return facts.route.as_deref().and_then(text),
        "loom.trace_id" if facts.trace_id != 0 => {
            let hex = crate::observe::tracing::context::trace_id_hex(facts.trace_id);
            return Some(Bytes::copy_from_slice(&hex));
        }
        _ if route_metadata_key(&key).is_some() => {
            let name = route_metadata_key(&key)?;
            return facts
                .route_metadata
                .as_ref()
                .and_then(|metadata| metadata.get(name))
                .and_then(|value| text(value));
        }
        "xds.cluster_name" | "cluster_name" => {
            return facts.upstream_name.as_deref().and_then(text);
        }
        // Envoy's node identity: this host's name (there is no xDS node here).
        "node.id" | "xds.node.id" => return text(node_id()),
        "upstream.address" => {
            return facts
                .upstream_address
                .map(|address| address.to_string())
                .and_then(|address| text(&address));
        }
        "upstream.port" => {
            return facts
                .upstream_address
                .and_then(|address| number(u64::from(address.port())));
        }
        _ => {}
    }
    let frame = state.frame()?;
    match key.as_str() {
        "response.code" => {
            let code = match frame.response.as_ref() {
                Some(response) => response.get().status.as_u16(),
                None if facts.response_code != 0 => facts.response_code,
                None => return None,
            };
            number(u64::from(code))
        }
        _ => {
            let request = frame.request.as_ref()?.get();
            match key.as_str() {
                "request.path" => text(
                    request
                        .uri
                        .path_and_query()
                        .map_or("/", http::uri::PathAndQuery::as_str),
                ),
                "request.url_path" => text(request.uri.path()),
                "request.query" => text(request.uri.query().unwrap_or("")),
                "request.host" => request
                    .uri
                    .authority()
                    .map(|authority| authority.as_str().to_string())
                    .or_else(|| {
                        request
                            .headers
                            .get(http::header::HOST)
                            .and_then(|host| host.to_str().ok())
                            .map(str::to_string)
                    })
                    .and_then(|host| text(&host)),
                "request.method" => text(request.method.as_str()),
                "request.referer" => request
                    .headers
                    .get(http::header::REFERER)
                    .map(|value| Bytes::copy_from_slice(value.as_bytes())),
                "request.useragent" => request
                    .headers
                    .get(http::header::USER_AGENT)
                    .map(|value| Bytes::copy_from_slice(value.as_bytes())),
                "request.headers" => {
                    let pairs: Vec<(String, Bytes)> = request
                        .headers
                        .iter()
                        .map(|(name, value)| {
                            (
                                name.as_str().to_string(),
                                Bytes::copy_from_slice(value.as_bytes()),
                            )
                        })
                        .collect();
                    Some(Bytes::from(super::maps::serialize(&pairs)))
                }
                _ => None,
            }
        }
    }
}
