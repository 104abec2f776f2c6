//! Domain types shared by every stage of the engine.
//!
//! Each type checks its own preconditions in its constructor ("parse, don't
//! validate"): a `GpuCount` is never zero, a `Price` is finite and not
//! negative, a `ProviderName` is a lowercase identifier. Code that holds one of
//! these never re-checks it.

use std::fmt;
use std::num::NonZeroU32;

use serde::{Deserialize, Serialize};
use time::OffsetDateTime;
use time::format_description::well_known::Rfc3339;

/// A value failed its constructor's check. The message says what was expected.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct InvalidValue(pub String);

fn invalid(message: impl Into<String>) -> InvalidValue {
    InvalidValue(message.into())
}

fn is_identifier(text: &str) -> bool {
    !text.is_empty()
        && text.len() <= 64
        && text.chars().all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-' || c == '_')
}

/// Serde and display plumbing for a newtype over `String` with a checking `new`.
macro_rules! string_newtype {
    ($name:ident) => {
        impl TryFrom<String> for $name {
            type Error = InvalidValue;
            fn try_from(value: String) -> Result<Self, Self::Error> {
                Self::new(&value)
            }
        }

        impl From<$name> for String {
            fn from(value: $name) -> Self {
                value.0
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(&self.0)
            }
        }
    };
}

/// A cloud or GPU vendor the buyer can buy from: `azure`, `oci`, `aws`, ...
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct ProviderName(String);

impl ProviderName {
    pub fn new(name: &str) -> Result<Self, InvalidValue> {
        let name = name.trim();
        if is_identifier(name) {
            Ok(Self(name.to_owned()))
        } else {
            Err(invalid(format!(
                "provider name {name:?} must be 1 to 64 lowercase letters, digits, '-' or '_'"
            )))
        }
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

string_newtype!(ProviderName);

/// A canonical GPU model name such as `H100`, `A100-80GB`, `MI300X`.
///
/// Canonical names are SkyPilot's (`accelerators.csv`), compared
/// case-insensitively on input and stored in their canonical spelling; see
/// `accelerators::canonical_accelerator` for the aliases that are folded in.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct Accelerator(String);

impl Accelerator {
    pub fn new(name: &str) -> Result<Self, InvalidValue> {
        let name = name.trim();
        if name.is_empty() || name.len() > 64 || name.chars().any(|c| c.is_control() || c == ',') {
            return Err(invalid(format!("accelerator name {name:?} is empty or malformed")));
        }
        Ok(Self(crate::accelerators::canonical_accelerator(name)))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

string_newtype!(Accelerator);

/// A provider's region, as the provider spells it (`eastus`, `us-east-1`).
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct Region(String);

impl Region {
    pub fn new(name: &str) -> Result<Self, InvalidValue> {
        let name = name.trim();
        if name.is_empty() || name.len() > 128 || name.chars().any(char::is_control) {
            return Err(invalid(format!("region name {name:?} is empty or malformed")));
        }
        Ok(Self(name.to_owned()))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

string_newtype!(Region);

/// A positive number of GPUs, at most `GpuCount::MAX`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(try_from = "u32", into = "u32")]
pub struct GpuCount(NonZeroU32);

impl GpuCount {
    /// No single request asks for more GPUs than this; larger numbers are typos.
    pub const MAX: u32 = 1_000_000;

    pub fn new(count: u32) -> Result<Self, InvalidValue> {
        match NonZeroU32::new(count) {
            Some(n) if count <= Self::MAX => Ok(Self(n)),
            _ => Err(invalid(format!("GPU count {count} must be between 1 and {}", Self::MAX))),
        }
    }

    pub fn get(self) -> u32 {
        self.0.get()
    }
}

impl TryFrom<u32> for GpuCount {
    type Error = InvalidValue;
    fn try_from(value: u32) -> Result<Self, Self::Error> {
        Self::new(value)
    }
}

impl From<GpuCount> for u32 {
    fn from(value: GpuCount) -> Self {
        value.get()
    }
}

impl fmt::Display for GpuCount {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.0)
    }
}

/// A price in US dollars per GPU-hour: finite and not negative.
///
/// Terms are stated per GPU-hour (price ceilings, what a first-refusal holder is
/// offered, the no-better-terms rule); what a provider sells is priced per node-hour
/// ([`NodePrice`]), and [`NodePrice::per_gpu`] is the one conversion between them.
#[derive(Debug, Clone, Copy, PartialEq, PartialOrd, Serialize, Deserialize)]
#[serde(try_from = "f64", into = "f64")]
pub struct Price(f64);

impl Price {
    /// No GPU-hour costs more than this; larger numbers are typos or units confusion.
    pub const MAX: f64 = 10_000.0;

    pub fn new(usd_per_gpu_hour: f64) -> Result<Self, InvalidValue> {
        if usd_per_gpu_hour.is_finite() && (0.0..=Self::MAX).contains(&usd_per_gpu_hour) {
            Ok(Self(usd_per_gpu_hour))
        } else {
            Err(invalid(format!(
                "price {usd_per_gpu_hour} USD per GPU-hour must be between 0 and {}",
                Self::MAX
            )))
        }
    }

    pub fn get(self) -> f64 {
        self.0
    }
}

impl TryFrom<f64> for Price {
    type Error = InvalidValue;
    fn try_from(value: f64) -> Result<Self, Self::Error> {
        Self::new(value)
    }
}

impl From<Price> for f64 {
    fn from(value: Price) -> Self {
        value.0
    }
}

impl fmt::Display for Price {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "${:.4}/GPU-h", self.0)
    }
}

/// The kind of workload a request serves; contracts scope clauses by it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum WorkloadClass {
    Training,
    Inference,
    Api,
    Batch,
}

impl WorkloadClass {
    pub const ALL: [WorkloadClass; 4] = [Self::Training, Self::Inference, Self::Api, Self::Batch];

    pub fn as_str(self) -> &'static str {
        match self {
            Self::Training => "training",
            Self::Inference => "inference",
            Self::Api => "api",
            Self::Batch => "batch",
        }
    }

    pub fn parse(text: &str) -> Result<Self, InvalidValue> {
        Self::ALL.into_iter().find(|class| class.as_str() == text).ok_or_else(|| {
            invalid(format!("workload class {text:?} is not one of training, inference, api, batch"))
        })
    }
}

impl fmt::Display for WorkloadClass {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// An instant in UTC, whole seconds since the Unix epoch.
///
/// The engine never reads a clock: every instant it sees arrives in an input.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(transparent)]
pub struct Timestamp(i64);

impl Timestamp {
    pub const HOUR: i64 = 3600;

    pub fn from_unix(seconds: i64) -> Self {
        Self(seconds)
    }

    pub fn unix(self) -> i64 {
        self.0
    }

    /// Parses `YYYY-MM-DD` (midnight UTC) or an RFC 3339 date-time.
    pub fn parse(text: &str) -> Result<Self, InvalidValue> {
        let text = text.trim();
        if let Ok(at) = OffsetDateTime::parse(text, &Rfc3339) {
            return Ok(Self(at.unix_timestamp()));
        }
        let format = time::macros::format_description!("[year]-[month]-[day]");
        time::Date::parse(text, &format)
            .map(|date| Self(date.midnight().assume_utc().unix_timestamp()))
            .map_err(|_| invalid(format!("{text:?} is not a date (YYYY-MM-DD) or an RFC 3339 date-time")))
    }

    pub fn from_date(year: i32, month: u8, day: u8) -> Result<Self, InvalidValue> {
        let month =
            time::Month::try_from(month).map_err(|_| invalid(format!("month {month} is not 1 to 12")))?;
        time::Date::from_calendar_date(year, month, day)
            .map(|date| Self(date.midnight().assume_utc().unix_timestamp()))
            .map_err(|e| invalid(format!("{year:04}-{month}-{day:02} is not a date: {e}")))
    }

    pub fn plus_seconds(self, seconds: i64) -> Self {
        Self(self.0.saturating_add(seconds))
    }

    pub fn plus_hours(self, hours: f64) -> Self {
        self.plus_seconds((hours * Self::HOUR as f64).round() as i64)
    }

    pub fn hours_since(self, earlier: Timestamp) -> f64 {
        (self.0 - earlier.0) as f64 / Self::HOUR as f64
    }
}

impl fmt::Display for Timestamp {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match OffsetDateTime::from_unix_timestamp(self.0).ok().and_then(|t| t.format(&Rfc3339).ok()) {
            Some(text) => f.write_str(&text),
            None => write!(f, "@{}", self.0),
        }
    }
}

/// A price in US dollars per node-hour, all-in (the host VM included): what a
/// provider bills for one node of an instance type. Finite and not negative.
#[derive(Debug, Clone, Copy, PartialEq, PartialOrd, Serialize, Deserialize)]
#[serde(try_from = "f64", into = "f64")]
pub struct NodePrice(f64);

impl NodePrice {
    /// No node-hour costs more than this; larger numbers are typos or units confusion.
    pub const MAX: f64 = 100_000.0;

    pub fn new(usd_per_node_hour: f64) -> Result<Self, InvalidValue> {
        if usd_per_node_hour.is_finite() && (0.0..=Self::MAX).contains(&usd_per_node_hour) {
            Ok(Self(usd_per_node_hour))
        } else {
            Err(invalid(format!(
                "price {usd_per_node_hour} USD per node-hour must be between 0 and {}",
                Self::MAX
            )))
        }
    }

    /// The price of `gpus_per_node` GPUs at `price` each: a node priced by the GPU.
    pub fn from_gpu_price(price: Price, gpus_per_node: GpuCount) -> Self {
        Self(price.get() * f64::from(gpus_per_node.get()))
    }

    pub fn get(self) -> f64 {
        self.0
    }

    /// The price per GPU-hour of a node of `gpus_per_node` GPUs.
    pub fn per_gpu(self, gpus_per_node: GpuCount) -> f64 {
        self.0 / f64::from(gpus_per_node.get())
    }
}

impl TryFrom<f64> for NodePrice {
    type Error = InvalidValue;
    fn try_from(value: f64) -> Result<Self, Self::Error> {
        Self::new(value)
    }
}

impl From<NodePrice> for f64 {
    fn from(value: NodePrice) -> Self {
        value.0
    }
}

impl fmt::Display for NodePrice {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "${:.4}/node-h", self.0)
    }
}

/// How a provider sells the capacity in an offer.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum OfferKind {
    OnDemand,
    Reserved,
    Spot,
}

impl OfferKind {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::OnDemand => "on-demand",
            Self::Reserved => "reserved",
            Self::Spot => "spot",
        }
    }
}

/// Capacity a provider can sell, as one instance type in one region: whole nodes of
/// `gpus_per_node` GPUs at an all-in price per node-hour.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Offer {
    /// Unique within one catalog: `provider/region/instance-type/kind`.
    pub id: String,
    pub provider: ProviderName,
    pub region: Region,
    /// The availability zone the price was read from, when the catalog names one. An offer
    /// stands for its whole region: the provider picks the zone when it provisions.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub zone: Option<String>,
    /// The provider's name for what is bought: `p5.48xlarge`, `a3-highgpu-8g`, or a host
    /// with attached GPUs such as `n1-highmem-8+T4:1`.
    pub instance_type: String,
    pub accelerator: Accelerator,
    /// GPUs in one node: capacity is bought in whole nodes.
    pub gpus_per_node: GpuCount,
    /// Nodes the provider can supply from this offer now.
    pub nodes_available: u32,
    /// All-in price of one node for one hour.
    pub node_price: NodePrice,
    /// Hours from reservation until the capacity is ready.
    pub lead_time_hours: u32,
    pub kind: OfferKind,
    pub valid_until: Option<Timestamp>,
    /// Whether the provider bills its nodes from delivery (the default: once a node is
    /// running it costs money, used or not) or from a start date the buyer names. A split
    /// award's parts start together; a part ready before the others is held, and billed
    /// for its idle hours only when it bills from delivery.
    #[serde(default = "bills_from_delivery_default", skip_serializing_if = "crate::types::is_true")]
    pub bills_from_delivery: bool,
    /// Where its price comes from when the provider does not price it itself (a cloud's
    /// API that names what it can launch but not what it costs: the catalog it was read from).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub price_source: Option<String>,
}

/// Providers bill from delivery unless an offer says otherwise.
pub fn bills_from_delivery_default() -> bool {
    true
}

/// For `skip_serializing_if`: a field that is true by default is written only when false.
pub fn is_true(value: &bool) -> bool {
    *value
}

impl Offer {
    /// The all-in price per GPU-hour: the node price spread over its GPUs.
    pub fn gpu_price(&self) -> f64 {
        self.node_price.per_gpu(self.gpus_per_node)
    }

    /// GPUs in the nodes available.
    pub fn gpus_available(&self) -> u64 {
        u64::from(self.nodes_available) * u64::from(self.gpus_per_node.get())
    }

    /// Where the offer is: `provider/region`.
    pub fn location(&self) -> Location {
        Location { provider: self.provider.clone(), region: Some(self.region.clone()) }
    }
}

/// A provider-qualified place: `aws/us-east-1`, or a whole provider, `gcp/*`.
///
/// Region names are the provider's own and several providers share some (`us-east-1` is
/// both aws's and lambda's), so dibs never uses a bare region name after parsing: a bare
/// name is resolved against the known offers by [`crate::names::Names::location`], and
/// is an error when more than one provider uses it.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct Location {
    pub provider: ProviderName,
    /// `None`: every region of the provider.
    pub region: Option<Region>,
}

impl Location {
    /// Parses the qualified spellings: `aws/us-east-1`, `gcp/*` and `gcp` (SkyPilot's `infra`
    /// spelling). A bare region is not qualified; see [`crate::names::Names::location`].
    /// A zone (`aws/us-east-1/us-east-1a`) is refused: an offer stands for a whole region.
    pub fn parse_qualified(text: &str) -> Result<Self, InvalidValue> {
        let text = text.trim();
        let (provider, rest) = match text.split_once('/') {
            Some((provider, rest)) => (provider, Some(rest.trim())),
            None => (text, None),
        };
        let provider = ProviderName::new(&provider.to_ascii_lowercase()).map_err(|_| {
            invalid(format!("{text:?} is not provider/region (for example aws/us-east-1 or gcp/*)"))
        })?;
        let region = match rest {
            None | Some("*") => None,
            Some("") => {
                return Err(invalid(format!(
                    "{text:?} has an empty region; write {provider}/* for all its regions"
                )));
            }
            Some(rest) => {
                if let Some((region, zone)) = rest.split_once('/') {
                    return Err(invalid(format!(
                        "{text:?} names zone {zone:?}: dibs buys per region and the provider picks the zone; \
                         write {provider}/{region}"
                    )));
                }
                Some(Region::new(rest)?)
            }
        };
        Ok(Self { provider, region })
    }

    /// Whether an offer at `provider`/`region` is inside this location.
    pub fn contains(&self, provider: &ProviderName, region: &Region) -> bool {
        &self.provider == provider && self.region.as_ref().is_none_or(|r| r == region)
    }

    /// Whether two locations share any place.
    pub fn overlaps(&self, other: &Location) -> bool {
        self.provider == other.provider
            && match (&self.region, &other.region) {
                (Some(a), Some(b)) => a == b,
                _ => true,
            }
    }
}

impl fmt::Display for Location {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.region {
            Some(region) => write!(f, "{}/{region}", self.provider),
            None => write!(f, "{}/*", self.provider),
        }
    }
}

impl TryFrom<String> for Location {
    type Error = InvalidValue;
    fn try_from(value: String) -> Result<Self, Self::Error> {
        Self::parse_qualified(&value)
    }
}

impl From<Location> for String {
    fn from(value: Location) -> Self {
        value.to_string()
    }
}
