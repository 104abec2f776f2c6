//! Zones that just answered "no capacity", remembered for a while.
//!
//! A zone that answered `InsufficientInstanceCapacity` for an instance type (on demand,
//! or spot: the two are separate pools) will most
//! likely answer it again a minute later; trying it first on the next launch wastes a call
//! and the launch's time (SkyPilot's issue 10021 is this mistake). Capacity comes back,
//! though, so the memory fades: Karpenter forgets an unavailable offering after three
//! minutes, and dibs does the same. The clock is a parameter, so tests need not wait.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

/// How long a pool that answered a capacity error is skipped.
pub const ZONE_MEMORY: Duration = Duration::from_secs(3 * 60);
/// Failed (instance type, zone) pairs remembered at most; the oldest is forgotten first.
pub const MAX_REMEMBERED_ZONES: usize = 1024;

/// A capacity pool: EC2 runs out of capacity per instance type, market and zone (a zone
/// out of on-demand p5s may still have spot ones), so that is what is remembered.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Pool<'a> {
    pub instance_type: &'a str,
    pub spot: bool,
    pub zone: &'a str,
}

impl Pool<'_> {
    fn key(&self) -> (String, bool, String) {
        (self.instance_type.to_owned(), self.spot, self.zone.to_owned())
    }
}

/// A zone skipped for an instance type, and why.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FailedZone {
    /// The error code the zone answered.
    pub code: String,
    pub failed_at: Instant,
}

/// Failed pools by (instance type, spot, zone).
#[derive(Debug, Clone, Default)]
pub struct ZoneMemory {
    failed: BTreeMap<(String, bool, String), FailedZone>,
}

impl ZoneMemory {
    pub fn new() -> Self {
        Self::default()
    }

    /// Remembers that `pool` answered `code` at `now`.
    pub fn remember(&mut self, pool: Pool<'_>, code: &str, now: Instant) {
        self.forget_expired(now);
        if self.failed.len() >= MAX_REMEMBERED_ZONES {
            let oldest =
                self.failed.iter().min_by_key(|(_, failed)| failed.failed_at).map(|(key, _)| key.clone());
            if let Some(oldest) = oldest {
                self.failed.remove(&oldest);
            }
        }
        let failed = FailedZone { code: code.to_owned(), failed_at: now };
        self.failed.insert(pool.key(), failed);
    }

    /// The failure that makes `pool` skipped at `now`, if any.
    pub fn failed(&self, pool: Pool<'_>, now: Instant) -> Option<&FailedZone> {
        self.failed
            .get(&pool.key())
            .filter(|failed| now.saturating_duration_since(failed.failed_at) < ZONE_MEMORY)
    }

    fn forget_expired(&mut self, now: Instant) {
        self.failed.retain(|_, failed| now.saturating_duration_since(failed.failed_at) < ZONE_MEMORY);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pool(instance_type: &'static str, spot: bool, zone: &'static str) -> Pool<'static> {
        Pool { instance_type, spot, zone }
    }

    #[test]
    fn a_failed_pool_is_skipped_until_the_memory_fades() {
        let start = Instant::now();
        let mut memory = ZoneMemory::new();
        memory.remember(pool("p5.48xlarge", false, "us-east-1a"), "InsufficientInstanceCapacity", start);
        let just_before = start + ZONE_MEMORY - Duration::from_secs(1);
        assert_eq!(
            memory.failed(pool("p5.48xlarge", false, "us-east-1a"), just_before).map(|f| f.code.as_str()),
            Some("InsufficientInstanceCapacity")
        );
        assert!(memory.failed(pool("p5.48xlarge", false, "us-east-1b"), start).is_none(), "another zone");
        assert!(memory.failed(pool("p4d.24xlarge", false, "us-east-1a"), start).is_none(), "another type");
        assert!(memory.failed(pool("p5.48xlarge", true, "us-east-1a"), start).is_none(), "spot");
        assert!(memory.failed(pool("p5.48xlarge", false, "us-east-1a"), start + ZONE_MEMORY).is_none());
    }

    #[test]
    fn the_memory_is_bounded() {
        let start = Instant::now();
        let mut memory = ZoneMemory::new();
        for i in 0..=MAX_REMEMBERED_ZONES {
            memory.remember(
                Pool { instance_type: "p5.48xlarge", spot: false, zone: &format!("zone-{i}") },
                "Unsupported",
                start + Duration::from_millis(i as u64),
            );
        }
        assert_eq!(memory.failed.len(), MAX_REMEMBERED_ZONES);
        let oldest = Pool { instance_type: "p5.48xlarge", spot: false, zone: "zone-0" };
        assert!(memory.failed(oldest, start).is_none(), "the oldest was forgotten");
    }
}
