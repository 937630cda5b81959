//! `loom_test_abi_probe` (test only): a Proxy-Wasm ABI conformance probe. The request header
//! `x-probe` picks one area of the ABI to exercise and the results come back in headers (or,
//! for `pairs`, in a local response body); see README.md for each probe's output.

use log::{info, warn};
use loom_plugin_common::{counter, request_header, response_header};
use proxy_wasm::hostcalls;
use proxy_wasm::traits::{Context, HttpContext, RootContext};
use proxy_wasm::types::{Action, ContextType, Status};

const QUEUE_NAME: &str = "probe_queue";
const DEQUEUED_KEY: &str = "probe:dequeued";

proxy_wasm::main! {{
    loom_plugin_common::install_logger();
    proxy_wasm::set_root_context(|_| -> Box<dyn RootContext> { Box::new(ProbeRoot::default()) });
}}

/// How a property's value is shown.
#[derive(Clone, Copy)]
enum Shape {
    /// UTF-8 text as is; anything else as `hex:<hex>`.
    Text,
    /// `len=N`, plus ` value=<n>` when it is 8 bytes (Envoy encodes integers as u64 LE).
    Integer,
    /// `len=N` only (a timestamp's encoding is host-specific).
    Length,
}

/// Read in `on_http_request_headers`.
const REQUEST_PROPERTIES: &[(&[&str], Shape)] = &[
    (&["request", "path"], Shape::Text),
    (&["request", "url_path"], Shape::Text),
    (&["request", "query"], Shape::Text),
    (&["request", "host"], Shape::Text),
    (&["request", "method"], Shape::Text),
    (&["request", "scheme"], Shape::Text),
    (&["request", "id"], Shape::Text),
    (&["request", "time"], Shape::Length),
    (&["source", "address"], Shape::Text),
    (&["source", "port"], Shape::Integer),
    (&["destination", "address"], Shape::Text),
    (&["destination", "port"], Shape::Integer),
    (&["connection", "id"], Shape::Integer),
    (&["connection", "mtls"], Shape::Text),
    (&["connection", "tls_version"], Shape::Text),
    (&["connection", "subject_peer_certificate"], Shape::Text),
    (&["connection", "dns_san_peer_certificate"], Shape::Text),
    (&["connection", "uri_san_peer_certificate"], Shape::Text),
    (&["plugin_name"], Shape::Text),
    (&["plugin_root_id"], Shape::Text),
    (&["plugin_vm_id"], Shape::Text),
    (&["route_name"], Shape::Text),
    (&["xds", "cluster_name"], Shape::Text),
    (&["node", "id"], Shape::Text),
    (&["loom", "trace_id"], Shape::Text),
    (
        &[
            "route_metadata",
            "filter_metadata",
            "envoy.filters.http.wasm",
            "auth",
        ],
        Shape::Text,
    ),
];

/// Read in `on_http_response_headers`, once the upstream has answered.
const RESPONSE_PROPERTIES: &[(&[&str], Shape)] = &[
    (&["upstream", "address"], Shape::Text),
    (&["upstream", "port"], Shape::Integer),
    (&["response", "code"], Shape::Integer),
];

/// The pseudo-headers the `pseudo` probe copies, and the headers it copies them to.
const PSEUDO_HEADERS: &[(&str, &str)] = &[
    (":method", "x-seen-method"),
    (":path", "x-seen-path"),
    (":authority", "x-seen-authority"),
    (":scheme", "x-seen-scheme"),
];

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Probe {
    Properties,
    Pseudo,
    Pairs,
    SetProperty,
    Queue,
    LogLevel,
    /// Answers in its place from `on_http_response_headers`, whatever the upstream sent.
    ReplaceResponse,
}

impl Probe {
    fn parse(name: &str) -> Option<Probe> {
        Some(match name {
            "properties" => Probe::Properties,
            "pseudo" => Probe::Pseudo,
            "pairs" => Probe::Pairs,
            "set-property" => Probe::SetProperty,
            "queue" => Probe::Queue,
            "log-level" => Probe::LogLevel,
            "replace-response" => Probe::ReplaceResponse,
            _ => return None,
        })
    }
}

#[derive(Default)]
struct ProbeRoot {
    queue_id: Option<u32>,
}

impl Context for ProbeRoot {}

impl RootContext for ProbeRoot {
    fn on_vm_start(&mut self, _vm_configuration_size: usize) -> bool {
        self.queue_id = Some(self.register_shared_queue(QUEUE_NAME));
        true
    }

    fn on_queue_ready(&mut self, queue_id: u32) {
        let mut dequeued = 0;
        while let Ok(Some(_item)) = self.dequeue_shared_queue(queue_id) {
            dequeued += 1;
        }
        if dequeued > 0 {
            counter::add(DEQUEUED_KEY, dequeued);
        }
    }

    fn get_type(&self) -> Option<ContextType> {
        Some(ContextType::HttpContext)
    }

    fn create_http_context(&self, context_id: u32) -> Option<Box<dyn HttpContext>> {
        Some(Box::new(ProbeHttp {
            context_id,
            queue_id: self.queue_id,
            probe: None,
            response_headers: Vec::new(),
            set_status: false,
        }))
    }
}

struct ProbeHttp {
    context_id: u32,
    queue_id: Option<u32>,
    probe: Option<Probe>,
    /// Results gathered in the request phase, added to the response.
    response_headers: Vec<(String, String)>,
    /// `pseudo` probe: replace the response's `:status` with 299.
    set_status: bool,
}

impl Context for ProbeHttp {}

impl HttpContext for ProbeHttp {
    fn on_http_request_headers(&mut self, _num_headers: usize, _end_of_stream: bool) -> Action {
        let probe_name = request_header(self, "x-probe");
        self.probe = probe_name.as_deref().and_then(Probe::parse);
        match self.probe {
            None => {
                if let Some(name) = probe_name {
                    warn!("abi_probe: unknown probe \"{name}\"");
                }
            }
            Some(Probe::Properties) => {
                self.response_headers = read_properties(REQUEST_PROPERTIES);
            }
            Some(Probe::Pseudo) => {
                for (pseudo, copy) in PSEUDO_HEADERS {
                    let value = request_header(self, pseudo);
                    self.set_http_request_header(copy, Some(value.as_deref().unwrap_or("missing")));
                }
                if self.request_flag("x-rewrite-path") {
                    self.set_http_request_header(":path", Some("/rewritten"));
                }
                self.set_status = self.request_flag("x-set-status");
            }
            Some(Probe::Pairs) => {
                let mut listing = Vec::new();
                for (name, value) in self.get_http_request_headers_bytes() {
                    listing.extend_from_slice(name.as_bytes());
                    listing.extend_from_slice(b": ");
                    listing.extend_from_slice(&value);
                    listing.push(b'\n');
                }
                self.send_http_response(
                    200,
                    vec![("content-type", "text/plain; charset=utf-8")],
                    Some(&listing),
                );
                return Action::Pause;
            }
            Some(Probe::SetProperty) => {
                self.set_property(vec!["loom", "probe"], Some(b"hello"));
                let value = show(hostcalls::get_property(vec!["loom", "probe"]), Shape::Text);
                self.set_http_request_header("x-probe-property", Some(&value));
            }
            Some(Probe::Queue) => match self.queue_id {
                Some(queue_id) => {
                    let path = self
                        .get_http_request_header_bytes(":path")
                        .unwrap_or_default();
                    if let Err(status) = self.enqueue_shared_queue(queue_id, Some(&path)) {
                        warn!("abi_probe: enqueue on queue {queue_id} failed: {status:?}");
                    }
                }
                None => warn!("abi_probe: no queue (on_vm_start was not called)"),
            },
            Some(Probe::LogLevel) | Some(Probe::ReplaceResponse) => {}
        }
        Action::Continue
    }

    fn on_http_response_headers(&mut self, _num_headers: usize, _end_of_stream: bool) -> Action {
        match self.probe {
            None | Some(Probe::Pairs) | Some(Probe::SetProperty) => {}
            Some(Probe::Properties) => {
                let mut headers = std::mem::take(&mut self.response_headers);
                headers.extend(read_properties(RESPONSE_PROPERTIES));
                for (name, value) in &headers {
                    self.add_http_response_header(name, value);
                }
            }
            Some(Probe::Pseudo) => {
                let status = response_header(self, ":status");
                self.add_http_response_header(
                    "x-seen-status",
                    status.as_deref().unwrap_or("missing"),
                );
                if self.set_status {
                    self.set_http_response_header(":status", Some("299"));
                }
            }
            Some(Probe::Queue) => {
                let dequeued = counter::read(DEQUEUED_KEY);
                self.add_http_response_header("x-dequeued", &dequeued.to_string());
            }
            Some(Probe::ReplaceResponse) => {
                self.send_http_response(
                    200,
                    vec![("content-type", "text/plain")],
                    Some(b"replaced by the plugin"),
                );
                return Action::Pause;
            }
            Some(Probe::LogLevel) => {
                let level = match hostcalls::get_log_level() {
                    Ok(level) => (level as u32).to_string(),
                    Err(status) => format!("error:{status:?}"),
                };
                self.add_http_response_header("x-log-level", &level);
            }
        }
        Action::Continue
    }

    fn on_log(&mut self) {
        info!("abi_probe on_log {}", self.context_id);
    }
}

impl ProbeHttp {
    /// Whether the request has `name: 1`.
    fn request_flag(&self, name: &str) -> bool {
        self.get_http_request_header_bytes(name).as_deref() == Some(b"1")
    }
}

/// One `x-prop-<path joined with '-'>` header per property.
fn read_properties(properties: &[(&[&str], Shape)]) -> Vec<(String, String)> {
    properties
        .iter()
        .map(|(path, shape)| {
            // The SDK's Context::get_property traps on an error status; the hostcall does not.
            let value = hostcalls::get_property(path.to_vec());
            (property_header_name(path), show(value, *shape))
        })
        .collect()
}

fn property_header_name(path: &[&str]) -> String {
    format!("x-prop-{}", path.join("-"))
}

/// A property value as header text: `missing` when absent, `error:<status>` when the host
/// failed, otherwise as its shape says.
fn show(value: Result<Option<Vec<u8>>, Status>, shape: Shape) -> String {
    let bytes = match value {
        Ok(Some(bytes)) => bytes,
        Ok(None) => return "missing".to_string(),
        Err(status) => return format!("error:{status:?}"),
    };
    match shape {
        Shape::Text => match std::str::from_utf8(&bytes) {
            Ok(text) if !text.chars().any(char::is_control) => text.to_string(),
            _ => format!("hex:{}", hex(&bytes)),
        },
        Shape::Length => format!("len={}", bytes.len()),
        Shape::Integer => match <[u8; 8]>::try_from(bytes.as_slice()) {
            Ok(integer) => format!("len=8 value={}", u64::from_le_bytes(integer)),
            Err(_) => format!("len={}", bytes.len()),
        },
    }
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|byte| format!("{byte:02x}")).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shows_each_shape() {
        assert_eq!(show(Ok(None), Shape::Text), "missing");
        assert_eq!(show(Ok(Some(b"/a".to_vec())), Shape::Text), "/a");
        assert_eq!(show(Ok(Some(vec![0, 255])), Shape::Text), "hex:00ff");
        assert_eq!(show(Ok(Some(vec![1; 12])), Shape::Length), "len=12");
        assert_eq!(
            show(Ok(Some(8080u64.to_le_bytes().to_vec())), Shape::Integer),
            "len=8 value=8080"
        );
        assert_eq!(show(Ok(Some(b"80".to_vec())), Shape::Integer), "len=2");
        assert_eq!(
            show(Err(Status::InternalFailure), Shape::Text),
            "error:InternalFailure"
        );
    }

    #[test]
    fn header_names_join_the_path() {
        assert_eq!(
            property_header_name(&["upstream", "address"]),
            "x-prop-upstream-address"
        );
        assert_eq!(property_header_name(&["plugin_name"]), "x-prop-plugin_name");
    }
}
