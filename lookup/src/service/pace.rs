//! How many jobs to hold: the bandwidth-delay product of jobs.
//!
//! A lookup that holds only as many jobs as it has slots runs at (slots ÷ round trip) once
//! the web server is far away: every refill waits a round trip. [`Pace`] measures the rate
//! at which the lookup's nodes finish jobs and the round trip of a lease request, and
//! [`Pace::target`] holds enough to cover the slots plus what the nodes finish while two
//! lease requests travel, never more than the nodes can finish within half a lease.

use std::time::{Duration, Instant};

/// Buckets of the finishing-rate window.
const BUCKETS: usize = 10;
/// Width of one bucket (the window is `BUCKETS` of them: 5 s).
const BUCKET: Duration = Duration::from_millis(500);
/// Largest number of jobs held, whatever the measures say.
pub(super) const MAX_HELD: u64 = 20_000;
/// Scheduling slack added to the round trip: the time between a job's answer and the lease
/// request it prompts, and the web server's own time per request.
const SLACK: Duration = Duration::from_millis(250);

#[derive(Debug)]
pub(super) struct Pace {
    buckets: [u64; BUCKETS],
    /// Start of the newest bucket.
    newest: Instant,
    /// Index of the newest bucket.
    idx: usize,
    /// Smoothed round trip of lease requests.
    rtt: Option<Duration>,
    /// Smoothed time a lane is busy with one job (offer to answer).
    service: Option<Duration>,
    /// When the nodes started finishing jobs after the window was empty: a rate measured
    /// over less than the whole window divides by the time it covers, so that the lookup
    /// leases ahead within a few round trips of a start instead of after the window.
    active_since: Option<Instant>,
}

/// Shortest span a rate is measured over.
const MIN_SPAN: Duration = Duration::from_millis(250);

impl Pace {
    pub(super) fn new(now: Instant) -> Pace {
        Pace {
            buckets: [0; BUCKETS],
            newest: now,
            idx: 0,
            rtt: None,
            service: None,
            active_since: None,
        }
    }

    fn advance(&mut self, now: Instant) {
        let mut steps = 0;
        while now.saturating_duration_since(self.newest) >= BUCKET && steps <= BUCKETS {
            self.newest += BUCKET;
            self.idx = (self.idx + 1) % BUCKETS;
            self.buckets[self.idx] = 0;
            steps += 1;
        }
        if now.saturating_duration_since(self.newest) >= BUCKET {
            // Idle for longer than the window.
            self.newest = now;
        }
    }

    /// A job was finished (answered) by a node, `took` after its lane offered it.
    pub(super) fn finished(&mut self, now: Instant, took: Duration) {
        self.service = Some(match self.service {
            None => took,
            Some(old) => (old * 7 + took) / 8,
        });
        self.advance(now);
        if self.buckets.iter().all(|&b| b == 0) {
            self.active_since = Some(now);
        }
        self.buckets[self.idx] += 1;
    }

    /// A lease request took `rtt` from sending to its response.
    pub(super) fn round_trip(&mut self, rtt: Duration) {
        self.rtt = Some(match self.rtt {
            None => rtt,
            // 1/4 of the new sample, as TCP's SRTT weighs it (1/8) but quicker to follow a
            // path that changed.
            Some(old) => (old * 3 + rtt) / 4,
        });
    }

    /// The smoothed round trip of a lease request (zero before the first).
    pub(super) fn rtt(&self) -> Duration {
        self.rtt.unwrap_or(Duration::ZERO)
    }

    /// Jobs finished per second over the last window (the bucket being filled counts for
    /// the time it has run).
    pub(super) fn rate(&mut self, now: Instant) -> f64 {
        self.advance(now);
        let total: u64 = self.buckets.iter().sum();
        if total == 0 {
            self.active_since = None;
            return 0.0;
        }
        let window = BUCKET * (BUCKETS as u32 - 1) + now.saturating_duration_since(self.newest);
        let active = self
            .active_since
            .map_or(window, |t| now.saturating_duration_since(t));
        total as f64 / active.min(window).max(MIN_SPAN).as_secs_f64()
    }

    /// What `slots` lanes can finish per second at the measured time per job: the rate the
    /// nodes would reach if never short of work (zero before the first job is done).
    pub(super) fn capacity(&self, slots: u64) -> f64 {
        match self.service {
            Some(s) => slots as f64 / s.as_secs_f64().max(1e-4),
            None => 0.0,
        }
    }

    /// Jobs to hold: `base` (the slots times the prefetch factor) plus what the nodes finish
    /// in two round trips and the slack, capped at what they finish in half a `lease` (a job
    /// leased must be answered before its lease would lapse without renewal) and
    /// [`MAX_HELD`], never below `base`. "What the nodes finish" is the larger of the rate
    /// seen and the [`Pace::capacity`] of the `slots`: during a start the rate seen is held
    /// back by the very shortage the lease is to end.
    pub(super) fn target(&mut self, base: u64, slots: u64, lease: Duration, now: Instant) -> u64 {
        let seen = self.rate(now);
        let rate = if seen > 0.0 {
            seen.max(self.capacity(slots))
        } else {
            0.0
        };
        let ahead = rate * (self.rtt() * 2 + SLACK).as_secs_f64();
        let cap = rate * lease.as_secs_f64() / 2.0;
        let extra = ahead.min(cap).ceil() as u64;
        base.saturating_add(extra).min(MAX_HELD.max(base))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn near_the_web_server_the_slots_suffice() {
        let t0 = Instant::now();
        let mut p = Pace::new(t0);
        assert_eq!(p.target(8, 4, Duration::from_secs(60), t0), 8);
        for i in 0..1000 {
            p.finished(t0 + Duration::from_millis(i * 5), Duration::from_millis(20));
        }
        p.round_trip(Duration::from_millis(1));
        let now = t0 + Duration::from_secs(5);
        let rate = p.rate(now);
        assert!((150.0..250.0).contains(&rate), "{rate}");
        // 200/s × (2 ms + 250 ms) ≈ 51 jobs on top of the slots.
        let t = p.target(8, 4, Duration::from_secs(60), now);
        assert!((50..70).contains(&t), "{t}");
    }

    #[test]
    fn far_from_it_the_lookup_holds_a_round_trip_of_work_more() {
        let t0 = Instant::now();
        let mut p = Pace::new(t0);
        for i in 0..1000 {
            p.finished(t0 + Duration::from_millis(i * 5), Duration::from_millis(20));
        }
        for _ in 0..20 {
            p.round_trip(Duration::from_millis(150));
        }
        let now = t0 + Duration::from_secs(5);
        // 200/s × (300 ms + 250 ms) = 110.
        let t = p.target(8, 4, Duration::from_secs(60), now);
        assert!((100..140).contains(&t), "{t}");
        // Capped by what finishes in half a (short) lease.
        let t = p.target(8, 4, Duration::from_millis(500), now);
        assert!(t <= 8 + 60, "{t}");
    }

    #[test]
    fn a_start_is_measured_over_the_time_it_has_run() {
        let t0 = Instant::now();
        let mut p = Pace::new(t0);
        // 100 jobs in the first half second: 200/s, not 100 / 5 s.
        for i in 0..100 {
            p.finished(t0 + Duration::from_millis(i * 5), Duration::from_millis(20));
        }
        let rate = p.rate(t0 + Duration::from_millis(500));
        assert!((150.0..250.0).contains(&rate), "{rate}");
    }

    #[test]
    fn a_starved_start_leases_by_what_the_slots_can_do() {
        let t0 = Instant::now();
        let mut p = Pace::new(t0);
        p.round_trip(Duration::from_millis(150));
        // 8 jobs of 4 ms each on 4 slots: the slots could do 1000/s; the 8 alone say 32/s.
        for _ in 0..8 {
            p.finished(t0, Duration::from_millis(4));
        }
        let t = p.target(
            8,
            4,
            Duration::from_secs(60),
            t0 + Duration::from_millis(50),
        );
        // 1000/s × (300 ms + 250 ms) = 550 more.
        assert!((500..600).contains(&t), "{t}");
        // Long jobs: the slots can do little, so little is held.
        let mut p = Pace::new(t0);
        p.round_trip(Duration::from_millis(150));
        p.finished(t0, Duration::from_secs(60));
        let t = p.target(8, 4, Duration::from_secs(60), t0 + Duration::from_secs(1));
        assert!(t <= 10, "{t}");
    }

    #[test]
    fn the_rate_forgets_an_idle_past() {
        let t0 = Instant::now();
        let mut p = Pace::new(t0);
        for _ in 0..500 {
            p.finished(t0, Duration::from_millis(20));
        }
        assert!(p.rate(t0 + Duration::from_secs(1)) > 50.0);
        assert_eq!(p.rate(t0 + Duration::from_secs(30)), 0.0);
        assert_eq!(
            p.target(4, 4, Duration::from_secs(60), t0 + Duration::from_secs(30)),
            4
        );
    }
}
