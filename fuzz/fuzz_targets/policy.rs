//! Any policy spec text (globs, selectors, TTLs): see `common::check_policy`.
#![no_main]

mod common;

libfuzzer_sys::fuzz_target!(|data: &[u8]| common::check_policy(data));
