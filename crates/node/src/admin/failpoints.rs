//! `PUT /failpoints` (only in builds with the `failpoints` feature): the
//! robustness suite's disk and clock faults.
//!
//! Body: `{"disk": "none" | "fail-sync" | "no-space" | "torn-write" |
//! "slow-sync", "slow_sync_ms": 200, "clock_rate_ppm": 1200000}`; every
//! field optional. Answers the faults in force, and the disk fault that
//! was in force before (`disk_before`): a fault that ends the process
//! clears itself as it fires, so `"None"` there after setting one means
//! it fired and the process is on its way out.

use std::time::Duration;

use axum::Json;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use dr_storage::failpoints::{self, DiskFault};
use serde::Deserialize;
use serde_json::json;

/// The slowest synced write the suite may ask for.
const SLOW_SYNC_MS_MAX: u64 = 10_000;

/// What to set.
#[derive(Deserialize)]
pub(super) struct Failpoints {
    disk: Option<String>,
    slow_sync_ms: Option<u64>,
    clock_rate_ppm: Option<u64>,
}

fn disk_fault(name: &str, slow_sync_ms: Option<u64>) -> Result<Option<DiskFault>, String> {
    Ok(match name {
        "none" => None,
        "fail-sync" => Some(DiskFault::FailSync),
        "no-space" => Some(DiskFault::NoSpace),
        "torn-write" => Some(DiskFault::TornWrite),
        "slow-sync" => {
            let ms = slow_sync_ms.ok_or("slow-sync needs slow_sync_ms")?;
            if ms > SLOW_SYNC_MS_MAX {
                return Err(format!("slow_sync_ms is at most {SLOW_SYNC_MS_MAX}"));
            }
            Some(DiskFault::SlowSync(Duration::from_millis(ms)))
        }
        other => return Err(format!("unknown disk fault {other:?}")),
    })
}

/// Sets the faults asked for; answers those in force.
pub(super) async fn set(Json(request): Json<Failpoints>) -> Response {
    let disk_before = failpoints::current();
    if let Some(ppm) = request.clock_rate_ppm {
        if !(100_000..=10_000_000).contains(&ppm) {
            let error = json!({ "error": "clock_rate_ppm is within 100000..=10000000" });
            return (StatusCode::BAD_REQUEST, Json(error)).into_response();
        }
        tracing::warn!(ppm, "failpoint: the node's clock rate changes");
        crate::clock::set_rate_ppm(ppm);
    }
    if let Some(name) = &request.disk {
        match disk_fault(name, request.slow_sync_ms) {
            Ok(fault) => {
                tracing::warn!(?fault, "failpoint: disk fault set");
                failpoints::set(fault);
            }
            Err(error) => {
                return (StatusCode::BAD_REQUEST, Json(json!({ "error": error }))).into_response();
            }
        }
    }
    let body = json!({
        "disk_before": format!("{disk_before:?}"),
        "disk": format!("{:?}", failpoints::current()),
        "clock_rate_ppm": crate::clock::rate_ppm(),
    });
    (StatusCode::OK, Json(body)).into_response()
}
