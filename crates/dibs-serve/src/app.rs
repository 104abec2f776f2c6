//! What the API and the dashboard share: the service's state (`AppState`), who is calling
//! (tokens, roles, the `Caller` extractor), the error a client sees (`ApiError`, and the
//! one mapping of the broker's errors to HTTP), and how a handler asks the broker.
//!
//! `http.rs` (the API), `dashboard/` (the pages) and `openapi.rs` depend on this module
//! and not on one another; `lib.rs` puts their routers together.

use std::marker::PhantomData;
use std::sync::mpsc::{SyncSender, TrySendError};
use std::sync::{Arc, Mutex};

use axum::Json;
use axum::extract::FromRequestParts;
use axum::http::request::Parts;
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use dibs_store::{Store, StoreError};
use serde::Serialize;
use sha2::{Digest, Sha256};

use crate::broker::{BrokerError, Command, Replier};
use crate::clock::unix_now;

/// Request bodies larger than this are refused.
pub const MAX_BODY_BYTES: usize = 64 * 1024;
/// Idempotency keys longer than this are refused.
pub const MAX_KEY_LEN: usize = 200;

/// The broker's queue holds at most this many commands; past it a handler answers 503.
pub const MAX_QUEUED_COMMANDS: usize = 16_384;

/// An error a client sees: an HTTP status, and the field at fault if any.
#[derive(Debug, Clone, PartialEq, Serialize, utoipa::ToSchema)]
pub struct ApiError {
    #[serde(skip)]
    pub status: u16,
    pub error: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub field: Option<String>,
}

impl ApiError {
    pub fn new(status: u16, error: impl Into<String>) -> Self {
        Self { status, error: error.into(), field: None }
    }
    pub fn field(status: u16, field: &str, error: impl Into<String>) -> Self {
        Self { status, error: error.into(), field: Some(field.to_owned()) }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let status = StatusCode::from_u16(self.status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
        (status, Json(self)).into_response()
    }
}

/// The one place the broker's errors become HTTP statuses.
impl From<BrokerError> for ApiError {
    fn from(e: BrokerError) -> Self {
        match e {
            BrokerError::NotFound(message) => Self::new(404, message),
            BrokerError::Conflict(message) => Self::new(409, message),
            BrokerError::Invalid { field, message } => Self::field(422, &field, message),
            BrokerError::Forbidden(message) => Self::new(403, message),
            BrokerError::Unavailable(message) => Self::new(503, message),
            BrokerError::Broken(message) => Self::new(500, message),
        }
    }
}

pub struct AppState {
    /// The broker's queue: bounded, so a flood of requests meets a 503, not a growing heap.
    pub commands: SyncSender<Command>,
    /// A second handle on the store, for ledger reads that need not wait for the broker.
    pub reader: Mutex<Box<dyn Store>>,
    /// A third, for tokens: a long ledger read does not hold up authentication.
    pub tokens: Mutex<Box<dyn Store>>,
    /// Opens another handle: for `verify` (which reads the whole ledger on a handle of its
    /// own) and to replace a handle whose connection broke.
    pub open: crate::remote::OpenStore,
    /// SHA-256 of the admin token.
    pub admin_token_hash: [u8; 32],
    /// Signs the heads the API hands out.
    pub signer: crate::signing::HeadSigner,
    /// A request body must arrive within this.
    pub body_timeout: std::time::Duration,
    /// Tokens looked up so far, by hash.
    pub roles: Mutex<std::collections::HashMap<[u8; 32], KnownToken>>,
    /// Providers reached through a cloud's API, for their health in `/v1/providers`.
    pub adapters: crate::remote::Adapters,
}

/// A token looked up: its role, and until when it may be used.
#[derive(Debug, Clone)]
pub struct KnownToken {
    pub role: Role,
    pub expires_at: Option<i64>,
    pub revoked: bool,
}

impl KnownToken {
    fn valid_at(&self, now: i64) -> bool {
        !self.revoked && self.expires_at.is_none_or(|until| now < until)
    }
}

impl AppState {
    /// Runs `work` on a store handle in a blocking thread (never on the async runtime). A
    /// handle whose work failed is replaced by a new one and the work tried once more, so a
    /// dropped database connection heals at the next call.
    pub async fn with<T: Send + 'static>(
        self: &Arc<Self>,
        handle: fn(&AppState) -> &Mutex<Box<dyn Store>>,
        work: impl Fn(&mut dyn Store) -> Result<T, StoreError> + Send + 'static,
    ) -> Result<T, ApiError> {
        let state = self.clone();
        let done = tokio::task::spawn_blocking(move || {
            let mut store = handle(&state).lock().unwrap_or_else(|poisoned| poisoned.into_inner());
            match work(store.as_mut()) {
                Ok(value) => Ok(value),
                Err(first) => {
                    *store = (state.open)().map_err(|e| format!("{first}; reconnecting: {e}"))?;
                    work(store.as_mut()).map_err(|e| e.to_string())
                }
            }
        })
        .await;
        match done {
            Ok(Ok(value)) => Ok(value),
            Ok(Err(message)) => Err(ApiError::new(503, message)),
            Err(e) => Err(ApiError::new(500, e.to_string())),
        }
    }

    /// Runs `work` on the reader handle (see [`AppState::with`]).
    pub async fn read<T: Send + 'static>(
        self: &Arc<Self>,
        work: impl Fn(&mut dyn Store) -> Result<T, StoreError> + Send + 'static,
    ) -> Result<T, ApiError> {
        self.with(|s| &s.reader, work).await
    }

    /// Whether the token with this hash (hex) may still be used, as far as this process
    /// knows: a dashboard session ends when its token is revoked or expires.
    pub fn still_valid(&self, scope: &str) -> bool {
        if scope == dibs_core::ledger::hex(&self.admin_token_hash) {
            return true;
        }
        let Ok(known) = self.roles.lock() else { return false };
        known.iter().any(|(hash, token)| dibs_core::ledger::hex(hash) == scope && token.valid_at(unix_now()))
    }
}

pub fn token_hash(token: &str) -> [u8; 32] {
    Sha256::digest(token.as_bytes()).into()
}

/// What a token may do.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Role {
    /// Everything, including tokens and incidents.
    Admin,
    /// Submit, cancel and read requests and allocations.
    Requester,
    /// Read everything, change nothing.
    Auditor,
    /// See only what was sent to this provider.
    Provider(String),
}

impl Role {
    pub fn parse(text: &str) -> Option<Self> {
        match text {
            "admin" => Some(Self::Admin),
            "requester" => Some(Self::Requester),
            "auditor" => Some(Self::Auditor),
            _ => text
                .strip_prefix("provider:")
                .filter(|name| dibs_core::types::ProviderName::new(name).is_ok())
                .map(|name| Self::Provider(name.to_owned())),
        }
    }

    pub fn name(&self) -> String {
        match self {
            Self::Admin => "admin".into(),
            Self::Requester => "requester".into(),
            Self::Auditor => "auditor".into(),
            Self::Provider(name) => format!("provider:{name}"),
        }
    }
}

/// Which roles an endpoint admits.
#[derive(Clone, Copy)]
pub enum Access {
    /// Admin only.
    Admin,
    /// Admin and requesters: changes to requests.
    Request,
    /// Admin, requesters and auditors: reading requests and allocations.
    Read,
    /// Admin and auditors: the ledger.
    Audit,
    /// Providers only: their own view.
    Provider,
}

/// Who is calling an endpoint that admits `A`: an extractor, so a handler that takes one
/// runs only for a caller it admits.
pub struct Caller<A> {
    pub role: Role,
    /// Idempotency keys are scoped to the token (its hash, hex).
    pub scope: String,
    admits: PhantomData<A>,
}

/// Which roles an endpoint admits, as a type: `Caller<Readers>`.
pub trait Admits: Send + Sync + 'static {
    const ACCESS: Access;
}

/// Admin only.
pub struct AdminOnly;
/// Admin and requesters: changes to requests.
pub struct Requesters;
/// Admin, requesters and auditors: reading requests and allocations.
pub struct Readers;
/// Admin and auditors: the ledger.
pub struct Auditors;
/// Providers only: their own view.
pub struct Providers;

impl Admits for AdminOnly {
    const ACCESS: Access = Access::Admin;
}
impl Admits for Requesters {
    const ACCESS: Access = Access::Request;
}
impl Admits for Readers {
    const ACCESS: Access = Access::Read;
}
impl Admits for Auditors {
    const ACCESS: Access = Access::Audit;
}
impl Admits for Providers {
    const ACCESS: Access = Access::Provider;
}

impl<A: Admits> FromRequestParts<Arc<AppState>> for Caller<A> {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &Arc<AppState>) -> Result<Self, ApiError> {
        let (role, scope) = authenticate(state, &parts.headers, A::ACCESS).await?;
        Ok(Self { role, scope, admits: PhantomData })
    }
}

impl Caller<Providers> {
    /// The provider calling.
    pub fn provider(&self) -> Result<&str, ApiError> {
        match &self.role {
            Role::Provider(name) => Ok(name),
            _ => Err(ApiError::new(403, "providers only")),
        }
    }
}

/// Who is calling (their role, and the hash of their token as hex), if they may call an
/// endpoint that admits `access`.
async fn authenticate(
    state: &Arc<AppState>,
    headers: &HeaderMap,
    access: Access,
) -> Result<(Role, String), ApiError> {
    let token = headers
        .get("authorization")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .ok_or_else(|| ApiError::field(401, "Authorization", "expected 'Authorization: Bearer TOKEN'"))?;
    let hash = token_hash(token.trim());
    let app = state.clone();
    let role = tokio::task::spawn_blocking(move || role_of(&app, &hash))
        .await
        .map_err(|e| ApiError::new(500, e.to_string()))??;
    let allowed = match (access, &role) {
        (_, Role::Admin) => !matches!(access, Access::Provider),
        (Access::Request, Role::Requester) => true,
        (Access::Read, Role::Requester | Role::Auditor) => true,
        (Access::Audit, Role::Auditor) => true,
        (Access::Provider, Role::Provider(_)) => true,
        _ => false,
    };
    if !allowed {
        return Err(ApiError::new(403, format!("the {} token may not do this", role.name())));
    }
    Ok((role, dibs_core::ledger::hex(&hash)))
}

/// The role of the token whose SHA-256 is `hash`: the admin's, or one the admin made that
/// has neither expired nor been revoked. Blocks on the store: call it off the async runtime.
pub(crate) fn role_of(state: &AppState, hash: &[u8; 32]) -> Result<Role, ApiError> {
    // Compare every byte, whatever the first difference.
    if bool::from(subtle::ConstantTimeEq::ct_eq(&hash[..], &state.admin_token_hash[..])) {
        return Ok(Role::Admin);
    }
    let cached = state.roles.lock().ok().and_then(|r| r.get(hash).cloned());
    let known = match cached {
        Some(known) => known,
        None => {
            let hex = dibs_core::ledger::hex(hash);
            let mut store = state.tokens.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
            let found = match store.token(&hex) {
                Ok(found) => found,
                // A broken connection heals at the next call.
                Err(_) => {
                    *store = (state.open)().map_err(|e| ApiError::new(503, format!("token store: {e}")))?;
                    store.token(&hex).map_err(|e| ApiError::new(503, format!("token store: {e}")))?
                }
            };
            let record = found.ok_or_else(|| ApiError::field(401, "Authorization", "unknown token"))?;
            let role = Role::parse(&record.role)
                .ok_or_else(|| ApiError::field(401, "Authorization", "a token with an unknown role"))?;
            let known =
                KnownToken { role, expires_at: record.expires_at, revoked: record.revoked_at.is_some() };
            if let Ok(mut roles) = state.roles.lock() {
                roles.insert(*hash, known.clone());
            }
            known
        }
    };
    if known.revoked {
        return Err(ApiError::field(401, "Authorization", "this token was revoked"));
    }
    if !known.valid_at(unix_now()) {
        let until = known.expires_at.map(|t| dibs_core::types::Timestamp::from_unix(t).to_string());
        return Err(ApiError::field(
            401,
            "Authorization",
            format!("this token expired at {}", until.unwrap_or_default()),
        ));
    }
    Ok(known.role)
}

/// Sends a command to the broker and waits for its answer, which comes once the turn that
/// decided it has committed.
pub async fn ask<T>(state: &AppState, make: impl FnOnce(Replier<T>) -> Command) -> Result<T, ApiError> {
    let (tx, rx) = tokio::sync::oneshot::channel();
    match state.commands.try_send(make(tx)) {
        Ok(()) => {}
        Err(TrySendError::Full(_)) => {
            return Err(ApiError::new(
                503,
                "the broker is busy: too many commands are waiting; try again shortly",
            ));
        }
        Err(TrySendError::Disconnected(_)) => return Err(ApiError::new(503, "the broker has stopped")),
    }
    match rx.await {
        Ok(answer) => answer.map_err(ApiError::from),
        Err(_) => Err(ApiError::new(503, "the broker stopped before answering")),
    }
}

/// Reads from the engine on the broker thread (see [`Command::Read`]); `None` when
/// the broker has stopped.
pub(crate) async fn read_engine<T: Send + 'static>(
    app: &AppState,
    read: impl FnOnce(&crate::broker::ReadView<'_>) -> T + Send + 'static,
) -> Option<T> {
    let (tx, rx) = tokio::sync::oneshot::channel();
    let command = Command::Read {
        read: Box::new(move |view| {
            let value = read(view);
            Box::new(move || {
                let _ = tx.send(value);
            })
        }),
    };
    app.commands.try_send(command).ok()?;
    rx.await.ok()
}

/// A new random token: "dibs_" and 48 hex digits.
pub fn new_token() -> Result<String, getrandom::Error> {
    let mut secret = [0u8; 24];
    getrandom::fill(&mut secret)?;
    Ok(format!("dibs_{}", hex::encode(secret)))
}
