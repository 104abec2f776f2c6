//! Supply: how many nodes of each offer a provider can deliver, and how soon.
//!
//! A price catalog says what an instance type costs, never how many of them a provider
//! will sell or how long they take to come up. dibs does not guess silently: capacity and
//! lead time come from a supply file, a TOML list of rules:
//!
//! ```toml
//! [[supply]]
//! provider = "aws"                # a provider name, or "*"
//! region = "us-east-1"            # the provider's region, or "*"
//! accelerator = "H100"            # or "*"
//! instance_type = "p5.48xlarge"   # optional: any instance type when left out
//! kind = "on-demand"              # optional: "on-demand", "spot" or "reserved"; any when left out
//! nodes = 128                     # nodes the provider can supply from each matching offer
//! lead_time_hours = 48            # hours from reservation until the nodes are ready
//! ```
//!
//! Each offer takes the most specific rule that matches it (the one naming the most of
//! provider, region, accelerator, instance type and kind); between rules equally specific,
//! the later one in the file wins, so a file can end with overrides. An offer no rule
//! matches has no capacity and is left out, and `dibs catalog check` counts it.
//!
//! The bundled supply (`data/bundled_supply.toml`) is made up: plausible figures for a large
//! buyer, written for the demo and the tests. It is what an offer gets when no supply file
//! was given and none lies beside the catalog, and `dibs catalog check` says so.

use std::ops::Range;

use serde::Deserialize;
use toml::Spanned;

use super::PricedOffer;
use crate::contract::ContractError;
use crate::contract::parse::Source;
use crate::types::{Accelerator, InvalidValue, OfferKind, ProviderName, Region};

/// The bundled supply, compiled into the binary.
pub const BUNDLED_SUPPLY_TOML: &str = include_str!("../../data/bundled_supply.toml");
/// The name the bundled supply reports under.
pub const BUNDLED_SUPPLY_NAME: &str = "bundled_supply.toml (made up)";
/// No rule promises more nodes than this from one offer.
pub const MAX_SUPPLY_NODES: u32 = 1_000_000;
/// No lead time longer than a year is believed; larger numbers are typos.
pub const MAX_LEAD_TIME_HOURS: u32 = 24 * 366;
/// A supply file has at most this many rules.
pub const MAX_SUPPLY_RULES: usize = 100_000;

/// One rule: which offers it covers (`None` matches any) and what they get.
#[derive(Debug, Clone, PartialEq)]
pub struct SupplyRule {
    pub provider: Option<ProviderName>,
    pub region: Option<Region>,
    pub accelerator: Option<Accelerator>,
    pub instance_type: Option<String>,
    pub kind: Option<OfferKind>,
    pub nodes: u32,
    pub lead_time_hours: u32,
    /// Where the rule is written: `FILE:LINE`.
    pub origin: String,
}

impl SupplyRule {
    fn matches(&self, offer: &PricedOffer) -> bool {
        self.provider.as_ref().is_none_or(|p| *p == offer.provider)
            && self.region.as_ref().is_none_or(|r| *r == offer.region)
            && self.accelerator.as_ref().is_none_or(|a| *a == offer.accelerator)
            && self.instance_type.as_ref().is_none_or(|t| *t == offer.instance_type)
            && self.kind.is_none_or(|k| k == offer.kind)
    }

    fn specificity(&self) -> usize {
        usize::from(self.provider.is_some())
            + usize::from(self.region.is_some())
            + usize::from(self.accelerator.is_some())
            + usize::from(self.instance_type.is_some())
            + usize::from(self.kind.is_some())
    }
}

/// A parsed supply file.
#[derive(Debug, Clone, PartialEq)]
pub struct Supply {
    /// The file it was read from.
    pub source: String,
    pub rules: Vec<SupplyRule>,
}

impl Supply {
    /// The bundled (made-up) supply.
    pub fn bundled() -> Self {
        // Compiled in and parsed by a unit test: failing here is a programmer error.
        Self::parse(BUNDLED_SUPPLY_NAME, BUNDLED_SUPPLY_TOML).expect("the bundled supply parses")
    }

    /// The rule that gives `offer` its capacity: the most specific match, the later on a tie.
    pub fn rule_for(&self, offer: &PricedOffer) -> Option<&SupplyRule> {
        self.rules
            .iter()
            .enumerate()
            .filter(|(_, rule)| rule.matches(offer))
            .max_by_key(|(index, rule)| (rule.specificity(), *index))
            .map(|(_, rule)| rule)
    }

    /// Parses a supply file; errors name the file, line and column.
    pub fn parse(source_name: &str, text: &str) -> Result<Self, ContractError> {
        let source = Source::new(source_name, text)?;
        let raw: RawSupplyFile = source.deserialize()?;
        if raw.supply.len() > MAX_SUPPLY_RULES {
            return Err(source.error(0..0, format!("more than {MAX_SUPPLY_RULES} supply rules")));
        }
        let mut rules = Vec::with_capacity(raw.supply.len());
        for entry in &raw.supply {
            let span = entry.span();
            let raw = entry.get_ref();
            let wildcard = |value: &Spanned<String>| value.get_ref().trim() == "*";
            let provider = if wildcard(&raw.provider) {
                None
            } else {
                Some(source.value(&raw.provider, |p| ProviderName::new(&p.to_ascii_lowercase()))?)
            };
            let region = if wildcard(&raw.region) {
                None
            } else {
                Some(source.value(&raw.region, |r| Region::new(r))?)
            };
            let accelerator = if wildcard(&raw.accelerator) {
                None
            } else {
                Some(source.value(&raw.accelerator, |a| Accelerator::new(a))?)
            };
            let kind = raw.kind.as_ref().map(|kind| source.value(kind, |k| parse_kind(k))).transpose()?;
            let nodes = bounded(&source, &raw.nodes, "nodes", MAX_SUPPLY_NODES)?;
            let lead_time_hours =
                bounded(&source, &raw.lead_time_hours, "lead_time_hours", MAX_LEAD_TIME_HOURS)?;
            let line = text[..span.start.min(text.len())].matches('\n').count() + 1;
            rules.push(SupplyRule {
                provider,
                region,
                accelerator,
                instance_type: raw.instance_type.as_ref().map(|t| t.get_ref().trim().to_owned()),
                kind,
                nodes,
                lead_time_hours,
                origin: format!("{source_name}:{line}"),
            });
        }
        Ok(Self { source: source_name.to_owned(), rules })
    }
}

fn parse_kind(text: &str) -> Result<OfferKind, InvalidValue> {
    match text {
        "on-demand" => Ok(OfferKind::OnDemand),
        "spot" => Ok(OfferKind::Spot),
        "reserved" => Ok(OfferKind::Reserved),
        _ => Err(InvalidValue(format!("kind {text:?} is not on-demand, spot or reserved"))),
    }
}

fn bounded(source: &Source<'_>, value: &Spanned<i64>, what: &str, max: u32) -> Result<u32, ContractError> {
    let n = *value.get_ref();
    u32::try_from(n).ok().filter(|n| *n <= max).ok_or_else(|| {
        let span: Range<usize> = value.span();
        source.error(span, format!("{what} {n} is out of range; expected 0 to {max}"))
    })
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawSupplyFile {
    #[serde(default)]
    supply: Vec<Spanned<RawRule>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawRule {
    provider: Spanned<String>,
    region: Spanned<String>,
    accelerator: Spanned<String>,
    instance_type: Option<Spanned<String>>,
    kind: Option<Spanned<String>>,
    nodes: Spanned<i64>,
    lead_time_hours: Spanned<i64>,
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::types::{GpuCount, NodePrice};

    fn offer(provider: &str, region: &str, accelerator: &str, kind: OfferKind) -> PricedOffer {
        PricedOffer {
            provider: ProviderName::new(provider).unwrap(),
            region: Region::new(region).unwrap(),
            zone: None,
            instance_type: "p5.48xlarge".into(),
            accelerator: Accelerator::new(accelerator).unwrap(),
            gpus_per_node: GpuCount::new(8).unwrap(),
            kind,
            node_price: NodePrice::new(50.0).unwrap(),
        }
    }

    #[test]
    fn the_most_specific_rule_wins_and_the_later_one_on_a_tie() {
        let supply = Supply::parse(
            "supply.toml",
            r#"
[[supply]]
provider = "*"
region = "*"
accelerator = "*"
nodes = 4
lead_time_hours = 24

[[supply]]
provider = "aws"
region = "*"
accelerator = "H100"
nodes = 16
lead_time_hours = 48

[[supply]]
provider = "*"
region = "us-east-1"
accelerator = "h100"
nodes = 32
lead_time_hours = 72

[[supply]]
provider = "aws"
region = "*"
accelerator = "*"
kind = "spot"
nodes = 2
lead_time_hours = 1
"#,
        )
        .unwrap();
        let rule = |provider, region, kind| supply.rule_for(&offer(provider, region, "H100", kind)).unwrap();
        assert_eq!(rule("aws", "us-west-2", OfferKind::OnDemand).origin, "supply.toml:9");
        // Two fields each: the later rule wins the tie.
        assert_eq!(rule("aws", "us-east-1", OfferKind::OnDemand).origin, "supply.toml:16");
        assert_eq!(rule("aws", "us-east-1", OfferKind::Spot).nodes, 2);
        assert_eq!(rule("lambda", "us-south-1", OfferKind::OnDemand).origin, "supply.toml:2");
    }

    #[test]
    fn errors_name_the_line_and_the_field() {
        let error = Supply::parse(
            "s.toml",
            "[[supply]]\nprovider = \"aws\"\nregion = \"*\"\naccelerator = \"*\"\nnodes = -1\nlead_time_hours = 1\n",
        )
        .unwrap_err();
        assert_eq!(error.to_string(), "s.toml:5:9: nodes -1 is out of range; expected 0 to 1000000");
        let error = Supply::parse(
            "s.toml",
            "[[supply]]\nprovider = \"aws\"\nregion = \"*\"\naccelerator = \"*\"\nnode = 1\nlead_time_hours = 1\n",
        )
        .unwrap_err();
        assert!(error.to_string().starts_with("s.toml:5:1: unknown field `node`"), "{error}");
        let error = Supply::parse(
            "s.toml",
            "[[supply]]\nprovider = \"AWS!\"\nregion = \"*\"\naccelerator = \"*\"\nnodes = 1\nlead_time_hours = 1\n",
        )
        .unwrap_err();
        assert!(error.to_string().starts_with("s.toml:2:12: provider name"), "{error}");
    }

    #[test]
    fn the_bundled_supply_parses() {
        let supply = Supply::bundled();
        assert!(supply.rules.len() > 10);
        assert!(
            supply
                .rules
                .iter()
                .any(|r| r.provider.is_none() && r.region.is_none() && r.accelerator.is_none())
        );
    }
}
