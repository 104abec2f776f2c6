//! Price catalogs in SkyPilot's `vms.csv` format, and the bundled price table.
//!
//! A catalog turns rows of instance prices into [`Offer`]s. The format is the one SkyPilot keeps
//! under `~/.sky/catalogs/v8/<cloud>/vms.csv`, so a SkyPilot user's local catalog imports as is.
//!
//! # Reading a `vms.csv`
//!
//! * Columns are found by header name (case-insensitively), because their order and presence
//!   differ per cloud. Required: `InstanceType`, `AcceleratorName`, `AcceleratorCount`, `Price`,
//!   `Region`. Optional: `SpotPrice`, and three columns SkyPilot does not write but the bundled
//!   table does: `Cloud` (overrides the provider per row), `CapacityGPUs` and `LeadTimeHours`.
//!   Every other column (`GpuInfo`, `vCPUs`, `AvailabilityZone`, ...) is ignored.
//! * `Price` is USD per instance-hour; the offer's price is `Price / AcceleratorCount` per GPU-hour.
//! * One on-demand offer per (provider, region, instance type): the availability zones of one
//!   region collapse into one offer, and the lowest price wins (the first row on a tie). A
//!   positive `SpotPrice` adds a separate [`OfferKind::Spot`] offer, collapsed the same way.
//! * Offer ids are `provider/region/instance_type/kind`, kind being `on-demand` or `spot`, and
//!   offers come out sorted by id, so the same text always yields the same catalog.
//! * A row that is not a GPU offer is skipped and counted by [`SkipReason`] in the
//!   [`FileReport`], never an error: no accelerator (CPU instances), a TPU, a fractional GPU
//!   (Azure's partitioned `NV*_v5` sizes), no usable price, and so on. Only a file that cannot be
//!   read as a catalog at all (a malformed CSV record, a missing required column, no way to tell
//!   the provider) is a [`CatalogError`], which names the file and line.
//!
//! # Decisions and their cost
//!
//! * **GCP per-GPU rows.** GCP's catalog prices GPUs apart from the host VM: rows with an empty
//!   `InstanceType` give the price of `AcceleratorCount` GPUs attached to some host. They become
//!   offers named `<provider>-gpu-<Accelerator>-<count>` (`gcp-gpu-A100-8`) at
//!   `Price / AcceleratorCount` per GPU-hour. The host VM's price is *not* included, so these
//!   offers understate GCP's real cost by the host (often 10 to 30 %). The GCP VM rows
//!   themselves (`a2-highgpu-8g`, ...) carry no accelerator in SkyPilot's catalog and are
//!   skipped as having none. The rule applies to any provider's rows with an empty instance type.
//! * **TPUs** (`tpu-v4-1024`, ...) are skipped: dibs brokers GPUs, and a TPU pod's price is per
//!   pod, not per chip.
//! * **Capacity and lead time.** Catalogs say nothing about how many GPUs a provider can supply or
//!   how soon; [`CatalogDefaults`] fills both in, unless the row carries `CapacityGPUs` /
//!   `LeadTimeHours`. Capacity is rounded down to whole nodes (`gpus_per_node` =
//!   `AcceleratorCount`), so an offer always holds whole nodes; a row whose capacity is less than
//!   one node is skipped. A spot offer has the same capacity as its on-demand twin and the spot
//!   lead time from the defaults (spot capacity is available now or not at all).
//! * **Accelerator names** are canonicalized by [`canonical_accelerator`] against SkyPilot's list
//!   (`common/accelerators.csv`), embedded here as [`CANONICAL_ACCELERATORS`] so the crate needs
//!   no data files at run time.
//!
//! # The bundled price table
//!
//! `data/bundled_prices.csv` is the project's own table for the embedded default: on-demand (and
//! a few spot) list prices for H100 at azure, aws, gcp, oci, lambda and nebius, plus H200,
//! A100-80GB, B200, MI300X (and lambda's GH200) where those providers sell them. Prices are
//! approximate public list prices as of 2025 (the provider's pricing pages and SkyPilot's
//! public catalogs), rounded; capacities and lead times are plausible figures for a large buyer,
//! invented for the demo (hyperscalers 48 to 168 hours, neoclouds 2 to 24 hours). It is not a
//! quote from anybody.
//!
//! [`load_catalog_path`] is the one function here that reads files; it reads only the path its
//! caller names, and everything else in this module is pure.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::path::Path;

use crate::types::{Accelerator, GpuCount, Offer, OfferKind, Price, ProviderName, Region};

/// The bundled price table, compiled into the binary.
pub const BUNDLED_PRICES_CSV: &str = include_str!("../data/bundled_prices.csv");

/// The source name the bundled table reports under.
pub const BUNDLED_SOURCE_NAME: &str = "bundled_prices.csv";

/// No catalog file larger than this is read: SkyPilot's largest (AWS, all instance types) is
/// about 15 MB, so anything beyond this is not a price catalog.
pub const MAX_CATALOG_FILE_BYTES: u64 = 256 * 1024 * 1024;

/// No lead time longer than a year is believed; larger numbers are typos.
pub const MAX_LEAD_TIME_HOURS: u32 = 24 * 366;

/// What a catalog does not say: how much capacity an offer holds and how soon it is ready.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CatalogDefaults {
    /// GPUs available in each (provider, region, instance type) offer, rounded down to whole
    /// nodes.
    pub gpus_per_region_offer: u32,
    /// Hours until on-demand capacity is ready.
    pub lead_time_hours: u32,
    /// Hours until spot capacity is ready.
    pub spot_lead_time_hours: u32,
}

impl Default for CatalogDefaults {
    fn default() -> Self {
        Self { gpus_per_region_offer: 1024, lead_time_hours: 24, spot_lead_time_hours: 1 }
    }
}

/// Offers read from one or more catalog files, with a report of what was read and skipped.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct Catalog {
    /// Sorted by id; ids are unique.
    pub offers: Vec<Offer>,
    pub report: LoadReport,
}

impl Catalog {
    /// Adds `other`'s offers and report to this catalog. An offer of `other` with the same id as
    /// one already here replaces it: the catalog merged last wins, so a user's catalog can
    /// override the bundled table offer by offer.
    pub fn merge(&mut self, other: Catalog) {
        let mut by_id: BTreeMap<String, Offer> =
            std::mem::take(&mut self.offers).into_iter().map(|offer| (offer.id.clone(), offer)).collect();
        for offer in other.offers {
            by_id.insert(offer.id.clone(), offer);
        }
        self.offers = by_id.into_values().collect();
        self.report.files.extend(other.report.files);
    }
}

/// What was read from each catalog file.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct LoadReport {
    pub files: Vec<FileReport>,
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
        Ok(())
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
    /// Offers produced, after availability zones collapsed, spot offers included.
    pub offers: usize,
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
        Ok(())
    }
}

/// Why a catalog row produced no offer.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum SkipReason {
    /// `Cloud` is empty or not a provider name, and the file names no provider either.
    BadProvider,
    /// No accelerator: a CPU instance.
    NoAccelerator,
    /// A TPU: dibs brokers GPUs.
    NotAGpu,
    /// The accelerator name is too long or contains a comma or control character.
    BadAcceleratorName,
    /// `AcceleratorCount` is missing, not a number, not positive, or absurdly large.
    BadAcceleratorCount,
    /// A fraction of a GPU (a partitioned GPU).
    FractionalGpu,
    /// `Price` is empty, not a number, or not positive.
    NoPrice,
    /// The price per GPU-hour is above `Price::MAX`.
    PriceOutOfRange,
    /// `Region` is empty or malformed.
    BadRegion,
    /// `CapacityGPUs` is not a whole number, or less than one node.
    BadCapacity,
    /// `LeadTimeHours` is not a whole number of hours up to `MAX_LEAD_TIME_HOURS`.
    BadLeadTime,
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
            Self::BadCapacity => "bad capacity",
            Self::BadLeadTime => "bad lead time",
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
}

/// Parses one catalog in SkyPilot's `vms.csv` format.
///
/// `source_name` names the file in reports and errors; when `provider` is `None`, the provider is
/// taken from it (`aws_vms_gpu_subset.csv` and `aws/vms.csv` are both `aws`). A non-empty `Cloud`
/// column overrides both, row by row.
pub fn parse_catalog(
    source_name: &str,
    provider: Option<&ProviderName>,
    text: &str,
    defaults: &CatalogDefaults,
) -> Result<Catalog, CatalogError> {
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
        skipped: BTreeMap::new(),
    };
    let mut offers: BTreeMap<String, Offer> = BTreeMap::new();
    let mut record = csv::StringRecord::new();
    loop {
        match reader.read_record(&mut record) {
            Ok(true) => {}
            Ok(false) => break,
            Err(error) => return Err(malformed(source_name, &error)),
        }
        report.rows_read += 1;
        let row = match read_row(&columns, &record, file_provider.as_ref(), defaults) {
            Ok(row) => row,
            Err(reason) => {
                *report.skipped.entry(reason).or_default() += 1;
                continue;
            }
        };
        report.providers.insert(row.provider.clone());
        if let Some(spot_price) = row.spot_price {
            let lead_time = defaults.spot_lead_time_hours;
            keep_cheapest(&mut offers, row.offer(OfferKind::Spot, spot_price, lead_time));
        }
        let (price, lead_time) = (row.price, row.lead_time_hours);
        keep_cheapest(&mut offers, row.offer(OfferKind::OnDemand, price, lead_time));
    }
    if report.providers.is_empty() {
        report.providers.extend(file_provider);
    }
    report.offers = offers.len();
    Ok(Catalog { offers: offers.into_values().collect(), report: LoadReport { files: vec![report] } })
}

/// Loads a catalog file, or every catalog in a directory: its `*_vms.csv` files and the
/// `vms.csv` in each of its subdirectories (SkyPilot's own layout), in name order. Other files,
/// such as `accelerators.csv`, are ignored.
pub fn load_catalog_path(path: &Path, defaults: &CatalogDefaults) -> Result<Catalog, CatalogError> {
    if !path.is_dir() {
        return load_catalog_file(path, defaults);
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
    let mut catalog = Catalog::default();
    for file in files {
        catalog.merge(load_catalog_file(&file, defaults)?);
    }
    Ok(catalog)
}

fn load_catalog_file(path: &Path, defaults: &CatalogDefaults) -> Result<Catalog, CatalogError> {
    let file = path.display().to_string();
    let unreadable = |message: String| CatalogError::Unreadable { file: file.clone(), message };
    let size = std::fs::metadata(path).map_err(|error| unreadable(error.to_string()))?.len();
    if size > MAX_CATALOG_FILE_BYTES {
        return Err(unreadable(format!("{size} bytes is more than the limit of {MAX_CATALOG_FILE_BYTES}")));
    }
    let text = std::fs::read_to_string(path).map_err(|error| unreadable(error.to_string()))?;
    parse_catalog(&file, None, &text, defaults)
}

/// The bundled price table (`data/bundled_prices.csv`), parsed with the default capacities and
/// lead times for any row that does not carry its own.
pub fn bundled_catalog() -> Catalog {
    // The table is compiled in and a unit test parses it, so failing here is a programmer
    // error in this crate, not an operating error.
    parse_catalog(BUNDLED_SOURCE_NAME, None, BUNDLED_PRICES_CSV, &CatalogDefaults::default())
        .expect("the bundled price table parses")
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
    cloud: Option<usize>,
    capacity: Option<usize>,
    lead_time: Option<usize>,
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
            cloud: optional("Cloud"),
            capacity: optional("CapacityGPUs"),
            lead_time: optional("LeadTimeHours"),
        })
    }
}

/// One usable catalog row.
struct Row {
    provider: ProviderName,
    region: Region,
    accelerator: Accelerator,
    instance_type: String,
    gpus_per_node: u32,
    gpus_available: u32,
    price: Price,
    spot_price: Option<Price>,
    lead_time_hours: u32,
}

impl Row {
    fn offer(&self, kind: OfferKind, price: Price, lead_time_hours: u32) -> Offer {
        Offer {
            id: format!("{}/{}/{}/{}", self.provider, self.region, self.instance_type, kind.as_str()),
            provider: self.provider.clone(),
            region: self.region.clone(),
            accelerator: self.accelerator.clone(),
            gpus_available: self.gpus_available,
            gpus_per_node: self.gpus_per_node,
            price,
            lead_time_hours,
            kind,
            valid_until: None,
            instance_type: self.instance_type.clone(),
        }
    }
}

/// Keeps the cheaper of two offers with one id (the earlier one on a tie): the availability
/// zones of a region collapse into one offer.
fn keep_cheapest(offers: &mut BTreeMap<String, Offer>, offer: Offer) {
    match offers.entry(offer.id.clone()) {
        std::collections::btree_map::Entry::Vacant(slot) => {
            slot.insert(offer);
        }
        std::collections::btree_map::Entry::Occupied(mut slot) => {
            if offer.price.get() < slot.get().price.get() {
                slot.insert(offer);
            }
        }
    }
}

fn read_row(
    columns: &Columns,
    record: &csv::StringRecord,
    file_provider: Option<&ProviderName>,
    defaults: &CatalogDefaults,
) -> Result<Row, SkipReason> {
    let field = |index: usize| record.get(index).unwrap_or_default();
    let optional_field = |index: Option<usize>| index.map(field).filter(|text| !text.is_empty());

    let provider = match optional_field(columns.cloud) {
        Some(cloud) => ProviderName::new(&cloud.to_ascii_lowercase()).map_err(|_| SkipReason::BadProvider)?,
        None => file_provider.cloned().ok_or(SkipReason::BadProvider)?,
    };

    let accelerator_name = field(columns.accelerator_name);
    if accelerator_name.is_empty() {
        return Err(SkipReason::NoAccelerator);
    }
    if accelerator_name.get(..3).is_some_and(|prefix| prefix.eq_ignore_ascii_case("tpu")) {
        return Err(SkipReason::NotAGpu);
    }
    let accelerator = Accelerator::new(accelerator_name).map_err(|_| SkipReason::BadAcceleratorName)?;

    let count: f64 = field(columns.accelerator_count).parse().map_err(|_| SkipReason::BadAcceleratorCount)?;
    if !count.is_finite() || count <= 0.0 || count > f64::from(GpuCount::MAX) {
        return Err(SkipReason::BadAcceleratorCount);
    }
    if count.fract() != 0.0 {
        return Err(SkipReason::FractionalGpu);
    }
    // Exact: `count` is a whole number between 1 and `GpuCount::MAX`.
    let gpus_per_node = count as u32;

    let instance_price = positive_number(field(columns.price)).ok_or(SkipReason::NoPrice)?;
    let price = Price::new(instance_price / count).map_err(|_| SkipReason::PriceOutOfRange)?;
    // A spot price that is absent, zero or absurd only means there is no spot offer.
    let spot_price = optional_field(columns.spot_price)
        .and_then(positive_number)
        .and_then(|spot| Price::new(spot / count).ok());

    let region = Region::new(field(columns.region)).map_err(|_| SkipReason::BadRegion)?;

    let capacity = match optional_field(columns.capacity) {
        Some(text) => text.parse::<u32>().map_err(|_| SkipReason::BadCapacity)?,
        None => defaults.gpus_per_region_offer,
    };
    let gpus_available = capacity.min(GpuCount::MAX) / gpus_per_node * gpus_per_node;
    if gpus_available == 0 {
        return Err(SkipReason::BadCapacity);
    }
    let lead_time_hours = match optional_field(columns.lead_time) {
        Some(text) => text.parse::<u32>().map_err(|_| SkipReason::BadLeadTime)?,
        None => defaults.lead_time_hours,
    };
    if lead_time_hours > MAX_LEAD_TIME_HOURS {
        return Err(SkipReason::BadLeadTime);
    }

    let instance_type = match field(columns.instance_type) {
        "" => format!("{provider}-gpu-{accelerator}-{gpus_per_node}"),
        name => name.to_owned(),
    };
    Ok(Row {
        provider,
        region,
        accelerator,
        instance_type,
        gpus_per_node,
        gpus_available,
        price,
        spot_price,
        lead_time_hours,
    })
}

fn positive_number(text: &str) -> Option<f64> {
    text.parse::<f64>().ok().filter(|value| value.is_finite() && *value > 0.0)
}

/// SkyPilot's canonical accelerator names (`common/accelerators.csv` of the v8 catalog).
#[rustfmt::skip]
pub const CANONICAL_ACCELERATORS: [&str; 60] = [
    "A10", "A100", "A100-80GB", "A100-80GB-SXM", "A10G", "A30", "A40", "A4000", "A6000", "A800", "B200",
    "GH200", "GTX1660S", "Gaudi HL-205", "H100", "H100-MEGA", "H100-NVL", "H100-NVLINK", "H100-SXM",
    "H200", "H200-SXM", "K80", "L4", "L40", "L40S", "M4000", "M60", "MI300X", "P100", "P4", "P4000",
    "RTX3060", "RTX3070", "RTX3080", "RTX3090", "RTX4000-Ada", "RTX4090", "RTX5060", "RTX5090", "RTX6000",
    "RTX6000-Ada", "RTX6000Ada", "RTXA4000", "RTXA4500", "RTXA5000", "RTXA6000", "RTXPRO6000S",
    "RTXPRO6000WS", "Radeon MI25", "Radeon Pro V520", "T4", "T4g", "V100", "V100-32GB", "tpu-v2", "tpu-v3",
    "tpu-v4", "tpu-v5litepod", "tpu-v5p", "tpu-v6e",
];

/// Other spellings of canonical names, as vendors' tools and other catalogs write them; the
/// left side is compared with separators (`-`, `_`, space) folded and case ignored.
const ACCELERATOR_ALIASES: [(&str, &str); 14] = [
    ("h100-80gb", "H100"),
    ("h100-80gb-hbm3", "H100"),
    ("h100-pcie", "H100"),
    ("h100-80gb-pcie", "H100"),
    ("h200-141gb", "H200"),
    ("h200-141gb-hbm3e", "H200"),
    ("a100-40gb", "A100"),
    ("a100-sxm4-40gb", "A100"),
    ("a100-pcie-40gb", "A100"),
    ("a100-80gb-pcie", "A100-80GB"),
    ("a100-sxm4-80gb", "A100-80GB"),
    ("v100-16gb", "V100"),
    ("v100-sxm2-16gb", "V100"),
    ("v100-sxm2-32gb", "V100-32GB"),
];

/// Vendor and brand words that precede a model name (`NVIDIA H100`, `AMD Instinct MI300X`,
/// `Tesla T4`) and are dropped before matching.
const ACCELERATOR_VENDOR_PREFIXES: [&str; 4] = ["nvidia", "amd", "tesla", "instinct"];

/// The canonical spelling of an accelerator name.
///
/// Matching is case-insensitive and treats `-`, `_` and spaces alike; vendor words are dropped
/// (`NVIDIA H100` -> `H100`) and a few aliases are folded in (`h100-80gb` -> `H100`,
/// `a100_80gb` -> `A100-80GB`). SkyPilot's canonical names are kept as they are, even
/// variants such as `A100-80GB-SXM`. An unknown name comes back trimmed but otherwise unchanged.
/// This runs for every catalog row, so it allocates nothing but the returned string.
pub fn canonical_accelerator(name: &str) -> String {
    let name = name.trim();
    if let Some(canonical) =
        CANONICAL_ACCELERATORS.iter().find(|canonical| canonical.eq_ignore_ascii_case(name))
    {
        return (*canonical).to_owned();
    }
    let model = strip_vendor_prefixes(name);
    let canonical =
        CANONICAL_ACCELERATORS.iter().find(|canonical| eq_folded(model, canonical)).or_else(|| {
            ACCELERATOR_ALIASES
                .iter()
                .find(|(alias, _)| eq_folded(model, alias))
                .map(|(_, canonical)| canonical)
        });
    match canonical {
        Some(canonical) => (*canonical).to_owned(),
        None => name.to_owned(),
    }
}

fn strip_vendor_prefixes(mut name: &str) -> &str {
    'again: loop {
        for prefix in ACCELERATOR_VENDOR_PREFIXES {
            let bytes = name.as_bytes();
            let matches = bytes.len() > prefix.len() + 1
                && bytes[..prefix.len()].eq_ignore_ascii_case(prefix.as_bytes())
                && matches!(bytes[prefix.len()], b' ' | b'-' | b'_');
            if matches {
                // The byte at `prefix.len()` is ASCII, so both slice points are char boundaries.
                name = name[prefix.len() + 1..].trim_start();
                continue 'again;
            }
        }
        return name;
    }
}

/// Equal ignoring ASCII case, with `-`, `_` and space treated as the same separator.
fn eq_folded(left: &str, right: &str) -> bool {
    fn fold(byte: u8) -> u8 {
        match byte {
            b'_' | b' ' => b'-',
            other => other.to_ascii_lowercase(),
        }
    }
    left.len() == right.len() && left.bytes().zip(right.bytes()).all(|(l, r)| fold(l) == fold(r))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::fmt::Write as _;

    /// Parses `text` as `source_name` and compares a readable rendering of the offers and the
    /// skip counts with `expected` (leading and trailing whitespace of each line ignored).
    fn check(source_name: &str, text: &str, expected: &str) {
        let catalog = parse_catalog(source_name, None, text, &CatalogDefaults::default())
            .unwrap_or_else(|error| panic!("{error}"));
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
                "{} {} {}x{} {:.4} {}h",
                offer.id,
                offer.accelerator,
                offer.gpus_available / offer.gpus_per_node,
                offer.gpus_per_node,
                offer.price.get(),
                offer.lead_time_hours
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
            "aws/us-east-1/p5.48xlarge/on-demand H100 128x8 6.2500 24h
             aws/us-east-1/p5.48xlarge/spot H100 128x8 2.2000 1h
             aws/us-west-2/p5.48xlarge/on-demand H100 128x8 7.0000 24h
             rows 3 offers 3 skipped []",
        );
    }

    #[test]
    fn gcp_column_order_and_per_gpu_rows() {
        check(
            "catalogs/gcp_vms.csv",
            "InstanceType,vCPUs,MemoryGiB,AcceleratorName,AcceleratorCount,GpuInfo,Region,AvailabilityZone,Price,SpotPrice
             a2-highgpu-1g,12.0,85.0,,,,us-central1,us-central1-a,0.73948,0.36975
             ,,,A100,8,{'Gpus': [{'MemoryInfo': {'SizeInMiB': 40960}}]},us-central1,us-central1-a,23.47126,11.4728
             ,,,A100,8,{'Gpus': [{'MemoryInfo': {'SizeInMiB': 40960}}]},us-central1,us-central1-b,23.47126,11.4728
             ,,,tpu-v4-8,1,tpu-v4-8,us-central2,us-central2-b,12.88,3.86",
            "gcp/us-central1/gcp-gpu-A100-8/on-demand A100 128x8 2.9339 24h
             gcp/us-central1/gcp-gpu-A100-8/spot A100 128x8 1.4341 1h
             rows 4 offers 2 skipped [1 no accelerator, 1 not a GPU (TPU)]",
        );
    }

    #[test]
    fn lambda_nebius_and_verda_column_orders() {
        check(
            "lambda_vms.csv",
            "InstanceType,AcceleratorName,AcceleratorCount,vCPUs,MemoryGiB,Price,Region,GpuInfo,SpotPrice
             cpu_4x_generalx,,,4.0,16.0,0.2,europe-central-1,,
             gpu_8x_h100_sxm5,H100,8.0,208.0,1800.0,23.92,us-east-1,\"{'Gpus': [{'Name': 'H100'}]}\",",
            "lambda/us-east-1/gpu_8x_h100_sxm5/on-demand H100 128x8 2.9900 24h
             rows 2 offers 1 skipped [1 no accelerator]",
        );
        check(
            "catalogs/verda/vms.csv",
            "InstanceType,UpstreamCloudId,vCPUs,MemoryGiB,AcceleratorName,AcceleratorCount,GpuInfo,Region,Price,SpotPrice
             2B300.60V,2B300.60V,60.0,550.0,B300,2.0,\"{\"\"Gpus\"\": []}\",FIN-03,,4.893
             8H100.80S,8H100.80S,80.0,800.0,h100-80gb,8.0,,FIN-01,19.92,",
            "verda/FIN-01/8H100.80S/on-demand H100 128x8 2.4900 24h
             rows 2 offers 1 skipped [1 no price]",
        );
    }

    #[test]
    fn bundled_columns_set_provider_capacity_and_lead_time_per_row() {
        check(
            "prices.csv",
            "Cloud,InstanceType,AcceleratorName,AcceleratorCount,vCPUs,MemoryGiB,Price,SpotPrice,Region,CapacityGPUs,LeadTimeHours
             OCI,BM.GPU.H100.8,H100,8,112,2048,80.00,,us-chicago-1,2044,72
             nebius,gpu-h200,H200,8,128,1600,28.00,11.60,eu-north1,,
             lambda,gpu_1x_h100,H100,1,26,200,2.99,,us-east-1,0,2
             ,gpu_1x_h100,H100,1,26,200,2.99,,us-east-1,8,2
             aws,p5.48xlarge,H100,8,192,2048,55.04,,us-east-1,64,soon",
            "nebius/eu-north1/gpu-h200/on-demand H200 128x8 3.5000 24h
             nebius/eu-north1/gpu-h200/spot H200 128x8 1.4500 1h
             oci/us-chicago-1/BM.GPU.H100.8/on-demand H100 255x8 10.0000 72h
             rows 5 offers 3 skipped [1 no valid provider, 1 bad capacity, 1 bad lead time]",
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
            ok,A10,1,1.0,0,r1";
        check(
            "x_vms.csv",
            text,
            "x/r1/ok/on-demand A10 1024x1 1.0000 24h
             rows 12 offers 1 skipped [1 no accelerator, 1 malformed accelerator name, 2 bad accelerator count, \
             1 fractional GPU, 4 no price, 1 price out of range, 1 bad region]",
        );
        let catalog = parse_catalog("x_vms.csv", None, text, &CatalogDefaults::default()).unwrap();
        let file = &catalog.report.files[0];
        assert_eq!(file.rows_skipped() + 1, file.rows_read);
    }

    #[test]
    fn an_explicit_provider_beats_the_file_name() {
        let text = "InstanceType,AcceleratorName,AcceleratorCount,Price,Region\nn,H100,8,80,r";
        let oci = ProviderName::new("oci").unwrap();
        let catalog = parse_catalog("aws_vms.csv", Some(&oci), text, &CatalogDefaults::default()).unwrap();
        assert_eq!(catalog.offers[0].id, "oci/r/n/on-demand");
        assert_eq!(
            catalog.report.files[0].to_string(),
            "aws_vms.csv [oci]: 1 rows, 1 offers, 0 rows skipped"
        );
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
        let defaults = CatalogDefaults::default();
        let error =
            parse_catalog("aws_vms.csv", None, "InstanceType,AcceleratorName,Price,Region\n", &defaults)
                .unwrap_err();
        assert_eq!(
            error.to_string(),
            "aws_vms.csv:1: the header has no \"AcceleratorCount\" column, which is required"
        );

        let text = "InstanceType,AcceleratorName,AcceleratorCount,Price,Region\nn,H100,8,80,r\nn,H100,8,80\n";
        let error = parse_catalog("aws_vms.csv", None, text, &defaults).unwrap_err();
        assert_eq!(error.to_string(), "aws_vms.csv:3: malformed CSV record: 4 fields where the header has 5");

        let text = "InstanceType,AcceleratorName,AcceleratorCount,Price,Region\nn,H100,8,80,r\n";
        let error = parse_catalog("prices.csv", None, text, &defaults).unwrap_err();
        assert!(
            matches!(error, CatalogError::UnknownProvider { ref file } if file == "prices.csv"),
            "{error}"
        );

        let error = parse_catalog("aws_vms.csv", None, "", &defaults).unwrap_err();
        assert!(error.to_string().contains("no \"InstanceType\" column"), "{error}");
    }

    #[test]
    fn merge_replaces_offers_with_the_same_id_and_keeps_order() {
        let defaults = CatalogDefaults::default();
        let header = "InstanceType,AcceleratorName,AcceleratorCount,Price,Region\n";
        let mut catalog =
            parse_catalog("b_vms.csv", None, &format!("{header}n,H100,8,80,r\nm,H100,8,80,r"), &defaults)
                .unwrap();
        let other = parse_catalog("b_vms.csv", None, &format!("{header}n,H100,8,40,r\n"), &defaults).unwrap();
        let first = parse_catalog("a_vms.csv", None, &format!("{header}n,H100,8,40,r\n"), &defaults).unwrap();
        catalog.merge(other);
        catalog.merge(first);
        let ids_and_prices: Vec<(&str, f64)> =
            catalog.offers.iter().map(|offer| (offer.id.as_str(), offer.price.get())).collect();
        assert_eq!(
            ids_and_prices,
            [("a/r/n/on-demand", 5.0), ("b/r/m/on-demand", 10.0), ("b/r/n/on-demand", 5.0)]
        );
        assert_eq!(catalog.report.files.len(), 3);
    }

    #[test]
    fn canonical_accelerator_names() {
        let cases = [
            ("H100", "H100"),
            ("  h100 ", "H100"),
            ("h100-80gb", "H100"),
            ("NVIDIA H100", "H100"),
            ("NVIDIA-H100-80GB-HBM3", "H100"),
            ("NVIDIA H100 80GB HBM3", "H100"),
            ("a100_80gb", "A100-80GB"),
            ("A100-80GB-SXM", "A100-80GB-SXM"),
            ("a100-80gb-sxm", "A100-80GB-SXM"),
            ("NVIDIA A100-SXM4-80GB", "A100-80GB"),
            ("AMD Instinct MI300X", "MI300X"),
            ("mi300x", "MI300X"),
            ("Tesla T4", "T4"),
            ("t4g", "T4g"),
            ("radeon_mi25", "Radeon MI25"),
            ("rtx6000ada", "RTX6000Ada"),
            ("RTX6000 Ada", "RTX6000-Ada"),
            ("TPU-V4", "tpu-v4"),
            ("B300", "B300"),
            (" Some New GPU ", "Some New GPU"),
            ("NVIDIA", "NVIDIA"),
            ("nvidia-", "nvidia-"),
            ("NVIDIA Ünknown", "NVIDIA Ünknown"),
            ("", ""),
        ];
        for (input, expected) in cases {
            assert_eq!(canonical_accelerator(input), expected, "canonical_accelerator({input:?})");
        }
    }

    #[test]
    fn canonical_names_are_distinct_after_folding_and_aliases_point_at_them() {
        for (i, left) in CANONICAL_ACCELERATORS.iter().enumerate() {
            assert_eq!(canonical_accelerator(left), *left);
            for right in &CANONICAL_ACCELERATORS[i + 1..] {
                assert!(!eq_folded(left, right), "{left} and {right} fold to the same name");
            }
        }
        for (alias, canonical) in ACCELERATOR_ALIASES {
            assert!(CANONICAL_ACCELERATORS.contains(&canonical), "{alias} -> {canonical}");
            assert!(
                !CANONICAL_ACCELERATORS.iter().any(|name| eq_folded(alias, name)),
                "{alias} is canonical"
            );
        }
    }

    #[test]
    fn the_bundled_table_loads_cleanly_with_h100_from_all_six_providers() {
        let catalog = bundled_catalog();
        let file = &catalog.report.files[0];
        assert_eq!(file.rows_skipped(), 0, "{file}");
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
        assert!(catalog.offers.iter().all(|offer| offer.gpus_available % offer.gpus_per_node == 0));
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
        let catalog =
            load_catalog_path(folder, &CatalogDefaults::default()).unwrap_or_else(|error| panic!("{error}"));
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
    }
}

#[cfg(test)]
mod accelerator_list_tests {
    use super::*;

    /// The tenth shared file, SkyPilot's `accelerators.csv`, is the list the
    /// embedded canonical names were written from: every name in it must be
    /// canonical as it stands, and none may be missing from the embedded list.
    #[test]
    fn skypilot_accelerator_list_matches_the_embedded_canonical_names() {
        let path = Path::new(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/../../../shared/data/catalogs/skypilot-v8/accelerators.csv"
        ));
        let Ok(text) = std::fs::read_to_string(path) else {
            eprintln!("skipping: {} not found", path.display());
            return;
        };
        let mut reader = csv::Reader::from_reader(text.as_bytes());
        let mut names = 0;
        for record in reader.records() {
            let record = record.expect("accelerators.csv is well-formed CSV");
            let name = &record[0];
            names += 1;
            assert_eq!(canonical_accelerator(name), name, "{name} should already be canonical");
            assert!(CANONICAL_ACCELERATORS.contains(&name), "{name} is missing from CANONICAL_ACCELERATORS");
        }
        assert_eq!(names, CANONICAL_ACCELERATORS.len());
    }
}
