//! Login, logout and sessions.
//!
//! A token is entered once in a form; the server checks it as the API does
//! (`http::role_of`) and answers with a random session id in a cookie that scripts
//! cannot read (HttpOnly) and that other sites' pages do not send (SameSite=Strict, so a
//! form elsewhere cannot post to the dashboard as the user). Only the id's SHA-256 is kept,
//! with the role, for [`SESSION_HOURS`]. The cookie is not `Secure`: the service speaks
//! plain HTTP on loopback by default; put it behind TLS to expose it.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::Form;
use axum::extract::State;
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Redirect, Response};
use maud::html;
use serde::Deserialize;

use super::{Dashboard, PageError, Section, Viewer, layout, respond};
use crate::app::{Role, new_token, role_of, token_hash};

/// The cookie that holds the session id.
pub const SESSION_COOKIE: &str = "dibs_session";
/// A session lasts this long after login.
pub const SESSION_HOURS: u64 = 12;
/// At most this many sessions are kept; when they are all current, a login waits for one
/// to end (no one's session is ended to make room for another's).
pub const MAX_SESSIONS: usize = 10_000;
/// At most this many sessions per token: a token's next login ends its own oldest.
pub const MAX_SESSIONS_PER_TOKEN: usize = 16;

struct Session {
    viewer: Viewer,
    expires: Instant,
}

/// Sessions by the SHA-256 of their id.
#[derive(Default)]
pub struct Sessions {
    by_hash: Mutex<HashMap<[u8; 32], Session>>,
}

impl Sessions {
    /// The viewer whose session cookie `headers` carry, if it is current.
    pub fn viewer(&self, headers: &HeaderMap) -> Option<Viewer> {
        let id = session_id(headers)?;
        let sessions = self.by_hash.lock().ok()?;
        let session = sessions.get(&token_hash(&id))?;
        (session.expires > Instant::now()).then(|| session.viewer.clone())
    }

    /// A new session for `viewer`: a token holds at most [`MAX_SESSIONS_PER_TOKEN`] (its
    /// own oldest ends to make room), and when every slot is held by current sessions the
    /// login is refused (`None`), never another token's session ended.
    fn start(&self, viewer: Viewer) -> Option<String> {
        let id = new_token().ok()?;
        let mut sessions = self.by_hash.lock().ok()?;
        let now = Instant::now();
        let mine: Vec<([u8; 32], Instant)> = sessions
            .iter()
            .filter(|(_, s)| s.viewer.scope == viewer.scope)
            .map(|(k, s)| (*k, s.expires))
            .collect();
        if mine.len() >= MAX_SESSIONS_PER_TOKEN
            && let Some((oldest, _)) = mine.iter().min_by_key(|(_, expires)| *expires)
        {
            sessions.remove(oldest);
        }
        if sessions.len() >= MAX_SESSIONS {
            sessions.retain(|_, s| s.expires > now);
        }
        if sessions.len() >= MAX_SESSIONS {
            return None;
        }
        let expires = now + Duration::from_secs(SESSION_HOURS * 3600);
        sessions.insert(token_hash(&id), Session { viewer, expires });
        Some(id)
    }

    fn end(&self, headers: &HeaderMap) {
        if let (Some(id), Ok(mut sessions)) = (session_id(headers), self.by_hash.lock()) {
            sessions.remove(&token_hash(&id));
        }
    }
}

/// The session id in the request's cookies.
fn session_id(headers: &HeaderMap) -> Option<String> {
    headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .filter_map(|pair| pair.trim().split_once('='))
        .find(|(name, _)| *name == SESSION_COOKIE)
        .map(|(_, value)| value.to_owned())
}

/// The viewer, if logged in and `allowed`; else the error page to show.
pub(super) fn require(
    dashboard: &Dashboard,
    headers: &HeaderMap,
    allowed: impl FnOnce(&Viewer) -> bool,
) -> Result<Viewer, (PageError, Option<Viewer>)> {
    let Some(viewer) = dashboard.sessions.viewer(headers) else { return Err((PageError::LogIn, None)) };
    // A session lasts no longer than its token: revoked or expired, it is over.
    if !dashboard.app.still_valid(&viewer.scope) {
        dashboard.sessions.end(headers);
        return Err((PageError::LogIn, None));
    }
    if allowed(&viewer) {
        Ok(viewer)
    } else {
        let message = format!("A {} token may not see this page.", viewer.role.name());
        Err((PageError::Forbidden(message), Some(viewer)))
    }
}

/// [`require`] for a form post: also refused when it comes from another site.
pub(super) fn require_posted(
    dashboard: &Dashboard,
    headers: &HeaderMap,
    allowed: impl FnOnce(&Viewer) -> bool,
) -> Result<Viewer, (PageError, Option<Viewer>)> {
    let viewer = require(dashboard, headers, allowed)?;
    if !same_origin(headers) {
        return Err((PageError::Forbidden("This form was posted from another site.".into()), Some(viewer)));
    }
    Ok(viewer)
}

/// A form posted from another origin is refused, whatever its cookie (SameSite already
/// keeps the cookie off cross-site posts in current browsers; this keeps it off in others).
pub(super) fn same_origin(headers: &HeaderMap) -> bool {
    let Some(origin) = headers.get(header::ORIGIN).and_then(|v| v.to_str().ok()) else { return true };
    let host = headers.get(header::HOST).and_then(|v| v.to_str().ok()).unwrap_or_default();
    origin.split_once("://").is_some_and(|(_, rest)| rest == host)
}

fn login_form(error: Option<&str>) -> maud::Markup {
    html! {
        h1 { "Log in to dibs" }
        p {
            "Enter a token: the admin token " code { "dibs serve" } " printed at its first start "
            "(lost it? " code { "dibs token reset" } "), or one an admin made with "
            code { "dibs token create --role requester" } "."
        }
        form.card.login method="post" action="/login" {
            div.field {
                label for="token" { "Token" }
                input #token name="token" type="password" autocomplete="off" required
                    aria-invalid=[error.map(|_| "true")]
                    aria-describedby=[error.map(|_| "token-error")];
                @if let Some(error) = error {
                    p.field-error #token-error role="alert" { (error) }
                }
            }
            button type="submit" { "Log in" }
        }
    }
}

pub(super) async fn login_page(State(dashboard): State<Arc<Dashboard>>, headers: HeaderMap) -> Response {
    if dashboard.sessions.viewer(&headers).is_some() {
        return Redirect::to("/").into_response();
    }
    respond(Instant::now(), StatusCode::OK, layout(None, "Log in", Section::None, login_form(None)))
}

#[derive(Deserialize)]
pub(super) struct LoginForm {
    token: String,
}

pub(super) async fn login(
    State(dashboard): State<Arc<Dashboard>>,
    headers: HeaderMap,
    form: Result<Form<LoginForm>, axum::extract::rejection::FormRejection>,
) -> Response {
    let started = Instant::now();
    let refuse = |status: StatusCode, message: &str| {
        respond(started, status, layout(None, "Log in", Section::None, login_form(Some(message))))
    };
    if !same_origin(&headers) {
        return refuse(StatusCode::FORBIDDEN, "This form was posted from another site.");
    }
    let Ok(Form(form)) = form else { return refuse(StatusCode::UNPROCESSABLE_ENTITY, "Enter a token.") };
    let token = form.token.trim();
    if token.is_empty() {
        return refuse(StatusCode::UNPROCESSABLE_ENTITY, "Enter a token.");
    }
    let hash = token_hash(token);
    // The same check as the API's: the admin token, or one the admin made.
    let app = dashboard.app.clone();
    let role = tokio::task::spawn_blocking(move || role_of(&app, &hash)).await;
    let role: Role = match role {
        Ok(Ok(role)) => role,
        Ok(Err(e)) if e.status == 401 => {
            return refuse(StatusCode::UNAUTHORIZED, "That token is not known here.");
        }
        Ok(Err(e)) => return refuse(StatusCode::SERVICE_UNAVAILABLE, &e.error),
        Err(e) => return refuse(StatusCode::INTERNAL_SERVER_ERROR, &e.to_string()),
    };
    let viewer = Viewer { role, scope: dibs_core::ledger::hex(&hash) };
    let Some(id) = dashboard.sessions.start(viewer) else {
        return refuse(
            StatusCode::SERVICE_UNAVAILABLE,
            "Every session slot holds a current session; try again when one ends.",
        );
    };
    let cookie =
        format!("{SESSION_COOKIE}={id}; Path=/; HttpOnly; SameSite=Strict; Max-Age={}", SESSION_HOURS * 3600);
    let mut response = Redirect::to("/").into_response();
    if let Ok(value) = HeaderValue::from_str(&cookie) {
        response.headers_mut().insert(header::SET_COOKIE, value);
    }
    response
}

pub(super) async fn logout(State(dashboard): State<Arc<Dashboard>>, headers: HeaderMap) -> Response {
    let mut response = Redirect::to("/login").into_response();
    // A post from another site logs no one out: neither the session nor the cookie ends.
    if !same_origin(&headers) {
        return response;
    }
    dashboard.sessions.end(&headers);
    let expired = format!("{SESSION_COOKIE}=; Path=/; HttpOnly; SameSite=Strict; Max-Age=0");
    if let Ok(value) = HeaderValue::from_str(&expired) {
        response.headers_mut().insert(header::SET_COOKIE, value);
    }
    response
}

#[cfg(test)]
mod tests {
    use super::*;

    fn viewer(role: Role, token: &str) -> Viewer {
        Viewer { role, scope: token.to_owned() }
    }

    fn cookie(id: &str) -> HeaderMap {
        let mut headers = HeaderMap::new();
        headers.insert(header::COOKIE, HeaderValue::from_str(&format!("{SESSION_COOKIE}={id}")).unwrap());
        headers
    }

    /// Issue 20: a provider token logged in 10,050 times evicted the admin's session. Now a
    /// token holds at most 16 sessions (its own oldest ends), and no one's is ended for
    /// another's.
    #[test]
    fn a_login_flood_ends_only_the_flooding_token_s_own_sessions() {
        let sessions = Sessions::default();
        let admin = sessions.start(viewer(Role::Admin, "admin-hash")).unwrap();
        let provider = viewer(Role::Provider("lambda".into()), "lambda-hash");
        let first = sessions.start(provider.clone()).unwrap();
        for _ in 0..10_050 {
            sessions.start(provider.clone()).unwrap();
        }
        assert!(sessions.viewer(&cookie(&admin)).is_some(), "the admin is still logged in");
        assert!(sessions.viewer(&cookie(&first)).is_none(), "the flooding token's oldest ended");
        let held = sessions.by_hash.lock().unwrap();
        assert_eq!(held.values().filter(|s| s.viewer.scope == "lambda-hash").count(), MAX_SESSIONS_PER_TOKEN);
        assert_eq!(held.len(), MAX_SESSIONS_PER_TOKEN + 1);
    }

    /// With every slot held by current sessions of other tokens, a login is refused rather
    /// than ending someone's session.
    #[test]
    fn a_full_table_refuses_a_login_rather_than_end_another_s_session() {
        let sessions = Sessions::default();
        for n in 0..MAX_SESSIONS {
            sessions.start(viewer(Role::Auditor, &format!("token-{}", n / MAX_SESSIONS_PER_TOKEN))).unwrap();
        }
        assert!(sessions.start(viewer(Role::Admin, "admin-hash")).is_none());
        assert_eq!(sessions.by_hash.lock().unwrap().len(), MAX_SESSIONS);
    }
}
