//! What the engine counts: lock-free counters and histograms any thread
//! may read, rendered in the Prometheus text format.

use std::fmt::Write as _;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::time::Duration;

/// A Prometheus histogram with fixed bucket bounds.
#[derive(Debug)]
pub struct Histogram {
    bounds: &'static [f64],
    buckets: Vec<AtomicU64>,
    count: AtomicU64,
    /// The sum, in millionths of the unit (so it stays an integer).
    sum_micros: AtomicU64,
}

impl Histogram {
    /// A histogram with these upper bucket bounds (ascending).
    pub fn new(bounds: &'static [f64]) -> Self {
        Self {
            bounds,
            buckets: bounds.iter().map(|_| AtomicU64::new(0)).collect(),
            count: AtomicU64::new(0),
            sum_micros: AtomicU64::new(0),
        }
    }

    /// Records one observation.
    pub fn observe(&self, value: f64) {
        if let Some(bucket) = self.bounds.iter().position(|&bound| value <= bound) {
            self.buckets[bucket].fetch_add(1, Relaxed);
        }
        self.count.fetch_add(1, Relaxed);
        self.sum_micros.fetch_add((value * 1e6) as u64, Relaxed);
    }

    /// Records a duration in seconds.
    pub fn observe_duration(&self, duration: Duration) {
        self.observe(duration.as_secs_f64());
    }

    /// Observations so far.
    pub fn count(&self) -> u64 {
        self.count.load(Relaxed)
    }

    /// The sum of the observations.
    pub fn sum(&self) -> f64 {
        self.sum_micros.load(Relaxed) as f64 / 1e6
    }

    /// The histogram in the Prometheus text format.
    pub fn render(&self, name: &str, help: &str, out: &mut String) {
        let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} histogram");
        let mut cumulative = 0;
        for (bound, bucket) in self.bounds.iter().zip(&self.buckets) {
            cumulative += bucket.load(Relaxed);
            let _ = writeln!(out, "{name}_bucket{{le=\"{bound}\"}} {cumulative}");
        }
        let count = self.count();
        let _ = writeln!(out, "{name}_bucket{{le=\"+Inf\"}} {count}");
        let _ = writeln!(out, "{name}_sum {}\n{name}_count {count}", self.sum());
    }
}

/// Bucket bounds for durations in seconds.
pub const SECONDS: &[f64] = &[
    0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0,
];
/// Bucket bounds for batch sizes.
pub const SIZES: &[f64] = &[
    1.0, 2.0, 4.0, 8.0, 16.0, 32.0, 64.0, 128.0, 256.0, 512.0, 1024.0,
];

/// Adds one to a counter.
pub fn bump(counter: &AtomicU64) {
    counter.fetch_add(1, Relaxed);
}

/// Everything the engine counts.
#[derive(Debug)]
pub struct EngineMetrics {
    /// Proposals accepted as leader.
    pub proposals: AtomicU64,
    /// Proposals refused (not leader, busy).
    pub proposals_refused: AtomicU64,
    /// Requests forwarded to the leader.
    pub writes_forwarded: AtomicU64,
    /// Forwarded requests received from followers.
    pub forwards_served: AtomicU64,
    /// Read-index requests received from followers.
    pub read_index_served: AtomicU64,
    /// Read-index rounds started as leader.
    pub read_index_requests: AtomicU64,
    /// Reads answered on the leader's lease (here, or by the host).
    pub lease_reads: AtomicU64,
    /// Read rounds started only to renew the lease.
    pub lease_renewals: AtomicU64,
    /// Commands the leader proposed on its own (the machine's
    /// housekeeping: removing expired keys).
    pub housekeeping_proposals: AtomicU64,
    /// Read indexes fetched from the leader as a follower.
    pub read_index_fetches: AtomicU64,
    /// Linearizable reads served by the engine.
    pub reads_served: AtomicU64,
    /// Log entries applied.
    pub entries_applied: AtomicU64,
    /// Snapshots made.
    pub snapshots_created: AtomicU64,
    /// Snapshots received and installed.
    pub snapshots_installed: AtomicU64,
    /// Syncs of writes a leader made without one (its lazily synced log).
    pub leader_lazy_syncs: AtomicU64,
    /// Duration of each synced write of the log.
    pub fsync_seconds: Histogram,
    /// New log entries per synced write (group commit).
    pub entries_per_write: Histogram,
    /// Entries applied per apply batch.
    pub entries_per_apply: Histogram,
}

impl Default for EngineMetrics {
    fn default() -> Self {
        Self {
            proposals: AtomicU64::new(0),
            proposals_refused: AtomicU64::new(0),
            writes_forwarded: AtomicU64::new(0),
            forwards_served: AtomicU64::new(0),
            read_index_served: AtomicU64::new(0),
            read_index_requests: AtomicU64::new(0),
            lease_reads: AtomicU64::new(0),
            lease_renewals: AtomicU64::new(0),
            housekeeping_proposals: AtomicU64::new(0),
            read_index_fetches: AtomicU64::new(0),
            reads_served: AtomicU64::new(0),
            entries_applied: AtomicU64::new(0),
            snapshots_created: AtomicU64::new(0),
            snapshots_installed: AtomicU64::new(0),
            leader_lazy_syncs: AtomicU64::new(0),
            fsync_seconds: Histogram::new(SECONDS),
            entries_per_write: Histogram::new(SIZES),
            entries_per_apply: Histogram::new(SIZES),
        }
    }
}

impl EngineMetrics {
    /// The counters as (name after `prefix_`, help, value).
    pub fn counters(&self) -> [(&'static str, &'static str, u64); 15] {
        let v = |c: &AtomicU64| c.load(Relaxed);
        [
            (
                "proposals_total",
                "Proposals accepted as leader.",
                v(&self.proposals),
            ),
            (
                "proposals_refused_total",
                "Proposals refused (not leader, busy).",
                v(&self.proposals_refused),
            ),
            (
                "writes_forwarded_total",
                "Requests forwarded to the leader over the peer transport.",
                v(&self.writes_forwarded),
            ),
            (
                "forwards_served_total",
                "Forwarded requests received from followers.",
                v(&self.forwards_served),
            ),
            (
                "read_index_served_total",
                "Read-index requests received from followers.",
                v(&self.read_index_served),
            ),
            (
                "read_index_requests_total",
                "ReadIndex requests made as leader.",
                v(&self.read_index_requests),
            ),
            (
                "lease_reads_total",
                "Reads answered on the leader's lease, without a round.",
                v(&self.lease_reads),
            ),
            (
                "lease_renewals_total",
                "Read rounds started only to renew the leader's lease.",
                v(&self.lease_renewals),
            ),
            (
                "housekeeping_proposals_total",
                "Commands the leader proposed on its own (removing expired keys).",
                v(&self.housekeeping_proposals),
            ),
            (
                "leader_lazy_syncs_total",
                "Syncs of log writes this node made without one as leader.",
                v(&self.leader_lazy_syncs),
            ),
            (
                "read_index_fetches_total",
                "Read indexes fetched from the leader by this follower.",
                v(&self.read_index_fetches),
            ),
            (
                "reads_served_total",
                "Linearizable reads served.",
                v(&self.reads_served),
            ),
            (
                "entries_applied_total",
                "Log entries applied.",
                v(&self.entries_applied),
            ),
            (
                "snapshots_created_total",
                "Snapshots made.",
                v(&self.snapshots_created),
            ),
            (
                "snapshots_installed_total",
                "Snapshots received and installed.",
                v(&self.snapshots_installed),
            ),
        ]
    }

    /// Everything in the Prometheus text format, names starting `prefix_`.
    pub fn render(&self, prefix: &str, out: &mut String) {
        for (name, help, value) in self.counters() {
            let _ = writeln!(
                out,
                "# HELP {prefix}_{name} {help}\n# TYPE {prefix}_{name} counter\n{prefix}_{name} {value}"
            );
        }
        self.fsync_seconds.render(
            &format!("{prefix}_fsync_seconds"),
            "Duration of each synced write of the Raft log.",
            out,
        );
        self.entries_per_write.render(
            &format!("{prefix}_entries_per_write"),
            "New log entries per synced write (group commit).",
            out,
        );
        self.entries_per_apply.render(
            &format!("{prefix}_entries_per_apply"),
            "Entries applied per batch.",
            out,
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn histograms_count_cumulatively_and_render_for_prometheus() {
        let histogram = Histogram::new(SIZES);
        for value in [1.0, 3.0, 3.0, 5000.0] {
            histogram.observe(value);
        }
        assert_eq!(histogram.count(), 4);
        assert!((histogram.sum() - 5007.0).abs() < 1e-6);
        let mut out = String::new();
        histogram.render("x", "help", &mut out);
        assert!(out.contains("x_bucket{le=\"1\"} 1\n"), "{out}");
        assert!(out.contains("x_bucket{le=\"4\"} 3\n"), "{out}");
        assert!(
            out.contains("x_bucket{le=\"1024\"} 3\n"),
            "beyond the last bound: {out}"
        );
        assert!(out.contains("x_bucket{le=\"+Inf\"} 4\n"), "{out}");
        assert!(out.contains("x_count 4\n"), "{out}");
    }

    #[test]
    fn every_counter_and_histogram_is_rendered_once() {
        let metrics = EngineMetrics::default();
        bump(&metrics.proposals);
        metrics
            .fsync_seconds
            .observe_duration(Duration::from_millis(2));
        let mut out = String::new();
        metrics.render("drkv", &mut out);
        for (name, _, _) in metrics.counters() {
            assert_eq!(
                out.matches(&format!("# TYPE drkv_{name} counter")).count(),
                1,
                "{name}"
            );
        }
        assert!(out.contains("drkv_proposals_total 1\n"), "{out}");
        assert!(out.contains("drkv_fsync_seconds_count 1\n"), "{out}");
        assert!(
            out.contains("# TYPE drkv_entries_per_apply histogram"),
            "{out}"
        );
    }
}
