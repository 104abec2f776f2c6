//! The EC2 actions dibs calls, each from its parameters to the adapter's own types.

use std::collections::BTreeMap;
use std::num::NonZeroU32;

use dibs_core::accelerators::variant_for_memory;
use dibs_core::types::{Accelerator, GpuCount};

use super::client::{Client, Retry};
use super::error::Ec2Error;
use super::wire::{self, Params};

/// Items asked for per page of a described list (EC2's largest page for these actions).
pub const PAGE_SIZE: u32 = 100;
/// Instance ids in one `TerminateInstances` call at most (EC2's own limit is 1,000).
pub const MAX_IDS_PER_CALL: usize = 1000;

/// An instance type that carries GPUs, as `DescribeInstanceTypes` describes it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GpuInstanceType {
    pub instance_type: String,
    /// dibs's canonical name (`H100`, `A100-80GB`), from EC2's name and the memory per GPU.
    pub accelerator: Accelerator,
    /// EC2's own name and maker of the GPU (`H100`, `NVIDIA`).
    pub gpu_name: String,
    pub manufacturer: Option<String>,
    pub gpus_per_node: GpuCount,
    pub gpu_memory_mib: Option<u64>,
}

/// An instance's lifecycle state, as EC2 names it.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub enum InstanceState {
    Pending,
    Running,
    ShuttingDown,
    Terminated,
    Stopping,
    Stopped,
    Other(String),
}

impl InstanceState {
    pub fn parse(name: &str) -> Self {
        match name {
            "pending" => Self::Pending,
            "running" => Self::Running,
            "shutting-down" => Self::ShuttingDown,
            "terminated" => Self::Terminated,
            "stopping" => Self::Stopping,
            "stopped" => Self::Stopped,
            other => Self::Other(other.to_owned()),
        }
    }
}

/// States of an instance that holds (or will hold) its node: what a launch must not repeat.
pub const LIVE_STATES: [&str; 4] = ["pending", "running", "stopping", "stopped"];
/// Every state but `terminated`: what a termination waits for.
pub const NOT_TERMINATED_STATES: [&str; 5] = ["pending", "running", "stopping", "stopped", "shutting-down"];

/// An instance as `DescribeInstances` or `RunInstances` describes it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Instance {
    pub id: String,
    pub instance_type: String,
    pub zone: Option<String>,
    pub state: InstanceState,
    /// Why the instance is in its state (`Server.InsufficientInstanceCapacity`, a spot
    /// interruption), when EC2 says.
    pub state_reason: Option<String>,
    /// A spot instance, which EC2 may take back.
    pub spot: bool,
    pub tags: BTreeMap<String, String>,
}

impl From<wire::InstanceInfo> for Instance {
    fn from(info: wire::InstanceInfo) -> Self {
        let tags = info.tags();
        let state_reason = info.state_reason.and_then(|reason| {
            let text = [reason.code, reason.message]
                .into_iter()
                .flatten()
                .filter(|s| !s.is_empty())
                .collect::<Vec<_>>();
            (!text.is_empty()).then(|| text.join(": "))
        });
        Self {
            id: info.instance_id,
            instance_type: info.instance_type,
            zone: info.placement.and_then(|p| p.availability_zone).filter(|zone| !zone.is_empty()),
            state: InstanceState::parse(&info.instance_state.name),
            state_reason,
            spot: info.instance_lifecycle.as_deref() == Some("spot"),
            tags,
        }
    }
}

/// What to launch from: the operator's launch template, or an image with its network.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LaunchSource {
    /// A launch template by name, at a version (`None`: its default version).
    Template { name: String, version: Option<String> },
    /// An image; a subnet per zone (a subnet lies in one zone), and security groups.
    Image { image_id: String, subnet_by_zone: BTreeMap<String, String>, security_group_ids: Vec<String> },
}

/// On-demand or spot.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Market {
    OnDemand,
    /// A spot instance, at most `max_price` dollars an hour (`None`: up to on-demand).
    Spot {
        max_price: Option<String>,
    },
}

/// Everything one `RunInstances` call says.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RunRequest<'a> {
    pub instance_type: &'a str,
    pub zone: &'a str,
    pub nodes: NonZeroU32,
    pub client_token: &'a str,
    pub source: &'a LaunchSource,
    pub market: &'a Market,
    pub tags: &'a [(String, String)],
    pub dry_run: bool,
}

impl Client {
    /// The GPU instance types of a region, `names` only when it is not empty.
    pub fn describe_gpu_instance_types(
        &self,
        region: &str,
        names: &[&str],
    ) -> Result<Vec<GpuInstanceType>, Ec2Error> {
        let mut params = Params::new();
        params.list("InstanceType", names);
        let types: Vec<wire::InstanceTypeInfo> = if names.is_empty() {
            self.paginate::<wire::DescribeInstanceTypesResponse>(
                region,
                "DescribeInstanceTypes",
                &params,
                PAGE_SIZE,
            )?
        } else {
            // EC2 refuses MaxResults together with InstanceType.N.
            let answer: wire::DescribeInstanceTypesResponse =
                self.call(region, "DescribeInstanceTypes", &params, Retry::Always)?;
            answer.instance_type_set.item
        };
        Ok(types.into_iter().filter_map(gpu_instance_type).collect())
    }

    /// The availability zones that offer each of `instance_types`.
    pub fn describe_offerings(
        &self,
        region: &str,
        instance_types: &[&str],
    ) -> Result<BTreeMap<String, Vec<String>>, Ec2Error> {
        let mut params = Params::new();
        params.set("LocationType", "availability-zone").filter("instance-type", instance_types);
        let offerings = self.paginate::<wire::DescribeInstanceTypeOfferingsResponse>(
            region,
            "DescribeInstanceTypeOfferings",
            &params,
            PAGE_SIZE,
        )?;
        let mut zones: BTreeMap<String, Vec<String>> = BTreeMap::new();
        for offering in offerings {
            zones.entry(offering.instance_type).or_default().push(offering.location);
        }
        for list in zones.values_mut() {
            list.sort();
            list.dedup();
        }
        Ok(zones)
    }

    /// The region's availability zones that are `available` (not local or wavelength zones,
    /// which an account must opt into).
    pub fn describe_available_zones(&self, region: &str) -> Result<Vec<String>, Ec2Error> {
        let answer: wire::DescribeAvailabilityZonesResponse =
            self.call(region, "DescribeAvailabilityZones", &Params::new(), Retry::Always)?;
        let mut zones: Vec<String> = answer
            .availability_zone_info
            .item
            .into_iter()
            .filter(|zone| zone.zone_state.as_deref().is_none_or(|state| state == "available"))
            .filter(|zone| zone.zone_type.as_deref().is_none_or(|kind| kind == "availability-zone"))
            .map(|zone| zone.zone_name)
            .collect();
        zones.sort();
        Ok(zones)
    }

    /// Launches `nodes` instances, all or none (`MinCount = MaxCount`).
    pub fn run_instances(&self, region: &str, run: &RunRequest<'_>) -> Result<Vec<Instance>, Ec2Error> {
        let answer: wire::RunInstancesResponse =
            self.call(region, "RunInstances", &run_params(run), Retry::OnlyRefusals)?;
        Ok(answer.instances_set.item.into_iter().map(Instance::from).collect())
    }

    /// Instances that pass every filter (`tag:KEY`, `tag-key`, `instance-state-name`, ...).
    pub fn describe_instances(
        &self,
        region: &str,
        filters: &[(&str, &[&str])],
    ) -> Result<Vec<Instance>, Ec2Error> {
        let mut params = Params::new();
        for (name, values) in filters {
            params.filter(name, values);
        }
        let instances = self.paginate::<wire::DescribeInstancesResponse>(
            region,
            "DescribeInstances",
            &params,
            PAGE_SIZE,
        )?;
        Ok(instances.into_iter().map(Instance::from).collect())
    }

    /// Asks EC2 to terminate instances; returns each one's state after the call.
    pub fn terminate_instances(
        &self,
        region: &str,
        ids: &[String],
    ) -> Result<Vec<(String, InstanceState)>, Ec2Error> {
        let mut states = Vec::new();
        for chunk in ids.chunks(MAX_IDS_PER_CALL) {
            let mut params = Params::new();
            params.list("InstanceId", chunk);
            let answer: wire::TerminateInstancesResponse =
                self.call(region, "TerminateInstances", &params, Retry::Always)?;
            states.extend(
                answer
                    .instances_set
                    .item
                    .into_iter()
                    .map(|change| (change.instance_id, InstanceState::parse(&change.current_state.name))),
            );
        }
        Ok(states)
    }
}

/// The GPU type an instance type carries, in dibs's names; `None` for an instance type
/// without GPUs (or with several kinds, which no EC2 type has).
fn gpu_instance_type(info: wire::InstanceTypeInfo) -> Option<GpuInstanceType> {
    let gpus = info.gpu_info?.gpus.item;
    let [gpu] = <[wire::GpuDeviceInfo; 1]>::try_from(gpus).ok()?;
    let memory = gpu.memory_info.map(|memory| memory.size_in_mib);
    let canonical = Accelerator::new(&gpu.name).ok()?;
    // EC2 names the GPU by model and gives its memory apart (an 80 GB A100 is "A100").
    let accelerator =
        Accelerator::new(variant_for_memory(canonical.as_str(), memory.map(|mib| mib as f64))).ok()?;
    Some(GpuInstanceType {
        instance_type: info.instance_type,
        accelerator,
        gpu_name: gpu.name,
        manufacturer: gpu.manufacturer,
        gpus_per_node: GpuCount::new(gpu.count).ok()?,
        gpu_memory_mib: memory,
    })
}

fn run_params(run: &RunRequest<'_>) -> Params {
    let mut params = Params::new();
    let nodes = run.nodes.to_string();
    params
        .set("InstanceType", run.instance_type)
        .set("MinCount", nodes.as_str())
        .set("MaxCount", nodes.as_str())
        .set("ClientToken", run.client_token)
        .set("Placement.AvailabilityZone", run.zone);
    match run.source {
        LaunchSource::Template { name, version } => {
            params.set("LaunchTemplate.LaunchTemplateName", name.as_str());
            if let Some(version) = version {
                params.set("LaunchTemplate.Version", version.as_str());
            }
        }
        LaunchSource::Image { image_id, subnet_by_zone, security_group_ids } => {
            params.set("ImageId", image_id.as_str());
            if let Some(subnet) = subnet_by_zone.get(run.zone) {
                params.set("SubnetId", subnet.as_str());
            }
            params.list("SecurityGroupId", security_group_ids);
        }
    }
    if let Market::Spot { max_price } = run.market {
        params.set("InstanceMarketOptions.MarketType", "spot");
        params.set("InstanceMarketOptions.SpotOptions.SpotInstanceType", "one-time");
        if let Some(price) = max_price {
            params.set("InstanceMarketOptions.SpotOptions.MaxPrice", price.as_str());
        }
    }
    if !run.tags.is_empty() {
        params.set("TagSpecification.1.ResourceType", "instance");
        for (index, (key, value)) in run.tags.iter().enumerate() {
            params.set(format!("TagSpecification.1.Tag.{}.Key", index + 1), key.as_str());
            params.set(format!("TagSpecification.1.Tag.{}.Value", index + 1), value.as_str());
        }
    }
    if run.dry_run {
        params.set("DryRun", "true");
    }
    params
}
