//! Operator views on the node: `podstat top` and `podstat explain`.
//!
//! Data path: a [`source::Source`] yields exposition samples (the agent's own collectors in
//! this process, probes loaded when root; or a running agent's `/metrics`), parsed by
//! [`expo`] into a [`model::Snapshot`]. Two snapshots diffed give [`model::Row`]s, which
//! [`top`] renders as a table and [`explain`] turns into a diagnosis.

pub mod advice;
pub mod explain;
pub mod expo;
pub mod model;
pub mod source;
pub mod top;

use std::{
    io::{IsTerminal as _, Write as _},
    thread,
    time::{Duration, Instant},
};

use self::{
    model::{Snapshot, rows},
    source::{Source, SourceError},
};
use crate::cli::{ExplainArgs, SourceArgs, TopArgs, ViewOutput};

/// Why a view could not run.
#[derive(Debug, thiserror::Error)]
pub enum ViewError {
    #[error(transparent)]
    Source(#[from] SourceError),
    #[error(transparent)]
    Resolve(#[from] explain::ResolveError),
    #[error("the terminal")]
    Terminal(#[source] std::io::Error),
    #[error("podstat top needs a terminal on stdin and stdout; use --once for scripts")]
    NotATerminal,
}

fn open(args: &SourceArgs) -> Result<Source, ViewError> {
    Ok(match &args.from {
        Some(url) => Source::remote(url, &args.remote)?,
        None => Source::local(&args.host, &mut |w| {
            eprintln!("podstat: {w}");
        })?,
    })
}

/// Keeps the rows of the namespace `--namespace` names, if given.
fn in_namespace(mut r: Vec<model::Row>, ns: Option<&str>) -> Vec<model::Row> {
    if let Some(ns) = ns {
        r.retain(|r| r.names.namespace == ns);
    }
    r
}

/// `podstat top`.
pub fn run_top(args: &TopArgs) -> Result<(), ViewError> {
    let source = open(&args.source)?;
    let ns = args.namespace.as_deref();
    if args.once {
        let s0 = source.snapshot()?;
        let t0 = Instant::now();
        thread::sleep(args.interval);
        let s1 = source.snapshot()?;
        let r = in_namespace(rows(&s1, &s0, t0.elapsed().as_secs_f64()), ns);
        let shown = top::select(&r, args.sort, args.filter.as_deref().unwrap_or(""));
        let text = match args.output {
            ViewOutput::Json => top::render_json(&shown) + "\n",
            ViewOutput::Table => top::render_table(&shown, usize::MAX),
        };
        let _ = std::io::stdout().write_all(text.as_bytes());
        return Ok(());
    }
    if !(std::io::stdin().is_terminal() && std::io::stdout().is_terminal()) {
        return Err(ViewError::NotATerminal);
    }
    let mut prev: Option<(Snapshot, Instant)> = None;
    let screen = top::Screen::new(args.sort, args.filter.clone().unwrap_or_default());
    top::run_live(&source.describe(), screen, args.interval, || {
        let snap = source.snapshot()?;
        let now = Instant::now();
        let out = prev
            .as_ref()
            .map(|(s0, t0)| in_namespace(rows(&snap, s0, (now - *t0).as_secs_f64()), ns));
        prev = Some((snap, now));
        Ok::<_, SourceError>(out)
    })
    .map_err(ViewError::Terminal)
}

/// `podstat explain`.
pub fn run_explain(args: &ExplainArgs) -> Result<(), ViewError> {
    let source = open(&args.source)?;
    let s0 = source.snapshot()?;
    let sel = explain::resolve(&args.target, &s0)?;
    let t0 = Instant::now();
    observe(&sel, args.duration);
    let s1 = source.snapshot()?;
    let seconds = t0.elapsed().as_secs_f64();
    let d = explain::diagnose(&sel, &rows(&s1, &s0, seconds), &s1, seconds);
    let text = match args.output {
        ViewOutput::Json => serde_json::to_string_pretty(&d).unwrap_or_default() + "\n",
        ViewOutput::Table => explain::render_text(&d),
    };
    let _ = std::io::stdout().write_all(text.as_bytes());
    Ok(())
}

/// Waits `total`, with a countdown on stderr when it is a terminal (one line otherwise).
fn observe(sel: &explain::Selection, total: Duration) {
    let what = sel.container_id.as_ref().map_or_else(
        || format!("pod {}", sel.pod_uid),
        |c| format!("container {}", c.chars().take(12).collect::<String>()),
    );
    let tty = std::io::stderr().is_terminal();
    let mut err = std::io::stderr();
    if !tty {
        let _ = writeln!(
            err,
            "podstat: observing {what} for {:.0} s…",
            total.as_secs_f64()
        );
    }
    let end = Instant::now() + total;
    loop {
        let left = end.saturating_duration_since(Instant::now());
        if left.is_zero() {
            break;
        }
        if tty {
            let done = total.saturating_sub(left).as_secs_f64() / total.as_secs_f64().max(1e-9);
            #[expect(
                clippy::cast_possible_truncation,
                clippy::cast_sign_loss,
                reason = "0..=20"
            )]
            let bar = (done * 20.0).round().clamp(0.0, 20.0) as usize;
            let _ = write!(
                err,
                "\r\x1b[Kobserving {what} [{}{}] {:.0} s left",
                "#".repeat(bar),
                ".".repeat(20 - bar),
                left.as_secs_f64().ceil()
            );
            let _ = err.flush();
        }
        thread::sleep(left.min(Duration::from_millis(500)));
    }
    if tty {
        let _ = write!(err, "\r\x1b[K");
        let _ = err.flush();
    }
}
