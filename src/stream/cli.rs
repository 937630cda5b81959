//! `loom stream produce` and `loom stream consume`: command-line producer and consumer on
//! the client library, for scripts, smoke tests and debugging.

use std::path::PathBuf;

use clap::Args;
use tokio::io::AsyncWriteExt;

use super::client::{ClientOptions, ClientTransport, Consumer, Producer};
use super::tls::ClientTlsOptions;

#[derive(Args, Debug, Clone)]
pub struct ConnectArgs {
    /// Server address, host:port.
    #[arg(long, default_value = "127.0.0.1:4242")]
    pub server: String,
    #[arg(long, default_value = "default")]
    pub room: String,
    #[arg(long, default_value = "")]
    pub token: String,
    /// Client name sent in the hello (logging only).
    #[arg(long)]
    pub name: Option<String>,
    /// Use HTTP/3 (`POST /stream`) instead of raw QUIC.
    #[arg(long)]
    pub h3: bool,
    /// Accept any server certificate (development; the server's self-signed default).
    #[arg(long)]
    pub insecure: bool,
    /// CA bundle to verify the server with.
    #[arg(long)]
    pub ca_file: Option<PathBuf>,
    /// Client certificate and key (PEM) for mtls.
    #[arg(long, requires = "key_file")]
    pub cert: Option<PathBuf>,
    #[arg(long, requires = "cert")]
    pub key_file: Option<PathBuf>,
    /// TLS server name, when it differs from the host in --server.
    #[arg(long)]
    pub server_name: Option<String>,
}

impl ConnectArgs {
    fn options(&self, default_name: &str) -> ClientOptions {
        ClientOptions {
            server: self.server.clone(),
            transport: if self.h3 {
                ClientTransport::H3
            } else {
                ClientTransport::Quic
            },
            name: self
                .name
                .clone()
                .unwrap_or_else(|| default_name.to_string()),
            room: self.room.clone(),
            token: self.token.clone(),
            tls: ClientTlsOptions {
                insecure_skip_verify: self.insecure,
                ca_file: self.ca_file.clone(),
                client_cert: self.cert.clone().zip(self.key_file.clone()),
            },
            server_name: self.server_name.clone(),
        }
    }
}

#[derive(Args, Debug)]
pub struct ProduceArgs {
    #[command(flatten)]
    pub connect: ConnectArgs,
    /// Routing key of the messages.
    #[arg(long, default_value = "key")]
    pub key: String,
    /// Send every line of the input as its own message (default: the whole input is one).
    #[arg(long)]
    pub lines: bool,
    /// Input file; `-` or none reads stdin.
    pub file: Option<PathBuf>,
}

#[derive(Args, Debug)]
pub struct ConsumeArgs {
    #[command(flatten)]
    pub connect: ConnectArgs,
    /// Stop after this many messages.
    #[arg(long)]
    pub count: Option<u64>,
    /// Print a newline after each message body.
    #[arg(long)]
    pub lines: bool,
}

fn runtime() -> anyhow::Result<tokio::runtime::Runtime> {
    Ok(tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?)
}

pub fn produce(arguments: ProduceArgs) -> anyhow::Result<()> {
    runtime()?.block_on(async move {
        let mut producer =
            Producer::connect(&arguments.connect.options("loom-cli-producer")).await?;
        let mut input: Box<dyn tokio::io::AsyncRead + Unpin> = match &arguments.file {
            Some(path) if path.as_os_str() != "-" => Box::new(tokio::fs::File::open(path).await?),
            _ => Box::new(tokio::io::stdin()),
        };
        let key = arguments.key.as_bytes();
        let mut sent = 0u64;
        if arguments.lines {
            use tokio::io::AsyncBufReadExt;
            let mut lines = tokio::io::BufReader::new(input).lines();
            while let Some(line) = lines.next_line().await? {
                producer.send(key, line.as_bytes()).await?;
                sent += 1;
            }
        } else {
            let declared = match &arguments.file {
                Some(path) if path.as_os_str() != "-" => tokio::fs::metadata(path).await?.len(),
                _ => 0,
            };
            producer.send_reader(key, declared, &mut input).await?;
            sent = 1;
        }
        producer.finish().await?;
        eprintln!("sent {sent} message(s); every one was answered by the server");
        Ok(())
    })
}

pub fn consume(arguments: ConsumeArgs) -> anyhow::Result<()> {
    runtime()?.block_on(async move {
        let mut consumer =
            Consumer::connect(&arguments.connect.options("loom-cli-consumer")).await?;
        let mut stdout = tokio::io::stdout();
        let mut received = 0u64;
        while arguments.count.is_none_or(|count| received < count) {
            let Some(header) = consumer.next_header().await? else {
                break;
            };
            while let Some(piece) = consumer.next_chunk().await? {
                stdout.write_all(&piece).await?;
            }
            if arguments.lines {
                stdout.write_all(b"\n").await?;
            }
            stdout.flush().await?;
            consumer.ack(header.message_id).await?;
            received += 1;
        }
        consumer.shutdown().await;
        Ok(())
    })
}
