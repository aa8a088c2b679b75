//! Replays every fuzz corpus and saved finding through the same harness the
//! fuzzer runs (`wssify::fuzzing`), as an ordinary stable test: CI re-checks
//! every past finding without nightly or cargo-fuzz.
//!
//! Inputs come from `fuzz/corpus/<target>/` and, when present,
//! `fuzz/artifacts/<target>/`. Each input is bounded in time by the harness.

use std::path::{Path, PathBuf};

/// A fuzz target's body: panics when the input breaks a property.
type Harness = fn(&[u8]);

/// The harness of each fuzz target, by the target's name.
const TARGETS: [(&str, Harness); 5] = [
    ("first_bytes", wssify::fuzzing::first_bytes),
    ("tls_stream", wssify::fuzzing::tls_stream),
    ("tls_records", wssify::fuzzing::tls_records),
    ("proxy_header", wssify::fuzzing::proxy_header),
    ("client_hello", wssify::fuzzing::client_hello),
];

/// Findings reported and not fixed yet, by a piece of their panic message,
/// with where they are written up. An input failing with one of these is
/// counted and printed, not failed, so CI stays green while the fix is
/// owed; once no input reproduces one any more, this test fails until its
/// entry is removed, so the list cannot outlive the bug.
// None open. The first one (rustls' second fatal alert, reached through
// `TlsStream::fail` asking rustls again over the bad record) was fixed by
// stopping as soon as rustls has nothing more to send; its crash-* seeds
// stay in the corpus.
const OPEN_FINDINGS: &[(&str, &str)] = &[];

fn fuzz_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("fuzz")
}

/// Every file under `fuzz/<kind>/<target>/`, sorted; none if it is missing.
fn inputs(kind: &str, target: &str) -> Vec<PathBuf> {
    let Ok(entries) = std::fs::read_dir(fuzz_dir().join(kind).join(target)) else {
        return Vec::new();
    };
    let mut files: Vec<PathBuf> = entries
        .map(|e| e.expect("readable corpus directory").path())
        .filter(|p| p.is_file())
        .collect();
    files.sort();
    files
}

/// The message a panic carried.
fn message(payload: &(dyn std::any::Any + Send)) -> String {
    if let Some(s) = payload.downcast_ref::<&str>() {
        s.to_string()
    } else if let Some(s) = payload.downcast_ref::<String>() {
        s.clone()
    } else {
        "(a panic without a message)".to_string()
    }
}

/// Runs every input of every target (one test, so the open findings are
/// judged over all of them), reporting each failure by file and content.
#[test]
fn every_corpus_input_passes() {
    let mut failed = Vec::new();
    let mut open_seen = vec![0usize; OPEN_FINDINGS.len()];
    let mut count = 0;
    for (target, harness) in TARGETS {
        let corpus = inputs("corpus", target);
        assert!(
            !corpus.is_empty(),
            "fuzz/corpus/{target}/ has no seeds: keep at least one in the repository"
        );
        for file in corpus.iter().chain(&inputs("artifacts", target)) {
            let data = std::fs::read(file).expect("readable corpus file");
            count += 1;
            let Err(payload) = std::panic::catch_unwind(|| harness(&data)) else {
                continue;
            };
            let why = message(payload.as_ref());
            if let Some(i) = OPEN_FINDINGS.iter().position(|(m, _)| why.contains(m)) {
                open_seen[i] += 1;
                continue;
            }
            let hex: String = data.iter().take(64).map(|b| format!("{b:02x}")).collect();
            failed.push(format!(
                "{target}: {} ({} bytes: {hex}…): {why}",
                file.display(),
                data.len()
            ));
        }
    }
    for ((pattern, where_), seen) in OPEN_FINDINGS.iter().zip(&open_seen) {
        eprintln!("open finding reproduced by {seen} of {count} inputs: {pattern} ({where_})");
    }
    assert!(
        failed.is_empty(),
        "{} of {count} corpus inputs failed:\n{}",
        failed.len(),
        failed.join("\n")
    );
    for ((pattern, _), seen) in OPEN_FINDINGS.iter().zip(&open_seen) {
        assert!(
            *seen > 0,
            "no input reproduces \"{pattern}\" any more: it is fixed, so remove it from OPEN_FINDINGS in tests/fuzz_corpus.rs (keep its crash-* seeds)"
        );
    }
}

/// A target added under `fuzz/fuzz_targets/` without a replay here (or a
/// corpus directory left behind by a removed one) fails this test.
#[test]
fn every_fuzz_target_is_replayed() {
    let names = |dir: &str, suffix: &str| -> Vec<String> {
        let mut names: Vec<String> = std::fs::read_dir(fuzz_dir().join(dir))
            .expect("fuzz directory present")
            .map(|e| e.expect("readable fuzz directory").file_name())
            .filter_map(|n| n.to_str()?.strip_suffix(suffix).map(str::to_string))
            .collect();
        names.sort();
        names
    };
    let mut known: Vec<String> = TARGETS.iter().map(|(n, _)| n.to_string()).collect();
    known.sort();
    assert_eq!(names("fuzz_targets", ".rs"), known);
    assert_eq!(names("corpus", ""), known);
}
