//! GCP prices GPUs apart from the machine they are attached to: its catalog has rows for
//! host VMs (`a2-highgpu-8g`, `n1-highmem-8`, no accelerator) and rows for GPUs (an empty
//! `InstanceType`, the price of `AcceleratorCount` GPUs in one zone). What GCP bills for a
//! GPU node is the two added together, the way SkyPilot's `gcp_catalog.py` (0.14) pairs
//! them, which this module follows so that dibs and SkyPilot price the same node alike:
//!
//! * The accelerator-optimized families bundle their GPUs: A100 runs only on A2
//!   (`a2-highgpu-Ng`, 16 on `a2-megagpu-16g`), A100-80GB on `a2-ultragpu-Ng`, L4 on G2,
//!   H100 on `a3-highgpu-Ng`, H100-MEGA on `a3-megagpu-8g`, H200 on `a3-ultragpu-8g`, B200
//!   on `a4-highgpu-8g`, RTXPRO6000 on G4. Where a count has several machine types (L4:1),
//!   the cheapest in the catalog is taken.
//! * Every other GPU (T4, V100, P100, P4, K80) is attached to an N1 host: the cheapest
//!   `n1-standard`, `n1-highmem` or `n1-highcpu` type with at least SkyPilot's default vCPUs
//!   for that GPU count (8 per GPU for most) and four GiB of memory per vCPU.
//! * The host must be priced in the GPU row's zone; the node's price is the host's price
//!   there plus the GPUs'. A spot node needs a spot price for both.

use std::collections::{BTreeMap, HashMap};

use super::SkipReason;

/// One host VM row: an instance type without an accelerator, priced in one zone.
#[derive(Debug, Clone)]
pub(super) struct HostRow {
    pub instance_type: String,
    pub vcpus: Option<f64>,
    pub memory_gib: Option<f64>,
    pub region: String,
    pub zone: Option<String>,
    pub price: Option<f64>,
    pub spot_price: Option<f64>,
}

/// The host a GPU row pairs with, and its prices in the row's zone.
#[derive(Debug, Clone, PartialEq)]
pub(super) struct Host {
    pub instance_type: String,
    pub price: Option<f64>,
    pub spot_price: Option<f64>,
}

/// Where a host row is priced: (instance type, region, zone).
type HostPlace = (String, String, Option<String>);
/// An on-demand and a spot price, either may be missing.
type Prices = (Option<f64>, Option<f64>);

/// A host instance type: vCPUs, memory (GiB), and its lowest price in any zone.
#[derive(Debug, Clone, Copy, Default)]
struct HostType {
    vcpus: Option<f64>,
    memory_gib: Option<f64>,
    cheapest: Option<f64>,
}

/// GPU counts and the machine types that take them.
type CountTypes = &'static [(u32, &'static [&'static str])];

/// The host VM rows of one GCP catalog, indexed for pairing.
#[derive(Debug, Default)]
pub(super) struct Hosts {
    prices: HashMap<HostPlace, Prices>,
    types: BTreeMap<String, HostType>,
    /// (accelerator, count) -> the chosen host type, or why there is none.
    chosen: HashMap<(String, u32), Result<String, SkipReason>>,
}

/// Accelerator-optimized machine families: accelerator -> [(GPU count, machine types)].
const FAMILIES: [(&str, CountTypes); 8] = [
    (
        "A100",
        &[
            (1, &["a2-highgpu-1g"]),
            (2, &["a2-highgpu-2g"]),
            (4, &["a2-highgpu-4g"]),
            (8, &["a2-highgpu-8g"]),
            (16, &["a2-megagpu-16g"]),
        ],
    ),
    (
        "A100-80GB",
        &[
            (1, &["a2-ultragpu-1g"]),
            (2, &["a2-ultragpu-2g"]),
            (4, &["a2-ultragpu-4g"]),
            (8, &["a2-ultragpu-8g"]),
        ],
    ),
    (
        "L4",
        &[
            (1, &["g2-standard-4", "g2-standard-8", "g2-standard-12", "g2-standard-16", "g2-standard-32"]),
            (2, &["g2-standard-24"]),
            (4, &["g2-standard-48"]),
            (8, &["g2-standard-96"]),
        ],
    ),
    (
        "H100",
        &[(1, &["a3-highgpu-1g"]), (2, &["a3-highgpu-2g"]), (4, &["a3-highgpu-4g"]), (8, &["a3-highgpu-8g"])],
    ),
    ("H100-MEGA", &[(8, &["a3-megagpu-8g"])]),
    ("H200", &[(8, &["a3-ultragpu-8g"])]),
    ("B200", &[(8, &["a4-highgpu-8g"])]),
    (
        "RTXPRO6000",
        &[
            (1, &["g4-standard-48"]),
            (2, &["g4-standard-96"]),
            (4, &["g4-standard-192"]),
            (8, &["g4-standard-384"]),
        ],
    ),
];

/// N1 hosts: vCPUs by GPU count, per accelerator (SkyPilot's `_NUM_ACC_TO_NUM_CPU`).
const N1_VCPUS: [(&str, &[(u32, u32)]); 5] = [
    ("K80", &[(1, 4), (2, 8), (4, 16), (8, 32), (16, 64)]),
    ("V100", &[(1, 8), (2, 16), (4, 32), (8, 64)]),
    ("T4", &[(1, 4), (2, 8), (4, 48)]),
    ("P100", &[(1, 8), (2, 16), (4, 32), (8, 64)]),
    ("DEFAULT", &[(1, 8), (2, 16), (4, 32), (8, 64), (16, 128)]),
];
const N1_FAMILIES: [&str; 3] = ["n1-standard-", "n1-highmem-", "n1-highcpu-"];
/// GiB of host memory per vCPU an N1 host must have.
const N1_MEMORY_PER_VCPU: f64 = 4.0;

impl Hosts {
    pub fn add(&mut self, row: HostRow) {
        let entry = self.types.entry(row.instance_type.clone()).or_insert(HostType {
            vcpus: row.vcpus,
            memory_gib: row.memory_gib,
            cheapest: None,
        });
        if let Some(price) = row.price {
            entry.cheapest = Some(entry.cheapest.map_or(price, |p: f64| p.min(price)));
        }
        self.prices.insert((row.instance_type, row.region, row.zone), (row.price, row.spot_price));
    }

    /// The host for `count` GPUs of `accelerator` in `region`/`zone`.
    pub fn host_for(
        &mut self,
        accelerator: &str,
        count: u32,
        region: &str,
        zone: Option<&str>,
    ) -> Result<Host, SkipReason> {
        let key = (accelerator.to_owned(), count);
        if !self.chosen.contains_key(&key) {
            let choice = self.choose(accelerator, count);
            self.chosen.insert(key.clone(), choice);
        }
        let instance_type = self.chosen[&key].clone()?;
        let (price, spot_price) = self
            .prices
            .get(&(instance_type.clone(), region.to_owned(), zone.map(str::to_owned)))
            .copied()
            .ok_or(SkipReason::NoHostInZone)?;
        Ok(Host { instance_type, price, spot_price })
    }

    /// The cheapest type among `candidates` that the catalog prices somewhere.
    fn cheapest<'a>(&self, candidates: impl Iterator<Item = &'a String>) -> Option<String> {
        candidates
            .filter_map(|name| self.types.get(name).and_then(|t| t.cheapest.map(|p| (name, p))))
            .min_by(|a, b| a.1.total_cmp(&b.1))
            .map(|(name, _)| name.clone())
    }

    fn choose(&self, accelerator: &str, count: u32) -> Result<String, SkipReason> {
        if let Some((_, counts)) = FAMILIES.iter().find(|(name, _)| *name == accelerator) {
            let (_, types) = counts.iter().find(|(n, _)| *n == count).ok_or(SkipReason::NoHostType)?;
            let names: Vec<String> = types.iter().map(|t| (*t).to_owned()).collect();
            return self.cheapest(names.iter()).ok_or(SkipReason::NoHostType);
        }
        let table = N1_VCPUS
            .iter()
            .find(|(name, _)| *name == accelerator)
            .or_else(|| N1_VCPUS.iter().find(|(name, _)| *name == "DEFAULT"))
            .map(|(_, table)| *table)
            .unwrap_or_default();
        let (_, vcpus) = table.iter().find(|(n, _)| *n == count).ok_or(SkipReason::NoHostType)?;
        let vcpus = f64::from(*vcpus);
        let fitting = self.types.iter().filter(|(name, host)| {
            N1_FAMILIES.iter().any(|family| name.starts_with(family))
                && host.vcpus.is_some_and(|c| c >= vcpus)
                && host.memory_gib.is_some_and(|m| m >= vcpus * N1_MEMORY_PER_VCPU)
        });
        self.cheapest(fitting.map(|(name, _)| name)).ok_or(SkipReason::NoHostType)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn host(instance_type: &str, vcpus: f64, memory: f64, zone: &str, price: f64, spot: f64) -> HostRow {
        HostRow {
            instance_type: instance_type.into(),
            vcpus: Some(vcpus),
            memory_gib: Some(memory),
            region: zone[..zone.len() - 2].into(),
            zone: Some(zone.into()),
            price: Some(price),
            spot_price: Some(spot),
        }
    }

    #[test]
    fn families_and_n1_hosts_are_chosen_as_skypilot_does() {
        let mut hosts = Hosts::default();
        hosts.add(host("a2-highgpu-8g", 96.0, 680.0, "us-central1-a", 5.91582, 2.958));
        hosts.add(host("g2-standard-8", 8.0, 32.0, "us-central1-a", 0.85, 0.35));
        hosts.add(host("g2-standard-4", 4.0, 16.0, "us-central1-a", 0.70704, 0.28));
        hosts.add(host("n1-standard-8", 8.0, 30.0, "us-central1-a", 0.379, 0.08));
        hosts.add(host("n1-highmem-8", 8.0, 52.0, "us-central1-a", 0.4736, 0.1));
        hosts.add(host("n1-highmem-16", 16.0, 104.0, "us-central1-a", 0.9472, 0.2));
        hosts.add(host("n1-standard-4", 4.0, 15.0, "us-central1-a", 0.19, 0.04));
        hosts.add(host("n1-highmem-4", 4.0, 26.0, "us-central1-a", 0.2368, 0.05));

        let a100 = hosts.host_for("A100", 8, "us-central1", Some("us-central1-a")).unwrap();
        assert_eq!((a100.instance_type.as_str(), a100.price), ("a2-highgpu-8g", Some(5.91582)));
        assert_eq!(
            hosts.host_for("L4", 1, "us-central1", Some("us-central1-a")).unwrap().instance_type,
            "g2-standard-4"
        );
        // V100:1 wants 8 vCPUs and 32 GiB: n1-standard-8 has too little memory.
        assert_eq!(
            hosts.host_for("V100", 1, "us-central1", Some("us-central1-a")).unwrap().instance_type,
            "n1-highmem-8"
        );
        // T4:1 wants 4 vCPUs and 16 GiB.
        assert_eq!(
            hosts.host_for("T4", 1, "us-central1", Some("us-central1-a")).unwrap().instance_type,
            "n1-highmem-4"
        );
        assert_eq!(
            hosts.host_for("A100", 4, "us-central1", Some("us-central1-a")),
            Err(SkipReason::NoHostType)
        );
        assert_eq!(
            hosts.host_for("A100", 8, "us-central1", Some("us-central1-b")),
            Err(SkipReason::NoHostInZone)
        );
        assert_eq!(
            hosts.host_for("H100-MEGA", 4, "us-central1", Some("us-central1-a")),
            Err(SkipReason::NoHostType)
        );
    }
}
