//! `dibs serve --provider aws=ec2` against a third-party EC2: moto's server on loopback
//! with signature checks on (`crates/dibs-providers/tests/moto_harness.py`), the real
//! binary, real HTTP. What an operator would see: instances launched and tagged, a zone out
//! of capacity passed over, a region out of capacity re-marketed to another provider, a
//! cancellation terminating the nodes, a wrong secret said on the banner and the provider's
//! status, and `kill -9`s that neither orphan nor double an instance.

#[path = "../../dibs-providers/tests/support/moto.rs"]
mod moto;

use std::collections::{BTreeMap, BTreeSet};
use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use moto::Moto;
use serde_json::{Value, json};

const TOKEN: &str = "test-admin-token";
const DIBS: &str = env!("CARGO_BIN_EXE_dibs");
const TEMPLATE: &str = "dibs-gpu";

/// A `dibs serve` reaching aws through moto's EC2; killed (SIGKILL) when dropped.
struct Server {
    child: Child,
    url: String,
    printed: Arc<Mutex<Vec<String>>>,
}

impl Server {
    fn start(moto: &Moto, key: &(String, String), data: &Path, extra: &[&str]) -> Self {
        let mut child = Command::new(DIBS)
            .args(["serve", "--listen", "127.0.0.1:0", "--holder", "decline", "--data"])
            .arg(data)
            .args(["--provider", "aws=ec2", "--aws-regions", "us-east-1", "--aws-launch-template", TEMPLATE])
            .args(extra)
            .env("DIBS_ADMIN_TOKEN", TOKEN)
            .env("AWS_ACCESS_KEY_ID", &key.0)
            .env("AWS_SECRET_ACCESS_KEY", &key.1)
            .env("AWS_REGION", "us-east-1")
            .env("AWS_ENDPOINT_URL_EC2", &moto.endpoint)
            .stdout(Stdio::piped())
            .stderr(if std::env::var_os("DIBS_TEST_STDERR").is_some() {
                Stdio::inherit()
            } else {
                Stdio::null()
            })
            .spawn()
            .expect("dibs serve starts");
        let stdout = child.stdout.take().unwrap();
        let (tx, rx) = std::sync::mpsc::channel();
        let printed = Arc::new(Mutex::new(Vec::new()));
        let lines = printed.clone();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                lines.lock().unwrap().push(line.clone());
                if line.trim_start().starts_with("clock:") {
                    let _ = tx.send(());
                }
            }
        });
        rx.recv_timeout(Duration::from_secs(60)).expect("dibs serve prints its banner");
        let url = printed
            .lock()
            .unwrap()
            .iter()
            .find_map(|l| l.strip_prefix("dibs serving on ").map(|u| u.trim_end_matches("/v1").to_owned()))
            .expect("the banner names the URL");
        Self { child, url, printed }
    }

    fn banner(&self) -> String {
        self.printed.lock().unwrap().join("\n")
    }

    fn call(&self, method: &str, path: &str, body: Option<&Value>) -> (u16, Value) {
        let agent: ureq::Agent = ureq::Agent::config_builder()
            .http_status_as_error(false)
            .timeout_global(Some(Duration::from_secs(30)))
            .build()
            .into();
        let full = format!("{}/v1{path}", self.url);
        let auth = format!("Bearer {TOKEN}");
        let response = match (method, body) {
            ("POST", Some(body)) => agent.post(&full).header("Authorization", &auth).send_json(body),
            ("POST", None) => agent.post(&full).header("Authorization", &auth).send_empty(),
            _ => agent.get(&full).header("Authorization", &auth).call(),
        };
        let mut response = response.unwrap_or_else(|e| panic!("{method} {full}: {e}"));
        let status = response.status().as_u16();
        let text = response.body_mut().read_to_string().unwrap();
        (status, serde_json::from_str(&text).unwrap_or(Value::String(text)))
    }

    fn submit(&self, gpus: u32, providers: &[&str]) -> String {
        let body = json!({
            "accelerators": ["H100"], "gpus": gpus, "duration_hours": 4, "workload": "batch",
            "providers": providers,
        });
        let (status, view) = self.call("POST", "/requests", Some(&body));
        assert_eq!(status, 201, "{view}");
        view["id"].as_str().unwrap().to_owned()
    }

    /// Waits for the request to reach one of `statuses`; its view.
    fn wait_for(&self, id: &str, statuses: &[&str]) -> Value {
        let deadline = Instant::now() + Duration::from_secs(90);
        loop {
            let (_, view) = self.call("GET", &format!("/requests/{id}"), None);
            if statuses.contains(&view["status"].as_str().unwrap_or("")) {
                return view;
            }
            assert!(Instant::now() < deadline, "{id} never reached {statuses:?}: {view}");
            std::thread::sleep(Duration::from_millis(200));
        }
    }

    /// The ledger's events about a request, by kind.
    fn events(&self, id: &str) -> Vec<Value> {
        let (status, page) = self.call("GET", "/ledger?limit=1000", None);
        assert_eq!(status, 200, "{page}");
        let entries = page["entries"].as_array().cloned().unwrap_or_default();
        entries.into_iter().filter(|e| e["request"] == id).collect()
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// moto's instances that hold a node (pending or running), by the allocation tag.
fn running(moto: &mut Moto) -> BTreeMap<String, Vec<Value>> {
    let mut by_allocation: BTreeMap<String, Vec<Value>> = BTreeMap::new();
    for instance in moto.instances() {
        let state = instance["state"].as_str().unwrap_or("");
        if matches!(state, "pending" | "running") {
            let owner = instance["tags"]["dibs:allocation"].as_str().unwrap_or("none").to_owned();
            by_allocation.entry(owner).or_default().push(instance);
        }
    }
    by_allocation
}

fn allocation_ids(view: &Value, provider: &str) -> Vec<String> {
    view["allocations"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|a| a["provider"] == provider)
        .map(|a| a["id"].to_string())
        .collect()
}

#[test]
fn dibs_buys_from_ec2_passes_over_a_full_zone_re_markets_a_full_region_and_terminates() {
    let Some(mut moto) = Moto::start() else { return };
    moto.launch_template(TEMPLATE);
    let (key, _) = moto.switch_auth_on();
    let data = tempfile::tempdir().unwrap();
    let server = Server::start(&moto, &key, data.path(), &[]);
    assert!(server.banner().contains("aws (EC2 at "), "{}", server.banner());
    assert!(!server.banner().contains("warning:    aws"), "{}", server.banner());

    // 16 H100 from aws: two p5.48xlarge, tagged with the allocation and the request.
    let started = Instant::now();
    let r1 = server.submit(16, &["aws"]);
    let view = server.wait_for(&r1, &["active"]);
    eprintln!("16 GPUs active on EC2 in {:.1} s", started.elapsed().as_secs_f64());
    let aws = allocation_ids(&view, "aws");
    assert_eq!(aws.len(), 1, "{view}");
    let held = running(&mut moto);
    let nodes = &held[&aws[0]];
    assert_eq!(nodes.len(), 2, "{held:?}");
    for node in nodes {
        assert_eq!(node["tags"]["dibs:request"], r1.as_str());
        assert_eq!(node["state"], "running");
        // The ledger's tag (its first entry's hash): another dibs in the account leaves it be.
        assert_eq!(node["tags"]["dibs:ledger"].as_str().map(str::len), Some(64), "{node}");
    }
    assert_eq!(view["allocations"][0]["instance_type"], "p5.48xlarge");

    // Zone a out of capacity: the next launch lands in another zone, zone a asked once.
    let before = moto.run_calls();
    moto.out_of_capacity(&["us-east-1a"]);
    let started = Instant::now();
    let r2 = server.submit(16, &["aws"]);
    let view = server.wait_for(&r2, &["active"]);
    let after = moto.run_calls();
    let calls: BTreeMap<&String, u64> = after
        .iter()
        .map(|(zone, n)| (zone, n - before.get(zone).copied().unwrap_or(0)))
        .filter(|(_, n)| *n > 0)
        .collect();
    eprintln!(
        "zone a out of capacity: RunInstances calls {calls:?}, active in {:.1} s",
        started.elapsed().as_secs_f64()
    );
    assert_eq!(calls.get(&"us-east-1a".to_owned()), Some(&1), "{calls:?}");
    assert_eq!(calls.values().sum::<u64>(), 2, "zone a, then the next: {calls:?}");
    let second = running(&mut moto)[&allocation_ids(&view, "aws")[0]].clone();
    assert!(second.iter().all(|n| n["zone"] != "us-east-1a"), "{second:?}");
    moto.out_of_capacity(&[]);

    // A spot interruption: one of r2's nodes is terminated under it. dibs notices within
    // its watch period, fails the allocation over for the hours left, and buys again.
    let started = Instant::now();
    let victim = second[0]["id"].as_str().unwrap().to_owned();
    assert_eq!(moto.command(&format!("terminate {victim}")), "ok");
    let deadline = Instant::now() + Duration::from_secs(60);
    let view = loop {
        let (_, view) = server.call("GET", &format!("/requests/{r2}"), None);
        let replaced = view["allocations"].as_array().unwrap().iter().any(|a| a["state"] == "active");
        let lost = view["allocations"].as_array().unwrap().iter().any(|a| a["state"] == "cancelled");
        if replaced && lost {
            break view;
        }
        assert!(Instant::now() < deadline, "the interruption was not failed over: {view}");
        std::thread::sleep(Duration::from_millis(250));
    };
    eprintln!(
        "a node terminated under r2: failed over and running again in {:.1} s",
        started.elapsed().as_secs_f64()
    );
    assert!(server.events(&r2).iter().any(|e| e["kind"] == "allocation_lost"), "{view}");

    // Every zone out of capacity: the reservation fails with EC2's codes as evidence and
    // the GPUs go to the next provider the request allows.
    let zones: BTreeSet<String> = moto
        .instances()
        .iter()
        .filter_map(|i| i["zone"].as_str().map(str::to_owned))
        .chain(
            ["us-east-1a", "us-east-1b", "us-east-1c", "us-east-1d", "us-east-1e", "us-east-1f"]
                .map(String::from),
        )
        .collect();
    moto.out_of_capacity(&zones.iter().map(String::as_str).collect::<Vec<_>>());
    let r3 = server.submit(16, &["aws", "gcp"]);
    let deadline = Instant::now() + Duration::from_secs(60);
    let failed = loop {
        let events = server.events(&r3);
        if let Some(failed) = events.iter().find(|e| e["kind"] == "reservation_failed") {
            break failed.clone();
        }
        assert!(Instant::now() < deadline, "no reservation_failed: {events:?}");
        std::thread::sleep(Duration::from_millis(200));
    };
    let reason = failed["body"].to_string();
    assert!(reason.contains("InsufficientInstanceCapacity"), "{reason}");
    let deadline = Instant::now() + Duration::from_secs(30);
    let view = loop {
        let (_, view) = server.call("GET", &format!("/requests/{r3}"), None);
        if !allocation_ids(&view, "gcp").is_empty() {
            break view;
        }
        assert!(Instant::now() < deadline, "never re-marketed to gcp: {view}");
        std::thread::sleep(Duration::from_millis(200));
    };
    assert!(
        view["allocations"]
            .as_array()
            .unwrap()
            .iter()
            .any(|a| a["provider"] == "aws" && a["state"] == "cancelled")
    );
    moto.out_of_capacity(&[]);

    // Cancelling r1 terminates its nodes at EC2, found by tag.
    let before = running(&mut moto).values().map(Vec::len).sum::<usize>();
    let (status, _) = server.call("POST", &format!("/requests/{r1}/cancel"), None);
    assert_eq!(status, 200);
    let deadline = Instant::now() + Duration::from_secs(30);
    while running(&mut moto).contains_key(&aws[0]) {
        assert!(Instant::now() < deadline, "r1's instances still run");
        std::thread::sleep(Duration::from_millis(200));
    }
    let after = running(&mut moto).values().map(Vec::len).sum::<usize>();
    eprintln!("running instances at moto: {before} before the cancellation, {after} after");
    assert_eq!(after, before - 2);
    drop(server);

    // A wrong secret: the banner says aws cannot be used and why; the provider list too.
    let wrong = (key.0.clone(), "not-the-secret".to_owned());
    let server = Server::start(&moto, &wrong, data.path(), &[]);
    let banner = server.banner();
    assert!(banner.contains("warning:    aws cannot be used: credentials refused"), "{banner}");
    assert!(banner.contains(&key.0), "the key id is named: {banner}");
    assert!(!banner.contains("not-the-secret"), "the secret is never shown: {banner}");
    let (_, providers) = server.call("GET", "/providers", None);
    let aws = providers["providers"].as_array().unwrap().iter().find(|p| p["name"] == "aws").unwrap().clone();
    assert_eq!(aws["healthy"], false, "{aws}");
    assert!(aws["problem"].as_str().unwrap().contains("credentials refused"), "{aws}");
}

/// Every request's view, page after page.
fn all_requests(server: &Server) -> Vec<Value> {
    let mut requests = Vec::new();
    let mut after = String::new();
    loop {
        let path = if after.is_empty() {
            "/requests?limit=500".to_owned()
        } else {
            format!("/requests?limit=500&after={after}")
        };
        let (status, page) = server.call("GET", &path, None);
        assert_eq!(status, 200, "{page}");
        requests.extend(page["requests"].as_array().cloned().unwrap_or_default());
        match page["next_after"].as_str() {
            Some(next) => after = next.to_owned(),
            None => return requests,
        }
    }
}

/// `DIBS_EC2_KILLS` (default 5) `kill -9`s of `dibs serve` at random points under a stream of
/// submissions and cancellations; then every open aws allocation owns exactly its nodes at
/// moto, no running instance is owned by no open allocation, no allocation was launched
/// twice, and `dibs ledger verify` passes.
#[test]
fn kill_9_under_load_orphans_and_doubles_no_instance() {
    let Some(mut moto) = Moto::start() else { return };
    moto.launch_template(TEMPLATE);
    let (key, _) = moto.switch_auth_on();
    let data = tempfile::tempdir().unwrap();
    let kills: usize = std::env::var("DIBS_EC2_KILLS").ok().and_then(|k| k.parse().ok()).unwrap_or(5);
    let mut rng = fastrand::Rng::with_seed(20261207);
    let mut submitted: Vec<String> = Vec::new();
    for _ in 0..kills {
        let mut server = Server::start(&moto, &key, data.path(), &[]);
        let until = Instant::now() + Duration::from_millis(rng.u64(300..2500));
        while Instant::now() < until {
            if !submitted.is_empty() && rng.u32(0..3) == 0 {
                let id = &submitted[rng.usize(0..submitted.len())];
                server.call("POST", &format!("/requests/{id}/cancel"), None);
            } else {
                submitted.push(server.submit(8 * rng.u32(1..3), &["aws"]));
            }
            std::thread::sleep(Duration::from_millis(rng.u64(20..120)));
        }
        let _ = server.child.kill();
        let _ = server.child.wait();
    }
    // The last start: its workers finish what the killed ones left (launches, polls,
    // terminations) before the counts are compared.
    let server = Server::start(&moto, &key, data.path(), &[]);
    let deadline = Instant::now() + Duration::from_secs(120);
    let (owned, requests) = loop {
        let requests = all_requests(&server);
        let allocations: Vec<Value> = requests
            .iter()
            .flat_map(|r| r["allocations"].as_array().cloned().unwrap_or_default())
            .filter(|a| a["provider"] == "aws")
            .collect();
        let settled = allocations.iter().all(|a| a["state"] != "reserved" && a["state"] != "held");
        let owned: BTreeMap<String, u64> = allocations
            .iter()
            .filter(|a| a["state"] == "active")
            .map(|a| (a["id"].to_string(), a["nodes"].as_u64().unwrap()))
            .collect();
        let held: BTreeMap<String, u64> = running(&mut moto)
            .into_iter()
            .map(|(allocation, nodes)| (allocation, nodes.len() as u64))
            .collect();
        if settled && held == owned {
            break (owned, requests.len());
        }
        if Instant::now() >= deadline {
            // Only what differs, with each such allocation's state as dibs has it.
            let differs: Vec<String> = owned
                .keys()
                .chain(held.keys())
                .collect::<BTreeSet<_>>()
                .into_iter()
                .filter(|id| owned.get(*id) != held.get(*id))
                .map(|id| {
                    let state = allocations
                        .iter()
                        .find(|a| a["id"].as_u64().map(|n| n.to_string()).as_deref() == Some(id.as_str()))
                        .map(|a| a["state"].clone());
                    format!(
                        "allocation {id}: dibs {:?} ({state:?}), moto runs {:?}",
                        owned.get(id),
                        held.get(id)
                    )
                })
                .collect();
            let unsettled: Vec<String> = allocations
                .iter()
                .filter(|a| a["state"] == "reserved" || a["state"] == "held")
                .map(|a| format!("{} {}", a["id"], a["state"]))
                .collect();
            panic!("after {kills} kills: {differs:?}; not settled: {unsettled:?}");
        }
        std::thread::sleep(Duration::from_millis(500));
    };
    // None launched twice: every instance ever launched for an allocation, ended or not,
    // is one of its nodes.
    let mut launched: BTreeMap<String, u64> = BTreeMap::new();
    for instance in moto.instances() {
        let allocation = instance["tags"]["dibs:allocation"].as_str().unwrap_or("none").to_owned();
        *launched.entry(allocation).or_default() += 1;
    }
    let nodes: BTreeMap<String, u64> = all_requests(&server)
        .iter()
        .flat_map(|r| r["allocations"].as_array().cloned().unwrap_or_default())
        .filter(|a| a["provider"] == "aws")
        .map(|a| (a["id"].to_string(), a["nodes"].as_u64().unwrap()))
        .collect();
    for (allocation, count) in &launched {
        let asked = nodes.get(allocation).copied().unwrap_or(0);
        assert!(*count <= asked, "allocation {allocation}: {count} instances launched for {asked} nodes");
    }
    eprintln!(
        "{kills} kills, {} submissions, {requests} requests: {} allocations own {} nodes at moto; {} instances launched in all",
        submitted.len(),
        owned.len(),
        owned.values().sum::<u64>(),
        launched.values().sum::<u64>()
    );
    drop(server);
    let output = Command::new(DIBS).args(["ledger", "verify", "--data"]).arg(data.path()).output().unwrap();
    assert!(output.status.success(), "{}", String::from_utf8_lossy(&output.stderr));
}

/// A first run's safety: `--aws-dry-run` launches nothing and says so on the allocation
/// (its GPUs go back to the market), and `--max-nodes aws=1` offers no more than one node.
#[test]
fn a_dry_run_launches_nothing_and_a_node_bound_is_kept() {
    let Some(mut moto) = Moto::start() else { return };
    moto.launch_template(TEMPLATE);
    let (key, _) = moto.switch_auth_on();
    let data = tempfile::tempdir().unwrap();
    let server = Server::start(&moto, &key, data.path(), &["--aws-dry-run", "--max-nodes", "aws=1"]);
    assert!(server.banner().contains("dry run: launches nothing"), "{}", server.banner());
    // Two nodes asked, one allowed: aws cannot fill it alone.
    let r1 = server.submit(16, &["aws"]);
    let view = server.wait_for(&r1, &["unfilled"]);
    assert!(view["allocations"].as_array().unwrap().is_empty(), "{view}");
    // One node: awarded, then the dry run says EC2 would have launched it, and nothing ran.
    let r2 = server.submit(8, &["aws"]);
    let deadline = Instant::now() + Duration::from_secs(60);
    let failed = loop {
        if let Some(failed) = server.events(&r2).into_iter().find(|e| e["kind"] == "reservation_failed") {
            break failed;
        }
        assert!(Instant::now() < deadline, "no reservation_failed for the dry run");
        std::thread::sleep(Duration::from_millis(200));
    };
    assert!(failed["body"]["reason"].as_str().unwrap().contains("dry run (--aws-dry-run)"), "{failed}");
    assert!(moto.instances().is_empty(), "a dry run launched {:?}", moto.instances());
}
