//! moto's EC2 server in a child process (`tests/moto_harness.py`), for the tests that need
//! a third-party EC2: this crate's adapter tests and `dibs serve`'s (`crates/dibs/tests/ec2.rs`
//! includes this file by path).
//!
//! The harness runs under the Python named by `DIBS_MOTO_PYTHON` (default: the CI venv's,
//! `/tmp/dibs-ci-venv/bin/python`, when it exists) with `moto[server]==5.2.5` installed.
//! Without it the tests skip with a message, unless `DIBS_REQUIRE_MOTO=1` (CI), where a
//! missing moto fails them.

#![allow(dead_code)]

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, ChildStdout, Command, Stdio};

/// A moto server in a child process, driven through the harness's stdin.
pub struct Moto {
    child: Child,
    stdin: ChildStdin,
    stdout: BufReader<ChildStdout>,
    pub endpoint: String,
}

impl Moto {
    /// A fresh server, or `None` (after saying why) when moto is not installed and not required.
    pub fn start() -> Option<Self> {
        let python = python();
        let harness = harness_path();
        let installed = Command::new(&python)
            .args(["-c", "import moto.server"])
            .output()
            .is_ok_and(|out| out.status.success());
        if !installed {
            let why =
                format!("moto is not importable by {} (pip install 'moto[server]==5.2.5')", python.display());
            assert!(
                std::env::var("DIBS_REQUIRE_MOTO").as_deref() != Ok("1"),
                "DIBS_REQUIRE_MOTO=1 but {why}"
            );
            eprintln!("skipping: {why}");
            return None;
        }
        let mut child = Command::new(&python)
            .arg(&harness)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()
            .expect("the moto harness starts");
        let stdin = child.stdin.take().expect("piped stdin");
        let mut stdout = BufReader::new(child.stdout.take().expect("piped stdout"));
        let mut first = String::new();
        stdout.read_line(&mut first).expect("the harness prints its endpoint");
        let ready: serde_json::Value = serde_json::from_str(&first).expect("the first line is JSON");
        let endpoint = ready["endpoint"].as_str().expect("an endpoint").to_owned();
        Some(Self { child, stdin, stdout, endpoint })
    }

    pub fn command(&mut self, line: &str) -> String {
        writeln!(self.stdin, "{line}").expect("the harness reads commands");
        let mut answer = String::new();
        self.stdout.read_line(&mut answer).expect("the harness answers");
        answer.trim().to_owned()
    }

    /// RunInstances in these zones answers InsufficientInstanceCapacity.
    pub fn out_of_capacity(&mut self, zones: &[&str]) {
        assert_eq!(self.command(&format!("ice {}", zones.join(" "))), "ok");
    }

    /// RunInstances calls moto received, by zone.
    pub fn run_calls(&mut self) -> BTreeMap<String, u64> {
        serde_json::from_str(&self.command("calls")).expect("calls are a JSON object")
    }

    /// The next `calls` RunInstances calls answer RequestLimitExceeded.
    pub fn throttle(&mut self, calls: u32) {
        assert_eq!(self.command(&format!("throttle {calls}")), "ok");
    }

    /// Creates a launch template holding an image id; its id.
    pub fn launch_template(&mut self, name: &str) -> String {
        self.command(&format!("template {name}"))
    }

    /// Switches signature checks on; the keys (id, secret) of a user allowed everything,
    /// and of one allowed only `ec2:Describe*`.
    pub fn switch_auth_on(&mut self) -> ((String, String), (String, String)) {
        let keys: serde_json::Value = serde_json::from_str(&self.command("auth")).expect("keys are JSON");
        let key = |name: &str| keys[name].as_str().expect("a key or secret").to_owned();
        (
            (key("access_key_id"), key("secret_access_key")),
            (key("describe_only_key_id"), key("describe_only_secret")),
        )
    }

    /// Every instance moto holds (id, region, zone, state, tags), read from its backend.
    pub fn instances(&mut self) -> Vec<serde_json::Value> {
        serde_json::from_str(&self.command("instances")).expect("instances are a JSON list")
    }
}

impl Drop for Moto {
    fn drop(&mut self) {
        let _ = writeln!(self.stdin, "quit");
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn python() -> PathBuf {
    match std::env::var_os("DIBS_MOTO_PYTHON") {
        Some(python) => PathBuf::from(python),
        None => {
            let venv = PathBuf::from("/tmp/dibs-ci-venv/bin/python");
            if venv.exists() { venv } else { PathBuf::from("python3") }
        }
    }
}

/// The harness beside this file: `file!()` is relative to the workspace root, and every
/// crate that includes this file lies two folders below it.
fn harness_path() -> PathBuf {
    let this = Path::new(env!("CARGO_MANIFEST_DIR")).join("../..").join(file!());
    this.parent().and_then(Path::parent).map(|tests| tests.join("moto_harness.py")).expect("a tests folder")
}
