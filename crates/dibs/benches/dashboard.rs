//! How long the dashboard's pages take to render server-side with 10,000 requests in the
//! store, beside the JSON API's list and show measured in the same run.
//!
//! Starts the real binary (`dibs serve`, SQLite, the embedded default, a demo clock at a
//! simulated day per second, so the requests' allocations become ready, run for 1 to 20
//! days and end while more arrive, and the fleet has a history), submits the requests over HTTP from
//! a few threads, waits until none is still being decided, then fetches every page a number
//! of times. For a page the figure is its `Server-Timing: render;dur=MS` header (from the
//! handler's start to its body, the broker round trip included); for the API baseline, which
//! sends no such header, the wall time of the call on loopback, which is an upper bound on
//! its server-side time. Prints p50 and p95 of each, and each page's p50 over the baseline's.
//!
//! `cargo bench -p dibs --bench dashboard`; `DIBS_BENCH_REQUESTS` overrides the 10,000.

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::{Value, json};

const DIBS: &str = env!("CARGO_BIN_EXE_dibs");
const TOKEN: &str = "bench-admin-token";
/// Requests in the store, unless `DIBS_BENCH_REQUESTS` says otherwise.
const REQUESTS: usize = 10_000;
/// Threads submitting.
const SUBMITTERS: usize = 4;
/// Fetches of each page measured (after one warm-up).
const SAMPLES: usize = 30;
/// How long the store may take to settle after the last submission.
const SETTLE: Duration = Duration::from_secs(600);

fn agent() -> ureq::Agent {
    ureq::Agent::config_builder()
        .http_status_as_error(false)
        .max_redirects(0)
        .timeout_global(Some(Duration::from_secs(60)))
        .build()
        .into()
}

fn percentile(sorted: &[f64], p: f64) -> f64 {
    sorted[((sorted.len() - 1) as f64 * p).round() as usize]
}

fn main() {
    let requests: usize =
        std::env::var("DIBS_BENCH_REQUESTS").ok().and_then(|n| n.parse().ok()).unwrap_or(REQUESTS);
    let data = tempfile::tempdir().unwrap();
    let mut child = Command::new(DIBS)
        .args(["serve", "--listen", "127.0.0.1:0", "--holder", "rate:0.3", "--time-speed", "86400", "--data"])
        .arg(data.path())
        .env("DIBS_ADMIN_TOKEN", TOKEN)
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    // Read everything the server prints (a closed pipe would stop it), keeping the first line.
    let stdout = child.stdout.take().unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            let _ = tx.send(line);
        }
    });
    let first = rx.recv_timeout(Duration::from_secs(60)).unwrap();
    let url = first.strip_prefix("dibs serving on ").unwrap().trim_end_matches("/v1").to_owned();

    let started = Instant::now();
    let submitters: Vec<_> = (0..SUBMITTERS)
        .map(|t| {
            let url = url.clone();
            std::thread::spawn(move || {
                let agent = agent();
                let workloads = ["training", "inference", "batch", "training"];
                for n in (t..requests).step_by(SUBMITTERS) {
                    let body = json!({
                        "accelerators": ["H100"],
                        "gpus": 8 * (1 + n % 4),
                        "duration_hours": 24 + (n % 20) * 24,
                        "workload": workloads[n % workloads.len()],
                    });
                    let response = agent
                        .post(format!("{url}/v1/requests"))
                        .header("Authorization", format!("Bearer {TOKEN}"))
                        .send_json(&body)
                        .unwrap();
                    assert_eq!(response.status().as_u16(), 201);
                }
            })
        })
        .collect();
    for s in submitters {
        s.join().unwrap();
    }
    let submitted = started.elapsed();
    // Wait until nothing is being decided.
    let deadline = Instant::now() + SETTLE;
    let stats = loop {
        let mut response = agent()
            .get(format!("{url}/v1/stats"))
            .header("Authorization", format!("Bearer {TOKEN}"))
            .call()
            .unwrap();
        let stats: Value = response.body_mut().read_json().unwrap();
        let deciding: u64 = ["screening", "first_refusal", "market"]
            .iter()
            .filter_map(|s| stats["requests"][s].as_u64())
            .sum();
        if deciding == 0 || Instant::now() > deadline {
            break stats;
        }
        std::thread::sleep(Duration::from_millis(500));
    };
    let (length, _) = {
        let mut store = dibs_store::SqliteStore::open(&data.path().join("ledger.db")).unwrap();
        dibs_store::Store::head(&mut store).unwrap()
    };
    println!(
        "{requests} requests submitted in {:.1?}; {length} ledger entries; by status {}",
        submitted, stats["requests"]
    );

    let login = agent().post(format!("{url}/login")).send_form([("token", TOKEN)]).unwrap();
    let cookie =
        login.headers().get("set-cookie").unwrap().to_str().unwrap().split(';').next().unwrap().to_owned();
    let middle = format!("r-{}", requests / 2);
    let pages = [
        "/requests".to_owned(),
        "/requests?state=released".to_owned(),
        "/requests?workload=inference&provider=lambda".to_owned(),
        "/requests?sort=cost".to_owned(),
        "/requests?q=lambda%20h100&sort=gpus".to_owned(),
        "/requests?state=released&sort=oldest&skip=1000".to_owned(),
        "/requests.csv".to_owned(),
        format!("/requests/{middle}"),
        "/fleet".to_owned(),
        "/contracts".to_owned(),
        "/ledger".to_owned(),
        format!("/ledger?request={middle}"),
        "/providers/lambda".to_owned(),
    ];
    let baselines = [
        "/v1/requests?limit=100".to_owned(),
        format!("/v1/requests?limit=100&after={middle}"),
        format!("/v1/requests/{middle}"),
    ];

    // One round of every URL as warm-up, then the samples interleaved.
    let mut server_ms: Vec<Vec<f64>> = vec![Vec::new(); pages.len()];
    let mut wall_ms: Vec<Vec<f64>> = vec![Vec::new(); pages.len() + baselines.len()];
    let mut bytes = vec![0usize; pages.len() + baselines.len()];
    for round in 0..=SAMPLES {
        for (i, path) in pages.iter().chain(&baselines).enumerate() {
            let is_page = i < pages.len();
            let request = agent().get(format!("{url}{path}"));
            let request = if is_page {
                request.header("Cookie", &cookie)
            } else {
                request.header("Authorization", format!("Bearer {TOKEN}"))
            };
            let begun = Instant::now();
            let mut response = request.call().unwrap();
            let body = response.body_mut().read_to_string().unwrap();
            let wall = begun.elapsed().as_secs_f64() * 1000.0;
            assert_eq!(response.status().as_u16(), 200, "{path}");
            if round == 0 {
                continue;
            }
            bytes[i] = body.len();
            wall_ms[i].push(wall);
            if is_page {
                let timing = response.headers().get("server-timing").unwrap().to_str().unwrap();
                let ms: f64 = timing.trim_start_matches("render;dur=").parse().unwrap();
                server_ms[i].push(ms);
            }
        }
    }
    for samples in server_ms.iter_mut().chain(wall_ms.iter_mut()) {
        samples.sort_by(f64::total_cmp);
    }
    let baseline_p50 = percentile(&wall_ms[pages.len()], 0.5);
    println!(
        "\n{:<48} {:>9} {:>9} {:>9} {:>9} {:>9}",
        "page", "srv p50", "srv p95", "wall p50", "KiB", "/ list"
    );
    for (i, path) in pages.iter().enumerate() {
        let p50 = percentile(&server_ms[i], 0.5);
        println!(
            "{:<48} {:>7.2}ms {:>7.2}ms {:>7.2}ms {:>9.1} {:>8.1}x",
            path,
            p50,
            percentile(&server_ms[i], 0.95),
            percentile(&wall_ms[i], 0.5),
            bytes[i] as f64 / 1024.0,
            p50 / baseline_p50
        );
    }
    println!("baseline: the JSON API on the same store (wall time on loopback)");
    for (j, path) in baselines.iter().enumerate() {
        let i = pages.len() + j;
        println!(
            "{:<48} {:>9} {:>9} {:>7.2}ms {:>9.1}",
            path,
            "",
            "",
            percentile(&wall_ms[i], 0.5),
            bytes[i] as f64 / 1024.0
        );
    }
    let _ = child.kill();
    let _ = child.wait();
}
