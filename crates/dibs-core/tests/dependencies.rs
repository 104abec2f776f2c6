//! `dibs-core` is the deterministic, I/O-free engine: it must not grow an
//! async runtime, a database driver or an HTTP stack, not even transitively.
//! Those belong to the shells (`dibs-store`, `dibs-server`, `dibs-providers`).

use std::process::Command;

/// Crate names (or prefixes followed by `-`/`_`) that do not belong in the engine.
const FORBIDDEN: &[&str] = &[
    "tokio",
    "async-std",
    "smol",
    "futures",
    "mio",
    "sqlx",
    "rusqlite",
    "libsqlite3-sys",
    "postgres",
    "tokio-postgres",
    "diesel",
    "sea-orm",
    "hyper",
    "reqwest",
    "axum",
    "actix-web",
    "ureq",
    "http",
    "h2",
    "tower",
    "rustls",
    "openssl",
];

fn is_forbidden(name: &str) -> Option<&'static str> {
    FORBIDDEN.iter().copied().find(|f| {
        name == *f || name.strip_prefix(f).is_some_and(|rest| rest.starts_with('-') || rest.starts_with('_'))
    })
}

#[test]
fn dibs_core_has_no_async_database_or_http_dependency() {
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let output = Command::new(cargo)
        .args(["tree", "--offline", "-p", "dibs-core", "-e", "normal", "--prefix", "none", "--format", "{p}"])
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .output()
        .expect("cargo tree runs");
    assert!(output.status.success(), "cargo tree failed: {}", String::from_utf8_lossy(&output.stderr));
    let tree = String::from_utf8(output.stdout).expect("utf-8");
    let names: Vec<&str> = tree.lines().filter_map(|l| l.split_whitespace().next()).collect();
    assert!(names.contains(&"dibs-core") && names.len() > 5, "unexpected cargo tree output:\n{tree}");
    let offenders: Vec<String> =
        names.iter().filter_map(|n| is_forbidden(n).map(|f| format!("{n} (matches {f})"))).collect();
    assert!(offenders.is_empty(), "dibs-core must stay I/O-free, but depends on: {offenders:?}");
}

#[test]
fn the_forbidden_list_matches_what_it_should() {
    assert_eq!(is_forbidden("tokio"), Some("tokio"));
    assert_eq!(is_forbidden("tokio-postgres"), Some("tokio"));
    assert_eq!(is_forbidden("http-body"), Some("http"));
    assert_eq!(is_forbidden("httparse"), None);
    assert_eq!(is_forbidden("serde"), None);
}
