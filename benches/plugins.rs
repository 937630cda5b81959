//! Proxy-Wasm cost on the request path, with the shipped `loom_headers` plugin (one request
//! and one response header set):
//! - `callback_round_trip`: one empty callback into the instance (lock, fuel reset, call);
//! - `request_pass/N`: what a request through N plugins costs: contexts created, request
//!   headers (20 of them) and response headers through every plugin, then done/log/delete.
//!
//! Needs the built plugins (`plugins/build.sh`).

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use criterion::{BenchmarkId, Criterion, criterion_group, criterion_main};
use loom::config::ConfigError;
use loom::config::plugins::{PluginPlan, PluginsPlan};
use loom::config::schema::PluginFailureMode;
use loom::plugin::host::{Frame, RequestFacts, StreamState};
use loom::plugin::pipeline::{Flow, RequestPlugins};
use loom::plugin::registry::PluginSet;
use loom::plugin::runtime::Phase;
use pingora::http::{RequestHeader, ResponseHeader};

fn plan(name: &str, index: usize) -> PluginPlan {
    let wasm_path =
        PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("plugins/dist/loom_headers.wasm");
    assert!(
        wasm_path.is_file(),
        "{} is missing: run plugins/build.sh",
        wasm_path.display()
    );
    PluginPlan {
        name: name.to_string(),
        wasm_path,
        configuration: Bytes::from(format!(
            r#"{{"request":{{"set":{{"x-plugin-{index}":"on"}}}},"response":{{"set":{{"x-plugin-{index}":"on"}}}}}}"#
        )),
        vm_configuration: Bytes::new(),
        root_id: String::new(),
        vm_id: String::new(),
        priority: 0,
        on_error: PluginFailureMode::FailClosed,
        max_fuel: 100_000_000,
        memory_limit_pages: 512,
        timeout: None,
        instances: 1,
        max_buffered_body: 1 << 20,
        pause_timeout: std::time::Duration::from_secs(30),
        quarantine_after: 5,
        quarantine_for: Duration::from_secs(10),
        origin: ConfigError {
            file: PathBuf::from("bench"),
            mark: None,
            key_path: String::new(),
            message: String::new(),
        },
    }
}

fn load(count: usize) -> (PluginSet, Vec<String>) {
    let names: Vec<String> = (1..=count).map(|index| format!("headers{index}")).collect();
    let plans = PluginsPlan {
        plugins: names
            .iter()
            .enumerate()
            .map(|(index, name)| plan(name, index + 1))
            .collect(),
        cache_dir: PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("plugin-cache"),
        policies: Vec::new(),
    };
    let set = PluginSet::load(&plans, None).unwrap_or_else(|errors| panic!("{errors:?}"));
    (set, names)
}

fn request() -> RequestHeader {
    let mut request = RequestHeader::build("GET", b"/api/users/42?page=2", None).unwrap();
    request.insert_header("host", "api.example.com").unwrap();
    for index in 0..19 {
        request
            .insert_header(format!("x-header-{index}"), "some-typical-header-value")
            .unwrap();
    }
    request
}

fn callback_round_trip(criterion: &mut Criterion) {
    let (set, _) = load(1);
    let plugin = Arc::clone(set.get("headers1").unwrap());
    let handle = plugin.open_context().unwrap();
    let facts = RequestFacts::default();
    let mut stream = StreamState::default();
    criterion.bench_function("callback_round_trip", |bencher| {
        bencher.iter(|| {
            let mut frame = Frame {
                request: None,
                response: None,
                response_trailers: None,
                body: None,
                callout: None,
                context_id: handle.context_id,
                stream: &mut stream,
                facts: &facts,
            };
            plugin
                .invoke(
                    &handle,
                    Phase::ResponseTrailers,
                    &mut frame,
                    |store, callbacks, context| match &callbacks.on_response_trailers {
                        Some(function) => function.call(store, context, 0),
                        None => Ok(0),
                    },
                )
                .unwrap()
        })
    });
}

fn request_pass(criterion: &mut Criterion) {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .build()
        .unwrap();
    let template = request();
    let mut group = criterion.benchmark_group("request_pass");
    for count in [1usize, 5] {
        let (set, names) = load(count);
        let chain: Arc<[Arc<_>]> = names
            .iter()
            .map(|name| Arc::clone(set.get(name).unwrap()))
            .collect();
        group.bench_with_input(
            BenchmarkId::from_parameter(count),
            &count,
            |bencher, &count| {
                bencher.iter(|| {
                    let mut request = template.clone();
                    let mut response = ResponseHeader::build(200, Some(4)).unwrap();
                    let mut plugins =
                        RequestPlugins::new(Arc::clone(&chain), RequestFacts::default());
                    runtime.block_on(async {
                        for index in 0..count {
                            let flow = plugins
                                .request_headers_at(index, &mut request, true, &[])
                                .await;
                            assert!(flow.is_none_or(|flow| matches!(flow, Flow::Continue)));
                        }
                        for index in (0..count).rev() {
                            let flow = plugins
                                .response_headers_at(index, &mut request, &mut response, &[])
                                .await;
                            assert!(flow.is_none_or(|flow| matches!(flow, Flow::Continue)));
                        }
                    });
                    plugins.finish(Some(&request), Some(&response));
                    response
                })
            },
        );
    }
    group.finish();
}

criterion_group!(benches, callback_round_trip, request_pass);
criterion_main!(benches);
