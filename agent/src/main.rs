//! `podstat`: the agent daemon and the node-side tools.

use std::{process::ExitCode, sync::Arc};

use anyhow::Context as _;
use podstat::{
    agent::Agent,
    check,
    cli::{self, AgentArgs, Cmd, LogArgs, LogFormat},
    metadata, server, view,
};
use tokio::signal::unix::{SignalKind, signal};

fn main() -> ExitCode {
    // Before any thread: see util::one_malloc_arena.
    podstat::util::one_malloc_arena();
    let parsed = match cli::parse_from(std::env::args_os()) {
        Ok(p) => p,
        Err(e) => e.exit(),
    };
    // The views own the terminal: only problems go to stderr unless --log.level says otherwise.
    let quiet = match parsed.cli.command {
        Cmd::Top(_) => Some("error"),
        Cmd::Explain(_) => Some("warn"),
        _ => None,
    };
    if let Err(e) = init_logging(&parsed.cli.log, quiet) {
        eprintln!("podstat: {e:#}");
        return ExitCode::from(2);
    }
    let result = match parsed.cli.command {
        Cmd::Agent(args) => run_agent(&args, &parsed.enabled).map(|()| ExitCode::SUCCESS),
        Cmd::Check(args) => check::run(&args, &parsed.enabled),
        Cmd::Top(args) => view::run_top(&args)
            .map(|()| ExitCode::SUCCESS)
            .context("podstat top"),
        Cmd::Explain(args) => view::run_explain(&args)
            .map(|()| ExitCode::SUCCESS)
            .context("podstat explain"),
    };
    match result {
        Ok(code) => code,
        Err(e) => {
            tracing::error!("{e:#}");
            eprintln!("podstat: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn init_logging(log: &LogArgs, quiet: Option<&str>) -> anyhow::Result<()> {
    let level = match quiet {
        Some(q) if log.level == "info" && std::env::var_os("PODSTAT_LOG").is_none() => q,
        _ => log.level.as_str(),
    };
    let filter = tracing_subscriber::EnvFilter::try_new(level)
        .with_context(|| format!("invalid --log.level {:?}", log.level))?;
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    match log.format {
        LogFormat::Text => builder.init(),
        LogFormat::Json => builder.json().flatten_event(true).init(),
    }
    Ok(())
}

fn run_agent(args: &AgentArgs, enabled: &[&'static str]) -> anyhow::Result<()> {
    tracing::info!(version = env!("CARGO_PKG_VERSION"), collectors = ?enabled, "starting podstat agent");
    // Read before the probes load: a bad web config stops the agent at once.
    let server_options = args.server_options().context("--web.config.file")?;
    if let Some(web) = &server_options.web {
        tracing::info!(
            tls = web.tls.is_some(),
            basic_auth_users = web.users.len(),
            health_open = args.health_open,
            "web config loaded"
        );
    }
    let provider = metadata::select(&args.host.metadata)?;
    if provider.is_none() {
        tracing::info!(
            "no metadata provider (no CRI socket, no service-account token, or --metadata.provider none): \
             series carry pod_uid and container_id, with empty namespace, pod and container"
        );
    }
    let store = Arc::new(metadata::Store::default());
    podstat::exposition::set_histograms(args.histograms);
    let mut config = args.host.config(enabled, true, Arc::clone(&store));
    config.drop_privileges = true;
    let running = Agent::start(config).context("starting the agent")?;

    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .max_blocking_threads(2)
        .build()
        .context("starting the async runtime")?;
    runtime.block_on(async {
        if let Some(p) = provider {
            tokio::spawn(metadata::run(
                Arc::clone(&store),
                p,
                args.host.metadata.clone(),
            ));
        }
        let listener = tokio::net::TcpListener::bind(args.listen)
            .await
            .with_context(|| format!("binding --web.listen-address {}", args.listen))?;
        tracing::info!(address = %listener.local_addr().unwrap_or(args.listen), "serving /metrics");
        let mut term = signal(SignalKind::terminate()).context("installing the SIGTERM handler")?;
        let mut int = signal(SignalKind::interrupt()).context("installing the SIGINT handler")?;
        let shutdown = async move {
            tokio::select! {
                _ = term.recv() => tracing::info!("SIGTERM received, shutting down"),
                _ = int.recv() => tracing::info!("SIGINT received, shutting down"),
            }
        };
        server::serve(
            listener,
            Arc::clone(&running.registry),
            &server_options,
            shutdown,
        )
        .await
        .context("serving HTTP")
    })?;
    drop(running);
    tracing::info!("stopped");
    Ok(())
}
