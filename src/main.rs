//! `loom`: CLI → load config → build the Pingora server → add services → run.

use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;

use clap::{Args, Parser, Subcommand};
use pingora::apps::HttpServerOptions;
use pingora::listeners::tls::TlsSettings;
use pingora::prelude::Opt;
use pingora::server::Server;
use pingora::server::configuration::ServerConf;
use pingora::services::background::background_service;
use pingora::services::listening::Service;

use loom::admin::AdminApp;
use loom::config::schema::ServerSection;
use loom::config::{self, LoadedConfig};
use loom::control::readiness::ListenerReadiness;
use loom::control::{ControlService, Reloader};
use loom::gateway::Gateway;
use loom::gateway::edge::EdgeApp;
use loom::gateway::snapshot::GatewayState;
use loom::observe::metrics_push::MetricsPushService;
use loom::observe::tracing::export::ExportService;
use loom::plugin::registry::PluginSet;
use loom::stream::service::StreamService;

/// The proxy allocates and frees many small buffers per request (headers, peers, tasks);
/// mimalloc's thread-local free lists handle that pattern faster than glibc malloc, which
/// showed up as about 12% of the request path in `perf`.
#[global_allocator]
static GLOBAL_ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// Loom API gateway.
#[derive(Parser, Debug)]
#[command(name = "loom", version, about)]
struct Cli {
    /// The YAML config file.
    #[arg(short = 'c', long = "conf", default_value = "conf/loom.yaml")]
    conf: PathBuf,
    /// Validate the config, print every error, and exit (0 when valid, 1 otherwise).
    #[arg(short = 't', long = "test")]
    test: bool,
    /// Run in the background (Pingora's daemon mode).
    #[arg(short = 'd', long = "daemon")]
    daemon: bool,
    /// Take over the listening sockets of a running loom (zero-downtime upgrade).
    #[arg(short = 'u', long = "upgrade")]
    upgrade: bool,
    #[command(subcommand)]
    command: Option<Command>,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Loom message streaming (QUIC and HTTP/3): run the server on a config in the
    /// reference loomd schema, or produce/consume as a client.
    Stream(Box<StreamCommand>),
    /// Upgrade the running gateway without downtime: the new binary checks the config and
    /// loads everything (plugins, TLS, first health checks) before the running process is
    /// told to hand its sockets over; a new process that fails leaves the old one serving.
    Upgrade(UpgradeCommand),
}

#[derive(Args, Debug)]
struct UpgradeCommand {
    /// The config the running gateway uses (its `server.pid_file` finds it).
    #[arg(short = 'c', long = "conf", default_value = "conf/loom.yaml")]
    conf: PathBuf,
    /// The new binary; default: this one.
    #[arg(long)]
    binary: Option<PathBuf>,
    /// Start the new process as a daemon (`-d`), as the systemd unit runs it.
    #[arg(short = 'd', long = "daemon")]
    daemon: bool,
    /// Seconds the new process may take to be ready, and then to serve.
    #[arg(long, default_value_t = 60)]
    timeout: u64,
}

fn run_upgrade_command(command: UpgradeCommand) -> ExitCode {
    let binary = match command.binary.map_or_else(std::env::current_exe, Ok) {
        Ok(binary) => binary,
        Err(error) => {
            eprintln!("loom upgrade: cannot find this binary: {error}");
            return ExitCode::from(1);
        }
    };
    let request = loom::control::upgrade::UpgradeRequest {
        config: command.conf,
        binary,
        daemon: command.daemon,
        timeout: std::time::Duration::from_secs(command.timeout),
    };
    match loom::control::upgrade::run(&request) {
        Ok(report) => {
            println!(
                "loom upgrade: pid {} handed over to pid {} (ready after {} ms, serving {} ms after the handoff began)",
                report.old_pid,
                report.new_pid,
                report.preparation.as_millis(),
                report.handoff.as_millis()
            );
            ExitCode::SUCCESS
        }
        Err(reason) => {
            eprintln!("loom upgrade: {reason}");
            ExitCode::from(1)
        }
    }
}

#[derive(Args, Debug)]
#[command(args_conflicts_with_subcommands = true)]
struct StreamCommand {
    /// The streaming config (the reference server's loom.yaml schema); as with loomd, also
    /// accepted as the first argument or from LOOM_CONFIG.
    #[arg(
        short = 'c',
        long = "conf",
        env = "LOOM_CONFIG",
        default_value = "loom.yaml"
    )]
    conf: PathBuf,
    /// The config path given the way loomd takes it: `loom stream FILE`.
    #[arg(value_name = "FILE")]
    file: Option<PathBuf>,
    /// Validate the config and exit.
    #[arg(short = 't', long = "test")]
    test: bool,
    #[command(subcommand)]
    action: Option<StreamAction>,
}

#[derive(Subcommand, Debug)]
enum StreamAction {
    /// Send messages from a file or stdin.
    Produce(loom::stream::cli::ProduceArgs),
    /// Print received messages to stdout, ACKing each.
    Consume(loom::stream::cli::ConsumeArgs),
}

fn run_stream_command(command: StreamCommand) -> ExitCode {
    let result = match command.action {
        None => loom::stream::service::run_standalone(
            command.file.unwrap_or(command.conf),
            command.test,
        ),
        Some(StreamAction::Produce(arguments)) => loom::stream::cli::produce(arguments),
        Some(StreamAction::Consume(arguments)) => loom::stream::cli::consume(arguments),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("loom stream: {error:#}");
            ExitCode::from(1)
        }
    }
}

fn main() -> ExitCode {
    env_logger::Builder::from_env(env_logger::Env::default().default_filter_or("info")).init();
    let mut cli = Cli::parse();
    match cli.command.take() {
        Some(Command::Stream(command)) => return run_stream_command(*command),
        Some(Command::Upgrade(command)) => return run_upgrade_command(command),
        None => {}
    }
    if cli.upgrade {
        // Started by `loom upgrade`: it waits on this pipe before the old process hands over.
        loom::control::upgrade::adopt_ready_pipe();
    }
    // Taken before reading, so an edit that races the initial load still triggers a reload.
    let loaded_fingerprint = loom::control::watch::fingerprint(&cli.conf);
    let loaded = match config::load_file(&cli.conf) {
        Ok(loaded) => loaded,
        Err(errors) => {
            config::print_errors(&cli.conf, &errors);
            return ExitCode::from(1);
        }
    };
    let plugins = match PluginSet::load(&loaded.validated.plugins, None) {
        Ok(plugins) => plugins,
        Err(mut errors) => {
            loaded.remap_errors(&mut errors);
            eprintln!("{}: {} plugin error(s):", cli.conf.display(), errors.len());
            for error in &errors {
                eprintln!("  {error}");
            }
            return ExitCode::from(1);
        }
    };
    if cli.test {
        if loaded.has_overlay() {
            println!(
                "{}: config is valid (with the admin API's changes in {})",
                cli.conf.display(),
                loaded.effective.overlay_path.display()
            );
        } else {
            println!("{}: config is valid", cli.conf.display());
        }
        return ExitCode::SUCCESS;
    }
    // SIGHUP means "reload" to us; until the control service listens for it, ignore it
    // instead of letting the default action end the process.
    // SAFETY: setting a signal disposition to SIG_IGN has no preconditions.
    unsafe {
        libc::signal(libc::SIGHUP, libc::SIG_IGN);
    }
    match run(cli, loaded, plugins, loaded_fingerprint) {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("loom: {error:#}");
            ExitCode::from(1)
        }
    }
}

fn run(
    cli: Cli,
    loaded: LoadedConfig,
    plugins: PluginSet,
    loaded_fingerprint: Option<loom::control::watch::Fingerprint>,
) -> anyhow::Result<()> {
    let mut server_conf = server_conf(&loaded.validated.file.server, cli.daemon);
    // Resolved against the config's directory by validation.
    server_conf.ca_file = loaded.validated.ca_file.clone();
    let threads = server_conf.threads;
    let opt = Opt {
        upgrade: cli.upgrade,
        daemon: cli.daemon,
        nocapture: false,
        test: false,
        conf: None,
    };
    if !cli.upgrade {
        check_listeners_can_bind(&loaded)?;
    }
    let stream_plan = loaded.validated.stream.clone();
    if let Some(plan) = &stream_plan
        && let Err(error) = loom::stream::service::check_can_bind(plan)
    {
        anyhow::bail!("stream endpoint cannot bind udp {}: {error}", plan.address);
    }

    let listeners: Vec<ListenerSpec> = loaded
        .validated
        .listeners
        .iter()
        .map(|listener| {
            (
                listener.name.clone(),
                listener.address.clone(),
                listener.protocol,
                listener.tls.clone(),
                listener.client_auth.clone(),
            )
        })
        .collect();
    let admin_address = loaded.validated.admin_address;
    let read_buffer_size = loaded.validated.read_buffer_size;
    let config_path = loaded.path.clone();
    let state = Arc::new(GatewayState::new(loaded, Arc::new(plugins)));
    if loom::control::upgrade::is_reporting() {
        prepare_for_handoff(&listeners, &state)?;
    }
    // With -u this waits for the old process's sockets (after `prepare_for_handoff` told
    // `loom upgrade` to send it SIGQUIT).
    let pid_file = server_conf.pid_file.clone();
    let mut server = Server::new_with_opt_and_conf(opt, server_conf);
    server.bootstrap();
    if !cli.daemon {
        // Pingora writes the pid file only when it daemonizes; `loom upgrade` finds the
        // running gateway through it in the foreground too (containers, tests).
        if let Err(error) = std::fs::write(&pid_file, format!("{}\n", std::process::id())) {
            log::warn!("cannot write the pid file {pid_file}: {error}");
        }
    }

    let stream_slot = stream_plan.map(|plan| {
        let worker_threads = plan.worker_threads;
        let (service, slot) = StreamService::new(plan);
        let mut service = background_service("loom stream", service);
        service.threads = Some(worker_threads);
        server.add_service(service);
        slot
    });
    let reloader = Arc::new(Reloader::new(
        Arc::clone(&state),
        config_path.clone(),
        stream_slot,
    ));
    let control = background_service(
        "loom control",
        ControlService::new(Arc::clone(&reloader), config_path, loaded_fingerprint),
    );
    let control_handle = server.add_service(control);
    // Always running, so that a reload can switch tracing on; idle while nothing is traced.
    // The queue's size is read here, once: it belongs to the process.
    let queue_size = state
        .current()
        .tracing
        .as_ref()
        .map_or(2048, |plan| plan.export.queue_size);
    let mut tracing = background_service(
        "loom tracing",
        ExportService::new(Arc::clone(&state), queue_size),
    );
    tracing.threads = Some(1);
    server.add_service(tracing);
    let mut metrics_push = background_service(
        "loom metrics push",
        MetricsPushService::new(Arc::clone(&state)),
    );
    metrics_push.threads = Some(1);
    server.add_service(metrics_push);

    if let Some(address) = admin_address {
        let mut admin = Service::new(
            "loom admin".to_string(),
            pingora::apps::http_app::HttpServer::new_app(AdminApp::new(Arc::clone(&reloader))),
        );
        admin.add_tcp(&address.to_string());
        admin.threads = Some(1);
        server.add_service(admin);
    }

    let readiness = background_service(
        "loom readiness",
        ListenerReadiness::new(
            Arc::clone(&state),
            listeners
                .iter()
                .filter_map(|(_, address, ..)| address.parse().ok())
                .collect(),
        ),
    );
    let mut listener_handles = Vec::new();
    let gateway = Gateway::new(Arc::clone(&state));
    let server_conf = Arc::clone(&server.configuration);
    for (name, address, protocol, tls, client_auth) in listeners {
        let mut options = HttpServerOptions::default();
        // http2 and Go Loom's h2c and grpc: HTTP/2 prior knowledge next to HTTP/1.1. TLS
        // listeners (https, Go Loom's grpcs, or any protocol with `tls`) offer h2 by ALPN below.
        options.h2c = protocol.accepts_h2c();
        // The proxy is built by hand, not with `ProxyServiceBuilder`, so that `EdgeApp` can
        // put each connection behind the request-head and keep-alive deadlines first.
        let mut proxy = pingora::proxy::http_proxy(&server_conf, gateway.clone());
        proxy.server_options = Some(options);
        let mut service = Service::new(
            format!("listener {name}"),
            EdgeApp::new(Arc::new(proxy), Arc::clone(&state)),
        );
        service.threads = Some(threads);
        let mut endpoint = pingora::listeners::ListenerConfig::tcp(address)
            .l4_buffer(pingora::listeners::L4BufferSettings::default().read(read_buffer_size));
        if let Some((cert, key)) = tls {
            let mut settings = TlsSettings::intermediate(&cert, &key)?;
            settings.enable_h2();
            if let Some(client_auth) = client_auth {
                let verifier = loom::gateway::client_cert::RecordingVerifier::from_ca_file(
                    &client_auth.ca_file,
                    client_auth.required,
                )
                .map_err(anyhow::Error::msg)?;
                settings.set_client_cert_verifier(verifier);
            }
            endpoint = endpoint.tls(settings);
        }
        service.add_listener(endpoint);
        let handle = server.add_service(service);
        handle.add_dependency(&control_handle);
        listener_handles.push(handle);
    }
    let readiness_handle = server.add_service(readiness);
    readiness_handle.add_dependencies(&listener_handles);
    server.run_forever();
}

/// Before `loom upgrade` lets the old process hand its sockets over: everything that can fail
/// without the sockets is tried here (TLS material, the first health-check round), then the
/// upgrade is told this process is ready. (Config and plugins were loaded before.)
/// A listener as the services are built from it: name, address, protocol, TLS files and
/// client-certificate settings.
type ListenerSpec = (
    String,
    String,
    loom::config::schema::ListenerProtocol,
    Option<(String, String)>,
    Option<loom::config::validate::ClientAuthPlan>,
);

fn prepare_for_handoff(
    listeners: &[ListenerSpec],
    state: &Arc<GatewayState>,
) -> anyhow::Result<()> {
    for (name, _, _, tls, client_auth) in listeners {
        if let Some((cert, key)) = tls {
            TlsSettings::intermediate(cert, key).map_err(|error| {
                anyhow::anyhow!("listener {name}: TLS certificate or key: {error}")
            })?;
        }
        if let Some(client_auth) = client_auth {
            loom::gateway::client_cert::RecordingVerifier::from_ca_file(
                &client_auth.ca_file,
                client_auth.required,
            )
            .map_err(anyhow::Error::msg)?;
        }
    }
    // The pools that will serve, on a runtime of their own: probes open a fresh connection
    // each time, so nothing they leave behind belongs to this runtime.
    let pools = state.current().upstreams.clone();
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?
        .block_on(loom::control::first_health_rounds(&pools));
    loom::control::upgrade::report_ready();
    Ok(())
}

/// Pingora panics in a service thread when a listener cannot bind, leaving the process up
/// without that listener. Trying each address first turns that into a clear startup error.
/// (With `-u` the sockets come from the old process and are in use by design.)
fn check_listeners_can_bind(loaded: &LoadedConfig) -> anyhow::Result<()> {
    let validated = &loaded.validated;
    let admin = validated.admin_address.map(|address| address.to_string());
    let addresses = validated
        .listeners
        .iter()
        .map(|listener| (listener.name.as_str(), listener.address.clone()))
        .chain(admin.map(|address| ("admin", address)));
    for (name, address) in addresses {
        if let Err(error) = std::net::TcpListener::bind(&address) {
            anyhow::bail!("listener {name} cannot bind {address}: {error}");
        }
    }
    Ok(())
}

fn server_conf(section: &ServerSection, daemon_flag: bool) -> ServerConf {
    let mut conf = ServerConf {
        version: 1,
        threads: section.threads.unwrap_or_else(|| {
            std::thread::available_parallelism().map_or(1, std::num::NonZeroUsize::get)
        }),
        daemon: daemon_flag || section.daemon,
        ..ServerConf::default()
    };
    if let Some(pid_file) = &section.pid_file {
        conf.pid_file = pid_file.clone();
    }
    if let Some(upgrade_sock) = &section.upgrade_sock {
        conf.upgrade_sock = upgrade_sock.clone();
    }
    conf.error_log = section.error_log.clone();
    conf.user = section.user.clone();
    conf.group = section.group.clone();
    conf.grace_period_seconds = section.grace_period_seconds;
    conf.graceful_shutdown_timeout_seconds = section.graceful_shutdown_timeout_seconds;
    if let Some(size) = section.upstream_keepalive_pool_size {
        conf.upstream_keepalive_pool_size = size;
    }
    if let Some(work_stealing) = section.work_stealing {
        conf.work_stealing = work_stealing;
    }
    if let Some(wait) = section.daemon_wait_for_ready {
        conf.daemon_wait_for_ready = wait;
    }
    conf
}
