//! The floor: a Pingora proxy with no routing, metrics or header work, to measure how much
//! of Loom's per-request cost is Pingora's own. `cargo run --release --example bare_pingora
//! -- LISTEN UPSTREAM THREADS [timeouts]`; with `timeouts` the upstream peer gets the same
//! connect/read/write timeouts Loom sets by default, to isolate their cost.
use async_trait::async_trait;
use pingora::prelude::*;
use pingora::upstreams::peer::HttpPeer;

#[global_allocator]
static GLOBAL_ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

struct Bare(String, bool);

#[async_trait]
impl ProxyHttp for Bare {
    type CTX = ();
    fn new_ctx(&self) {}
    async fn upstream_peer(&self, _session: &mut Session, _ctx: &mut ()) -> Result<Box<HttpPeer>> {
        let mut peer = HttpPeer::new(self.0.as_str(), false, String::new());
        if self.1 {
            peer.options.connection_timeout = Some(std::time::Duration::from_secs(5));
            peer.options.read_timeout = Some(std::time::Duration::from_secs(60));
            peer.options.write_timeout = Some(std::time::Duration::from_secs(60));
        }
        Ok(Box::new(peer))
    }
}

fn main() {
    let arguments: Vec<String> = std::env::args().collect();
    let (listen, upstream, threads) = (&arguments[1], &arguments[2], arguments[3].parse().unwrap());
    let conf = pingora::server::configuration::ServerConf {
        threads,
        ..Default::default()
    };
    let mut server = pingora::server::Server::new_with_opt_and_conf(None, conf);
    server.bootstrap();
    let with_timeouts = arguments.get(4).is_some_and(|flag| flag == "timeouts");
    let mut service = pingora::proxy::http_proxy_service(
        &server.configuration,
        Bare(upstream.clone(), with_timeouts),
    );
    service.add_tcp(listen);
    server.add_service(service);
    server.run_forever();
}
