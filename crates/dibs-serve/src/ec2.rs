//! The EC2 provider: the provider protocol's calls answered by EC2's own API
//! (`dibs_providers::ec2`), for `dibs serve --provider aws=ec2`.
//!
//! | call    | what EC2 is asked                                                          |
//! |---------|----------------------------------------------------------------------------|
//! | quote   | the instance types that carry the accelerator and the zones that offer them, in the allowed regions; the price is the catalog's (EC2 has no price call), and the offer says so |
//! | reserve | the allocation's instances by tag, else `RunInstances` zone after zone; then, call after call, whether every node is `running` |
//! | cancel, release | `TerminateInstances` of the instances tagged with the allocation, until they are `terminated` |
//! | solicit | refused: EC2 sells on the market and never holds a first refusal       |
//!
//! A reservation answers when every node runs (the allocation is ready), when EC2 cannot
//! launch it (no capacity in any zone, a region quota, the operator's bound on nodes, a
//! dry run: the GPUs go back to the market with EC2's codes as the evidence), or, while
//! nodes are still starting, not yet (the worker asks again in a few seconds). Refused
//! credentials open the provider's breaker and say what is wrong; they are never taken
//! for "no capacity".

use std::collections::{BTreeMap, BTreeSet};
use std::num::NonZeroU32;
use std::sync::{Mutex, PoisonError};
use std::time::Duration;

use dibs_core::engine::Ask;
use dibs_core::request::SpotPolicy;
use dibs_core::types::{Accelerator, Offer, OfferKind, ProviderName, Timestamp};
use dibs_providers::Call;
use dibs_providers::ec2::{
    Ec2, Ec2Config, Ec2Error, ErrorClass, Instance, InstanceState, LaunchError, LaunchSource, LaunchSpec,
    Launched, Market, Owner,
};
use dibs_providers::protocol::{QuoteReply, Reply, ReserveReply};

use crate::clock::unix_now;
use crate::remote::{Adapter, Tried};

/// Hours an EC2 offer promises its nodes within: an on-demand launch runs in minutes,
/// and the engine's delivery timer allows this plus its grace.
pub const EC2_LEAD_HOURS: u32 = 1;
/// How long a cancel or release waits, in one try, for its instances to be terminated.
const TERMINATE_WAIT: Duration = Duration::from_secs(20);

/// How dibs uses EC2: where, what to launch, and the operator's safety bounds.
#[derive(Debug, Clone)]
pub struct Ec2Settings {
    /// The provider's name in the catalog and the contracts (`aws`).
    pub provider: ProviderName,
    pub config: Ec2Config,
    /// The regions dibs may launch in.
    pub regions: Vec<String>,
    /// What to launch, by region; `None` key: every region without its own.
    pub launch_templates: BTreeMap<Option<String>, String>,
    /// `DryRun=true` on every launch: EC2 checks permissions and parameters and launches
    /// nothing.
    pub dry_run: bool,
    /// The most nodes dibs may hold in EC2 at once (running or starting).
    pub max_nodes: Option<u32>,
    /// Terminate the instances dibs launched that no open allocation owns, at start.
    pub reap_orphans: bool,
}

impl Ec2Settings {
    /// The launch template for `region`, if the operator named one.
    pub fn launch_template(&self, region: &str) -> Option<&str> {
        self.launch_templates
            .get(&Some(region.to_owned()))
            .or_else(|| self.launch_templates.get(&None))
            .map(String::as_str)
    }
}

/// The EC2 provider: the adapter and the catalog's prices for its instance types.
pub struct Ec2Provider {
    settings: Ec2Settings,
    ec2: Ec2,
    /// The catalog's offers of this provider, by (region, instance type, kind): the prices.
    catalog: BTreeMap<(String, String, OfferKind), Offer>,
    /// Allocations cancelled or released in this process: a launch still under way for one
    /// terminates what it started instead of delivering it.
    ended: Mutex<BTreeSet<u64>>,
    /// Allocations this process launched: if their instances are gone before they ran,
    /// the reservation failed (rather than launching again).
    launched: Mutex<BTreeSet<u64>>,
    /// Allocations delivered (every node ran), with their region and nodes: watched for
    /// nodes that go (a spot interruption). `None` until the first watch reads them from
    /// EC2's tags (after a restart this process delivered nothing yet).
    delivered: Mutex<Option<BTreeMap<u64, (String, usize)>>>,
    /// The zones that offer an instance type, by (region, type), and when they were asked.
    zones: Mutex<BTreeMap<(String, String), AskedZones>>,
}

/// Zones that offer an instance type, and when EC2 was asked.
type AskedZones = (std::time::Instant, Vec<String>);

/// How long the zones that offer an instance type are kept before EC2 is asked again.
const ZONES_TTL: Duration = Duration::from_secs(60);

impl Ec2Provider {
    pub fn new(settings: Ec2Settings, offers: &[Offer]) -> Self {
        let catalog: BTreeMap<(String, String, OfferKind), Offer> = offers
            .iter()
            .filter(|o| o.provider == settings.provider)
            .map(|o| ((o.region.to_string(), o.instance_type.clone(), o.kind), o.clone()))
            .collect();
        let mut types: BTreeMap<String, Vec<String>> = BTreeMap::new();
        for (region, instance_type, _) in catalog.keys() {
            types.entry(region.clone()).or_default().push(instance_type.clone());
        }
        for names in types.values_mut() {
            names.sort();
            names.dedup();
        }
        let ec2 = Ec2::new(settings.config.clone()).only_instance_types(types);
        Self {
            settings,
            ec2,
            catalog,
            ended: Mutex::default(),
            launched: Mutex::default(),
            delivered: Mutex::default(),
            zones: Mutex::default(),
        }
    }

    /// Whether an instance was launched for this ledger's allocations.
    fn ours(&self, instance: &Instance) -> bool {
        let ledger = instance.tags.get(dibs_providers::ec2::TAG_LEDGER).map(String::as_str);
        self.ec2.ledger().is_some_and(|ours| ledger == Some(ours))
    }

    /// Instances this ledger holds in EC2 now (starting or running), over the regions it
    /// uses; those of its own that belong to no allocation in `owned`; and those tagged by
    /// another dibs (another ledger, or none) that belong to none either.
    pub fn tagged(&self, owned: &BTreeSet<u64>) -> Result<(usize, Vec<Instance>, Vec<Instance>), Ec2Error> {
        let mut count = 0;
        let (mut orphans, mut foreign) = (Vec::new(), Vec::new());
        for region in &self.settings.regions {
            for instance in self.ec2.tagged_by_dibs(region)? {
                let owner =
                    instance.tags.get(dibs_providers::ec2::TAG_ALLOCATION).and_then(|a| a.parse().ok());
                let unowned = owner.is_none_or(|a| !owned.contains(&a));
                match (self.ours(&instance), unowned) {
                    (true, false) => count += 1,
                    (true, true) => {
                        count += 1;
                        orphans.push(instance);
                    }
                    (false, _) => foreign.push(instance),
                }
            }
        }
        Ok((count, orphans, foreign))
    }

    /// Terminates these instances (orphans), region by region.
    pub fn reap(&self, orphans: &[Instance]) -> Result<usize, Ec2Error> {
        let mut by_region: BTreeMap<String, Vec<String>> = BTreeMap::new();
        for instance in orphans {
            if let Some(region) = self.region_of(instance) {
                by_region.entry(region).or_default().push(instance.id.clone());
            }
        }
        let mut terminated = 0;
        for (region, ids) in by_region {
            self.ec2.terminate_instances(&region, &ids)?;
            terminated += ids.len();
        }
        Ok(terminated)
    }

    fn region_of(&self, instance: &Instance) -> Option<String> {
        let zone = instance.zone.as_deref()?;
        self.settings.regions.iter().find(|r| zone.starts_with(r.as_str())).cloned()
    }

    fn quote(&self, ask: &Ask) -> Tried {
        let provider = &self.settings.provider;
        let mut offers = Vec::new();
        let room = match self.room() {
            Ok(room) => room,
            Err(error) => return tried(error),
        };
        for region in &self.settings.regions {
            let allowed = ask.wanted.regions.is_empty()
                || ask.wanted.regions.iter().any(|l| {
                    &l.provider == provider && l.region.as_ref().is_none_or(|r| r.as_str() == region)
                });
            if !allowed {
                continue;
            }
            for accelerator in &ask.wanted.accelerators {
                let Ok(accelerator) = Accelerator::new(accelerator) else { continue };
                let types = match self.ec2.quote_capacity(region, &accelerator) {
                    Ok(types) => types,
                    Err(error) => return tried(error),
                };
                for capacity in types {
                    for kind in kinds(ask.wanted.spot) {
                        let key = (region.clone(), capacity.instance_type.clone(), *kind);
                        // EC2 names what it can launch, not what it costs: the catalog prices it.
                        let Some(priced) = self.catalog.get(&key) else { continue };
                        let nodes =
                            room.map_or(priced.nodes_available, |room| room.min(priced.nodes_available));
                        if nodes == 0 {
                            continue;
                        }
                        offers.push(Offer {
                            zone: capacity.zones.first().cloned(),
                            gpus_per_node: capacity.gpus_per_node,
                            nodes_available: nodes,
                            lead_time_hours: EC2_LEAD_HOURS,
                            valid_until: Some(ask.respond_by),
                            bills_from_delivery: true,
                            price_source: Some(format!(
                                "catalog price of {} (EC2 has no price call); offered in {}",
                                priced.id,
                                capacity.zones.join(", ")
                            )),
                            ..priced.clone()
                        });
                    }
                }
            }
        }
        Tried::Answered(
            Call::Quote { provider: provider.clone(), ask: ask.clone() }
                .input(Reply::Quotes(QuoteReply { offers })),
        )
    }

    /// Nodes dibs may still launch under the operator's bound (`None`: no bound).
    fn room(&self) -> Result<Option<u32>, Ec2Error> {
        let Some(max) = self.settings.max_nodes else { return Ok(None) };
        let (held, _, _) = self.tagged(&BTreeSet::new())?;
        Ok(Some(max.saturating_sub(u32::try_from(held).unwrap_or(u32::MAX))))
    }

    fn reserve(&self, call: &Call) -> Tried {
        let Call::Reserve { allocation, request, plan } = call else {
            return Tried::Refused("not a reservation".into());
        };
        if self.ec2.ledger().is_none() {
            // Launches are tagged with the ledger: none before it is read.
            return Tried::Pending("the ledger is not read yet".into());
        }
        let allocation = *allocation;
        let failed = |reason: String| answered(call, ReserveReply { ready_at: None, failed: Some(reason) });
        if self.ended.lock().unwrap_or_else(PoisonError::into_inner).contains(&allocation) {
            return failed("cancelled before it was launched".into());
        }
        let region = plan.region.to_string();
        if !self.settings.regions.contains(&region) {
            return failed(format!("{region} is not among the regions dibs launches in (--aws-regions)"));
        }
        let Some(template) = self.settings.launch_template(&region) else {
            return failed(format!(
                "no launch template for {region}: give --aws-launch-template {region}=NAME"
            ));
        };
        let Some(nodes) = NonZeroU32::new(plan.nodes) else { return failed("no nodes to launch".into()) };
        let existing = match self.ec2.instances_of(&region, allocation) {
            Ok(existing) => existing,
            Err(error) => return tried(error),
        };
        let launched_before =
            self.launched.lock().unwrap_or_else(PoisonError::into_inner).contains(&allocation);
        if !existing.is_empty() || launched_before {
            // Launched already (by this process, or by one before a crash): only whether its
            // nodes run is asked, one call per poll.
            return self.answer_delivery(call, allocation, &region, &existing, plan.nodes);
        }
        if let Some(max) = self.settings.max_nodes {
            match self.room() {
                Ok(Some(room)) if room < plan.nodes => {
                    return failed(format!(
                        "{} nodes would exceed --max-nodes {}={max} ({} nodes held now)",
                        plan.nodes,
                        self.settings.provider,
                        max - room
                    ));
                }
                Ok(_) => {}
                Err(error) => return tried(error),
            }
        }
        let zones = match self.zones_of(&region, &plan.accelerator, &plan.instance_type) {
            Ok(zones) => zones,
            Err(error) => return tried(error),
        };
        let spec = LaunchSpec {
            region: region.clone(),
            instance_type: plan.instance_type.clone(),
            zones,
            nodes,
            owner: Owner { request: request.clone(), allocation, entry: 0 },
            source: LaunchSource::Template { name: template.to_owned(), version: None },
            market: if plan.kind == OfferKind::Spot {
                Market::Spot { max_price: None }
            } else {
                Market::OnDemand
            },
            dry_run: self.settings.dry_run,
        };
        let instances = match self.ec2.launch(&spec) {
            Ok(Launched::Found(instances)) => instances,
            Ok(Launched::Launched { instances, zone, passed }) => {
                self.launched.lock().unwrap_or_else(PoisonError::into_inner).insert(allocation);
                if !passed.is_empty() {
                    let passed: Vec<String> = passed.iter().map(ToString::to_string).collect();
                    eprintln!(
                        "dibs: allocation {allocation}: launched in {zone} after {}",
                        passed.join(", ")
                    );
                }
                instances
            }
            Ok(Launched::DryRun { zone, .. }) => {
                return failed(format!(
                    "dry run (--aws-dry-run): EC2 accepted launching {} x {} in {zone}; nothing was launched",
                    plan.nodes, plan.instance_type
                ));
            }
            Err(LaunchError::Credentials(error)) => return Tried::Broken(error.to_string()),
            Err(LaunchError::Failed { error, .. }) if error.class() == ErrorClass::Throttling => {
                return Tried::Failed(error.to_string());
            }
            Err(error) => return failed(error.to_string()),
        };
        if self.ended.lock().unwrap_or_else(PoisonError::into_inner).contains(&allocation) {
            // Cancelled while it launched: take back what started.
            let _ = self.ec2.terminate(&region, allocation, TERMINATE_WAIT);
            return failed("cancelled while it was launched".into());
        }
        self.answer_delivery(call, allocation, &region, &instances, plan.nodes)
    }

    /// Whether the allocation's nodes run (ready, failed or not yet), remembering a
    /// delivered one to watch its nodes.
    fn answer_delivery(
        &self,
        call: &Call,
        allocation: u64,
        region: &str,
        instances: &[Instance],
        nodes: u32,
    ) -> Tried {
        let answer = self.delivered(call, instances, nodes);
        if matches!(&answer, Tried::Answered(Some((_, dibs_core::engine::Input::AllocationReady { .. })))) {
            let mut delivered = self.delivered.lock().unwrap_or_else(PoisonError::into_inner);
            delivered
                .get_or_insert_with(BTreeMap::new)
                .insert(allocation, (region.to_owned(), nodes as usize));
        }
        answer
    }

    /// The zones of `region` that offer `instance_type` now, asked of EC2 at most once a
    /// minute per type (a burst of reservations after a start asks once).
    fn zones_of(
        &self,
        region: &str,
        accelerator: &Accelerator,
        instance_type: &str,
    ) -> Result<Vec<String>, Ec2Error> {
        let key = (region.to_owned(), instance_type.to_owned());
        let mut zones = self.zones.lock().unwrap_or_else(PoisonError::into_inner);
        if let Some((at, known)) = zones.get(&key)
            && at.elapsed() < ZONES_TTL
        {
            return Ok(known.clone());
        }
        let found = self
            .ec2
            .quote_capacity(region, accelerator)?
            .into_iter()
            .find(|t| t.instance_type == instance_type)
            .map(|t| t.zones)
            .unwrap_or_default();
        zones.insert(key, (std::time::Instant::now(), found.clone()));
        Ok(found)
    }

    /// The delivered allocations whose nodes do not all run any more, and why; each is
    /// said once.
    fn gone(&self) -> Vec<(u64, String)> {
        let mut running: BTreeMap<u64, (String, usize)> = BTreeMap::new();
        for region in &self.settings.regions {
            let Ok(instances) = self.ec2.tagged_by_dibs(region) else { return Vec::new() };
            for instance in instances.iter().filter(|i| i.state == InstanceState::Running && self.ours(i)) {
                let owner =
                    instance.tags.get(dibs_providers::ec2::TAG_ALLOCATION).and_then(|a| a.parse().ok());
                if let Some(allocation) = owner {
                    running.entry(allocation).or_insert_with(|| (region.clone(), 0)).1 += 1;
                }
            }
        }
        let ended = self.ended.lock().unwrap_or_else(PoisonError::into_inner).clone();
        let mut delivered = self.delivered.lock().unwrap_or_else(PoisonError::into_inner);
        // After a start, what runs now is what was delivered.
        let delivered = delivered.get_or_insert_with(|| running.clone());
        let mut gone = Vec::new();
        delivered.retain(|allocation, (_, nodes)| {
            if ended.contains(allocation) {
                return false;
            }
            let left = running.get(allocation).map_or(0, |(_, n)| *n);
            if left >= *nodes {
                return true;
            }
            gone.push((
                *allocation,
                format!(
                    "{} of its {nodes} nodes no longer run at EC2 (terminated or stopped under it: a spot \
                     interruption, or someone else)",
                    *nodes - left
                ),
            ));
            false
        });
        gone
    }

    /// Whether the allocation's nodes all run: ready now, failed, or still starting.
    fn delivered(&self, call: &Call, instances: &[Instance], nodes: u32) -> Tried {
        let running = instances.iter().filter(|i| i.state == InstanceState::Running).count();
        let alive = instances
            .iter()
            .filter(|i| matches!(i.state, InstanceState::Pending | InstanceState::Running))
            .count();
        if alive < nodes as usize {
            let reasons: Vec<String> = instances.iter().filter_map(|i| i.state_reason.clone()).collect();
            let reply = ReserveReply {
                ready_at: None,
                failed: Some(format!(
                    "{} of {nodes} nodes ended or stopped before they ran{}",
                    nodes as usize - alive,
                    if reasons.is_empty() { String::new() } else { format!(" ({})", reasons.join("; ")) }
                )),
            };
            return answered(call, reply);
        }
        if running < nodes as usize {
            return Tried::Pending(format!("{running} of {nodes} nodes running"));
        }
        answered(call, ReserveReply { ready_at: Some(Timestamp::from_unix(unix_now())), failed: None })
    }

    fn terminate(&self, allocation: u64) -> Tried {
        self.ended.lock().unwrap_or_else(PoisonError::into_inner).insert(allocation);
        let mut waiting = 0;
        for region in &self.settings.regions {
            match self.ec2.terminate(region, allocation, TERMINATE_WAIT) {
                Ok(done) => waiting += done.not_yet_terminated.len(),
                Err(error) => return tried(error),
            }
        }
        if waiting > 0 {
            return Tried::Pending(format!("{waiting} instances not terminated yet"));
        }
        Tried::Answered(None)
    }
}

impl Adapter for Ec2Provider {
    fn describe(&self) -> String {
        let region = self.settings.regions.first().map_or("us-east-1", String::as_str);
        format!(
            "EC2 at {} ({}{})",
            self.settings.config.endpoint(region),
            self.settings.regions.join(", "),
            if self.settings.dry_run { "; dry run: launches nothing" } else { "" }
        )
    }

    fn call(&self, call: &Call, _limit: Duration) -> Tried {
        match call {
            Call::Solicit(_) => Tried::Refused(format!(
                "{} is reached through EC2, which sells on the market and holds no first refusal",
                self.settings.provider
            )),
            Call::Quote { ask, .. } => self.quote(ask),
            Call::Reserve { .. } => self.reserve(call),
            Call::Cancel { allocation, .. } | Call::Release { allocation, .. } => self.terminate(*allocation),
        }
    }

    fn lost(&self) -> Vec<(u64, String)> {
        self.gone()
    }

    fn bind(&self, ledger: &str) {
        self.ec2.bind_ledger(ledger);
    }

    fn orphans(&self, owned: &BTreeSet<u64>) -> Option<String> {
        let (orphans, foreign) = match self.tagged(owned) {
            Ok((_, orphans, foreign)) => (orphans, foreign),
            Err(error) => return Some(format!("could not look for orphaned instances: {error}")),
        };
        let mut said = Vec::new();
        if !orphans.is_empty() {
            // This ledger's own, for allocations it ended (a crash between a launch and the
            // cancellation that should have followed): always taken back.
            let ids: Vec<&str> = orphans.iter().map(|i| i.id.as_str()).collect();
            said.push(match self.reap(&orphans) {
                Ok(n) => {
                    format!("terminated {n} instances of allocations this ledger ended ({})", ids.join(", "))
                }
                Err(error) => format!("terminating the instances of ended allocations failed: {error}"),
            });
        }
        if !foreign.is_empty() {
            let ids: Vec<&str> = foreign.iter().map(|i| i.id.as_str()).collect();
            let found = format!(
                "{} instances tagged by another dibs (another ledger) ({})",
                ids.len(),
                ids.join(", ")
            );
            said.push(if self.settings.reap_orphans {
                match self.reap(&foreign) {
                    Ok(n) => format!("{found}; terminated {n} (--aws-reap-orphans)"),
                    Err(error) => format!("{found}; terminating them failed: {error}"),
                }
            } else {
                format!("{found}; left alone (terminate them with --aws-reap-orphans)")
            });
        }
        (!said.is_empty()).then(|| said.join("; "))
    }

    fn health(&self) -> Result<(), String> {
        let region = self.settings.regions.first().ok_or("no region to launch in (--aws-regions)")?;
        self.ec2.zones(region).map(|_| ()).map_err(|e| match e.class() {
            ErrorClass::Auth => format!("credentials refused: {e}"),
            _ => e.to_string(),
        })
    }
}

/// The offer kinds a spot policy takes.
fn kinds(spot: SpotPolicy) -> &'static [OfferKind] {
    match spot {
        SpotPolicy::Never => &[OfferKind::OnDemand],
        SpotPolicy::Allow => &[OfferKind::OnDemand, OfferKind::Spot],
        SpotPolicy::Only => &[OfferKind::Spot],
    }
}

/// An EC2 error as a try's outcome: refused credentials break the provider; throttling and
/// lost connections are tried again; anything else is refused.
fn tried(error: Ec2Error) -> Tried {
    match error.class() {
        ErrorClass::Auth => Tried::Broken(error.to_string()),
        ErrorClass::Throttling => Tried::Failed(error.to_string()),
        _ => Tried::Refused(error.to_string()),
    }
}

fn answered(call: &Call, reply: ReserveReply) -> Tried {
    Tried::Answered(call.input(Reply::Reserved(reply)))
}
