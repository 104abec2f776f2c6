//! The HTTP API under `/v1`: thin handlers that authenticate, parse, and
//! hand a command to the broker thread; the broker answers after commit.

use std::sync::mpsc::Sender;
use std::sync::{Arc, Mutex};

use axum::body::Bytes;
use axum::extract::{DefaultBodyLimit, Path, Query, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use dibs_store::{MAX_PAGE, Store};
use serde::Deserialize;
use serde_json::json;
use sha2::{Digest, Sha256};

use crate::broker::{ApiError, Command, Reply, SubmitBody};

/// Request bodies larger than this are refused.
pub const MAX_BODY_BYTES: usize = 64 * 1024;
/// Idempotency keys longer than this are refused.
pub const MAX_KEY_LEN: usize = 200;

pub struct AppState {
    pub commands: Mutex<Sender<Command>>,
    /// A second handle on the store, for ledger reads that need not wait for the broker.
    pub reader: Mutex<Box<dyn Store>>,
    /// SHA-256 of the admin token.
    pub admin_token_hash: [u8; 32],
}

pub fn router(state: Arc<AppState>) -> Router {
    Router::new()
        .route("/v1/health", get(health))
        .route("/v1/requests", post(submit).get(list))
        .route("/v1/requests/{id}", get(show))
        .route("/v1/requests/{id}/cancel", post(cancel))
        .route("/v1/stats", get(stats))
        .route("/v1/ledger", get(ledger))
        .route("/v1/ledger/verify", get(verify))
        .fallback(|| async { error(ApiError::new(404, "no such endpoint")) })
        .layer(DefaultBodyLimit::max(MAX_BODY_BYTES))
        .with_state(state)
}

fn error(e: ApiError) -> Response {
    let status = StatusCode::from_u16(e.status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    (status, Json(e)).into_response()
}

fn reply(r: Reply) -> Response {
    match r {
        Ok((status, body)) => {
            (StatusCode::from_u16(status).unwrap_or(StatusCode::OK), Json(body)).into_response()
        }
        Err(e) => error(e),
    }
}

pub fn token_hash(token: &str) -> [u8; 32] {
    Sha256::digest(token.as_bytes()).into()
}

/// The caller's scope (for idempotency keys), or an error response.
fn authenticate(state: &AppState, headers: &HeaderMap) -> Result<String, ApiError> {
    let token = headers
        .get("authorization")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .ok_or_else(|| ApiError::field(401, "Authorization", "expected 'Authorization: Bearer TOKEN'"))?;
    let hash = token_hash(token.trim());
    // Compare every byte, whatever the first difference.
    let differs = hash.iter().zip(state.admin_token_hash.iter()).fold(0u8, |acc, (a, b)| acc | (a ^ b));
    if differs != 0 {
        return Err(ApiError::field(401, "Authorization", "unknown token"));
    }
    Ok("admin".to_owned())
}

async fn ask(
    state: &AppState,
    make: impl FnOnce(tokio::sync::oneshot::Sender<Reply>) -> Command,
) -> Response {
    let (tx, rx) = tokio::sync::oneshot::channel();
    let sent = state.commands.lock().map(|c| c.send(make(tx)).is_ok()).unwrap_or(false);
    if !sent {
        return error(ApiError::new(503, "the broker has stopped"));
    }
    match rx.await {
        Ok(r) => reply(r),
        Err(_) => error(ApiError::new(503, "the broker stopped before answering")),
    }
}

async fn health() -> Response {
    Json(json!({ "status": "ok" })).into_response()
}

async fn submit(State(state): State<Arc<AppState>>, headers: HeaderMap, body: Bytes) -> Response {
    let scope = match authenticate(&state, &headers) {
        Ok(scope) => scope,
        Err(e) => return error(e),
    };
    let parsed: SubmitBody = match serde_json::from_slice(&body) {
        Ok(b) => b,
        Err(e) => {
            let field = e.to_string().split('`').nth(1).map(str::to_owned);
            return error(ApiError { status: 422, error: format!("request body: {e}"), field });
        }
    };
    let idempotency = match headers.get("idempotency-key") {
        None => None,
        Some(value) => match value.to_str() {
            Ok(key) if !key.is_empty() && key.len() <= MAX_KEY_LEN => {
                let digest = dibs_core::ledger::hex(&Sha256::digest(&body).into());
                Some((scope, key.to_owned(), digest))
            }
            _ => {
                return error(ApiError::field(
                    400,
                    "Idempotency-Key",
                    format!("must be 1 to {MAX_KEY_LEN} visible ASCII characters"),
                ));
            }
        },
    };
    ask(&state, |reply| Command::Submit { body: parsed, idempotency, reply }).await
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct ListQuery {
    status: Option<String>,
    after: Option<String>,
    limit: Option<usize>,
}

async fn list(
    State(state): State<Arc<AppState>>,
    headers: HeaderMap,
    query: Result<Query<ListQuery>, axum::extract::rejection::QueryRejection>,
) -> Response {
    if let Err(e) = authenticate(&state, &headers) {
        return error(e);
    }
    let Query(q) = match query {
        Ok(q) => q,
        Err(e) => return error(ApiError::new(400, format!("query: {}", e.body_text()))),
    };
    let limit = q.limit.unwrap_or(100);
    if limit == 0 || limit > crate::broker::MAX_LIST {
        return error(ApiError::field(400, "limit", format!("must be 1 to {}", crate::broker::MAX_LIST)));
    }
    ask(&state, |reply| Command::List { status: q.status, after: q.after, limit, reply }).await
}

async fn show(State(state): State<Arc<AppState>>, headers: HeaderMap, Path(id): Path<String>) -> Response {
    if let Err(e) = authenticate(&state, &headers) {
        return error(e);
    }
    ask(&state, |reply| Command::Get { id, reply }).await
}

async fn cancel(State(state): State<Arc<AppState>>, headers: HeaderMap, Path(id): Path<String>) -> Response {
    if let Err(e) = authenticate(&state, &headers) {
        return error(e);
    }
    ask(&state, |reply| Command::Cancel { id, reply }).await
}

async fn stats(State(state): State<Arc<AppState>>, headers: HeaderMap) -> Response {
    if let Err(e) = authenticate(&state, &headers) {
        return error(e);
    }
    ask(&state, |reply| Command::Stats { reply }).await
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct LedgerQuery {
    after: Option<u64>,
    limit: Option<usize>,
}

async fn ledger(
    State(state): State<Arc<AppState>>,
    headers: HeaderMap,
    query: Result<Query<LedgerQuery>, axum::extract::rejection::QueryRejection>,
) -> Response {
    if let Err(e) = authenticate(&state, &headers) {
        return error(e);
    }
    let Query(q) = match query {
        Ok(q) => q,
        Err(e) => return error(ApiError::new(400, format!("query: {}", e.body_text()))),
    };
    let limit = q.limit.unwrap_or(100);
    if limit == 0 || limit > MAX_PAGE {
        return error(ApiError::field(400, "limit", format!("must be 1 to {MAX_PAGE}")));
    }
    let after = q.after.unwrap_or(0);
    let state2 = state.clone();
    let page = tokio::task::spawn_blocking(move || {
        let mut reader =
            state2.reader.lock().expect("the reader lock is never poisoned by a panic-free reader");
        reader.entries(after, limit)
    })
    .await;
    match page {
        Ok(Ok(entries)) => {
            let next = (entries.len() == limit).then(|| entries.last().map(|e| e.seq)).flatten();
            let entries: Vec<serde_json::Value> = entries
                .into_iter()
                .map(|e| {
                    json!({
                        "seq": e.seq,
                        "at": e.at,
                        "kind": e.kind,
                        "request": e.request,
                        "body": serde_json::from_str::<serde_json::Value>(&e.body).unwrap_or(serde_json::Value::String(e.body)),
                        "hash": dibs_core::ledger::hex(&e.hash),
                    })
                })
                .collect();
            Json(json!({ "entries": entries, "next_after": next })).into_response()
        }
        Ok(Err(e)) => error(ApiError::new(503, e.to_string())),
        Err(e) => error(ApiError::new(500, e.to_string())),
    }
}

async fn verify(State(state): State<Arc<AppState>>, headers: HeaderMap) -> Response {
    if let Err(e) = authenticate(&state, &headers) {
        return error(e);
    }
    let state2 = state.clone();
    let result = tokio::task::spawn_blocking(move || {
        let mut reader =
            state2.reader.lock().expect("the reader lock is never poisoned by a panic-free reader");
        dibs_store::verify(reader.as_mut())
    })
    .await;
    match result {
        Ok(Ok(v)) => Json(json!({ "ok": true, "entries": v.entries, "head": v.head })).into_response(),
        Ok(Err(e)) => {
            (StatusCode::CONFLICT, Json(json!({ "ok": false, "error": e.to_string() }))).into_response()
        }
        Err(e) => error(ApiError::new(500, e.to_string())),
    }
}
