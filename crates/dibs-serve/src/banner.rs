//! What `dibs serve` prints when it starts: what it loaded, where to look, and what to
//! try next. A newcomer reads this once; an operator reads it in a log after a restart.

use std::fmt::{self, Write as _};

use dibs_core::contract::{ContractSet, TermsInForce};
use dibs_core::types::Timestamp;

use crate::clock::ClockInfo;

/// Everything the start banner says.
pub struct Banner {
    /// `http://ADDRESS`, without a path.
    pub base_url: String,
    /// Where the ledger is: the data folder or the PostgreSQL schema.
    pub storage: String,
    /// What replay found: entries, inputs, requests, timers re-armed.
    pub replayed: String,
    /// Where the contracts came from: `the embedded default set` or the paths given.
    pub contracts_from: String,
    /// The clauses in force at `now`, one line per contract and one for the policy.
    pub in_force: Vec<String>,
    /// Each provider and how it is reached.
    pub providers: Vec<(String, String)>,
    /// How the in-process first-refusal holder answers (`--holder`).
    pub holder: String,
    /// Where the catalog came from, and how many offers it gave.
    pub catalog: String,
    /// Catalog providers with no contract on file that may win market awards.
    pub uncontracted: Vec<dibs_core::types::ProviderName>,
    /// What needs the operator: a cloud's orphaned instances, a provider that cannot be used.
    pub warnings: Vec<String>,
    pub clock: ClockInfo,
    /// The admin token when it was made at this start (shown once), else `None`.
    pub new_admin_token: Option<String>,
    /// Whether the admin token comes from `DIBS_ADMIN_TOKEN`.
    pub admin_token_from_env: bool,
    /// What to type to run dibs: `dibs` when the running program is the one on PATH, else
    /// its path (`target/release/dibs` after `cargo run --release`).
    pub program: String,
}

/// One line per contract in force at `at` (its version and clauses), then the policy's rules.
pub fn in_force_lines(set: &ContractSet, at: Timestamp) -> Vec<String> {
    let terms: TermsInForce<'_> = set.in_force(at, &[]);
    let mut lines = Vec::new();
    for contract in &set.contracts {
        let Some(version) = contract.version_at(at) else {
            lines.push(format!("{}: no version in force", contract.id));
            continue;
        };
        let clauses: Vec<String> = version
            .clauses
            .iter()
            .map(|clause| {
                let detail = terms
                    .first_refusals
                    .iter()
                    .find(|c| c.contract == contract.id && c.clause == clause.name)
                    .map(|c| {
                        format!(
                            " ({}, {}, {} h window)",
                            c.terms.holder,
                            c.terms.mode.as_str(),
                            c.terms.window_hours
                        )
                    })
                    .unwrap_or_default();
                format!("{} {}{detail}", clause.kind.name(), clause.name)
            })
            .collect();
        let clauses = if clauses.is_empty() { "no clauses".to_owned() } else { clauses.join(", ") };
        lines.push(format!("{}@{}: {clauses}", contract.id, version.id));
    }
    let policy = &set.policy;
    let mut rules: Vec<String> = Vec::new();
    for d in &policy.diversification {
        let basis = if d.basis == dibs_core::contract::ShareBasis::Gpus { "GPUs" } else { "spend" };
        let scope = if d.scope.workloads.is_empty() {
            "every workload".to_owned()
        } else {
            d.scope.workloads.iter().map(|w| w.as_str()).collect::<Vec<_>>().join(", ")
        };
        if d.max_share < 1.0 {
            rules.push(format!("at most {:.0}% of {scope} {basis} per provider", d.max_share * 100.0));
        }
        // A minimum of providers makes a request smaller than that many blocks unfillable:
        // say it up front.
        for (class, k) in &d.min_providers {
            rules.push(format!("at least {k} providers per {} request", class.as_str()));
        }
    }
    if !policy.price_ceilings.is_empty() {
        rules.push(format!("price ceilings for {} accelerators", policy.price_ceilings.len()));
    }
    if !rules.is_empty() {
        lines.push(format!("policy: {}", rules.join(", ")));
    }
    lines
}

impl fmt::Display for Banner {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // The first line is the one scripts and tests wait for; keep its form.
        writeln!(f, "dibs serving on {}/v1", self.base_url)?;
        writeln!(f, "  dashboard:  {}/", self.base_url)?;
        writeln!(f, "  ledger:     {} ({})", self.storage, self.replayed)?;
        writeln!(f, "  contracts:  {}, in force now:", self.contracts_from)?;
        for line in &self.in_force {
            writeln!(f, "                {line}")?;
        }
        let mut providers = String::new();
        for (i, (name, reached)) in self.providers.iter().enumerate() {
            let separator = if i == 0 { "" } else { ", " };
            let _ = write!(providers, "{separator}{name} ({reached})");
        }
        writeln!(f, "  providers:  {providers}; the in-process holder answers {}", self.holder)?;
        writeln!(f, "  catalog:    {}", self.catalog)?;
        if !self.uncontracted.is_empty() {
            writeln!(f, "  warning:    {}", dibs_core::contract::uncontracted_warning(&self.uncontracted))?;
        }
        for warning in &self.warnings {
            writeln!(f, "  warning:    {warning}")?;
        }
        if self.clock.speed == 1.0 {
            write!(f, "  clock:      real time")?;
        } else {
            write!(
                f,
                "  clock:      demo, {}x the wall clock (a real second is {} of the service's)",
                self.clock.speed,
                human_seconds(self.clock.speed)
            )?;
        }
        if self.clock.ahead_seconds > 0 {
            write!(
                f,
                "; resumed at {}, {} ahead of the wall clock (the ledger's last instant)",
                self.clock.started_at,
                human_seconds(self.clock.ahead_seconds as f64)
            )?;
        }
        writeln!(f)?;
        match (&self.new_admin_token, self.admin_token_from_env) {
            (Some(token), _) => {
                writeln!(f, "  admin token (shown once; `dibs token reset` makes a new one): {token}")?;
                writeln!(f)?;
                writeln!(f, "  export DIBS_TOKEN={token}")?;
            }
            (None, true) => writeln!(f, "  admin token: DIBS_ADMIN_TOKEN")?,
            (None, false) => writeln!(
                f,
                "  admin token: the one printed at first start (lost it? `dibs token reset --help`)"
            )?,
        }
        writeln!(
            f,
            "  try:        {} request submit --gpus 64 --hours 24 --server {}",
            self.program, self.base_url
        )?;
        if self.program != "dibs" {
            writeln!(
                f,
                "              (dibs is not on your PATH; `cargo install --path crates/dibs` puts it there)"
            )?;
        }
        writeln!(f, "              then open {}/ and log in with the admin token", self.base_url)
    }
}

/// Seconds as a short human duration: `45 s`, `12 min`, `3 h`, `2.5 days`.
fn human_seconds(seconds: f64) -> String {
    if seconds < 90.0 {
        format!("{seconds:.0} s")
    } else if seconds < 3600.0 {
        format!("{:.0} min", seconds / 60.0)
    } else if seconds < 2.0 * 86_400.0 {
        format!("{:.0} h", seconds / 3600.0)
    } else {
        format!("{:.1} days", seconds / 86_400.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn check(set_name: &str, at: &str, expected: &[&str]) {
        let texts = dibs_core::contract::builtin_contract_texts(set_name).unwrap();
        let set = dibs_core::contract::contract_set_from_texts(&texts).unwrap();
        let lines = in_force_lines(&set, Timestamp::parse(at).unwrap());
        assert_eq!(lines, expected);
    }

    #[test]
    fn the_banner_names_each_contract_s_clauses_in_force() {
        check(
            "default",
            "2026-06-01",
            &[
                "aws-msa@msa-2024: no clauses",
                "azure-primary@2026-terms: first_refusal rofr-new-capacity (azure, offer-first, 72 h window), exclusivity api-exclusive, revenue_share revenue-share, review_trigger agi-review",
                "gcp-msa@msa-2024: no clauses",
                "lambda-msa@msa-2024: no clauses",
                "nebius-msa@msa-2024: no clauses",
                "oci-msa@msa-2024: no clauses",
                "policy: at most 40% of training GPUs per provider, at least 2 providers per inference request, price ceilings for 5 accelerators",
            ],
        );
    }

    #[test]
    fn durations_read_as_people_say_them() {
        let said: Vec<String> =
            [45.0, 720.0, 3600.0, 3600.0 * 3.0, 86_400.0 * 2.5].map(human_seconds).to_vec();
        assert_eq!(said, ["45 s", "12 min", "1 h", "3 h", "2.5 days"]);
    }
}
