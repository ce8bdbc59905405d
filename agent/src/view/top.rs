//! `podstat top`: a table of the node's pods and containers, refreshed every second, sorted
//! and filtered with keys. The terminal (raw mode, alternate screen, cursor, keys, size) is
//! crossterm's; the screen itself is plain ANSI lines, so it works on any SSH terminal. The
//! terminal is restored on exit, on error, on panic, and on SIGTERM, SIGHUP or SIGQUIT (a
//! closed SSH session, `kill`), which end the view like `q`.

use std::{
    fmt::Write as _,
    io::Write as _,
    sync::{
        Arc, LazyLock,
        atomic::{AtomicBool, Ordering},
    },
    time::{Duration, Instant},
};

use crossterm::{
    cursor,
    event::{self, Event, KeyCode, KeyEvent, KeyEventKind, KeyModifiers},
    execute, queue,
    terminal::{self, Clear, ClearType, EnterAlternateScreen, LeaveAlternateScreen},
};
use serde::Serialize;

use super::model::Row;

/// What the table is sorted by (descending, names ascending).
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum SortKey {
    /// Throttled share of wall time.
    Throttled,
    /// CPU used.
    Cpu,
    /// Run-queue latency p99.
    Runq,
    /// Preemptions by other pods per second.
    Preempt,
    /// Pod and container name.
    Name,
}

impl SortKey {
    /// The key that selects it on screen.
    pub fn key(self) -> char {
        match self {
            Self::Throttled => 't',
            Self::Cpu => 'c',
            Self::Runq => 'r',
            Self::Preempt => 'p',
            Self::Name => 'n',
        }
    }

    fn from_key(c: char) -> Option<Self> {
        [
            Self::Throttled,
            Self::Cpu,
            Self::Runq,
            Self::Preempt,
            Self::Name,
        ]
        .into_iter()
        .find(|k| k.key() == c)
    }

    fn label(self) -> &'static str {
        match self {
            Self::Throttled => "throttled",
            Self::Cpu => "cpu",
            Self::Runq => "runq p99",
            Self::Preempt => "waited behind other pods",
            Self::Name => "name",
        }
    }

    fn value(self, r: &Row) -> Option<f64> {
        match self {
            Self::Throttled => r
                .throttled_wall_share()
                .or_else(|| r.throttled_period_share()),
            Self::Cpu => r.cpu_cores,
            Self::Runq => r.runq_p99(),
            Self::Preempt => r
                .waited_behind_others_rate()
                .or_else(|| r.preempted_by_others_rate()),
            Self::Name => None,
        }
    }
}

/// The keys line shown under the header.
pub const KEYS_HELP: &str = "keys: t throttled  c cpu  r runq p99  p neighbours  n name  / filter  Esc clear filter  q quit";

/// Whether `r` matches `filter`: a substring of its namespace, pod, container, pod uid or
/// container id; `namespace/` matches a namespace exactly. Empty matches everything.
pub fn matches(r: &Row, filter: &str) -> bool {
    let f = filter.trim();
    if f.is_empty() {
        return true;
    }
    if let Some(ns) = f.strip_suffix('/') {
        return r.names.namespace == ns;
    }
    [
        r.names.namespace.as_str(),
        r.names.pod.as_str(),
        r.names.container.as_str(),
        r.key.pod_uid.as_str(),
        r.key.container_id.as_str(),
    ]
    .iter()
    .any(|s| s.contains(f))
}

/// The rows that match `filter`, sorted by `sort`.
pub fn select<'a>(rows: &'a [Row], sort: SortKey, filter: &str) -> Vec<&'a Row> {
    let mut out: Vec<&Row> = rows.iter().filter(|r| matches(r, filter)).collect();
    let by_name = |a: &Row, b: &Row| {
        a.pod_name()
            .cmp(&b.pod_name())
            .then_with(|| a.key.container_id.cmp(&b.key.container_id))
    };
    out.sort_by(|a, b| match (sort.value(a), sort.value(b)) {
        (Some(x), Some(y)) => y.total_cmp(&x).then_with(|| by_name(a, b)),
        (Some(_), None) => std::cmp::Ordering::Less,
        (None, Some(_)) => std::cmp::Ordering::Greater,
        (None, None) => by_name(a, b),
    });
    out
}

const DASH: &str = "–";

/// A duration in few characters: `850µs`, `12.5ms`, `1.20s`.
pub fn short_dur(s: Option<f64>) -> String {
    match s {
        None => DASH.into(),
        Some(s) if s >= 1.0 => format!("{s:.2}s"),
        Some(s) if s >= 0.001 => format!("{:.1}ms", s * 1e3),
        Some(s) => format!("{:.0}µs", s * 1e6),
    }
}

fn opt(v: Option<f64>, f: impl Fn(f64) -> String) -> String {
    v.map_or_else(|| DASH.into(), f)
}

/// Column headers, and what each means (README).
const COLUMNS: [(&str, usize); 8] = [
    ("CPU/LIM", 10),
    ("THR%", 4),
    ("PAUSE99", 7),
    ("EXH50", 7),
    ("RUN@T", 5),
    ("RUNQ99", 7),
    ("NBR/s", 6),
    ("LOCAL", 5),
];

fn cells(r: &Row) -> [String; 8] {
    [
        format!(
            "{}/{}",
            opt(r.cpu_cores, |c| format!("{c:.2}")),
            opt(r.limit_cores, |c| format!("{c:.2}"))
        ),
        opt(
            r.throttled_wall_share()
                .or_else(|| r.throttled_period_share()),
            |s| format!("{:.0}%", s * 100.0),
        ),
        short_dur(r.pause_p99()),
        short_dur(r.exhausted_after_p50()),
        opt(r.runnable_at_throttle(), |n| format!("{n:.1}")),
        short_dur(r.runq_p99()),
        opt(r.waited_behind_others_rate(), |n| format!("{n:.2}")),
        opt(r.local_share(), |s| format!("{:.0}%", s * 100.0)),
    ]
}

fn pad_left(s: &str, w: usize) -> String {
    let n = s.chars().count();
    format!("{}{s}", " ".repeat(w.saturating_sub(n)))
}

fn pad_right(s: &str, w: usize) -> String {
    let n = s.chars().count();
    if n > w {
        let mut t: String = s.chars().take(w.saturating_sub(1)).collect();
        t.push('…');
        t
    } else {
        format!("{s}{}", " ".repeat(w - n))
    }
}

/// The table (header and one line per row), each line cut to `width` characters. The pod
/// column gives way first (down to 8 characters, names cut with `…`), so the numbers fit
/// an 80-column terminal.
pub fn render_table(rows: &[&Row], width: usize) -> String {
    let ctr_w = 12;
    let numbers: usize = COLUMNS.iter().map(|(_, w)| w + 1).sum::<usize>() + ctr_w + 1;
    let pod_w = rows
        .iter()
        .map(|r| r.pod_name().chars().count())
        .max()
        .unwrap_or(3)
        .clamp(3, 40)
        .min(width.saturating_sub(numbers).max(8));
    let mut lines = Vec::with_capacity(rows.len() + 1);
    let mut head = format!(
        "{} {}",
        pad_right("POD", pod_w),
        pad_right("CONTAINER", ctr_w)
    );
    for (h, w) in COLUMNS {
        let _ = write!(head, " {}", pad_left(h, w));
    }
    lines.push(head);
    for r in rows {
        let mut line = format!(
            "{} {}",
            pad_right(&r.pod_name(), pod_w),
            pad_right(&r.container_name(), ctr_w)
        );
        for (cell, (_, w)) in cells(r).iter().zip(COLUMNS) {
            let _ = write!(line, " {}", pad_left(cell, w));
        }
        lines.push(line);
    }
    let mut out = String::new();
    for l in lines {
        out.extend(l.trim_end().chars().take(width));
        out.push('\n');
    }
    out
}

/// One row of `--once --output json`.
#[derive(Debug, Serialize)]
pub struct JsonRow<'a> {
    pub namespace: &'a str,
    pub pod: &'a str,
    pub container: &'a str,
    pub pod_uid: &'a str,
    pub container_id: &'a str,
    pub qos: &'a str,
    pub cpu_cores: Option<f64>,
    pub limit_cores: Option<f64>,
    pub throttled_wall_share: Option<f64>,
    pub throttled_period_share: Option<f64>,
    pub throttle_pause_p99_seconds: Option<f64>,
    pub quota_exhausted_after_p50_seconds: Option<f64>,
    pub runnable_threads_at_throttle: Option<f64>,
    pub runqueue_latency_p99_seconds: Option<f64>,
    pub preemptions_by_other_pods_per_second: Option<f64>,
    pub waited_behind_other_pods_seconds_per_second: Option<f64>,
    pub steering_local_share: Option<f64>,
}

/// The rows as a JSON array, in display order.
pub fn render_json(rows: &[&Row]) -> String {
    let out: Vec<JsonRow<'_>> = rows
        .iter()
        .map(|r| JsonRow {
            namespace: &r.names.namespace,
            pod: &r.names.pod,
            container: &r.names.container,
            pod_uid: &r.key.pod_uid,
            container_id: &r.key.container_id,
            qos: &r.names.qos,
            cpu_cores: r.cpu_cores,
            limit_cores: r.limit_cores,
            throttled_wall_share: r.throttled_wall_share(),
            throttled_period_share: r.throttled_period_share(),
            throttle_pause_p99_seconds: r.pause_p99(),
            quota_exhausted_after_p50_seconds: r.exhausted_after_p50(),
            runnable_threads_at_throttle: r.runnable_at_throttle(),
            runqueue_latency_p99_seconds: r.runq_p99(),
            preemptions_by_other_pods_per_second: r.preempted_by_others_rate(),
            waited_behind_other_pods_seconds_per_second: r.waited_behind_others_rate(),
            steering_local_share: r.local_share(),
        })
        .collect();
    serde_json::to_string_pretty(&out).unwrap_or_else(|e| format!("{{\"error\":\"{e}\"}}"))
}

/// The screen's state between refreshes.
#[derive(Debug, Clone)]
pub struct Screen {
    pub sort: SortKey,
    pub filter: String,
    /// `Some` while the filter is being typed after `/`.
    pub editing: Option<String>,
    pub quit: bool,
}

impl Screen {
    pub fn new(sort: SortKey, filter: String) -> Self {
        Self {
            sort,
            filter,
            editing: None,
            quit: false,
        }
    }

    /// Applies one input byte.
    pub fn key(&mut self, b: u8) {
        if let Some(buf) = &mut self.editing {
            match b {
                b'\r' | b'\n' => {
                    self.filter = std::mem::take(buf);
                    self.editing = None;
                }
                0x1b => self.editing = None,
                0x7f | 0x08 => {
                    buf.pop();
                }
                0x20..=0x7e => buf.push(char::from(b)),
                _ => {}
            }
            return;
        }
        match b {
            b'q' | 0x03 => self.quit = true,
            b'/' => self.editing = Some(String::new()),
            0x1b => self.filter.clear(),
            _ => {
                if let Some(k) = SortKey::from_key(char::from(b)) {
                    self.sort = k;
                }
            }
        }
    }

    /// The whole screen: header, keys, status and table, cut to `width` × `height`.
    pub fn render(
        &self,
        source: &str,
        rows: &[Row],
        note: &str,
        width: usize,
        height: usize,
    ) -> String {
        let shown = select(rows, self.sort, &self.filter);
        let mut head = vec![format!(
            "podstat top - {source} - {} cgroups, {} shown - sort: {}",
            rows.len(),
            shown.len(),
            self.sort.label()
        )];
        // The keys stay readable on a narrow terminal: wrapped between entries, not cut.
        let mut line = String::new();
        for entry in KEYS_HELP.split("  ") {
            if !line.is_empty() && line.chars().count() + 2 + entry.chars().count() > width {
                head.push(std::mem::take(&mut line));
            }
            if !line.is_empty() {
                line.push_str("  ");
            }
            line.push_str(entry);
        }
        head.push(line);
        head.push(match &self.editing {
            Some(buf) => format!("filter: {buf}_  (Enter apply, Esc cancel)"),
            None if self.filter.is_empty() => format!("filter: none  {note}"),
            None => format!("filter: {}  {note}", self.filter),
        });
        let table = render_table(&shown, width);
        head.extend(table.lines().map(str::to_owned));
        let mut out = String::new();
        for line in head.iter().take(height.max(4)) {
            out.extend(line.chars().take(width));
            out.push_str("\x1b[K\r\n");
        }
        out
    }
}

/// The input byte a key stands for, as a raw-mode terminal would send it (Ctrl-C is 0x03,
/// Backspace 0x7f); `None` for keys the view ignores (arrows, function keys, non-ASCII).
pub fn key_byte(k: &KeyEvent) -> Option<u8> {
    if k.kind != KeyEventKind::Press || k.modifiers.contains(KeyModifiers::ALT) {
        return None;
    }
    match k.code {
        KeyCode::Enter => Some(b'\r'),
        KeyCode::Esc => Some(0x1b),
        KeyCode::Backspace => Some(0x7f),
        KeyCode::Tab => Some(b'\t'),
        KeyCode::Char(c) if c.is_ascii() => {
            let b = u8::try_from(c).ok()?;
            if k.modifiers.contains(KeyModifiers::CONTROL) {
                Some(b & 0x1f)
            } else {
                Some(b)
            }
        }
        _ => None,
    }
}

/// Puts the terminal back: cooked mode (crossterm keeps the settings it found), cursor shown,
/// main screen.
fn restore() {
    let _ = terminal::disable_raw_mode();
    let _ = execute!(std::io::stdout(), cursor::Show, LeaveAlternateScreen);
}

/// Raw mode and the alternate screen for as long as it lives.
struct RawTerminal;

impl RawTerminal {
    fn enter() -> std::io::Result<Self> {
        // Raw mode clears ISIG too: Ctrl-C arrives as a key and quits like `q`, through the
        // restore.
        terminal::enable_raw_mode()?;
        let term = Self;
        let prev = std::panic::take_hook();
        std::panic::set_hook(Box::new(move |info| {
            restore();
            prev(info);
        }));
        execute!(std::io::stdout(), EnterAlternateScreen, cursor::Hide)?;
        Ok(term)
    }
}

impl Drop for RawTerminal {
    fn drop(&mut self) {
        restore();
    }
}

/// Set by [`STOP_SIGNALS`]: the live view ends at its next wake-up, through the restore.
static STOP: LazyLock<Arc<AtomicBool>> = LazyLock::new(|| Arc::new(AtomicBool::new(false)));

/// The signals that end the live view (Ctrl-C arrives as a key in raw mode).
const STOP_SIGNALS: [i32; 3] = [
    signal_hook::consts::SIGTERM,
    signal_hook::consts::SIGHUP,
    signal_hook::consts::SIGQUIT,
];

/// How often a wait for keys looks at [`STOP`]: crossterm's poll resumes after a signal, so a
/// stop signal is seen within this.
const STOP_CHECK: Duration = Duration::from_millis(100);

/// Makes [`STOP_SIGNALS`] set [`STOP`] instead of killing the process, so that the terminal is
/// restored.
fn catch_stop_signals() -> std::io::Result<()> {
    for sig in STOP_SIGNALS {
        signal_hook::flag::register(sig, Arc::clone(&STOP))?;
    }
    Ok(())
}

/// The terminal's size (columns, rows), 80×24 if unknown.
fn size() -> (usize, usize) {
    match terminal::size() {
        Ok((w, h)) if w > 0 && h > 0 => (usize::from(w), usize::from(h)),
        _ => (80, 24),
    }
}

/// Why [`wait`] returned.
enum Wake {
    /// The refresh is due.
    Due,
    /// A key changed the screen, or the terminal was resized.
    Redraw,
    /// `q`, Ctrl-C or a stop signal.
    Quit,
}

/// Waits for keys until `until`, applying them to `screen`.
fn wait(screen: &mut Screen, until: Instant) -> std::io::Result<Wake> {
    loop {
        if STOP.load(Ordering::Relaxed) {
            return Ok(Wake::Quit);
        }
        let left = until.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return Ok(Wake::Due);
        }
        if !event::poll(left.min(STOP_CHECK))? {
            continue;
        }
        match event::read()? {
            Event::Key(k) => {
                let Some(b) = key_byte(&k) else { continue };
                screen.key(b);
                return Ok(if screen.quit {
                    Wake::Quit
                } else {
                    Wake::Redraw
                });
            }
            Event::Resize(..) => return Ok(Wake::Redraw),
            _ => {}
        }
    }
}

/// Runs the live view until `q`. `snapshot` takes a fresh snapshot's rows against the
/// previous one (`None` until there are two).
pub fn run_live<E: std::error::Error>(
    source: &str,
    mut screen: Screen,
    interval: Duration,
    mut refresh: impl FnMut() -> Result<Option<Vec<Row>>, E>,
) -> std::io::Result<()> {
    catch_stop_signals()?;
    let _term = RawTerminal::enter()?;
    let mut rows: Vec<Row> = Vec::new();
    let mut note = String::from("(measuring the first interval…)");
    let mut next = Instant::now();
    loop {
        if STOP.load(Ordering::Relaxed) {
            return Ok(());
        }
        if Instant::now() >= next {
            match refresh() {
                Ok(Some(r)) => {
                    rows = r;
                    note.clear();
                }
                Ok(None) => {}
                Err(e) => note = format!("error: {}", crate::util::chain(&e)),
            }
            next = Instant::now() + interval;
        }
        let (w, h) = size();
        let mut out = std::io::stdout();
        queue!(out, cursor::MoveTo(0, 0))?;
        out.write_all(screen.render(source, &rows, &note, w, h).as_bytes())?;
        queue!(out, Clear(ClearType::FromCursorDown))?;
        out.flush()?;
        match wait(&mut screen, next)? {
            Wake::Quit => return Ok(()),
            Wake::Due | Wake::Redraw => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stop_signals_end_the_view_instead_of_the_process() {
        catch_stop_signals().expect("sigaction");
        assert!(!STOP.load(Ordering::Relaxed));
        // The process survives its own SIGHUP, and the flag the loop checks is set.
        signal_hook::low_level::raise(signal_hook::consts::SIGHUP).expect("raise");
        assert!(STOP.load(Ordering::Relaxed));
        // ...and the wait for keys ends at once, without reading the terminal.
        let mut s = Screen::new(SortKey::Throttled, String::new());
        let until = Instant::now() + Duration::from_secs(5);
        assert!(matches!(wait(&mut s, until), Ok(Wake::Quit)));
        STOP.store(false, Ordering::Relaxed);
    }

    #[test]
    fn keys_map_to_the_bytes_a_raw_terminal_sends() {
        let k = |code, modifiers| key_byte(&KeyEvent::new(code, modifiers));
        let none = KeyModifiers::NONE;
        assert_eq!(k(KeyCode::Char('c'), KeyModifiers::CONTROL), Some(0x03));
        assert_eq!(k(KeyCode::Char('q'), none), Some(b'q'));
        assert_eq!(k(KeyCode::Char('/'), KeyModifiers::SHIFT), Some(b'/'));
        assert_eq!(k(KeyCode::Enter, none), Some(b'\r'));
        assert_eq!(k(KeyCode::Esc, none), Some(0x1b));
        assert_eq!(k(KeyCode::Backspace, none), Some(0x7f));
        assert_eq!(k(KeyCode::Up, none), None);
        assert_eq!(k(KeyCode::Char('é'), none), None);
        assert_eq!(k(KeyCode::Char('q'), KeyModifiers::ALT), None);
        // Ctrl-C quits like q does.
        let mut s = Screen::new(SortKey::Throttled, String::new());
        s.key(k(KeyCode::Char('c'), KeyModifiers::CONTROL).expect("a byte"));
        assert!(s.quit);
    }

    #[test]
    fn keys_sort_filter_and_quit() {
        let mut s = Screen::new(SortKey::Throttled, String::new());
        s.key(b'c');
        assert_eq!(s.sort, SortKey::Cpu);
        s.key(b'x'); // unknown: ignored
        assert_eq!(s.sort, SortKey::Cpu);
        for b in b"/shopX" {
            s.key(*b);
        }
        s.key(0x7f);
        assert_eq!(s.editing.as_deref(), Some("shop"));
        s.key(b'q'); // typed into the filter, not a quit
        s.key(0x7f);
        s.key(b'\r');
        assert_eq!((s.filter.as_str(), s.editing.is_none()), ("shop", true));
        s.key(0x1b);
        assert!(s.filter.is_empty());
        s.key(b'/');
        s.key(b'z');
        s.key(0x1b);
        assert!(
            s.filter.is_empty() && s.editing.is_none(),
            "Esc cancels the edit"
        );
        assert!(!s.quit);
        s.key(b'q');
        assert!(s.quit);
    }

    #[test]
    fn durations_are_short() {
        assert_eq!(short_dur(None), "–");
        assert_eq!(short_dur(Some(0.000_85)), "850µs");
        assert_eq!(short_dur(Some(0.0125)), "12.5ms");
        assert_eq!(short_dur(Some(1.2)), "1.20s");
    }
}
