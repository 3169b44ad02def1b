//! Any bytes POSTed to /validate (parsing, decision, response): see `common::check_review`.
#![no_main]

mod common;

libfuzzer_sys::fuzz_target!(|data: &[u8]| common::check_review(data));
