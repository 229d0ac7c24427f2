//! Counters and histograms the node keeps, rendered in the Prometheus
//! text format for `GET /metrics`. Lock-free: every update is one or two
//! relaxed atomic adds on the hot path.

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
    fn new(bounds: &'static [f64]) -> Self {
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

    fn render(&self, name: &str, help: &str, out: &mut String) {
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

const SECONDS: &[f64] = &[
    0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0,
];
const SIZES: &[f64] = &[
    1.0, 2.0, 4.0, 8.0, 16.0, 32.0, 64.0, 128.0, 256.0, 512.0, 1024.0,
];

/// Everything the node counts.
#[derive(Debug)]
pub struct Metrics {
    /// Proposals accepted by this node as leader.
    pub proposals: AtomicU64,
    /// Proposals refused (not leader, busy).
    pub proposals_refused: AtomicU64,
    /// Requests (writes, membership changes) a follower sent on to the
    /// leader over the peer transport.
    pub writes_forwarded: AtomicU64,
    /// Forwarded requests this node received from followers.
    pub forwards_served: AtomicU64,
    /// Read-index requests this node received from followers.
    pub read_index_served: AtomicU64,
    /// Client authentications refused (wrong user or password).
    pub auth_failures: AtomicU64,
    /// Client commands refused for want of authentication or permission.
    pub commands_denied: AtomicU64,
    /// ReadIndex requests this node made as leader.
    pub read_index_requests: AtomicU64,
    /// Reads (and read indexes handed to followers) answered on the
    /// leader's lease, without a round.
    pub lease_reads: AtomicU64,
    /// Read rounds the leader started only to renew its lease.
    pub lease_renewals: AtomicU64,
    /// Read indexes a follower fetched from the leader (one per batch).
    pub read_index_fetches: AtomicU64,
    /// Reads served.
    pub reads_served: AtomicU64,
    /// Log entries applied.
    pub entries_applied: AtomicU64,
    /// Snapshots this node made.
    pub snapshots_created: AtomicU64,
    /// Snapshots this node received and installed.
    pub snapshots_installed: AtomicU64,
    /// Client connections open now.
    pub clients_connected: AtomicU64,
    /// Client connections accepted in all.
    pub clients_accepted: AtomicU64,
    /// Client connections refused (over the limit).
    pub clients_refused: AtomicU64,
    /// Client commands handled.
    pub commands: AtomicU64,
    /// Connections closed for a protocol error or a timeout.
    pub clients_dropped: AtomicU64,
    /// Duration of each synced write of a ready.
    pub fsync_seconds: Histogram,
    /// New log entries per synced write (group commit).
    pub entries_per_write: Histogram,
    /// Entries applied per apply batch.
    pub entries_per_apply: Histogram,
}

impl Default for Metrics {
    fn default() -> Self {
        Self {
            proposals: AtomicU64::new(0),
            proposals_refused: AtomicU64::new(0),
            writes_forwarded: AtomicU64::new(0),
            forwards_served: AtomicU64::new(0),
            read_index_served: AtomicU64::new(0),
            auth_failures: AtomicU64::new(0),
            commands_denied: AtomicU64::new(0),
            read_index_requests: AtomicU64::new(0),
            lease_reads: AtomicU64::new(0),
            lease_renewals: AtomicU64::new(0),
            read_index_fetches: AtomicU64::new(0),
            reads_served: AtomicU64::new(0),
            entries_applied: AtomicU64::new(0),
            snapshots_created: AtomicU64::new(0),
            snapshots_installed: AtomicU64::new(0),
            clients_connected: AtomicU64::new(0),
            clients_accepted: AtomicU64::new(0),
            clients_refused: AtomicU64::new(0),
            commands: AtomicU64::new(0),
            clients_dropped: AtomicU64::new(0),
            fsync_seconds: Histogram::new(SECONDS),
            entries_per_write: Histogram::new(SIZES),
            entries_per_apply: Histogram::new(SIZES),
        }
    }
}

/// Adds one to a counter.
pub fn bump(counter: &AtomicU64) {
    counter.fetch_add(1, Relaxed);
}

impl Metrics {
    /// The counters and histograms in the Prometheus text format.
    pub fn render(&self, out: &mut String) {
        let counters: [(&str, &str, &AtomicU64); 19] = [
            (
                "drkv_proposals_total",
                "Proposals accepted as leader.",
                &self.proposals,
            ),
            (
                "drkv_proposals_refused_total",
                "Proposals refused (not leader, busy).",
                &self.proposals_refused,
            ),
            (
                "drkv_writes_forwarded_total",
                "Requests forwarded to the leader over the peer transport.",
                &self.writes_forwarded,
            ),
            (
                "drkv_forwards_served_total",
                "Forwarded requests received from followers.",
                &self.forwards_served,
            ),
            (
                "drkv_read_index_served_total",
                "Read-index requests received from followers.",
                &self.read_index_served,
            ),
            (
                "drkv_auth_failures_total",
                "Client authentications refused.",
                &self.auth_failures,
            ),
            (
                "drkv_commands_denied_total",
                "Client commands refused for want of authentication or permission.",
                &self.commands_denied,
            ),
            (
                "drkv_read_index_requests_total",
                "ReadIndex requests made as leader.",
                &self.read_index_requests,
            ),
            (
                "drkv_lease_reads_total",
                "Reads answered on the leader's lease, without a round.",
                &self.lease_reads,
            ),
            (
                "drkv_lease_renewals_total",
                "Read rounds started only to renew the leader's lease.",
                &self.lease_renewals,
            ),
            (
                "drkv_read_index_fetches_total",
                "Read indexes fetched from the leader by this follower.",
                &self.read_index_fetches,
            ),
            (
                "drkv_reads_served_total",
                "Linearizable reads served.",
                &self.reads_served,
            ),
            (
                "drkv_entries_applied_total",
                "Log entries applied.",
                &self.entries_applied,
            ),
            (
                "drkv_snapshots_created_total",
                "Snapshots made.",
                &self.snapshots_created,
            ),
            (
                "drkv_snapshots_installed_total",
                "Snapshots received and installed.",
                &self.snapshots_installed,
            ),
            (
                "drkv_clients_accepted_total",
                "Client connections accepted.",
                &self.clients_accepted,
            ),
            (
                "drkv_clients_refused_total",
                "Client connections refused over the limit.",
                &self.clients_refused,
            ),
            (
                "drkv_clients_dropped_total",
                "Client connections closed for bad input or a timeout.",
                &self.clients_dropped,
            ),
            (
                "drkv_commands_total",
                "Client commands handled.",
                &self.commands,
            ),
        ];
        for (name, help, counter) in counters {
            gauge_or_counter(out, name, help, "counter", counter.load(Relaxed));
        }
        gauge_or_counter(
            out,
            "drkv_clients_connected",
            "Client connections open.",
            "gauge",
            self.clients_connected.load(Relaxed),
        );
        self.fsync_seconds.render(
            "drkv_fsync_seconds",
            "Duration of each synced write of the Raft log.",
            out,
        );
        self.entries_per_write.render(
            "drkv_entries_per_write",
            "New log entries per synced write (group commit).",
            out,
        );
        self.entries_per_apply
            .render("drkv_entries_per_apply", "Entries applied per batch.", out);
    }
}

/// One sample of a counter or gauge.
pub fn gauge_or_counter(
    out: &mut String,
    name: &str,
    help: &str,
    kind: &str,
    value: impl std::fmt::Display,
) {
    let _ = writeln!(
        out,
        "# HELP {name} {help}\n# TYPE {name} {kind}\n{name} {value}"
    );
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn histograms_render_cumulative_buckets() {
        let metrics = Metrics::default();
        metrics.entries_per_write.observe(3.0);
        metrics.entries_per_write.observe(100.0);
        metrics.entries_per_write.observe(5000.0);
        let mut text = String::new();
        metrics.render(&mut text);
        assert!(
            text.contains("drkv_entries_per_write_bucket{le=\"4\"} 1\n"),
            "{text}"
        );
        assert!(text.contains("drkv_entries_per_write_bucket{le=\"128\"} 2\n"));
        assert!(text.contains("drkv_entries_per_write_bucket{le=\"+Inf\"} 3\n"));
        assert!(text.contains("drkv_entries_per_write_sum 5103\n"));
    }
}
