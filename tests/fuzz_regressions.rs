//! Replays the fuzz corpus (seeds captured from the real API server by
//! `hack/capture-reviews.py`, plus what fuzzing found interesting) and every kept crash
//! (`fuzz/regressions/`) through the fuzz targets' own checks, under plain `cargo test`.
//! `hack/test.sh` also fuzzes each target for a bounded time with `cargo +nightly fuzz`.

#[path = "../fuzz/fuzz_targets/common.rs"]
mod common;

use std::path::Path;

fn inputs(dirs: &[&str]) -> Vec<(String, Vec<u8>)> {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let mut out = Vec::new();
    for dir in dirs {
        for entry in std::fs::read_dir(root.join(dir)).unwrap() {
            let path = entry.unwrap().path();
            if path.file_name().is_some_and(|n| n != ".keep") {
                out.push((path.display().to_string(), std::fs::read(&path).unwrap()));
            }
        }
    }
    out
}

#[test]
fn review_corpus_and_regressions_get_an_answer() {
    let inputs = inputs(&["fuzz/corpus/review", "fuzz/regressions/review"]);
    assert!(inputs.len() >= 5, "the review corpus is missing");
    for (path, data) in inputs {
        let result = std::panic::catch_unwind(|| common::check_review(&data));
        assert!(result.is_ok(), "{path}");
    }
}

#[test]
fn policy_corpus_and_regressions_compile_or_report() {
    for (path, data) in inputs(&["fuzz/corpus/policy", "fuzz/regressions/policy"]) {
        let result = std::panic::catch_unwind(|| common::check_policy(&data));
        assert!(result.is_ok(), "{path}");
    }
}

#[test]
fn a_captured_review_is_decided() {
    // The corpus is real: a review the API server sent, answered with a decision.
    let data = std::fs::read(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/fuzz/corpus/review/captured-03.json"
    ))
    .unwrap();
    let review: serde_json::Value = serde_json::from_slice(&data).unwrap();
    assert_eq!(review["kind"], "AdmissionReview");
    common::check_review(&data);
}
