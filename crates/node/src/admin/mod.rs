//! The admin port (HTTP, or HTTPS with the node's TLS files): metrics for
//! Prometheus, status, and operations (membership, member addresses,
//! leader transfer, snapshot, backup) — the only way to change the
//! cluster.
//!
//! Membership operations work on any node: a follower forwards them to
//! the leader over the peer transport. Snapshot and backup act on the
//! node asked. Who may call is [`access`]'s business; every call that
//! changes something is logged with its caller.

pub mod access;
#[cfg(feature = "failpoints")]
mod failpoints;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;

use axum::Json;
use axum::Router;
use axum::extract::{ConnectInfo, Path, State};
use axum::http::{Method, StatusCode, header};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{delete, get, post, put};
use dr_raft::ConfChangeOp;
use dr_transport::{TcpTransport, Transport};
use serde::Deserialize;
use serde_json::{Value, json};
use tokio::sync::{mpsc, oneshot, watch};

use self::access::{AdminAccess, AdminListener, AdminPeer, Refusal};
use crate::command::{Command, ReplyShape};
use crate::kv::{MemberAddrs, WriteOp};
use crate::metrics::gauge_or_counter;
use crate::resp::Reply;
use crate::runtime::{self, Request, error_reply};
use crate::server::Executor;

/// What the handlers share.
#[derive(Clone)]
pub struct AdminState {
    /// Runs commands (membership changes go to the leader).
    pub executor: Executor,
    /// For its counters.
    pub transport: Arc<TcpTransport>,
    /// The node's data directory (the default backup place is beside it).
    pub data_dir: PathBuf,
    /// Who may call.
    pub access: AdminAccess,
}

type Shared = State<Arc<AdminState>>;

/// Serves the admin API until `shutdown`.
pub async fn serve(
    listener: AdminListener,
    state: AdminState,
    mut shutdown: watch::Receiver<bool>,
) {
    let state = Arc::new(state);
    let router = Router::new()
        .route("/metrics", get(metrics))
        .route("/status", get(status))
        .route("/members", get(status).post(add_learner))
        .route("/members/{id}/promote", post(promote))
        .route("/members/{id}", delete(remove))
        .route("/members/{id}/addrs", put(set_addrs))
        .route("/transfer-leader/{id}", post(transfer_leader))
        .route("/snapshot", post(snapshot))
        .route("/backup", post(backup));
    #[cfg(feature = "failpoints")]
    let router = router.route("/failpoints", put(failpoints::set));
    let router = router
        .layer(middleware::from_fn_with_state(
            Arc::clone(&state),
            authorize,
        ))
        .with_state(state);
    let stop = async move {
        let _ = shutdown.changed().await;
    };
    let service = router.into_make_service_with_connect_info::<AdminPeer>();
    if let Err(error) = axum::serve(listener, service)
        .with_graceful_shutdown(stop)
        .await
    {
        tracing::error!(%error, "the admin port failed");
    }
}

/// Lets a request through if its caller may call (see [`access`]); logs
/// every request that changes something, with its caller and outcome.
async fn authorize(
    State(state): Shared,
    ConnectInfo(peer): ConnectInfo<AdminPeer>,
    request: axum::extract::Request,
    next: Next,
) -> Response {
    let authorization = request
        .headers()
        .get(header::AUTHORIZATION)
        .map(|value| value.as_bytes());
    let method = request.method().clone();
    let path = request.uri().path().to_owned();
    let caller = match state.access.caller(&peer, authorization) {
        Ok(caller) => caller,
        Err(refusal) => {
            tracing::warn!(peer = %peer.addr, %method, %path, ?refusal, "admin request refused");
            let text = match refusal {
                Refusal::Missing => {
                    "authentication required: Authorization: Bearer <token> or a client certificate"
                }
                Refusal::WrongToken => "wrong token",
            };
            return answer(StatusCode::UNAUTHORIZED, json!({ "error": text }));
        }
    };
    let changes = !matches!(method, Method::GET | Method::HEAD);
    let response = next.run(request).await;
    if changes {
        tracing::info!(
            caller = %caller,
            peer = %peer.addr,
            %method,
            %path,
            status = response.status().as_u16(),
            "admin call"
        );
    }
    response
}

fn answer(status: StatusCode, body: Value) -> Response {
    (status, Json(body)).into_response()
}

/// A command's reply as an HTTP answer: errors are 503 when retrying can
/// help, 400 otherwise.
fn reply_answer(reply: Reply, done: Value) -> Response {
    match reply {
        Reply::Error(text) if text.starts_with("TRYAGAIN") || text.starts_with("UNCERTAIN") => {
            answer(StatusCode::SERVICE_UNAVAILABLE, json!({ "error": text }))
        }
        Reply::Error(text) => answer(StatusCode::BAD_REQUEST, json!({ "error": text })),
        _ => answer(StatusCode::OK, done),
    }
}

async fn metrics(State(state): Shared) -> Response {
    let mut text = String::with_capacity(8 << 10);
    let engine = state.executor.engine();
    let status = engine.status.snapshot();
    let gauges = [
        ("drkv_term", "The current Raft term.", status.term),
        (
            "drkv_is_leader",
            "1 on the leader.",
            u64::from(status.role.is_leader()),
        ),
        (
            "drkv_leader_id",
            "The known leader (0: none).",
            status.leader.unwrap_or(0),
        ),
        (
            "drkv_commit_index",
            "The highest committed log index.",
            status.commit_index,
        ),
        (
            "drkv_applied_index",
            "The highest applied log index.",
            status.applied_index,
        ),
        ("drkv_last_index", "The last log index.", status.last_index),
        (
            "drkv_first_index",
            "The first log index (before it: compacted).",
            status.first_index,
        ),
        (
            "drkv_snapshot_index",
            "The newest snapshot's index.",
            status.snapshot_index,
        ),
        ("drkv_voters", "Voting members.", status.voters.len() as u64),
        ("drkv_learners", "Learners.", status.learners.len() as u64),
        ("drkv_keys", "Client keys.", status.keys),
        (
            "drkv_resident_bytes",
            "Resident memory of the process.",
            status.rss_bytes,
        ),
        (
            "drkv_read_mirror_bytes",
            "Bytes of recently written records held in memory for point reads.",
            status.read_mirror_bytes,
        ),
        (
            "drkv_write_behind_bytes",
            "Of those, bytes of applied writes not yet checkpointed to RocksDB.",
            status.write_behind_bytes,
        ),
        (
            "drkv_raft_log_segments",
            "Segment files of the Raft log (0: the log is in RocksDB).",
            status.raft_log_segments,
        ),
    ];
    for (name, help, value) in gauges {
        gauge_or_counter(&mut text, name, help, "gauge", value);
    }
    engine.metrics.render(&mut text);
    let transport = state.transport.stats();
    let counters = [
        (
            "drkv_transport_messages_sent_total",
            "Raft messages sent.",
            transport.messages_sent,
        ),
        (
            "drkv_transport_messages_dropped_total",
            "Raft messages dropped (full queue, no connection).",
            transport.messages_dropped,
        ),
        (
            "drkv_transport_frames_sent_total",
            "Frames (batches) sent to peers.",
            transport.frames_sent,
        ),
        (
            "drkv_transport_bytes_sent_total",
            "Bytes sent to peers.",
            transport.bytes_sent,
        ),
        (
            "drkv_transport_messages_received_total",
            "Raft messages received.",
            transport.messages_received,
        ),
        (
            "drkv_transport_bytes_received_total",
            "Bytes received from peers.",
            transport.bytes_received,
        ),
        (
            "drkv_transport_connections_total",
            "Peer connections established.",
            transport.connections_established,
        ),
        (
            "drkv_transport_dial_failures_total",
            "Failed dials to peers.",
            transport.dial_failures,
        ),
        (
            "drkv_transport_handshakes_refused_total",
            "Peer handshakes refused.",
            transport.handshakes_refused,
        ),
        (
            "drkv_transport_bad_frames_total",
            "Bad frames from peers.",
            transport.bad_frames,
        ),
    ];
    for (name, help, value) in counters {
        gauge_or_counter(&mut text, name, help, "counter", value);
    }
    let pool = state.transport.pool_stats();
    let pool_gauges = [
        (
            "drkv_pool_hits_total",
            "Frame buffers served from the transport's pool (TLS peer links).",
            pool.hits,
            "counter",
        ),
        (
            "drkv_pool_misses_total",
            "Buffers the pool had to allocate.",
            pool.misses,
            "counter",
        ),
        (
            "drkv_pool_bytes_held",
            "Bytes the pool holds for reuse.",
            pool.bytes_held as u64,
            "gauge",
        ),
    ];
    for (name, help, value, kind) in pool_gauges {
        gauge_or_counter(&mut text, name, help, kind, value);
    }
    ([("content-type", "text/plain; version=0.0.4")], text).into_response()
}

async fn status(State(state): Shared) -> Response {
    let status = state.executor.engine().status.snapshot();
    let transport = state.transport.stats();
    let mut body = serde_json::to_value(&status).expect("status serializes");
    body["transport"] = json!({
        "messages_sent": transport.messages_sent,
        "messages_received": transport.messages_received,
        "messages_dropped": transport.messages_dropped,
        "connections_established": transport.connections_established,
    });
    answer(StatusCode::OK, body)
}

#[derive(Deserialize)]
struct NewMember {
    id: u64,
    peer_addr: String,
}

/// A peer address given to the admin API: an IP address and port.
fn peer_addr(text: &str) -> Option<SocketAddr> {
    text.parse::<SocketAddr>().ok()
}

fn bad_peer_addr() -> Response {
    answer(
        StatusCode::BAD_REQUEST,
        json!({ "error": "peer_addr must be host:port with an IP address" }),
    )
}

/// Records a member's addresses in the replicated member table; peers
/// connect to the new peer address, where the transport's handshake (and
/// mutual TLS when on) must still admit the node before anything is
/// sent.
async fn record_member(state: &AdminState, id: u64, addrs: MemberAddrs) -> Reply {
    let record = Command::Write {
        op: WriteOp::Member { id, addrs },
        shape: ReplyShape::Ok,
    };
    state.executor.submit(record).await
}

async fn add_learner(State(state): Shared, Json(member): Json<NewMember>) -> Response {
    let Some(peer) = peer_addr(&member.peer_addr) else {
        return bad_peer_addr();
    };
    if member.id == 0 {
        return answer(
            StatusCode::BAD_REQUEST,
            json!({ "error": "a node id is a positive integer" }),
        );
    }
    let known = state
        .executor
        .engine()
        .status
        .member(member.id)
        .unwrap_or_default();
    let addrs = MemberAddrs {
        peer: peer.to_string(),
        ..known
    };
    let reply = record_member(&state, member.id, addrs).await;
    if reply != Reply::OK {
        return reply_answer(reply, Value::Null);
    }
    conf_change(
        &state,
        ConfChangeOp::AddLearner(member.id),
        json!({ "added_learner": member.id }),
    )
    .await
}

#[derive(Deserialize)]
struct MemberAddrsUpdate {
    peer_addr: String,
    client_addr: Option<String>,
    admin_addr: Option<String>,
}

/// `PUT /members/{id}/addrs`: a member moved. Its peers reconnect to the
/// new peer address (the handshake still decides whether it is that
/// node).
async fn set_addrs(
    State(state): Shared,
    Path(id): Path<u64>,
    Json(update): Json<MemberAddrsUpdate>,
) -> Response {
    let Some(peer) = peer_addr(&update.peer_addr) else {
        return bad_peer_addr();
    };
    let known = state.executor.engine().status.member(id);
    let Some(known) = known else {
        return answer(
            StatusCode::NOT_FOUND,
            json!({ "error": format!("node {id} has no member record") }),
        );
    };
    let addrs = MemberAddrs {
        peer: peer.to_string(),
        client: update.client_addr.unwrap_or(known.client),
        admin: update.admin_addr.unwrap_or(known.admin),
    };
    let reply = record_member(&state, id, addrs.clone()).await;
    reply_answer(reply, json!({ "member": id, "addrs": addrs }))
}

/// A membership change through the leader.
async fn conf_change(state: &AdminState, op: ConfChangeOp, done: Value) -> Response {
    let reply = state.executor.submit(Command::ConfChange(op)).await;
    reply_answer(reply, done)
}

async fn promote(State(state): Shared, Path(id): Path<u64>) -> Response {
    conf_change(
        &state,
        ConfChangeOp::AddVoter(id),
        json!({ "promoted": id }),
    )
    .await
}

async fn remove(State(state): Shared, Path(id): Path<u64>) -> Response {
    conf_change(&state, ConfChangeOp::Remove(id), json!({ "removed": id })).await
}

async fn transfer_leader(State(state): Shared, Path(id): Path<u64>) -> Response {
    let reply = state.executor.submit(Command::TransferLeader(id)).await;
    reply_answer(reply, json!({ "transferring_to": id }))
}

/// Sends a request on `requests` and waits for its answer; `Err` is the
/// HTTP answer when the node is stopping.
async fn ask_engine<T, R>(
    requests: &mpsc::Sender<R>,
    request: impl FnOnce(oneshot::Sender<T>) -> R,
) -> Result<T, Response> {
    let stopping = || {
        answer(
            StatusCode::SERVICE_UNAVAILABLE,
            json!({ "error": "the node is stopping" }),
        )
    };
    let (answer_tx, answer_rx) = oneshot::channel();
    requests
        .send(request(answer_tx))
        .await
        .map_err(|_| stopping())?;
    answer_rx.await.map_err(|_| stopping())
}

async fn snapshot(State(state): Shared) -> Response {
    let requests = &state.executor.engine().requests;
    match ask_engine(requests, |answer| {
        Request::Snapshot { answer }.into_engine()
    })
    .await
    {
        Ok(Ok(Reply::Integer(index))) => answer(StatusCode::OK, json!({ "snapshot_index": index })),
        Ok(Ok(other)) => answer(
            StatusCode::INTERNAL_SERVER_ERROR,
            json!({ "error": format!("{other:?}") }),
        ),
        Ok(Err(error)) => reply_answer(error_reply(&error), Value::Null),
        Err(response) => response,
    }
}

#[derive(Deserialize, Default)]
struct BackupRequest {
    dir: Option<PathBuf>,
    keep: Option<usize>,
}

async fn backup(State(state): Shared, body: Option<Json<BackupRequest>>) -> Response {
    let request = body.map(|Json(b)| b).unwrap_or_default();
    let dir = request.dir.unwrap_or_else(|| {
        let mut name = state
            .data_dir
            .file_name()
            .unwrap_or_default()
            .to_os_string();
        name.push("-backups");
        state.data_dir.with_file_name(name)
    });
    let keep = request.keep.unwrap_or(5).max(1);
    let backup = |answer| runtime::BackupRequest {
        dir: dir.clone(),
        keep,
        answer,
    };
    match ask_engine(&state.executor.engine().backups, backup).await {
        Ok(Ok(info)) => answer(
            StatusCode::OK,
            json!({ "dir": dir, "backup_id": info.id, "bytes": info.bytes, "files": info.files, "timestamp": info.timestamp }),
        ),
        Ok(Err(error)) => answer(StatusCode::INTERNAL_SERVER_ERROR, json!({ "error": error })),
        Err(response) => response,
    }
}
