//! `loom-echo`: the echo backend as a standalone process, for demos and load tests.
//!
//! It prints `listening on ADDRESS` on stdout for every bound address, so a caller that asked for
//! port 0 can read the real port, and stops cleanly on SIGINT or SIGTERM.

use std::io::{self, Write};
use std::net::SocketAddr;
use std::num::NonZeroUsize;
use std::process::ExitCode;

use clap::Parser;
use loom::echo::EchoServer;

/// HTTP/1.1, h2c and WebSocket echo backend.
#[derive(Debug, Parser)]
#[command(name = "loom-echo", version)]
struct Arguments {
    /// Address to listen on (port 0 picks a free port); repeat to listen on several.
    #[arg(long = "listen", value_name = "ADDR", default_value = "127.0.0.1:3000")]
    listen: Vec<SocketAddr>,

    /// Name reported in every response, to tell several echo servers apart.
    #[arg(long, value_name = "NAME", default_value = "echo")]
    name: String,

    /// Number of tokio worker threads.
    #[arg(long, value_name = "N", default_value = "1")]
    threads: NonZeroUsize,
}

fn main() -> ExitCode {
    // Logs go to stderr; stdout carries only the addresses callers parse.
    env_logger::Builder::from_env(env_logger::Env::default().default_filter_or("warn")).init();
    let arguments = Arguments::parse();
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .worker_threads(arguments.threads.get())
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(error) => {
            eprintln!("loom-echo: cannot start the tokio runtime: {error}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(run(arguments)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("loom-echo: {error}");
            ExitCode::FAILURE
        }
    }
}

async fn run(arguments: Arguments) -> io::Result<()> {
    let server = EchoServer::start(&arguments.listen, &arguments.name).await?;
    // Installed before announcing, so a caller that signals as soon as it has read the
    // addresses gets a clean stop rather than the default action.
    let shutdown = ShutdownSignals::install()?;
    announce(server.addresses())?;
    shutdown.received().await;
    log::info!("loom-echo stopping");
    server.stop().await;
    Ok(())
}

fn announce(addresses: &[SocketAddr]) -> io::Result<()> {
    let mut stdout = io::stdout().lock();
    for address in addresses {
        writeln!(stdout, "listening on {address}")?;
    }
    stdout.flush()
}

/// SIGINT and SIGTERM on Unix; Ctrl-C elsewhere.
struct ShutdownSignals {
    #[cfg(unix)]
    interrupt: tokio::signal::unix::Signal,
    #[cfg(unix)]
    terminate: tokio::signal::unix::Signal,
}

impl ShutdownSignals {
    #[cfg(unix)]
    fn install() -> io::Result<ShutdownSignals> {
        use tokio::signal::unix::{SignalKind, signal};
        Ok(ShutdownSignals {
            interrupt: signal(SignalKind::interrupt())?,
            terminate: signal(SignalKind::terminate())?,
        })
    }

    #[cfg(not(unix))]
    fn install() -> io::Result<ShutdownSignals> {
        Ok(ShutdownSignals {})
    }

    #[cfg(unix)]
    async fn received(mut self) {
        tokio::select! {
            _ = self.interrupt.recv() => {}
            _ = self.terminate.recv() => {}
        }
    }

    #[cfg(not(unix))]
    async fn received(self) {
        if let Err(error) = tokio::signal::ctrl_c().await {
            log::error!("loom-echo cannot wait for Ctrl-C, stopping: {error}");
        }
    }
}
