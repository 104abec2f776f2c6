//! The service's clock: the wall clock, or a demo clock that runs faster.
//!
//! `dibs serve --time-speed N` makes the service's time run N times faster than the wall
//! clock, so a newcomer watches a request on the embedded default's simulated providers go
//! from first refusal to active in a minute or two rather than in 4 to 168 real hours.
//! Everything that waits is measured in the service's time: the engine's timers (holder
//! windows, quote deadlines, delivery due, release), the simulated providers' answer delays
//! and lead times.
//!
//! Decisions and their cost:
//! * The ledger records the instant of every input, so a replay feeds each input at its
//!   recorded instant and needs no clock: the speed cannot change a replayed decision. The
//!   speed is still recorded in the start's `configured` entry (`time_speed`) so a reader of
//!   the ledger knows its instants ran ahead of the wall clock.
//! * Time never goes backwards across a restart. A demo run leaves instants in the ledger
//!   that are ahead of the wall clock; the next start resumes from the ledger's last instant
//!   when it is later than the wall clock, whatever the new speed. While the service is
//!   stopped its time stands still: timers due "during" the stop fire at the restart, as they
//!   would at real time.
//! * The clock is monotonic within a run (it counts from `std::time::Instant`), so a wall
//!   clock stepped by NTP does not move a demo clock. At real time, with a ledger that is not
//!   ahead, the service keeps reading the wall clock itself, as it always has.
//! * Only in-process providers follow the speed. Providers reached over HTTP answer in real
//!   time and their deadlines are real, so `dibs serve` refuses `--time-speed` with
//!   `--provider`.

use std::time::Instant;

use dibs_core::types::Timestamp;

/// The fastest a demo clock may run: one real second is then at most a virtual day.
pub const MAX_TIME_SPEED: f64 = 86_400.0;

/// How the service's clock runs, for the start banner and the dashboard.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct ClockInfo {
    /// How many times faster than the wall clock.
    pub speed: f64,
    /// The instant the clock started from.
    pub started_at: Timestamp,
    /// How far ahead of the wall clock it started (a ledger left by a faster run), in seconds.
    pub ahead_seconds: i64,
}

/// A `--time-speed` that is not from 1 to [`MAX_TIME_SPEED`].
#[derive(Debug, Clone, Copy, PartialEq, thiserror::Error)]
#[error("{0} must be from 1 (real time) to {MAX_TIME_SPEED}")]
pub struct SpeedOutOfRange(pub f64);

/// Checks a `--time-speed`: at least 1 (real time), at most [`MAX_TIME_SPEED`].
pub fn check_speed(speed: f64) -> Result<f64, SpeedOutOfRange> {
    if speed.is_finite() && (1.0..=MAX_TIME_SPEED).contains(&speed) {
        Ok(speed)
    } else {
        Err(SpeedOutOfRange(speed))
    }
}

/// Where the broker's clock comes from: the wall clock, or a test's.
pub type Clock = Box<dyn FnMut() -> Timestamp + Send>;

/// The wall clock as a [`Clock`].
pub fn wall_clock() -> Clock {
    Box::new(wall_now)
}

/// The wall clock's instant in whole seconds since the Unix epoch (0 for a clock set before
/// it). Every reading of the wall clock outside `dibs-core` comes through here, so the shells
/// agree on what "now" means.
pub fn unix_now() -> i64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_secs() as i64)
}

/// The wall clock's instant, in whole seconds.
pub fn wall_now() -> Timestamp {
    Timestamp::from_unix(unix_now())
}

/// The clock a service runs on: `speed` times the wall clock, starting at the later of now
/// and `resume_from` (the ledger's last instant).
pub fn service_clock(resume_from: Option<Timestamp>, speed: f64) -> (Clock, ClockInfo) {
    let wall = wall_now();
    let start = resume_from.map_or(wall, |last| last.max(wall));
    let info = ClockInfo { speed, started_at: start, ahead_seconds: start.unix() - wall.unix() };
    if speed == 1.0 && start == wall {
        return (wall_clock(), info);
    }
    let origin = Instant::now();
    let clock: Clock =
        Box::new(move || start.plus_seconds((origin.elapsed().as_secs_f64() * speed).floor() as i64));
    (clock, info)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_demo_clock_runs_faster_and_resumes_from_a_ledger_ahead_of_the_wall_clock() {
        let ahead = wall_now().plus_hours(100.0);
        let (mut clock, info) = service_clock(Some(ahead), 3600.0);
        assert_eq!(info.started_at, ahead);
        assert!(info.ahead_seconds >= 99 * 3600, "{info:?}");
        let first = clock();
        std::thread::sleep(std::time::Duration::from_millis(50));
        let later = clock();
        // 50 ms at 3600x is 180 virtual seconds; the sleep may run long, never short.
        assert!(later.unix() - first.unix() >= 170, "{first} -> {later}");
        assert!(first >= ahead, "never before the ledger's last instant");
    }

    #[test]
    fn at_real_time_with_a_ledger_behind_it_the_service_reads_the_wall_clock() {
        let (mut clock, info) = service_clock(Some(Timestamp::from_unix(0)), 1.0);
        assert_eq!(info.ahead_seconds, 0);
        assert!((clock().unix() - wall_now().unix()).abs() <= 1);
    }

    #[test]
    fn speeds_outside_the_range_are_refused() {
        assert_eq!(check_speed(3600.0), Ok(3600.0));
        for bad in [0.5, 0.0, -1.0, f64::NAN, f64::INFINITY, MAX_TIME_SPEED * 2.0] {
            assert!(check_speed(bad).is_err(), "{bad}");
        }
    }
}
