//! Price catalogs in SkyPilot's `vms.csv` format, supply files, and the bundled tables.
//!
//! A catalog turns rows of instance prices into [`Offer`]s: whole nodes of one instance type
//! in one region, at an all-in price per node-hour. The format is the one SkyPilot keeps
//! under `~/.sky/catalogs/v8/<cloud>/vms.csv`, so a SkyPilot user's local catalog imports as
//! is. Prices come from the catalog; how many nodes and how soon come from a supply file
//! ([`supply`]), because no catalog says.
//!
//! # Reading a `vms.csv`
//!
//! * Columns are found by header name (case-insensitively), because their order and presence
//!   differ per cloud. Required: `InstanceType`, `AcceleratorName`, `AcceleratorCount`, `Price`,
//!   `Region`. Optional: `SpotPrice`, `AvailabilityZone`, `GpuInfo`, `vCPUs`, `MemoryGiB`, and
//!   `Cloud` (which the bundled table uses to name the provider per row).
//! * `Price` is USD per instance-hour, all-in: one node of `AcceleratorCount` GPUs. A row with
//!   only a `SpotPrice` (verda sells some sizes only as spot) gives a spot offer only.
//! * One offer per (provider, region, instance type, kind): the availability zones of one
//!   region collapse into one offer at the cheapest zone's price (the first row on a tie), and
//!   the offer names that zone. A positive `SpotPrice` adds a separate [`OfferKind::Spot`]
//!   offer, collapsed the same way.
//! * Offer ids are `provider/region/instance_type/kind`, and offers come out sorted by id, so
//!   the same text always yields the same catalog.
//! * A row that is not a GPU offer is skipped and counted by [`SkipReason`] in the
//!   [`FileReport`], never an error: no accelerator (CPU instances), a TPU, a fractional GPU
//!   (Azure's partitioned `NV*_v5` sizes), no usable price, and so on. Only a file that cannot be
//!   read as a catalog at all (a malformed CSV record, a missing required column, no way to tell
//!   the provider) is a [`CatalogError`], which names the file and line.
//!
//! # Decisions and their cost
//!
//! * **GCP per-GPU rows** (an empty `InstanceType`) are priced with their host VM, as GCP bills
//!   them and as SkyPilot pairs them; see [`gcp`]. The offer's instance type is the host's
//!   (`a2-highgpu-8g`), or the host and its attached GPUs for N1 (`n1-highmem-8+T4:1`). A row
//!   whose host is not priced in its zone is skipped with that reason. Per-GPU rows of any
//!   other provider are skipped: dibs knows no host rule for them.
//! * **TPUs** (`tpu-v4-1024`, ...) are skipped: dibs brokers GPUs, and a TPU pod's price is per
//!   pod, not per chip.
//! * **Accelerator names** are canonicalized by [`canonical_accelerator`] against SkyPilot's list,
//!   embedded as [`CANONICAL_ACCELERATORS`], and a model sold with more memory than its
//!   canonical name says is renamed by `GpuInfo` (vast's 80 GB `A100` is `A100-80GB`).
//!
//! # The bundled tables
//!
//! `data/bundled_prices.csv` is the project's own price table for the embedded default:
//! on-demand (and a few spot) list prices for H100 at azure, aws, gcp, oci, lambda and nebius,
//! plus H200, A100-80GB, B200, MI300X (and lambda's GH200) where those providers sell them.
//! Prices are approximate public list prices as of 2025 (the provider's pricing pages and
//! SkyPilot's public catalogs), rounded, all-in per node. `data/bundled_supply.toml` is the
//! supply that goes with it, and with any catalog that comes without one: made up, as its
//! header says.
//!
//! [`load_catalog`] and [`load_price_lists`] are the functions here that read files; they read
//! only the paths their caller names, and everything else in this module is pure.

mod gcp;
pub mod supply;

pub use crate::accelerators::{
    ACCELERATOR_ALIASES, CANONICAL_ACCELERATORS, canonical_accelerator, gpu_memory_mib, variant_for_memory,
};
pub use supply::{Supply, SupplyRule};

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::path::{Path, PathBuf};

use crate::types::{Accelerator, GpuCount, NodePrice, Offer, OfferKind, ProviderName, Region};

/// The bundled price table, compiled into the binary.
pub const BUNDLED_PRICES_CSV: &str = include_str!("../../data/bundled_prices.csv");

/// The source name the bundled table reports under.
pub const BUNDLED_SOURCE_NAME: &str = "bundled_prices.csv";

/// The supply file dibs looks for beside a catalog.
pub const SUPPLY_FILE_NAME: &str = "supply.toml";

/// No catalog file larger than this is read: SkyPilot's largest (AWS, all instance types) is
/// about 15 MB, so anything beyond this is not a price catalog.
pub const MAX_CATALOG_FILE_BYTES: u64 = 256 * 1024 * 1024;

/// No node holds more GPUs than this; larger counts are typos.
pub const MAX_GPUS_PER_NODE: u32 = 1024;

/// One priced instance type in one region, before supply says how much of it there is.
#[derive(Debug, Clone, PartialEq)]
pub struct PricedOffer {
    pub provider: ProviderName,
    pub region: Region,
    pub zone: Option<String>,
    pub instance_type: String,
    pub accelerator: Accelerator,
    pub gpus_per_node: GpuCount,
    pub kind: OfferKind,
    pub node_price: NodePrice,
}

impl PricedOffer {
    pub fn id(&self) -> String {
        format!("{}/{}/{}/{}", self.provider, self.region, self.instance_type, self.kind.as_str())
    }

    fn with_supply(&self, nodes: u32, lead_time_hours: u32) -> Offer {
        Offer {
            id: self.id(),
            provider: self.provider.clone(),
            region: self.region.clone(),
            zone: self.zone.clone(),
            instance_type: self.instance_type.clone(),
            accelerator: self.accelerator.clone(),
            gpus_per_node: self.gpus_per_node,
            nodes_available: nodes,
            node_price: self.node_price,
            lead_time_hours,
            kind: self.kind,
            valid_until: None,
            bills_from_delivery: true,
            price_source: None,
        }
    }
}

/// The priced offers of one catalog file, with what was read and skipped.
#[derive(Debug, Clone, PartialEq)]
pub struct PriceList {
    /// Sorted by id; ids are unique.
    pub offers: Vec<PricedOffer>,
    pub report: FileReport,
}

/// Offers with their capacity, from one or more catalog files and a supply.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct Catalog {
    /// Sorted by id; ids are unique.
    pub offers: Vec<Offer>,
    pub report: LoadReport,
}

impl Catalog {
    /// Gives each priced offer its capacity and lead time from `supply`. Offers of a later
    /// list replace those of an earlier one with the same id (a user's catalog can override
    /// the bundled table offer by offer); an offer no supply rule covers is left out and
    /// counted in its file's report.
    pub fn build(lists: Vec<PriceList>, supply: &Supply) -> Self {
        let mut by_id: BTreeMap<String, (Offer, String)> = BTreeMap::new();
        let mut files = Vec::with_capacity(lists.len());
        for list in lists {
            let mut report = list.report;
            for priced in &list.offers {
                match supply.rule_for(priced) {
                    Some(rule) if rule.nodes > 0 => {
                        let offer = priced.with_supply(rule.nodes, rule.lead_time_hours);
                        by_id.insert(offer.id.clone(), (offer, rule.origin.clone()));
                    }
                    _ => report.unsupplied += 1,
                }
            }
            files.push(report);
        }
        let (offers, capacity_from) = by_id
            .into_values()
            .map(|(offer, origin)| {
                let id = offer.id.clone();
                (offer, (id, origin))
            })
            .unzip();
        Catalog { offers, report: LoadReport { files, supply: supply.source.clone(), capacity_from } }
    }
}

/// What was read from each catalog file, and where capacity came from.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct LoadReport {
    pub files: Vec<FileReport>,
    /// The supply file the capacities came from.
    pub supply: String,
    /// Offer id -> the supply rule that gave it capacity (`FILE:LINE`), in offer order.
    pub capacity_from: Vec<(String, String)>,
}

impl LoadReport {
    pub fn rows_read(&self) -> usize {
        self.files.iter().map(|file| file.rows_read).sum()
    }

    pub fn offers(&self) -> usize {
        self.files.iter().map(|file| file.offers).sum()
    }

    pub fn rows_skipped(&self) -> usize {
        self.files.iter().map(FileReport::rows_skipped).sum()
    }
}

impl fmt::Display for LoadReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for file in &self.files {
            writeln!(f, "{file}")?;
        }
        writeln!(f, "capacity and lead times from {}", self.supply)
    }
}

/// What was read from one catalog file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FileReport {
    /// The path or name the catalog was read from.
    pub source: String,
    /// The providers its rows were attributed to.
    pub providers: BTreeSet<ProviderName>,
    /// Data records read (the header not counted).
    pub rows_read: usize,
    /// Priced offers produced, after availability zones collapsed, spot offers included.
    pub offers: usize,
    /// Priced offers that no supply rule gave any capacity.
    pub unsupplied: usize,
    /// Rows that produced no offer, by reason. Every row is either used or counted here.
    pub skipped: BTreeMap<SkipReason, usize>,
}

impl FileReport {
    pub fn rows_skipped(&self) -> usize {
        self.skipped.values().sum()
    }
}

impl fmt::Display for FileReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let providers: Vec<&str> = self.providers.iter().map(ProviderName::as_str).collect();
        write!(
            f,
            "{} [{}]: {} rows, {} offers, {} rows skipped",
            self.source,
            providers.join(","),
            self.rows_read,
            self.offers,
            self.rows_skipped()
        )?;
        let mut separator = " (";
        for (reason, count) in &self.skipped {
            write!(f, "{separator}{count} {reason}")?;
            separator = ", ";
        }
        if !self.skipped.is_empty() {
            f.write_str(")")?;
        }
        if self.unsupplied > 0 {
            write!(f, "; {} offers without supply", self.unsupplied)?;
        }
        Ok(())
    }
}

/// Why a catalog row produced no offer.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum SkipReason {
    /// `Cloud` is empty or not a provider name, and the file names no provider either.
    BadProvider,
    /// No accelerator: a CPU instance (or a GCP host VM, which GPU rows are paired with).
    NoAccelerator,
    /// A TPU: dibs brokers GPUs.
    NotAGpu,
    /// The accelerator name is too long or contains a comma or control character.
    BadAcceleratorName,
    /// `AcceleratorCount` is missing, not a number, not positive, or absurdly large.
    BadAcceleratorCount,
    /// A fraction of a GPU (a partitioned GPU).
    FractionalGpu,
    /// Neither `Price` nor `SpotPrice` is a positive number.
    NoPrice,
    /// The price per node-hour is above `NodePrice::MAX`.
    PriceOutOfRange,
    /// `Region` is empty or malformed.
    BadRegion,
    /// A per-GPU price (empty `InstanceType`) from a provider with no host VM rule.
    NoHostRule,
    /// A GCP per-GPU price for a GPU count no host VM type takes.
    NoHostType,
    /// A GCP per-GPU price whose host VM is not priced in the same zone.
    NoHostInZone,
}

impl fmt::Display for SkipReason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::BadProvider => "no valid provider",
            Self::NoAccelerator => "no accelerator",
            Self::NotAGpu => "not a GPU (TPU)",
            Self::BadAcceleratorName => "malformed accelerator name",
            Self::BadAcceleratorCount => "bad accelerator count",
            Self::FractionalGpu => "fractional GPU",
            Self::NoPrice => "no price",
            Self::PriceOutOfRange => "price out of range",
            Self::BadRegion => "bad region",
            Self::NoHostRule => "per-GPU price with no host VM rule for the provider",
            Self::NoHostType => "per-GPU price for a GPU count no host VM type takes",
            Self::NoHostInZone => "per-GPU price with no host VM priced in its zone",
        })
    }
}

/// A catalog that cannot be read. Bad individual rows are not errors; see [`SkipReason`].
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CatalogError {
    #[error("{file}:{line}: the header has no {column:?} column, which is required")]
    MissingColumn { file: String, line: u64, column: &'static str },
    #[error("{file}:{line}: malformed CSV record: {message}")]
    MalformedRecord { file: String, line: u64, message: String },
    #[error(
        "{file}: cannot tell which provider this catalog is from: name it explicitly, call the file \
         `<provider>_vms.csv` or `<provider>/vms.csv`, or add a `Cloud` column"
    )]
    UnknownProvider { file: String },
    #[error("{file}: cannot read: {message}")]
    Unreadable { file: String, message: String },
    #[error("{file}: no catalog files (`*_vms.csv` or `<provider>/vms.csv`) in this directory")]
    NoCatalogFiles { file: String },
    /// Said once: the supply file's own error already names its file, line and column.
    #[error(transparent)]
    Supply(#[from] crate::contract::ContractError),
}

/// Parses one catalog in SkyPilot's `vms.csv` format into priced offers.
///
/// `source_name` names the file in reports and errors; when `provider` is `None`, the provider is
/// taken from it (`aws_vms_gpu_subset.csv` and `aws/vms.csv` are both `aws`). A non-empty `Cloud`
/// column overrides both, row by row.
pub fn parse_price_list(
    source_name: &str,
    provider: Option<&ProviderName>,
    text: &str,
) -> Result<PriceList, CatalogError> {
    let file_provider = provider.cloned().or_else(|| provider_from_file_name(source_name));
    let mut reader = csv::ReaderBuilder::new().trim(csv::Trim::All).from_reader(text.as_bytes());
    let headers = reader.headers().map_err(|error| malformed(source_name, &error))?.clone();
    let header_line = headers.position().map_or(1, csv::Position::line);
    let columns = Columns::find(&headers).map_err(|column| CatalogError::MissingColumn {
        file: source_name.to_owned(),
        line: header_line,
        column,
    })?;
    if file_provider.is_none() && columns.cloud.is_none() {
        return Err(CatalogError::UnknownProvider { file: source_name.to_owned() });
    }

    let mut report = FileReport {
        source: source_name.to_owned(),
        providers: BTreeSet::new(),
        rows_read: 0,
        offers: 0,
        unsupplied: 0,
        skipped: BTreeMap::new(),
    };
    let mut offers = Offers::default();
    let mut hosts = gcp::Hosts::default();
    let mut per_gpu_rows: Vec<Row> = Vec::new();
    let mut record = csv::StringRecord::new();
    loop {
        match reader.read_record(&mut record) {
            Ok(true) => {}
            Ok(false) => break,
            Err(error) => return Err(malformed(source_name, &error)),
        }
        report.rows_read += 1;
        let row = match read_row(&columns, &record, file_provider.as_ref()) {
            Ok(Parsed::Node(row)) => row,
            Ok(Parsed::PerGpu(row)) => {
                per_gpu_rows.push(row);
                continue;
            }
            Ok(Parsed::Host(host)) => {
                hosts.add(host);
                *report.skipped.entry(SkipReason::NoAccelerator).or_default() += 1;
                continue;
            }
            Err(reason) => {
                *report.skipped.entry(reason).or_default() += 1;
                continue;
            }
        };
        report.providers.insert(row.provider.clone());
        if let Err(reason) = offers.add(&row, &row.instance_type, row.price, row.spot_price) {
            *report.skipped.entry(reason).or_default() += 1;
        }
    }
    for row in per_gpu_rows {
        let paired = if row.provider.as_str() == "gcp" {
            hosts
                .host_for(
                    row.accelerator.as_str(),
                    row.gpus_per_node.get(),
                    row.region.as_str(),
                    row.zone.as_deref(),
                )
                .and_then(|host| {
                    let add = |host: Option<f64>, gpus: Option<f64>| host.zip(gpus).map(|(h, g)| h + g);
                    let instance_type = if host.instance_type.starts_with("n1-") {
                        format!("{}+{}:{}", host.instance_type, row.accelerator, row.gpus_per_node)
                    } else {
                        host.instance_type.clone()
                    };
                    let price = add(host.price, row.price);
                    let spot = add(host.spot_price, row.spot_price);
                    offers.add(&row, &instance_type, price, spot)
                })
        } else {
            Err(SkipReason::NoHostRule)
        };
        match paired {
            Ok(()) => {
                report.providers.insert(row.provider.clone());
            }
            Err(reason) => *report.skipped.entry(reason).or_default() += 1,
        }
    }
    if report.providers.is_empty() {
        report.providers.extend(file_provider);
    }
    let offers: Vec<PricedOffer> = offers.by_id.into_values().collect();
    report.offers = offers.len();
    Ok(PriceList { offers, report })
}

/// Loads a catalog file, or every catalog in a directory: its `*_vms.csv` files and the
/// `vms.csv` in each of its subdirectories (SkyPilot's own layout), in name order. Other files,
/// such as `accelerators.csv`, are ignored.
pub fn load_price_lists(path: &Path) -> Result<Vec<PriceList>, CatalogError> {
    if !path.is_dir() {
        return Ok(vec![load_price_list_file(path)?]);
    }
    let unreadable = |error: std::io::Error| CatalogError::Unreadable {
        file: path.display().to_string(),
        message: error.to_string(),
    };
    let mut files = Vec::new();
    for entry in std::fs::read_dir(path).map_err(unreadable)? {
        let entry_path = entry.map_err(unreadable)?.path();
        let name = entry_path.file_name().and_then(|name| name.to_str()).unwrap_or_default();
        if entry_path.is_dir() {
            let nested = entry_path.join("vms.csv");
            if nested.is_file() {
                files.push(nested);
            }
        } else if name.ends_with(".csv") && name.contains("_vms") {
            files.push(entry_path);
        }
    }
    if files.is_empty() {
        return Err(CatalogError::NoCatalogFiles { file: path.display().to_string() });
    }
    files.sort();
    files.iter().map(|file| load_price_list_file(file)).collect()
}

fn load_price_list_file(path: &Path) -> Result<PriceList, CatalogError> {
    let file = path.display().to_string();
    let text = read_limited(path, MAX_CATALOG_FILE_BYTES)?;
    parse_price_list(&file, None, &text)
}

fn read_limited(path: &Path, limit: u64) -> Result<String, CatalogError> {
    let unreadable = |message: String| CatalogError::Unreadable { file: path.display().to_string(), message };
    let size = std::fs::metadata(path).map_err(|error| unreadable(error.to_string()))?.len();
    if size > limit {
        return Err(unreadable(format!("{size} bytes is more than the limit of {limit}")));
    }
    std::fs::read_to_string(path).map_err(|error| unreadable(error.to_string()))
}

/// Where the supply for `paths` comes from: `explicit` when given, else a `supply.toml` in the
/// first catalog directory (or beside the first catalog file), else the bundled one.
pub fn find_supply(paths: &[PathBuf], explicit: Option<&Path>) -> Result<Supply, CatalogError> {
    let beside = paths.first().map(|path| {
        if path.is_dir() { path.join(SUPPLY_FILE_NAME) } else { path.with_file_name(SUPPLY_FILE_NAME) }
    });
    let file = explicit.map(Path::to_path_buf).or_else(|| beside.filter(|p| p.is_file()));
    match file {
        Some(file) => {
            let text = read_limited(&file, MAX_CATALOG_FILE_BYTES)?;
            Ok(Supply::parse(&file.display().to_string(), &text)?)
        }
        None => Ok(Supply::bundled()),
    }
}

/// Loads catalogs from paths (files or directories; the bundled table when there are none) and
/// gives their offers capacity from `supply` (see [`find_supply`]).
pub fn load_catalog(paths: &[PathBuf], supply: Option<&Path>) -> Result<Catalog, CatalogError> {
    if paths.is_empty() && supply.is_none() {
        return Ok(bundled_catalog());
    }
    let mut lists = Vec::new();
    if paths.is_empty() {
        lists.push(bundled_price_list());
    }
    for path in paths {
        lists.extend(load_price_lists(path)?);
    }
    Ok(Catalog::build(lists, &find_supply(paths, supply)?))
}

fn bundled_price_list() -> PriceList {
    // The table is compiled in and a unit test parses it, so failing here is a programmer
    // error in this crate, not an operating error.
    parse_price_list(BUNDLED_SOURCE_NAME, None, BUNDLED_PRICES_CSV).expect("the bundled price table parses")
}

/// The bundled price table with the bundled supply.
pub fn bundled_catalog() -> Catalog {
    Catalog::build(vec![bundled_price_list()], &Supply::bundled())
}

/// `aws_vms_gpu_subset.csv` -> `aws`; `.../aws/vms.csv` -> `aws`; anything else -> `None`.
fn provider_from_file_name(source_name: &str) -> Option<ProviderName> {
    let path = Path::new(source_name);
    let file_name = path.file_name()?.to_str()?;
    let name = if file_name.eq_ignore_ascii_case("vms.csv") {
        path.parent()?.file_name()?.to_str()?
    } else {
        let (provider, _) = file_name.split_once("_vms")?;
        provider
    };
    ProviderName::new(&name.to_ascii_lowercase()).ok()
}

fn malformed(file: &str, error: &csv::Error) -> CatalogError {
    let line = error.position().map_or(0, csv::Position::line);
    let message = match error.kind() {
        csv::ErrorKind::UnequalLengths { expected_len, len, .. } => {
            format!("{len} fields where the header has {expected_len}")
        }
        csv::ErrorKind::Utf8 { err, .. } => format!("invalid UTF-8 in field {}", err.field() + 1),
        _ => error.to_string(),
    };
    CatalogError::MalformedRecord { file: file.to_owned(), line, message }
}

/// Where each column we read sits in the header.
struct Columns {
    instance_type: usize,
    accelerator_name: usize,
    accelerator_count: usize,
    price: usize,
    region: usize,
    spot_price: Option<usize>,
    zone: Option<usize>,
    gpu_info: Option<usize>,
    vcpus: Option<usize>,
    memory: Option<usize>,
    cloud: Option<usize>,
}

impl Columns {
    /// The header's column positions, or the name of the first required column it lacks.
    fn find(headers: &csv::StringRecord) -> Result<Self, &'static str> {
        let optional = |name: &str| headers.iter().position(|header| header.eq_ignore_ascii_case(name));
        let required = |name: &'static str| optional(name).ok_or(name);
        Ok(Self {
            instance_type: required("InstanceType")?,
            accelerator_name: required("AcceleratorName")?,
            accelerator_count: required("AcceleratorCount")?,
            price: required("Price")?,
            region: required("Region")?,
            spot_price: optional("SpotPrice"),
            zone: optional("AvailabilityZone"),
            gpu_info: optional("GpuInfo"),
            vcpus: optional("vCPUs"),
            memory: optional("MemoryGiB"),
            cloud: optional("Cloud"),
        })
    }
}

/// One usable catalog row: a whole node (or, for GCP, GPUs to pair with a host).
struct Row {
    provider: ProviderName,
    region: Region,
    zone: Option<String>,
    accelerator: Accelerator,
    instance_type: String,
    gpus_per_node: GpuCount,
    /// USD per instance-hour, when the row has an on-demand price.
    price: Option<f64>,
    spot_price: Option<f64>,
}

enum Parsed {
    /// A node with its GPUs: an offer of its own.
    Node(Row),
    /// GPUs priced apart from their host (GCP): paired once every host row is read.
    PerGpu(Row),
    /// A VM without an accelerator: a possible host for per-GPU rows.
    Host(gcp::HostRow),
}

/// The priced offers of one file, collapsed by id.
#[derive(Default)]
struct Offers {
    by_id: BTreeMap<String, PricedOffer>,
}

impl Offers {
    /// Adds the on-demand and spot offers a row prices, keeping the cheaper of two with one id
    /// (the earlier on a tie): the zones of a region collapse into one offer.
    fn add(
        &mut self,
        row: &Row,
        instance_type: &str,
        price: Option<f64>,
        spot_price: Option<f64>,
    ) -> Result<(), SkipReason> {
        let priced = [(OfferKind::OnDemand, price), (OfferKind::Spot, spot_price)];
        if priced.iter().all(|(_, price)| price.is_none()) {
            return Err(SkipReason::NoPrice);
        }
        for (kind, price) in priced {
            let Some(price) = price else { continue };
            let node_price = NodePrice::new(price).map_err(|_| SkipReason::PriceOutOfRange)?;
            let offer = PricedOffer {
                provider: row.provider.clone(),
                region: row.region.clone(),
                zone: row.zone.clone(),
                instance_type: instance_type.to_owned(),
                accelerator: row.accelerator.clone(),
                gpus_per_node: row.gpus_per_node,
                kind,
                node_price,
            };
            match self.by_id.entry(offer.id()) {
                std::collections::btree_map::Entry::Vacant(slot) => {
                    slot.insert(offer);
                }
                std::collections::btree_map::Entry::Occupied(mut slot) => {
                    if offer.node_price.get() < slot.get().node_price.get() {
                        slot.insert(offer);
                    }
                }
            }
        }
        Ok(())
    }
}

fn read_row(
    columns: &Columns,
    record: &csv::StringRecord,
    file_provider: Option<&ProviderName>,
) -> Result<Parsed, SkipReason> {
    let field = |index: usize| record.get(index).unwrap_or_default();
    let optional_field = |index: Option<usize>| index.map(field).filter(|text| !text.is_empty());

    let provider = match optional_field(columns.cloud) {
        Some(cloud) => ProviderName::new(&cloud.to_ascii_lowercase()).map_err(|_| SkipReason::BadProvider)?,
        None => file_provider.cloned().ok_or(SkipReason::BadProvider)?,
    };
    let region = Region::new(field(columns.region)).map_err(|_| SkipReason::BadRegion)?;
    let zone = optional_field(columns.zone).map(str::to_owned);
    // A price that is absent, zero or not a number means the row has no such price.
    let price = positive_number(field(columns.price));
    let spot_price = optional_field(columns.spot_price).and_then(positive_number);
    let instance_type = field(columns.instance_type);

    let accelerator_name = field(columns.accelerator_name);
    if accelerator_name.is_empty() {
        if instance_type.is_empty() {
            return Err(SkipReason::NoAccelerator);
        }
        let number = |index: Option<usize>| optional_field(index).and_then(positive_number);
        return Ok(Parsed::Host(gcp::HostRow {
            instance_type: instance_type.to_owned(),
            vcpus: number(columns.vcpus),
            memory_gib: number(columns.memory),
            region: region.to_string(),
            zone,
            price,
            spot_price,
        }));
    }
    if accelerator_name.get(..3).is_some_and(|prefix| prefix.eq_ignore_ascii_case("tpu")) {
        return Err(SkipReason::NotAGpu);
    }
    let count: f64 = field(columns.accelerator_count).parse().map_err(|_| SkipReason::BadAcceleratorCount)?;
    if !count.is_finite() || count <= 0.0 || count > f64::from(MAX_GPUS_PER_NODE) {
        return Err(SkipReason::BadAcceleratorCount);
    }
    if count.fract() != 0.0 {
        return Err(SkipReason::FractionalGpu);
    }
    // Exact: `count` is a whole number between 1 and `MAX_GPUS_PER_NODE`.
    let gpus_per_node = GpuCount::new(count as u32).map_err(|_| SkipReason::BadAcceleratorCount)?;
    let canonical = Accelerator::new(accelerator_name).map_err(|_| SkipReason::BadAcceleratorName)?;
    let memory = optional_field(columns.gpu_info).and_then(|info| gpu_memory_mib(info, gpus_per_node.get()));
    let accelerator = match variant_for_memory(canonical.as_str(), memory) {
        same if same == canonical.as_str() => canonical,
        variant => Accelerator::new(variant).map_err(|_| SkipReason::BadAcceleratorName)?,
    };
    let row = Row {
        provider,
        region,
        zone,
        accelerator,
        instance_type: instance_type.to_owned(),
        gpus_per_node,
        price,
        spot_price,
    };
    Ok(if instance_type.is_empty() { Parsed::PerGpu(row) } else { Parsed::Node(row) })
}

fn positive_number(text: &str) -> Option<f64> {
    text.parse::<f64>().ok().filter(|value| value.is_finite() && *value > 0.0)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::fmt::Write as _;

    /// A supply for the tests: 16 nodes of anything within a day, spot within the hour.
    fn test_supply() -> Supply {
        Supply::parse(
            "test-supply.toml",
            r#"
[[supply]]
provider = "*"
region = "*"
accelerator = "*"
nodes = 16
lead_time_hours = 24

[[supply]]
provider = "*"
region = "*"
accelerator = "*"
kind = "spot"
nodes = 4
lead_time_hours = 1
"#,
        )
        .unwrap()
    }

    /// Parses `text` as `source_name` and compares a readable rendering of the offers and the
    /// skip counts with `expected` (leading and trailing whitespace of each line ignored).
    fn check(source_name: &str, text: &str, expected: &str) {
        let list = parse_price_list(source_name, None, text).unwrap_or_else(|error| panic!("{error}"));
        let catalog = Catalog::build(vec![list], &test_supply());
        let actual = render(&catalog);
        let expected: Vec<&str> = expected.trim().lines().map(str::trim).collect();
        let actual_lines: Vec<&str> = actual.trim().lines().collect();
        assert_eq!(actual_lines, expected, "\nactual:\n{actual}");
    }

    fn render(catalog: &Catalog) -> String {
        let mut out = String::new();
        for offer in &catalog.offers {
            writeln!(
                out,
                "{} {} {}x{} ${:.5}/node-h {}h{}",
                offer.id,
                offer.accelerator,
                offer.nodes_available,
                offer.gpus_per_node,
                offer.node_price.get(),
                offer.lead_time_hours,
                offer.zone.as_ref().map(|z| format!(" zone {z}")).unwrap_or_default()
            )
            .unwrap();
        }
        for file in &catalog.report.files {
            let skipped: Vec<String> =
                file.skipped.iter().map(|(reason, count)| format!("{count} {reason}")).collect();
            writeln!(out, "rows {} offers {} skipped [{}]", file.rows_read, file.offers, skipped.join(", "))
                .unwrap();
        }
        out
    }

    #[test]
    fn aws_column_order_with_zones_collapses_to_the_cheapest_zone() {
        check(
            "aws_vms.csv",
            "InstanceType,AcceleratorName,AcceleratorCount,vCPUs,MemoryGiB,GpuInfo,Price,SpotPrice,Region,AvailabilityZone,Arch
             p5.48xlarge,H100,8.0,192.0,2048.0,\"{'Gpus': [{'Name': 'H100', 'Count': 8}]}\",55.04,17.6,us-east-1,use1-az1,x86_64
             p5.48xlarge,H100,8.0,192.0,2048.0,\"{'Gpus': [{'Name': 'H100', 'Count': 8}]}\",50.00,19.2,us-east-1,use1-az2,x86_64
             p5.48xlarge,H100,8.0,192.0,2048.0,,56.00,,us-west-2,usw2-az1,x86_64",
            "aws/us-east-1/p5.48xlarge/on-demand H100 16x8 $50.00000/node-h 24h zone use1-az2
             aws/us-east-1/p5.48xlarge/spot H100 4x8 $17.60000/node-h 1h zone use1-az1
             aws/us-west-2/p5.48xlarge/on-demand H100 16x8 $56.00000/node-h 24h zone usw2-az1
             rows 3 offers 3 skipped []",
        );
    }

    /// GCP bills a GPU node as its host VM plus the GPUs attached to it; SkyPilot adds them
    /// the same way (a3-highgpu-8g in us-central1: $9.46006 + $33.60609 = $43.06615).
    #[test]
    fn gcp_per_gpu_rows_are_priced_with_their_host_vm() {
        check(
            "catalogs/gcp_vms.csv",
            "InstanceType,vCPUs,MemoryGiB,AcceleratorName,AcceleratorCount,GpuInfo,Region,AvailabilityZone,Price,SpotPrice
             a2-highgpu-8g,96.0,680.0,,,,us-central1,us-central1-a,5.91582,2.958
             a3-highgpu-8g,208.0,1872.0,,,,us-central1,us-central1-a,9.46006,3.86318
             n1-highmem-8,8.0,52.0,,,,us-central1,us-central1-a,0.4736,0.1
             n1-standard-8,8.0,30.0,,,,us-central1,us-central1-a,0.379,0.08
             ,,,A100,8,{'Gpus': [{'MemoryInfo': {'SizeInMiB': 40960}}]},us-central1,us-central1-a,23.47126,11.4728
             ,,,A100,8,{'Gpus': [{'MemoryInfo': {'SizeInMiB': 40960}}]},us-central1,us-central1-b,23.47126,11.4728
             ,,,H100,8,{'Gpus': [{'MemoryInfo': {'SizeInMiB': 81920}}]},us-central1,us-central1-a,33.60609,32.0104
             ,,,V100,1,,us-central1,us-central1-a,2.48,1.24
             ,,,A100,4,,us-central1,us-central1-a,11.73563,5.7364
             ,,,tpu-v4-8,1,tpu-v4-8,us-central2,us-central2-b,12.88,3.86",
            "gcp/us-central1/a2-highgpu-8g/on-demand A100 16x8 $29.38708/node-h 24h zone us-central1-a
             gcp/us-central1/a2-highgpu-8g/spot A100 4x8 $14.43080/node-h 1h zone us-central1-a
             gcp/us-central1/a3-highgpu-8g/on-demand H100 16x8 $43.06615/node-h 24h zone us-central1-a
             gcp/us-central1/a3-highgpu-8g/spot H100 4x8 $35.87358/node-h 1h zone us-central1-a
             gcp/us-central1/n1-highmem-8+V100:1/on-demand V100 16x1 $2.95360/node-h 24h zone us-central1-a
             gcp/us-central1/n1-highmem-8+V100:1/spot V100 4x1 $1.34000/node-h 1h zone us-central1-a
             rows 10 offers 6 skipped [4 no accelerator, 1 not a GPU (TPU), 1 per-GPU price for a GPU count no host VM type takes, \
             1 per-GPU price with no host VM priced in its zone]",
        );
    }

    #[test]
    fn lambda_nebius_verda_and_vast_rows() {
        check(
            "lambda_vms.csv",
            "InstanceType,AcceleratorName,AcceleratorCount,vCPUs,MemoryGiB,Price,Region,GpuInfo,SpotPrice
             cpu_4x_generalx,,,4.0,16.0,0.2,europe-central-1,,
             gpu_8x_h100_sxm5,H100,8.0,208.0,1800.0,23.92,us-east-1,\"{'Gpus': [{'Name': 'H100'}]}\",",
            "lambda/us-east-1/gpu_8x_h100_sxm5/on-demand H100 16x8 $23.92000/node-h 24h
             rows 2 offers 1 skipped [1 no accelerator]",
        );
        // verda sells some sizes as spot only; its RTX 6000 Ada is SkyPilot's RTX6000-Ada.
        check(
            "catalogs/verda/vms.csv",
            "InstanceType,UpstreamCloudId,vCPUs,MemoryGiB,AcceleratorName,AcceleratorCount,GpuInfo,Region,Price,SpotPrice
             2B300.60V,2B300.60V,60.0,550.0,B300,2.0,\"{\"\"Gpus\"\": []}\",FIN-03,,4.893
             8H100.80S,8H100.80S,80.0,800.0,h100-80gb,8.0,,FIN-01,19.92,
             1RTX6000ADA.10V,x,10,60,RTX-6000-Ada,1.0,,FIN-01,0.8,
             none,x,10,60,H100,1.0,,FIN-01,,",
            "verda/FIN-01/1RTX6000ADA.10V/on-demand RTX6000-Ada 16x1 $0.80000/node-h 24h
             verda/FIN-01/8H100.80S/on-demand H100 16x8 $19.92000/node-h 24h
             verda/FIN-03/2B300.60V/spot B300 4x2 $4.89300/node-h 1h
             rows 4 offers 3 skipped [1 no price]",
        );
        // vast names 40 and 80 GB A100s alike; GpuInfo tells them apart. Its regions hold commas.
        check(
            "vast_vms.csv",
            "InstanceType,AcceleratorName,AcceleratorCount,vCPUs,MemoryGiB,GpuInfo,Price,SpotPrice,Region
             1x-A100,A100,1,32,64.0,\"{'Gpus': [{'Name': 'A100', 'Count': 1, 'MemoryInfo': {'SizeInMiB': 81920}}], 'TotalGpuMemoryInMiB': 81920}\",0.93,0.00,\"Czechia, CZ, EU\"
             1x-A100,A100,1,32,64.0,\"{'Gpus': [{'Name': 'A100', 'Count': 1, 'MemoryInfo': {'SizeInMiB': 40960}}], 'TotalGpuMemoryInMiB': 40960}\",0.93,0.00,\"Georgia, US, NA\"",
            "vast/Czechia, CZ, EU/1x-A100/on-demand A100-80GB 16x1 $0.93000/node-h 24h
             vast/Georgia, US, NA/1x-A100/on-demand A100 16x1 $0.93000/node-h 24h
             rows 2 offers 2 skipped []",
        );
    }

    #[test]
    fn skipped_rows_are_counted_by_reason_and_never_lost() {
        let text = "InstanceType,AcceleratorName,AcceleratorCount,Price,SpotPrice,Region
            cpu,,,0.1,,r1
            nv6,A10,0.167,0.5,,r1
            bad-count,A10,many,1.0,,r1
            zero-count,A10,0,1.0,,r1
            empty-price,A10,1,,,r1
            text-price,A10,1,n/a,,r1
            zero-price,A10,1,0,,r1
            nan-price,A10,1,NaN,,r1
            huge-price,A10,1,1e9,,r1
            no-region,A10,1,1.0,,
            bad-name,\"A10,B\",1,1.0,,r1
            ,A10,1,1.0,,r1
            ok,A10,1,1.0,0,r1";
        check(
            "x_vms.csv",
            text,
            "x/r1/ok/on-demand A10 16x1 $1.00000/node-h 24h
             rows 13 offers 1 skipped [1 no accelerator, 1 malformed accelerator name, 2 bad accelerator count, \
             1 fractional GPU, 4 no price, 1 price out of range, 1 bad region, 1 per-GPU price with no host VM rule for the provider]",
        );
        let list = parse_price_list("x_vms.csv", None, text).unwrap();
        assert_eq!(list.report.rows_skipped() + 1, list.report.rows_read);
    }

    #[test]
    fn capacity_comes_from_the_most_specific_supply_rule_and_unsupplied_offers_are_counted() {
        let header = "InstanceType,AcceleratorName,AcceleratorCount,Price,Region\n";
        let list = parse_price_list(
            "aws_vms.csv",
            None,
            &format!("{header}p5,H100,8,80,us-east-1\np4,A100,8,30,us-east-1\n"),
        )
        .unwrap();
        let supply = Supply::parse(
            "s.toml",
            "[[supply]]\nprovider = \"aws\"\nregion = \"*\"\naccelerator = \"H100\"\nnodes = 3\nlead_time_hours = 5\n",
        )
        .unwrap();
        let catalog = Catalog::build(vec![list], &supply);
        assert_eq!(catalog.offers.len(), 1);
        assert_eq!((catalog.offers[0].nodes_available, catalog.offers[0].lead_time_hours), (3, 5));
        assert_eq!(
            catalog.report.capacity_from,
            [("aws/us-east-1/p5/on-demand".to_owned(), "s.toml:1".to_owned())]
        );
        assert_eq!(catalog.report.files[0].unsupplied, 1);
        assert!(catalog.report.to_string().contains("1 offers without supply"), "{}", catalog.report);
    }

    #[test]
    fn an_explicit_provider_beats_the_file_name() {
        let text = "InstanceType,AcceleratorName,AcceleratorCount,Price,Region\nn,H100,8,80,r";
        let oci = ProviderName::new("oci").unwrap();
        let list = parse_price_list("aws_vms.csv", Some(&oci), text).unwrap();
        assert_eq!(list.offers[0].id(), "oci/r/n/on-demand");
        assert_eq!(list.report.to_string(), "aws_vms.csv [oci]: 1 rows, 1 offers, 0 rows skipped");
    }

    #[test]
    fn provider_is_taken_from_the_file_name() {
        let provider = |name: &str| provider_from_file_name(name).map(|p| p.to_string());
        assert_eq!(provider("aws_vms_gpu_subset.csv").as_deref(), Some("aws"));
        assert_eq!(provider("/data/Azure_vms.csv").as_deref(), Some("azure"));
        assert_eq!(provider("/home/u/.sky/catalogs/v8/aws/vms.csv").as_deref(), Some("aws"));
        assert_eq!(provider("prices.csv"), None);
        assert_eq!(provider("vms.csv"), None);
    }

    #[test]
    fn errors_name_the_file_the_line_and_the_problem() {
        let error =
            parse_price_list("aws_vms.csv", None, "InstanceType,AcceleratorName,Price,Region\n").unwrap_err();
        assert_eq!(
            error.to_string(),
            "aws_vms.csv:1: the header has no \"AcceleratorCount\" column, which is required"
        );

        let text = "InstanceType,AcceleratorName,AcceleratorCount,Price,Region\nn,H100,8,80,r\nn,H100,8,80\n";
        let error = parse_price_list("aws_vms.csv", None, text).unwrap_err();
        assert_eq!(error.to_string(), "aws_vms.csv:3: malformed CSV record: 4 fields where the header has 5");

        let text = "InstanceType,AcceleratorName,AcceleratorCount,Price,Region\nn,H100,8,80,r\n";
        let error = parse_price_list("prices.csv", None, text).unwrap_err();
        assert!(
            matches!(error, CatalogError::UnknownProvider { ref file } if file == "prices.csv"),
            "{error}"
        );

        let error = parse_price_list("aws_vms.csv", None, "").unwrap_err();
        assert!(error.to_string().contains("no \"InstanceType\" column"), "{error}");
    }

    #[test]
    fn a_later_list_replaces_offers_with_the_same_id() {
        let header = "InstanceType,AcceleratorName,AcceleratorCount,Price,Region\n";
        let lists = vec![
            parse_price_list("b_vms.csv", None, &format!("{header}n,H100,8,80,r\nm,H100,8,80,r")).unwrap(),
            parse_price_list("b_vms.csv", None, &format!("{header}n,H100,8,40,r\n")).unwrap(),
            parse_price_list("a_vms.csv", None, &format!("{header}n,H100,8,40,r\n")).unwrap(),
        ];
        let catalog = Catalog::build(lists, &test_supply());
        let ids_and_prices: Vec<(&str, f64)> =
            catalog.offers.iter().map(|offer| (offer.id.as_str(), offer.node_price.get())).collect();
        assert_eq!(
            ids_and_prices,
            [("a/r/n/on-demand", 40.0), ("b/r/m/on-demand", 80.0), ("b/r/n/on-demand", 40.0)]
        );
        assert_eq!(catalog.report.files.len(), 3);
    }

    #[test]
    fn the_bundled_table_loads_cleanly_with_h100_from_all_six_providers() {
        let catalog = bundled_catalog();
        let file = &catalog.report.files[0];
        assert_eq!(file.rows_skipped(), 0, "{file}");
        assert_eq!(file.unsupplied, 0, "{file}");
        for provider in ["azure", "oci", "aws", "gcp", "lambda", "nebius"] {
            let h100 = catalog
                .offers
                .iter()
                .filter(|offer| offer.provider.as_str() == provider && offer.accelerator.as_str() == "H100")
                .filter(|offer| offer.kind == OfferKind::OnDemand)
                .count();
            assert!(h100 > 0, "no on-demand H100 offer from {provider}");
        }
        for accelerator in ["H200", "A100-80GB", "B200", "MI300X"] {
            assert!(
                catalog.offers.iter().any(|offer| offer.accelerator.as_str() == accelerator),
                "{accelerator}"
            );
        }
        // Every on-demand offer of the table has a rule of its own in the bundled supply,
        // written after the line that starts the per-offer rules.
        let marker = supply::BUNDLED_SUPPLY_TOML
            .lines()
            .position(|line| line.starts_with("# The bundled price table, offer by offer."))
            .unwrap();
        for (id, origin) in &catalog.report.capacity_from {
            if id.ends_with("/on-demand") {
                let line: usize = origin.rsplit(':').next().unwrap().parse().unwrap();
                assert!(line > marker, "{id} took a catch-all rule at {origin}");
            }
        }
    }

    #[test]
    fn every_shared_skypilot_catalog_loads() {
        let folder =
            Path::new(concat!(env!("CARGO_MANIFEST_DIR"), "/../../../shared/data/catalogs/skypilot-v8"));
        if !folder.is_dir() {
            eprintln!("skipping: the shared SkyPilot catalogs at {} were not found", folder.display());
            return;
        }
        let started = std::time::Instant::now();
        let catalog = load_catalog(&[folder.to_path_buf()], None).unwrap_or_else(|error| panic!("{error}"));
        let elapsed = started.elapsed();
        eprint!("{}", catalog.report);
        eprintln!(
            "total: {} files, {} rows, {} offers ({} after merging), {} rows skipped, in {elapsed:.2?}",
            catalog.report.files.len(),
            catalog.report.rows_read(),
            catalog.report.offers(),
            catalog.offers.len(),
            catalog.report.rows_skipped()
        );
        // The folder holds nine `*_vms*.csv` files (and `accelerators.csv`, which is not a catalog).
        let vms_files = std::fs::read_dir(folder)
            .unwrap()
            .map(|entry| entry.unwrap().file_name().to_string_lossy().into_owned())
            .filter(|name| name.contains("_vms") && name.ends_with(".csv"))
            .count();
        assert!(vms_files >= 9, "only {vms_files} catalogs in {}", folder.display());
        assert_eq!(catalog.report.files.len(), vms_files);
        for file in &catalog.report.files {
            assert!(file.offers > 0, "{file}");
            assert!(file.rows_skipped() < file.rows_read, "{file}");
        }
        assert!(catalog.offers.len() > 1000, "only {} offers", catalog.offers.len());
        assert!(catalog.offers.windows(2).all(|pair| pair[0].id < pair[1].id), "offers sorted by unique id");
        // SkyPilot prices GCP's H100:8 in us-central1 at $43.0662 per node-hour, host included.
        let a3 = catalog.offers.iter().find(|o| o.id == "gcp/us-central1/a3-highgpu-8g/on-demand").unwrap();
        assert!((a3.node_price.get() - 43.06615).abs() < 1e-4, "{}", a3.node_price);
        // verda's spot-only sizes and vast's 80 GB A100s are offers.
        assert!(catalog.offers.iter().any(|o| o.provider.as_str() == "verda" && o.kind == OfferKind::Spot));
        assert!(
            catalog
                .offers
                .iter()
                .any(|o| o.provider.as_str() == "vast" && o.accelerator.as_str() == "A100-80GB")
        );
    }
}
