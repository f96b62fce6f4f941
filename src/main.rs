//! The `tamis` command: run the proxy, or check a config and print what leaves.

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::Context;
use clap::{Parser, Subcommand};
use tamis::config::{config_path, default_config_note, Config, LogFormat};
use tamis::server::Server;
use tamis::transparency::service_user::{self, Account};

/// `tamis --version`: the version and the git revision it was built from.
const VERSION_LINE: &str = concat!(
    env!("CARGO_PKG_VERSION"),
    " (revision ",
    env!("TAMIS_REVISION"),
    ")"
);

#[derive(Parser)]
#[command(
    version = VERSION_LINE,
    about = "A privacy reverse proxy for third-party fonts, tiles, scripts and analytics"
)]
struct Cli {
    /// The TOML configuration file [default: ./config/tamis.toml if present, else
    /// /etc/tamis/tamis.toml].
    #[arg(short = 'c', long, global = true)]
    config: Option<PathBuf>,
    #[command(subcommand)]
    command: Option<Command>,
}

#[derive(Subcommand)]
enum Command {
    /// Run the proxy (the default).
    Run,
    /// Validate the config without starting, and print what each route sends upstream.
    Check {
        /// One line per route instead of the full report.
        #[arg(short, long)]
        quiet: bool,
        /// Instead of the report, print the TLS terminator's snippet that sends every prefix
        /// of this config (and the transparency page) to tamis: deploy/nginx/tamis.conf and
        /// deploy/caddy/Caddyfile are this output for config/tamis.toml.
        #[arg(long, value_name = "FRONT_END")]
        emit: Option<Emit>,
        /// Also say which files the config names that USER could not read (run as root on
        /// /etc/tamis/tamis.toml, the packaged service's user `tamis` is checked unasked).
        #[arg(long, value_name = "USER")]
        service_user: Option<String>,
    },
    /// List the third-party resources an HTML page loads and whether a route covers each;
    /// exits 1 if any is not covered (for a site's CI).
    Audit {
        /// An HTML file, or a URL on your own site.
        page: String,
        /// The site's own origin (e.g. https://site.example); taken from the page's URL when
        /// auditing a URL.
        #[arg(long)]
        site: Option<String>,
    },
    /// Print, as JSON, the exact request tamis would send upstream for a request (a file in
    /// JSON or raw HTTP/1.1, `-` for stdin), and which rule changed each field; sends nothing.
    /// Exits 0 when it would be sent, 1 when tamis would answer it itself (4xx), 2 on bad input.
    Probe {
        /// The request: `{"method","path","headers":[[name,value],...],"body"}` or HTTP/1.1 text.
        request_file: PathBuf,
    },
}

/// The front ends `check --emit` writes a snippet for.
#[derive(Clone, Copy, clap::ValueEnum)]
enum Emit {
    Nginx,
    Caddy,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let path = config_path(cli.config.as_deref(), Path::exists);
    let command = cli.command.unwrap_or(Command::Run);
    if cli.config.is_none() && !matches!(command, Command::Run) {
        // `check` names the file in its first line; the others say it here. (`run` logs it.)
        eprintln!("tamis: {}", default_config_note(&path, Path::exists));
    }
    match command {
        Command::Check {
            quiet,
            emit,
            service_user,
        } => match Config::load(&path) {
            Ok(config) if emit.is_some() => {
                use tamis::transparency::frontend::{emit as snippet, FrontEnd};
                let front = match emit {
                    Some(Emit::Caddy) => FrontEnd::Caddy,
                    _ => FrontEnd::Nginx,
                };
                match snippet(&config, front) {
                    Ok(text) => {
                        print!("{text}");
                        ExitCode::SUCCESS
                    }
                    Err(e) => {
                        eprintln!("error: {e}");
                        ExitCode::from(2)
                    }
                }
            }
            Ok(mut config) => {
                config
                    .warnings
                    .extend(service_user_findings(&config, service_user.as_deref()));
                print!(
                    "{}",
                    if quiet {
                        tamis::transparency::check_summary(&config)
                    } else {
                        tamis::transparency::check_report(&config)
                    }
                );
                // The key store is asked whether it persists, as start-up asks it.
                let store = config.cluster.as_ref().and_then(|c| c.store.as_ref());
                match store.map(tamis::store::check).transpose() {
                    Ok(Some(line)) => {
                        println!("{line}");
                        ExitCode::SUCCESS
                    }
                    Ok(None) => ExitCode::SUCCESS,
                    Err(why) => {
                        eprintln!("error: {why}");
                        ExitCode::from(2)
                    }
                }
            }
            Err(e) => {
                eprintln!("error: {e}");
                ExitCode::from(2)
            }
        },
        Command::Audit { page, site } => match Config::load(&path) {
            Ok(config) => ExitCode::from(tamis::audit::command(&config, &page, site.as_deref())),
            Err(e) => {
                eprintln!("error: {e}");
                ExitCode::from(2)
            }
        },
        Command::Probe { request_file } => {
            let config = match Config::load(&path) {
                Ok(c) => c,
                Err(e) => {
                    eprintln!("error: {e}");
                    return ExitCode::from(2);
                }
            };
            let input = if request_file.as_os_str() == "-" {
                let mut buf = Vec::new();
                std::io::Read::read_to_end(&mut std::io::stdin(), &mut buf).map(|_| buf)
            } else {
                std::fs::read(&request_file)
            };
            let input = match input {
                Ok(i) => i,
                Err(e) => {
                    eprintln!("error: {}: {e}", request_file.display());
                    return ExitCode::from(2);
                }
            };
            let (out, code) = tamis::transparency::probe::command(&config, &input);
            if code == 2 {
                eprint!("{out}");
            } else {
                print!("{out}");
            }
            ExitCode::from(code)
        }
        Command::Run => {
            // The config says how to log; a config that does not load is told in text.
            let loaded = Config::load(&path);
            init_logging(loaded.as_ref().map_or(LogFormat::Text, |c| c.log.format));
            match loaded
                .map_err(anyhow::Error::from)
                .and_then(|c| run(&path, c))
            {
                Ok(()) => ExitCode::SUCCESS,
                Err(e) => {
                    // Logging goes to stderr already: one line, not two.
                    tracing::error!("{e:#}");
                    ExitCode::FAILURE
                }
            }
        }
    }
}

/// `check` as the service sees it: the files `user` (given, or the packaged service's when root
/// checks the packaged config) could not read, as warnings.
fn service_user_findings(config: &Config, user: Option<&str>) -> Vec<tamis::config::Problem> {
    let packaged = || {
        let canonical = |p: &Path| std::fs::canonicalize(p).ok();
        let system = canonical(Path::new(service_user::SERVICE_CONFIG));
        system.is_some() && canonical(&config.source) == system
    };
    let name = match user {
        Some(name) => name,
        None if service_user::running_as_root() && packaged() => service_user::SERVICE_USER,
        None => return Vec::new(),
    };
    match Account::lookup(name) {
        Some(who) => service_user::findings(config, &who, name == service_user::SERVICE_USER),
        // Asked for: say it could not be done. Unasked (no package installed): nothing to say.
        None if user.is_some() => vec![tamis::config::Problem {
            at: config.source.display().to_string(),
            key: "--service-user".to_owned(),
            message: format!(
                "no user {name:?} in /etc/passwd: which files it may read is not checked"
            ),
        }],
        None => Vec::new(),
    }
}

fn init_logging(format: LogFormat) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    match format {
        // One object per line, fields at the top level (as nginx and Caddy users ship them).
        LogFormat::Json => builder
            .json()
            .flatten_event(true)
            .with_current_span(false)
            .init(),
        // Colours only on a terminal: journald and log files get plain text.
        LogFormat::Text => builder
            .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
            .init(),
    }
}

fn run(path: &Path, config: Config) -> anyhow::Result<()> {
    tracing::info!(
        version = tamis::VERSION,
        revision = tamis::REVISION,
        config = %path.display(),
        hash = %config.hash,
        "tamis starting"
    );
    for w in &config.warnings {
        tracing::warn!(at = %w.at, key = %w.key, "{}", w.message);
    }
    // The accept loops, the admin listener and reloads run here; the public connections run
    // on the worker threads the server starts (see `tamis::workers`).
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("cannot start the async runtime")?;
    runtime.block_on(async {
        let server = Server::bind(config).await?;
        tokio::spawn(reload_on_sighup(server.live())?);
        tokio::spawn(ignore_sigusr1()?);
        server.run(shutdown_signal()).await;
        Ok(())
    })
}

/// Reloads the config on each SIGHUP (`systemctl reload tamis`); a refused reload is logged
/// and the running config stays. The handler is installed before this returns, so a SIGHUP
/// that arrives once the server is up never kills it.
#[cfg(unix)]
fn reload_on_sighup(
    live: std::sync::Arc<tamis::reload::Live>,
) -> anyhow::Result<impl std::future::Future<Output = ()>> {
    use tokio::signal::unix::{signal, SignalKind};
    let mut hup = signal(SignalKind::hangup()).context("cannot listen for SIGHUP")?;
    Ok(async move {
        while hup.recv().await.is_some() {
            tracing::info!("SIGHUP received: reloading the config");
            // The outcome is logged (and counted) by the reload itself.
            let _ = live.reload().await;
        }
    })
}

#[cfg(not(unix))]
fn reload_on_sighup(
    _live: std::sync::Arc<tamis::reload::Live>,
) -> anyhow::Result<impl std::future::Future<Output = ()>> {
    Ok(std::future::pending::<()>())
}

/// SIGUSR1 is nginx's "reopen the log files"; tamis logs to stderr (the journal, the
/// container's log), so there is nothing to reopen: it is logged and ignored, never fatal (its
/// default action would kill the process). Installed before the server runs, as for SIGHUP.
#[cfg(unix)]
fn ignore_sigusr1() -> anyhow::Result<impl std::future::Future<Output = ()>> {
    use tokio::signal::unix::{signal, SignalKind};
    let mut usr1 = signal(SignalKind::user_defined1()).context("cannot listen for SIGUSR1")?;
    Ok(async move {
        while usr1.recv().await.is_some() {
            tracing::info!(
                "SIGUSR1 received: tamis logs to stderr, there is no log file to reopen; ignored"
            );
        }
    })
}

#[cfg(not(unix))]
fn ignore_sigusr1() -> anyhow::Result<impl std::future::Future<Output = ()>> {
    Ok(std::future::pending::<()>())
}

/// Waits for one unix signal; if it cannot be listened for, logs it and never resolves.
#[cfg(unix)]
async fn unix_signal(kind: tokio::signal::unix::SignalKind, name: &str) {
    match tokio::signal::unix::signal(kind) {
        Ok(mut s) => {
            s.recv().await;
        }
        Err(e) => {
            tracing::error!(error = %e, "cannot listen for {name}");
            std::future::pending::<()>().await;
        }
    }
}

/// Resolves on SIGINT, SIGTERM or SIGQUIT (nginx's graceful stop: the same drain here).
async fn shutdown_signal() {
    let ctrl_c = async {
        if let Err(e) = tokio::signal::ctrl_c().await {
            tracing::error!(error = %e, "cannot listen for SIGINT");
            std::future::pending::<()>().await;
        }
    };
    #[cfg(unix)]
    let term = unix_signal(tokio::signal::unix::SignalKind::terminate(), "SIGTERM");
    #[cfg(unix)]
    let quit = unix_signal(tokio::signal::unix::SignalKind::quit(), "SIGQUIT");
    #[cfg(not(unix))]
    let (term, quit) = (std::future::pending::<()>(), std::future::pending::<()>());
    tokio::select! {
        _ = ctrl_c => tracing::info!("SIGINT received"),
        _ = term => tracing::info!("SIGTERM received"),
        _ = quit => tracing::info!("SIGQUIT received"),
    }
}
