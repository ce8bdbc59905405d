//! Snapshot tests of `podstat top` and `podstat explain`: fixed exposition input (two scrapes
//! 10 s apart, with the steering families another collector will add) → rendered text and JSON,
//! compared with checked-in files. Update after an intended change with
//! `UPDATE_SNAPSHOTS=1 cargo test -p podstat --test views`.

use std::path::PathBuf;

use podstat::view::{
    explain::{self, Selection},
    expo,
    model::{Row, Snapshot, rows},
    top::{self, Screen, SortKey},
};

fn dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/views")
}

fn rows_10s() -> (Vec<Row>, Snapshot) {
    let read = |f: &str| {
        let p = dir().join(f);
        std::fs::read_to_string(&p).unwrap_or_else(|e| panic!("reading {}: {e}", p.display()))
    };
    let s0 = Snapshot::from_samples(&expo::parse(&read("node.t0.prom")));
    let s1 = Snapshot::from_samples(&expo::parse(&read("node.t1.prom")));
    (rows(&s1, &s0, 10.0), s1)
}

fn check(name: &str, got: &str) {
    let path = dir().join(name);
    if std::env::var_os("UPDATE_SNAPSHOTS").is_some_and(|v| v == "1") {
        std::fs::write(&path, got).unwrap_or_else(|e| panic!("writing {}: {e}", path.display()));
        return;
    }
    let want = std::fs::read_to_string(&path).unwrap_or_else(|e| {
        panic!(
            "{}: {e} (run with UPDATE_SNAPSHOTS=1 to create it)",
            path.display()
        )
    });
    assert!(
        want == got,
        "{} differs.\n--- want\n{want}\n--- got\n{got}\n(if the change is intended: UPDATE_SNAPSHOTS=1 cargo test -p podstat --test views)",
        path.display()
    );
}

fn explain_of(pod: &str) -> explain::Diagnosis {
    let (r, s1) = rows_10s();
    let sel: Selection = explain::resolve(pod, &s1).unwrap_or_else(|e| panic!("{pod}: {e}"));
    explain::diagnose(&sel, &r, &s1, 10.0)
}

#[test]
fn explain_throttled_pod() {
    let d = explain_of("shop/checkout-7d9f");
    assert_eq!(d.causes.first(), Some(&"throttling"));
    let rec = d.throttling[0]
        .recommendation
        .as_ref()
        .expect("a recommendation");
    assert_eq!(rec.pool_threads, Some(1));
    assert!(rec.limit_cores.is_some_and(|l| l > 0.5), "{rec:?}");
    check("explain-throttled.txt", &explain::render_text(&d));
    check(
        "explain-throttled.json",
        &(serde_json::to_string_pretty(&d).expect("json") + "\n"),
    );
}

#[test]
fn explain_noisy_neighbour_names_the_hog() {
    let d = explain_of("frontend-1");
    assert_eq!(d.causes.first(), Some(&"noisy_neighbours"));
    let n = d.neighbours.as_ref().expect("scheduler data");
    assert_eq!(n.preemptors[0].name, "batch/hog-0");
    check("explain-noisy.txt", &explain::render_text(&d));
}

#[test]
fn explain_idle_pod_reports_nothing_wrong() {
    let d = explain_of("e0a1c2d3-0000-4000-8000-000000000004");
    assert!(d.causes.is_empty(), "{:?}", d.causes);
    check("explain-idle.txt", &explain::render_text(&d));
}

#[test]
fn top_sorted_and_filtered() {
    let (r, _) = rows_10s();
    let by = |k| top::render_table(&top::select(&r, k, ""), 200);
    check("top-throttled.txt", &by(SortKey::Throttled));
    check("top-runq.txt", &by(SortKey::Runq));
    check(
        "top-json-cpu.json",
        &(top::render_json(&top::select(&r, SortKey::Cpu, "batch/")) + "\n"),
    );
    // A classic 80×24 SSH terminal: every column and every key still on screen.
    let narrow = Screen::new(SortKey::Throttled, String::new())
        .render("fixture", &r, "", 80, 24)
        .replace("\x1b[K\r", "");
    assert!(narrow.lines().all(|l| l.chars().count() <= 80), "{narrow}");
    assert!(
        narrow.contains("q quit") && narrow.contains(" LOCAL\n"),
        "{narrow}"
    );
    check("top-screen-80.txt", &narrow);
    let mut screen = Screen::new(SortKey::Preempt, String::new());
    for b in b"/shop\r" {
        screen.key(*b);
    }
    check(
        "top-screen-filtered.txt",
        &screen
            .render("fixture", &r, "", 100, 12)
            .replace("\x1b[K\r", ""),
    );
}
