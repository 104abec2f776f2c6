//! The dashboard and the first five minutes, as a new user meets them: the real binary on a
//! free port, the start banner, the pages over HTTP with a session cookie, and a real
//! browser (Debian's `chromium`, headless, driven by `chromedriver` over WebDriver with
//! plain HTTP calls) that logs in, submits through the form, watches the board, reads a
//! request's story and writes a screenshot of every page to `target/screenshots/`.
//!
//! The browser test skips, saying so, when chromium or chromedriver is not installed, and
//! fails instead when `DIBS_REQUIRE_BROWSER=1` (`.ci/run` sets it and installs both).

use std::io::{BufRead, BufReader};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use base64::Engine as _;
use serde_json::{Value, json};

const TOKEN: &str = "test-admin-token";
const DIBS: &str = env!("CARGO_BIN_EXE_dibs");
/// How long a page may take to show what the test waits for (a request decided, a page
/// loaded).
const WAIT: Duration = Duration::from_secs(45);
/// The element key of the W3C WebDriver protocol.
const ELEMENT: &str = "element-6066-11e4-a52e-4f735466cecf";
/// A screenshot is at most this tall: the page's height, up to here.
const MAX_SCREENSHOT_HEIGHT: i64 = 5000;

/// A running `dibs serve`; killed when dropped. Keeps what it printed.
struct Server {
    child: Child,
    url: String,
    banner: Vec<String>,
}

impl Server {
    fn start(data: &std::path::Path, args: &[&str], admin_token: Option<&str>) -> Self {
        let mut command = Command::new(DIBS);
        command
            .arg("serve")
            .args(["--listen", "127.0.0.1:0", "--data"])
            .arg(data)
            .args(args)
            .env_remove("DIBS_ADMIN_TOKEN")
            .stdout(Stdio::piped())
            .stderr(Stdio::null());
        if let Some(token) = admin_token {
            command.env("DIBS_ADMIN_TOKEN", token);
        }
        let mut child = command.spawn().expect("dibs serve starts");
        let stdout = child.stdout.take().unwrap();
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                let _ = tx.send(line);
            }
        });
        let mut banner = Vec::new();
        let deadline = Instant::now() + Duration::from_secs(60);
        // The banner ends with its "then open ..." line.
        while !banner.last().is_some_and(|l: &String| l.contains("then open")) {
            let left = deadline.saturating_duration_since(Instant::now());
            banner.push(rx.recv_timeout(left).unwrap_or_else(|_| panic!("no banner; printed {banner:?}")));
        }
        let url = banner[0].strip_prefix("dibs serving on ").unwrap().trim_end_matches("/v1").to_owned();
        Self { child, url, banner }
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn agent() -> ureq::Agent {
    ureq::Agent::config_builder()
        .http_status_as_error(false)
        .max_redirects(0)
        .timeout_global(Some(Duration::from_secs(20)))
        .build()
        .into()
}

/// The API, as the admin.
fn api(url: &str, method: &str, path: &str, body: Option<&Value>) -> (u16, Value) {
    let full = format!("{url}/v1{path}");
    let auth = format!("Bearer {TOKEN}");
    let response = match body {
        Some(body) => agent().post(&full).header("Authorization", &auth).send_json(body),
        None if method == "POST" => agent().post(&full).header("Authorization", &auth).send_empty(),
        None => agent().get(&full).header("Authorization", &auth).call(),
    };
    let mut response = response.unwrap();
    let status = response.status().as_u16();
    let text = response.body_mut().read_to_string().unwrap();
    (status, serde_json::from_str(&text).unwrap_or(Value::String(text)))
}

fn token_for(url: &str, role: &str) -> String {
    let (status, body) = api(url, "POST", "/tokens", Some(&json!({ "role": role })));
    assert_eq!(status, 201, "{body}");
    body["token"].as_str().unwrap().to_owned()
}

/// Logs in over plain HTTP and returns the session cookie (`name=value`).
fn log_in(url: &str, token: &str) -> String {
    let response = agent().post(format!("{url}/login")).send_form([("token", token)]).unwrap();
    assert_eq!(response.status().as_u16(), 303, "a good token is sent on");
    let cookie = response.headers().get("set-cookie").unwrap().to_str().unwrap().to_owned();
    for attribute in ["HttpOnly", "SameSite=Strict", "Path=/"] {
        assert!(cookie.contains(attribute), "{cookie}");
    }
    cookie.split(';').next().unwrap().to_owned()
}

/// A page over HTTP with a session cookie: status, `Location` or body.
fn page(url: &str, cookie: Option<&str>, path: &str) -> (u16, String) {
    let mut request = agent().get(format!("{url}{path}"));
    if let Some(cookie) = cookie {
        request = request.header("Cookie", cookie);
    }
    let mut response = request.call().unwrap();
    let status = response.status().as_u16();
    if (300..400).contains(&status) {
        return (status, response.headers().get("location").unwrap().to_str().unwrap().to_owned());
    }
    (status, response.body_mut().read_to_string().unwrap())
}

/// Polls a request over the API until `done` holds.
fn wait_for_request(url: &str, id: &str, done: impl Fn(&Value) -> bool) -> Value {
    let deadline = Instant::now() + WAIT;
    loop {
        let (status, body) = api(url, "GET", &format!("/requests/{id}"), None);
        assert_eq!(status, 200, "{body}");
        if done(&body) {
            return body;
        }
        assert!(Instant::now() < deadline, "request {id} never got there: {body}");
        std::thread::sleep(Duration::from_millis(200));
    }
}

#[test]
fn the_start_banner_says_what_was_loaded_where_to_look_and_what_to_try() {
    let data = tempfile::tempdir().unwrap();
    let server = Server::start(data.path(), &[], None);
    let banner = server.banner.join("\n");
    let token = banner
        .lines()
        .find_map(|l| l.trim().strip_prefix("export DIBS_TOKEN="))
        .unwrap_or_else(|| panic!("a first start prints the token to export:\n{banner}"));
    for expected in [
        "dashboard:  http://127.0.0.1:",
        "contracts:  the embedded default set",
        "azure-primary@2026-terms: first_refusal rofr-new-capacity (azure, offer-first, 72 h window)",
        "providers:  aws (in-process), azure (in-process)",
        "catalog:    the bundled price table",
        "clock:      real time",
        // The test runs the binary from target/, not from PATH: the banner says how to run it.
        "request submit --gpus 64 --hours 24 --server",
        "cargo install --path crates/dibs",
    ] {
        assert!(banner.contains(expected), "{expected:?} missing from:\n{banner}");
    }
    assert!(banner.contains(&data.path().join("ledger.db").display().to_string()), "{banner}");
    // `/` goes to the dashboard: the login form, then the board.
    assert_eq!(page(&server.url, None, "/"), (303, "/login".to_owned()));
    let cookie = log_in(&server.url, token);
    assert_eq!(page(&server.url, Some(&cookie), "/"), (303, "/requests".to_owned()));
    drop(server);

    // A lost admin token: `dibs token reset` makes a new one (not while a server runs).
    let reset = Command::new(DIBS).args(["token", "reset", "--data"]).arg(data.path()).output().unwrap();
    assert!(reset.status.success(), "{}", String::from_utf8_lossy(&reset.stderr));
    let text = String::from_utf8_lossy(&reset.stdout);
    let new_token =
        text.lines().find_map(|l| l.trim().strip_prefix("export DIBS_TOKEN=")).unwrap().to_owned();
    let server = Server::start(data.path(), &[], None);
    assert!(!server.banner.join("\n").contains(&new_token), "shown once, by reset");
    let status = |token: &str| {
        agent()
            .get(format!("{}/v1/requests", server.url))
            .header("Authorization", format!("Bearer {token}"))
            .call()
            .unwrap()
            .status()
            .as_u16()
    };
    assert_eq!(
        (status(&new_token), status(token)),
        (200, 401),
        "the new token works and the old one does not"
    );
    let refused = Command::new(DIBS).args(["token", "reset", "--data"]).arg(data.path()).output().unwrap();
    assert!(!refused.status.success(), "reset refuses while a server holds the folder");
    assert!(String::from_utf8_lossy(&refused.stderr).contains("stop it first"));
    // So does a rebuild of the requests table, which the server writes too.
    let refused = Command::new(DIBS).args(["ledger", "rebuild", "--data"]).arg(data.path()).output().unwrap();
    assert!(!refused.status.success(), "rebuild refuses while a server holds the folder");
    assert!(String::from_utf8_lossy(&refused.stderr).contains("stop it first"), "{refused:?}");
}

#[test]
fn pages_answer_by_role_and_a_provider_sees_only_its_own_view() {
    let data = tempfile::tempdir().unwrap();
    let server = Server::start(data.path(), &["--holder", "decline"], Some(TOKEN));
    let url = &server.url;
    let (status, submitted) = api(
        url,
        "POST",
        "/requests",
        Some(
            &json!({ "accelerators": ["H100"], "gpus": 256, "duration_hours": 100, "workload": "training" }),
        ),
    );
    assert_eq!(status, 201, "{submitted}");
    wait_for_request(url, "r-1", |r| r["status"] == "provisioning");

    // Without a session every page sends the visitor to log in; a wrong token is refused.
    for path in ["/requests", "/requests/r-1", "/fleet", "/contracts", "/ledger", "/providers/lambda"] {
        assert_eq!(page(url, None, path), (303, "/login".to_owned()), "{path}");
    }
    let mut wrong = agent().post(format!("{url}/login")).send_form([("token", "nope")]).unwrap();
    assert_eq!(wrong.status().as_u16(), 401);
    assert!(wrong.body_mut().read_to_string().unwrap().contains("That token is not known here."));

    let admin = log_in(url, TOKEN);
    let requester = log_in(url, &token_for(url, "requester"));
    let auditor = log_in(url, &token_for(url, "auditor"));
    let lambda = log_in(url, &token_for(url, "provider:lambda"));
    // (path, [admin, requester, auditor, lambda]) statuses.
    let expected: [(&str, [u16; 4]); 7] = [
        ("/requests", [200, 200, 200, 403]),
        ("/requests/r-1", [200, 200, 200, 403]),
        ("/fleet", [200, 200, 200, 403]),
        ("/contracts", [200, 200, 200, 403]),
        ("/ledger", [200, 403, 200, 403]),
        ("/providers/lambda", [200, 403, 200, 200]),
        ("/providers/aws", [200, 403, 200, 403]),
    ];
    for (path, statuses) in expected {
        for (cookie, want) in [&admin, &requester, &auditor, &lambda].into_iter().zip(statuses) {
            let (status, body) = page(url, Some(cookie), path);
            assert_eq!(status, want, "{path}: {body}");
        }
    }
    // Lambda's own view names no other provider; the story's losing offers do.
    let (_, own) = page(url, Some(&lambda), "/providers/lambda");
    for other in ["aws", "azure", "gcp", "nebius", "oci"] {
        assert!(!own.contains(other), "lambda's view mentions {other}");
    }
    let (_, story) = page(url, Some(&requester), "/requests/r-1");
    assert!(story.contains("Losing offers"), "{story}");
    assert!(!story.contains("Ledger entries"), "hashes are for admin and auditors");
    let (_, story) = page(url, Some(&auditor), "/requests/r-1");
    assert!(story.contains("Ledger entries") && !story.contains("Cancel r-1"), "an auditor changes nothing");
    let (status, missing) = page(url, Some(&admin), "/requests/r-999");
    assert!(status == 404 && missing.contains("r-999"), "{status} {missing}");
    // The holder declined: its deadline is no longer counted down, and the cost is a total.
    let (_, story) = page(url, Some(&admin), "/requests/r-1");
    assert!(story.contains("(answered "), "the answered solicitation says when: {story}");
    assert!(
        story.contains("in total over the round&#39;s hours")
            || story.contains("in total over the round's hours"),
        "{story}"
    );
    // A request nothing could fill says no award, not an award of $0, and no allocation.
    let (status, unfilled) = api(
        url,
        "POST",
        "/requests",
        Some(
            &json!({ "accelerators": ["H100"], "gpus": 8, "duration_hours": 10, "workload": "training", "max_price": 0.01 }),
        ),
    );
    assert_eq!(status, 201, "{unfilled}");
    let id = unfilled["id"].as_str().unwrap().to_owned();
    wait_for_request(url, &id, |r| r["status"] == "unfilled");
    let (_, story) = page(url, Some(&admin), &format!("/requests/{id}"));
    assert!(story.contains("no award") && !story.contains("$0.00"), "{story}");
    assert!(story.contains("None: no capacity was awarded."), "{story}");
    // Pages say how long they took.
    let response = agent().get(format!("{url}/requests")).header("Cookie", &admin).call().unwrap();
    let timing = response.headers().get("server-timing").unwrap().to_str().unwrap();
    assert!(timing.starts_with("render;dur="), "{timing}");

    // A page before the first entry is empty, not a wrap-around to a full page.
    let (status, empty) = page(url, Some(&admin), "/ledger?before=0");
    assert!(status == 200 && empty.contains("No entries."), "{status} {empty}");
    // Another site's post cannot log anyone out: no expired cookie, the session lives on.
    let forged = agent()
        .post(format!("{url}/logout"))
        .header("Cookie", &admin)
        .header("Origin", "http://evil.example")
        .send_empty()
        .unwrap();
    assert!(forged.headers().get("set-cookie").is_none(), "a cross-site logout clears no cookie");
    assert_eq!(page(url, Some(&admin), "/requests").0, 200, "the session survives a cross-site logout");
    // Logging out ends the session.
    let out = agent().post(format!("{url}/logout")).header("Cookie", &admin).send_empty().unwrap();
    assert_eq!(out.status().as_u16(), 303);
    assert_eq!(page(url, Some(&admin), "/requests"), (303, "/login".to_owned()));
}

#[test]
fn a_demo_clock_takes_a_request_to_active_in_seconds_and_a_restart_resumes_its_time() {
    let data = tempfile::tempdir().unwrap();
    // Ten simulated hours a second: lead times of 4 to 72 hours pass in under eight seconds.
    let server = Server::start(data.path(), &["--holder", "decline", "--time-speed", "36000"], Some(TOKEN));
    assert!(server.banner.iter().any(|l| l.contains("clock:      demo, 36000x")), "{:?}", server.banner);
    let started = Instant::now();
    let (_, submitted) = api(
        &server.url,
        "POST",
        "/requests",
        Some(
            &json!({ "accelerators": ["H100"], "gpus": 64, "duration_hours": 2000, "workload": "training", "deliver_within_hours": 96 }),
        ),
    );
    let id = submitted["id"].as_str().unwrap().to_owned();
    let active = wait_for_request(&server.url, &id, |r| r["status"] == "active");
    assert!(started.elapsed() < Duration::from_secs(20), "took {:?}", started.elapsed());
    let (_, ledger) = api(&server.url, "GET", "/ledger?limit=1", None);
    assert_eq!(ledger["entries"][0]["body"]["time_speed"], json!(36000.0), "the speed is recorded: {ledger}");
    drop(server);

    // Restarted at real time, the service resumes from the ledger's last instant, which the
    // demo left ahead of the wall clock: time never goes backwards.
    let server = Server::start(data.path(), &["--holder", "decline"], Some(TOKEN));
    let clock = server.banner.iter().find(|l| l.contains("clock:")).unwrap();
    assert!(clock.contains("real time; resumed at") && clock.contains("ahead of the wall clock"), "{clock}");
    let again = wait_for_request(&server.url, &id, |_| true);
    assert_eq!(again["allocations"], active["allocations"], "the replay reproduces the demo's decisions");
    drop(server);
    let verify = Command::new(DIBS).args(["ledger", "verify", "--data"]).arg(data.path()).output().unwrap();
    assert!(verify.status.success(), "{}", String::from_utf8_lossy(&verify.stdout));
}

/// A contract set from `examples/contracts`, as `POST /v1/contracts` takes it.
fn contract_files(name: &str) -> Value {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../examples/contracts").join(name);
    let mut paths: Vec<_> = std::fs::read_dir(&dir).unwrap().map(|e| e.unwrap().path()).collect();
    paths.retain(|p| p.extension().is_some_and(|e| e == "toml"));
    paths.sort();
    let files: Vec<Value> = paths
        .iter()
        .map(|p| json!({ "name": p.file_name().unwrap().to_str().unwrap(), "text": std::fs::read_to_string(p).unwrap() }))
        .collect();
    json!({ "files": files })
}

/// A phone's width in CSS pixels (an iPhone 12 to 15).
const PHONE_WIDTH: i64 = 390;

/// A headless chromium driven over WebDriver; the driver and the browser end when dropped.
struct Browser {
    driver: Child,
    base: String,
    session: String,
    screenshots: PathBuf,
}

fn find_program(names: &[&str]) -> Option<PathBuf> {
    let path = std::env::var_os("PATH")?;
    names.iter().find_map(|name| std::env::split_paths(&path).map(|dir| dir.join(name)).find(|p| p.is_file()))
}

impl Browser {
    /// `None` (with a message) when chromium or chromedriver is missing, unless the browser is required.
    fn start() -> Option<Self> {
        let chromium = find_program(&["chromium", "chromium-browser", "google-chrome"]);
        let driver = find_program(&["chromedriver"]);
        let (Some(chromium), Some(driver)) = (chromium, driver) else {
            let message = "chromium and chromedriver are needed (apt-get install chromium chromium-driver)";
            assert!(
                std::env::var("DIBS_REQUIRE_BROWSER").as_deref() != Ok("1"),
                "DIBS_REQUIRE_BROWSER=1: {message}"
            );
            eprintln!("skipping the browser test: {message}");
            return None;
        };
        let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
        let child = Command::new(driver)
            .arg(format!("--port={port}"))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("chromedriver starts");
        let base = format!("http://127.0.0.1:{port}");
        let deadline = Instant::now() + WAIT;
        while agent().get(format!("{base}/status")).call().is_err() {
            assert!(Instant::now() < deadline, "chromedriver never answered");
            std::thread::sleep(Duration::from_millis(100));
        }
        let capabilities = json!({ "capabilities": { "alwaysMatch": {
            "browserName": "chrome",
            "goog:chromeOptions": {
                "binary": chromium,
                "args": ["--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage", "--window-size=1400,1000"],
            },
        } } });
        let mut response = agent().post(format!("{base}/session")).send_json(&capabilities).unwrap();
        let created: Value = response.body_mut().read_json().unwrap();
        let session = created["value"]["sessionId"]
            .as_str()
            .unwrap_or_else(|| panic!("no session: {created}"))
            .to_owned();
        let target = std::env::var_os("CARGO_TARGET_DIR")
            .map(PathBuf::from)
            .unwrap_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../target"));
        let screenshots = target.join("screenshots");
        std::fs::create_dir_all(&screenshots).unwrap();
        Some(Self { driver: child, base, session, screenshots })
    }

    fn call(&self, method: &str, path: &str, body: Value) -> Value {
        let url = format!("{}/session/{}{path}", self.base, self.session);
        let mut response = match method {
            "GET" => agent().get(&url).call(),
            _ => agent().post(&url).send_json(&body),
        }
        .unwrap_or_else(|e| panic!("{method} {path}: {e}"));
        let answer: Value = response.body_mut().read_json().unwrap();
        assert!(answer["value"].get("error").is_none(), "{method} {path}: {answer}");
        answer["value"].clone()
    }

    fn go(&self, url: &str) {
        self.call("POST", "/url", json!({ "url": url }));
    }

    fn url(&self) -> String {
        self.call("GET", "/url", Value::Null).as_str().unwrap().to_owned()
    }

    fn try_find(&self, css: &str) -> Option<String> {
        let url = format!("{}/session/{}/element", self.base, self.session);
        let mut response =
            agent().post(&url).send_json(json!({ "using": "css selector", "value": css })).unwrap();
        let answer: Value = response.body_mut().read_json().unwrap();
        let found = answer["value"][ELEMENT].as_str().map(str::to_owned);
        if found.is_none() && answer["value"]["error"] != "no such element" {
            panic!("finding {css}: {answer}");
        }
        found
    }

    /// The element, waiting up to five seconds for a page still loading.
    fn find(&self, css: &str) -> String {
        let deadline = Instant::now() + Duration::from_secs(5);
        loop {
            if let Some(element) = self.try_find(css) {
                return element;
            }
            if Instant::now() > deadline {
                let source = self.source();
                let main = source.find("<main").map_or(&source[..], |at| &source[at..]);
                panic!("no {css} on {}:\n{}", self.url(), main.chars().take(2000).collect::<String>());
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    fn count(&self, css: &str) -> usize {
        self.call("POST", "/elements", json!({ "using": "css selector", "value": css }))
            .as_array()
            .unwrap()
            .len()
    }

    fn text(&self, css: &str) -> String {
        let element = self.find(css);
        self.call("GET", &format!("/element/{element}/text"), Value::Null).as_str().unwrap().to_owned()
    }

    fn fill(&self, css: &str, text: &str) {
        let element = self.find(css);
        self.call("POST", &format!("/element/{element}/clear"), json!({}));
        self.call("POST", &format!("/element/{element}/value"), json!({ "text": text }));
    }

    /// Clicks something that loads a page (a link, a form's button) and waits for the new
    /// page: a click returns before the browser has navigated.
    fn click(&self, css: &str) {
        let element = self.find(css);
        let script =
            |script: &str| self.call("POST", "/execute/sync", json!({ "script": script, "args": [] }));
        script("window.dibsOldPage = true");
        self.call("POST", &format!("/element/{element}/click"), json!({}));
        let deadline = Instant::now() + Duration::from_secs(10);
        while script("return window.dibsOldPage === undefined && document.readyState === 'complete'")
            != json!(true)
        {
            assert!(Instant::now() < deadline, "clicking {css} loaded no page");
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Picks an option of a select (a click that loads no page).
    fn choose(&self, option_css: &str) {
        let element = self.find(option_css);
        self.call("POST", &format!("/element/{element}/click"), json!({}));
    }

    fn source(&self) -> String {
        self.call("GET", "/source", Value::Null).as_str().unwrap().to_owned()
    }

    /// Reloads `url` until `css` matches, or fails after [`WAIT`].
    fn wait_for(&self, url: &str, css: &str) {
        let deadline = Instant::now() + WAIT;
        loop {
            self.go(url);
            if self.try_find(css).is_some() {
                return;
            }
            assert!(Instant::now() < deadline, "{css} never showed on {url}");
            std::thread::sleep(Duration::from_millis(500));
        }
    }

    /// Writes the whole page (up to [`MAX_SCREENSHOT_HEIGHT`]) to `target/screenshots/NAME.png`
    /// at a desktop's width and to `NAME-390.png` at a phone's, and checks that at neither is
    /// the page wider than the window (tables and charts scroll or reflow inside it).
    fn screenshot(&self, name: &str) -> PathBuf {
        let script =
            |script: &str| self.call("POST", "/execute/sync", json!({ "script": script, "args": [] }));
        let mut first = None;
        for (width, suffix) in [(1400, ""), (PHONE_WIDTH, "-390")] {
            self.call("POST", "/window/rect", json!({ "width": width, "height": 1000 }));
            let widths = script("return [document.documentElement.scrollWidth, window.innerWidth]");
            let (page, window) = (widths[0].as_i64().unwrap(), widths[1].as_i64().unwrap());
            assert!(
                page <= window,
                "{name} at {width} px: the page is {page} px wide in a {window} px window"
            );
            let height = script("return document.documentElement.scrollHeight");
            let height = height.as_i64().unwrap_or(1000).clamp(600, MAX_SCREENSHOT_HEIGHT);
            self.call("POST", "/window/rect", json!({ "width": width, "height": height }));
            let png = self.call("GET", "/screenshot", Value::Null);
            let bytes = base64::engine::general_purpose::STANDARD.decode(png.as_str().unwrap()).unwrap();
            assert!(bytes.starts_with(b"\x89PNG"), "a PNG");
            let path = self.screenshots.join(format!("{name}{suffix}.png"));
            std::fs::write(&path, bytes).unwrap();
            first.get_or_insert(path);
        }
        self.call("POST", "/window/rect", json!({ "width": 1400, "height": 1000 }));
        first.expect("a screenshot")
    }
}

impl Drop for Browser {
    fn drop(&mut self) {
        let _ = agent().delete(format!("{}/session/{}", self.base, self.session)).call();
        let _ = self.driver.kill();
        let _ = self.driver.wait();
    }
}

#[test]
fn in_a_browser_log_in_submit_watch_the_board_read_the_story_and_stay_in_your_lane() {
    let Some(browser) = Browser::start() else { return };
    let data = tempfile::tempdir().unwrap();
    let server = Server::start(data.path(), &["--holder", "decline"], Some(TOKEN));
    let url = &server.url;
    let mut shots = Vec::new();

    // `/` asks for a token; a wrong one is refused beside the field.
    browser.go(&format!("{url}/"));
    assert!(browser.url().ends_with("/login"), "{}", browser.url());
    browser.fill("#token", "not-a-token");
    browser.click("form.login button");
    assert_eq!(browser.text("#token-error"), "That token is not known here.");
    shots.push(browser.screenshot("01-login"));
    browser.fill("#token", TOKEN);
    browser.click("form.login button");
    assert!(browser.url().ends_with("/requests"), "{}", browser.url());

    // Bad values: the API's message beside its field, every wrong field at once (the API
    // answers only the first), and nothing created.
    let bad = json!({ "accelerators": ["H100"], "gpus": 12, "block": 8, "duration_hours": 0, "workload": "training" });
    let (status, api_error) = api(url, "POST", "/requests", Some(&bad));
    assert_eq!((status, api_error["field"].as_str()), (422, Some("block")), "{api_error}");
    browser.fill("#gpus", "12");
    browser.fill("#block", "8");
    browser.fill("#duration_hours", "0");
    browser.fill("#max_price", "cheap");
    browser.click("#submit button[type=submit]");
    assert_eq!(browser.text("#block-error"), api_error["error"].as_str().unwrap(), "the API's words");
    assert!(browser.text("#duration_hours-error").contains("between 1 and"), "the second API error too");
    assert_eq!(browser.text("#max_price-error"), "\"cheap\" is not a price in USD per GPU-hour");
    assert_eq!(browser.count("[aria-invalid=true]"), 3, "every wrong field is marked");
    assert!(
        browser.text("#form-errors").starts_with("3 fields need a change"),
        "{}",
        browser.text("#form-errors")
    );
    shots.push(browser.screenshot("02-form-error"));
    let (_, listed) = api(url, "GET", "/requests", None);
    assert_eq!(listed["requests"], json!([]), "a bad form creates nothing");

    // A good one: it moves across the board to awarded.
    browser.fill("#gpus", "256");
    browser.fill("#block", "");
    browser.fill("#duration_hours", "100");
    browser.fill("#max_price", "");
    browser.click("#submit button[type=submit]");
    assert!(browser.url().ends_with("/requests?submitted=r-1"), "{}", browser.url());
    browser.wait_for(
        &format!("{url}/requests?submitted=r-1"),
        "section[aria-labelledby=col-provisioning] li[data-request=r-1]",
    );
    assert!(
        browser.text("#col-provisioning").starts_with("Awarded"),
        "{}",
        browser.text("#col-provisioning")
    );
    // With a request on the board, the board comes first and the form is folded away.
    assert_eq!(browser.count("details.submit-panel:not([open])"), 1, "the form folds once there is a board");
    let card = browser.text("li[data-request=r-1]");
    assert!(
        card.contains("/h") && card.contains("all ready") && card.contains("start:"),
        "cost, readiness, age: {card}"
    );
    shots.push(browser.screenshot("03-requests-board"));

    // Search and sort through the board's own form; the CSV link carries the same query.
    browser.fill("#filter-q", "h100 R-1");
    browser.choose("#filter-sort option[value=cost]");
    browser.click("form.filters button[type=submit]");
    assert!(browser.url().contains("q=h100+R-1") && browser.url().contains("sort=cost"), "{}", browser.url());
    assert_eq!(browser.count("li[data-request=r-1]"), 1, "found by id and accelerator, any case");
    assert!(browser.text("#board-order").contains("cost per hour, dearest first"), "the order is said");
    assert_eq!(browser.find("#filter-sort option[value=cost]"), browser.find("#filter-sort option:checked"));
    let export =
        browser.call("GET", &format!("/element/{}/attribute/href", browser.find("#export")), Value::Null);
    assert_eq!(export, "/requests.csv?q=h100%20R-1&sort=cost");
    shots.push(browser.screenshot("03b-requests-searched"));
    browser.go(&format!("{url}/requests?q=nebius-and-nothing"));
    assert_eq!(browser.count("li[data-request]"), 0, "a search that matches nothing shows nothing");
    // The export: what the board selects, as quoted CSV, for the roles that see the board.
    let cookie = log_in(url, TOKEN);
    let (status, csv) = page(url, Some(&cookie), "/requests.csv?q=h100%20R-1&sort=cost");
    assert_eq!(status, 200, "{csv}");
    let mut lines = csv.lines();
    assert!(lines.next().unwrap().starts_with("id,state,gpus,accelerators,"), "{csv}");
    assert!(lines.next().unwrap().starts_with("r-1,provisioning,256,H100,100,training,"), "{csv}");
    assert_eq!(lines.next(), None, "{csv}");
    assert_eq!(page(url, None, "/requests.csv").0, 303, "no session, no export");
    browser.go(&format!("{url}/requests"));

    // Its story: screening, the solicitation and the decline, quotes, and every losing offer with its reason.
    browser.click("li[data-request=r-1] a");
    assert!(browser.url().ends_with("/requests/r-1"), "{}", browser.url());
    let story = browser.source();
    for expected in [
        "Screening",
        "First refusal",
        "solicited",
        "Deadline",
        "Quotes received",
        "Awarded offers",
        "Ledger entries",
    ] {
        assert!(story.contains(expected), "the story lacks {expected:?}");
    }
    let losing = browser.count("#losing-offers tbody tr");
    assert!(losing > 0, "no losing offers");
    assert_eq!(browser.count("#losing-offers td.reason:empty"), 0, "every losing offer says why");
    shots.push(browser.screenshot("04-request-story"));

    browser.go(&format!("{url}/fleet"));
    assert!(browser.count("svg.chart") >= 2, "the fleet's charts");
    assert!(browser.source().contains("cap: 40% of training GPUs"), "the cap is drawn");
    assert_eq!(browser.text("#fleet-shown"), "Charts of the last 24 hours, counting training workloads.");
    assert!(browser.text("#by-region caption").contains("training workloads, as the charts above"));
    shots.push(browser.screenshot("05-fleet"));
    // The window and the class are the page's to choose, and the choice is said.
    browser.choose("#window option[value='7d']");
    browser.choose("#workload option[value=all]");
    browser.click("#fleet-choice button");
    assert!(browser.url().ends_with("/fleet?window=7d&workload=all"), "{}", browser.url());
    assert_eq!(browser.text("#fleet-shown"), "Charts of the last 7 days, counting every workload.");
    assert!(browser.text("#by-region caption").contains("every workload"));
    shots.push(browser.screenshot("05b-fleet-7d-all"));

    // The historical set, loaded through the API, has an amendment and a commitment to burn down.
    let (status, loaded) = api(url, "POST", "/contracts", Some(&contract_files("historical")));
    assert_eq!(status, 200, "{loaded}");
    browser.go(&format!("{url}/contracts"));
    assert_eq!(browser.count("svg.timeline"), 1);
    // A bar's dates without a hover: each bar is a link to its row in the table below.
    let bars = browser.count("svg.timeline a");
    assert!(bars > 1 && bars == browser.count("#versions tbody tr"), "{bars} bars");
    assert!(browser.text("#triggers").contains("not met"), "the trigger's state");
    assert!(!browser.source().contains("id=\"statements\""), "no revenue, no statement");
    // Revenue reported to the service is shared by the clause in force, on the same page.
    let (status, reported) = api(url, "POST", "/revenue", Some(&json!({ "amount": 1_000_000.0 })));
    assert_eq!(status, 201, "{reported}");
    browser.go(&format!("{url}/contracts"));
    let statements = browser.text("#statements");
    assert!(statements.contains("$1.00M") && statements.contains("$200,000.00"), "20% owed: {statements}");
    assert!(browser.text("#commitments").contains("azure-250b"), "{}", browser.text("#commitments"));
    assert!(browser.source().contains("burn-down"), "the burn-down chart");
    shots.push(browser.screenshot("06-contracts"));

    browser.go(&format!("{url}/ledger"));
    browser.fill("#request", "r-1");
    browser.click("form[role=search] button");
    assert!(browser.url().ends_with("/ledger?request=r-1"), "{}", browser.url());
    browser.click("form.verify button");
    assert!(
        browser.text("#verify-result").starts_with("The chain is intact"),
        "{}",
        browser.text("#verify-result")
    );
    assert!(browser.text("table.ledger caption").contains("about r-1"), "the search is kept");
    // Every row says what it records, inputs too, with instants as every other page writes them.
    let ledger = browser.text("table.ledger");
    assert!(
        ledger.contains("Submitted: 256 GPUs for 100 h (training).") && ledger.contains("quoted"),
        "{ledger}"
    );
    assert!(
        !ledger.contains("T0") && !ledger.contains("T1") && !ledger.contains("T2"),
        "one date format: {ledger}"
    );
    shots.push(browser.screenshot("07-ledger"));

    // A provider logs in to its own view, and no other.
    let lambda = token_for(url, "provider:lambda");
    browser.click("form.logout button");
    assert!(browser.url().ends_with("/login"), "{}", browser.url());
    browser.fill("#token", &lambda);
    browser.click("form.login button");
    assert!(browser.url().ends_with("/providers/lambda"), "{}", browser.url());
    assert!(browser.text("h1").contains("Provider lambda"));
    shots.push(browser.screenshot("08-provider-own-view"));
    browser.go(&format!("{url}/providers/aws"));
    assert_eq!(browser.text("h1"), "Not for this token");
    assert!(!browser.source().contains("Provider aws"));
    shots.push(browser.screenshot("09-provider-other-view-refused"));
    browser.go(&format!("{url}/requests"));
    assert_eq!(browser.text("h1"), "Not for this token", "a provider sees no board");

    for shot in &shots {
        eprintln!("screenshot: {}", shot.display());
    }
}
