//! What exists: the providers, their regions and the accelerators of a set of offers.
//!
//! Names a user types (a request's accelerators, providers and regions; a contract's
//! holder) are checked against this before anything is decided, so a typo is an error that
//! lists what would have been accepted, never a request that ends "unfilled: no offer
//! passed the filters". Region names are the providers' own and some are shared
//! (`us-east-1` is aws's and lambda's; `us-central1` gcp's and nebius's): a bare region
//! resolves only when exactly one provider uses it.

use std::collections::{BTreeMap, BTreeSet};

use crate::types::{Accelerator, Location, Offer, ProviderName, Region};

/// An error message lists at most this many known names.
const MAX_NAMES_LISTED: usize = 24;

/// The names a set of offers uses.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Names {
    providers: BTreeSet<ProviderName>,
    /// Each region name, and the providers that use it.
    regions: BTreeMap<Region, BTreeSet<ProviderName>>,
    accelerators: BTreeSet<Accelerator>,
}

impl Names {
    pub fn from_offers<'a>(offers: impl IntoIterator<Item = &'a Offer>) -> Self {
        let mut names = Self::default();
        for offer in offers {
            names.providers.insert(offer.provider.clone());
            names.regions.entry(offer.region.clone()).or_default().insert(offer.provider.clone());
            names.accelerators.insert(offer.accelerator.clone());
        }
        names
    }

    pub fn providers(&self) -> impl Iterator<Item = &ProviderName> {
        self.providers.iter()
    }

    pub fn accelerators(&self) -> impl Iterator<Item = &Accelerator> {
        self.accelerators.iter()
    }

    /// Every region name some provider uses.
    pub fn regions(&self) -> impl Iterator<Item = &Region> {
        self.regions.keys()
    }

    /// Every location a request may name, qualified: `provider/region` for each region a
    /// provider has offers in, and `provider/*` for all of a provider's.
    pub fn locations(&self) -> Vec<String> {
        let mut locations: Vec<String> = self.providers.iter().map(|p| format!("{p}/*")).collect();
        for (region, providers) in &self.regions {
            locations.extend(providers.iter().map(|p| format!("{p}/{region}")));
        }
        locations.sort();
        locations
    }

    pub fn has_provider(&self, provider: &ProviderName) -> bool {
        self.providers.contains(provider)
    }

    pub fn has_accelerator(&self, accelerator: &Accelerator) -> bool {
        self.accelerators.contains(accelerator)
    }

    /// Whether `provider` has offers in `region`.
    pub fn has_location(&self, provider: &ProviderName, region: &Region) -> bool {
        self.regions.get(region).is_some_and(|providers| providers.contains(provider))
    }

    /// A provider name that offers exist for.
    pub fn provider(&self, text: &str) -> Result<ProviderName, String> {
        let provider = ProviderName::new(&text.to_ascii_lowercase()).map_err(|e| e.0)?;
        if self.providers.contains(&provider) {
            Ok(provider)
        } else {
            Err(format!(
                "unknown provider {:?}; known: {}",
                provider.as_str(),
                listing(self.providers.iter())
            ))
        }
    }

    /// An accelerator that offers exist for, in its canonical spelling.
    pub fn accelerator(&self, text: &str) -> Result<Accelerator, String> {
        let accelerator = Accelerator::new(text).map_err(|e| e.0)?;
        if self.accelerators.contains(&accelerator) {
            Ok(accelerator)
        } else {
            Err(format!(
                "unknown accelerator {:?}; known: {}",
                accelerator.as_str(),
                listing(self.accelerators.iter())
            ))
        }
    }

    /// A location: `aws/us-east-1`, `gcp/*`, `gcp`, or a bare region that exactly one
    /// provider uses. Every name must exist.
    pub fn location(&self, text: &str) -> Result<Location, String> {
        let text = text.trim();
        if text.contains('/') || self.providers.iter().any(|p| p.as_str().eq_ignore_ascii_case(text)) {
            let location = Location::parse_qualified(text).map_err(|e| e.0)?;
            if !self.providers.contains(&location.provider) {
                return Err(format!(
                    "{text:?}: unknown provider {:?}; known: {}",
                    location.provider.as_str(),
                    listing(self.providers.iter())
                ));
            }
            if let Some(region) = &location.region
                && !self.has_location(&location.provider, region)
            {
                let known = self
                    .regions
                    .iter()
                    .filter(|(_, providers)| providers.contains(&location.provider))
                    .map(|(region, _)| region);
                return Err(format!(
                    "{text:?}: {} has no offers in region {:?}; its regions: {}",
                    location.provider,
                    region.as_str(),
                    listing(known)
                ));
            }
            return Ok(location);
        }
        let region = Region::new(text).map_err(|e| e.0)?;
        match self.regions.get(&region) {
            None => Err(format!(
                "unknown region {text:?}; write provider/region (for example aws/us-east-1 or gcp/*)"
            )),
            Some(providers) if providers.len() == 1 => {
                let provider = providers.iter().next().expect("one provider").clone();
                Ok(Location { provider, region: Some(region) })
            }
            Some(providers) => {
                let candidates: Vec<String> = providers.iter().map(|p| format!("{p}/{region}")).collect();
                Err(format!("region {text:?} is ambiguous: write one of {}", candidates.join(", ")))
            }
        }
    }

    /// Splits a comma-separated list of locations. Some providers' region names contain
    /// commas (vast's `Florida, US, NA`), so at each position the longest known location
    /// that the text starts with, followed by a comma or the end, is taken whole; anything
    /// else runs to the next comma.
    pub fn split_locations(&self, text: &str) -> Vec<String> {
        let mut known: Vec<String> = Vec::new();
        for (region, providers) in &self.regions {
            if region.as_str().contains(',') {
                known.push(region.to_string());
                known.extend(providers.iter().map(|p| format!("{p}/{region}")));
            }
        }
        let mut out = Vec::new();
        let mut rest = text;
        while !rest.trim().is_empty() {
            let trimmed = rest.trim_start();
            let whole = known
                .iter()
                .filter(|name| {
                    trimmed.starts_with(name.as_str())
                        && matches!(trimmed[name.len()..].trim_start().chars().next(), None | Some(','))
                })
                .max_by_key(|name| name.len());
            let (item, after) = match whole {
                Some(name) => (&trimmed[..name.len()], &trimmed[name.len()..]),
                None => match trimmed.find(',') {
                    Some(comma) => (&trimmed[..comma], &trimmed[comma..]),
                    None => (trimmed, ""),
                },
            };
            if !item.trim().is_empty() {
                out.push(item.trim().to_owned());
            }
            rest = after.trim_start().strip_prefix(',').unwrap_or(after);
        }
        out
    }
}

/// The most GPUs one node of a quoted offer may have: a rack sold whole (an NVL72) is the
/// largest unit any provider sells; the shared catalogs top out at 16.
pub const MAX_GPUS_PER_NODE: u32 = 72;
/// The most nodes one quoted offer may make available.
pub const MAX_NODES_PER_OFFER: u32 = 10_000;
/// The longest lead time a quoted offer may state: 90 days.
pub const MAX_LEAD_TIME_HOURS: u32 = 90 * 24;

/// What is wrong with a quoted offer: the field, and why.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OfferProblem {
    pub field: &'static str,
    pub message: String,
}

impl Names {
    /// Checks an offer `provider` quoted: its own, for something that exists (an accelerator
    /// and one of the provider's regions that the published offers use), at a positive
    /// price, in whole nodes of at least one GPU, with bounded capacity and lead time.
    pub fn check_quoted(&self, provider: &ProviderName, offer: &Offer) -> Result<(), OfferProblem> {
        let problem = |field, message: String| Err(OfferProblem { field, message });
        if &offer.provider != provider {
            return problem(
                "provider",
                format!("offer {:?} is {}'s, not {provider}'s", offer.id, offer.provider),
            );
        }
        // Offer ids are the provider's own namespace: no quote under a competitor's id.
        if !offer.id.strip_prefix(provider.as_str()).is_some_and(|rest| rest.starts_with('/')) {
            return problem(
                "id",
                format!("offer id {:?} is not {provider}'s: it must start with \"{provider}/\"", offer.id),
            );
        }
        if !self.has_accelerator(&offer.accelerator) {
            let known = listing(self.accelerators.iter());
            return problem(
                "accelerator",
                format!("unknown accelerator {:?}; known: {known}", offer.accelerator.as_str()),
            );
        }
        if !self.has_location(provider, &offer.region) {
            let known = self.regions.iter().filter(|(_, p)| p.contains(provider)).map(|(r, _)| r);
            return problem(
                "region",
                format!(
                    "{provider} has no region {:?}; its regions: {}",
                    offer.region.as_str(),
                    listing(known)
                ),
            );
        }
        if offer.node_price.get() <= 0.0 {
            return problem("node_price", format!("price {} must be above 0", offer.node_price.get()));
        }
        if offer.gpus_per_node.get() > MAX_GPUS_PER_NODE {
            let gpus = offer.gpus_per_node.get();
            return problem("gpus_per_node", format!("{gpus} GPUs per node; at most {MAX_GPUS_PER_NODE}"));
        }
        if offer.nodes_available > MAX_NODES_PER_OFFER {
            let nodes = offer.nodes_available;
            return problem(
                "nodes_available",
                format!("{nodes} nodes; at most {MAX_NODES_PER_OFFER} per offer"),
            );
        }
        if offer.lead_time_hours > MAX_LEAD_TIME_HOURS {
            let hours = offer.lead_time_hours;
            return problem("lead_time_hours", format!("{hours} hours; at most {MAX_LEAD_TIME_HOURS}"));
        }
        Ok(())
    }
}

/// `a, b, c` or `a, b, ... (N in all)`.
fn listing<T: std::fmt::Display>(items: impl Iterator<Item = T>) -> String {
    let items: Vec<String> = items.map(|item| item.to_string()).collect();
    if items.len() <= MAX_NAMES_LISTED {
        items.join(", ")
    } else {
        format!("{}, ... ({} in all)", items[..MAX_NAMES_LISTED].join(", "), items.len())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::types::{GpuCount, NodePrice, OfferKind};

    fn offer(provider: &str, region: &str, accelerator: &str) -> Offer {
        Offer {
            id: format!("{provider}/{region}/x/on-demand"),
            provider: ProviderName::new(provider).unwrap(),
            region: Region::new(region).unwrap(),
            zone: None,
            instance_type: "x".into(),
            accelerator: Accelerator::new(accelerator).unwrap(),
            gpus_per_node: GpuCount::new(8).unwrap(),
            nodes_available: 1,
            node_price: NodePrice::new(10.0).unwrap(),
            lead_time_hours: 1,
            kind: OfferKind::OnDemand,
            valid_until: None,
            bills_from_delivery: true,
            price_source: None,
        }
    }

    fn names() -> Names {
        let offers = [
            offer("aws", "us-east-1", "H100"),
            offer("lambda", "us-east-1", "H100"),
            offer("lambda", "us-south-1", "A100"),
            offer("vast", "Florida, US, NA", "H100"),
            offer("vast", ", CA, NA", "H100"),
        ];
        Names::from_offers(&offers)
    }

    #[test]
    fn bare_regions_resolve_only_when_one_provider_uses_them() {
        let names = names();
        assert_eq!(names.location("us-south-1").unwrap().to_string(), "lambda/us-south-1");
        assert_eq!(
            names.location("us-east-1").unwrap_err(),
            "region \"us-east-1\" is ambiguous: write one of aws/us-east-1, lambda/us-east-1"
        );
        assert_eq!(names.location("aws/us-east-1").unwrap().to_string(), "aws/us-east-1");
        assert_eq!(names.location("AWS").unwrap().to_string(), "aws/*");
        assert_eq!(names.location("lambda/*").unwrap().to_string(), "lambda/*");
        assert_eq!(
            names.location("aws/us-south-1").unwrap_err(),
            "\"aws/us-south-1\": aws has no offers in region \"us-south-1\"; its regions: us-east-1"
        );
        assert!(names.location("mars-1").unwrap_err().starts_with("unknown region \"mars-1\""));
        assert!(names.location("azrue/eastus").unwrap_err().contains("unknown provider \"azrue\""));
        assert!(names.location("aws/us-east-1/use1-az1").unwrap_err().contains("picks the zone"));
    }

    #[test]
    fn location_lists_keep_region_names_that_contain_commas() {
        let names = names();
        assert_eq!(
            names.split_locations("vast/Florida, US, NA,aws/us-east-1, lambda/*"),
            ["vast/Florida, US, NA", "aws/us-east-1", "lambda/*"]
        );
        assert_eq!(names.split_locations("Florida, US, NA"), ["Florida, US, NA"]);
        assert_eq!(names.split_locations(", CA, NA,us-south-1"), [", CA, NA", "us-south-1"]);
        assert_eq!(names.split_locations("a,,b, "), ["a", "b"]);
    }

    #[test]
    fn unknown_names_list_the_known_ones() {
        let names = names();
        assert_eq!(names.accelerator("h100").unwrap().as_str(), "H100");
        assert_eq!(names.accelerator("H101").unwrap_err(), "unknown accelerator \"H101\"; known: A100, H100");
        assert_eq!(
            names.provider("azrue").unwrap_err(),
            "unknown provider \"azrue\"; known: aws, lambda, vast"
        );
    }
}
