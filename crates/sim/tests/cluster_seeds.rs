//! The shipped engine and key-value state machine under faults: seeds
//! run by `cargo test` (split so the test runner can spread them).

fn run(seeds: std::ops::Range<u64>) {
    let failures: Vec<String> = seeds
        .filter_map(|seed| dr_sim::run_cluster_seed(seed, dr_sim::FAULT_PHASE_SHORT_US).err())
        .map(|failure| failure.to_string())
        .collect();
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

#[test]
fn cluster_seeds_0_to_5() {
    run(0..5);
}

#[test]
fn cluster_seeds_5_to_300() {
    run(5..300);
}

#[test]
fn a_cluster_run_is_a_function_of_its_seed() {
    let first = dr_sim::run_cluster_seed(42, dr_sim::FAULT_PHASE_SHORT_US).unwrap();
    let again = dr_sim::run_cluster_seed(42, dr_sim::FAULT_PHASE_SHORT_US).unwrap();
    assert_eq!(first, again);
    assert!(first.answered > 50, "{first:?}");
    eprintln!(
        "{:?}",
        dr_sim::cluster::Report {
            history: Vec::new(),
            ..first
        }
    );
}
