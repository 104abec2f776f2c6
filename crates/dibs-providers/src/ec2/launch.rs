//! Launching an allocation's nodes: find them first, then zone after zone.
//!
//! A launch first looks for instances tagged with the allocation: after a crash between
//! `RunInstances` and the ledger's record of it, the next launch finds them instead of
//! launching twice. The client token alone does not protect: a server may not honour it
//! (moto does not), and it is only kept for some hours. Then it tries the zones in the
//! caller's order, skipping the zones remembered to have failed for the instance type in
//! the same market: a
//! zone out of capacity is remembered and the next one tried; a region quota ends the
//! launch (every zone would answer the same); a credential error ends it at once (it is
//! the operator's to fix, never "no capacity"); any other error ends it too.

use std::fmt;
use std::num::NonZeroU32;
use std::sync::{Mutex, PoisonError};
use std::time::Instant;

use super::api::{Instance, LaunchSource, Market, RunRequest};
use super::client::Client;
use super::error::{Ec2Error, ErrorClass};
use super::zones::{Pool, ZoneMemory};

/// The tag naming the request an instance serves.
pub const TAG_REQUEST: &str = "dibs:request";
/// The tag naming the allocation an instance belongs to: how dibs finds its instances.
pub const TAG_ALLOCATION: &str = "dibs:allocation";
/// The tag naming the ledger entry that decided the launch.
pub const TAG_ENTRY: &str = "dibs:entry";
/// The tag naming the ledger (its first entry's hash) whose allocation an instance is: two
/// dibs installations in one account tell their instances apart by it.
pub const TAG_LEDGER: &str = "dibs:ledger";
/// EC2's longest client token.
const MAX_CLIENT_TOKEN: usize = 64;

/// Who owns the instances of a launch, written on each as tags.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Owner {
    pub request: String,
    pub allocation: u64,
    pub entry: u64,
}

impl Owner {
    pub fn tags(&self) -> Vec<(String, String)> {
        vec![
            (TAG_REQUEST.to_owned(), self.request.clone()),
            (TAG_ALLOCATION.to_owned(), self.allocation.to_string()),
            (TAG_ENTRY.to_owned(), self.entry.to_string()),
        ]
    }

    /// The client token of the launch in `zone`: the same for a retry of the same launch,
    /// different per zone (EC2 refuses a token reused with other parameters).
    pub fn client_token(&self, zone: &str) -> String {
        let token = format!("dibs-{}-{}-{zone}", self.allocation, self.entry);
        token.chars().take(MAX_CLIENT_TOKEN).collect()
    }
}

/// One allocation's launch.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LaunchSpec {
    pub region: String,
    pub instance_type: String,
    /// The zones to try, in order (those that offer the instance type).
    pub zones: Vec<String>,
    pub nodes: NonZeroU32,
    pub owner: Owner,
    pub source: LaunchSource,
    pub market: Market,
    /// `DryRun=true`: EC2 checks permissions and parameters and launches nothing.
    pub dry_run: bool,
}

impl LaunchSpec {
    fn pool<'a>(&'a self, zone: &'a str) -> Pool<'a> {
        let spot = matches!(self.market, Market::Spot { .. });
        Pool { instance_type: &self.instance_type, spot, zone }
    }
}

/// A zone passed over, and why.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ZoneFailure {
    pub zone: String,
    /// EC2's error code.
    pub code: String,
    pub message: String,
    /// True when the zone was not asked now: it failed a moment ago and is remembered.
    pub remembered: bool,
}

impl fmt::Display for ZoneFailure {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let remembered = if self.remembered { " (remembered)" } else { "" };
        write!(f, "{}: {}{remembered}", self.zone, self.code)
    }
}

/// What a launch did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Launched {
    /// The allocation's instances already exist (an earlier launch): nothing was launched.
    /// They may be fewer than asked for, when some have ended since; the caller decides.
    Found(Vec<Instance>),
    /// Launched in `zone`, after the zones in `passed` answered no capacity.
    Launched { zone: String, instances: Vec<Instance>, passed: Vec<ZoneFailure> },
    /// A dry run EC2 says would have succeeded in `zone`; nothing was launched.
    DryRun { zone: String, passed: Vec<ZoneFailure> },
}

/// Why a launch launched nothing.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum LaunchError {
    /// Every zone answered no capacity (or a region quota is reached): the evidence, zone
    /// by zone. The GPUs go back to the market.
    #[error("no capacity for {nodes} x {instance_type} in {region}: {}", list(failures))]
    NoCapacity { region: String, instance_type: String, nodes: NonZeroU32, failures: Vec<ZoneFailure> },
    /// The credentials were refused: the operator's to fix.
    #[error("EC2 refused dibs's credentials: {0}")]
    Credentials(Box<Ec2Error>),
    /// No zone to try.
    #[error("no zone of {region} to launch {instance_type} in")]
    NoZones { region: String, instance_type: String },
    /// Any other failure (a parameter EC2 refused, EC2 unreachable until the deadline).
    #[error("launching {instance_type} failed: {error}")]
    Failed { instance_type: String, error: Box<Ec2Error> },
}

impl LaunchError {
    fn from_call(spec: &LaunchSpec, error: Ec2Error) -> Self {
        match error.class() {
            ErrorClass::Auth => Self::Credentials(Box::new(error)),
            _ => Self::Failed { instance_type: spec.instance_type.clone(), error: Box::new(error) },
        }
    }
}

fn list(failures: &[ZoneFailure]) -> String {
    failures.iter().map(ToString::to_string).collect::<Vec<_>>().join(", ")
}

/// Launches `spec` unless its instances exist; `now` is the instant zones are remembered at.
pub fn launch(
    client: &Client,
    memory: &Mutex<ZoneMemory>,
    spec: &LaunchSpec,
    ledger: &str,
    now: Instant,
) -> Result<Launched, LaunchError> {
    let existing = instances_of(client, &spec.region, ledger, spec.owner.allocation)
        .map_err(|error| LaunchError::from_call(spec, error))?;
    if !existing.is_empty() {
        return Ok(Launched::Found(existing));
    }
    if spec.zones.is_empty() {
        return Err(LaunchError::NoZones {
            region: spec.region.clone(),
            instance_type: spec.instance_type.clone(),
        });
    }
    let mut tags = spec.owner.tags();
    if !ledger.is_empty() {
        tags.push((TAG_LEDGER.to_owned(), ledger.to_owned()));
    }
    let mut passed = Vec::new();
    for zone in &spec.zones {
        if let Some(failure) = remembered_failure(memory, spec, zone, now) {
            passed.push(failure);
            continue;
        }
        let client_token = spec.owner.client_token(zone);
        let run = RunRequest {
            instance_type: &spec.instance_type,
            zone,
            nodes: spec.nodes,
            client_token: &client_token,
            source: &spec.source,
            market: &spec.market,
            tags: &tags,
            dry_run: spec.dry_run,
        };
        let error = match client.run_instances(&spec.region, &run) {
            Ok(instances) => return Ok(Launched::Launched { zone: zone.clone(), instances, passed }),
            Err(error) => error,
        };
        let class = error.class();
        if class == ErrorClass::DryRunSucceeded {
            return Ok(Launched::DryRun { zone: zone.clone(), passed });
        }
        if !class.is_capacity() {
            return Err(LaunchError::from_call(spec, error));
        }
        let failure = zone_failure(zone, &error);
        passed.push(failure.clone());
        if class == ErrorClass::RegionQuota {
            break;
        }
        memory.lock().unwrap_or_else(PoisonError::into_inner).remember(spec.pool(zone), &failure.code, now);
    }
    Err(LaunchError::NoCapacity {
        region: spec.region.clone(),
        instance_type: spec.instance_type.clone(),
        nodes: spec.nodes,
        failures: passed,
    })
}

/// The allocation's instances that hold or will hold a node, found by tag (and by the
/// ledger's tag, when one is given).
pub fn instances_of(
    client: &Client,
    region: &str,
    ledger: &str,
    allocation: u64,
) -> Result<Vec<Instance>, Ec2Error> {
    describe_allocation(client, region, ledger, allocation, &super::api::LIVE_STATES)
}

/// The allocation's instances in `states`: by its tag, and the ledger's when given.
pub(super) fn describe_allocation(
    client: &Client,
    region: &str,
    ledger: &str,
    allocation: u64,
    states: &[&str],
) -> Result<Vec<Instance>, Ec2Error> {
    let (tag, id, ledger_tag) =
        (format!("tag:{TAG_ALLOCATION}"), allocation.to_string(), format!("tag:{TAG_LEDGER}"));
    let (ids, ledgers) = ([id.as_str()], [ledger]);
    let mut filters: Vec<(&str, &[&str])> = vec![(&tag, &ids), ("instance-state-name", states)];
    if !ledger.is_empty() {
        filters.push((&ledger_tag, &ledgers));
    }
    client.describe_instances(region, &filters)
}

fn remembered_failure(
    memory: &Mutex<ZoneMemory>,
    spec: &LaunchSpec,
    zone: &str,
    now: Instant,
) -> Option<ZoneFailure> {
    let memory = memory.lock().unwrap_or_else(PoisonError::into_inner);
    let failed = memory.failed(spec.pool(zone), now)?;
    Some(ZoneFailure {
        zone: zone.to_owned(),
        code: failed.code.clone(),
        message: "failed a moment ago; not asked again yet".to_owned(),
        remembered: true,
    })
}

fn zone_failure(zone: &str, error: &Ec2Error) -> ZoneFailure {
    let message = match error {
        Ec2Error::Api { message, .. } => message.clone(),
        Ec2Error::GaveUp { last, .. } => last.to_string(),
        other => other.to_string(),
    };
    ZoneFailure {
        zone: zone.to_owned(),
        code: error.code().unwrap_or("unknown").to_owned(),
        message,
        remembered: false,
    }
}
