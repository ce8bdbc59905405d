//! The bucketing microbenchmark for `cargo xtask bench`: times podstat's `bucketing_*` socket
//! filters under `BPF_PROG_TEST_RUN` (`podstat_tests::bucketing`), after checking that their
//! slots are userspace's, and prints `{"bucketing": …}` (`bench_json::BucketingResult`).
//!
//! `podstat-test-bucketing [--out-dir DIR] [--rounds N]`: N rounds (default 21) of each program
//! on each input set, the programs' order rotating each round. `--out-dir` is accepted for
//! `cargo xtask` and unused.
use std::{collections::BTreeMap, process::ExitCode};

use podstat_tests::{
    bench_json::{BucketingResult, BucketingSet},
    bucketing::{
        Bench, CHAIN, NATIVE, PROGRAMS, REPEAT, SEARCH, check_slots, input_sets, pin_to_current_cpu,
    },
};

fn run(rounds: usize) -> anyhow::Result<BucketingResult> {
    let cpu = pin_to_current_cpu()?;
    let mut bench = Bench::load()?;
    let mut checked = BTreeMap::new();
    for program in [NATIVE, CHAIN, SEARCH] {
        checked.insert(program.to_owned(), check_slots(&mut bench, program)?);
    }
    eprintln!("bucketing: slots checked against userspace; timing on CPU {cpu}");
    let mut sets = Vec::new();
    for set in input_sets() {
        bench.set_input(&set.values)?;
        let mut ns: BTreeMap<String, Vec<f64>> = BTreeMap::new();
        for round in 0..rounds {
            for k in 0..PROGRAMS.len() {
                let program = PROGRAMS[(round + k) % PROGRAMS.len()];
                let t = bench.run(program, REPEAT)?;
                ns.entry(program.to_owned())
                    .or_default()
                    .push(t.as_secs_f64() * 1e9 / f64::from(REPEAT));
            }
        }
        eprintln!("bucketing: set {} done ({rounds} rounds)", set.name);
        sets.push(BucketingSet {
            name: set.name.to_owned(),
            what: set.what.to_owned(),
            ns,
        });
    }
    Ok(BucketingResult {
        repeat: REPEAT,
        checked,
        sets,
    })
}

fn main() -> ExitCode {
    let mut rounds = 21;
    let mut args = std::env::args().skip(1);
    let usage = || {
        eprintln!("usage: podstat-test-bucketing [--out-dir DIR] [--rounds N (≥ 1)]");
        ExitCode::from(2)
    };
    while let Some(a) = args.next() {
        match (a.as_str(), args.next()) {
            ("--out-dir", Some(_)) => {}
            ("--rounds", Some(n)) => match n.parse::<usize>() {
                Ok(n @ 1..) => rounds = n,
                _ => return usage(),
            },
            _ => return usage(),
        }
    }
    match run(rounds).and_then(|r| Ok(serde_json::to_string(&r)?)) {
        Ok(json) => {
            println!("{{\"bucketing\":{json}}}");
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("podstat-test-bucketing: {e:#}");
            ExitCode::FAILURE
        }
    }
}
