//! The dashboard: server-rendered pages a platform or finance person opens instead of
//! writing curl, served by `dibs serve` itself beside the API.
//!
//! * `/login` takes a token once (`POST /login`, field `token`) and keeps a session in an
//!   HttpOnly, SameSite=Strict cookie; `POST /logout` ends it. The token's role decides what
//!   each page shows (see [`Viewer`]); a provider token sees only its own view.
//! * `/requests` is the board by lifecycle state, with filters and the submit form;
//!   `/requests/{id}` is one request's story; `/fleet`, `/contracts`, `/ledger` and
//!   `/providers/{name}` are what their names say. `/` goes to the page the role starts on.
//!
//! Decisions and their cost:
//! * Pages are maud templates, compiled into the binary with their CSS and the little
//!   JavaScript they use (`assets/`); nothing is fetched at build or run time, and every
//!   page reads and works without JavaScript. Charts are inline SVG drawn on the server by
//!   `dibs-charts` (plotters), or by hand for the contracts' timeline.
//! * What a page shows of the engine's state is copied out on the broker thread by one
//!   [`Command::Read`] (a plain snapshot struct, no rendering there), delivered after the
//!   turn commits; the page is rendered on the HTTP side. Ledger entries are read from the
//!   store's second handle, by request through an index (`Store::request_entries`).
//! * Sessions live in memory, at most [`MAX_SESSIONS`], each for [`SESSION_HOURS`]: a
//!   restart logs everyone out, which is the price of not keeping session secrets on disk.
//!   The cookie holds a random session id, never the token.
//! * Every page says how long it took in a `Server-Timing` header (`render;dur=MS`), from
//!   the handler's start to its body, broker round trip included; `cargo bench -p dibs
//!   --bench dashboard` reads it.

mod board;
mod charts;
mod contracts;
mod fleet;
mod format;
mod ledger;
mod provider;
mod session;
mod story;

use std::sync::Arc;
use std::time::Instant;

use axum::Router;
use axum::extract::DefaultBodyLimit;
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Redirect, Response};
use axum::routing::{get, post};
use maud::{DOCTYPE, Markup, PreEscaped, html};

use crate::app::{AppState, Role};
use crate::broker::ReadView;

pub use session::{MAX_SESSIONS, SESSION_COOKIE, SESSION_HOURS};

/// Form bodies larger than this are refused (the API's limit).
const MAX_FORM_BYTES: usize = crate::app::MAX_BODY_BYTES;

/// What the dashboard's handlers share: the API's state, and the sessions.
pub struct Dashboard {
    app: Arc<AppState>,
    sessions: session::Sessions,
}

/// The pages, with their own state; `http::router` merges them beside `/v1`.
pub fn router(app: Arc<AppState>) -> Router {
    let dashboard = Arc::new(Dashboard { app, sessions: session::Sessions::default() });
    Router::new()
        .route("/", get(home))
        .route("/login", get(session::login_page).post(session::login))
        .route("/logout", post(session::logout))
        .route("/requests", get(board::page).post(board::submit))
        .route("/requests.csv", get(board::export))
        .route("/requests/{id}", get(story::page))
        .route("/requests/{id}/cancel", post(story::cancel))
        .route("/fleet", get(fleet::page))
        .route("/contracts", get(contracts::page))
        .route("/ledger", get(ledger::page))
        .route("/ledger/verify", post(ledger::verify))
        .route("/providers/{name}", get(provider::page))
        .route("/assets/style.css", get(style))
        .route("/assets/app.js", get(script))
        .layer(DefaultBodyLimit::max(MAX_FORM_BYTES))
        .with_state(dashboard)
}

/// Who is looking: the role of the token they logged in with.
#[derive(Debug, Clone)]
pub struct Viewer {
    pub role: Role,
    /// The token's hash (hex): the scope of Idempotency-Keys, as in the API.
    pub scope: String,
}

impl Viewer {
    /// Submit and cancel requests: the API's `Request` access.
    fn may_change_requests(&self) -> bool {
        matches!(self.role, Role::Admin | Role::Requester)
    }

    /// The buyer's pages (board, stories, fleet, contracts): everyone but providers.
    fn may_read(&self) -> bool {
        !matches!(self.role, Role::Provider(_))
    }

    /// The ledger with its hashes: the API's `Audit` access.
    fn may_audit(&self) -> bool {
        matches!(self.role, Role::Admin | Role::Auditor)
    }

    /// One provider's view: that provider, or the buyer's admin and auditors.
    fn may_see_provider(&self, provider: &str) -> bool {
        match &self.role {
            Role::Provider(name) => name == provider,
            role => matches!(role, Role::Admin | Role::Auditor),
        }
    }
}

/// A page that could not be shown, and why.
pub enum PageError {
    /// No session: go and log in.
    LogIn,
    /// Logged in, but this role may not see it.
    Forbidden(String),
    NotFound(String),
    /// The broker or the store did not answer.
    Unavailable(String),
}

impl PageError {
    fn into_response(self, viewer: Option<&Viewer>) -> Response {
        let (status, title, message) = match self {
            Self::LogIn => return Redirect::to("/login").into_response(),
            Self::Forbidden(message) => (StatusCode::FORBIDDEN, "Not for this token", message),
            Self::NotFound(message) => (StatusCode::NOT_FOUND, "Not found", message),
            Self::Unavailable(message) => (StatusCode::SERVICE_UNAVAILABLE, "Unavailable", message),
        };
        let body = html! {
            h1 { (title) }
            p.error role="alert" { (message) }
            p { a href="/" { "Back to the start page" } }
        };
        let started = Instant::now();
        respond(started, status, layout(viewer, title, Section::None, body))
    }
}

/// Which part of the navigation a page belongs to.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Section {
    Requests,
    Fleet,
    Contracts,
    Ledger,
    Provider,
    None,
}

/// The page around a body: head, skip link, navigation by role, and the session's role.
fn layout(viewer: Option<&Viewer>, title: &str, section: Section, body: Markup) -> Markup {
    let link = |href: &str, label: &str, this: Section| {
        html! {
            li { a href=(href) aria-current=[(section == this).then_some("page")] { (label) } }
        }
    };
    html! {
        (DOCTYPE)
        html lang="en" {
            head {
                meta charset="utf-8";
                meta name="viewport" content="width=device-width, initial-scale=1";
                title { (title) " · dibs" }
                link rel="stylesheet" href="/assets/style.css";
                script src="/assets/app.js" defer {}
            }
            body {
                a.skip href="#main" { "Skip to the content" }
                header.top {
                    a.brand href="/" { "dibs" }
                    @if let Some(viewer) = viewer {
                        nav aria-label="Pages" {
                            ul {
                                @if viewer.may_read() {
                                    (link("/requests", "Requests", Section::Requests))
                                    (link("/fleet", "Fleet", Section::Fleet))
                                    (link("/contracts", "Contracts", Section::Contracts))
                                }
                                @if viewer.may_audit() {
                                    (link("/ledger", "Ledger", Section::Ledger))
                                }
                                @if let Role::Provider(name) = &viewer.role {
                                    (link(&format!("/providers/{name}"), "My view", Section::Provider))
                                }
                            }
                        }
                        form.logout method="post" action="/logout" {
                            span.role { "Logged in as " strong { (viewer.role.name()) } }
                            button type="submit" { "Log out" }
                        }
                    }
                }
                main #main tabindex="-1" { (body) }
            }
        }
    }
}

/// A rendered page, with the time it took in `Server-Timing`.
fn respond(started: Instant, status: StatusCode, page: Markup) -> Response {
    let text = page.into_string();
    let millis = started.elapsed().as_secs_f64() * 1000.0;
    let mut response = (status, text).into_response();
    let headers = response.headers_mut();
    headers.insert(header::CONTENT_TYPE, HeaderValue::from_static("text/html; charset=utf-8"));
    headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    headers.insert(
        header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static(
            "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:; frame-ancestors 'none'; form-action 'self'",
        ),
    );
    headers.insert(header::X_CONTENT_TYPE_OPTIONS, HeaderValue::from_static("nosniff"));
    if let Ok(timing) = HeaderValue::from_str(&format!("render;dur={millis:.2}")) {
        headers.insert("server-timing", timing);
    }
    response
}

/// Reads a snapshot of the engine's state on the broker thread (see [`crate::broker::Command::Read`]).
async fn read<T: Send + 'static>(
    app: &AppState,
    snapshot: impl FnOnce(&ReadView<'_>) -> T + Send + 'static,
) -> Result<T, PageError> {
    crate::app::read_engine(app, snapshot)
        .await
        .ok_or_else(|| PageError::Unavailable("the broker has stopped or did not answer".into()))
}

/// A page any reader may see, drawn from one read of the engine: `snapshot` runs on the
/// broker thread, `body` on a blocking thread (charts are drawn by plotters and take
/// milliseconds, which the async threads serving every other request should not spend).
async fn drawn_page<S: Send + 'static>(
    dashboard: &Dashboard,
    headers: &HeaderMap,
    (title, section): (&str, Section),
    snapshot: impl FnOnce(&ReadView<'_>) -> S + Send + 'static,
    body: impl FnOnce(&S) -> Markup + Send + 'static,
) -> Response {
    let started = Instant::now();
    let viewer = match session::require(dashboard, headers, Viewer::may_read) {
        Ok(viewer) => viewer,
        Err((error, viewer)) => return error.into_response(viewer.as_ref()),
    };
    let snapshot = match read(&dashboard.app, snapshot).await {
        Ok(snapshot) => snapshot,
        Err(e) => return e.into_response(Some(&viewer)),
    };
    let drawn = tokio::task::spawn_blocking(move || body(&snapshot)).await;
    match drawn {
        Ok(body) => respond(started, StatusCode::OK, layout(Some(&viewer), title, section, body)),
        Err(e) => {
            PageError::Unavailable(format!("the page could not be drawn: {e}")).into_response(Some(&viewer))
        }
    }
}

/// Runs `work` on the store's second handle, off the async threads.
async fn with_store<T: Send + 'static>(
    app: &Arc<AppState>,
    work: impl Fn(&mut dyn dibs_store::Store) -> Result<T, dibs_store::StoreError> + Send + 'static,
) -> Result<T, PageError> {
    app.read(work).await.map_err(|e| PageError::Unavailable(e.error))
}

/// `/`: the page the role starts on, or the login form.
async fn home(
    axum::extract::State(dashboard): axum::extract::State<Arc<Dashboard>>,
    headers: HeaderMap,
) -> Response {
    match dashboard.sessions.viewer(&headers) {
        None => Redirect::to("/login").into_response(),
        Some(Viewer { role: Role::Provider(name), .. }) => {
            Redirect::to(&format!("/providers/{name}")).into_response()
        }
        Some(_) => Redirect::to("/requests").into_response(),
    }
}

/// Compiled-in assets: cached for an hour (they change only with the binary).
fn asset(content_type: &'static str, text: &'static str) -> Response {
    let mut response = text.into_response();
    let headers = response.headers_mut();
    headers.insert(header::CONTENT_TYPE, HeaderValue::from_static(content_type));
    headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("public, max-age=3600"));
    headers.insert(header::X_CONTENT_TYPE_OPTIONS, HeaderValue::from_static("nosniff"));
    response
}

async fn style() -> Response {
    asset("text/css; charset=utf-8", include_str!("assets/style.css"))
}

async fn script() -> Response {
    asset("text/javascript; charset=utf-8", include_str!("assets/app.js"))
}

/// Markup from a string the server made itself (an SVG chart).
fn trusted(text: String) -> PreEscaped<String> {
    PreEscaped(text)
}
