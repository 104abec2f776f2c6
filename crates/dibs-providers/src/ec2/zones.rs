//! Zones that just answered "no capacity", remembered for a while.
//!
//! A zone that answered `InsufficientInstanceCapacity` for an instance type will most
//! likely answer it again a minute later; trying it first on the next launch wastes a call
//! and the launch's time (SkyPilot's issue 10021 is this mistake). Capacity comes back,
//! though, so the memory fades: Karpenter forgets an unavailable offering after three
//! minutes, and dibs does the same. The clock is a parameter, so tests need not wait.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

/// How long a zone that answered a capacity error is skipped for its instance type.
pub const ZONE_MEMORY: Duration = Duration::from_secs(3 * 60);
/// Failed (instance type, zone) pairs remembered at most; the oldest is forgotten first.
pub const MAX_REMEMBERED_ZONES: usize = 1024;

/// A zone skipped for an instance type, and why.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FailedZone {
    /// The error code the zone answered.
    pub code: String,
    pub failed_at: Instant,
}

/// Failed zones by (instance type, zone).
#[derive(Debug, Clone, Default)]
pub struct ZoneMemory {
    failed: BTreeMap<(String, String), FailedZone>,
}

impl ZoneMemory {
    pub fn new() -> Self {
        Self::default()
    }

    /// Remembers that `zone` answered `code` for `instance_type` at `now`.
    pub fn remember(&mut self, instance_type: &str, zone: &str, code: &str, now: Instant) {
        self.forget_expired(now);
        if self.failed.len() >= MAX_REMEMBERED_ZONES {
            let oldest =
                self.failed.iter().min_by_key(|(_, failed)| failed.failed_at).map(|(key, _)| key.clone());
            if let Some(oldest) = oldest {
                self.failed.remove(&oldest);
            }
        }
        let failed = FailedZone { code: code.to_owned(), failed_at: now };
        self.failed.insert((instance_type.to_owned(), zone.to_owned()), failed);
    }

    /// The failure that makes `zone` skipped for `instance_type` at `now`, if any.
    pub fn failed(&self, instance_type: &str, zone: &str, now: Instant) -> Option<&FailedZone> {
        self.failed
            .get(&(instance_type.to_owned(), zone.to_owned()))
            .filter(|failed| now.saturating_duration_since(failed.failed_at) < ZONE_MEMORY)
    }

    fn forget_expired(&mut self, now: Instant) {
        self.failed.retain(|_, failed| now.saturating_duration_since(failed.failed_at) < ZONE_MEMORY);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_failed_zone_is_skipped_for_its_instance_type_until_the_memory_fades() {
        let start = Instant::now();
        let mut memory = ZoneMemory::new();
        memory.remember("p5.48xlarge", "us-east-1a", "InsufficientInstanceCapacity", start);
        let just_before = start + ZONE_MEMORY - Duration::from_secs(1);
        assert_eq!(
            memory.failed("p5.48xlarge", "us-east-1a", just_before).map(|f| f.code.as_str()),
            Some("InsufficientInstanceCapacity")
        );
        assert!(memory.failed("p5.48xlarge", "us-east-1b", start).is_none(), "another zone");
        assert!(memory.failed("p4d.24xlarge", "us-east-1a", start).is_none(), "another type");
        assert!(memory.failed("p5.48xlarge", "us-east-1a", start + ZONE_MEMORY).is_none());
    }

    #[test]
    fn the_memory_is_bounded() {
        let start = Instant::now();
        let mut memory = ZoneMemory::new();
        for i in 0..=MAX_REMEMBERED_ZONES {
            memory.remember(
                "p5.48xlarge",
                &format!("zone-{i}"),
                "Unsupported",
                start + Duration::from_millis(i as u64),
            );
        }
        assert_eq!(memory.failed.len(), MAX_REMEMBERED_ZONES);
        assert!(memory.failed("p5.48xlarge", "zone-0", start).is_none(), "the oldest was forgotten");
    }
}
