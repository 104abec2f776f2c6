//! The HTTP API under `/v1`: thin handlers that take their caller (`app::Caller`, which
//! authenticates), parse, and hand a command to the broker thread; the broker answers after
//! commit, with its own types or a `BrokerError` that `app.rs` maps to HTTP.

use std::sync::Arc;

use axum::body::Bytes;
use axum::extract::{DefaultBodyLimit, FromRequestParts, Path, Query, State};
use axum::http::request::Parts;
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use dibs_store::MAX_PAGE;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::app::{
    AdminOnly, ApiError, AppState, Auditors, Caller, MAX_BODY_BYTES, MAX_KEY_LEN, Providers, Readers,
    Requesters, Role, ask, new_token, token_hash,
};
use crate::broker::{Command, SubmitBody};
use crate::clock::unix_now;
use crate::view::RequestView;

/// The API's routes under `/v1`, with its body checks: every error a client sees is JSON.
/// `lib.rs` adds the OpenAPI document and the dashboard beside them.
pub fn routes() -> Router<Arc<AppState>> {
    Router::new()
        .route("/v1/health", get(health))
        .route("/v1/ready", get(ready))
        .route("/v1/requests", post(submit).get(list))
        .route("/v1/requests/{id}", get(show))
        .route("/v1/requests/{id}/cancel", post(cancel))
        .route("/v1/stats", get(stats))
        .route("/v1/contracts", get(contracts).post(load_contracts))
        .route("/v1/contracts/{id}", get(contract))
        .route("/v1/providers", get(providers))
        .route("/v1/allocations", get(allocations))
        .route("/v1/incidents", post(open_incident).get(incidents))
        .route("/v1/incidents/{id}/resolve", post(resolve_incident))
        .route("/v1/revenue", post(report_revenue))
        .route("/v1/events", post(declare_event))
        .route("/v1/settlement", get(settlement))
        .route("/v1/tokens", post(create_token).get(list_tokens))
        .route("/v1/tokens/{id}/revoke", post(revoke_token))
        .route("/v1/provider/events", get(provider_events))
        .route("/v1/provider/requests/{id}/answer", post(provider_answer))
        .route("/v1/ledger", get(ledger))
        .route("/v1/ledger/verify", get(verify))
        .route("/v1/ledger/head", get(ledger_head))
        .fallback(|| async { ApiError::new(404, "no such endpoint") })
}

/// The layers every `/v1` route has: the body limit, JSON bodies only, JSON errors.
pub fn with_api_layers(routes: Router<Arc<AppState>>) -> Router<Arc<AppState>> {
    routes
        .layer(DefaultBodyLimit::max(MAX_BODY_BYTES))
        .layer(axum::middleware::from_fn(json_bodies_only))
        .layer(axum::middleware::map_response(json_errors))
}

/// Reads a request's body before any handler does, within `body_timeout`: a client that
/// sends its headers and then a trickle gets a 408 and loses the connection's slot.
pub async fn bodies_in_time(
    State(state): State<Arc<AppState>>,
    request: axum::extract::Request,
    next: axum::middleware::Next,
) -> Response {
    let (parts, body) = request.into_parts();
    // A body said to be over the limit is refused before a byte of it is read, and the
    // connection with it: no client holds a socket by promising 2^63 bytes.
    let declared = parts.headers.get(axum::http::header::CONTENT_LENGTH).and_then(|v| v.to_str().ok());
    if declared.and_then(|v| v.trim().parse::<u64>().ok()).is_some_and(|n| n > MAX_BODY_BYTES as u64) {
        let mut refused =
            ApiError::field(413, "body", format!("at most {MAX_BODY_BYTES} bytes")).into_response();
        refused
            .headers_mut()
            .insert(axum::http::header::CONNECTION, axum::http::HeaderValue::from_static("close"));
        return refused;
    }
    match tokio::time::timeout(state.body_timeout, axum::body::to_bytes(body, MAX_BODY_BYTES)).await {
        Ok(Ok(bytes)) => {
            next.run(axum::extract::Request::from_parts(parts, axum::body::Body::from(bytes))).await
        }
        // Over the limit, or the connection broke off (it sat idle past the bound, or closed).
        Ok(Err(e)) if e.to_string().contains("length limit") => {
            ApiError::field(413, "body", format!("at most {MAX_BODY_BYTES} bytes")).into_response()
        }
        Ok(Err(_)) | Err(_) => {
            ApiError::field(408, "body", "the body did not arrive in time").into_response()
        }
    }
}

/// A request with a body must say it is JSON (`Content-Type: application/json`, with or
/// without a charset): anything else is a 415, before any handler reads it.
pub async fn json_bodies_only(request: axum::extract::Request, next: axum::middleware::Next) -> Response {
    let has_body = request
        .headers()
        .get(axum::http::header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok())
        .map_or(request.headers().contains_key(axum::http::header::TRANSFER_ENCODING), |n| n > 0);
    let json = request
        .headers()
        .get(axum::http::header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.split(';').next())
        .is_some_and(|v| v.trim().eq_ignore_ascii_case("application/json"));
    if has_body && !json {
        return ApiError::field(415, "Content-Type", "send the body as application/json").into_response();
    }
    next.run(request).await
}

/// Errors the framework answers itself (a body over the limit, a wrong
/// method) come as plain text; every error a client sees is JSON.
pub async fn json_errors(response: Response) -> Response {
    let is_json = response
        .headers()
        .get(axum::http::header::CONTENT_TYPE)
        .is_some_and(|v| v.as_bytes().starts_with(b"application/json"));
    if response.status().as_u16() < 400 || is_json {
        return response;
    }
    let status = response.status();
    let text = axum::body::to_bytes(response.into_body(), 16 * 1024).await.unwrap_or_default();
    let mut message = String::from_utf8_lossy(&text).trim().to_owned();
    if message.is_empty() {
        message = status.canonical_reason().unwrap_or("error").to_lowercase();
    }
    let field = (status == StatusCode::PAYLOAD_TOO_LARGE).then(|| "body".to_owned());
    (status, Json(ApiError { status: status.as_u16(), error: message, field })).into_response()
}

/// The Idempotency-Key of a create, scoped to the caller and the endpoint,
/// with a digest of the body (a repeat must send the same body).
fn idempotency_of(
    headers: &HeaderMap,
    scope: &str,
    body: &[u8],
) -> Result<Option<(String, String, String)>, ApiError> {
    let Some(value) = headers.get("idempotency-key") else { return Ok(None) };
    match value.to_str() {
        Ok(key)
            if !key.is_empty() && key.len() <= MAX_KEY_LEN && key.bytes().all(|b| b.is_ascii_graphic()) =>
        {
            // The same JSON re-indented or with its keys reordered is the same body.
            // serde_json's maps keep their keys in order, so its compact text is canonical.
            let canonical = serde_json::from_slice::<serde_json::Value>(body)
                .map(|v| serde_json::to_vec(&v).expect("a JSON value serializes"));
            let digest = dibs_core::ledger::hex(&Sha256::digest(canonical.as_deref().unwrap_or(body)).into());
            Ok(Some((scope.to_owned(), key.to_owned(), digest)))
        }
        _ => Err(ApiError::field(
            400,
            "Idempotency-Key",
            format!("must be 1 to {MAX_KEY_LEN} visible ASCII characters"),
        )),
    }
}

/// `GET /v1/health` and `GET /v1/ready`.
#[derive(Serialize, utoipa::ToSchema)]
pub struct HealthView {
    /// `ok` on the replica that serves; `standby` on one waiting to take over; `starting`
    /// while a replica that leads replays its ledger.
    pub status: &'static str,
    /// `leader` (it runs the engine), `standby`, or `starting`.
    pub role: &'static str,
    /// Why a standby waits, when it is not another replica's lead (`the database cannot
    /// be reached (...)`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub problem: Option<String>,
}

/// Liveness: the process answers. A standby answers too, saying so.
#[utoipa::path(get, path = "/v1/health", tag = "service", responses((status = 200, description = "The process is up; `role` says whether it leads", body = HealthView)))]
async fn health() -> Json<HealthView> {
    Json(HealthView { status: "ok", role: "leader", problem: None })
}

/// Readiness: this replica serves the API. A standby answers 503.
#[utoipa::path(get, path = "/v1/ready", tag = "service", responses((status = 200, body = HealthView), (status = 503, description = "A standby", body = HealthView)))]
async fn ready() -> Json<HealthView> {
    Json(HealthView { status: "ok", role: "leader", problem: None })
}

/// What a replica waiting for the lead serves: health (200, `standby`), readiness (503), and
/// a 503 naming its role for everything else. Until `another_leads` is set (this replica
/// found the lead taken), it is starting, not a standby: it leads, or will, and replays its
/// ledger.
pub fn standby_router(standing: crate::StandingState) -> Router {
    let waiting = move || match &*standing.lock().unwrap_or_else(std::sync::PoisonError::into_inner) {
        Some(dibs_store::Waiting::AnotherLeads) => {
            let role = HealthView { status: "standby", role: "standby", problem: None };
            (role, "this replica is a standby: another one leads; try again shortly".to_owned())
        }
        Some(dibs_store::Waiting::DatabaseDown(why)) => {
            let problem = format!("the database cannot be reached ({why}); trying again");
            let role = HealthView { status: "standby", role: "standby", problem: Some(problem.clone()) };
            (role, format!("this replica is waiting: {problem}"))
        }
        None => {
            let role = HealthView { status: "starting", role: "starting", problem: None };
            (role, "dibs is starting: it is replaying its ledger; try again shortly".to_owned())
        }
    };
    let (health, ready, rest) = (waiting.clone(), waiting.clone(), waiting);
    Router::new()
        .route("/v1/health", get(move || async move { Json(health().0).into_response() }))
        .route(
            "/v1/ready",
            get(move || async move { (StatusCode::SERVICE_UNAVAILABLE, Json(ready().0)).into_response() }),
        )
        .fallback(move || async move { ApiError::new(503, rest().1) })
}

/// One ledger entry as the API serves it.
#[derive(Serialize, utoipa::ToSchema)]
pub struct LedgerEntryView {
    pub seq: u64,
    pub at: String,
    /// `input`, `configured`, or the engine's decision (`screened`, `solicited`, `awarded`, ...).
    pub kind: String,
    pub request: Option<String>,
    /// The entry as recorded (the engine's input or decision, in the ledger's format).
    #[schema(value_type = Object)]
    pub body: Box<serde_json::value::RawValue>,
    /// Its hash in the chain, hex.
    pub hash: String,
}

#[derive(Serialize, utoipa::ToSchema)]
pub struct LedgerPage {
    pub entries: Vec<LedgerEntryView>,
    pub next_after: Option<u64>,
}

/// `GET /v1/ledger/verify`.
#[derive(Serialize, utoipa::ToSchema)]
pub struct VerifyView {
    pub ok: bool,
    /// Entries checked (when the chain is intact).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub entries: Option<u64>,
    /// The head hash, hex (when the chain is intact).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub head: Option<String>,
    /// The first bad entry and what is wrong with it (when it is not).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

/// `POST /v1/tokens`: the token, shown once.
#[derive(Serialize, utoipa::ToSchema)]
pub struct TokenCreated {
    pub token: String,
    /// Its public handle, for revoking it.
    pub id: String,
    pub role: String,
    pub expires_at: Option<String>,
}

/// A query string, or a 400 that says what is wrong with it.
pub struct ApiQuery<T>(pub T);

impl<T: serde::de::DeserializeOwned + Send, S: Send + Sync> FromRequestParts<S> for ApiQuery<T> {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, ApiError> {
        match Query::<T>::from_request_parts(parts, state).await {
            Ok(Query(query)) => Ok(Self(query)),
            Err(e) => Err(ApiError::new(400, format!("query: {}", e.body_text()))),
        }
    }
}

/// A page size: `limit` if given (1 to `max`), else 100.
fn page_limit(limit: Option<usize>, max: usize) -> Result<usize, ApiError> {
    match limit.unwrap_or(100) {
        0 => Err(ApiError::field(400, "limit", format!("must be 1 to {max}"))),
        limit if limit > max => Err(ApiError::field(400, "limit", format!("must be 1 to {max}"))),
        limit => Ok(limit),
    }
}

type Created<T> = (StatusCode, Json<T>);

fn created<T>(body: T) -> Created<T> {
    (StatusCode::CREATED, Json(body))
}

#[utoipa::path(post, path = "/v1/requests", tag = "requests", request_body = SubmitBody, params(("Idempotency-Key" = Option<String>, Header, description = "Repeats with the same key and body get the first answer")), responses((status = 201, description = "Accepted and durably ledgered", body = RequestView), (status = 422, description = "A field is wrong", body = ApiError)), security(("bearer" = [])))]
async fn submit(
    State(state): State<Arc<AppState>>,
    caller: Caller<Requesters>,
    headers: HeaderMap,
    body: Bytes,
) -> Result<Created<RequestView>, ApiError> {
    let parsed: SubmitBody = parse_body(&body)?;
    let idempotency = idempotency_of(&headers, &format!("{}:requests", caller.scope), &body)?;
    let view = ask(&state, |reply| Command::Submit { body: Box::new(parsed), idempotency, reply }).await?;
    Ok(created(view))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct ListQuery {
    status: Option<String>,
    after: Option<String>,
    limit: Option<usize>,
}

#[utoipa::path(get, path = "/v1/requests", tag = "requests", params(("status" = Option<String>, Query, description = crate::view::STATUSES.join(", ")), ("after" = Option<String>, Query, description = "Request id to list after"), ("limit" = Option<usize>, Query, description = "1 to 500, default 100")), responses((status = 200, body = crate::view::RequestPage), (status = 400, body = ApiError)), security(("bearer" = [])))]
async fn list(
    State(state): State<Arc<AppState>>,
    _: Caller<Readers>,
    ApiQuery(q): ApiQuery<ListQuery>,
) -> Result<Json<crate::view::RequestPage>, ApiError> {
    let limit = page_limit(q.limit, crate::broker::MAX_LIST)?;
    if let Some(status) = q.status.as_deref()
        && !crate::view::STATUSES.contains(&status)
    {
        let known = crate::view::STATUSES.join(", ");
        return Err(ApiError::field(400, "status", format!("no status {status:?}; expected one of {known}")));
    }
    let page = ask(&state, |reply| Command::List { status: q.status, after: q.after, limit, reply }).await?;
    Ok(Json(page))
}

#[utoipa::path(get, path = "/v1/requests/{id}", tag = "requests", params(("id" = String, Path)), responses((status = 200, description = "The request", body = RequestView), (status = 404, body = ApiError)), security(("bearer" = [])))]
async fn show(
    State(state): State<Arc<AppState>>,
    _: Caller<Readers>,
    Path(id): Path<String>,
) -> Result<Json<RequestView>, ApiError> {
    Ok(Json(ask(&state, |reply| Command::Get { id, reply }).await?))
}

#[utoipa::path(post, path = "/v1/requests/{id}/cancel", tag = "requests", params(("id" = String, Path)), responses((status = 200, description = "Cancelled (its allocations are released), or already cancelled", body = RequestView), (status = 404, body = ApiError), (status = 409, description = "The request ended otherwise (released or unfilled)", body = ApiError)), security(("bearer" = [])))]
async fn cancel(
    State(state): State<Arc<AppState>>,
    _: Caller<Requesters>,
    Path(id): Path<String>,
) -> Result<Json<RequestView>, ApiError> {
    Ok(Json(ask(&state, |reply| Command::Cancel { id, reply }).await?))
}

#[utoipa::path(get, path = "/v1/stats", tag = "service", responses((status = 200, body = crate::view::StatsView)), security(("bearer" = [])))]
async fn stats(
    State(state): State<Arc<AppState>>,
    _: Caller<Readers>,
) -> Result<Json<crate::view::StatsView>, ApiError> {
    Ok(Json(ask(&state, |reply| Command::Stats { reply }).await?))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct LedgerQuery {
    after: Option<u64>,
    limit: Option<usize>,
}

#[utoipa::path(get, path = "/v1/ledger", tag = "ledger", params(("after" = Option<u64>, Query, description = "Sequence number to page after"), ("limit" = Option<usize>, Query, description = "1 to 1000, default 100")), responses((status = 200, body = LedgerPage), (status = 400, body = ApiError)), security(("bearer" = [])))]
async fn ledger(
    State(state): State<Arc<AppState>>,
    _: Caller<Auditors>,
    ApiQuery(q): ApiQuery<LedgerQuery>,
) -> Result<Json<LedgerPage>, ApiError> {
    let limit = page_limit(q.limit, MAX_PAGE)?;
    let after = sequence_after(q.after)?;
    let entries = state.read(move |reader| reader.entries(after, limit)).await?;
    let next_after = (entries.len() == limit).then(|| entries.last().map(|e| e.seq)).flatten();
    let entries = entries
        .into_iter()
        .map(|e| LedgerEntryView {
            seq: e.seq,
            at: e.at,
            kind: e.kind,
            request: e.request,
            hash: dibs_core::ledger::hex(&e.hash),
            // The entry as recorded; a body that is not JSON (tampering) is shown as a string.
            body: serde_json::value::RawValue::from_string(e.body.clone())
                .unwrap_or_else(|_| serde_json::value::to_raw_value(&e.body).expect("a string is JSON")),
        })
        .collect();
    Ok(Json(LedgerPage { entries, next_after }))
}

#[utoipa::path(get, path = "/v1/ledger/verify", tag = "ledger", responses((status = 200, description = "The chain is intact", body = VerifyView), (status = 409, description = "`ok: false` and the first bad entry", body = VerifyView)), security(("bearer" = [])))]
async fn verify(State(state): State<Arc<AppState>>, _: Caller<Auditors>) -> Result<Response, ApiError> {
    // The whole ledger is read on a handle of its own: the API's other reads do not wait.
    let open = state.open.clone();
    let result =
        tokio::task::spawn_blocking(move || open().and_then(|mut store| dibs_store::verify(store.as_mut())))
            .await
            .map_err(|e| ApiError::new(500, e.to_string()))?;
    Ok(match result {
        Ok(v) => Json(VerifyView { ok: true, entries: Some(v.entries), head: Some(v.head), error: None })
            .into_response(),
        Err(e) => {
            let failed = VerifyView { ok: false, entries: None, head: None, error: Some(e.to_string()) };
            (StatusCode::CONFLICT, Json(failed)).into_response()
        }
    })
}

/// The ledger's head now, signed: a counterparty keeps it, and `dibs ledger verify --head`
/// later shows the ledger still holds that entry with that hash.
#[utoipa::path(get, path = "/v1/ledger/head", tag = "ledger", responses((status = 200, body = crate::signing::HeadView), (status = 401, body = ApiError), (status = 403, body = ApiError)), security(("bearer" = [])))]
async fn ledger_head(
    State(state): State<Arc<AppState>>,
    _: Caller<Auditors>,
) -> Result<Json<crate::signing::HeadView>, ApiError> {
    let (seq, hash) = state.read(|reader| reader.head()).await?;
    let at = dibs_core::types::Timestamp::from_unix(unix_now()).to_string();
    Ok(Json(crate::signing::HeadView::from(&state.signer.sign(seq, hash, at))))
}

/// An `after` query parameter: a sequence number, which the ledger keeps as a signed
/// 64-bit integer (the document's `int64`); larger is a 400, not an empty page.
fn sequence_after(after: Option<u64>) -> Result<u64, ApiError> {
    match after {
        Some(after) if after > i64::MAX as u64 => {
            Err(ApiError::field(400, "after", format!("must be 0 to {}", i64::MAX)))
        }
        after => Ok(after.unwrap_or(0)),
    }
}

/// A JSON body, or a 422 whose `field` is the path of the value that is wrong
/// (`gpus`, `files[0].name`, an unknown field's own name), or of a field that is missing.
fn parse_body<T: serde::de::DeserializeOwned>(body: &[u8]) -> Result<T, ApiError> {
    let mut json = serde_json::Deserializer::from_slice(body);
    let value = serde_path_to_error::deserialize(&mut json).map_err(|e| {
        let path = e.path().to_string();
        let inner = e.into_inner();
        let message = inner.to_string();
        // Text that is not JSON at all is the body's fault, not a field's.
        if inner.is_syntax() || inner.is_eof() {
            return ApiError::field(422, "body", format!("request body is not JSON: {message}"));
        }
        // A missing field is named in the message; the path reaches its parent.
        let named = message.starts_with("missing field").then(|| message.split('`').nth(1)).flatten();
        let field = match (named, path.as_str()) {
            (Some(name), ".") => Some(name.to_owned()),
            (Some(name), parent) => Some(format!("{parent}.{name}")),
            (None, ".") => None,
            (None, path) => Some(path.to_owned()),
        };
        ApiError { status: 422, error: format!("request body: {message}"), field }
    })?;
    // One JSON value and nothing after it: `{..}xx` or `{..}{..}` is not a body.
    json.end()
        .map_err(|e| ApiError::field(422, "body", format!("request body: after the JSON value: {e}")))?;
    Ok(value)
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct AllocationsQuery {
    provider: Option<String>,
    after: Option<u64>,
    limit: Option<usize>,
}

#[utoipa::path(get, path = "/v1/allocations", tag = "requests", params(("provider" = Option<String>, Query), ("after" = Option<u64>, Query), ("limit" = Option<usize>, Query)), responses((status = 200, body = crate::view::AllocationPage), (status = 400, body = ApiError)), security(("bearer" = [])))]
async fn allocations(
    State(state): State<Arc<AppState>>,
    _: Caller<Readers>,
    ApiQuery(q): ApiQuery<AllocationsQuery>,
) -> Result<Json<crate::view::AllocationPage>, ApiError> {
    let limit = page_limit(q.limit, crate::broker::MAX_LIST)?;
    let after = sequence_after(q.after)?;
    let page =
        ask(&state, |reply| Command::Allocations { provider: q.provider, after, limit, reply }).await?;
    Ok(Json(page))
}

#[derive(Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
struct IncidentBody {
    provider: String,
    #[serde(default)]
    region: Option<String>,
}

#[utoipa::path(post, path = "/v1/incidents", tag = "incidents", request_body = IncidentBody, params(("Idempotency-Key" = Option<String>, Header, description = "Repeats with the same key and body get the first answer")), responses((status = 201, description = "Allocations there fail over", body = crate::view::IncidentView), (status = 422, body = ApiError)), security(("bearer" = [])))]
async fn open_incident(
    State(state): State<Arc<AppState>>,
    caller: Caller<AdminOnly>,
    headers: HeaderMap,
    bytes: Bytes,
) -> Result<Created<crate::view::IncidentView>, ApiError> {
    let body: IncidentBody = parse_body(&bytes)?;
    let idempotency = idempotency_of(&headers, &format!("{}:incidents", caller.scope), &bytes)?;
    let incident = ask(&state, |reply| Command::OpenIncident {
        provider: body.provider,
        region: body.region,
        idempotency,
        reply,
    })
    .await?;
    Ok(created(incident))
}

#[utoipa::path(post, path = "/v1/incidents/{id}/resolve", tag = "incidents", params(("id" = String, Path)), responses((status = 200, description = "Resolved (or resolved already)", body = crate::view::IncidentResolvedView), (status = 404, body = ApiError)), security(("bearer" = [])))]
async fn resolve_incident(
    State(state): State<Arc<AppState>>,
    _: Caller<AdminOnly>,
    Path(id): Path<String>,
) -> Result<Json<crate::view::IncidentResolvedView>, ApiError> {
    Ok(Json(ask(&state, |reply| Command::ResolveIncident { id, reply }).await?))
}

#[utoipa::path(get, path = "/v1/incidents", tag = "incidents", responses((status = 200, body = crate::view::IncidentList)), security(("bearer" = [])))]
async fn incidents(
    State(state): State<Arc<AppState>>,
    _: Caller<Readers>,
) -> Result<Json<crate::view::IncidentList>, ApiError> {
    Ok(Json(ask(&state, |reply| Command::Incidents { reply }).await?))
}

/// Revenue is at most this much per report; larger numbers are typos.
const MAX_REVENUE_PER_REPORT: f64 = 1e13;
/// A declared event's name is at most this long.
pub const MAX_EVENT_NAME_CHARS: usize = 64;

#[derive(Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
struct RevenueBody {
    /// USD earned, counted in the current calendar month.
    #[schema(minimum = 0.0, maximum = 1e13)]
    amount: f64,
}

#[utoipa::path(post, path = "/v1/revenue", tag = "settlement", request_body = RevenueBody, responses((status = 201, body = crate::view::RevenueReportedView), (status = 422, body = ApiError)), security(("bearer" = [])))]
async fn report_revenue(
    State(state): State<Arc<AppState>>,
    _: Caller<AdminOnly>,
    bytes: Bytes,
) -> Result<Created<crate::view::RevenueReportedView>, ApiError> {
    let body: RevenueBody = parse_body(&bytes)?;
    if !(body.amount.is_finite() && (0.0..=MAX_REVENUE_PER_REPORT).contains(&body.amount)) {
        return Err(ApiError::field(
            422,
            "amount",
            format!("must be between 0 and {MAX_REVENUE_PER_REPORT} USD"),
        ));
    }
    Ok(created(ask(&state, |reply| Command::ReportRevenue { amount: body.amount, reply }).await?))
}

#[derive(Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
struct EventBody {
    /// A name review-trigger conditions test for (`"agi_declared" in events`).
    #[schema(min_length = 1, max_length = 64)]
    name: String,
}

#[utoipa::path(post, path = "/v1/events", tag = "settlement", request_body = EventBody, responses((status = 201, body = crate::view::EventDeclaredView), (status = 422, body = ApiError)), security(("bearer" = [])))]
async fn declare_event(
    State(state): State<Arc<AppState>>,
    _: Caller<AdminOnly>,
    bytes: Bytes,
) -> Result<Created<crate::view::EventDeclaredView>, ApiError> {
    let body: EventBody = parse_body(&bytes)?;
    let valid = !body.name.is_empty()
        && body.name.chars().count() <= MAX_EVENT_NAME_CHARS
        && body.name.chars().all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '-' | '.'));
    if !valid {
        return Err(ApiError::field(
            422,
            "name",
            format!("must be 1 to {MAX_EVENT_NAME_CHARS} ASCII letters, digits, '_', '-' or '.'"),
        ));
    }
    Ok(created(ask(&state, |reply| Command::DeclareEvent { name: body.name, reply }).await?))
}

#[utoipa::path(get, path = "/v1/settlement", tag = "settlement", responses((status = 200, body = crate::view::SettlementView)), security(("bearer" = [])))]
async fn settlement(
    State(state): State<Arc<AppState>>,
    _: Caller<Readers>,
) -> Result<Json<crate::view::SettlementView>, ApiError> {
    Ok(Json(ask(&state, |reply| Command::Settlement { reply }).await?))
}

#[derive(Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
struct TokenBody {
    /// admin, requester, auditor or provider:NAME (a provider that publishes offers here)
    role: String,
    /// Hours until the token stops working; none: until it is revoked.
    #[schema(exclusive_minimum = 0.0, maximum = 87600.0)]
    expires_in_hours: Option<f64>,
}

/// The longest a token may be made to last: ten years.
const MAX_TOKEN_HOURS: f64 = 87_600.0;

/// A token as the API shows it: never its secret.
#[derive(Serialize, utoipa::ToSchema)]
pub struct TokenView {
    /// Its public handle, for revoking it.
    pub id: String,
    pub role: String,
    pub created_at: String,
    pub expires_at: Option<String>,
    pub revoked_at: Option<String>,
}

impl From<dibs_store::TokenRecord> for TokenView {
    fn from(t: dibs_store::TokenRecord) -> Self {
        let at = |t: i64| dibs_core::types::Timestamp::from_unix(t).to_string();
        Self {
            id: t.id,
            role: t.role,
            created_at: at(t.created_at),
            expires_at: t.expires_at.map(at),
            revoked_at: t.revoked_at.map(at),
        }
    }
}

#[derive(Serialize, utoipa::ToSchema)]
pub struct TokenList {
    pub tokens: Vec<TokenView>,
}

#[utoipa::path(post, path = "/v1/tokens", tag = "tokens", request_body = TokenBody, responses((status = 201, description = "The token is shown once", body = TokenCreated), (status = 422, body = ApiError)), security(("bearer" = [])))]
async fn create_token(
    State(state): State<Arc<AppState>>,
    _: Caller<AdminOnly>,
    body: Bytes,
) -> Result<Created<TokenCreated>, ApiError> {
    let body: TokenBody = parse_body(&body)?;
    let role = Role::parse(&body.role)
        .ok_or_else(|| ApiError::field(422, "role", "expected admin, requester, auditor or provider:NAME"))?;
    if let Role::Provider(name) = &role {
        let known = ask(&state, |reply| Command::Providers { reply }).await?;
        let known: Vec<String> = known.providers.into_iter().map(|p| p.name).collect();
        if !known.iter().any(|k| k == name) {
            return Err(ApiError::field(
                422,
                "role",
                format!("no provider {name:?} publishes offers here; known: {}", known.join(", ")),
            ));
        }
    }
    let now = unix_now();
    let expires_at = match body.expires_in_hours {
        None => None,
        Some(hours) if hours.is_finite() && hours > 0.0 && hours <= MAX_TOKEN_HOURS => {
            Some(now + (hours * 3600.0).ceil() as i64)
        }
        Some(_) => {
            return Err(ApiError::field(
                422,
                "expires_in_hours",
                format!("must be above 0 and at most {MAX_TOKEN_HOURS}"),
            ));
        }
    };
    let token = new_token().map_err(|e| ApiError::new(500, e.to_string()))?;
    let hash = dibs_core::ledger::hex(&token_hash(&token));
    let name = role.name();
    let stored = state
        .with(
            |s| &s.tokens,
            move |store| {
                store.add_token(&hash, &name, now, expires_at)?;
                store.token(&hash)
            },
        )
        .await?;
    let record = stored.ok_or_else(|| ApiError::new(503, "the token was not stored"))?;
    let view = TokenView::from(record);
    Ok(created(TokenCreated { token, id: view.id, role: view.role, expires_at: view.expires_at }))
}

#[utoipa::path(get, path = "/v1/tokens", tag = "tokens", responses((status = 200, body = TokenList)), security(("bearer" = [])))]
async fn list_tokens(
    State(state): State<Arc<AppState>>,
    _: Caller<AdminOnly>,
) -> Result<Json<TokenList>, ApiError> {
    let tokens = state.with(|s| &s.tokens, |store| store.tokens()).await?;
    Ok(Json(TokenList { tokens: tokens.into_iter().map(TokenView::from).collect() }))
}

/// Revokes a token at once: it is refused from the next call on, and a dashboard session
/// made with it ends.
#[utoipa::path(post, path = "/v1/tokens/{id}/revoke", tag = "tokens", params(("id" = String, Path, description = "The token's id (16 hex digits)")), responses((status = 200, body = TokenView), (status = 404, body = ApiError)), security(("bearer" = [])))]
async fn revoke_token(
    State(state): State<Arc<AppState>>,
    _: Caller<AdminOnly>,
    Path(id): Path<String>,
) -> Result<Json<TokenView>, ApiError> {
    let now = unix_now();
    let wanted = id.clone();
    let (_, record) = state
        .with(
            |s| &s.tokens,
            move |store| {
                let revoked = store.revoke_token(&wanted, now)?;
                let record = store.tokens()?.into_iter().find(|t| t.id == wanted);
                Ok((revoked, record))
            },
        )
        .await?;
    let record = record.ok_or_else(|| ApiError::new(404, format!("no token {id:?}")))?;
    if let Ok(mut roles) = state.roles.lock() {
        roles.retain(|hash, _| !dibs_core::ledger::hex(hash).starts_with(&record.id));
    }
    Ok(Json(TokenView::from(record)))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct EventsQuery {
    after: Option<u64>,
}

/// The provider-facing feed: what was sent to the calling provider, from
/// the ledger, a page of up to MAX_PAGE ledger entries scanned per call.
#[utoipa::path(get, path = "/v1/provider/events", tag = "providers", params(("after" = Option<u64>, Query, description = "Ledger sequence number to scan after")), responses((status = 200, description = "What was sent to the calling provider", body = crate::sealed::ProviderEventPage)), security(("bearer" = [])))]
async fn provider_events(
    State(state): State<Arc<AppState>>,
    caller: Caller<Providers>,
    ApiQuery(q): ApiQuery<EventsQuery>,
) -> Result<Json<crate::sealed::ProviderEventPage>, ApiError> {
    let name = caller.provider()?.to_owned();
    let after = sequence_after(q.after)?;
    let entries = state.read(move |reader| reader.entries(after, MAX_PAGE)).await?;
    let next_after = (entries.len() == MAX_PAGE).then(|| entries.last().map(|e| e.seq)).flatten();
    let events = entries.iter().filter_map(|e| crate::sealed::provider_view(e, &name)).collect();
    Ok(Json(crate::sealed::ProviderEventPage { events, next_after }))
}

/// A provider answers a solicitation or a quote request sent to it.
#[utoipa::path(post, path = "/v1/provider/requests/{id}/answer", tag = "providers", params(("id" = String, Path)), request_body(content = ProviderAnswerBody, description = "A first-refusal holder's answer to a solicitation (`accept` or `decline`), or quotes (`offers`); each is checked against the request it answers"), responses((status = 200, body = crate::view::AnswerTaken), (status = 403, description = "Not a pull provider", body = ApiError), (status = 409, description = "The request is not waiting for this provider", body = ApiError), (status = 422, body = ApiError)), security(("bearer" = [])))]
async fn provider_answer(
    State(state): State<Arc<AppState>>,
    caller: Caller<Providers>,
    Path(id): Path<String>,
    body: Bytes,
) -> Result<Json<crate::view::AnswerTaken>, ApiError> {
    let provider = caller.provider()?.to_owned();
    #[derive(Deserialize)]
    #[serde(deny_unknown_fields)]
    struct QuotesBody {
        offers: Vec<dibs_core::types::Offer>,
    }
    let value: serde_json::Value = parse_body(&body)?;
    // Parsed again as what it says it is, so an error names the field by its path
    // (`offers[2].gpus_per_node`).
    let answer = if value.get("offers").is_some() {
        crate::broker::ProviderReply::Quotes { offers: parse_body::<QuotesBody>(&body)?.offers }
    } else if value.get("answer").is_some() {
        crate::broker::ProviderReply::Holder(parse_body(&body).map_err(|mut e| {
            e.field.get_or_insert_with(|| "answer".to_owned());
            e
        })?)
    } else {
        return Err(ApiError::new(
            422,
            r#"expected {"answer": "decline"}, {"answer": "accept", ...} or {"offers": [...]}"#,
        ));
    };
    Ok(Json(ask(&state, |reply| Command::ProviderAnswer { provider, request: id, answer, reply }).await?))
}

// These types describe the wire and are never parsed into: the handler parses the engine's
// own `HolderAnswer` and `Offer`, so every check and every error's field path stays theirs.
// The test `the_answer_schema_names_the_fields_the_engine_reads` (openapi.rs) holds the two
// to the same field names.

/// A pull provider's answer: a first-refusal holder's `accept` or `decline`, or quotes.
#[derive(Serialize, utoipa::ToSchema)]
#[serde(untagged)]
#[allow(dead_code)]
enum ProviderAnswerBody {
    Accept(HolderAccept),
    Decline(HolderDecline),
    Quotes(ProviderQuotes),
}

/// The holder takes `gpus` of the solicited GPUs on the solicited terms, as whole nodes
/// of `instance_type` (`gpus_per_node` GPUs each) in `region`.
#[derive(Serialize, utoipa::ToSchema)]
#[allow(dead_code)]
struct HolderAccept {
    /// `accept`.
    answer: String,
    gpus: u32,
    region: String,
    accelerator: String,
    instance_type: String,
    gpus_per_node: u32,
    lead_time_hours: u32,
}

/// The holder declines: the request goes to the open market.
#[derive(Serialize, utoipa::ToSchema)]
#[allow(dead_code)]
struct HolderDecline {
    /// `decline`.
    answer: String,
}

/// Quotes for a quote request: what the provider can sell for it now.
#[derive(Serialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
#[allow(dead_code)]
struct ProviderQuotes {
    offers: Vec<OfferBody>,
}

/// One offer: whole nodes of `gpus_per_node` GPUs of one instance type in one region, at
/// an all-in price per node-hour.
#[derive(Serialize, utoipa::ToSchema)]
#[allow(dead_code)]
struct OfferBody {
    /// Unique within one catalog: `provider/region/instance-type/kind`.
    id: String,
    provider: String,
    region: String,
    /// The availability zone the price was read from, if any.
    #[serde(default)]
    zone: Option<String>,
    instance_type: String,
    accelerator: String,
    gpus_per_node: u32,
    /// Nodes the provider can supply from this offer now.
    nodes_available: u32,
    /// USD for one node for one hour, all-in.
    node_price: f64,
    /// Hours from reservation until the capacity is ready.
    lead_time_hours: u32,
    kind: String,
    /// Unix seconds after which the offer no longer holds.
    #[serde(default)]
    valid_until: Option<i64>,
    /// Whether nodes bill from delivery (the default) or from a start date the buyer names.
    #[serde(default)]
    bills_from_delivery: bool,
    /// Where the price comes from when the provider does not price it itself.
    #[serde(default)]
    price_source: Option<String>,
}

/// The OpenAPI document, generated from the handlers' annotations and the
/// types they take and give.
#[derive(utoipa::OpenApi)]
#[openapi(
    info(title = "dibs", description = "A contract-aware broker for GPU cloud capacity."),
    paths(
        health, ready, submit, list, show, cancel, stats, contracts, load_contracts, contract, providers, allocations, open_incident, resolve_incident, incidents,
        ledger, verify, ledger_head, create_token, list_tokens, revoke_token, provider_events, provider_answer, report_revenue, declare_event, settlement
    ),
    components(schemas(ContractFiles, ContractFile, SubmitBody, RequestView, crate::view::AllocationView, crate::view::UnfilledView, ApiError, IncidentBody, TokenBody, RevenueBody, EventBody, crate::view::SettlementView, crate::view::CommitmentView, crate::view::RevenueShareView, crate::view::SuspensionView, crate::view::RevenueReportedView, crate::view::EventDeclaredView, HealthView, LedgerEntryView, LedgerPage, VerifyView, TokenCreated, crate::view::RequestPage, crate::view::AllocationPage, crate::view::StatsView, crate::view::IncidentView, crate::view::IncidentList, crate::view::IncidentResolvedView, crate::view::ProviderView, crate::view::ProviderList, crate::view::AnswerTaken, crate::view::ContractView, crate::view::ContractVersionView, crate::view::ClauseView, crate::view::ContractList, crate::view::ContractsLoaded, crate::sealed::ProviderEvent, crate::sealed::ProviderEventPage, crate::sealed::SealedEvent, crate::sealed::SealedAllocation, crate::sealed::SealedWanted, TokenView, TokenList, crate::signing::HeadView, ProviderAnswerBody, HolderAccept, HolderDecline, ProviderQuotes, OfferBody)),
    modifiers(&BearerAuth)
)]
pub struct ApiDoc;

struct BearerAuth;

impl utoipa::Modify for BearerAuth {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        use utoipa::openapi::security::{HttpAuthScheme, HttpBuilder, SecurityScheme};
        let components = openapi.components.get_or_insert_with(Default::default);
        components.add_security_scheme(
            "bearer",
            SecurityScheme::Http(HttpBuilder::new().scheme(HttpAuthScheme::Bearer).build()),
        );
    }
}

#[utoipa::path(get, path = "/v1/contracts", tag = "contracts", responses((status = 200, body = crate::view::ContractList)), security(("bearer" = [])))]
async fn contracts(
    State(state): State<Arc<AppState>>,
    _: Caller<Readers>,
) -> Result<Json<crate::view::ContractList>, ApiError> {
    Ok(Json(ask(&state, |reply| Command::Contracts { reply }).await?))
}

#[utoipa::path(get, path = "/v1/contracts/{id}", tag = "contracts", params(("id" = String, Path)), responses((status = 200, description = "The contract, each version with its clauses and their terms", body = crate::view::ContractView), (status = 404, body = ApiError)), security(("bearer" = [])))]
async fn contract(
    State(state): State<Arc<AppState>>,
    _: Caller<Readers>,
    Path(id): Path<String>,
) -> Result<Json<crate::view::ContractView>, ApiError> {
    Ok(Json(ask(&state, |reply| Command::Contract { id, reply }).await?))
}

#[utoipa::path(get, path = "/v1/providers", tag = "providers", responses((status = 200, body = crate::view::ProviderList)), security(("bearer" = [])))]
async fn providers(
    State(state): State<Arc<AppState>>,
    _: Caller<Readers>,
) -> Result<Json<crate::view::ProviderList>, ApiError> {
    let mut list = ask(&state, |reply| Command::Providers { reply }).await?;
    // Ask each provider reached over HTTP for its health, side by side, briefly.
    let mut probes = Vec::new();
    for (i, provider) in list.providers.iter().enumerate() {
        let name = dibs_core::types::ProviderName::new(&provider.name).ok();
        if let Some(adapter) = name.and_then(|name| state.adapters.get(&name)).cloned() {
            probes.push((i, tokio::task::spawn_blocking(move || adapter.health())));
        } else if provider.reached.starts_with("http") {
            let url = format!("{}/health", provider.reached);
            probes.push((
                i,
                tokio::task::spawn_blocking(move || {
                    if crate::remote::healthy(&url) {
                        Ok(())
                    } else {
                        Err(format!("{url} did not answer 2xx"))
                    }
                }),
            ));
        }
    }
    for (i, probe) in probes {
        let health = probe.await.unwrap_or_else(|e| Err(e.to_string()));
        list.providers[i].healthy = Some(health.is_ok());
        list.providers[i].problem = health.err();
    }
    Ok(Json(list))
}

/// A contract set to load: every contract file and the policy file.
#[derive(Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
struct ContractFiles {
    files: Vec<ContractFile>,
}

#[derive(Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
struct ContractFile {
    /// The file's name, for error messages (file:line:column).
    name: String,
    /// The TOML text.
    text: String,
}

/// The most contract files one load takes.
pub const MAX_CONTRACT_FILES: usize = 64;

#[utoipa::path(post, path = "/v1/contracts", tag = "contracts", request_body = ContractFiles, responses((status = 200, description = "The set replaces the one in force from now on, and the ledger records it", body = crate::view::ContractsLoaded), (status = 422, description = "A file is wrong; the error names file:line:column and nothing changed", body = ApiError)), security(("bearer" = [])))]
async fn load_contracts(
    State(state): State<Arc<AppState>>,
    _: Caller<AdminOnly>,
    body: Bytes,
) -> Result<Json<crate::view::ContractsLoaded>, ApiError> {
    let body: ContractFiles = parse_body(&body)?;
    if body.files.is_empty() || body.files.len() > MAX_CONTRACT_FILES {
        return Err(ApiError::field(422, "files", format!("expected 1 to {MAX_CONTRACT_FILES} files")));
    }
    let files = body.files.into_iter().map(|f| (f.name, f.text)).collect();
    Ok(Json(ask(&state, |reply| Command::LoadContracts { files, reply }).await?))
}

#[cfg(test)]
mod tests {
    use axum::body::Body;
    use tower::ServiceExt;

    use super::*;

    async fn get(router: Router, path: &str) -> (u16, String) {
        let request = axum::http::Request::get(path).body(Body::empty()).unwrap();
        let response = router.oneshot(request).await.unwrap();
        let status = response.status().as_u16();
        let body = axum::body::to_bytes(response.into_body(), 64 * 1024).await.unwrap();
        (status, String::from_utf8_lossy(&body).into_owned())
    }

    #[test]
    fn a_body_is_one_json_value_and_its_errors_name_the_field() {
        let field = |body: &str| parse_body::<SubmitBody>(body.as_bytes()).err().map(|e| (e.field, e.error));
        let good = r#"{"accelerators": ["H100"], "gpus": 8, "duration_hours": 1, "workload": "training"}"#;
        assert_eq!(field(good), None);
        for trailing in [format!("{good}xx"), format!("{good}{good}")] {
            let (named, error) = field(&trailing).unwrap();
            assert_eq!(named.as_deref(), Some("body"), "{trailing}: {error}");
            assert!(error.contains("trailing characters"), "{error}");
        }
        for broken in ["{", "{'gpus': 8}", "not json", ""] {
            let (named, error) = field(broken).unwrap();
            assert_eq!(named.as_deref(), Some("body"), "{broken:?}: {error}");
        }
        let (named, _) =
            field(r#"{"accelerators": ["H100"], "gpus": "8", "duration_hours": 1, "workload": "training"}"#)
                .unwrap();
        assert_eq!(named.as_deref(), Some("gpus"));
    }

    #[tokio::test]
    async fn a_replica_replaying_its_ledger_says_starting_and_a_standby_says_standby() {
        let standing: crate::StandingState = Arc::default();
        let router = || standby_router(standing.clone());
        assert_eq!(
            get(router(), "/v1/health").await,
            (200, r#"{"status":"starting","role":"starting"}"#.into())
        );
        let (status, body) = get(router(), "/").await;
        assert_eq!((status, body.contains("starting") && !body.contains("standby")), (503, true), "{body}");
        *standing.lock().unwrap() = Some(dibs_store::Waiting::AnotherLeads);
        assert_eq!(
            get(router(), "/v1/ready").await,
            (503, r#"{"status":"standby","role":"standby"}"#.into())
        );
        let (status, body) = get(router(), "/requests").await;
        assert_eq!((status, body.contains("another one leads")), (503, true), "{body}");
        *standing.lock().unwrap() = Some(dibs_store::Waiting::DatabaseDown("connection refused".into()));
        let (status, body) = get(router(), "/v1/health").await;
        assert_eq!(status, 200);
        assert!(
            body.contains(r#""problem":"the database cannot be reached (connection refused); trying again""#),
            "{body}"
        );
    }
}
