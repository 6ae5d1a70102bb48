//! Every target on its seeds, on every input that once failed (`fuzz/regressions/`),
//! and on a short deterministic mutation run: what `cargo test` checks of the fuzz
//! targets. The bounded run of the gate is `dura-fuzz run` (scripts/test.sh).

use std::path::Path;

use dura_core::rng::Rng;
use dura_fuzz::mutate::mutate;
use dura_fuzz::{TARGETS, target};

// An allocation over the fuzz bound aborts this test binary, as it does the fuzzers.
#[global_allocator]
static ALLOCATOR: dura_fuzz::alloc::Bounded = dura_fuzz::alloc::Bounded;

#[test]
fn every_target_passes_and_accepts_most_of_its_seeds() {
    for t in TARGETS {
        let seeds = (t.seeds)();
        assert!(!seeds.is_empty(), "{}: no seeds", t.name);
        let accepted = seeds.iter().filter(|seed| (t.run)(seed)).count();
        assert!(accepted * 2 >= seeds.len(), "{}: {accepted} of {} seeds", t.name, seeds.len());
    }
}

/// `fuzz/regressions/TARGET/NAME`: an input that made TARGET fail once (a decoder's
/// panic, an unbounded allocation, or a harness bug); each must pass now.
#[test]
fn every_input_that_once_failed_passes() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("regressions");
    let mut count = 0;
    for folder in std::fs::read_dir(&dir).expect("the regressions folder") {
        let folder = folder.expect("an entry").path();
        let name = folder.file_name().and_then(|n| n.to_str()).expect("a name").to_owned();
        let t = target(&name).unwrap_or_else(|| panic!("{}: no such target", folder.display()));
        for file in std::fs::read_dir(&folder).expect("a target's folder") {
            let path = file.expect("an entry").path();
            let input = std::fs::read(&path).expect("an input");
            (t.run)(&input);
            count += 1;
        }
    }
    assert!(count >= 3, "{count} regression inputs");
}

#[test]
fn a_short_mutation_run_passes_every_target() {
    for (index, t) in TARGETS.iter().enumerate() {
        let corpus = (t.seeds)();
        let mut rng = Rng::new(index as u64 + 100);
        for _ in 0..200 {
            (t.run)(&mutate(&mut rng, &corpus));
        }
    }
}
