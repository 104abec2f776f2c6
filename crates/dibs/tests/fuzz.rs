//! Schemathesis (PyPI) against the real `dibs serve`: it reads the served OpenAPI
//! document and sends what it generates from it (valid and invalid bodies, parameters and
//! headers, and sequences of calls) with every check on: no 5xx, only documented statuses
//! and content types, answers that match their schemas, invalid data rejected, valid data
//! accepted, missing auth refused. `schemathesis.toml` beside this file says where 422 is
//! the right answer to schema-valid data, and why.
//!
//! Needs the `schemathesis` command in `DIBS_SCHEMATHESIS`; without it the test says so
//! and passes, unless `DIBS_REQUIRE_FUZZ=1` (as `.ci/run` sets), when it fails. Bounded by
//! `DIBS_FUZZ_SECONDS` (default 120) and 25 cases per operation and phase; the seed is
//! fixed (`DIBS_FUZZ_SEED` to change it). lambda is a pull provider there, so its token
//! reaches the answer endpoint's checks.

use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::Duration;

const TOKEN: &str = "fuzz-admin-token";

#[test]
fn schemathesis_finds_nothing_against_the_real_server() {
    let Some(schemathesis) = std::env::var_os("DIBS_SCHEMATHESIS") else {
        let message = "skipped: set DIBS_SCHEMATHESIS to a schemathesis command (pip install schemathesis)";
        assert!(std::env::var("DIBS_REQUIRE_FUZZ").as_deref() != Ok("1"), "DIBS_REQUIRE_FUZZ=1: {message}");
        eprintln!("{message}");
        return;
    };
    let data = tempfile::tempdir().unwrap();
    let mut server = Command::new(env!("CARGO_BIN_EXE_dibs"))
        .args(["serve", "--listen", "127.0.0.1:0", "--provider", "lambda=pull", "--data"])
        .arg(data.path())
        .env("DIBS_ADMIN_TOKEN", TOKEN)
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("dibs serve starts");
    let mut lines = BufReader::new(server.stdout.take().unwrap()).lines();
    let api = loop {
        let line = lines.next().expect("dibs serve prints its URL").unwrap();
        if let Some(url) = line.strip_prefix("dibs serving on ") {
            break url.trim().to_owned();
        }
    };
    // Drain the rest of its output so it never blocks on a full pipe.
    std::thread::spawn(move || lines.for_each(drop));
    let agent: ureq::Agent = ureq::Agent::config_builder()
        .http_status_as_error(false)
        .timeout_global(Some(Duration::from_secs(30)))
        .build()
        .into();
    let created: serde_json::Value = agent
        .post(format!("{api}/tokens"))
        .header("Authorization", format!("Bearer {TOKEN}"))
        .send_json(serde_json::json!({ "role": "provider:lambda" }))
        .unwrap()
        .body_mut()
        .read_json()
        .unwrap();
    let provider_token = created["token"].as_str().expect("a provider token").to_owned();

    let seconds = std::env::var("DIBS_FUZZ_SECONDS").unwrap_or_else(|_| "120".into());
    let seed = std::env::var("DIBS_FUZZ_SEED").unwrap_or_else(|_| "20261202".into());
    let config = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/schemathesis.toml");
    let output = Command::new(&schemathesis)
        .arg("--config-file")
        .arg(&config)
        .args(["run", &format!("{api}/openapi.json")])
        .args(["--checks", "all", "--max-examples", "25", "--max-time", &seconds, "--seed", &seed])
        .args(["--workers", "2", "--no-color"])
        .env("DIBS_FUZZ_TOKEN", TOKEN)
        .env("DIBS_FUZZ_PROVIDER_TOKEN", &provider_token)
        .current_dir(data.path())
        .output()
        .expect("schemathesis runs");
    let report = String::from_utf8_lossy(&output.stdout);
    let summary: Vec<&str> = report.lines().skip_while(|l| !l.contains("SUMMARY")).collect();
    println!("{}", summary.join("\n"));

    // Whatever it sent, the ledger is whole and the server still answers.
    let verified: serde_json::Value = agent
        .get(format!("{api}/ledger/verify"))
        .header("Authorization", format!("Bearer {TOKEN}"))
        .call()
        .expect("the server still answers")
        .body_mut()
        .read_json()
        .unwrap();
    let _ = server.kill();
    let _ = server.wait();
    assert!(
        output.status.success(),
        "schemathesis found failures:\n{report}\n{}",
        String::from_utf8_lossy(&output.stderr)
    );
    assert_eq!(verified["ok"], true, "{verified}");
}
