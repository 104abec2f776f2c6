//! `dibs serve` end to end: the real binary on a free port, real HTTP, a
//! real SQLite file or PostgreSQL database, and `kill -9`.

use std::collections::{BTreeMap, BTreeSet};
use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde_json::{Value, json};

const TOKEN: &str = "test-admin-token";
const DIBS: &str = env!("CARGO_BIN_EXE_dibs");

/// A running `dibs serve`; killed (SIGKILL) when dropped.
struct Server {
    child: Child,
    url: String,
    /// What it printed (its start banner).
    printed: Arc<Mutex<Vec<String>>>,
}

impl Server {
    fn start(args: &[&str]) -> Self {
        Self::start_on("127.0.0.1:0", args)
    }

    /// Starts one listening on `listen`; returns once it serves (a standby on PostgreSQL
    /// returns only when it leads).
    fn start_on(listen: &str, args: &[&str]) -> Self {
        let mut child = Command::new(DIBS)
            .arg("serve")
            .args(["--listen", listen, "--holder", "decline"])
            .args(args)
            .env("DIBS_ADMIN_TOKEN", TOKEN)
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .expect("dibs serve starts");
        let stdout = child.stdout.take().unwrap();
        let (tx, rx) = std::sync::mpsc::channel();
        let printed = Arc::new(Mutex::new(Vec::new()));
        let lines = printed.clone();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                if let Some(url) = line.strip_prefix("dibs serving on ") {
                    let _ = tx.send(url.trim_end_matches("/v1").to_owned());
                }
                lines.lock().unwrap().push(line);
            }
        });
        let url = rx.recv_timeout(Duration::from_secs(60)).expect("dibs serve prints its URL");
        Self { child, url, printed }
    }

    /// The line of its banner that says how it started from the ledger.
    fn ledger_line(&self) -> String {
        let deadline = Instant::now() + Duration::from_secs(5);
        loop {
            if let Some(line) =
                self.printed.lock().unwrap().iter().find(|l| l.trim_start().starts_with("ledger:"))
            {
                return line.clone();
            }
            assert!(Instant::now() < deadline, "no ledger line in the banner");
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        self.kill();
    }
}

fn agent() -> ureq::Agent {
    ureq::Agent::config_builder()
        .http_status_as_error(false)
        .timeout_global(Some(Duration::from_secs(10)))
        .build()
        .into()
}

fn call(url: &str, method: &str, path: &str, body: Option<&Value>, key: Option<&str>) -> (u16, Value) {
    let agent = agent();
    let full = format!("{url}/v1{path}");
    let auth = format!("Bearer {TOKEN}");
    let response = match (method, body) {
        ("POST", Some(body)) => {
            let mut r = agent.post(&full).header("Authorization", &auth);
            if let Some(key) = key {
                r = r.header("Idempotency-Key", key);
            }
            r.send_json(body)
        }
        ("POST", None) => agent.post(&full).header("Authorization", &auth).send_empty(),
        _ => agent.get(&full).header("Authorization", &auth).call(),
    };
    let mut response = response.unwrap_or_else(|e| panic!("{method} {full}: {e}"));
    let status = response.status().as_u16();
    let text = response.body_mut().read_to_string().unwrap();
    (status, serde_json::from_str(&text).unwrap_or(Value::String(text)))
}

/// POSTs `body` as it is, with this Content-Type (none when empty).
fn raw_post(url: &str, path: &str, content_type: &str, body: &str, key: Option<&str>) -> (u16, Value) {
    let mut request =
        agent().post(format!("{url}/v1{path}")).header("Authorization", format!("Bearer {TOKEN}"));
    if !content_type.is_empty() {
        request = request.header("Content-Type", content_type);
    }
    if let Some(key) = key {
        request = request.header("Idempotency-Key", key);
    }
    let mut response = request.send(body.as_bytes()).unwrap();
    let status = response.status().as_u16();
    let text = response.body_mut().read_to_string().unwrap();
    (status, serde_json::from_str(&text).unwrap_or(Value::String(text)))
}

fn request_body(gpus: u32) -> Value {
    json!({ "accelerators": ["H100"], "gpus": gpus, "duration_hours": 100, "workload": "training" })
}

/// Polls a request until `done` holds for it.
fn wait_for(url: &str, id: &str, done: impl Fn(&Value) -> bool) -> Value {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let (status, body) = call(url, "GET", &format!("/requests/{id}"), None, None);
        assert_eq!(status, 200, "{body}");
        if done(&body) {
            return body;
        }
        assert!(Instant::now() < deadline, "request {id} never got there: {body}");
        std::thread::sleep(Duration::from_millis(200));
    }
}

fn ledger(url: &str) -> Vec<Value> {
    let mut out = Vec::new();
    let mut after = 0;
    loop {
        let (status, page) = call(url, "GET", &format!("/ledger?after={after}&limit=1000"), None, None);
        assert_eq!(status, 200, "{page}");
        let entries = page["entries"].as_array().unwrap().clone();
        out.extend(entries.iter().cloned());
        match page["next_after"].as_u64() {
            Some(next) => after = next,
            None => return out,
        }
    }
}

/// Every request the server holds, page by page.
fn all_requests(url: &str) -> Vec<Value> {
    let mut out = Vec::new();
    let mut after = String::new();
    loop {
        let query = if after.is_empty() { String::new() } else { format!("&after={after}") };
        let (status, page) = call(url, "GET", &format!("/requests?limit=500{query}"), None, None);
        assert_eq!(status, 200, "{page}");
        out.extend(page["requests"].as_array().unwrap().iter().cloned());
        match page["next_after"].as_str() {
            Some(next) => after = next.to_owned(),
            None => return out,
        }
    }
}

fn all_ids(url: &str) -> BTreeSet<String> {
    all_requests(url).iter().map(|r| r["id"].as_str().unwrap().to_owned()).collect()
}

/// The body `stream_submissions` sent with its n-th key.
fn streamed_body(n: u32) -> Value {
    request_body(8 * (1 + n % 4))
}

/// `dibs ledger verify`: the chain, and a replay under the configurations the ledger records.
fn verify_offline(data: &Path) {
    let output = Command::new(DIBS).args(["ledger", "verify", "--data"]).arg(data).output().unwrap();
    let text = String::from_utf8_lossy(&output.stdout);
    assert!(output.status.success(), "dibs ledger verify: {text}");
    assert!(text.contains("replay: ok"), "{text}");
}

/// Allocations per request never exceed its GPUs, and no round is awarded twice.
fn check_no_double_award(url: &str) {
    let mut awards: BTreeMap<(String, u64), usize> = BTreeMap::new();
    for entry in ledger(url) {
        if entry["kind"] == "awarded" {
            let key =
                (entry["request"].as_str().unwrap().to_owned(), entry["body"]["round"].as_u64().unwrap());
            *awards.entry(key).or_default() += 1;
        }
    }
    for (key, count) in &awards {
        assert_eq!(*count, 1, "{key:?} awarded {count} times");
    }
    for request in &all_requests(url) {
        let live: u64 = request["allocations"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|a| a["state"] != "cancelled" && a["state"] != "released")
            .map(|a| a["gpus"].as_u64().unwrap())
            .sum();
        assert!(live <= request["gpus"].as_u64().unwrap(), "over-awarded: {request}");
    }
}

#[test]
fn a_request_goes_through_first_refusal_and_market_to_an_award_over_http() {
    let data = tempfile::tempdir().unwrap();
    let server = Server::start(&["--data", data.path().to_str().unwrap()]);
    let url = &server.url;

    // Errors name the field and change nothing.
    let (status, body) = call(url, "POST", "/requests", Some(&json!({ "gpus": 8 })), None);
    assert_eq!((status, body["field"].as_str()), (422, Some("accelerators")), "{body}");
    for (field, value) in [
        ("earliest_start", "0000-01-01"),
        ("earliest_start", "9999-12-31"),
        ("deliver_by", "9999-12-31T00:00:00Z"),
        ("accelerators", "H101"),
        ("regions", "mars-1"),
    ] {
        let mut bad = request_body(8);
        bad[field] =
            if field == "accelerators" || field == "regions" { json!([value]) } else { json!(value) };
        let (status, body) = call(url, "POST", "/requests", Some(&bad), None);
        assert_eq!((status, body["field"].as_str()), (422, Some(field)), "{field}={value}: {body}");
    }
    let mut odd = request_body(12);
    odd["min_block"] = json!(8);
    let (status, body) = call(url, "POST", "/requests", Some(&odd), None);
    assert_eq!((status, body["field"].as_str()), (422, Some("min_block")), "{body}");
    // A value of the wrong type is named by its path, never by the value.
    for (field, value, path) in
        [("gpus", json!(1e308), "gpus"), ("accelerators", json!(["H100", 7]), "accelerators[1]")]
    {
        let mut bad = request_body(8);
        bad[field] = value;
        let (status, body) = call(url, "POST", "/requests", Some(&bad), None);
        assert_eq!((status, body["field"].as_str()), (422, Some(path)), "{body}");
    }
    let unauthenticated = agent().get(format!("{url}/v1/requests")).call().unwrap();
    assert_eq!(unauthenticated.status().as_u16(), 401);
    // What the framework refuses is JSON too: a body over 64 KiB, a wrong method.
    let mut huge = request_body(8);
    huge["workload"] = json!("x".repeat(100_000));
    let (status, body) = call(url, "POST", "/requests", Some(&huge), None);
    assert_eq!((status, body["field"].as_str()), (413, Some("body")), "{body}");
    // A body promised larger than the limit is refused at once, before any of it arrives.
    {
        use std::io::{Read, Write};
        let address = url.trim_start_matches("http://");
        let mut socket = std::net::TcpStream::connect(address).unwrap();
        socket.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        let head = format!(
            "POST /v1/requests HTTP/1.1\r\nHost: {address}\r\nAuthorization: Bearer {TOKEN}\r\n\
             Content-Type: application/json\r\nContent-Length: 9223372036854775807\r\n\r\n{{"
        );
        socket.write_all(head.as_bytes()).unwrap();
        let started = Instant::now();
        let mut answer = String::new();
        let _ = socket.read_to_string(&mut answer);
        assert!(answer.starts_with("HTTP/1.1 413"), "{answer}");
        assert!(
            started.elapsed() < Duration::from_secs(4),
            "answered and closed at once, not at the body timeout"
        );
    }
    let mut wrong = agent()
        .post(format!("{url}/v1/ledger"))
        .header("Authorization", format!("Bearer {TOKEN}"))
        .send_empty()
        .unwrap();
    assert_eq!(wrong.status().as_u16(), 405);
    assert!(wrong.body_mut().read_json::<Value>().is_ok(), "a 405 is JSON");
    let kinds: Vec<Value> = ledger(url).iter().map(|e| e["kind"].clone()).collect();
    assert_eq!(
        kinds,
        vec![json!("configured")],
        "only the start's configuration; rejected input left no entries"
    );

    let (status, first) = call(url, "POST", "/requests", Some(&request_body(256)), Some("k-1"));
    assert_eq!(status, 201, "{first}");
    let id = first["id"].as_str().unwrap().to_owned();
    // A repeat with the same key answers the first answer; with another body it is refused.
    let (status, again) = call(url, "POST", "/requests", Some(&request_body(256)), Some("k-1"));
    assert_eq!((status, &again["id"]), (201, &first["id"]));
    let (status, body) = call(url, "POST", "/requests", Some(&request_body(64)), Some("k-1"));
    assert_eq!((status, body["field"].as_str()), (422, Some("Idempotency-Key")), "{body}");
    // The same JSON re-indented, its keys in another order, is the same body.
    let reordered = "{\n  \"workload\": \"training\",\n  \"duration_hours\": 100,\n  \"gpus\": 256,\n  \"accelerators\": [ \"H100\" ]\n}";
    let (status, same) = raw_post(url, "/requests", "application/json", reordered, Some("k-1"));
    assert_eq!((status, &same["id"]), (201, &first["id"]), "{same}");
    // A body that is not declared JSON is refused before it is read, and changes nothing.
    let before = ledger(url).len();
    for content_type in ["text/plain", "application/xml", ""] {
        let (status, body) = raw_post(url, "/requests", content_type, &request_body(8).to_string(), None);
        assert_eq!((status, body["field"].as_str()), (415, Some("Content-Type")), "{content_type:?}: {body}");
    }
    assert_eq!(ledger(url).len(), before);

    let awarded = wait_for(url, &id, |r| r["status"] == "provisioning" || r["status"] == "active");
    let allocations = awarded["allocations"].as_array().unwrap();
    let providers: BTreeSet<&str> = allocations.iter().map(|a| a["provider"].as_str().unwrap()).collect();
    assert!(providers.len() >= 2, "the 40% cap splits the award: {awarded}");
    assert!(allocations.iter().all(|a| a["via"] == "market"), "the holder declined: {awarded}");
    let gpus: u64 = allocations.iter().map(|a| a["gpus"].as_u64().unwrap()).sum();
    assert_eq!(gpus, 256);

    let kinds: Vec<String> = ledger(url).iter().map(|e| e["kind"].as_str().unwrap().to_owned()).collect();
    let position =
        |k: &str| kinds.iter().position(|x| x == k).unwrap_or_else(|| panic!("no {k} in {kinds:?}"));
    assert!(position("solicited") < position("holder_answered"));
    assert!(position("holder_answered") < position("awarded"));

    let (status, verified) = call(url, "GET", "/ledger/verify", None, None);
    assert_eq!((status, &verified["ok"]), (200, &json!(true)), "{verified}");
    check_no_double_award(url);
    drop(server);
    verify_offline(data.path());

    // The requests table is a projection: changed behind dibs's back, verify names it; rebuild recreates it.
    let db = rusqlite::Connection::open(data.path().join("ledger.db")).unwrap();
    db.execute("UPDATE requests SET view = '{}' WHERE id = ?1", [&id]).unwrap();
    let output = Command::new(DIBS).args(["ledger", "verify", "--data"]).arg(data.path()).output().unwrap();
    let text = String::from_utf8_lossy(&output.stdout);
    assert!(!output.status.success() && text.contains(&format!("request {id}")), "{text}");
    let output = Command::new(DIBS).args(["ledger", "rebuild", "--data"]).arg(data.path()).output().unwrap();
    assert!(output.status.success(), "{}", String::from_utf8_lossy(&output.stderr));
    verify_offline(data.path());
}

/// Submits in a loop from two threads until stopped; returns the ids the
/// server acknowledged (a 201 received).
fn stream_submissions(
    url: String,
    stop: Arc<AtomicBool>,
    acked: Arc<Mutex<Vec<(String, String)>>>,
    prefix: String,
) {
    let mut n: u32 = 0;
    while !stop.load(Ordering::Relaxed) {
        n += 1;
        let key = format!("{prefix}-{n}");
        let agent = agent();
        let sent = agent
            .post(format!("{url}/v1/requests"))
            .header("Authorization", format!("Bearer {TOKEN}"))
            .header("Idempotency-Key", &key)
            .send_json(streamed_body(n));
        if let Ok(mut response) = sent
            && response.status().as_u16() == 201
            && let Ok(body) = response.body_mut().read_json::<Value>()
        {
            acked.lock().unwrap().push((key, body["id"].as_str().unwrap().to_owned()));
        }
    }
}

#[test]
fn kill_dash_nine_loses_no_acknowledged_request() {
    let data = tempfile::tempdir().unwrap();
    let data_arg = data.path().to_str().unwrap().to_owned();
    let mut acknowledged: Vec<(String, String)> = Vec::new();
    let mut rng = fastrand::Rng::with_seed(42);
    let mut checked = 0;
    for cycle in 0..20 {
        let started = Instant::now();
        // Snapshots every few dozen entries: kills land before, during and after them.
        let mut server = Server::start(&["--data", &data_arg, "--snapshot-every", "40"]);
        let up = started.elapsed();
        // What the last cycle acknowledged is still there after the restart
        // (earlier cycles' were checked before, and all are checked at the end).
        let present = all_ids(&server.url);
        for (key, id) in &acknowledged[checked..] {
            assert!(present.contains(id), "cycle {cycle}: acknowledged {id} ({key}) lost");
        }
        checked = acknowledged.len();
        let stop = Arc::new(AtomicBool::new(false));
        let acked = Arc::new(Mutex::new(Vec::new()));
        let writers: Vec<_> = (0..2)
            .map(|w| {
                let (url, stop, acked) = (server.url.clone(), stop.clone(), acked.clone());
                let prefix = format!("c{cycle}w{w}");
                std::thread::spawn(move || stream_submissions(url, stop, acked, prefix))
            })
            .collect();
        std::thread::sleep(Duration::from_millis(100 + rng.u64(0..300)));
        server.kill();
        stop.store(true, Ordering::Relaxed);
        for w in writers {
            w.join().unwrap();
        }
        acknowledged.extend(acked.lock().unwrap().drain(..));
        eprintln!("cycle {cycle}: up in {up:.1?}; {} acknowledged so far", acknowledged.len());
    }
    assert!(acknowledged.len() >= 20, "only {} submissions acknowledged in 20 cycles", acknowledged.len());
    let server = Server::start(&["--data", &data_arg]);
    let present = all_ids(&server.url);
    let mut ids = BTreeSet::new();
    for (key, id) in &acknowledged {
        assert!(present.contains(id), "acknowledged {id} ({key}) lost");
        assert!(ids.insert(id.clone()), "two acknowledged keys got one id {id}");
    }
    // A retry with a key already answered gets the same request, not a new one.
    for (key, id) in acknowledged.iter().step_by((acknowledged.len() / 50).max(1)) {
        let n: u32 = key.rsplit('-').next().unwrap().parse().unwrap();
        let (status, again) = call(&server.url, "POST", "/requests", Some(&streamed_body(n)), Some(key));
        assert_eq!((status, again["id"].as_str()), (201, Some(id.as_str())), "key {key}: {again}");
    }
    check_no_double_award(&server.url);
    let (status, verified) = call(&server.url, "GET", "/ledger/verify", None, None);
    assert_eq!((status, &verified["ok"]), (200, &json!(true)), "{verified}");
    drop(server);
    verify_offline(data.path());
}

/// A start after kill -9 loads the latest snapshot, replays only what follows it, and serves
/// every request as before; `dibs ledger verify` checks every snapshot against a replay.
#[test]
fn a_start_after_kill_dash_nine_loads_the_latest_snapshot_and_serves_what_it_served() {
    let data = tempfile::tempdir().unwrap();
    let args = ["--data", data.path().to_str().unwrap(), "--snapshot-every", "30"];
    let server = Server::start(&args);
    assert!(server.ledger_line().contains("replayed 0 entries"), "{}", server.ledger_line());
    for n in 0..40 {
        let (status, body) = call(&server.url, "POST", "/requests", Some(&streamed_body(n)), None);
        assert_eq!(status, 201, "{body}");
    }
    for id in ["r-3", "r-17"] {
        assert_eq!(call(&server.url, "POST", &format!("/requests/{id}/cancel"), None, None).0, 200);
    }
    let (status, incident) =
        call(&server.url, "POST", "/incidents", Some(&json!({ "provider": "lambda" })), None);
    assert_eq!(status, 201, "{incident}");
    let before = all_requests(&server.url);
    let (_, stats_before) = call(&server.url, "GET", "/stats", None, None);
    drop(server); // SIGKILL

    let server = Server::start(&args);
    let line = server.ledger_line();
    assert!(line.contains("loaded the snapshot taken at entry"), "{line}");
    let replayed: u64 =
        line.split("then replayed ").nth(1).unwrap().split(' ').next().unwrap().parse().unwrap();
    assert!(replayed < 30 + 100, "{line}");
    assert_eq!(all_requests(&server.url), before, "the requests after the start");
    // The same requests in the same states; of the pending inputs, the start re-arms only
    // those that would still do something (a moot timer is dropped, not re-armed).
    let stats_after = call(&server.url, "GET", "/stats", None, None).1;
    assert_eq!(stats_after["requests"], stats_before["requests"]);
    assert!(
        stats_after["pending_inputs"].as_u64() <= stats_before["pending_inputs"].as_u64(),
        "{stats_after}"
    );
    let (_, incidents) = call(&server.url, "GET", "/incidents", None, None);
    assert_eq!(incidents["incidents"][0]["id"], incident["id"], "{incidents}");
    // It goes on where it was: the next id, the cancelled request stays cancelled.
    let (status, next) = call(&server.url, "POST", "/requests", Some(&request_body(8)), None);
    assert_eq!((status, next["id"].as_str()), (201, Some("r-41")), "{next}");
    assert_eq!(call(&server.url, "POST", "/requests/r-3/cancel", None, None).1["status"], "cancelled");
    drop(server);

    let output = Command::new(DIBS).args(["ledger", "verify", "--data"]).arg(data.path()).output().unwrap();
    let text = String::from_utf8_lossy(&output.stdout);
    assert!(output.status.success(), "{text}");
    let checked = text.split("; ").find(|part| part.contains("snapshots match")).unwrap();
    let checked: u64 = checked.split(' ').next().unwrap().parse().unwrap();
    assert!(checked >= 2, "{text}");
    assert!(text.contains("stored snapshot: ok"), "{text}");
    // The start and verify name a snapshot alike: the entry that took it, and the state after
    // the entry before.
    let entries = |text: &str, after: &str| -> (u64, u64) {
        let rest = text.split(after).nth(1).unwrap();
        let taken = rest.split(' ').next().unwrap().parse().unwrap();
        let covers =
            rest.split("(the state after entry ").nth(1).unwrap().split(')').next().unwrap().parse().unwrap();
        (taken, covers)
    };
    for (taken, covers) in
        [entries(&line, "snapshot taken at entry "), entries(&text, "the one taken at entry ")]
    {
        assert_eq!(taken, covers + 1, "{line}\n{text}");
    }
}

#[test]
fn two_replicas_share_postgresql_and_the_standby_takes_over_when_the_leader_dies() {
    let Ok(database) = std::env::var("DIBS_TEST_POSTGRES_URL") else {
        eprintln!("skipping: DIBS_TEST_POSTGRES_URL is not set");
        return;
    };
    let schema = format!("dibs_serve_test_{}", std::process::id());
    let mut client = postgres::Client::connect(&database, postgres::NoTls).unwrap();
    client.batch_execute(&format!("DROP SCHEMA IF EXISTS {schema} CASCADE")).unwrap();
    let (data_a, data_b) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    // The holder is a provider process that takes a while to answer, so the
    // leader dies with a solicitation in the shared outbox.
    let catalog = catalog_of(data_a.path(), &["azure", "lambda", "nebius", "aws"]);
    let azure =
        ProviderProcess::start("azure", &catalog, &["--holder", "decline", "--answer-delay-ms", "1000"]);
    let args = |data: &Path| {
        vec![
            "--data".to_owned(),
            data.display().to_string(),
            "--database".into(),
            database.clone(),
            "--database-schema".into(),
            schema.clone(),
            "--catalog".into(),
            catalog.display().to_string(),
            "--provider".into(),
            format!("azure={}", azure.url),
        ]
    };
    let args_a = args(data_a.path());
    let mut leader = Server::start(&args_a.iter().map(String::as_str).collect::<Vec<_>>());
    // The second replica waits for the lock; it prints its URL only once it leads.
    let args_b = args(data_b.path());
    let standby =
        std::thread::spawn(move || Server::start(&args_b.iter().map(String::as_str).collect::<Vec<_>>()));

    let (status, first) = call(&leader.url, "POST", "/requests", Some(&request_body(256)), Some("pg-1"));
    assert_eq!(status, 201, "{first}");
    let id = first["id"].as_str().unwrap().to_owned();
    wait_for(&leader.url, &id, |r| r["status"] == "provisioning");
    let (status, second) = call(&leader.url, "POST", "/requests", Some(&request_body(64)), Some("pg-2"));
    assert_eq!(status, 201, "{second}");
    leader.kill();

    let replica = standby.join().unwrap();
    let url = &replica.url;
    let awarded = wait_for(url, &id, |r| r["status"] == "provisioning");
    let gpus: u64 =
        awarded["allocations"].as_array().unwrap().iter().map(|a| a["gpus"].as_u64().unwrap()).sum();
    assert_eq!(gpus, 256, "the award made under the old leader survives: {awarded}");
    let second_id = second["id"].as_str().unwrap();
    wait_for(url, second_id, |r| r["status"] == "provisioning" || r["status"] == "unfilled");
    let (status, third) = call(url, "POST", "/requests", Some(&request_body(128)), Some("pg-3"));
    assert_eq!(status, 201, "{third}");
    assert_ne!(third["id"], first["id"]);
    assert_ne!(third["id"], second["id"]);
    let (_, again) = call(url, "POST", "/requests", Some(&request_body(256)), Some("pg-1"));
    assert_eq!(again["id"], first["id"], "the idempotency record lives in the shared database");
    check_no_double_award(url);
    let (status, verified) = call(url, "GET", "/ledger/verify", None, None);
    assert_eq!((status, &verified["ok"]), (200, &json!(true)), "{verified}");
    let third_id = third["id"].as_str().unwrap();
    wait_for(url, third_id, |r| r["status"] != "first_refusal" && r["status"] != "market");
    let answered = ledger(url).iter().filter(|e| e["kind"] == "holder_answered").count();
    assert_eq!(answered, 3, "each solicitation answered once, the one in flight at the kill included");
    drop(replica);
    let output = Command::new(DIBS)
        .args(["ledger", "verify", "--database", &database, "--database-schema", &schema])
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&output.stdout);
    assert!(output.status.success() && text.contains("projection: ok"), "{text}");
    client.batch_execute(&format!("DROP SCHEMA IF EXISTS {schema} CASCADE")).unwrap();
}

/// Slow clients: sockets that send headers and 4 of 100 body bytes, more of them than the
/// connection limit, are answered 408 or closed once the idle bound passes, and a client
/// that behaves is served meanwhile.
#[test]
fn slow_clients_are_cut_off_and_cannot_hold_the_service() {
    use std::io::{Read, Write};
    let data = tempfile::tempdir().unwrap();
    let server = Server::start(&[
        "--data",
        data.path().to_str().unwrap(),
        "--idle-timeout-seconds",
        "1",
        "--max-connections",
        "40",
    ]);
    let address = server.url.trim_start_matches("http://").to_owned();
    let started = Instant::now();
    let mut slow: Vec<std::net::TcpStream> = (0..60)
        .map(|_| {
            let mut socket = std::net::TcpStream::connect(&address).unwrap();
            let head = format!(
                "POST /v1/requests HTTP/1.1\r\nHost: {address}\r\nAuthorization: Bearer {TOKEN}\r\n\
                 Content-Type: application/json\r\nContent-Length: 100\r\n\r\n{{\"gp"
            );
            socket.write_all(head.as_bytes()).unwrap();
            socket
        })
        .collect();
    // A well-behaved client is served within a few idle bounds, not never.
    let (status, health) = call(&server.url, "GET", "/health", None, None);
    assert_eq!((status, &health["status"]), (200, &json!("ok")));
    assert!(started.elapsed() < Duration::from_secs(8), "served after {:?}", started.elapsed());
    // Every slow socket gets a 408 or is closed; none is left hanging.
    for socket in &mut slow {
        socket.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
        let mut answer = Vec::new();
        match socket.read_to_end(&mut answer) {
            Ok(_) => {
                let text = String::from_utf8_lossy(&answer);
                assert!(text.is_empty() || text.starts_with("HTTP/1.1 408"), "{text}");
            }
            Err(e) => assert_ne!(e.kind(), std::io::ErrorKind::WouldBlock, "a slow socket left open"),
        }
    }
    let kinds: Vec<Value> = ledger(&server.url).iter().map(|e| e["kind"].clone()).collect();
    assert_eq!(kinds, vec![json!("configured")], "no slow body was taken as a request");
}

/// A socket from another client address (127.0.0.2), as an attacker elsewhere is seen.
fn connect_from(source: &str, address: &str) -> std::io::Result<std::net::TcpStream> {
    let to: std::net::SocketAddr = address.parse().unwrap();
    let socket = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None)?;
    socket.bind(&format!("{source}:0").parse::<std::net::SocketAddr>().unwrap().into())?;
    socket.connect_timeout(&to.into(), Duration::from_secs(2))?;
    Ok(socket.into())
}

/// Slowloris (issue 20): sockets that each trickle a header byte every half second, more
/// of them than --max-connections, from one address. A head must arrive whole within
/// --header-timeout-seconds however it trickles, and a reserve of slots is kept for other
/// addresses: a well-behaved client elsewhere is answered all along, and every trickling
/// socket is closed.
#[test]
fn a_header_trickle_from_many_sockets_does_not_keep_others_out() {
    use std::io::{Read, Write};
    let data = tempfile::tempdir().unwrap();
    let server = Server::start(&[
        "--data",
        data.path().to_str().unwrap(),
        "--max-connections",
        "40",
        "--header-timeout-seconds",
        "2",
        "--max-connections-per-client",
        "1000",
    ]);
    let address = server.url.trim_start_matches("http://").to_owned();
    // Alone, a trickling head is cut at its bound (2 s), though a byte comes every 100 ms.
    let alone: Vec<_> = (0..5)
        .map(|_| {
            let address = address.clone();
            std::thread::spawn(move || {
                let mut socket = connect_from("127.0.0.2", &address).unwrap();
                let opened = Instant::now();
                for byte in b"GET /v1/health HTTP/1.1\r\nX-Slow: ".iter().chain(std::iter::repeat(&b'a')) {
                    if socket.write_all(&[*byte]).is_err() || opened.elapsed() > Duration::from_secs(20) {
                        break;
                    }
                    std::thread::sleep(Duration::from_millis(100));
                }
                opened.elapsed()
            })
        })
        .collect();
    for socket in alone {
        let held = socket.join().unwrap();
        assert!(held < Duration::from_millis(3500), "a trickling head held its socket {held:?}");
    }
    let stop = Arc::new(AtomicBool::new(false));
    // 60 trickling sockets against 40 slots, reopened as they are cut, for 8 seconds.
    let attackers: Vec<_> = (0..60)
        .map(|_| {
            let (address, stop) = (address.clone(), stop.clone());
            std::thread::spawn(move || {
                let mut held_longest = Duration::ZERO;
                while !stop.load(Ordering::Relaxed) {
                    let Ok(mut socket) = connect_from("127.0.0.2", &address) else {
                        std::thread::sleep(Duration::from_millis(100));
                        continue;
                    };
                    let opened = Instant::now();
                    let head = format!("GET /v1/health HTTP/1.1\r\nHost: {address}\r\nX-Slow: ");
                    for byte in head.bytes().chain(std::iter::repeat(b'a')) {
                        if stop.load(Ordering::Relaxed) || socket.write_all(&[byte]).is_err() {
                            break;
                        }
                        std::thread::sleep(Duration::from_millis(500));
                        // A closed socket shows as a read of 0 bytes or an error.
                        socket.set_nonblocking(true).unwrap();
                        let mut buffer = [0u8; 64];
                        let closed = !matches!(
                            socket.read(&mut buffer),
                            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock
                        );
                        socket.set_nonblocking(false).unwrap();
                        if closed {
                            break;
                        }
                    }
                    held_longest = held_longest.max(opened.elapsed());
                }
                held_longest
            })
        })
        .collect();
    std::thread::sleep(Duration::from_secs(1));
    // A well-behaved client, from 127.0.0.1, every 200 ms while the trickle goes on.
    let mut latencies = Vec::new();
    let until = Instant::now() + Duration::from_secs(7);
    while Instant::now() < until {
        let started = Instant::now();
        let (status, _) = call(&server.url, "GET", "/health", None, None);
        assert_eq!(status, 200);
        latencies.push(started.elapsed());
        std::thread::sleep(Duration::from_millis(200));
    }
    stop.store(true, Ordering::Relaxed);
    let held: Vec<Duration> = attackers.into_iter().map(|a| a.join().unwrap()).collect();
    latencies.sort();
    let p99 = latencies[(latencies.len() * 99).div_ceil(100) - 1];
    let longest = held.iter().max().unwrap();
    eprintln!(
        "{} probes under 60 trickling sockets against 40 slots: p50 {:?}, p99 {p99:?}, max {:?}; \
         a trickling socket held at most {longest:?}",
        latencies.len(),
        latencies[latencies.len() / 2],
        latencies.last().unwrap()
    );
    assert!(p99 < Duration::from_millis(500), "p99 {p99:?}");
    // A trickling socket waits for a slot, then is cut at the head's bound.
    assert!(*longest < Duration::from_secs(8), "a trickling socket held {longest:?}");
}

/// An operator with the database file in hand: a changed `at`, `kind` or request id, an
/// edited idempotency answer, the newest entries deleted (with the checkpoints that named
/// them), each is found by `dibs ledger verify`, the last by a head kept from the API.
#[test]
fn tampering_with_the_database_file_is_found_by_dibs_ledger_verify() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let mut server = Server::start(&["--data", data.to_str().unwrap()]);
    for n in 0..20 {
        let (status, _) =
            call(&server.url, "POST", "/requests", Some(&request_body(8)), Some(&format!("t-{n}")));
        assert_eq!(status, 201);
    }
    wait_for(&server.url, "r-20", |r| r["status"] != "first_refusal" && r["status"] != "market");
    // A counterparty keeps the head, with its signature.
    let (status, head) = call(&server.url, "GET", "/ledger/head", None, None);
    assert_eq!(status, 200, "{head}");
    let kept = dir.path().join("head.json");
    std::fs::write(&kept, head.to_string()).unwrap();
    std::thread::sleep(Duration::from_millis(1200));
    server.kill();
    let verify = |data: &Path| {
        let output = Command::new(DIBS)
            .args(["ledger", "verify", "--data"])
            .arg(data)
            .arg("--head")
            .arg(&kept)
            .output()
            .unwrap();
        (output.status.success(), String::from_utf8_lossy(&output.stdout).into_owned())
    };
    let (ok, text) = verify(&data);
    assert!(ok && text.contains("signed heads: ok") && text.contains("replay: ok"), "{text}");
    let seq = head["seq"].as_u64().unwrap();
    for (what, sql, expect) in [
        ("at", "UPDATE ledger SET at = '2020-01-01T00:00:00Z' WHERE seq = 5".to_owned(), "entry 5"),
        ("kind", "UPDATE ledger SET kind = 'awarded' WHERE seq = 6".to_owned(), "entry 6"),
        ("request", "UPDATE ledger SET request = 'r-999' WHERE seq = 7".to_owned(), "entry 7"),
        ("an answer", "UPDATE idempotency SET response = '{}' WHERE key = 't-3'".to_owned(), "t-3"),
        (
            "the tail",
            format!("DELETE FROM ledger WHERE seq > {}; DELETE FROM heads", seq - 200.min(seq / 2)),
            "cut off",
        ),
    ] {
        let copy = dir.path().join(format!("copy-{}", what.replace(' ', "-")));
        std::fs::create_dir_all(&copy).unwrap();
        // The database with its write-ahead log (a kill -9 leaves recent commits there), and the key.
        for file in std::fs::read_dir(&data).unwrap().map(|f| f.unwrap().file_name()) {
            if file.to_string_lossy().starts_with("ledger.") {
                std::fs::copy(data.join(&file), copy.join(&file)).unwrap();
            }
        }
        rusqlite::Connection::open(copy.join("ledger.db")).unwrap().execute_batch(&sql).unwrap();
        let (ok, text) = verify(&copy);
        assert!(!ok && text.contains("BROKEN") && text.contains(expect), "{what}: {text}");
    }
}

/// Split brain, as an operator or a network can cause it: only the leader's lock session is
/// terminated. The leader must stop at once (not keep serving beside the standby that takes
/// the lock), and no write of its may land after the standby leads: every acknowledged
/// request keeps its own id, no id is given twice, and the ledger replays.
/// The arguments of a replica on PostgreSQL: its own data folder, the shared schema.
fn replica_args(data: &Path, database: &str, schema: &str) -> Vec<String> {
    ["--data", &data.display().to_string(), "--database", database, "--database-schema", schema]
        .map(str::to_owned)
        .to_vec()
}

#[test]
fn a_leader_whose_lock_session_is_terminated_stops_and_the_standby_takes_over_alone() {
    let Ok(database) = std::env::var("DIBS_TEST_POSTGRES_URL") else {
        eprintln!("skipping: DIBS_TEST_POSTGRES_URL is not set");
        return;
    };
    let schema = format!("dibs_split_test_{}", std::process::id());
    let mut client = postgres::Client::connect(&database, postgres::NoTls).unwrap();
    client.batch_execute(&format!("DROP SCHEMA IF EXISTS {schema} CASCADE")).unwrap();
    let (data_a, data_b) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let args = |data: &Path| replica_args(data, &database, &schema);
    let args_a = args(data_a.path());
    let mut leader = Server::start(&args_a.iter().map(String::as_str).collect::<Vec<_>>());
    let args_b = args(data_b.path());
    let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    let standby_listen = format!("127.0.0.1:{port}");
    let standby = std::thread::spawn(move || {
        Server::start_on(&standby_listen, &args_b.iter().map(String::as_str).collect::<Vec<_>>())
    });
    // The standby's port is open: alive, not ready, and it says why.
    let standby_url = format!("http://127.0.0.1:{port}");
    let deadline = Instant::now() + Duration::from_secs(20);
    let health = loop {
        // It says `starting` until it has found the lead taken (a moment after its port opens).
        match agent().get(format!("{standby_url}/v1/health")).call() {
            Ok(mut r) => {
                let health = r.body_mut().read_json::<Value>().unwrap();
                if health["role"] != "starting" || Instant::now() >= deadline {
                    break health;
                }
                std::thread::sleep(Duration::from_millis(50));
            }
            Err(_) if Instant::now() < deadline => std::thread::sleep(Duration::from_millis(100)),
            Err(e) => panic!("the standby's port never opened: {e}"),
        }
    };
    assert_eq!(health["role"], "standby", "{health}");
    let ready = agent().get(format!("{standby_url}/v1/ready")).call().unwrap();
    assert_eq!(ready.status().as_u16(), 503);
    let (status, leader_ready) = call(&leader.url, "GET", "/ready", None, None);
    assert_eq!((status, &leader_ready["role"]), (200, &json!("leader")));

    // Clients keep submitting to the leader while its lock session is terminated.
    let leader_url = leader.url.clone();
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let submitting = {
        let stop = stop.clone();
        std::thread::spawn(move || {
            let mut acknowledged = Vec::new();
            let mut n = 0;
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                n += 1;
                let key = format!("split-{n}");
                let result = std::panic::catch_unwind(|| {
                    call(&leader_url, "POST", "/requests", Some(&request_body(8)), Some(&key))
                });
                match result {
                    Ok((201, body)) => acknowledged.push((key, body["id"].as_str().unwrap().to_owned())),
                    _ => std::thread::sleep(Duration::from_millis(20)),
                }
            }
            acknowledged
        })
    };
    std::thread::sleep(Duration::from_millis(1500));
    let terminated = client
        .query(
            "SELECT pg_terminate_backend(l.pid) FROM pg_locks l JOIN pg_stat_activity a ON a.pid = l.pid
             WHERE l.locktype = 'advisory' AND l.granted AND a.application_name = $1",
            &[&dibs_store::lead_session_name(&schema)],
        )
        .unwrap();
    assert_eq!(terminated.len(), 1, "one lock session: the leader's");
    // The leader notices within a second or two, stops writing, and starts again as a
    // standby on the same port (issue 19: a replica that loses its lead contends again).
    let replica = standby.join().unwrap();
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        assert!(leader.child.try_wait().unwrap().is_none(), "the deposed leader exited");
        let role = agent()
            .get(format!("{}/v1/health", leader.url))
            .call()
            .ok()
            .and_then(|mut r| r.body_mut().read_json::<Value>().ok())
            .map(|h| h["role"].clone());
        if role == Some(json!("standby")) {
            break;
        }
        assert!(Instant::now() < deadline, "the deposed leader never came back as a standby: {role:?}");
        std::thread::sleep(Duration::from_millis(100));
    }
    assert_eq!(replica.url, standby_url, "the standby serves on the port it held");
    std::thread::sleep(Duration::from_millis(500));
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let acknowledged = submitting.join().unwrap();
    assert!(!acknowledged.is_empty(), "the leader served before it stopped");

    // Everything acknowledged is there, under the id it was given; no id was given twice.
    let url = &replica.url;
    let mut ids = BTreeSet::new();
    for (key, id) in &acknowledged {
        assert!(ids.insert(id.clone()), "{id} given twice");
        let (status, shown) = call(url, "GET", &format!("/requests/{id}"), None, None);
        assert_eq!(status, 200, "{id} acknowledged by the old leader is lost: {shown}");
        let (_, again) = call(url, "POST", "/requests", Some(&request_body(8)), Some(key));
        assert_eq!(&again["id"], id, "the idempotency record names the same request");
    }
    let (status, next) = call(url, "POST", "/requests", Some(&request_body(8)), None);
    assert_eq!(status, 201, "{next}");
    assert!(!ids.contains(next["id"].as_str().unwrap()), "a new id: {next}");
    check_no_double_award(url);
    leader.kill();
    drop(replica);
    let output = Command::new(DIBS)
        .args(["ledger", "verify", "--database", &database, "--database-schema", &schema])
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&output.stdout);
    assert!(output.status.success() && text.contains("replay: ok"), "{text}");
    client.batch_execute(&format!("DROP SCHEMA IF EXISTS {schema} CASCADE")).unwrap();
}

/// Tokens: roles checked when made, an expiry, revocation by id; on SQLite and, when a
/// server is configured, on PostgreSQL (where a non-admin token once panicked a handler:
/// the synchronous client ran on the async runtime).
#[test]
fn tokens_are_checked_when_made_expire_and_can_be_revoked_on_both_stores() {
    let data = tempfile::tempdir().unwrap();
    token_lifetimes(&Server::start(&["--data", data.path().to_str().unwrap()]));
    let Ok(database) = std::env::var("DIBS_TEST_POSTGRES_URL") else {
        eprintln!("skipping the PostgreSQL half: DIBS_TEST_POSTGRES_URL is not set");
        return;
    };
    let schema = format!("dibs_tokens_test_{}", std::process::id());
    let mut client = postgres::Client::connect(&database, postgres::NoTls).unwrap();
    client.batch_execute(&format!("DROP SCHEMA IF EXISTS {schema} CASCADE")).unwrap();
    let pg_data = tempfile::tempdir().unwrap();
    let server = Server::start(&[
        "--data",
        pg_data.path().to_str().unwrap(),
        "--database",
        &database,
        "--database-schema",
        &schema,
    ]);
    token_lifetimes(&server);
    // A provider token works there too (a pull provider needs one).
    let lambda = token_for(&server.url, "provider:lambda");
    let (status, feed) = call_as(&server.url, &lambda, "GET", "/provider/events", None);
    assert_eq!(status, 200, "{feed}");
    drop(server);
    client.batch_execute(&format!("DROP SCHEMA IF EXISTS {schema} CASCADE")).unwrap();
}

fn token_lifetimes(server: &Server) {
    let url = &server.url;
    for role in ["provider:lambda ", "provider:nosuch", " requester", "provider:"] {
        let (status, body) = call(url, "POST", "/tokens", Some(&json!({ "role": role })), None);
        assert_eq!((status, body["field"].as_str()), (422, Some("role")), "{role:?}: {body}");
    }
    let (status, body) =
        call(url, "POST", "/tokens", Some(&json!({ "role": "requester", "expires_in_hours": -1 })), None);
    assert_eq!((status, body["field"].as_str()), (422, Some("expires_in_hours")), "{body}");

    // Works until revoked; then refused, by name; the list says so; the first revocation stands.
    let (status, made) = call(url, "POST", "/tokens", Some(&json!({ "role": "requester" })), None);
    assert_eq!(status, 201, "{made}");
    let (token, id) = (made["token"].as_str().unwrap(), made["id"].as_str().unwrap());
    assert_eq!(call_as(url, token, "GET", "/requests", None).0, 200);
    let (status, revoked) = call(url, "POST", &format!("/tokens/{id}/revoke"), None, None);
    assert_eq!(status, 200, "{revoked}");
    let (status, refused) = call_as(url, token, "GET", "/requests", None);
    assert_eq!(status, 401, "{refused}");
    assert!(refused["error"].as_str().unwrap().contains("revoked"), "{refused}");
    let (_, again) = call(url, "POST", &format!("/tokens/{id}/revoke"), None, None);
    assert_eq!(again["revoked_at"], revoked["revoked_at"]);
    let (status, _) = call(url, "POST", "/tokens/0123456789abcdef/revoke", None, None);
    assert_eq!(status, 404);
    let (_, list) = call(url, "GET", "/tokens", None, None);
    let listed = list["tokens"].as_array().unwrap().iter().find(|t| t["id"] == id).cloned().unwrap();
    assert!(listed["revoked_at"].is_string() && listed.get("token").is_none(), "{listed}");

    // One that expires in two seconds.
    let (status, brief) = call(
        url,
        "POST",
        "/tokens",
        Some(&json!({ "role": "auditor", "expires_in_hours": 2.0 / 3600.0 })),
        None,
    );
    assert_eq!(status, 201, "{brief}");
    let brief = brief["token"].as_str().unwrap();
    assert_eq!(call_as(url, brief, "GET", "/ledger?limit=1", None).0, 200);
    std::thread::sleep(Duration::from_millis(3100));
    let (status, expired) = call_as(url, brief, "GET", "/ledger?limit=1", None);
    assert_eq!(status, 401, "{expired}");
    assert!(expired["error"].as_str().unwrap().contains("expired"), "{expired}");
}

/// A running `dibs provider serve`; killed when dropped.
struct ProviderProcess {
    child: Child,
    url: String,
}

impl ProviderProcess {
    fn start(name: &str, catalog: &Path, args: &[&str]) -> Self {
        let mut child = Command::new(DIBS)
            .args(["provider", "serve", "--name", name, "--catalog"])
            .arg(catalog)
            .args(args)
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .expect("dibs provider serve starts");
        let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
        let url = loop {
            let line = lines.next().expect("dibs provider serve prints its URL").unwrap();
            if let Some((_, url)) = line.split_once(" serving on ") {
                break url.to_owned();
            }
        };
        Self { child, url }
    }
}

impl Drop for ProviderProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The bundled price table cut down to some providers, as a catalog file.
fn catalog_of(dir: &Path, providers: &[&str]) -> std::path::PathBuf {
    let bundled = Path::new(env!("CARGO_MANIFEST_DIR")).join("../dibs-core/data/bundled_prices.csv");
    let text = std::fs::read_to_string(bundled).unwrap();
    let mut lines = text.lines();
    let mut out = vec![lines.next().unwrap().to_owned()];
    out.extend(
        lines.filter(|l| providers.iter().any(|p| l.starts_with(&format!("{p},")))).map(str::to_owned),
    );
    let path = dir.join("some_vms.csv");
    std::fs::write(&path, out.join("\n") + "\n").unwrap();
    path
}

#[test]
fn a_solicitation_to_a_holder_that_is_down_is_retried_until_it_answers_even_across_a_kill() {
    let dir = tempfile::tempdir().unwrap();
    let catalog = catalog_of(dir.path(), &["azure", "lambda", "nebius", "aws"]);
    // A port nothing listens on yet: the holder is down.
    let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    let azure_url = format!("http://127.0.0.1:{port}");
    let data = dir.path().join("data");
    let args = [
        "--data",
        data.to_str().unwrap(),
        "--catalog",
        catalog.to_str().unwrap(),
        "--provider",
        &format!("azure={azure_url}"),
    ];
    let mut server = Server::start(&args);
    let (status, submitted) = call(&server.url, "POST", "/requests", Some(&request_body(64)), None);
    assert_eq!(status, 201, "{submitted}");
    let id = submitted["id"].as_str().unwrap().to_owned();
    // Several tries fail; the call stays in the outbox, and so does the request.
    std::thread::sleep(Duration::from_secs(3));
    let (_, shown) = call(&server.url, "GET", &format!("/requests/{id}"), None, None);
    assert_eq!(shown["status"], "first_refusal", "{shown}");
    server.kill();
    let server = Server::start(&args);
    let (_, shown) = call(&server.url, "GET", &format!("/requests/{id}"), None, None);
    assert_eq!(shown["status"], "first_refusal", "still waiting for its holder after the kill: {shown}");
    // The holder comes up; the restarted service's retries reach it.
    let listen = format!("127.0.0.1:{port}");
    let _azure = ProviderProcess::start("azure", &catalog, &["--holder", "decline", "--listen", &listen]);
    let decided = wait_for(&server.url, &id, |r| r["status"] != "first_refusal" && r["status"] != "market");
    assert_ne!(decided["status"], "unfilled", "{decided}");
    let answered = ledger(&server.url).into_iter().find(|e| e["kind"] == "holder_answered");
    assert_eq!(answered.map(|e| e["body"]["outcome"].clone()), Some(json!("declined")));
}

#[test]
fn the_holder_declines_and_two_providers_quote_over_the_provider_protocol() {
    let dir = tempfile::tempdir().unwrap();
    // Three market providers: under the 40% cap two could place at most 80% of a request.
    let catalog = catalog_of(dir.path(), &["azure", "lambda", "nebius", "aws"]);
    let azure = ProviderProcess::start("azure", &catalog, &["--holder", "decline"]);
    let lambda = ProviderProcess::start("lambda", &catalog, &[]);
    // Slower than any fixed per-try timeout would allow (it was 2 s); the quote window is
    // an hour, and a try waits as long as the window allows.
    let nebius = ProviderProcess::start("nebius", &catalog, &["--answer-delay-ms", "2500"]);
    let aws = ProviderProcess::start("aws", &catalog, &[]);
    let data = dir.path().join("data");
    let server = Server::start(&[
        "--data",
        data.to_str().unwrap(),
        "--catalog",
        catalog.to_str().unwrap(),
        "--provider",
        &format!("azure={}", azure.url),
        "--provider",
        &format!("lambda={}", lambda.url),
        "--provider",
        &format!("nebius={}", nebius.url),
        "--provider",
        &format!("aws={}", aws.url),
    ]);
    let (status, submitted) = call(&server.url, "POST", "/requests", Some(&request_body(128)), None);
    assert_eq!(status, 201, "{submitted}");
    let id = submitted["id"].as_str().unwrap();
    let awarded = wait_for(&server.url, id, |r| r["status"] != "first_refusal" && r["status"] != "market");
    assert_eq!(awarded["status"], "provisioning", "{awarded}");

    let entries = ledger(&server.url);
    let answered = entries.iter().find(|e| e["kind"] == "holder_answered").expect("the holder answered");
    assert_eq!(answered["body"]["outcome"], "declined", "{answered}");
    let quoted: BTreeSet<&str> = entries
        .iter()
        .filter(|e| e["kind"] == "input" && e["body"]["input"] == "quotes")
        .filter(|e| !e["body"]["offers"].as_array().unwrap().is_empty())
        .map(|e| e["body"]["provider"].as_str().unwrap())
        .collect();
    assert!(quoted.contains("lambda") && quoted.contains("nebius"), "quotes came from {quoted:?}");
    let allocations = awarded["allocations"].as_array().unwrap();
    assert!(allocations.iter().all(|a| a["via"] == "market"), "{awarded}");
    let winners: BTreeSet<&str> = allocations.iter().map(|a| a["provider"].as_str().unwrap()).collect();
    assert!(winners.len() >= 2, "{awarded}");
    let (status, verified) = call(&server.url, "GET", "/ledger/verify", None, None);
    assert_eq!((status, &verified["ok"]), (200, &json!(true)), "{verified}");
    drop(server);
    verify_offline(&data);
}

#[test]
fn a_provider_that_is_down_or_answers_garbage_does_not_hold_a_request_up() {
    let dir = tempfile::tempdir().unwrap();
    let catalog = catalog_of(dir.path(), &["azure", "lambda", "nebius", "aws"]);
    let azure = ProviderProcess::start("azure", &catalog, &["--holder", "decline"]);
    let lambda = ProviderProcess::start("lambda", &catalog, &["--down"]);
    let nebius = ProviderProcess::start("nebius", &catalog, &["--error-rate", "1"]);
    // Not a provider at all: answers every call with a page of HTML.
    let garbage = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let garbage_url = format!("http://{}", garbage.local_addr().unwrap());
    std::thread::spawn(move || {
        for stream in garbage.incoming().flatten() {
            use std::io::{Read, Write};
            let mut stream = stream;
            let mut buffer = [0u8; 8192];
            let _ = stream.read(&mut buffer);
            let _ = stream.write_all(
                b"HTTP/1.1 200 OK\r\ncontent-type: text/html\r\ncontent-length: 13\r\nconnection: close\r\n\r\n<html></html>",
            );
        }
    });
    let data = dir.path().join("data");
    let server = Server::start(&[
        "--data",
        data.to_str().unwrap(),
        "--catalog",
        catalog.to_str().unwrap(),
        "--provider",
        &format!("azure={}", azure.url),
        "--provider",
        &format!("lambda={}", lambda.url),
        "--provider",
        &format!("nebius={}", nebius.url),
        "--provider",
        &format!("aws={garbage_url}"),
    ]);
    let (_, providers) = call(&server.url, "GET", "/providers", None, None);
    let health: BTreeMap<&str, &Value> = providers["providers"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| (p["name"].as_str().unwrap(), &p["healthy"]))
        .collect();
    assert_eq!(health["azure"], &json!(true), "{providers}");
    assert_eq!(health["lambda"], &json!(false), "lambda is down: {providers}");

    let started = Instant::now();
    let (status, submitted) = call(&server.url, "POST", "/requests", Some(&request_body(64)), None);
    assert_eq!(status, 201, "{submitted}");
    let id = submitted["id"].as_str().unwrap();
    // The quote window is an hour; the request is decided in seconds because a provider
    // that keeps failing trips its breaker, and a quote call to it then fails at once, and
    // one that answers garbage is not asked twice.
    let decided = wait_for(&server.url, id, |r| r["status"] != "first_refusal" && r["status"] != "market");
    assert!(started.elapsed() < Duration::from_secs(20), "took {:?}", started.elapsed());
    assert_eq!(decided["status"], "unfilled", "nobody could supply: {decided}");
    assert!(decided["allocations"].as_array().unwrap().is_empty(), "{decided}");
    // The reason says who gave no quote, and why.
    let reason = decided["unfilled"]["reason"].as_str().unwrap_or_default();
    for why in [
        "no quote from lambda",
        "no quote from nebius",
        "breaker open",
        "no quote from aws",
        "not the protocol's",
    ] {
        assert!(reason.contains(why), "{why:?} missing from {reason:?}");
    }
    let (status, verified) = call(&server.url, "GET", "/ledger/verify", None, None);
    assert_eq!((status, &verified["ok"]), (200, &json!(true)), "{verified}");
}

fn call_as(url: &str, token: &str, method: &str, path: &str, body: Option<&Value>) -> (u16, Value) {
    let agent = agent();
    let full = format!("{url}/v1{path}");
    let auth = format!("Bearer {token}");
    let response = match (method, body) {
        ("POST", Some(body)) => agent.post(&full).header("Authorization", &auth).send_json(body),
        ("POST", None) => agent.post(&full).header("Authorization", &auth).send_empty(),
        _ => agent.get(&full).header("Authorization", &auth).call(),
    };
    let mut response = response.unwrap();
    let status = response.status().as_u16();
    let text = response.body_mut().read_to_string().unwrap();
    (status, serde_json::from_str(&text).unwrap_or(Value::String(text)))
}

fn token_for(url: &str, role: &str) -> String {
    let (status, body) = call(url, "POST", "/tokens", Some(&json!({ "role": role })), None);
    assert_eq!(status, 201, "{body}");
    body["token"].as_str().unwrap().to_owned()
}

#[test]
fn roles_limit_what_each_token_sees_and_a_provider_sees_only_its_own() {
    let data = tempfile::tempdir().unwrap();
    let server = Server::start(&["--data", data.path().to_str().unwrap()]);
    let url = &server.url;
    let (status, body) = call(url, "POST", "/tokens", Some(&json!({ "role": "emperor" })), None);
    assert_eq!((status, body["field"].as_str()), (422, Some("role")), "{body}");
    let requester = token_for(url, "requester");
    let auditor = token_for(url, "auditor");
    let lambda = token_for(url, "provider:lambda");

    let (status, submitted) = call_as(url, &requester, "POST", "/requests", Some(&request_body(256)));
    assert_eq!(status, 201, "{submitted}");
    let id = submitted["id"].as_str().unwrap().to_owned();
    let awarded = wait_for(url, &id, |r| r["status"] == "provisioning");
    let providers: BTreeSet<&str> =
        awarded["allocations"].as_array().unwrap().iter().map(|a| a["provider"].as_str().unwrap()).collect();

    let request_path = format!("/requests/{id}");
    let cancel_path = format!("/requests/{id}/cancel");
    // (method, path, body, admitted roles)
    let incident = json!({ "provider": "gcp" });
    let token_body = json!({ "role": "auditor" });
    let submit = request_body(8);
    let endpoints: Vec<(&str, &str, Option<&Value>, &[&str])> = vec![
        ("GET", "/requests", None, &["requester", "auditor"]),
        ("GET", &request_path, None, &["requester", "auditor"]),
        ("POST", "/requests", Some(&submit), &["requester"]),
        ("GET", "/allocations", None, &["requester", "auditor"]),
        ("GET", "/stats", None, &["requester", "auditor"]),
        ("GET", "/contracts", None, &["requester", "auditor"]),
        ("GET", "/providers", None, &["requester", "auditor"]),
        ("GET", "/incidents", None, &["requester", "auditor"]),
        ("POST", "/incidents", Some(&incident), &[]),
        ("GET", "/ledger", None, &["auditor"]),
        ("GET", "/ledger/verify", None, &["auditor"]),
        ("POST", "/tokens", Some(&token_body), &[]),
        ("GET", "/provider/events", None, &["lambda"]),
        ("POST", &cancel_path, None, &["requester"]),
    ];
    for (method, path, body, admitted) in endpoints {
        for (name, token) in [("auditor", &auditor), ("lambda", &lambda), ("requester", &requester)] {
            let (status, answer) = call_as(url, token, method, path, body);
            if admitted.contains(&name) {
                assert!(status < 300, "{name} {method} {path}: {status} {answer}");
            } else {
                assert_eq!(status, 403, "{name} {method} {path}: {answer}");
            }
        }
    }
    let (status, _) = call_as(url, "not-a-token", "GET", "/requests", None);
    assert_eq!(status, 401);
    let (status, _) = call(url, "GET", "/provider/events", None, None);
    assert_eq!(status, 403, "the provider feed is for providers");

    // Sealed bids: lambda's feed holds its own quotes and allocations, nothing of anyone else's.
    let (_, feed) = call_as(url, &lambda, "GET", "/provider/events", None);
    let events = feed["events"].as_array().unwrap();
    assert!(events.iter().any(|e| e["kind"] == "quotes_requested"), "{feed}");
    if providers.contains("lambda") {
        assert!(events.iter().any(|e| e["kind"] == "awarded"), "{feed}");
    }
    let text = feed.to_string();
    for other in ["aws", "azure", "gcp", "nebius", "oci"] {
        assert!(!text.contains(&format!("\"{other}")), "lambda's feed mentions {other}: {text}");
    }
}

#[test]
fn an_incident_reported_over_http_fails_allocations_over() {
    let data = tempfile::tempdir().unwrap();
    let server = Server::start(&["--data", data.path().to_str().unwrap()]);
    let url = &server.url;
    let (_, submitted) = call(url, "POST", "/requests", Some(&request_body(256)), None);
    let id = submitted["id"].as_str().unwrap().to_owned();
    let awarded = wait_for(url, &id, |r| r["status"] == "provisioning");
    let victim = awarded["allocations"][0]["provider"].as_str().unwrap().to_owned();
    let (status, body) = call(url, "POST", "/incidents", Some(&json!({ "provider": "nobody" })), None);
    assert_eq!((status, body["field"].as_str()), (422, Some("provider")), "{body}");
    let (status, incident) =
        call(url, "POST", "/incidents", Some(&json!({ "provider": victim })), Some("inc-key"));
    assert_eq!(status, 201, "{incident}");
    let (_, again) = call(url, "POST", "/incidents", Some(&json!({ "provider": victim })), Some("inc-key"));
    assert_eq!(again["id"], incident["id"], "a repeated report is the same incident");
    let (status, _) = call(url, "POST", "/incidents", Some(&json!({ "provider": "gcp" })), Some("inc-key"));
    assert_eq!(status, 422, "one key, another body");
    let after = wait_for(url, &id, |r| {
        r["allocations"].as_array().unwrap().iter().any(|a| a["state"] == "cancelled")
            && r["status"] == "provisioning"
    });
    let live: Vec<&Value> =
        after["allocations"].as_array().unwrap().iter().filter(|a| a["state"] != "cancelled").collect();
    assert!(live.iter().all(|a| a["provider"] != victim.as_str()), "{after}");
    assert!(ledger(url).iter().any(|e| e["kind"] == "failover"), "no failover recorded");
    let incident_id = incident["id"].as_str().unwrap();
    let (status, _) = call(url, "POST", &format!("/incidents/{incident_id}/resolve"), None, None);
    assert_eq!(status, 200);
    let naming = |url: &str| ledger(url).iter().filter(|e| e.to_string().contains(incident_id)).count();
    let entries = naming(url);
    let (status, _) = call(url, "POST", &format!("/incidents/{incident_id}/resolve"), None, None);
    assert_eq!(status, 200, "resolving twice is resolving once");
    assert_eq!(naming(url), entries, "and records nothing more");
    let (status, _) = call(url, "POST", "/incidents/inc-999/resolve", None, None);
    assert_eq!(status, 404, "an incident never opened");
    // A region is one of that provider's.
    let (status, body) =
        call(url, "POST", "/incidents", Some(&json!({ "provider": "aws", "region": "mars-1" })), None);
    assert_eq!((status, body["field"].as_str()), (422, Some("region")), "{body}");
    let (status, body) = call(
        url,
        "POST",
        "/incidents",
        Some(&json!({ "provider": "aws", "region": "gcp/us-central1" })),
        None,
    );
    assert_eq!((status, body["field"].as_str()), (422, Some("region")), "{body}");
}

/// Polls a provider's feed until an event of `kind` for `request` shows up.
fn feed_event(url: &str, token: &str, kind: &str, request: &str) -> Value {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let (status, feed) = call_as(url, token, "GET", "/provider/events", None);
        assert_eq!(status, 200, "{feed}");
        if let Some(e) = feed["events"]
            .as_array()
            .unwrap()
            .iter()
            .find(|e| e["kind"] == kind && e["body"]["request"] == request)
        {
            return e.clone();
        }
        assert!(Instant::now() < deadline, "no {kind} for {request} in {feed}");
        std::thread::sleep(Duration::from_millis(100));
    }
}

#[test]
fn a_pull_provider_reads_its_feed_and_answers_through_the_api() {
    let data = tempfile::tempdir().unwrap();
    let server = Server::start(&[
        "--data",
        data.path().to_str().unwrap(),
        "--provider",
        "azure=pull",
        "--provider",
        "lambda=pull",
    ]);
    let url = &server.url;
    let azure = token_for(url, "provider:azure");
    let lambda = token_for(url, "provider:lambda");
    let (_, providers) = call(url, "GET", "/providers", None, None);
    let reached: BTreeMap<&str, &str> = providers["providers"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| (p["name"].as_str().unwrap(), p["reached"].as_str().unwrap()))
        .collect();
    assert_eq!((reached["azure"], reached["lambda"], reached["aws"]), ("pull", "pull", "in-process"));
    let (_, submitted) = call(url, "POST", "/requests", Some(&request_body(256)), None);
    let id = submitted["id"].as_str().unwrap().to_owned();
    let answer_path = format!("/provider/requests/{id}/answer");

    // lambda is not the holder: its answer to the solicitation is refused.
    let decline = json!({ "answer": "decline" });
    let solicited = feed_event(url, &azure, "solicited", &id);
    // The holder is told what it is asked for, as a provider called over HTTP is.
    let wanted = &solicited["body"]["wanted"];
    assert_eq!(
        (wanted["accelerators"][0].as_str(), wanted["block"].as_u64()),
        (Some("H100"), Some(8)),
        "{solicited}"
    );
    let (status, body) = call_as(url, &lambda, "POST", &answer_path, Some(&decline));
    assert_eq!(status, 409, "{body}");
    let (status, body) = call_as(url, &azure, "POST", &answer_path, Some(&json!({ "answer": "maybe" })));
    assert_eq!(status, 422, "{body}");
    // An acceptance passes the checks a quoted offer does and fits what was offered (256 GPUs
    // in blocks of 8); each refused names its field, and nothing is taken.
    let accept = |field: &str, value: Value| {
        let mut answer = json!({ "answer": "accept", "gpus": 64, "region": "eastus", "accelerator": "H100",
            "instance_type": "Standard_ND96isr_H100_v5", "gpus_per_node": 8, "lead_time_hours": 24 });
        answer[field] = value;
        answer
    };
    for (field, value, named) in [
        ("region", json!("us-east-1"), "region"),
        ("region", json!("mars-1"), "region"),
        ("gpus_per_node", json!(3), "gpus_per_node"),
        ("gpus", json!(4096), "gpus"),
        ("gpus", json!(12), "gpus"),
        ("lead_time_hours", json!(4_294_967_295u64), "lead_time_hours"),
    ] {
        let (status, body) = call_as(url, &azure, "POST", &answer_path, Some(&accept(field, value.clone())));
        assert_eq!((status, body["field"].as_str()), (422, Some(named)), "{field} = {value}: {body}");
    }
    let (status, body) = call_as(url, &azure, "POST", &answer_path, Some(&decline));
    assert_eq!(status, 200, "{body}");

    // The market round asks lambda; it answers with its own offer (an offer of another provider is refused).
    let asked = feed_event(url, &lambda, "quotes_requested", &id);
    assert!(asked["body"].get("providers").is_none(), "a provider is not told who else was asked: {asked}");
    // It is told what to quote for: the GPUs, their accelerator, for how long, where.
    let wanted = &asked["body"]["wanted"];
    assert_eq!(
        (wanted["gpus"].as_u64(), wanted["accelerators"][0].as_str(), wanted["spot"].as_str()),
        (Some(256), Some("H100"), Some("never")),
        "{asked}"
    );
    assert!(
        wanted["duration_hours"].as_u64().is_some_and(|h| h > 0) && wanted["regions"].is_array(),
        "{asked}"
    );
    let offer = |provider: &str| {
        json!({
            "id": format!("{provider}/us-east-1/x/on-demand"), "provider": provider, "region": "us-east-1",
            "accelerator": "H100", "nodes_available": 128, "gpus_per_node": 8, "node_price": 12.0,
            "lead_time_hours": 2, "kind": "on-demand", "valid_until": null, "instance_type": "x"
        })
    };
    let (status, body) =
        call_as(url, &lambda, "POST", &answer_path, Some(&json!({ "offers": [offer("aws")] })));
    assert_eq!((status, body["field"].as_str()), (422, Some("offers[0].provider")), "{body}");
    // Nor under a competitor's offer id.
    let mut borrowed = offer("lambda");
    borrowed["id"] = json!("aws/us-east-1/p5.48xlarge/on-demand");
    let (status, body) = call_as(url, &lambda, "POST", &answer_path, Some(&json!({ "offers": [borrowed] })));
    assert_eq!((status, body["field"].as_str()), (422, Some("offers[0].id")), "{body}");
    // Offers that could not be bought are refused, naming the field; nothing is recorded.
    let bad = |field: &str, value: Value| {
        let mut bad = offer("lambda");
        bad[field] = value;
        json!({ "offers": [offer("lambda"), bad] })
    };
    for (field, value, named) in [
        ("node_price", json!(0.0), "offers[1].node_price"),
        ("region", json!("mars-1"), "offers[1].region"),
        ("accelerator", json!("H101"), "offers[1].accelerator"),
        ("nodes_available", json!(100_000), "offers[1].nodes_available"),
        ("lead_time_hours", json!(100_000), "offers[1].lead_time_hours"),
        ("gpus_per_node", json!(0), "offers[1].gpus_per_node"),
    ] {
        let (status, body) = call_as(url, &lambda, "POST", &answer_path, Some(&bad(field, value)));
        assert_eq!(status, 422, "{field}: {body}");
        assert!(body["field"].as_str().is_some_and(|f| f.starts_with(named)), "{field}: {body}");
    }
    // An in-process provider's token cannot answer for it: dibs calls that provider itself.
    let aws = token_for(url, "provider:aws");
    let (status, body) = call_as(url, &aws, "POST", &answer_path, Some(&json!({ "offers": [offer("aws")] })));
    assert_eq!(status, 403, "{body}");
    let (status, body) =
        call_as(url, &lambda, "POST", &answer_path, Some(&json!({ "offers": [offer("lambda")] })));
    assert_eq!(status, 200, "{body}");
    let (status, _) =
        call_as(url, &lambda, "POST", &answer_path, Some(&json!({ "offers": [offer("lambda")] })));
    assert_eq!(status, 409, "quotes answered twice");

    let awarded = wait_for(url, &id, |r| r["status"] != "first_refusal" && r["status"] != "market");
    let lambda_award = awarded["allocations"].as_array().unwrap().iter().find(|a| a["provider"] == "lambda");
    assert_eq!(lambda_award.map(|a| a["price_per_gpu_hour"].as_f64()), Some(Some(1.5)), "{awarded}");
    let mine = feed_event(url, &lambda, "awarded", &id);
    let shown: BTreeSet<u64> =
        mine["body"]["allocations"].as_array().unwrap().iter().map(|a| a["id"].as_u64().unwrap()).collect();
    let lambdas: BTreeSet<u64> = awarded["allocations"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|a| a["provider"] == "lambda")
        .map(|a| a["id"].as_u64().unwrap())
        .collect();
    assert_eq!(shown, lambdas, "its own allocations, no other provider's: {mine}");
    // Its own quote is in its feed; no other provider's price is anywhere in it.
    let quoted = feed_event(url, &lambda, "quoted", &id);
    assert_eq!(quoted["body"]["offers"][0]["provider"], "lambda", "{quoted}");
}

#[test]
fn the_openapi_document_lists_the_endpoints_and_each_listed_endpoint_exists() {
    let data = tempfile::tempdir().unwrap();
    let server = Server::start(&["--data", data.path().to_str().unwrap()]);
    let url = &server.url;
    // The contracts in force and the providers, as the engine has them.
    let (status, contracts) = call(url, "GET", "/contracts", None, None);
    assert_eq!(status, 200, "{contracts}");
    let primary = contracts["contracts"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["counterparty"] == "azure")
        .and_then(|c| c["id"].as_str())
        .expect("the default set has the primary's contract")
        .to_owned();
    let (status, shown) = call(url, "GET", &format!("/contracts/{primary}"), None, None);
    assert_eq!(status, 200, "{shown}");
    let kinds: BTreeSet<&str> = shown["versions"]
        .as_array()
        .unwrap()
        .iter()
        .flat_map(|v| v["clauses"].as_array().unwrap().iter().map(|c| c["kind"].as_str().unwrap()))
        .collect();
    assert!(kinds.contains("first_refusal") || kinds.contains("commitment"), "{shown}");
    let (status, providers) = call(url, "GET", "/providers", None, None);
    assert_eq!(status, 200, "{providers}");
    assert!(
        providers["providers"].as_array().unwrap().iter().all(|p| p["reached"] == "in-process"),
        "{providers}"
    );

    let mut response = agent().get(format!("{url}/v1/openapi.json")).call().unwrap();
    assert_eq!(response.status().as_u16(), 200);
    let doc: Value = response.body_mut().read_json().unwrap();
    assert!(doc["openapi"].as_str().unwrap().starts_with("3."), "{doc}");
    let paths = doc["paths"].as_object().unwrap();
    for expected in
        ["/v1/requests", "/v1/requests/{id}", "/v1/ledger/verify", "/v1/provider/events", "/v1/tokens"]
    {
        assert!(paths.contains_key(expected), "{expected} missing from {:?}", paths.keys());
    }
    assert!(doc["components"]["schemas"]["SubmitBody"]["properties"]["gpus"].is_object(), "{doc}");
    // Every answer is one of the API's own types: a named schema, never a bare object.
    for (path, operations) in paths {
        for (method, operation) in operations.as_object().unwrap() {
            for (status, response) in operation["responses"].as_object().unwrap() {
                let schema = &response["content"]["application/json"]["schema"];
                assert!(
                    schema["$ref"].as_str().is_some_and(|r| r.starts_with("#/components/schemas/")),
                    "{method} {path} {status} answers {schema}"
                );
            }
        }
    }
    // Every documented operation is routed: no 404 "no such endpoint" (an unknown id gives another 404 body).
    let provider = token_for(url, "provider:lambda");
    for (path, operations) in paths {
        for method in operations.as_object().unwrap().keys() {
            let concrete = path.replace("{id}", "nothing-here");
            let token = if path.starts_with("/v1/provider/") { provider.as_str() } else { TOKEN };
            let (status, body) = call_as(
                url,
                token,
                &method.to_uppercase(),
                concrete.trim_start_matches("/v1"),
                Some(&json!({})),
            );
            assert_ne!(body["error"], "no such endpoint", "{method} {path}: {status}");
        }
    }
}

/// The example contract set `name` as API files.
fn contract_files(name: &str) -> Value {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../examples/contracts").join(name);
    let mut paths: Vec<_> = std::fs::read_dir(&dir).unwrap().map(|e| e.unwrap().path()).collect();
    paths.retain(|p| p.extension().is_some_and(|e| e == "toml"));
    paths.sort();
    let files: Vec<Value> = paths
        .iter()
        .map(|p| json!({ "name": p.file_name().unwrap().to_str().unwrap(), "text": std::fs::read_to_string(p).unwrap() }))
        .collect();
    json!({ "files": files })
}

#[test]
fn contracts_loaded_through_the_api_apply_from_then_on_and_survive_a_restart() {
    let data = tempfile::tempdir().unwrap();
    let data_arg = data.path().to_str().unwrap().to_owned();
    let mut server = Server::start(&["--data", &data_arg]);
    let url = server.url.clone();
    let (_, first) = call(&url, "POST", "/requests", Some(&request_body(64)), None);
    let first_id = first["id"].as_str().unwrap().to_owned();
    wait_for(&url, &first_id, |r| r["status"] != "first_refusal" && r["status"] != "market");
    let solicited = |id: &str| ledger(&url).iter().any(|e| e["kind"] == "solicited" && e["request"] == id);
    assert!(solicited(&first_id), "the default set gives azure first refusal today");

    // A broken file is refused with its line and column, and nothing changes.
    let before = ledger(&url).len();
    let mut broken = contract_files("historical");
    let text = broken["files"][1]["text"].as_str().unwrap().replace("rate = 0.2", "rate = 1.2");
    broken["files"][1]["text"] = json!(text);
    let (status, body) = call(&url, "POST", "/contracts", Some(&broken), None);
    assert_eq!((status, body["field"].as_str()), (422, Some("files")), "{body}");
    assert!(body["error"].as_str().unwrap().contains("azure.toml:"), "{body}");
    assert_eq!(ledger(&url).len(), before, "a refused load wrote to the ledger");

    // The historical set: the 2025-10-28 amendment ended azure's first refusal.
    let (status, loaded) = call(&url, "POST", "/contracts", Some(&contract_files("historical")), None);
    assert_eq!(status, 200, "{loaded}");
    let (_, second) = call(&url, "POST", "/requests", Some(&request_body(64)), None);
    let second_id = second["id"].as_str().unwrap().to_owned();
    wait_for(&url, &second_id, |r| r["status"] != "first_refusal" && r["status"] != "market");
    assert!(!solicited(&second_id), "no first refusal under the historical set in 2026");

    // A restart with the same flags replays each input under the contracts it
    // was decided under, and keeps the loaded set; new flags would win.
    server.kill();
    let server = Server::start(&["--data", &data_arg]);
    let (_, listed) = call(&server.url, "GET", "/contracts", None, None);
    let sources: Vec<&str> =
        listed["contracts"].as_array().unwrap().iter().map(|c| c["source"].as_str().unwrap()).collect();
    assert!(sources.contains(&"azure.toml"), "the loaded set is still in force: {sources:?}");
    let (_, third) = call(&server.url, "POST", "/requests", Some(&request_body(64)), None);
    let third_id = third["id"].as_str().unwrap().to_owned();
    wait_for(&server.url, &third_id, |r| r["status"] != "first_refusal" && r["status"] != "market");
    let again =
        ledger(&server.url).iter().any(|e| e["kind"] == "solicited" && e["request"] == third_id.as_str());
    assert!(!again, "still no first refusal after the restart");
    drop(server);
    verify_offline(data.path());
}

#[test]
fn the_request_commands_talk_to_a_running_server() {
    let data = tempfile::tempdir().unwrap();
    let server = Server::start(&["--data", data.path().to_str().unwrap()]);
    let dibs = |args: &[&str]| {
        Command::new(DIBS)
            .args(args)
            .args(["--server", &server.url])
            .env("DIBS_TOKEN", TOKEN)
            .output()
            .unwrap()
    };
    let text = |output: &std::process::Output| String::from_utf8_lossy(&output.stdout).into_owned();
    let submitted =
        dibs(&["request", "submit", "--gpus", "64", "--hours", "10", "--idempotency-key", "cli-1", "--json"]);
    assert!(submitted.status.success(), "{}", String::from_utf8_lossy(&submitted.stderr));
    let body: Value = serde_json::from_slice(&submitted.stdout).unwrap();
    let id = body["id"].as_str().unwrap();
    let shown = dibs(&["request", "show", id, "--json"]);
    assert!(shown.status.success());
    assert_eq!(serde_json::from_slice::<Value>(&shown.stdout).unwrap()["id"], body["id"]);
    // Tables by default: a line per request, and a request's page on the dashboard.
    let listed = dibs(&["request", "list"]);
    assert!(text(&listed).starts_with("ID "), "{}", text(&listed));
    assert!(text(&listed).lines().any(|l| l.starts_with(id)), "{}", text(&listed));
    let shown = dibs(&["request", "show", id]);
    assert!(text(&shown).contains(&format!("story: {}/requests/{id}", server.url)), "{}", text(&shown));
    // A bad request exits non-zero and says which field, in words or in JSON.
    let bad = dibs(&["request", "submit", "--gpus", "0", "--hours", "10"]);
    assert_eq!(bad.status.code(), Some(2));
    let said = String::from_utf8_lossy(&bad.stderr);
    assert!(said.starts_with("error: gpus: ") && said.contains("HTTP 422"), "{said}");
    let bad = dibs(&["request", "submit", "--gpus", "0", "--hours", "10", "--json"]);
    assert!(
        String::from_utf8_lossy(&bad.stderr).contains("\"field\": \"gpus\""),
        "{}",
        String::from_utf8_lossy(&bad.stderr)
    );
    let missing = dibs(&["request", "show", "r-999"]);
    assert_eq!(missing.status.code(), Some(2));
    // An empty token is no token: the command says to set it, not what the server's 401 says.
    let empty = Command::new(DIBS)
        .args(["request", "list", "--server", &server.url])
        .env("DIBS_TOKEN", " ")
        .output()
        .unwrap();
    let said = String::from_utf8_lossy(&empty.stderr);
    assert!(!empty.status.success() && said.contains("DIBS_TOKEN: set it"), "{said}");
    // An unknown state is an error naming the states, not an empty list.
    let bogus = dibs(&["request", "list", "--status", "bogus"]);
    assert_eq!(bogus.status.code(), Some(2));
    let said = String::from_utf8_lossy(&bogus.stderr);
    assert!(said.contains("status") && said.contains("first_refusal, market, provisioning"), "{said}");
    // Cancel.
    let cancelled = dibs(&["request", "cancel", id, "--json"]);
    assert!(cancelled.status.success(), "{}", String::from_utf8_lossy(&cancelled.stderr));
    assert_eq!(serde_json::from_slice::<Value>(&cancelled.stdout).unwrap()["status"], "cancelled");
    let listed = dibs(&["request", "list", "--status", "cancelled"]);
    assert!(text(&listed).lines().any(|l| l.starts_with(id) && l.contains("cancelled")), "{}", text(&listed));
    // Cancelling again changes nothing: the same answer, no new ledger entry.
    let entries = ledger(&server.url).len();
    let again = dibs(&["request", "cancel", id, "--json"]);
    assert!(again.status.success(), "{}", String::from_utf8_lossy(&again.stderr));
    assert_eq!(ledger(&server.url).len(), entries, "a second cancel records nothing");
    // Every option of every request command says what it does.
    for command in ["submit", "show", "list", "cancel"] {
        let help = Command::new(DIBS).args(["request", command, "--help"]).output().unwrap();
        let help = String::from_utf8_lossy(&help.stdout);
        let lines: Vec<&str> = help.lines().collect();
        // An option's help follows on its line or on the indented lines below it.
        for (i, line) in lines.iter().enumerate().filter(|(_, l)| l.trim_start().starts_with('-')) {
            let beside = line.trim().split("  ").filter(|p| !p.is_empty()).count() >= 2;
            let below = lines
                .get(i + 1)
                .is_some_and(|next| !next.trim().is_empty() && !next.trim_start().starts_with('-'));
            assert!(beside || below, "{command}: {line:?} has no help");
        }
    }
}

#[test]
fn a_server_that_cannot_be_reached_is_not_bad_input() {
    // A port that was free a moment ago: nothing listens there.
    let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    let server = format!("http://127.0.0.1:{port}");
    for command in [&["request", "list"][..], &["token", "list"]] {
        let output = Command::new(DIBS)
            .args(command)
            .args(["--server", &server])
            .env("DIBS_TOKEN", TOKEN)
            .output()
            .unwrap();
        let said = String::from_utf8_lossy(&output.stderr);
        assert_eq!(output.status.code(), Some(69), "{command:?}: {said}");
        assert!(said.starts_with(&format!("error: GET {server}/v1/")), "{said}");
    }
}

#[test]
fn a_call_in_flight_when_the_server_dies_is_made_again_by_the_next_one() {
    let dir = tempfile::tempdir().unwrap();
    let catalog = catalog_of(dir.path(), &["azure", "lambda", "nebius", "aws"]);
    // The holder takes 1.5 s to answer: time to kill the server while the solicitation is out.
    let azure =
        ProviderProcess::start("azure", &catalog, &["--holder", "decline", "--answer-delay-ms", "1500"]);
    let data = dir.path().join("data");
    let args = [
        "--data",
        data.to_str().unwrap(),
        "--catalog",
        catalog.to_str().unwrap(),
        "--provider",
        &format!("azure={}", azure.url),
    ];
    let mut server = Server::start(&args);
    let (_, submitted) = call(&server.url, "POST", "/requests", Some(&request_body(128)), None);
    let id = submitted["id"].as_str().unwrap().to_owned();
    assert_eq!(submitted["status"], "first_refusal", "{submitted}");
    std::thread::sleep(Duration::from_millis(300));
    server.kill();
    // The solicitation is a committed outbox row: the next server's workers make it again.
    let db = rusqlite::Connection::open(data.join("ledger.db")).unwrap();
    let waiting: i64 = db.query_row("SELECT count(*) FROM outbox", [], |r| r.get(0)).unwrap();
    assert_eq!(waiting, 1, "the solicitation waits in the outbox");
    drop(db);
    let server = Server::start(&args);
    let decided = wait_for(&server.url, &id, |r| r["status"] != "first_refusal" && r["status"] != "market");
    assert_eq!(decided["status"], "provisioning", "{decided}");
    let answered = ledger(&server.url).iter().filter(|e| e["kind"] == "holder_answered").count();
    assert_eq!(answered, 1, "one answer recorded");
    drop(server);
    let db = rusqlite::Connection::open(data.join("ledger.db")).unwrap();
    let left: i64 = db.query_row("SELECT count(*) FROM outbox", [], |r| r.get(0)).unwrap();
    assert_eq!(left, 0, "answered calls leave the outbox");
    verify_offline(&data);
}

#[test]
fn an_ended_request_leaves_the_engine_and_is_still_served_from_the_requests_table() {
    let data = tempfile::tempdir().unwrap();
    let data_arg = data.path().to_str().unwrap().to_owned();
    let mut server = Server::start(&["--data", &data_arg]);
    let url = server.url.clone();
    // Priced below every offer: each ends unfilled as soon as its round is decided.
    let mut cheap = request_body(8);
    cheap["max_price"] = json!(0.01);
    let mut ids = Vec::new();
    for _ in 0..3 {
        let (status, body) = call(&url, "POST", "/requests", Some(&cheap), None);
        assert_eq!(status, 201, "{body}");
        ids.push(body["id"].as_str().unwrap().to_owned());
    }
    let (status, open) = call(&url, "POST", "/requests", Some(&request_body(8)), None);
    assert_eq!(status, 201, "{open}");
    let ended = wait_for(&url, &ids[0], |r| r["status"] == "unfilled");
    assert!(ended["unfilled"]["reason"].as_str().is_some_and(|r| !r.is_empty()), "{ended}");
    for id in &ids {
        wait_for(&url, id, |r| r["status"] == "unfilled");
    }
    let check = |url: &str| {
        // Shown, listed, counted and refused a cancel as before.
        let (status, shown) = call(url, "GET", &format!("/requests/{}", ids[1]), None, None);
        assert_eq!((status, &shown["status"]), (200, &json!("unfilled")), "{shown}");
        let (status, page) = call(url, "GET", "/requests?status=unfilled&limit=2", None, None);
        assert_eq!(status, 200, "{page}");
        let listed: Vec<&str> =
            page["requests"].as_array().unwrap().iter().map(|r| r["id"].as_str().unwrap()).collect();
        assert_eq!(listed, [ids[0].as_str(), ids[1].as_str()], "{page}");
        let (_, rest) = call(url, "GET", &format!("/requests?status=unfilled&after={}", ids[1]), None, None);
        assert_eq!(rest["requests"][0]["id"], ids[2], "{rest}");
        let (_, all) = call(url, "GET", "/requests", None, None);
        let every: Vec<&str> =
            all["requests"].as_array().unwrap().iter().map(|r| r["id"].as_str().unwrap()).collect();
        assert!(every.contains(&ids[2].as_str()) && every.contains(&open["id"].as_str().unwrap()), "{all}");
        let (_, stats) = call(url, "GET", "/stats", None, None);
        assert_eq!(stats["requests"]["unfilled"].as_u64(), Some(3), "{stats}");
        let (status, body) = call(url, "POST", &format!("/requests/{}/cancel", ids[2]), None, None);
        assert_eq!(status, 409, "{body}");
    };
    check(&url);
    // After a restart the replayed engine lets them go again, and they are served the same.
    server.kill();
    let server = Server::start(&["--data", &data_arg]);
    check(&server.url);
    drop(server);
    verify_offline(data.path());
}

#[test]
fn a_provider_flag_out_of_range_is_named_as_given() {
    let out = Command::new(DIBS)
        .args(["provider", "serve", "--name", "lambda", "--accept-rate", "2"])
        .output()
        .unwrap();
    let said = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success() && said.contains("--accept-rate: 2 must be between 0 and 1"), "{said}");
}

#[test]
fn sigint_and_sigterm_drain_write_the_snapshot_and_the_signed_head_and_exit_0_on_both_backends() {
    let database = std::env::var("DIBS_TEST_POSTGRES_URL").ok();
    if database.is_none() {
        eprintln!("DIBS_TEST_POSTGRES_URL is not set: the signals are tried on SQLite only");
    }
    for backend in ["sqlite", "postgres"] {
        for signal in ["INT", "TERM"] {
            let data = tempfile::tempdir().unwrap();
            let mut args = vec!["--data".to_owned(), data.path().display().to_string()];
            let schema = format!("dibs_signal_{}_{}", std::process::id(), signal.to_lowercase());
            if backend == "postgres" {
                let Some(url) = &database else { continue };
                let mut client = postgres::Client::connect(url, postgres::NoTls).unwrap();
                client.batch_execute(&format!("DROP SCHEMA IF EXISTS {schema} CASCADE")).unwrap();
                args.extend([
                    "--database".to_owned(),
                    url.clone(),
                    "--database-schema".to_owned(),
                    schema.clone(),
                ]);
            }
            let mut server = Server::start(&args.iter().map(String::as_str).collect::<Vec<_>>());
            let (status, submitted) = call(&server.url, "POST", "/requests", Some(&request_body(8)), None);
            assert_eq!(status, 201, "{submitted}");
            let pid = server.child.id().to_string();
            assert!(Command::new("kill").args([&format!("-{signal}"), &pid]).status().unwrap().success());
            let deadline = Instant::now() + Duration::from_secs(30);
            let exit = loop {
                if let Some(exit) = server.child.try_wait().unwrap() {
                    break exit;
                }
                assert!(Instant::now() < deadline, "{backend}, SIG{signal}: still running");
                std::thread::sleep(Duration::from_millis(50));
            };
            assert!(exit.success(), "{backend}, SIG{signal}: {exit:?}");
            let mut verify = Command::new(DIBS);
            verify.args(["ledger", "verify", "--data"]).arg(data.path());
            if backend == "postgres" {
                verify.args(["--database", database.as_deref().unwrap(), "--database-schema", &schema]);
            }
            let output = verify.output().unwrap();
            let text = String::from_utf8_lossy(&output.stdout);
            assert!(output.status.success(), "{backend}, SIG{signal}: {text}");
            assert!(
                text.contains("stored snapshot: ok"),
                "{backend}, SIG{signal}: the shutdown snapshot: {text}"
            );
            assert!(
                !text.contains("signed heads: ok, 0 checkpoints"),
                "{backend}, SIG{signal}: the signed head: {text}"
            );
            if backend == "postgres" {
                let mut client =
                    postgres::Client::connect(database.as_deref().unwrap(), postgres::NoTls).unwrap();
                client.batch_execute(&format!("DROP SCHEMA IF EXISTS {schema} CASCADE")).unwrap();
            }
        }
    }
}

/// Issue 20: deleting `ledger.key` switched the key check off, so a rewrite re-signed with a
/// foreign key passed. A missing key is now an error for `dibs ledger verify` and a start
/// refuses to make a new one over a ledger that holds signed heads.
#[test]
fn a_deleted_ledger_key_is_an_error_not_a_skip() {
    let data = tempfile::tempdir().unwrap();
    let mut server = Server::start(&["--data", data.path().to_str().unwrap()]);
    let (status, _) = call(&server.url, "POST", "/requests", Some(&request_body(8)), None);
    assert_eq!(status, 201);
    // SIGTERM: the server signs its head on the way out.
    let pid = server.child.id().to_string();
    assert!(Command::new("kill").args(["-TERM", &pid]).status().unwrap().success());
    assert!(server.child.wait().unwrap().success());
    let verify =
        || Command::new(DIBS).args(["ledger", "verify", "--data"]).arg(data.path()).output().unwrap();
    assert!(verify().status.success(), "{}", String::from_utf8_lossy(&verify().stdout));
    std::fs::remove_file(data.path().join("ledger.key")).unwrap();
    let output = verify();
    let said =
        format!("{}{}", String::from_utf8_lossy(&output.stdout), String::from_utf8_lossy(&output.stderr));
    assert!(!output.status.success() && said.contains("ledger.key is missing"), "{said}");
    let start = Command::new(DIBS)
        .args(["serve", "--listen", "127.0.0.1:0", "--data"])
        .arg(data.path())
        .env("DIBS_ADMIN_TOKEN", TOKEN)
        .output()
        .unwrap();
    let said = String::from_utf8_lossy(&start.stderr);
    assert!(
        !start.status.success() && said.contains("signed heads but") && said.contains("is missing"),
        "{said}"
    );
    assert!(!data.path().join("ledger.key").exists(), "no new key was made");
}

/// A PostgreSQL cluster of this test's own (initdb, pg_ctl on a free port, as the
/// `postgres` user), so it can be restarted and stopped; stopped when dropped. `None`
/// (after saying why) when the binaries or the user are not there.
struct Cluster {
    dir: tempfile::TempDir,
    port: u16,
}

impl Cluster {
    fn start() -> Option<Self> {
        let dir = tempfile::tempdir().unwrap();
        let owned = Command::new("chown").args(["-R", "postgres"]).arg(dir.path()).status();
        if !owned.is_ok_and(|s| s.success()) {
            eprintln!("skipping: cannot give a folder to the postgres user");
            return None;
        }
        let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
        let cluster = Self { dir, port };
        let pg = cluster.dir.path().join("pg");
        if !cluster.pg_ctl(&format!("initdb -D {} -A trust -U postgres", pg.display())) {
            eprintln!("skipping: initdb failed (are PostgreSQL's binaries on PATH?)");
            return None;
        }
        assert!(cluster.control("start"), "the test's cluster starts");
        Some(cluster)
    }

    fn url(&self) -> String {
        format!("postgres://postgres@127.0.0.1:{}/postgres", self.port)
    }

    /// Runs a PostgreSQL command line as the `postgres` user.
    fn pg_ctl(&self, command: &str) -> bool {
        Command::new("su")
            .args(["postgres", "-c", command])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .is_ok_and(|s| s.success())
    }

    /// `pg_ctl start|stop|restart`, waiting until done (a fast stop: sessions are cut).
    fn control(&self, action: &str) -> bool {
        let dir = self.dir.path();
        self.pg_ctl(&format!(
            "pg_ctl -D {pg} -w -m fast -l {log} -o '-p {port} -k {dir} -c listen_addresses=127.0.0.1' {action}",
            pg = dir.join("pg").display(),
            log = dir.join("log").display(),
            port = self.port,
            dir = dir.display(),
        ))
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        self.control("stop");
    }
}

/// The role a replica's health says (`leader`, `standby`, `starting`), and why it waits.
fn role(url: &str) -> Option<(String, Option<String>)> {
    let health = agent().get(format!("{url}/v1/health")).call().ok()?.body_mut().read_json::<Value>().ok()?;
    Some((health["role"].as_str()?.to_owned(), health["problem"].as_str().map(str::to_owned)))
}

/// Waits until one of `urls` leads and the others are standbys; the leader's URL.
fn one_leader(urls: &[&str], within: Duration) -> String {
    let deadline = Instant::now() + within;
    loop {
        let roles: Vec<Option<(String, Option<String>)>> = urls.iter().map(|u| role(u)).collect();
        let leaders: Vec<&str> = urls
            .iter()
            .zip(&roles)
            .filter(|(_, r)| r.as_ref().is_some_and(|r| r.0 == "leader"))
            .map(|(u, _)| *u)
            .collect();
        let standbys = roles.iter().filter(|r| r.as_ref().is_some_and(|r| r.0 == "standby")).count();
        if leaders.len() == 1 && standbys == urls.len() - 1 {
            return leaders[0].to_owned();
        }
        assert!(Instant::now() < deadline, "no single leader: {roles:?}");
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// A replica that leads with `args_a`, and one on a port of its own with `args_b` that
/// stands by (it prints its banner only if it ever leads, so it is not waited for): the
/// leader, the standby's process and its URL.
fn leader_and_standby(args_a: &[String], args_b: &[String]) -> (Server, Child, String) {
    let a = Server::start(&args_a.iter().map(String::as_str).collect::<Vec<_>>());
    let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    let b = Command::new(DIBS)
        .args(["serve", "--listen", &format!("127.0.0.1:{port}"), "--holder", "decline"])
        .args(args_b)
        .env("DIBS_ADMIN_TOKEN", TOKEN)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let url_b = format!("http://127.0.0.1:{port}");
    assert_eq!(one_leader(&[&a.url, &url_b], Duration::from_secs(20)), a.url);
    (a, b, url_b)
}

/// `n` submissions with keys `prefix-0`, `prefix-1`, ..., each acknowledged; their ids.
fn submit_keyed(url: &str, prefix: &str, n: usize) -> Vec<String> {
    (0..n)
        .map(|i| {
            let (status, view) =
                call(url, "POST", "/requests", Some(&request_body(8)), Some(&format!("{prefix}-{i}")));
            assert_eq!(status, 201, "{view}");
            view["id"].as_str().unwrap().to_owned()
        })
        .collect()
}

/// Issue 19: a PostgreSQL restart took both replicas down for good. Now the leader stops
/// writing and starts again as a standby, the standby reconnects with backoff, and after the
/// restart one leads and one stands by, on the ports they held, with nothing acknowledged
/// lost; with the database down a replica waits and says why.
#[test]
fn a_database_restart_leaves_one_leader_and_one_standby_and_loses_nothing() {
    let Some(cluster) = Cluster::start() else { return };
    let database = cluster.url();
    let (data_a, data_b) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let args = |data: &Path| {
        vec!["--data".to_owned(), data.display().to_string(), "--database".into(), database.clone()]
    };
    let (a, mut b, url_b) = leader_and_standby(&args(data_a.path()), &args(data_b.path()));
    let acknowledged = submit_keyed(&a.url, "blip", 5);

    let started = Instant::now();
    assert!(cluster.control("restart"), "the cluster restarts");
    // The leader's watch looks at its lock session every LEAD_CHECK: past that, the old
    // leader has noticed its lead went with the restart.
    std::thread::sleep(Duration::from_millis(1500));
    let leader = one_leader(&[&a.url, &url_b], Duration::from_secs(60));
    eprintln!("database restarted: one leader ({leader}) and one standby after {:?}", started.elapsed());
    for id in &acknowledged {
        let (status, view) = call(&leader, "GET", &format!("/requests/{id}"), None, None);
        assert_eq!(status, 200, "{id} acknowledged before the restart is lost: {view}");
    }
    let (status, view) = call(&leader, "POST", "/requests", Some(&request_body(8)), None);
    assert_eq!(status, 201, "{view}");

    // The database down: both wait, saying why, and neither exits.
    assert!(cluster.control("stop"), "the cluster stops");
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let roles = [role(&a.url), role(&url_b)];
        let waiting = roles.iter().all(|r| {
            r.as_ref().is_some_and(|(role, problem)| {
                role == "standby" && problem.as_deref().is_some_and(|p| p.contains("cannot be reached"))
            })
        });
        if waiting {
            break;
        }
        assert!(Instant::now() < deadline, "with the database down: {roles:?}");
        std::thread::sleep(Duration::from_millis(200));
    }
    assert!(cluster.control("start"), "the cluster starts again");
    let leader = one_leader(&[&a.url, &url_b], Duration::from_secs(60));
    let (status, view) = call(&leader, "GET", &format!("/requests/{}", acknowledged[0]), None, None);
    assert_eq!(status, 200, "{view}");
    drop(a);
    let _ = b.kill();
    let _ = b.wait();
}

/// Issue 19: a leader frozen with SIGSTOP kept its advisory lock, and no standby took over
/// until it resumed. With a lease (`--lease-seconds 3`), the standby ends the frozen
/// leader's sessions and leads within the lease and a second or two; the old leader, when
/// it resumes, starts again as a standby; nothing acknowledged is lost.
#[test]
fn a_frozen_leader_is_replaced_when_its_lease_runs_out() {
    let Ok(database) = std::env::var("DIBS_TEST_POSTGRES_URL") else {
        eprintln!("skipping: DIBS_TEST_POSTGRES_URL is not set");
        return;
    };
    let schema = format!("dibs_frozen_test_{}", std::process::id());
    let mut client = postgres::Client::connect(&database, postgres::NoTls).unwrap();
    client.batch_execute(&format!("DROP SCHEMA IF EXISTS {schema} CASCADE")).unwrap();
    let (data_a, data_b) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let args = |data: &Path| {
        let mut args = replica_args(data, &database, &schema);
        args.extend(["--lease-seconds".to_owned(), "3".to_owned()]);
        args
    };
    let (mut a, mut b, url_b) = leader_and_standby(&args(data_a.path()), &args(data_b.path()));
    let acknowledged = submit_keyed(&a.url, "frozen", 3);
    let pid = a.child.id().to_string();
    assert!(Command::new("kill").args(["-STOP", &pid]).status().unwrap().success());
    let frozen = Instant::now();
    let deadline = frozen + Duration::from_secs(30);
    loop {
        if role(&url_b).is_some_and(|(role, _)| role == "leader") {
            break;
        }
        assert!(Instant::now() < deadline, "no standby took over from the frozen leader");
        std::thread::sleep(Duration::from_millis(100));
    }
    let took_over = frozen.elapsed();
    eprintln!("a leader frozen with SIGSTOP was replaced after {took_over:?} (lease 3 s)");
    let (status, view) = call(&url_b, "POST", "/requests", Some(&request_body(8)), None);
    assert_eq!(status, 201, "{view}");
    assert!(Command::new("kill").args(["-CONT", &pid]).status().unwrap().success());
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        assert!(a.child.try_wait().unwrap().is_none(), "the old leader exited");
        if role(&a.url).is_some_and(|(role, _)| role == "standby") {
            break;
        }
        assert!(Instant::now() < deadline, "the resumed leader did not step down: {:?}", role(&a.url));
        std::thread::sleep(Duration::from_millis(100));
    }
    for id in &acknowledged {
        let (status, shown) = call(&url_b, "GET", &format!("/requests/{id}"), None, None);
        assert_eq!(status, 200, "{id} acknowledged by the frozen leader is lost: {shown}");
    }
    a.kill();
    let _ = b.kill();
    let _ = b.wait();
    let output = Command::new(DIBS)
        .args(["ledger", "verify", "--database", &database, "--database-schema", &schema])
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&output.stdout);
    assert!(output.status.success() && text.contains("replay: ok"), "{text}");
    client.batch_execute(&format!("DROP SCHEMA IF EXISTS {schema} CASCADE")).unwrap();
}
