//! The buyer's capacity request.

use serde::{Deserialize, Serialize};

use crate::types::{Accelerator, GpuCount, InvalidValue, Price, Region, Timestamp, WorkloadClass};

/// Requests may not run longer than this (ten years); longer durations are typos.
pub const MAX_DURATION_HOURS: u32 = 24 * 366 * 10;
/// A request may list at most this many acceptable accelerators and regions.
pub const MAX_REQUEST_LIST_LEN: usize = 64;

/// The buyer's need. Built only through [`RequestSpec::validate`], so every
/// `Request` is internally consistent: GPUs are a whole number of blocks,
/// the deadline is not before the earliest start, lists are bounded.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Request {
    pub id: String,
    /// Acceptable accelerators, in order of preference (never empty).
    pub accelerators: Vec<Accelerator>,
    pub gpus: GpuCount,
    /// GPUs that must come together from one offer; `gpus` is a multiple of it.
    pub min_block: GpuCount,
    pub duration_hours: u32,
    pub earliest_start: Timestamp,
    pub deliver_by: Option<Timestamp>,
    /// Allowed regions; empty means any.
    pub regions: Vec<Region>,
    pub workload: WorkloadClass,
    pub max_price: Option<Price>,
    /// Whether spot capacity (which the provider may reclaim) is acceptable.
    pub allow_spot: bool,
}

/// The unchecked fields of a request, as a client sends them.
#[derive(Debug, Clone)]
pub struct RequestSpec {
    pub id: String,
    pub accelerators: Vec<String>,
    pub gpus: u32,
    pub min_block: Option<u32>,
    pub duration_hours: u32,
    pub earliest_start: Timestamp,
    pub deliver_by: Option<Timestamp>,
    pub regions: Vec<String>,
    pub workload: String,
    pub max_price: Option<f64>,
    pub allow_spot: bool,
}

/// A request field failed its check; `field` names it.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[error("{field}: {message}")]
pub struct RequestError {
    pub field: &'static str,
    pub message: String,
}

fn field_error(field: &'static str, message: impl Into<String>) -> RequestError {
    RequestError { field, message: message.into() }
}

fn in_field<T>(field: &'static str, result: Result<T, InvalidValue>) -> Result<T, RequestError> {
    result.map_err(|e| field_error(field, e.0))
}

impl RequestSpec {
    pub fn validate(self) -> Result<Request, RequestError> {
        if self.id.is_empty() || self.id.len() > 128 || self.id.chars().any(char::is_control) {
            return Err(field_error("id", "must be 1 to 128 printable characters"));
        }
        if self.accelerators.is_empty() {
            return Err(field_error("accelerator", "at least one accelerator is required"));
        }
        if self.accelerators.len() > MAX_REQUEST_LIST_LEN || self.regions.len() > MAX_REQUEST_LIST_LEN {
            return Err(field_error("regions", format!("at most {MAX_REQUEST_LIST_LEN} entries")));
        }
        let accelerators = self
            .accelerators
            .iter()
            .map(|a| in_field("accelerator", Accelerator::new(a)))
            .collect::<Result<Vec<_>, _>>()?;
        let regions = self
            .regions
            .iter()
            .map(|r| in_field("regions", Region::new(r)))
            .collect::<Result<Vec<_>, _>>()?;
        let gpus = in_field("gpus", GpuCount::new(self.gpus))?;
        let min_block = in_field("min_block", GpuCount::new(self.min_block.unwrap_or(1)))?;
        if gpus.get() % min_block.get() != 0 {
            return Err(field_error(
                "min_block",
                format!("{} GPUs is not a whole number of {}-GPU blocks", gpus, min_block),
            ));
        }
        if self.duration_hours == 0 || self.duration_hours > MAX_DURATION_HOURS {
            return Err(field_error("hours", format!("must be between 1 and {MAX_DURATION_HOURS}")));
        }
        if let Some(deliver_by) = self.deliver_by
            && deliver_by < self.earliest_start
        {
            return Err(field_error("deliver_by", format!("{deliver_by} is before the earliest start")));
        }
        let workload = in_field("workload", WorkloadClass::parse(&self.workload))?;
        let max_price = self.max_price.map(|p| in_field("max_price", Price::new(p))).transpose()?;
        Ok(Request {
            id: self.id,
            accelerators,
            gpus,
            min_block,
            duration_hours: self.duration_hours,
            earliest_start: self.earliest_start,
            deliver_by: self.deliver_by,
            regions,
            workload,
            max_price,
            allow_spot: self.allow_spot,
        })
    }
}
