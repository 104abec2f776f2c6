//! The contract file format and its parser.
//!
//! One TOML file holds one contract; the buyer's own policy lives in a file of
//! its own (`policy.toml`, or any file whose top table is `[policy]`). A full
//! contract, the primary provider of the historical example set:
//!
//! ```toml
//! [contract]
//! id = "azure-primary"            # unique across a contract set
//! counterparty = "azure"          # a provider name
//! parties = ["buyer", "azure"]    # optional; must include the counterparty
//!
//! [[version]]                     # one table per version; amendments are versions
//! id = "2019-original"
//! effective = 2019-07-22          # a TOML date (midnight UTC) or offset date-time
//! expires = 2025-10-28            # the first instant the version is no longer in force
//!
//! [[version.first_refusal]]
//! name = "rofr-new-capacity"      # clause names are unique within a version
//! holder = "azure"
//! mode = "offer-first"            # or "match"
//! no_better_terms = "show-terms"  # offer-first only, and required there: after a decline, a
//!                                 # pricier market award goes back to the holder showing the
//!                                 # market's terms (price and GPUs, never who offered them or
//!                                 # any other quote); or "hold-market": nothing is shown and
//!                                 # the market is held to the price the holder declined
//! window_hours = 72               # 1 to 8760
//! covers_spillover = true
//! covers_failover = false
//! scope = { workloads = ["training", "inference", "batch"], accelerators = [], regions = [] }
//!
//! [[version.exclusivity]]
//! name = "api-exclusive"
//! holder = "azure"
//! workloads = ["api"]             # at least one workload class
//! emergency_release = false
//!
//! [[version.revenue_share]]
//! name = "revenue-share"
//! partner = "azure"
//! rate = 0.20                     # 0 to 1
//! products = ["api", "chat"]
//!
//! [[version.review_trigger]]
//! name = "agi-review"
//! condition = 'metrics.cumulative_profit >= 100e9 && "agi_declared" in events'
//! action = "flag_for_review"      # or "suspend_clauses", with clauses = [...] and from = DATE
//!
//! [[version]]
//! id = "2025-amendment"
//! effective = 2025-10-28
//! expires = 2030-12-31
//!
//! [[version.commitment]]
//! name = "azure-250b"
//! provider = "azure"
//! amount = 250e9                  # more than 0
//! currency = "USD"                # three capital letters
//! period_start = 2025-10-28
//! period_end = 2030-12-31
//! counts = []                     # workload classes whose spend counts; empty = all
//!
//! [[version.diversification]]
//! name = "training-cap"
//! max_share = 0.4                 # more than 0, at most 1
//! basis = "gpus"                  # or "spend"; "gpus" when left out
//! scope = { workloads = ["training"] }
//! min_providers = { inference = 2 }
//! ```
//!
//! A policy file:
//!
//! ```toml
//! [policy]
//! allowed_regions = ["azure/eastus", "aws/*"]  # provider-qualified; empty or absent = any
//! allowed_providers = []                      # empty or absent = any
//! excluded_providers = ["vast"]               # never in a market award
//! uncontracted = "allow"                      # or "exclude": providers with no contract on file
//!
//! [[policy.price_ceiling]]
//! accelerator = "H100"
//! max_price_per_gpu_hour = 12.0
//!
//! [[policy.diversification]]                 # the same form as the clause; name optional
//! max_share = 0.4
//! basis = "gpus"
//! scope = { workloads = ["training"] }
//! min_providers = { inference = 2 }
//! ```
//!
//! Decisions, and what they cost:
//!
//! * Each clause kind is its own array of tables (`[[version.first_refusal]]`)
//!   rather than one array with a `kind` key. Positions (`toml::Spanned`) do not
//!   survive serde's internally tagged enums or `flatten`, and every error must
//!   point at a line and column. The cost is that the order of clauses of
//!   different kinds is recovered from their positions in the file.
//! * Every table denies unknown keys: a misspelt `covers_failover` would
//!   otherwise silently read as the default. Flags that change who gets
//!   capacity (`covers_spillover`, `covers_failover`, `emergency_release`) have
//!   no default for the same reason.
//! * Files are read into raw structs that keep positions, then converted to the
//!   domain model with validation. Every error, from a TOML syntax error to two
//!   contracts that contradict each other, renders as `FILE:LINE:COL: message`.
//! * Dates are TOML dates, not strings, so the TOML parser checks them; a local
//!   date-time (no offset) is rejected because its instant is ambiguous.
//!
//! Checks across contracts (unique ids, an exclusivity in one contract against
//! a first refusal or exclusivity in another at overlapping times) run when a
//! set is built: `ContractSetBuilder`, `load_contract_files`,
//! `load_contract_dir` and `builtin_contracts`.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::ops::Range;
use std::path::{Path, PathBuf};

use serde::Deserialize;
use toml::Spanned;
use toml::value::Datetime;

use super::{
    Clause, ClauseKind, Commitment, Condition, Contract, ContractSet, ContractVersion, Diversification,
    Exclusivity, FirstRefusal, HolderTerms, NoBetterTerms, Policy, RefusalMode, RevenueShare, ReviewTrigger,
    Scope, ShareBasis, TriggerAction,
};
use crate::types::{Accelerator, InvalidValue, Price, ProviderName, Timestamp, WorkloadClass};

/// A first-refusal window longer than a year is a typo (days for hours).
const MAX_WINDOW_HOURS: i64 = 24 * 365;
/// A contract or policy file larger than this is not hand-written; refuse it.
const MAX_FILE_BYTES: usize = 1 << 20;
/// Names and ids are short identifiers that appear in messages and the ledger.
const MAX_NAME_CHARS: usize = 64;
/// No minimum-provider rule asks for more providers than this.
const MAX_MIN_PROVIDERS: i64 = 100;

/// Where an error is: a file and a 1-based line and column in it.
///
/// `line == 0` means the whole file (an I/O error), shown as just the file.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct SourceLocation {
    pub file: String,
    pub line: usize,
    pub column: usize,
}

impl SourceLocation {
    /// The whole of `file`, for errors that have no position (cannot read it).
    pub fn file(file: impl Into<String>) -> Self {
        Self { file: file.into(), line: 0, column: 0 }
    }
}

impl fmt::Display for SourceLocation {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.line == 0 {
            f.write_str(&self.file)
        } else {
            write!(f, "{}:{}:{}", self.file, self.line, self.column)
        }
    }
}

/// A contract or policy file that cannot be used, and where the problem is.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{location}: {message}")]
pub struct ContractError {
    pub location: SourceLocation,
    pub message: String,
}

/// Parses one contract file. `source_name` names the file in messages.
pub fn parse_contract(source_name: &str, text: &str) -> Result<Contract, ContractError> {
    parse_contract_with_positions(source_name, text).map(|(contract, _)| contract)
}

/// Parses the buyer's policy file. `source_name` names the file in messages.
pub fn parse_policy(source_name: &str, text: &str) -> Result<Policy, ContractError> {
    let source = Source::new(source_name, text)?;
    let raw: RawPolicyFile = source.deserialize()?;
    let raw_policy = raw.policy.into_inner();
    let mut policy = Policy { source: Some(source_name.to_owned()), ..Policy::default() };
    let mut seen_regions = BTreeSet::new();
    for region in &raw_policy.allowed_regions {
        let parsed = source.value(region, |r| qualified_location(r))?;
        if !seen_regions.insert(parsed.clone()) {
            return Err(source.error(region.span(), format!("region {:?} is listed twice", region.get_ref())));
        }
        policy.allowed_regions.push(parsed);
    }
    for (list, raw) in [
        (&mut policy.allowed_providers, &raw_policy.allowed_providers),
        (&mut policy.excluded_providers, &raw_policy.excluded_providers),
    ] {
        for value in raw {
            let provider = source.value(value, |p| ProviderName::new(p))?;
            if list.contains(&provider) {
                return Err(
                    source.error(value.span(), format!("provider {:?} is listed twice", provider.as_str()))
                );
            }
            list.push(provider);
        }
    }
    if let Some(both) = policy.allowed_providers.iter().find(|p| policy.excluded_providers.contains(p)) {
        let at = raw_policy
            .excluded_providers
            .iter()
            .find(|v| v.get_ref() == both.as_str())
            .map_or(0..0, |v| v.span());
        return Err(source.error(at, format!("provider {:?} is both allowed and excluded", both.as_str())));
    }
    if let Some(uncontracted) = &raw_policy.uncontracted {
        policy.exclude_uncontracted = source.value(uncontracted, |text| match text.as_str() {
            "allow" => Ok(false),
            "exclude" => Ok(true),
            other => Err(InvalidValue(format!("uncontracted {other:?} is not \"allow\" or \"exclude\""))),
        })?;
    }
    for ceiling in &raw_policy.price_ceiling {
        let ceiling = ceiling.get_ref();
        let accelerator = source.value(&ceiling.accelerator, |a| Accelerator::new(a))?;
        if policy.price_ceilings.iter().any(|(a, _)| *a == accelerator) {
            return Err(source.error(
                ceiling.accelerator.span(),
                format!("a second price ceiling for {accelerator}; expected one per accelerator"),
            ));
        }
        let price = source.value(&ceiling.max_price_per_gpu_hour, |p| Price::new(*p))?;
        policy.price_ceilings.push((accelerator, price));
    }
    for rule in &raw_policy.diversification {
        policy.diversification.push(source.diversification(rule.get_ref())?);
    }
    Ok(policy)
}

/// Loads a contract set from files: `policy.toml` (or any file whose top table
/// is `[policy]`) is the policy, every other file a contract.
pub fn load_contract_files(paths: &[PathBuf]) -> Result<ContractSet, ContractError> {
    let mut builder = ContractSetBuilder::new();
    for path in paths {
        let name = path.display().to_string();
        let text = std::fs::read_to_string(path).map_err(|e| ContractError {
            location: SourceLocation::file(&name),
            message: format!("cannot read: {e}"),
        })?;
        builder.add_file(&name, &text)?;
    }
    builder.build()
}

/// Loads every `*.toml` file in `dir`, in sorted order.
pub fn load_contract_dir(dir: &Path) -> Result<ContractSet, ContractError> {
    load_contract_files(&toml_files_in(dir)?)
}

/// The contract files `paths` name, in the order given: a file as it is, a directory as its
/// `*.toml` files in sorted order. Every command that takes contract files or folders walks
/// them here, so they agree on which files count, and a folder that cannot be read is an
/// error rather than an empty contract set.
pub fn contract_paths(paths: &[PathBuf]) -> Result<Vec<PathBuf>, ContractError> {
    let mut files = Vec::new();
    for path in paths {
        if path.is_dir() {
            files.extend(toml_files_in(path)?);
        } else {
            files.push(path.clone());
        }
    }
    Ok(files)
}

/// The `*.toml` files directly in `dir`, sorted.
fn toml_files_in(dir: &Path) -> Result<Vec<PathBuf>, ContractError> {
    let unreadable = |e: std::io::Error| ContractError {
        location: SourceLocation::file(dir.display().to_string()),
        message: format!("cannot read the directory: {e}"),
    };
    let mut paths = Vec::new();
    for entry in std::fs::read_dir(dir).map_err(unreadable)? {
        let path = entry.map_err(unreadable)?.path();
        if path.is_file() && path.extension().is_some_and(|e| e == "toml") {
            paths.push(path);
        }
    }
    paths.sort();
    Ok(paths)
}

/// The example contract sets embedded in the binary: `"historical"` (the
/// arrangement as it evolved, 2019 to 2030) and `"default"` (the same clauses,
/// all in force today). `None` for any other name.
pub fn builtin_contracts(set: &str) -> Option<ContractSet> {
    let texts = builtin_contract_texts(set)?;
    let set = contract_set_from_texts(&texts);
    // The embedded files are part of the program, and a test loads both sets.
    assert!(set.is_ok(), "embedded contract set {set:?} is invalid");
    set.ok()
}

/// A contract set from (file name, contents) pairs: what a service records
/// in its ledger so that a replay runs under the contracts the run had.
pub fn contract_set_from_texts(files: &[(String, String)]) -> Result<ContractSet, ContractError> {
    let mut builder = ContractSetBuilder::new();
    for (name, text) in files {
        builder.add_file(name, text)?;
    }
    builder.build()
}

/// Reads contract files (or folders of `*.toml`) into (file name, contents) pairs.
pub fn read_contract_texts(paths: &[PathBuf]) -> Result<Vec<(String, String)>, ContractError> {
    contract_paths(paths)?
        .iter()
        .map(|path| {
            let name = path.display().to_string();
            std::fs::read_to_string(path).map(|text| (name.clone(), text)).map_err(|e| ContractError {
                location: SourceLocation::file(&name),
                message: format!("cannot read: {e}"),
            })
        })
        .collect()
}

/// The embedded example sets as (file name, contents) pairs.
pub fn builtin_contract_texts(set: &str) -> Option<Vec<(String, String)>> {
    let files: &[(&str, &str)] = match set {
        "historical" => &[
            ("historical/aws.toml", include_str!("../../../../examples/contracts/historical/aws.toml")),
            ("historical/azure.toml", include_str!("../../../../examples/contracts/historical/azure.toml")),
            ("historical/gcp.toml", include_str!("../../../../examples/contracts/historical/gcp.toml")),
            ("historical/lambda.toml", include_str!("../../../../examples/contracts/historical/lambda.toml")),
            ("historical/nebius.toml", include_str!("../../../../examples/contracts/historical/nebius.toml")),
            ("historical/oci.toml", include_str!("../../../../examples/contracts/historical/oci.toml")),
            ("historical/policy.toml", include_str!("../../../../examples/contracts/historical/policy.toml")),
        ],
        "default" => &[
            ("default/aws.toml", include_str!("../../../../examples/contracts/default/aws.toml")),
            ("default/azure.toml", include_str!("../../../../examples/contracts/default/azure.toml")),
            ("default/gcp.toml", include_str!("../../../../examples/contracts/default/gcp.toml")),
            ("default/lambda.toml", include_str!("../../../../examples/contracts/default/lambda.toml")),
            ("default/nebius.toml", include_str!("../../../../examples/contracts/default/nebius.toml")),
            ("default/oci.toml", include_str!("../../../../examples/contracts/default/oci.toml")),
            ("default/policy.toml", include_str!("../../../../examples/contracts/default/policy.toml")),
        ],
        _ => return None,
    };
    Some(files.iter().map(|(name, text)| (format!("builtin:{name}"), (*text).to_owned())).collect())
}

/// Builds a `ContractSet` from file contents, running the checks that need
/// more than one file: unique contract ids, one policy, and no exclusivity
/// that contradicts another contract's first refusal or exclusivity.
#[derive(Debug, Default)]
pub struct ContractSetBuilder {
    contracts: Vec<(Contract, Positions)>,
    policy: Option<Policy>,
}

impl ContractSetBuilder {
    pub fn new() -> Self {
        Self::default()
    }

    /// Adds one file, a policy if it is named `policy.toml` or its top table
    /// is `[policy]`, a contract otherwise.
    pub fn add_file(&mut self, source_name: &str, text: &str) -> Result<(), ContractError> {
        let named_policy = Path::new(source_name).file_name().is_some_and(|n| n == "policy.toml");
        // A file that is not valid TOML goes to the contract parser, which reports why.
        let top_table_is_policy = toml::from_str::<toml::Table>(text)
            .is_ok_and(|table| table.contains_key("policy") && !table.contains_key("contract"));
        if named_policy || top_table_is_policy {
            self.add_policy(source_name, text)
        } else {
            self.add_contract(source_name, text)
        }
    }

    pub fn add_contract(&mut self, source_name: &str, text: &str) -> Result<(), ContractError> {
        let (contract, positions) = parse_contract_with_positions(source_name, text)?;
        if let Some((other, other_positions)) = self.contracts.iter().find(|(c, _)| c.id == contract.id) {
            return Err(ContractError {
                location: positions.id.clone(),
                message: format!(
                    "contract id {:?} is already used by {} ({}); expected ids unique across a contract set",
                    contract.id, other.source, other_positions.id
                ),
            });
        }
        self.contracts.push((contract, positions));
        Ok(())
    }

    pub fn add_policy(&mut self, source_name: &str, text: &str) -> Result<(), ContractError> {
        let policy = parse_policy(source_name, text)?;
        if let Some(first) = &self.policy {
            return Err(ContractError {
                location: SourceLocation { file: source_name.to_owned(), line: 1, column: 1 },
                message: format!(
                    "a second policy file; the policy was already read from {}; expected one policy per set",
                    first.source.as_deref().unwrap_or("another file")
                ),
            });
        }
        self.policy = Some(policy);
        Ok(())
    }

    pub fn build(self) -> Result<ContractSet, ContractError> {
        let mut entries = Vec::new();
        for (contract, positions) in &self.contracts {
            entries.extend(timed_clauses(contract, positions));
        }
        check_contradictions(&entries)?;
        Ok(ContractSet {
            contracts: self.contracts.into_iter().map(|(contract, _)| contract).collect(),
            policy: self.policy.unwrap_or_default(),
        })
    }
}

/// Where the parts of a parsed contract were written, for checks across files.
#[derive(Debug, Clone)]
struct Positions {
    id: SourceLocation,
    /// `clauses[v][c]` is where clause `c` of version `v` names its holder (for
    /// first refusals and exclusivities) or its name (for the others).
    clauses: Vec<Vec<SourceLocation>>,
}

fn parse_contract_with_positions(
    source_name: &str,
    text: &str,
) -> Result<(Contract, Positions), ContractError> {
    let source = Source::new(source_name, text)?;
    let raw: RawContractFile = source.deserialize()?;
    let header_span = raw.contract.span();
    let header = raw.contract.into_inner();
    let id = source.name(&header.id, "contract id")?;
    let counterparty = source.value(&header.counterparty, |n| ProviderName::new(n))?;
    let mut parties = Vec::new();
    for party in &header.parties {
        let name = source.name(party, "party")?;
        if parties.contains(&name) {
            return Err(source.error(party.span(), format!("party {name:?} is listed twice")));
        }
        parties.push(name);
    }
    if !parties.is_empty() && !parties.iter().any(|p| p == counterparty.as_str()) {
        return Err(source.error(
            header.counterparty.span(),
            format!(
                "the counterparty \"{counterparty}\" is not one of the parties {parties:?}; \
                 expected it among them"
            ),
        ));
    }
    if raw.version.is_empty() {
        return Err(source.error(
            header_span,
            "the contract has no version; \
             expected at least one [[version]] table with id, effective and expires",
        ));
    }

    let mut versions = Vec::new();
    let mut ids: BTreeMap<String, usize> = BTreeMap::new();
    for raw_version in &raw.version {
        let (version, locations, spans) = source.version(raw_version.get_ref(), &counterparty, &parties)?;
        if let Some(first) = ids.insert(version.id.clone(), spans.id.start) {
            return Err(source.error(
                spans.id,
                format!(
                    "version id {:?} is already used at {}; expected version ids unique within a contract",
                    version.id,
                    source.location(first)
                ),
            ));
        }
        versions.push((version, locations, spans));
    }
    // Versions are kept in order of effective date. Since each version ends
    // after it starts, two versions overlap only if two neighbours in this
    // order do.
    versions.sort_by_key(|(version, _, _)| version.effective);
    for pair in versions.windows(2) {
        let ((earlier, _, earlier_spans), (later, _, later_spans)) = (&pair[0], &pair[1]);
        if later.effective < earlier.expires {
            return Err(source.error(
                later_spans.effective.clone(),
                format!(
                    "version {:?} takes effect at {}, before version {:?} ({}) expires at {}; \
                     expected the versions of one contract not to overlap",
                    later.id,
                    later.effective,
                    earlier.id,
                    source.location(earlier_spans.id.start),
                    earlier.expires
                ),
            ));
        }
    }

    let positions = Positions {
        id: source.location(header.id.span().start),
        clauses: versions.iter().map(|(_, clause_locations, _)| clause_locations.clone()).collect(),
    };
    let contract = Contract {
        id,
        counterparty,
        parties,
        versions: versions.into_iter().map(|(version, _, _)| version).collect(),
        source: source_name.to_owned(),
    };
    check_contradictions(&timed_clauses(&contract, &positions))?;
    Ok((contract, positions))
}

/// A clause with the interval its version is in force, for contradiction checks.
struct TimedClause<'a> {
    contract: &'a str,
    version: &'a str,
    effective: Timestamp,
    expires: Timestamp,
    clause: &'a Clause,
    at: &'a SourceLocation,
}

fn timed_clauses<'a>(contract: &'a Contract, positions: &'a Positions) -> Vec<TimedClause<'a>> {
    let mut entries = Vec::new();
    for (version, locations) in contract.versions.iter().zip(&positions.clauses) {
        for (clause, at) in version.clauses.iter().zip(locations) {
            entries.push(TimedClause {
                contract: &contract.id,
                version: &version.id,
                effective: version.effective,
                expires: version.expires,
                clause,
                at,
            });
        }
    }
    entries
}

/// An exclusivity for workload W held by A contradicts, at overlapping times,
/// a first refusal held by B != A whose scope covers W (B could never get W)
/// and an exclusivity for W held by B (nobody could host W).
fn check_contradictions(entries: &[TimedClause<'_>]) -> Result<(), ContractError> {
    for (i, first) in entries.iter().enumerate() {
        for second in &entries[i + 1..] {
            if !(first.effective < second.expires && second.effective < first.expires) {
                continue;
            }
            let (exclusive, other) = match (&first.clause.kind, &second.clause.kind) {
                (ClauseKind::Exclusivity(_), ClauseKind::FirstRefusal(_) | ClauseKind::Exclusivity(_)) => {
                    (first, second)
                }
                (ClauseKind::FirstRefusal(_), ClauseKind::Exclusivity(_)) => (second, first),
                _ => continue,
            };
            let ClauseKind::Exclusivity(exclusivity) = &exclusive.clause.kind else { continue };
            let cited = format!(
                "exclusivity {:?} (contract {:?}, version {:?}, {})",
                exclusive.clause.name, exclusive.contract, exclusive.version, exclusive.at
            );
            match &other.clause.kind {
                ClauseKind::FirstRefusal(refusal) if refusal.holder != exclusivity.holder => {
                    let covered = exclusivity
                        .workloads
                        .iter()
                        .find(|w| refusal.scope.workloads.is_empty() || refusal.scope.workloads.contains(w));
                    if let Some(workload) = covered {
                        return Err(ContractError {
                            location: other.at.clone(),
                            message: format!(
                                "first refusal {:?} gives {} the first call on {workload} workloads, \
                                 but {cited} reserves {workload} to {} at overlapping times, \
                                 so {} could never take them; \
                                 expected the first refusal's scope to leave out {workload}",
                                other.clause.name, refusal.holder, exclusivity.holder, refusal.holder
                            ),
                        });
                    }
                }
                ClauseKind::Exclusivity(theirs) if theirs.holder != exclusivity.holder => {
                    if let Some(workload) =
                        theirs.workloads.iter().find(|w| exclusivity.workloads.contains(w))
                    {
                        return Err(ContractError {
                            location: second.at.clone(),
                            message: format!(
                                "exclusivity {:?} reserves {workload} to {}, but {cited} reserves it to {} \
                                 at overlapping times, so nobody could host it; \
                                 expected one holder per workload",
                                other.clause.name, theirs.holder, exclusivity.holder
                            ),
                        });
                    }
                }
                _ => {}
            }
        }
    }
    Ok(())
}

/// A provider-qualified region in a contract or policy file. A bare region name is refused:
/// several providers use the same names, and files are read without a catalog to resolve them.
fn qualified_location(text: &str) -> Result<crate::types::Location, InvalidValue> {
    if !text.contains('/') {
        return Err(InvalidValue(format!(
            "region {text:?} is not provider-qualified; write provider/region (for example azure/{text}) \
             or provider/* for all of a provider's regions"
        )));
    }
    crate::types::Location::parse_qualified(text)
}

/// Positions inside one version, for errors about the version as a whole.
struct VersionSpans {
    id: Range<usize>,
    effective: Range<usize>,
}

/// The text of one file, for turning byte spans into `FILE:LINE:COL`. The supply file
/// parser (`catalog::supply`) reads its TOML through this too.
pub(crate) struct Source<'a> {
    name: &'a str,
    text: &'a str,
}

impl<'a> Source<'a> {
    pub(crate) fn new(name: &'a str, text: &'a str) -> Result<Self, ContractError> {
        let source = Self { name, text };
        if text.len() > MAX_FILE_BYTES {
            return Err(source.error(
                0..0,
                format!("the file is {} bytes; expected at most {MAX_FILE_BYTES}", text.len()),
            ));
        }
        Ok(source)
    }

    fn location(&self, offset: usize) -> SourceLocation {
        let offset = offset.min(self.text.len());
        // Spans are byte offsets; step back to a character boundary before slicing.
        let offset = (0..=offset).rev().find(|&o| self.text.is_char_boundary(o)).unwrap_or(0);
        let before = &self.text[..offset];
        let line = before.matches('\n').count() + 1;
        let line_start = before.rfind('\n').map_or(0, |i| i + 1);
        let column = before[line_start..].chars().count() + 1;
        SourceLocation { file: self.name.to_owned(), line, column }
    }

    pub(crate) fn error(&self, span: Range<usize>, message: impl Into<String>) -> ContractError {
        ContractError { location: self.location(span.start), message: message.into() }
    }

    pub(crate) fn deserialize<T: serde::de::DeserializeOwned>(&self) -> Result<T, ContractError> {
        toml::from_str(self.text).map_err(|e| {
            let mut message = e.message().trim().replace('\n', "; ");
            if message.contains("expected a TOML datetime") {
                message.push_str("; write dates unquoted, as in effective = 2025-10-28");
            }
            ContractError { location: self.location(e.span().map_or(0, |s| s.start)), message }
        })
    }

    /// Converts a spanned value with a constructor from `types`.
    pub(crate) fn value<T, U>(
        &self,
        value: &Spanned<T>,
        convert: impl FnOnce(&T) -> Result<U, InvalidValue>,
    ) -> Result<U, ContractError> {
        convert(value.get_ref()).map_err(|e| self.error(value.span(), e.0))
    }

    /// An id or clause name: a short identifier.
    fn name(&self, value: &Spanned<String>, what: &str) -> Result<String, ContractError> {
        let name = value.get_ref();
        let valid = !name.is_empty()
            && name.chars().count() <= MAX_NAME_CHARS
            && name.chars().all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'));
        if valid {
            Ok(name.clone())
        } else {
            Err(self.error(
                value.span(),
                format!(
                    "{what} {name:?} must be 1 to {MAX_NAME_CHARS} ASCII letters, digits, '-', '_' or '.'"
                ),
            ))
        }
    }

    fn timestamp(&self, value: &Spanned<Datetime>, what: &str) -> Result<Timestamp, ContractError> {
        let datetime = value.get_ref();
        let expected =
            "expected a date (2025-10-28, midnight UTC) or an offset date-time (2025-10-28T09:00:00Z)";
        match (datetime.date, datetime.time, datetime.offset) {
            (Some(_), None, None) | (Some(_), Some(_), Some(_)) => Timestamp::parse(&datetime.to_string())
                .map_err(|e| self.error(value.span(), format!("{what}: {e}; {expected}"))),
            (Some(_), Some(_), None) => Err(self.error(
                value.span(),
                format!("{what} {datetime} is a local date-time with no offset; {expected}"),
            )),
            _ => Err(self.error(value.span(), format!("{what} {datetime} is not a date; {expected}"))),
        }
    }

    fn workload(&self, value: &Spanned<String>) -> Result<WorkloadClass, ContractError> {
        self.value(value, |w| WorkloadClass::parse(w))
    }

    fn workloads(&self, values: &[Spanned<String>]) -> Result<Vec<WorkloadClass>, ContractError> {
        let mut workloads = Vec::new();
        for value in values {
            let workload = self.workload(value)?;
            if workloads.contains(&workload) {
                return Err(self.error(value.span(), format!("workload class {workload} is listed twice")));
            }
            workloads.push(workload);
        }
        Ok(workloads)
    }

    fn scope(&self, raw: Option<&RawScope>) -> Result<Scope, ContractError> {
        let Some(raw) = raw else { return Ok(Scope::default()) };
        let mut scope = Scope { workloads: self.workloads(&raw.workloads)?, ..Scope::default() };
        for value in &raw.accelerators {
            scope.accelerators.push(self.value(value, |a| Accelerator::new(a))?);
        }
        for value in &raw.regions {
            scope.regions.push(self.value(value, |r| qualified_location(r))?);
        }
        Ok(scope)
    }

    /// `terms = "list"`, `"market"`, `{ fixed = 2.75 }` (USD per GPU-hour) or `{ discount = 0.3 }`.
    fn holder_terms(&self, value: &Spanned<toml::Value>) -> Result<HolderTerms, ContractError> {
        let expected =
            "expected terms = \"list\", \"market\", { fixed = USD per GPU-hour } or { discount = 0 to 1 }";
        let error = |message: String| self.error(value.span(), message);
        match value.get_ref() {
            toml::Value::String(name) if name == "list" => Ok(HolderTerms::List),
            toml::Value::String(name) if name == "market" => Ok(HolderTerms::Market),
            toml::Value::Table(table) if table.len() == 1 => {
                let (key, number) = table.iter().next().expect("one entry");
                let number = number.as_float().or_else(|| number.as_integer().map(|i| i as f64));
                match (key.as_str(), number) {
                    ("fixed", Some(price)) => Price::new(price)
                        .map(|price| HolderTerms::Fixed { price })
                        .map_err(|e| error(format!("terms: {}", e.0))),
                    ("discount", Some(off)) if (0.0..1.0).contains(&off) => Ok(HolderTerms::Discount { off }),
                    ("discount", Some(off)) => Err(error(format!(
                        "terms: discount {off} is out of range; expected a fraction from 0 to below 1"
                    ))),
                    _ => Err(error(format!("terms: {{ {key} = ... }} is not understood; {expected}"))),
                }
            }
            other => Err(error(format!("terms: {} is not understood; {expected}", other.type_str()))),
        }
    }

    fn fraction(&self, value: &Spanned<f64>, what: &str, lowest_allowed: bool) -> Result<f64, ContractError> {
        let x = *value.get_ref();
        let (valid, range) = if lowest_allowed {
            ((0.0..=1.0).contains(&x), "between 0 and 1")
        } else {
            (x > 0.0 && x <= 1.0, "more than 0 and at most 1")
        };
        if valid {
            Ok(x)
        } else {
            Err(self.error(value.span(), format!("{what} {x} is out of range; expected a fraction {range}")))
        }
    }

    fn diversification(&self, raw: &RawDiversification) -> Result<Diversification, ContractError> {
        let max_share = self.fraction(&raw.max_share, "max_share", false)?;
        let basis = match raw.basis.as_ref().map(Spanned::get_ref) {
            None | Some(RawBasis::Gpus) => ShareBasis::Gpus,
            Some(RawBasis::Spend) => ShareBasis::Spend,
        };
        let mut min_providers = Vec::new();
        for (workload, count) in raw.min_providers.iter().flatten() {
            let workload = self.workload(workload)?;
            let n = *count.get_ref();
            if !(1..=MAX_MIN_PROVIDERS).contains(&n) {
                return Err(self.error(
                    count.span(),
                    format!("min_providers for {workload} is {n}; expected 1 to {MAX_MIN_PROVIDERS}"),
                ));
            }
            min_providers.push((workload, n as u32));
        }
        Ok(Diversification {
            max_share,
            basis,
            scope: self.scope(raw.scope.as_ref().map(Spanned::get_ref))?,
            min_providers,
        })
    }

    /// Converts one version; returns it with the location of each clause (see
    /// `Positions::clauses`) and the spans of its id and effective date.
    fn version(
        &self,
        raw: &RawVersion,
        counterparty: &ProviderName,
        parties: &[String],
    ) -> Result<(ContractVersion, Vec<SourceLocation>, VersionSpans), ContractError> {
        // A clause's holder or committed provider must be a party to the contract: a typo
        // (`azrue`) would otherwise silently give a right to nobody.
        let party = |value: &Spanned<String>, what: &str| -> Result<ProviderName, ContractError> {
            let name = self.value(value, |h| ProviderName::new(h))?;
            if name == *counterparty || parties.iter().any(|p| p == name.as_str()) {
                Ok(name)
            } else {
                let mut known: Vec<String> = parties.to_vec();
                if !known.iter().any(|p| p == counterparty.as_str()) {
                    known.push(counterparty.to_string());
                }
                Err(self.error(
                    value.span(),
                    format!(
                        "{what} {:?} is not a party to this contract; the parties are {}",
                        name.as_str(),
                        known.join(", ")
                    ),
                ))
            }
        };
        let id = self.name(&raw.id, "version id")?;
        let effective = self.timestamp(&raw.effective, "effective")?;
        let expires = self.timestamp(&raw.expires, "expires")?;
        if expires <= effective {
            return Err(self.error(
                raw.expires.span(),
                format!("expires {expires} is not after effective {effective}; expected a later date"),
            ));
        }
        // (position of the name, position for cross-clause messages, clause)
        let mut clauses: Vec<(Range<usize>, Range<usize>, Clause)> = Vec::new();
        for clause in &raw.first_refusal {
            let raw = clause.get_ref();
            let window = *raw.window_hours.get_ref();
            if !(1..=MAX_WINDOW_HOURS).contains(&window) {
                return Err(self.error(
                    raw.window_hours.span(),
                    format!("window_hours {window} is out of range; expected 1 to {MAX_WINDOW_HOURS} hours"),
                ));
            }
            let terms = FirstRefusal {
                holder: party(&raw.holder, "holder")?,
                scope: self.scope(raw.scope.as_ref().map(Spanned::get_ref))?,
                mode: match raw.mode {
                    RawMode::OfferFirst => RefusalMode::OfferFirst,
                    RawMode::Match => RefusalMode::Match,
                },
                terms: match &raw.terms {
                    None => HolderTerms::List,
                    Some(terms) => self.holder_terms(terms)?,
                },
                window_hours: window as u32,
                covers_spillover: raw.covers_spillover,
                covers_failover: raw.covers_failover,
                no_better_terms: match (&raw.mode, raw.no_better_terms) {
                    (RawMode::OfferFirst, Some(choice)) => choice,
                    (RawMode::OfferFirst, None) => {
                        return Err(self.error(
                            clause.span(),
                            "missing field `no_better_terms`: an offer-first clause must say what a pricier \
                             market award after a decline does: \"show-terms\" (the holder is shown the \
                             market's terms, never who offered them) or \"hold-market\" (nothing is shown; the \
                             market is held to the declined price)",
                        ));
                    }
                    (RawMode::Match, Some(_)) => {
                        return Err(self.error(
                            clause.span(),
                            "`no_better_terms` applies to offer-first clauses; in match mode the holder is \
                             always shown the market's winning terms to match",
                        ));
                    }
                    (RawMode::Match, None) => NoBetterTerms::ShowTerms,
                },
            };
            let name = self.name(&raw.name, "clause name")?;
            clauses.push((
                raw.name.span(),
                raw.holder.span(),
                Clause { name, kind: ClauseKind::FirstRefusal(terms) },
            ));
        }
        for clause in &raw.exclusivity {
            let raw = clause.get_ref();
            if raw.workloads.is_empty() {
                return Err(self.error(
                    clause.span(),
                    "an exclusivity with no workloads reserves nothing; expected workloads = [\"api\", ...]",
                ));
            }
            let terms = Exclusivity {
                holder: party(&raw.holder, "holder")?,
                workloads: self.workloads(&raw.workloads)?,
                emergency_release: raw.emergency_release,
            };
            let name = self.name(&raw.name, "clause name")?;
            clauses.push((
                raw.name.span(),
                raw.holder.span(),
                Clause { name, kind: ClauseKind::Exclusivity(terms) },
            ));
        }
        for clause in &raw.commitment {
            let raw = clause.get_ref();
            let amount = *raw.amount.get_ref();
            if !(amount > 0.0 && amount.is_finite()) {
                return Err(self.error(
                    raw.amount.span(),
                    format!("amount {amount} is not a positive amount; expected a number more than 0"),
                ));
            }
            let currency = raw.currency.get_ref();
            if currency.len() != 3 || !currency.chars().all(|c| c.is_ascii_uppercase()) {
                return Err(self.error(
                    raw.currency.span(),
                    format!(
                        "currency {currency:?} is not an ISO 4217 code; \
                         expected three capital letters such as \"USD\""
                    ),
                ));
            }
            let period_start = self.timestamp(&raw.period_start, "period_start")?;
            let period_end = self.timestamp(&raw.period_end, "period_end")?;
            if period_end <= period_start {
                return Err(self.error(
                    raw.period_end.span(),
                    format!(
                        "period_end {period_end} is not after period_start {period_start}; \
                         expected a later date"
                    ),
                ));
            }
            let terms = Commitment {
                provider: party(&raw.provider, "provider")?,
                amount,
                currency: currency.clone(),
                period_start,
                period_end,
                counts: self.workloads(&raw.counts)?,
            };
            let name = self.name(&raw.name, "clause name")?;
            clauses.push((
                raw.name.span(),
                raw.name.span(),
                Clause { name, kind: ClauseKind::Commitment(terms) },
            ));
        }
        for clause in &raw.diversification {
            let terms = self.diversification(clause.get_ref())?;
            let Some(name) = &clause.get_ref().name else {
                return Err(self.error(
                    clause.span(),
                    "missing field `name`; a diversification clause in a contract needs a name",
                ));
            };
            let span = name.span();
            let name = self.name(name, "clause name")?;
            clauses.push((span.clone(), span, Clause { name, kind: ClauseKind::Diversification(terms) }));
        }
        for clause in &raw.revenue_share {
            let raw = clause.get_ref();
            let partner = self.name(&raw.partner, "partner")?;
            let rate = self.fraction(&raw.rate, "rate", true)?;
            let mut products = Vec::new();
            for product in &raw.products {
                products.push(self.name(product, "product")?);
            }
            let terms = RevenueShare { partner, rate, products };
            let name = self.name(&raw.name, "clause name")?;
            clauses.push((
                raw.name.span(),
                raw.name.span(),
                Clause { name, kind: ClauseKind::RevenueShare(terms) },
            ));
        }
        // Triggers come last: a suspension must name a clause of this version.
        let mut triggers = Vec::new();
        for clause in &raw.review_trigger {
            let raw = clause.get_ref();
            let condition = Condition::parse(raw.condition.get_ref()).map_err(|e| ContractError {
                location: self.condition_location(&raw.condition, &e),
                message: e.to_string(),
            })?;
            let name = self.name(&raw.name, "clause name")?;
            triggers.push((clause, condition, name));
        }
        let mut names: BTreeMap<String, Range<usize>> = BTreeMap::new();
        let all_names = clauses
            .iter()
            .map(|(span, _, clause)| (span.clone(), clause.name.clone()))
            .chain(triggers.iter().map(|(clause, _, name)| (clause.get_ref().name.span(), name.clone())));
        for (span, name) in all_names {
            if let Some(first) = names.get(&name) {
                return Err(self.error(
                    span,
                    format!(
                        "clause name {name:?} is already used at {}; \
                         expected clause names unique within a version",
                        self.location(first.start)
                    ),
                ));
            }
            names.insert(name, span);
        }
        for (clause, condition, name) in triggers {
            let raw = clause.get_ref();
            let action = match (raw.action.get_ref(), &raw.clauses, &raw.from) {
                (RawAction::FlagForReview, None, None) => TriggerAction::FlagForReview,
                (RawAction::FlagForReview, Some(_), _) | (RawAction::FlagForReview, _, Some(_)) => {
                    return Err(self.error(
                        raw.action.span(),
                        "action \"flag_for_review\" takes no clauses or from; \
                         expected action = \"suspend_clauses\" to suspend clauses",
                    ));
                }
                (RawAction::SuspendClauses, Some(suspended), Some(from)) => {
                    if suspended.is_empty() {
                        return Err(self.error(
                            raw.action.span(),
                            "action \"suspend_clauses\" with an empty clauses list; \
                             expected the clauses to suspend",
                        ));
                    }
                    for named in suspended {
                        if !names.contains_key(named.get_ref()) {
                            let known: Vec<&str> = names.keys().map(String::as_str).collect();
                            return Err(self.error(
                                named.span(),
                                format!(
                                    "there is no clause {:?} in this version to suspend; \
                                     expected one of {known:?}",
                                    named.get_ref()
                                ),
                            ));
                        }
                    }
                    TriggerAction::SuspendClauses {
                        clauses: suspended.iter().map(|c| c.get_ref().clone()).collect(),
                        from: self.timestamp(from, "from")?,
                    }
                }
                (RawAction::SuspendClauses, _, _) => {
                    return Err(self.error(
                        raw.action.span(),
                        "action \"suspend_clauses\" needs clauses = [\"name\", ...] and from = DATE",
                    ));
                }
            };
            let terms = ReviewTrigger { condition, action };
            clauses.push((
                raw.name.span(),
                raw.name.span(),
                Clause { name, kind: ClauseKind::ReviewTrigger(terms) },
            ));
        }
        check_clause_limits(self, &clauses)?;
        // Clauses of different kinds live in different arrays; restore file order.
        clauses.sort_by_key(|(span, _, _)| span.start);
        let locations = clauses.iter().map(|(_, at, _)| self.location(at.start)).collect();
        let version = ContractVersion {
            id,
            effective,
            expires,
            clauses: clauses.into_iter().map(|(_, _, c)| c).collect(),
        };
        Ok((version, locations, VersionSpans { id: raw.id.span(), effective: raw.effective.span() }))
    }

    /// Where a condition error is in the file: inside the string when the
    /// string is written without escapes (so characters map one to one),
    /// otherwise at the string's opening quote.
    fn condition_location(&self, value: &Spanned<String>, error: &super::ConditionError) -> SourceLocation {
        let span = value.span();
        let Some(raw) = self.text.get(span.clone()) else { return self.location(span.start) };
        let Some((line, column)) = error.position() else { return self.location(span.start) };
        let skip_newline = |delimiter: usize| {
            let rest = &raw[delimiter..];
            delimiter + if rest.starts_with("\r\n") { 2 } else { usize::from(rest.starts_with('\n')) }
        };
        // Basic strings may hold escapes, after which characters no longer map one to one.
        if raw.starts_with('"') && raw.contains('\\') {
            return self.location(span.start);
        }
        let content_start = if raw.starts_with("'''") || raw.starts_with("\"\"\"") {
            skip_newline(3)
        } else if raw.starts_with('\'') || raw.starts_with('"') {
            1
        } else {
            return self.location(span.start);
        };
        let content = &raw[content_start..];
        let mut offset = 0;
        for (index, text) in content.split_inclusive('\n').enumerate() {
            if index + 1 == line {
                offset += text.char_indices().nth(column.saturating_sub(1)).map_or(text.len(), |(i, _)| i);
                return self.location(span.start + content_start + offset);
            }
            offset += text.len();
        }
        self.location(span.start)
    }
}

/// A bound on clauses per version, so a generated file cannot make the
/// contradiction check (quadratic in clauses) slow.
fn check_clause_limits(
    source: &Source<'_>,
    clauses: &[(Range<usize>, Range<usize>, Clause)],
) -> Result<(), ContractError> {
    const MAX_CLAUSES_PER_VERSION: usize = 256;
    match clauses.get(MAX_CLAUSES_PER_VERSION) {
        Some((span, _, _)) => Err(source.error(
            span.clone(),
            format!("more than {MAX_CLAUSES_PER_VERSION} clauses in one version; expected fewer"),
        )),
        None => Ok(()),
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawContractFile {
    contract: Spanned<RawContract>,
    #[serde(default)]
    version: Vec<Spanned<RawVersion>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawContract {
    id: Spanned<String>,
    counterparty: Spanned<String>,
    #[serde(default)]
    parties: Vec<Spanned<String>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawVersion {
    id: Spanned<String>,
    effective: Spanned<Datetime>,
    expires: Spanned<Datetime>,
    #[serde(default)]
    first_refusal: Vec<Spanned<RawFirstRefusal>>,
    #[serde(default)]
    exclusivity: Vec<Spanned<RawExclusivity>>,
    #[serde(default)]
    commitment: Vec<Spanned<RawCommitment>>,
    #[serde(default)]
    diversification: Vec<Spanned<RawDiversification>>,
    #[serde(default)]
    revenue_share: Vec<Spanned<RawRevenueShare>>,
    #[serde(default)]
    review_trigger: Vec<Spanned<RawReviewTrigger>>,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct RawScope {
    #[serde(default)]
    workloads: Vec<Spanned<String>>,
    #[serde(default)]
    accelerators: Vec<Spanned<String>>,
    #[serde(default)]
    regions: Vec<Spanned<String>>,
}

#[derive(Deserialize)]
#[serde(rename_all = "kebab-case")]
enum RawMode {
    OfferFirst,
    Match,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawFirstRefusal {
    name: Spanned<String>,
    holder: Spanned<String>,
    mode: RawMode,
    terms: Option<Spanned<toml::Value>>,
    window_hours: Spanned<i64>,
    covers_spillover: bool,
    covers_failover: bool,
    no_better_terms: Option<NoBetterTerms>,
    scope: Option<Spanned<RawScope>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawExclusivity {
    name: Spanned<String>,
    holder: Spanned<String>,
    workloads: Vec<Spanned<String>>,
    emergency_release: bool,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawCommitment {
    name: Spanned<String>,
    provider: Spanned<String>,
    amount: Spanned<f64>,
    currency: Spanned<String>,
    period_start: Spanned<Datetime>,
    period_end: Spanned<Datetime>,
    #[serde(default)]
    counts: Vec<Spanned<String>>,
}

#[derive(Deserialize)]
#[serde(rename_all = "lowercase")]
enum RawBasis {
    Gpus,
    Spend,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawDiversification {
    /// Required in a contract, optional in a policy.
    name: Option<Spanned<String>>,
    max_share: Spanned<f64>,
    basis: Option<Spanned<RawBasis>>,
    scope: Option<Spanned<RawScope>>,
    min_providers: Option<BTreeMap<Spanned<String>, Spanned<i64>>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawRevenueShare {
    name: Spanned<String>,
    partner: Spanned<String>,
    rate: Spanned<f64>,
    #[serde(default)]
    products: Vec<Spanned<String>>,
}

#[derive(Deserialize)]
#[serde(rename_all = "snake_case")]
enum RawAction {
    FlagForReview,
    SuspendClauses,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawReviewTrigger {
    name: Spanned<String>,
    condition: Spanned<String>,
    action: Spanned<RawAction>,
    clauses: Option<Vec<Spanned<String>>>,
    from: Option<Spanned<Datetime>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawPolicyFile {
    policy: Spanned<RawPolicy>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawPolicy {
    #[serde(default)]
    allowed_regions: Vec<Spanned<String>>,
    #[serde(default)]
    allowed_providers: Vec<Spanned<String>>,
    #[serde(default)]
    excluded_providers: Vec<Spanned<String>>,
    #[serde(default)]
    uncontracted: Option<Spanned<String>>,
    #[serde(default)]
    price_ceiling: Vec<Spanned<RawPriceCeiling>>,
    #[serde(default)]
    diversification: Vec<Spanned<RawDiversification>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawPriceCeiling {
    accelerator: Spanned<String>,
    max_price_per_gpu_hour: Spanned<f64>,
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::contract::describe_in_force;

    /// Eight lines: a contract with one version from 2020 to 2030. Clauses
    /// appended to it start on line 9.
    const HEADER: &str = "\
[contract]
id = \"c\"
counterparty = \"azure\"

[[version]]
id = \"v1\"
effective = 2020-01-01
expires = 2030-01-01
";

    const FIRST_REFUSAL: &str = "\
[[version.first_refusal]]
name = \"rofr\"
holder = \"azure\"
mode = \"offer-first\"
no_better_terms = \"show-terms\"
window_hours = 72
covers_spillover = true
covers_failover = false
";

    fn contract(clauses: &str) -> String {
        format!("{HEADER}{clauses}")
    }

    /// Parses `text` as a contract and checks it is accepted.
    fn check(text: &str) -> Contract {
        match parse_contract("f.toml", text) {
            Ok(contract) => contract,
            Err(error) => panic!("expected the contract to parse, got {error}"),
        }
    }

    /// Parses `text` as a contract and checks the rendered error contains
    /// `expected` (which starts with `f.toml:LINE:COL: `).
    fn check_error(text: &str, expected: &str) {
        check_rendered(parse_contract("f.toml", text).map(|_| ()), expected);
    }

    fn check_rendered(result: Result<(), ContractError>, expected: &str) {
        match result {
            Ok(()) => panic!("expected an error containing {expected:?}, but the input was accepted"),
            Err(error) => {
                let rendered = error.to_string();
                assert!(rendered.contains(expected), "expected {expected:?} in\n{rendered}");
            }
        }
    }

    fn set_of(files: &[(&str, &str)]) -> Result<ContractSet, ContractError> {
        let mut builder = ContractSetBuilder::new();
        for (name, text) in files {
            builder.add_file(name, text)?;
        }
        builder.build()
    }

    fn at(date: &str) -> Timestamp {
        Timestamp::parse(date).unwrap()
    }

    #[test]
    fn a_minimal_contract_parses_with_its_clauses_in_file_order() {
        let text = contract(&format!(
            "{FIRST_REFUSAL}\
[[version.exclusivity]]
name = \"api\"
holder = \"azure\"
workloads = [\"api\"]
emergency_release = false
"
        ));
        let parsed = check(&text);
        let names: Vec<&str> = parsed.versions[0].clauses.iter().map(|c| c.name.as_str()).collect();
        assert_eq!(names, ["rofr", "api"]);
        assert_eq!(parsed.versions[0].effective, at("2020-01-01"));
    }

    #[test]
    fn syntax_errors_and_type_errors_have_positions() {
        check_error("[contract]\nid = = \"a\"\n", "f.toml:2:6: ");
        check_error(
            &HEADER.replace("effective = 2020-01-01", "effective = \"2020-01-01\""),
            "f.toml:7:13: invalid type: string",
        );
        check_error(
            &HEADER.replace("effective = 2020-01-01", "effective = 2020-01-01T10:00:00"),
            "f.toml:7:13: effective 2020-01-01T10:00:00 is a local date-time",
        );
        check_error(
            &contract(&FIRST_REFUSAL.replace("\"offer-first\"", "\"first\"")),
            "f.toml:12:8: unknown variant `first`, expected `offer-first` or `match`",
        );
        check_error(
            &contract(&FIRST_REFUSAL.replace("covers_failover = false\n", "")),
            "f.toml:9:1: missing field `covers_failover`",
        );
        // The contract must state what a pricier market after a decline does.
        check_error(
            &contract(&FIRST_REFUSAL.replace("no_better_terms = \"show-terms\"\n", "")),
            "f.toml:9:1: missing field `no_better_terms`",
        );
        check_error(
            &contract(&FIRST_REFUSAL.replace("\"offer-first\"", "\"match\"")),
            "f.toml:9:1: `no_better_terms` applies to offer-first clauses",
        );
        check_error(
            &contract(&FIRST_REFUSAL.replace("\"show-terms\"", "\"tell-all\"")),
            "unknown variant `tell-all`, expected `show-terms` or `hold-market`",
        );
        check_error("", "f.toml:1:1: missing field `contract`");
        check_error(HEADER.split("[[version]]").next().unwrap(), "f.toml:1:1: the contract has no version");
    }

    #[test]
    fn unknown_keys_are_errors_with_their_position() {
        check_error(
            &contract(&FIRST_REFUSAL.replace("window_hours", "windw_hours")),
            "f.toml:14:1: unknown field `windw_hours`, expected one of",
        );
        check_error(
            &HEADER.replace("id = \"v1\"", "id = \"v1\"\nnotes = \"x\""),
            "f.toml:7:1: unknown field `notes`",
        );
        check_error(
            &contract(&format!("{FIRST_REFUSAL}scope = {{ workload = [\"api\"] }}\n")),
            "f.toml:17:11: unknown field `workload`, expected one of `workloads`, `accelerators`, `regions`",
        );
    }

    #[test]
    fn windows_must_be_positive() {
        let expected = "f.toml:14:16: window_hours 0 is out of range; expected 1 to 8760 hours";
        check_error(&contract(&FIRST_REFUSAL.replace("= 72", "= 0")), expected);
        check_error(
            &contract(&FIRST_REFUSAL.replace("= 72", "= -5")),
            "f.toml:14:16: window_hours -5 is out of range",
        );
    }

    #[test]
    fn rates_must_be_fractions() {
        let share = |rate: &str| {
            contract(&format!(
                "[[version.revenue_share]]\nname = \"rs\"\npartner = \"azure\"\nrate = {rate}\nproducts = [\"api\"]\n"
            ))
        };
        check(&share("0.2"));
        check(&share("0"));
        check_error(
            &share("1.5"),
            "f.toml:12:8: rate 1.5 is out of range; expected a fraction between 0 and 1",
        );
        check_error(&share("-0.1"), "f.toml:12:8: rate -0.1 is out of range");
    }

    #[test]
    fn max_share_must_be_more_than_zero_and_at_most_one() {
        let cap = |share: &str| {
            contract(&format!(
                "[[version.diversification]]\nname = \"cap\"\nmax_share = {share}\nmin_providers = {{ inference = 2 }}\n"
            ))
        };
        check(&cap("1"));
        check_error(
            &cap("0"),
            "f.toml:11:13: max_share 0 is out of range; expected a fraction more than 0 and at most 1",
        );
        check_error(&cap("1.01"), "f.toml:11:13: max_share 1.01 is out of range");
        check_error(
            &cap("0.5").replace("inference = 2", "inference = 0"),
            "f.toml:12:31: min_providers for inference is 0; expected 1 to 100",
        );
        check_error(&cap("0.5").replace("name = \"cap\"\n", ""), "f.toml:9:1: missing field `name`");
    }

    #[test]
    fn amounts_must_be_positive() {
        let commitment = |amount: &str| {
            contract(&format!(
                "[[version.commitment]]\nname = \"c\"\nprovider = \"azure\"\namount = {amount}\ncurrency = \"USD\"\n\
                 period_start = 2021-01-01\nperiod_end = 2022-01-01\n"
            ))
        };
        check(&commitment("300e6"));
        check(&commitment("1000"));
        check_error(&commitment("0"), "f.toml:12:10: amount 0 is not a positive amount");
        check_error(&commitment("-5e9"), "f.toml:12:10: amount -5000000000 is not a positive amount");
        check_error(
            &commitment("1").replace("\"USD\"", "\"usd\""),
            "f.toml:13:12: currency \"usd\" is not an ISO 4217 code",
        );
        check_error(
            &commitment("1").replace("period_end = 2022-01-01", "period_end = 2021-01-01"),
            "f.toml:15:14: period_end 2021-01-01T00:00:00Z is not after period_start",
        );
    }

    #[test]
    fn a_version_must_expire_after_it_takes_effect() {
        check_error(
            &HEADER.replace("expires = 2030-01-01", "expires = 2020-01-01"),
            "f.toml:8:11: expires 2020-01-01T00:00:00Z is not after effective 2020-01-01T00:00:00Z",
        );
    }

    #[test]
    fn versions_of_one_contract_may_not_overlap() {
        let second = |effective: &str| {
            contract(&format!("\n[[version]]\nid = \"v2\"\neffective = {effective}\nexpires = 2031-01-01\n"))
        };
        let parsed = check(&second("2030-01-01"));
        assert_eq!(parsed.versions.len(), 2);
        check_error(
            &second("2029-12-31"),
            "f.toml:12:13: version \"v2\" takes effect at 2029-12-31T00:00:00Z, before version \"v1\" (f.toml:6:6) \
             expires at 2030-01-01T00:00:00Z",
        );
        check_error(
            &second("2030-01-01").replace("id = \"v2\"", "id = \"v1\""),
            "f.toml:11:6: version id \"v1\" is already used at f.toml:6:6",
        );
    }

    #[test]
    fn clause_names_are_unique_within_a_version() {
        let text = contract(&format!(
            "{FIRST_REFUSAL}[[version.revenue_share]]\nname = \"rofr\"\npartner = \"azure\"\nrate = 0.2\n"
        ));
        check_error(&text, "f.toml:18:8: clause name \"rofr\" is already used at f.toml:10:8");
    }

    fn trigger(action: &str) -> String {
        contract(&format!(
            "{FIRST_REFUSAL}[[version.review_trigger]]\nname = \"t\"\ncondition = 'metrics.profit > 1.0'\n{action}"
        ))
    }

    #[test]
    fn a_suspension_must_name_a_clause_of_the_version() {
        let parsed =
            check(&trigger("action = \"suspend_clauses\"\nclauses = [\"rofr\"]\nfrom = 2025-10-28\n"));
        let ClauseKind::ReviewTrigger(terms) = &parsed.versions[0].clauses[1].kind else {
            panic!("not a trigger")
        };
        assert_eq!(
            terms.action,
            TriggerAction::SuspendClauses { clauses: vec!["rofr".into()], from: at("2025-10-28") }
        );
        check_error(
            &trigger(
                "action = \"suspend_clauses\"\nclauses = [\"rofr\", \"exclusive\"]\nfrom = 2025-10-28\n",
            ),
            "f.toml:21:20: there is no clause \"exclusive\" in this version to suspend; expected one of [\"rofr\", \"t\"]",
        );
        check_error(
            &trigger("action = \"suspend_clauses\"\n"),
            "f.toml:20:10: action \"suspend_clauses\" needs clauses",
        );
        check_error(
            &trigger("action = \"flag_for_review\"\nclauses = [\"rofr\"]\n"),
            "f.toml:20:10: action \"flag_for_review\" takes no clauses",
        );
        check_error(&trigger("action = \"review\"\n"), "f.toml:20:10: unknown variant `review`");
    }

    #[test]
    fn an_invalid_condition_points_inside_the_expression() {
        let text = trigger("action = \"flag_for_review\"\n");
        // Line 18 is `condition = 'metrics.profit > 1.0'`; the string opens at column 13.
        check_error(&text.replace("> 1.0", "> > 1.0"), "f.toml:19:31: invalid CEL condition");
        check_error(
            &text.replace("metrics.profit", "profit"),
            "f.toml:19:14: the condition refers to `profit` at 1:1 of the expression; only `metrics`",
        );
        check_error(
            &text.replace("'metrics.profit > 1.0'", "\"profits\\t\""),
            "f.toml:19:13: the condition refers to `profits`",
        );
        check_error(
            &text.replace("'metrics.profit > 1.0'", "'''\nmetrics.profit > 1.0 &&\n  (events'''"),
            "f.toml:21:10: invalid CEL condition at 2:10 of the expression: Syntax error: missing",
        );
    }

    #[test]
    fn names_are_checked_with_the_domain_constructors() {
        check_error(
            &contract(&FIRST_REFUSAL.replace("\"azure\"", "\"Azure Cloud\"")),
            "f.toml:11:10: provider name \"Azure Cloud\" must be",
        );
        let scoped = |scope: &str| contract(&format!("{FIRST_REFUSAL}scope = {scope}\n"));
        check(&scoped(
            "{ workloads = [\"training\"], accelerators = [\"h100\"], regions = [\"azure/eastus\", \"aws/*\"] }",
        ));
        check_error(
            &scoped("{ regions = [\"eastus\"] }"),
            "f.toml:17:22: region \"eastus\" is not provider-qualified; write provider/region (for example azure/eastus)",
        );
        check_error(
            &scoped("{ workloads = [\"gaming\"] }"),
            "f.toml:17:24: workload class \"gaming\" is not one of training",
        );
        check_error(
            &scoped("{ accelerators = [\"\"] }"),
            "f.toml:17:27: accelerator name \"\" is empty or malformed",
        );
        check_error(&scoped("{ regions = [\"azure/ \"] }"), "f.toml:17:22: \"azure/\" has an empty region");
        check_error(
            &HEADER.replace("id = \"c\"", "id = \"my contract\""),
            "f.toml:2:6: contract id \"my contract\" must be",
        );
        check_error(
            &HEADER.replace("[contract]\n", "[contract]\nparties = [\"buyer\", \"oci\"]\n"),
            "f.toml:4:16: the counterparty \"azure\" is not one of the parties [\"buyer\", \"oci\"]",
        );
    }

    const EXCLUSIVE_API_TO_AZURE: &str = "\
[[version.exclusivity]]
name = \"api-exclusive\"
holder = \"azure\"
workloads = [\"api\"]
emergency_release = false
";

    #[test]
    fn an_exclusivity_contradicts_another_providers_first_refusal_in_the_same_version() {
        // A contract among several parties, so that clauses may name holders other than azure.
        let contract = |clauses: &str| {
            contract(clauses).replace(
                "counterparty = \"azure\"\n",
                "counterparty = \"azure\"\nparties = [\"azure\", \"oci\", \"gcp\"]\n",
            )
        };
        let oci_refusal = FIRST_REFUSAL.replace("\"azure\"", "\"oci\"");
        // Line 10 starts the exclusivity; the first refusal's holder is on line 17.
        check_error(
            &contract(&format!("{EXCLUSIVE_API_TO_AZURE}{oci_refusal}")),
            "f.toml:17:10: first refusal \"rofr\" gives oci the first call on api workloads, but exclusivity \
             \"api-exclusive\" (contract \"c\", version \"v1\", f.toml:12:10) reserves api to azure",
        );
        // A first refusal whose scope leaves the exclusive workload out is fine, and so is the same holder.
        check(&contract(&format!(
            "{EXCLUSIVE_API_TO_AZURE}{oci_refusal}scope = {{ workloads = [\"training\"] }}\n"
        )));
        check(&contract(&format!("{EXCLUSIVE_API_TO_AZURE}{FIRST_REFUSAL}")));
        check_error(
            &contract(&format!(
                "{EXCLUSIVE_API_TO_AZURE}{}",
                EXCLUSIVE_API_TO_AZURE.replace("\"azure\"", "\"gcp\"").replace("api-exclusive", "x")
            )),
            "f.toml:17:10: exclusivity \"x\" reserves api to gcp, but exclusivity \"api-exclusive\"",
        );
    }

    #[test]
    fn a_holder_must_be_a_party_to_the_contract() {
        // A typo in the holder would otherwise give the right to nobody, silently.
        check_error(
            &contract(&FIRST_REFUSAL.replace("holder = \"azure\"", "holder = \"azrue\"")),
            "f.toml:11:10: holder \"azrue\" is not a party to this contract; the parties are azure",
        );
        check_error(
            &contract(&EXCLUSIVE_API_TO_AZURE.replace("\"azure\"", "\"oci\"")),
            "f.toml:11:10: holder \"oci\" is not a party to this contract; the parties are azure",
        );
    }

    #[test]
    fn first_refusal_terms_are_list_fixed_discount_or_market() {
        let terms = |terms: &str| check(&contract(&format!("{FIRST_REFUSAL}terms = {terms}\n")));
        let of = |contract: Contract| match &contract.versions[0].clauses[0].kind {
            ClauseKind::FirstRefusal(f) => f.terms,
            _ => unreachable!(),
        };
        assert_eq!(of(check(&contract(FIRST_REFUSAL))), HolderTerms::List);
        assert_eq!(of(terms("\"market\"")), HolderTerms::Market);
        assert_eq!(of(terms("{ discount = 0.3 }")), HolderTerms::Discount { off: 0.3 });
        assert_eq!(of(terms("{ fixed = 2.75 }")), HolderTerms::Fixed { price: Price::new(2.75).unwrap() });
        check_error(
            &contract(&format!("{FIRST_REFUSAL}terms = {{ discount = 1.5 }}\n")),
            "f.toml:17:9: terms: discount 1.5 is out of range",
        );
        check_error(
            &contract(&format!("{FIRST_REFUSAL}terms = \"cheap\"\n")),
            "f.toml:17:9: terms: string is not understood; expected terms = \"list\"",
        );
    }

    #[test]
    fn contracts_of_one_set_may_not_contradict_each_other_at_overlapping_times() {
        let azure = contract(EXCLUSIVE_API_TO_AZURE);
        let oci = |effective: &str| {
            format!(
                "[contract]\nid = \"oci\"\ncounterparty = \"oci\"\n\n[[version]]\nid = \"msa\"\neffective = {effective}\n\
                 expires = 2035-01-01\n{}",
                FIRST_REFUSAL.replace("\"azure\"", "\"oci\"")
            )
        };
        check_rendered(
            set_of(&[("azure.toml", &azure), ("oci.toml", &oci("2029-06-01"))]).map(|_| ()),
            "oci.toml:11:10: first refusal \"rofr\" gives oci the first call on api workloads, but exclusivity \
             \"api-exclusive\" (contract \"c\", version \"v1\", azure.toml:11:10) reserves api to azure at overlapping times",
        );
        let set = set_of(&[("azure.toml", &azure), ("oci.toml", &oci("2030-01-01"))]).unwrap();
        assert_eq!(set.contracts.len(), 2);
        check_rendered(
            set_of(&[("a.toml", &azure), ("b.toml", &azure)]).map(|_| ()),
            "b.toml:2:6: contract id \"c\" is already used by a.toml (a.toml:2:6)",
        );
    }

    #[test]
    fn policy_files_are_parsed_and_checked() {
        let text = "[policy]\nallowed_regions = [\"azure/eastus\"]\n\n[[policy.price_ceiling]]\naccelerator = \"h100\"\n\
                    max_price_per_gpu_hour = 12\n\n[[policy.diversification]]\nmax_share = 0.4\n";
        let policy = parse_policy("p.toml", text).unwrap();
        assert_eq!(policy.price_ceiling(&Accelerator::new("H100").unwrap()), Some(Price::new(12.0).unwrap()));
        assert_eq!(policy.diversification[0].basis, ShareBasis::Gpus);
        let rendered = |text: &str| parse_policy("p.toml", text).map(|_| ());
        check_rendered(
            rendered(&text.replace("= 12", "= -1")),
            "p.toml:6:26: price -1 USD per GPU-hour must be",
        );
        check_rendered(
            rendered(&text.replace("allowed_regions", "regions")),
            "p.toml:2:1: unknown field `regions`",
        );
        check_rendered(rendered(&text.replace("0.4", "2.0")), "p.toml:9:13: max_share 2 is out of range");
        // Providers with no contract on file: allowed unless the policy says exclude.
        assert!(!policy.exclude_uncontracted);
        let excluding = text.replace("[policy]\n", "[policy]\nuncontracted = \"exclude\"\n");
        assert!(parse_policy("p.toml", &excluding).unwrap().exclude_uncontracted);
        check_rendered(
            rendered(&text.replace("[policy]\n", "[policy]\nuncontracted = \"never\"\n")),
            "p.toml:2:16: uncontracted \"never\" is not \"allow\" or \"exclude\"",
        );
        // A file whose top table is [policy] is the policy whatever its name.
        let set = set_of(&[("buyer.toml", text)]).unwrap();
        assert_eq!(set.policy.source.as_deref(), Some("buyer.toml"));
        check_rendered(
            set_of(&[("policy.toml", text), ("x/policy.toml", text)]).map(|_| ()),
            "x/policy.toml:1:1: a second policy file",
        );
    }

    #[test]
    fn unreadable_files_are_named() {
        let missing = PathBuf::from("/nonexistent/dibs/azure.toml");
        let error = load_contract_files(&[missing]).unwrap_err();
        assert!(error.to_string().starts_with("/nonexistent/dibs/azure.toml: cannot read: "), "{error}");
    }

    #[test]
    fn bad_input_never_panics() {
        for text in
            ["\u{0}", "[contract", "[[version]]\nid=1", "[contract]\nid = \"é\"\ncounterparty = 5", "x = '''"]
        {
            assert!(parse_contract("f.toml", text).is_err());
            assert!(parse_policy("f.toml", text).is_err());
        }
    }

    fn examples_dir(set: &str) -> PathBuf {
        Path::new(env!("CARGO_MANIFEST_DIR")).join("../../examples/contracts").join(set)
    }

    #[test]
    fn a_file_names_itself_and_a_folder_its_toml_files_in_sorted_order() {
        let lone = examples_dir("default").join("policy.toml");
        let paths = contract_paths(&[lone, examples_dir("historical")]).unwrap();
        let names: Vec<_> = paths.iter().map(|p| p.file_name().unwrap().to_string_lossy()).collect();
        assert_eq!(
            names,
            [
                "policy.toml",
                "aws.toml",
                "azure.toml",
                "gcp.toml",
                "lambda.toml",
                "nebius.toml",
                "oci.toml",
                "policy.toml"
            ]
        );
    }

    #[test]
    fn the_historical_set_ends_first_refusal_and_adds_the_commitment_in_2025() {
        let set = load_contract_dir(&examples_dir("historical")).unwrap();
        assert_eq!(set.contracts.len(), 6);
        assert_eq!(set.policy.price_ceilings.len(), 5);

        let before = set.in_force(at("2025-01-01"), &[]);
        assert_eq!(before.first_refusals.len(), 1);
        let refusal = &before.first_refusals[0];
        assert_eq!(
            (refusal.contract, refusal.version, refusal.terms.holder.as_str()),
            ("azure-primary", "2019-original", "azure")
        );
        assert_eq!(refusal.terms.window_hours, 72);
        assert!(refusal.terms.covers_spillover && !refusal.terms.covers_failover);
        assert_eq!(before.exclusivities[0].terms.workloads, [WorkloadClass::Api]);
        assert_eq!(before.revenue_shares[0].terms.rate, 0.20);
        assert!(before.commitments.iter().all(|c| c.terms.amount < 1e9));

        let after = set.in_force(at("2025-11-01"), &[]);
        assert!(after.first_refusals.is_empty());
        let commitment = after.commitments.iter().find(|c| c.terms.provider.as_str() == "azure").unwrap();
        assert_eq!((commitment.terms.amount, commitment.terms.currency.as_str()), (250e9, "USD"));
        assert_eq!(after.exclusivities.len(), 1);
        assert_eq!(after.review_triggers.len(), 1);

        let trigger = &after.review_triggers[0].terms;
        let met = crate::contract::Metrics::new()
            .with_metric("cumulative_profit", 101e9)
            .with_event("agi_declared");
        assert_eq!(trigger.condition.evaluate(&met), Ok(true));
    }

    #[test]
    fn the_embedded_sets_match_the_example_directories() {
        for name in ["historical", "default"] {
            let embedded = builtin_contracts(name).unwrap();
            let loaded = load_contract_dir(&examples_dir(name)).unwrap();
            let ids = |set: &ContractSet| set.contracts.iter().map(|c| c.id.clone()).collect::<Vec<_>>();
            assert_eq!(ids(&embedded), ids(&loaded), "{name}");
            let when = at("2026-11-28");
            assert_eq!(
                describe_in_force(&embedded, when).replace("builtin:", ""),
                describe_in_force(&loaded, when).replace(&examples_dir("").display().to_string(), ""),
            );
        }
        assert!(builtin_contracts("nonesuch").is_none());
    }

    #[test]
    fn the_default_set_has_a_first_refusal_in_force_today() {
        let set = builtin_contracts("default").unwrap();
        let terms = set.in_force(at("2026-11-28"), &[]);
        assert_eq!(terms.first_refusals.len(), 1);
        assert_eq!(terms.first_refusals[0].terms.holder.as_str(), "azure");
        assert_eq!(terms.exclusivities.len(), 1);
        assert_eq!(terms.versions.len(), 6);
    }

    #[test]
    fn describe_lists_the_terms_in_force() {
        let set = builtin_contracts("historical").unwrap();
        let text = describe_in_force(&set, at("2025-01-01"));
        let expected = "\
terms in force at 2025-01-01
contract aws-msa with aws (builtin:historical/aws.toml): version msa-2024, in force from 2024-01-01 until 2030-12-31
  no clauses
contract azure-primary with azure (builtin:historical/azure.toml): version 2019-original, in force from 2019-07-22 until 2025-10-28
  first_refusal rofr-new-capacity: holder azure, mode offer-first, offered 40% off the holder's list price, window 72 h, scope [workloads training inference batch; accelerators all; regions all], covers spillover, does not cover failover, a pricier market after a decline goes back to the holder with its terms
  exclusivity api-exclusive: holder azure, workloads api, no emergency release
  revenue_share revenue-share: partner azure, 20% of revenue from api, chat
  review_trigger agi-review: when metrics.cumulative_profit >= 100e9 && \"agi_declared\" in events, flag the contract for review
contract gcp-msa with gcp (builtin:historical/gcp.toml): version msa-2024, in force from 2024-01-01 until 2030-12-31
  no clauses
contract lambda-msa with lambda (builtin:historical/lambda.toml): version msa-2024, in force from 2024-01-01 until 2030-12-31
  no clauses
contract nebius-msa with nebius (builtin:historical/nebius.toml): version msa-2024, in force from 2024-01-01 until 2030-12-31
  no clauses
contract oci-msa with oci (builtin:historical/oci.toml): version msa-2024, in force from 2024-01-01 until 2030-12-31
  commitment oci-2024-300m: provider oci, 300M USD from 2024-01-01 until 2025-01-01 (period over), all spend counts
policy (builtin:historical/policy.toml):
  allowed regions: any
  price ceiling H100: $15.0000/GPU-h
  price ceiling H200: $15.0000/GPU-h
  price ceiling A100-80GB: $6.0000/GPU-h
  price ceiling B200: $18.0000/GPU-h
  price ceiling MI300X: $8.0000/GPU-h
  diversification: at most 40% of GPUs per provider, scope [workloads training; accelerators all; regions all], at least 2 providers for inference
";
        assert_eq!(text, expected);
        let later = describe_in_force(&set, at("2031-06-01"));
        assert!(
            later.contains(
                "contract azure-primary with azure (builtin:historical/azure.toml): no version in force"
            ),
            "{later}"
        );
    }
}
