//! The options that describe a capacity request, the same for `dibs place` and
//! `dibs request submit`.

use clap::Args;
use dibs_core::names::Names;
use dibs_core::request::{RequestError, RequestSpec};
use dibs_core::types::Timestamp;

#[derive(Args, Clone, Debug)]
pub struct RequestArgs {
    /// Acceptable accelerators, comma-separated, in order of preference (e.g. H100,A100-80GB);
    /// how the order counts is --prefer.
    #[arg(long, value_delimiter = ',', default_value = "H100")]
    pub accelerator: Vec<String>,
    /// GPUs wanted.
    #[arg(long)]
    pub gpus: u32,
    /// GPUs that must sit together: in one node when a node of the accelerator holds them (a
    /// 1-GPU VM cannot hold an 8-GPU block), else a gang of whole nodes of one offer in one
    /// region. Default: 8 when GPUs is a multiple of 8, else 1.
    #[arg(long)]
    pub block: Option<u32>,
    /// Duration in hours.
    #[arg(long)]
    pub hours: u32,
    /// Workload class: training, inference, api or batch (contracts scope clauses by it).
    #[arg(long, default_value = "training")]
    pub workload: String,
    /// Allowed locations, comma-separated: aws/us-east-1, gcp/* or gcp (SkyPilot's infra
    /// spelling), or a bare region that only one provider uses. Default: anywhere.
    #[arg(long, value_name = "LOCATIONS")]
    pub regions: Option<String>,
    /// Acceptable providers, comma-separated, in order of preference. Default: any.
    #[arg(long, value_delimiter = ',')]
    pub providers: Vec<String>,
    /// Providers not to use, comma-separated.
    #[arg(long, value_delimiter = ',')]
    pub exclude_providers: Vec<String>,
    /// How the order of --accelerator and --providers counts: any (the cheapest wins; the order
    /// breaks ties), fallback (the earlier choices first, as far as they go), or premium:P (a
    /// later choice only when at least P% cheaper per GPU-hour for each place further down).
    #[arg(long, default_value = "any", value_name = "RULE")]
    pub prefer: String,
    /// Spot capacity (the provider may reclaim it): never, allow or only.
    #[arg(long, default_value = "never")]
    pub spot: String,
    /// All nodes identical and in one region: one offer supplies the whole request.
    #[arg(long)]
    pub same_region: bool,
    /// A split award's parts may run apart, each its hours from its own ready time (batch
    /// only). Without it the request's GPUs start together: a part ready before the others
    /// is held (billed, when its provider bills from delivery) until the last is ready.
    #[arg(long)]
    pub apart: bool,
    /// What to minimize: cost (effective cost) or time (when all capacity is ready, then cost).
    #[arg(long, default_value = "cost")]
    pub objective: String,
    /// Price ceiling in USD per GPU-hour, all-in.
    #[arg(long)]
    pub max_price: Option<f64>,
    /// All capacity must be ready within this many hours of the request.
    #[arg(long, value_name = "HOURS")]
    pub deliver_within: Option<u32>,
}

impl RequestArgs {
    /// The block the request uses when --block is left out.
    pub fn block(&self) -> u32 {
        self.block.unwrap_or(if self.gpus.is_multiple_of(8) { 8 } else { 1 })
    }

    /// The unchecked request, as of `at`; `names` splits --regions around region names that
    /// hold commas.
    pub fn spec(&self, id: &str, at: Timestamp, names: &Names) -> RequestSpec {
        RequestSpec {
            id: id.to_owned(),
            accelerators: self.accelerator.clone(),
            providers: self.providers.clone(),
            exclude_providers: self.exclude_providers.clone(),
            regions: self.regions.as_deref().map(|r| names.split_locations(r)).unwrap_or_default(),
            gpus: self.gpus,
            block: Some(self.block()),
            duration_hours: self.hours,
            earliest_start: at,
            deliver_by: self.deliver_within.map(|h| at.plus_hours(f64::from(h))),
            workload: self.workload.clone(),
            max_price: self.max_price,
            spot: Some(self.spot.clone()),
            same_region: self.same_region,
            apart: self.apart,
            objective: Some(self.objective.clone()),
            preference: Some(self.prefer.clone()),
        }
    }

    /// The body of `POST /v1/requests`. The server splits the locations (it knows the names)
    /// and reckons --deliver-within from its own clock (a demo clock runs ahead of this one).
    pub fn body(&self) -> serde_json::Value {
        serde_json::json!({
            "accelerators": self.accelerator,
            "gpus": self.gpus,
            "block": self.block(),
            "duration_hours": self.hours,
            "workload": self.workload,
            "regions": self.regions.iter().collect::<Vec<_>>(),
            "providers": self.providers,
            "exclude_providers": self.exclude_providers,
            "preference": self.prefer,
            "spot": self.spot,
            "same_region": self.same_region,
            "apart": self.apart,
            "objective": self.objective,
            "max_price": self.max_price,
            "deliver_within_hours": self.deliver_within,
        })
    }
}

/// A request error as the command line user wrote it: `--flag: message`.
pub fn flag_error(error: RequestError) -> anyhow::Error {
    let flag = match error.field {
        "accelerators" => "accelerator",
        "duration_hours" => "hours",
        "preference" => "prefer",
        "deliver_by" => "deliver-within",
        other => other,
    };
    anyhow::anyhow!("--{}: {}", flag.replace('_', "-"), error.message)
}
