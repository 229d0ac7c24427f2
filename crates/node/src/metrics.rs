//! Counters and histograms the node keeps, rendered in the Prometheus
//! text format for `GET /metrics`: the engine's ([`EngineMetrics`]) and
//! the client port's. Lock-free: every update is one or two relaxed
//! atomic adds on the hot path.

use std::fmt::Write as _;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};

pub use dr_engine::EngineMetrics;
pub use dr_engine::metrics::{Histogram, bump};

/// Everything the node counts.
#[derive(Debug, Default)]
pub struct Metrics {
    /// The engine's counters (proposals, forwards, reads, applies,
    /// snapshots, fsync and batch histograms).
    pub engine: Arc<EngineMetrics>,
    /// Client authentications refused (wrong user or password).
    pub auth_failures: AtomicU64,
    /// Client commands refused for want of authentication or permission.
    pub commands_denied: AtomicU64,
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
}

impl Metrics {
    /// The counters and histograms in the Prometheus text format.
    pub fn render(&self, out: &mut String) {
        let counters: [(&str, &str, &AtomicU64); 6] = [
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
        self.engine.render("drkv", out);
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
        metrics.engine.entries_per_write.observe(3.0);
        metrics.engine.entries_per_write.observe(100.0);
        metrics.engine.entries_per_write.observe(5000.0);
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
