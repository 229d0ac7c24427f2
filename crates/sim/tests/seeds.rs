//! Simulation seeds run by `cargo test`: the named regression seeds and
//! a few hundred short runs, split so the test runner can spread them.
//! Long runs go through `cargo xtask sim --seeds N`.

fn run_short(seeds: std::ops::Range<u64>) {
    let failures: Vec<String> = seeds
        .filter_map(|seed| dr_sim::run_seed_for(seed, dr_sim::FAULT_PHASE_SHORT_US).err())
        .map(|failure| failure.to_string())
        .collect();
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

#[test]
fn regression_seeds_pass() {
    for &seed in dr_sim::REGRESSION_SEEDS {
        if let Err(failure) = dr_sim::run_seed(seed) {
            panic!("{failure}");
        }
    }
}

#[test]
fn short_seeds_0_to_100() {
    run_short(0..100);
}

#[test]
fn short_seeds_100_to_200() {
    run_short(100..200);
}

#[test]
fn short_seeds_200_to_300() {
    run_short(200..300);
}

#[test]
fn a_run_is_a_function_of_its_seed() {
    let first = dr_sim::run_seed_for(42, dr_sim::FAULT_PHASE_SHORT_US).unwrap();
    let again = dr_sim::run_seed_for(42, dr_sim::FAULT_PHASE_SHORT_US).unwrap();
    assert_eq!(first, again);
    assert!(first.writes_acked > 0 && first.reads_answered > 0);
}
