//! The AWS EC2 adapter: dibs buying real instances through EC2's own API.
//!
//! # The seam
//! An adapter turns the provider protocol's few questions into a cloud's own calls, and
//! the cloud's answers into facts the engine can act on:
//!
//! | dibs asks                          | EC2 is asked                                   |
//! |------------------------------------|------------------------------------------------|
//! | what can carry these GPUs, where?  | `DescribeInstanceTypes` (GpuInfo), `DescribeInstanceTypeOfferings`, `DescribeAvailabilityZones` |
//! | launch this allocation's nodes     | `DescribeInstances` by tag, then `RunInstances` zone after zone |
//! | which instances are this allocation's? | `DescribeInstances` by the `dibs:allocation` tag |
//! | release them                       | `TerminateInstances`, then `DescribeInstances` until terminated |
//! | what did dibs launch at all?       | `DescribeInstances` by the `dibs:allocation` tag key |
//!
//! [`Ec2`] is that seam; GCP, Azure and OCI adapters follow the same shape: a `config`
//! read from the cloud's standard variables with secrets kept out of `Debug`, a `client`
//! that signs and retries one call, `wire` structs that are the cloud's shapes and nothing
//! else, an `error` module that classifies the cloud's codes into capacity, quota,
//! credentials and throttling, and `launch` with its zone memory. What the adapter knows
//! is the cloud's; prices still come from the catalog (EC2 has no price call).
//!
//! # Decisions and their cost
//! * No AWS SDK: `aws-sdk-ec2` took over 30 minutes and 8 GB to build here. The Query API
//!   is form posts and XML answers: `aws-sigv4` signs (the SDK's own signer, about 20
//!   crates more, a few seconds of build), `ureq` sends, `quick-xml` reads.
//! * Instances are found by tag, never from memory: after a crash the tags are the truth.
//! * Calls block the calling thread (the broker calls providers from worker threads).
//! * HTTPS is the crate's `tls` feature (ureq's rustls on ring, about 20 s more of a clean
//!   build), off until a binary wires the adapter in: without it, only `http://` endpoints
//!   (a local EC2 such as moto's) are reached, and an `https://` one is refused with a
//!   message that says so.

mod api;
mod client;
mod config;
mod error;
mod launch;
mod wire;
mod zones;

pub use api::{GpuInstanceType, Instance, InstanceState, LaunchSource, Market};
pub use config::{ConfigError, Credentials, Ec2Config};
pub use error::{Ec2Error, ErrorClass, classify};
pub use launch::{
    LaunchError, LaunchSpec, Launched, Owner, TAG_ALLOCATION, TAG_ENTRY, TAG_LEDGER, TAG_REQUEST, ZoneFailure,
};
pub use zones::{FailedZone, Pool, ZONE_MEMORY, ZoneMemory};

use std::collections::BTreeMap;
use std::sync::{Mutex, PoisonError};
use std::time::{Duration, Instant};

use dibs_core::types::{Accelerator, GpuCount};

use client::Client;

/// How long the GPU instance types of a region are kept before they are described again.
pub const INSTANCE_TYPES_TTL: Duration = Duration::from_secs(60 * 60);
/// How often a termination looks whether its instances are terminated yet.
pub const TERMINATE_POLL: Duration = Duration::from_millis(500);

/// An instance type that carries an accelerator, and the zones of a region that offer it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ZonalCapacity {
    pub instance_type: String,
    pub accelerator: Accelerator,
    pub gpus_per_node: GpuCount,
    pub gpu_memory_mib: Option<u64>,
    /// Zones that offer the instance type and are available, by name.
    pub zones: Vec<String>,
}

/// What a termination did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Termination {
    /// Instances asked to terminate (none: the allocation had none left).
    pub requested: Vec<String>,
    /// Instances not yet `terminated` when the wait ended; empty when confirmed.
    pub not_yet_terminated: Vec<Instance>,
}

impl Termination {
    pub fn is_confirmed(&self) -> bool {
        self.not_yet_terminated.is_empty()
    }
}

/// The EC2 adapter. Calls block; it is `Sync`, so worker threads can share one.
#[derive(Debug)]
pub struct Ec2 {
    client: Client,
    zone_memory: Mutex<ZoneMemory>,
    instance_types: Mutex<BTreeMap<String, (Instant, Vec<GpuInstanceType>)>>,
    /// Per region, the only instance types worth describing (those a catalog prices);
    /// a region not named describes every type.
    only: BTreeMap<String, Vec<String>>,
    /// Held while a region's instance types are described, so callers that find the cache
    /// empty at once wait for one description instead of each making their own.
    describing: Mutex<()>,
    /// The ledger whose allocations this adapter launches ([`TAG_LEDGER`]); until bound,
    /// launches are not tagged with one and lookups do not filter by it.
    ledger: std::sync::OnceLock<String>,
}

impl Ec2 {
    pub fn new(config: Ec2Config) -> Self {
        Self {
            client: Client::new(config),
            zone_memory: Mutex::new(ZoneMemory::new()),
            instance_types: Mutex::new(BTreeMap::new()),
            only: BTreeMap::new(),
            describing: Mutex::new(()),
            ledger: std::sync::OnceLock::new(),
        }
    }

    /// Names the ledger this adapter launches for: every launch is tagged with it, and an
    /// allocation's instances are looked up (and terminated) only under it, so two
    /// installations in one account never touch each other's instances.
    pub fn bind_ledger(&self, ledger: &str) {
        let _ = self.ledger.set(ledger.to_owned());
    }

    /// The ledger bound, if any.
    pub fn ledger(&self) -> Option<&str> {
        self.ledger.get().map(String::as_str)
    }

    fn ledger_or_none(&self) -> &str {
        self.ledger().unwrap_or("")
    }

    /// Describes only these instance types of each region named (those a catalog prices):
    /// one short call instead of every type EC2 has (over a thousand, in pages).
    pub fn only_instance_types(mut self, by_region: BTreeMap<String, Vec<String>>) -> Self {
        self.only = by_region;
        self
    }

    pub fn config(&self) -> &Ec2Config {
        self.client.config()
    }

    /// The GPU instance types of a region (all when `names` is empty), described now.
    pub fn gpu_instance_types(&self, region: &str, names: &[&str]) -> Result<Vec<GpuInstanceType>, Ec2Error> {
        self.client.describe_gpu_instance_types(region, names)
    }

    /// The region's available zones.
    pub fn zones(&self, region: &str) -> Result<Vec<String>, Ec2Error> {
        self.client.describe_available_zones(region)
    }

    /// The instance types of `region` that carry `accelerator`, each with the available
    /// zones that offer it; types offered in no zone are left out.
    pub fn quote_capacity(
        &self,
        region: &str,
        accelerator: &Accelerator,
    ) -> Result<Vec<ZonalCapacity>, Ec2Error> {
        let carrying: Vec<GpuInstanceType> = self
            .cached_gpu_instance_types(region)?
            .into_iter()
            .filter(|t| &t.accelerator == accelerator)
            .collect();
        if carrying.is_empty() {
            return Ok(Vec::new());
        }
        let names: Vec<&str> = carrying.iter().map(|t| t.instance_type.as_str()).collect();
        let offered = self.client.describe_offerings(region, &names)?;
        let available = self.client.describe_available_zones(region)?;
        Ok(carrying
            .into_iter()
            .filter_map(|gpu_type| {
                let zones: Vec<String> = offered
                    .get(&gpu_type.instance_type)?
                    .iter()
                    .filter(|zone| available.contains(zone))
                    .cloned()
                    .collect();
                (!zones.is_empty()).then_some(ZonalCapacity {
                    instance_type: gpu_type.instance_type,
                    accelerator: gpu_type.accelerator,
                    gpus_per_node: gpu_type.gpus_per_node,
                    gpu_memory_mib: gpu_type.gpu_memory_mib,
                    zones,
                })
            })
            .collect())
    }

    /// Launches an allocation's nodes, or finds them if an earlier launch did; see
    /// [`launch`](launch::launch) for the order of zones and what each error means.
    pub fn launch(&self, spec: &LaunchSpec) -> Result<Launched, LaunchError> {
        launch::launch(&self.client, &self.zone_memory, spec, self.ledger_or_none(), Instant::now())
    }

    /// The allocation's instances that hold or will hold a node (pending, running,
    /// stopping, stopped), found by its tag.
    pub fn instances_of(&self, region: &str, allocation: u64) -> Result<Vec<Instance>, Ec2Error> {
        launch::instances_of(&self.client, region, self.ledger_or_none(), allocation)
    }

    /// Terminates the allocation's instances, found by tag, and waits up to `confirm_within`
    /// for every one to be `terminated`. Calling it again is harmless.
    pub fn terminate(
        &self,
        region: &str,
        allocation: u64,
        confirm_within: Duration,
    ) -> Result<Termination, Ec2Error> {
        let deadline = Instant::now() + confirm_within;
        let ledger = self.ledger_or_none();
        let live = |client: &Client| {
            launch::describe_allocation(client, region, ledger, allocation, &api::NOT_TERMINATED_STATES)
        };
        let requested: Vec<String> = live(&self.client)?.into_iter().map(|instance| instance.id).collect();
        if !requested.is_empty() {
            self.client.terminate_instances(region, &requested)?;
        }
        loop {
            let not_yet_terminated = live(&self.client)?;
            if not_yet_terminated.is_empty() || Instant::now() + TERMINATE_POLL > deadline {
                return Ok(Termination { requested, not_yet_terminated });
            }
            std::thread::sleep(TERMINATE_POLL);
        }
    }

    /// Terminates these instances of `region` by id (orphans: no allocation to find them by).
    pub fn terminate_instances(&self, region: &str, ids: &[String]) -> Result<(), Ec2Error> {
        if ids.is_empty() {
            return Ok(());
        }
        self.client.terminate_instances(region, ids).map(|_| ())
    }

    /// Every instance of the region that dibs launched (tagged with an allocation) and
    /// that holds a node, for orphan reports: those no open allocation owns.
    pub fn tagged_by_dibs(&self, region: &str) -> Result<Vec<Instance>, Ec2Error> {
        self.client.describe_instances(
            region,
            &[("tag-key", &[TAG_ALLOCATION]), ("instance-state-name", &api::LIVE_STATES)],
        )
    }

    fn cached_gpu_instance_types(&self, region: &str) -> Result<Vec<GpuInstanceType>, Ec2Error> {
        let _one_at_a_time = self.describing.lock().unwrap_or_else(PoisonError::into_inner);
        let now = Instant::now();
        let fresh = |(at, _): &&(Instant, Vec<GpuInstanceType>)| {
            now.saturating_duration_since(*at) < INSTANCE_TYPES_TTL
        };
        if let Some((_, types)) =
            self.instance_types.lock().unwrap_or_else(PoisonError::into_inner).get(region).filter(fresh)
        {
            return Ok(types.clone());
        }
        let names: Vec<&str> =
            self.only.get(region).map_or_else(Vec::new, |names| names.iter().map(String::as_str).collect());
        let types = match self.client.describe_gpu_instance_types(region, &names) {
            // A name EC2 does not know (a catalog's typo, a type not sold in the region)
            // fails the whole call: describe them all instead.
            Err(error) if !names.is_empty() && error.code() == Some("InvalidInstanceType") => {
                self.client.describe_gpu_instance_types(region, &[])?
            }
            other => other?,
        };
        self.instance_types
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .insert(region.to_owned(), (now, types.clone()));
        Ok(types)
    }
}
