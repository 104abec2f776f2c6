//! `dibs place` on the shared SkyPilot catalogs: the cases of issue 10, from the outside.
//! Skips, saying so, when `../shared/data` is not beside the project.

use std::path::Path;
use std::process::Command;

use serde_json::Value;

const CATALOGS: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../../../shared/data/catalogs/skypilot-v8");
const HISTORICAL: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../../examples/contracts/historical");

/// Runs `dibs place --json` on the shared catalogs; `None` when they are absent.
fn place(args: &[&str]) -> Option<(i32, Value, String)> {
    if !Path::new(CATALOGS).is_dir() {
        eprintln!("skipping: the shared catalogs at {CATALOGS} were not found");
        return None;
    }
    let out = Command::new(env!("CARGO_BIN_EXE_dibs"))
        .args(["place", "--json", "--catalog", CATALOGS])
        .args(args)
        .output()
        .expect("run dibs");
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    let json = serde_json::from_slice(&out.stdout).unwrap_or(Value::Null);
    Some((out.status.code().unwrap_or(-1), json, stderr))
}

fn allocations(report: &Value) -> &Vec<Value> {
    report["award"]["allocations"].as_array().expect("allocations")
}

#[test]
fn an_eight_gpu_block_is_one_eight_gpu_node_not_eight_vms() {
    let Some((code, report, stderr)) =
        place(&["--accelerator", "H100", "--gpus", "8", "--block", "8", "--hours", "10"])
    else {
        return;
    };
    assert_eq!(code, 0, "{stderr}");
    let awarded = allocations(&report);
    assert_eq!(awarded.len(), 1, "{awarded:?}");
    assert_eq!((awarded[0]["nodes"].as_u64(), awarded[0]["gpus_per_node"].as_u64()), (Some(1), Some(8)));
    // The 1-GPU VMs that are cheaper per GPU lost, and say why.
    let hyperbolic = report["losing_offers"]
        .as_array()
        .unwrap()
        .iter()
        .find(|o| o["offer"].as_str().unwrap().starts_with("hyperbolic/default/1x-H100"))
        .expect("hyperbolic's 1-GPU VM is among the losing offers");
    assert!(hyperbolic["reason"].as_str().unwrap().contains("cannot hold a block of 8 GPUs"), "{hyperbolic}");
}

#[test]
fn gcp_nodes_are_priced_with_their_host_vm() {
    let Some((code, report, stderr)) = place(&[
        "--accelerator",
        "A100",
        "--gpus",
        "8",
        "--hours",
        "1",
        "--providers",
        "gcp",
        "--regions",
        "gcp/us-central1",
    ]) else {
        return;
    };
    assert_eq!(code, 0, "{stderr}");
    let a = &allocations(&report)[0];
    assert_eq!(a["instance_type"], "a2-highgpu-8g");
    // SkyPilot: a2-highgpu-8g $5.91582 + A100:8 $23.47126 in us-central1.
    assert!((a["price_per_node_hour"].as_f64().unwrap() - 29.38708).abs() < 1e-4, "{a}");
}

#[test]
fn a_bare_region_several_providers_use_is_an_error_naming_them() {
    let Some((code, _, stderr)) =
        place(&["--accelerator", "H100", "--gpus", "8", "--hours", "1", "--regions", "us-east-1"])
    else {
        return;
    };
    assert_eq!(code, 2);
    assert!(
        stderr.contains(
            "--regions: region \"us-east-1\" is ambiguous: write one of aws/us-east-1, lambda/us-east-1"
        ),
        "{stderr}"
    );
    let Some((code, report, stderr)) =
        place(&["--accelerator", "H100", "--gpus", "8", "--hours", "1", "--regions", "aws/us-east-1"])
    else {
        return;
    };
    assert_eq!(code, 0, "{stderr}");
    assert!(allocations(&report).iter().all(|a| a["provider"] == "aws" && a["region"] == "us-east-1"));
}

/// Issue 10's oracle case: under the 2025 amendment's $250B credit azure costs nothing, and
/// the minimum of two inference providers adds the cheapest other node: $5,760 beyond the credit.
#[test]
fn the_credit_and_the_minimum_of_providers_give_the_optimal_award() {
    let Some((code, report, stderr)) = place(&[
        "--accelerator",
        "H100",
        "--gpus",
        "512",
        "--hours",
        "720",
        "--workload",
        "inference",
        "--contracts",
        HISTORICAL,
        "--at",
        "2025-11-01",
    ]) else {
        return;
    };
    assert_eq!(code, 0, "{stderr}");
    let effective = report["award"]["effective_cost_usd"].as_f64().unwrap();
    assert!((effective - 5760.0).abs() < 1e-6, "effective cost {effective}: {}", report["award"]);
    assert_eq!(report["optimality"], "proven");
    let providers: Vec<&str> = allocations(&report).iter().map(|a| a["provider"].as_str().unwrap()).collect();
    assert!(providers.contains(&"azure") && providers.len() >= 2, "{providers:?}");
}

#[test]
fn invalid_contract_files_exit_1_as_the_readme_says() {
    let folder = tempfile::tempdir().unwrap();
    std::fs::write(folder.path().join("broken.toml"), "[contract]\nid = 5\n").unwrap();
    let Some((code, _, stderr)) = place(&[
        "--accelerator",
        "H100",
        "--gpus",
        "8",
        "--hours",
        "1",
        "--contracts",
        folder.path().to_str().unwrap(),
    ]) else {
        return;
    };
    assert_eq!(code, 1, "{stderr}");
    assert!(stderr.starts_with("error: ") && stderr.contains("broken.toml:2:6: "), "{stderr}");
}

#[test]
fn unknown_names_are_refused_with_the_known_ones() {
    let Some((code, _, stderr)) = place(&["--accelerator", "H101", "--gpus", "8", "--hours", "1"]) else {
        return;
    };
    assert_eq!(code, 2);
    assert!(stderr.contains("--accelerator: unknown accelerator \"H101\"; known: "), "{stderr}");
    let Some((code, _, stderr)) =
        place(&["--accelerator", "H100", "--gpus", "8", "--hours", "1", "--providers", "azrue"])
    else {
        return;
    };
    assert_eq!(code, 2);
    assert!(stderr.contains("--providers: unknown provider \"azrue\"; known: aws, azure, gcp"), "{stderr}");
}

#[test]
fn providers_with_no_contract_on_file_are_named_before_they_win() {
    let Some((_, _, stderr)) = place(&["--accelerator", "H100", "--gpus", "8", "--hours", "10"]) else {
        return;
    };
    // The default contracts cover aws, azure, gcp, lambda, nebius and oci; the shared
    // catalogs sell more.
    let warning =
        stderr.lines().find(|l| l.contains("no contract on file with")).unwrap_or_else(|| panic!("{stderr}"));
    assert!(warning.contains("mithril") && warning.contains("vast") && !warning.contains("aws"), "{warning}");
}

#[test]
fn a_bad_supply_file_is_said_once_and_the_help_keeps_its_example_as_written() {
    let dir = tempfile::tempdir().unwrap();
    let supply = dir.path().join("supply.toml");
    std::fs::write(&supply, "[[supply]]\nprovider = \"aws\"\nnodes = \"x\"\n").unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_dibs"))
        .args(["catalog", "check", "--supply"])
        .arg(&supply)
        .output()
        .unwrap();
    let said = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "{said}");
    assert_eq!(said.matches("invalid type").count(), 1, "said once: {said}");
    assert!(said.contains("supply.toml:3:9"), "{said}");
    let help =
        Command::new(env!("CARGO_BIN_EXE_dibs")).args(["catalog", "check", "--help"]).output().unwrap();
    let help = String::from_utf8_lossy(&help.stdout);
    assert!(help.contains("\n  [[supply]]\n  provider = \"aws\""), "the example keeps its lines:\n{help}");
}
