//! The `roomcast` binary: `roomcast serve` runs a node; `roomcast token <user>` mints a
//! connection token for trying it out.

use std::path::PathBuf;
use std::time::Duration;

use anyhow::Context;
use clap::{Parser, Subcommand};
use roomcast::auth::{now_secs, Auth, Claims};
use roomcast::{Config, Server};

#[derive(Parser)]
#[command(
    name = "roomcast",
    version,
    about = "A Centrifugo-compatible chat server with durable history"
)]
struct Cli {
    /// Log lines as `text` (for people) or `json` (one object per line, for collectors).
    /// Levels by `ROOMCAST_LOG` (e.g. `roomcast=debug`; default `roomcast=info`).
    #[arg(long, global = true, env = "ROOMCAST_LOG_FORMAT", value_enum, default_value_t = LogFormat::Text)]
    log_format: LogFormat,
    #[command(subcommand)]
    command: Command,
}

#[derive(Clone, Copy, clap::ValueEnum)]
enum LogFormat {
    Text,
    Json,
}

/// Logs to stderr in the chosen format.
fn init_logs(format: LogFormat) {
    let filter = tracing_subscriber::EnvFilter::try_from_env("ROOMCAST_LOG")
        .unwrap_or_else(|_| "roomcast=info".into());
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    match format {
        LogFormat::Text => builder
            .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
            .init(),
        LogFormat::Json => builder
            .json()
            .flatten_event(true)
            .with_current_span(false)
            .init(),
    }
}

/// Settings shared by `serve` and `token`; each overrides the TOML file.
#[derive(clap::Args)]
struct Common {
    /// TOML configuration file.
    #[arg(long, env = "ROOMCAST_CONFIG")]
    config: Option<PathBuf>,
    /// Data directory (message store, generated secrets) [default: roomcast-data].
    #[arg(long, env = "ROOMCAST_DATA_DIR")]
    data_dir: Option<PathBuf>,
    /// HMAC secret for HS256 connection tokens [default: generated into the data directory's
    /// secrets.toml].
    #[arg(long, env = "ROOMCAST_TOKEN_HMAC_SECRET", hide_env_values = true)]
    token_hmac_secret: Option<String>,
}

#[derive(Subcommand)]
enum Command {
    /// Run a node.
    Serve {
        #[command(flatten)]
        common: Common,
        /// Address to listen on, `ip:port` or `host:port` [default: 127.0.0.1:8000].
        #[arg(long, env = "ROOMCAST_LISTEN", value_parser = roomcast::config::parse_listen)]
        listen: Option<std::net::SocketAddr>,
        /// Server API key [default: generated into the data directory's secrets.toml].
        #[arg(long, env = "ROOMCAST_API_KEY", hide_env_values = true)]
        api_key: Option<String>,
        /// Development mode: clients may connect without a token.
        #[arg(long, env = "ROOMCAST_INSECURE")]
        insecure: bool,
        /// Seconds between server pings [default: 25].
        #[arg(long, env = "ROOMCAST_PING_INTERVAL")]
        ping_interval: Option<u64>,
        /// Seconds a client has to answer a ping [default: 8].
        #[arg(long, env = "ROOMCAST_PONG_TIMEOUT")]
        pong_timeout: Option<u64>,
        /// Join a cluster: Redis URL of the bus and presence (`redis://host:port`).
        #[arg(long, env = "ROOMCAST_REDIS", hide_env_values = true)]
        redis: Option<String>,
        /// Put the cluster bus on NATS (`nats://host:port`); presence stays on `--redis`.
        #[arg(long, env = "ROOMCAST_NATS", hide_env_values = true)]
        nats: Option<String>,
        /// Shared message store URL (`postgres://user:pass@host:port/db`) [default: SQLite in the
        /// data directory].
        #[arg(long, env = "ROOMCAST_STORE", hide_env_values = true)]
        store: Option<String>,
        /// Once listening, write one JSON line to this file descriptor (1: stdout):
        /// `{"ready":true,"addr":"127.0.0.1:8000","pid":..,"version":".."}`.
        /// For supervisors and tests that need the bound address (e.g. with `--listen
        /// 127.0.0.1:0`) without reading logs. Other descriptors are reopened through
        /// `/dev/fd/N` (Linux).
        #[arg(long, value_name = "FD")]
        ready_fd: Option<u32>,
    },
    /// Serve a WebSocket echo endpoint on roomcast's WebSocket layer (for conformance runs
    /// such as the Autobahn suite; see scripts/autobahn.sh).
    WsEcho {
        /// Address to listen on.
        #[arg(long, default_value = "127.0.0.1:9001")]
        listen: std::net::SocketAddr,
        /// Largest message echoed.
        #[arg(long, default_value_t = 16 << 20)]
        max_message_size: usize,
    },
    /// Print a shell completion script (e.g. `roomcast completions bash >
    /// /etc/bash_completion.d/roomcast`).
    Completions {
        /// The shell.
        shell: clap_complete::Shell,
    },
    /// Print a connection token (HS256 JWT) for a user.
    Token {
        #[command(flatten)]
        common: Common,
        /// The user id (`sub` claim).
        user: String,
        /// Seconds until the token expires; 0 for a token that never does.
        #[arg(long, default_value_t = 86_400)]
        ttl: u64,
        /// Channels the server subscribes the connection to (`channels` claim).
        #[arg(long = "channel")]
        channels: Vec<String>,
    },
}

fn load(common: &Common) -> anyhow::Result<Config> {
    let mut config = match &common.config {
        Some(path) => Config::from_file(path)?,
        None => Config::default(),
    };
    if let Some(d) = &common.data_dir {
        config.data_dir = d.clone();
    }
    if let Some(s) = &common.token_hmac_secret {
        config.token_hmac_secret = Some(s.clone());
    }
    Ok(config)
}

fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    init_logs(cli.log_format);
    match cli.command {
        Command::Serve {
            common,
            listen,
            api_key,
            insecure,
            ping_interval,
            pong_timeout,
            redis,
            nats,
            store,
            ready_fd,
        } => {
            let mut config = load(&common)?;
            if let Some(l) = listen {
                config.listen = l;
            }
            if let Some(k) = api_key {
                config.api_key = Some(k);
            }
            config.insecure |= insecure;
            if let Some(p) = ping_interval {
                config.ping_interval_secs = p;
            }
            if let Some(p) = pong_timeout {
                config.pong_timeout_secs = p;
            }
            if redis.is_some() {
                config.redis_url = redis;
            }
            if nats.is_some() {
                config.nats_url = nats;
            }
            if store.is_some() {
                config.store_url = store;
            }
            if config.insecure {
                tracing::warn!("insecure mode: clients connect without a token");
            }
            let fds = roomcast::server::raise_fd_limit();
            tracing::info!(
                open_files = fds,
                capacity = fds.saturating_sub(100),
                "connection capacity"
            );
            let runtime = tokio::runtime::Runtime::new().context("starting the runtime")?;
            runtime.block_on(serve(config, ready_fd))
        }
        Command::WsEcho {
            listen,
            max_message_size,
        } => {
            let runtime = tokio::runtime::Runtime::new().context("starting the runtime")?;
            runtime.block_on(async move {
                let listener = tokio::net::TcpListener::bind(listen).await?;
                tracing::info!("echo listening on {}", listener.local_addr()?);
                let app = roomcast::http::echo_router(max_message_size);
                let stop = tokio_util::sync::CancellationToken::new();
                let tasks = tokio_util::task::TaskTracker::new();
                let serve = roomcast::server::accept_loop(
                    listener,
                    app,
                    stop.clone(),
                    tasks,
                    Duration::from_secs(1),
                );
                tokio::select! {
                    _ = serve => {}
                    _ = tokio::signal::ctrl_c() => stop.cancel(),
                }
                Ok(())
            })
        }
        Command::Completions { shell } => {
            let mut cmd = <Cli as clap::CommandFactory>::command();
            let mut script = Vec::new();
            clap_complete::generate(shell, &mut cmd, "roomcast", &mut script);
            // A closed pipe (`| head`) is not an error worth a panic.
            let _ = std::io::Write::write_all(&mut std::io::stdout(), &script);
            Ok(())
        }
        Command::Token {
            common,
            user,
            ttl,
            channels,
        } => {
            let mut config = load(&common)?;
            if config.token_hmac_secret.is_none() {
                let path = config.data_dir.join("secrets.toml");
                match config.ensure_secrets()? {
                    Some(_) => eprintln!(
                        "generated secrets in {} (start `roomcast serve` with the same --data-dir)",
                        path.display()
                    ),
                    None => eprintln!("signed with the secret in {}", path.display()),
                }
            } else {
                eprintln!("signed with the secret given by --token-hmac-secret, ROOMCAST_TOKEN_HMAC_SECRET or the config file");
            }
            let auth = Auth::new(
                config.token_hmac_secret.as_deref().expect("secret ensured"),
                None,
                None,
            );
            let now = now_secs();
            let claims = Claims {
                sub: user,
                exp: (ttl > 0).then_some(now + ttl),
                iat: Some(now),
                channels,
                aud: config.token_audience.clone().map(Into::into),
                iss: config.token_issuer.clone(),
                ..Claims::default()
            };
            println!("{}", auth.mint(&claims));
            Ok(())
        }
    }
}

async fn serve(config: Config, ready_fd: Option<u32>) -> anyhow::Result<()> {
    let server = Server::start(config).await?;
    if let Some(fd) = ready_fd {
        announce_ready(fd, server.addr)
            .with_context(|| format!("writing the ready line to fd {fd}"))?;
    }
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = term.recv() => {}
    }
    tracing::info!("shutting down");
    server.shutdown().await;
    Ok(())
}

/// Writes the `--ready-fd` line: one JSON object and a newline, flushed. Nothing else is
/// ever written to that descriptor by roomcast (logs go to stderr), so a reader can take
/// the first line as the announcement.
fn announce_ready(fd: u32, addr: std::net::SocketAddr) -> std::io::Result<()> {
    use std::io::Write;
    // Written by hand so `ready` comes first (a `json!` map sorts its keys).
    let line = format!(
        "{{\"ready\":true,\"addr\":\"{addr}\",\"pid\":{},\"version\":{}}}\n",
        std::process::id(),
        serde_json::Value::from(roomcast::VERSION),
    );
    match fd {
        1 => {
            let mut out = std::io::stdout().lock();
            out.write_all(line.as_bytes())?;
            out.flush()
        }
        2 => std::io::stderr().lock().write_all(line.as_bytes()),
        // No unsafe `from_raw_fd`: reopening the descriptor's /dev/fd entry reaches the
        // same pipe or file.
        n => std::fs::OpenOptions::new()
            .append(true)
            .open(format!("/dev/fd/{n}"))?
            .write_all(line.as_bytes()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The defaults `--help` states are the ones `Config::default()` has.
    #[test]
    fn help_states_the_real_defaults() {
        let mut cmd = <Cli as clap::CommandFactory>::command();
        let serve = cmd.find_subcommand_mut("serve").expect("serve");
        let help = serve.render_long_help().to_string();
        let d = Config::default();
        for want in [
            format!("[default: {}]", d.listen),
            format!("[default: {}]", d.data_dir.display()),
            format!("[default: {}]", d.ping_interval_secs),
            format!("[default: {}]", d.pong_timeout_secs),
        ] {
            assert!(help.contains(&want), "{want} missing from:\n{help}");
        }
    }
}
