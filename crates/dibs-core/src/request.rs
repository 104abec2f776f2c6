//! The buyer's capacity request.

use std::fmt;

use serde::{Deserialize, Serialize};

use crate::names::Names;
use crate::types::{
    Accelerator, GpuCount, InvalidValue, Location, Price, ProviderName, Timestamp, WorkloadClass,
};

/// Requests may not run longer than this (ten years); longer durations are typos.
pub const MAX_DURATION_HOURS: u32 = 24 * 366 * 10;
/// A request may list at most this many accelerators, providers and regions each.
pub const MAX_REQUEST_LIST_LEN: usize = 64;

/// Whether spot capacity (which the provider may reclaim) is acceptable.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum SpotPolicy {
    /// On-demand and reserved capacity only.
    #[default]
    Never,
    /// Spot competes with on-demand on price.
    Allow,
    /// Spot capacity only.
    Only,
}

impl SpotPolicy {
    pub fn parse(text: &str) -> Result<Self, InvalidValue> {
        match text {
            "never" => Ok(Self::Never),
            "allow" => Ok(Self::Allow),
            "only" => Ok(Self::Only),
            _ => Err(InvalidValue(format!("{text:?} is not never, allow or only"))),
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Self::Never => "never",
            Self::Allow => "allow",
            Self::Only => "only",
        }
    }
}

/// What the award minimizes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Objective {
    /// The effective cost (list price net of commitment credits).
    #[default]
    Cost,
    /// The instant all the capacity is ready (the longest lead time used), then cost.
    Time,
}

impl Objective {
    pub fn parse(text: &str) -> Result<Self, InvalidValue> {
        match text {
            "cost" => Ok(Self::Cost),
            "time" => Ok(Self::Time),
            _ => Err(InvalidValue(format!("{text:?} is not cost or time"))),
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Self::Cost => "cost",
            Self::Time => "time",
        }
    }
}

/// How the order of the request's accelerators and providers counts. A choice's place is
/// its position in `accelerators` plus its position in `providers` (0 when the request
/// names no providers), so the first accelerator from the first provider is choice 0.
#[derive(Debug, Clone, Copy, PartialEq, Default, Serialize, Deserialize)]
#[serde(tag = "rule", rename_all = "lowercase")]
pub enum Preference {
    /// Every listed choice is equally welcome: the cheapest award wins, and the order only
    /// breaks ties (SkyPilot's `any_of`).
    #[default]
    Any,
    /// A later choice is used only when the earlier ones cannot fill the request (SkyPilot's
    /// ordered list): the award uses the fewest places down the list that can fill it.
    Fallback,
    /// A later choice is used only when it is at least `percent`% cheaper per GPU-hour for
    /// each place it stands further down the list.
    Premium { percent: f64 },
}

/// What a preference may be written as (the OpenAPI document states it): a percent is
/// plain decimal digits, as `premium:5` or `premium:2.5%`.
pub const PREFERENCE_PATTERN: &str = r"^(any|fallback|premium:[0-9]+(\.[0-9]+)?%?)$";

/// Digits, optionally a point and more digits: no sign, exponent, or bare point.
fn is_decimal(text: &str) -> bool {
    let (whole, fraction) = text.split_once('.').unwrap_or((text, "0"));
    [whole, fraction].iter().all(|part| !part.is_empty() && part.bytes().all(|b| b.is_ascii_digit()))
}

impl Preference {
    /// Parses `any`, `fallback` or `premium:P` (0 < P < 100).
    pub fn parse(text: &str) -> Result<Self, InvalidValue> {
        match text {
            "any" => Ok(Self::Any),
            "fallback" => Ok(Self::Fallback),
            _ => text
                .strip_prefix("premium:")
                .map(|p| p.strip_suffix('%').unwrap_or(p))
                .filter(|p| is_decimal(p))
                .and_then(|p| p.parse::<f64>().ok())
                .filter(|p| *p > 0.0 && *p < 100.0)
                .map(|percent| Self::Premium { percent })
                .ok_or_else(|| {
                    InvalidValue(format!("{text:?} is not any, fallback or premium:P (0 < P < 100 percent)"))
                }),
        }
    }

    /// How much an offer's price counts, standing `place` steps down the list: prices are
    /// divided by `(1 - P/100)^place` under the premium rule, and unchanged otherwise.
    pub fn price_factor(self, place: usize) -> f64 {
        match self {
            Self::Premium { percent } => (1.0 - percent / 100.0).powi(place as i32).recip(),
            Self::Any | Self::Fallback => 1.0,
        }
    }
}

impl fmt::Display for Preference {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Any => f.write_str("any"),
            Self::Fallback => f.write_str("fallback"),
            Self::Premium { percent } => write!(f, "premium:{percent}"),
        }
    }
}

/// The buyer's need. Built only through [`RequestSpec::validate`], so every `Request` is
/// internally consistent and names only what exists: GPUs are a whole number of blocks,
/// the deadline is not before the earliest start, lists are bounded, every accelerator,
/// provider and region is one the offers use.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Request {
    pub id: String,
    /// Acceptable accelerators, in order of preference (never empty).
    pub accelerators: Vec<Accelerator>,
    /// Acceptable providers, in order of preference; empty means any.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub providers: Vec<ProviderName>,
    /// Providers that may not be used.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub exclude_providers: Vec<ProviderName>,
    /// Allowed locations; empty means anywhere.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub regions: Vec<Location>,
    pub gpus: GpuCount,
    /// GPUs that must sit together: within one node when a node of the accelerator holds
    /// them, else a gang of whole nodes of one offer (one instance type in one region).
    /// `gpus` is a multiple of it.
    pub block: GpuCount,
    pub duration_hours: u32,
    pub earliest_start: Timestamp,
    pub deliver_by: Option<Timestamp>,
    pub workload: WorkloadClass,
    pub max_price: Option<Price>,
    #[serde(default)]
    pub spot: SpotPolicy,
    /// All nodes identical and in one region: one offer supplies the whole request.
    #[serde(default)]
    pub same_region: bool,
    #[serde(default)]
    pub objective: Objective,
    #[serde(default)]
    pub preference: Preference,
    /// The parts of a split award may run apart, each its hours from its own ready time.
    /// Only a `batch` workload may say so: a training gang or a serving fleet needs its GPUs
    /// at the same time, so by default every part waits (held) until the last is ready.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub apart: bool,
}

impl Request {
    /// An offer's place in the request's order of preference (0 is the first choice), or
    /// `None` when the request does not accept its accelerator or provider.
    pub fn place_of(&self, accelerator: &Accelerator, provider: &ProviderName) -> Option<usize> {
        let accelerator_place = self.accelerators.iter().position(|a| a == accelerator)?;
        let provider_place =
            if self.providers.is_empty() { 0 } else { self.providers.iter().position(|p| p == provider)? };
        Some(accelerator_place + provider_place)
    }
}

/// The unchecked fields of a request, as a client sends them.
#[derive(Debug, Clone, Default)]
pub struct RequestSpec {
    pub id: String,
    pub accelerators: Vec<String>,
    pub providers: Vec<String>,
    pub exclude_providers: Vec<String>,
    pub regions: Vec<String>,
    pub gpus: u32,
    pub block: Option<u32>,
    pub duration_hours: u32,
    pub earliest_start: Timestamp,
    pub deliver_by: Option<Timestamp>,
    pub workload: String,
    pub max_price: Option<f64>,
    /// `never` (the default), `allow` or `only`.
    pub spot: Option<String>,
    pub same_region: bool,
    /// `cost` (the default) or `time`.
    pub objective: Option<String>,
    /// `any` (the default), `fallback` or `premium:P`.
    pub preference: Option<String>,
    /// Parts may run apart (`batch` only).
    pub apart: bool,
}

/// A request field failed its check; `field` names it as the client wrote it.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[error("{field}: {message}")]
pub struct RequestError {
    pub field: &'static str,
    pub message: String,
}

fn field_error(field: &'static str, message: impl Into<String>) -> RequestError {
    RequestError { field, message: message.into() }
}

fn in_field<T, E: fmt::Display>(field: &'static str, result: Result<T, E>) -> Result<T, RequestError> {
    result.map_err(|e| field_error(field, e.to_string()))
}

/// Each item of a list through `check`, bounded in length and without repeats.
fn checked_list<T: PartialEq + fmt::Display>(
    field: &'static str,
    items: &[String],
    check: impl Fn(&str) -> Result<T, String>,
) -> Result<Vec<T>, RequestError> {
    if items.len() > MAX_REQUEST_LIST_LEN {
        return Err(field_error(field, format!("at most {MAX_REQUEST_LIST_LEN} entries")));
    }
    let mut out: Vec<T> = Vec::with_capacity(items.len());
    for item in items {
        let value = in_field(field, check(item))?;
        if out.contains(&value) {
            return Err(field_error(field, format!("{value} is listed twice")));
        }
        out.push(value);
    }
    Ok(out)
}

impl RequestSpec {
    /// Checks every field, and every name against `names` (what the offers use).
    pub fn validate(self, names: &Names) -> Result<Request, RequestError> {
        if self.id.is_empty() || self.id.len() > 128 || self.id.chars().any(char::is_control) {
            return Err(field_error("id", "must be 1 to 128 printable characters"));
        }
        let accelerators = checked_list("accelerators", &self.accelerators, |a| names.accelerator(a))?;
        if accelerators.is_empty() {
            return Err(field_error("accelerators", "at least one accelerator is required"));
        }
        let providers = checked_list("providers", &self.providers, |p| names.provider(p))?;
        let exclude_providers =
            checked_list("exclude_providers", &self.exclude_providers, |p| names.provider(p))?;
        if let Some(both) = providers.iter().find(|p| exclude_providers.contains(p)) {
            return Err(field_error("exclude_providers", format!("{both} is also in providers")));
        }
        let regions = checked_list("regions", &self.regions, |r| names.location(r))?;
        for location in &regions {
            if exclude_providers.contains(&location.provider)
                || (!providers.is_empty() && !providers.contains(&location.provider))
            {
                return Err(field_error(
                    "regions",
                    format!("{location} is in a provider the request does not allow"),
                ));
            }
        }
        let gpus = in_field("gpus", GpuCount::new(self.gpus))?;
        let block = in_field("block", GpuCount::new(self.block.unwrap_or(1)))?;
        if gpus.get() % block.get() != 0 {
            return Err(field_error(
                "block",
                format!("{gpus} GPUs is not a whole number of {block}-GPU blocks"),
            ));
        }
        if self.duration_hours == 0 || self.duration_hours > MAX_DURATION_HOURS {
            return Err(field_error("duration_hours", format!("must be between 1 and {MAX_DURATION_HOURS}")));
        }
        if let Some(deliver_by) = self.deliver_by
            && deliver_by < self.earliest_start
        {
            return Err(field_error("deliver_by", format!("{deliver_by} is before the earliest start")));
        }
        let workload = in_field("workload", WorkloadClass::parse(&self.workload))?;
        let max_price = self.max_price.map(|p| in_field("max_price", Price::new(p))).transpose()?;
        let spot = self.spot.as_deref().map(|s| in_field("spot", SpotPolicy::parse(s))).transpose()?;
        let objective =
            self.objective.as_deref().map(|s| in_field("objective", Objective::parse(s))).transpose()?;
        let preference =
            self.preference.as_deref().map(|s| in_field("preference", Preference::parse(s))).transpose()?;
        if self.apart && workload != WorkloadClass::Batch {
            return Err(field_error(
                "apart",
                format!(
                    "only a batch workload may run its parts apart; a {workload} request's GPUs start \
                     together (a split award's parts are held until the last is ready)"
                ),
            ));
        }
        Ok(Request {
            id: self.id,
            accelerators,
            providers,
            exclude_providers,
            regions,
            gpus,
            block,
            duration_hours: self.duration_hours,
            earliest_start: self.earliest_start,
            deliver_by: self.deliver_by,
            workload,
            max_price,
            spot: spot.unwrap_or_default(),
            same_region: self.same_region,
            objective: objective.unwrap_or_default(),
            preference: preference.unwrap_or_default(),
            apart: self.apart,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_preference_is_what_its_documented_pattern_says() {
        for good in ["any", "fallback", "premium:5", "premium:2.5%", "premium:99.9"] {
            assert!(Preference::parse(good).is_ok(), "{good}");
        }
        // Numbers Rust would parse but the pattern does not allow, and percents out of range.
        for bad in
            ["premium:1e1", "premium:5.", "premium:.5", "premium:+5", "premium:0", "premium:100", "Any"]
        {
            assert!(Preference::parse(bad).is_err(), "{bad}");
        }
    }
}
