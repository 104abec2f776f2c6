//! `dibs provider serve`: a standalone provider that speaks the provider
//! protocol ([`dibs_providers::protocol`], where the routes and messages are listed) over
//! HTTP and answers from a catalog, with knobs for behaviour and faults. Each route reads its
//! body into a [`Call`], the simulated provider answers it as it would in `dibs simulate`,
//! and the reply goes back as the protocol's JSON.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::extract::State;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use dibs_core::engine::{Ask, Solicitation};
use dibs_core::types::{Offer, ProviderName};
use dibs_providers::protocol::{AllocationBody, Call, Provider, ReserveBody};
use dibs_providers::{HolderBehaviour, SimulatedBehaviour, SimulatedProvider};
use serde_json::json;

use crate::ServeError;
use crate::clock::wall_now;

/// Behaviour and fault knobs of a standalone provider.
#[derive(Debug, Clone)]
pub struct Knobs {
    pub holder: HolderBehaviour,
    /// Every answer waits this long first.
    pub answer_delay: Duration,
    /// This share of calls fails with HTTP 500.
    pub error_rate: f64,
    /// Every call fails with HTTP 503.
    pub down: bool,
    /// Overrides every offer's capacity, in nodes.
    pub capacity: Option<u32>,
    pub seed: u64,
}

struct ProviderState {
    name: ProviderName,
    provider: Mutex<SimulatedProvider>,
    rng: Mutex<fastrand::Rng>,
    knobs: Knobs,
}

pub fn router(name: ProviderName, offers: Vec<Offer>, knobs: Knobs) -> Router {
    let offers = offers
        .into_iter()
        .filter(|o| o.provider == name)
        .map(|o| Offer { nodes_available: knobs.capacity.unwrap_or(o.nodes_available), ..o })
        .collect();
    // Answers go out in the HTTP response; the answer delay is the response's.
    let behaviour = SimulatedBehaviour {
        holder: knobs.holder,
        answer_hours: 0.0,
        quote_hours: 0.0,
        ..SimulatedBehaviour::default()
    };
    let mut provider = SimulatedProvider::new(name.clone(), offers, behaviour);
    provider.seed(knobs.seed);
    let state = Arc::new(ProviderState {
        name,
        provider: Mutex::new(provider),
        rng: Mutex::new(fastrand::Rng::with_seed(knobs.seed)),
        knobs,
    });
    Router::new()
        .route("/health", get(health))
        .route("/solicit", post(solicit))
        .route("/quote", post(quote))
        .route("/reserve", post(reserve))
        .route("/cancel", post(cancel))
        .route("/release", post(release))
        .with_state(state)
}

/// Applies the fault knobs: `Some(response)` when this call fails.
async fn fault(state: &ProviderState) -> Option<Response> {
    if state.knobs.down {
        return Some((StatusCode::SERVICE_UNAVAILABLE, Json(json!({ "error": "down" }))).into_response());
    }
    if !state.knobs.answer_delay.is_zero() {
        tokio::time::sleep(state.knobs.answer_delay).await;
    }
    let failed = state.rng.lock().map(|mut r| r.f64() < state.knobs.error_rate).unwrap_or(false);
    failed.then(|| {
        (StatusCode::INTERNAL_SERVER_ERROR, Json(json!({ "error": "injected fault" }))).into_response()
    })
}

async fn health(State(state): State<Arc<ProviderState>>) -> Response {
    if state.knobs.down {
        return (StatusCode::SERVICE_UNAVAILABLE, Json(json!({ "status": "down" }))).into_response();
    }
    Json(json!({ "status": "ok" })).into_response()
}

/// Answers one call, unless a fault knob fails it first.
async fn answer(state: &ProviderState, call: Call) -> Response {
    if let Some(failed) = fault(state).await {
        return failed;
    }
    let answered =
        state.provider.lock().expect("no panics while holding the provider").answer(&call, wall_now());
    Json(answered.reply.to_json()).into_response()
}

async fn solicit(State(state): State<Arc<ProviderState>>, Json(s): Json<Solicitation>) -> Response {
    answer(&state, Call::Solicit(s)).await
}

async fn quote(State(state): State<Arc<ProviderState>>, Json(ask): Json<Ask>) -> Response {
    let provider = state.name.clone();
    answer(&state, Call::Quote { provider, ask }).await
}

async fn reserve(State(state): State<Arc<ProviderState>>, Json(body): Json<ReserveBody>) -> Response {
    answer(&state, Call::Reserve { allocation: body.allocation, request: body.request, plan: body.plan })
        .await
}

async fn cancel(State(state): State<Arc<ProviderState>>, Json(body): Json<AllocationBody>) -> Response {
    let provider = state.name.clone();
    answer(&state, Call::Cancel { provider, allocation: body.allocation }).await
}

async fn release(State(state): State<Arc<ProviderState>>, Json(body): Json<AllocationBody>) -> Response {
    let provider = state.name.clone();
    answer(&state, Call::Release { provider, allocation: body.allocation }).await
}

/// Serves one provider until Ctrl-C; prints its URL once listening.
pub fn serve_provider(
    name: ProviderName,
    offers: Vec<Offer>,
    listen: &str,
    knobs: Knobs,
) -> Result<(), ServeError> {
    if !offers.iter().any(|o| o.provider == name) {
        return Err(ServeError::NoOffers(name));
    }
    let runtime = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build()?;
    runtime.block_on(async move {
        let listener = tokio::net::TcpListener::bind(listen)
            .await
            .map_err(ServeError::unusable(format_args!("--listen {listen}")))?;
        println!("provider {name} serving on http://{}", listener.local_addr()?);
        use std::io::Write;
        let _ = std::io::stdout().flush();
        axum::serve(listener, router(name, offers, knobs))
            .with_graceful_shutdown(async {
                let _ = tokio::signal::ctrl_c().await;
            })
            .await?;
        Ok(())
    })
}
