//! What the administrator's page shows that the store does not keep: when each lookup server
//! last called, and how many answers arrived in each of the last minutes. Kept in memory
//! (since this server started); updated on every lookup request and answer, at the cost of
//! one short lock.

use std::collections::{HashMap, VecDeque};
use std::sync::Mutex;

/// Minutes of answer counts kept.
pub const MINUTES: usize = 15;

#[derive(Debug, Default)]
pub struct Activity {
    /// Lookup id → Unix seconds of its last request.
    seen: Mutex<HashMap<i64, i64>>,
    /// (minute since the epoch, answers stored in it), oldest first.
    answers: Mutex<VecDeque<(i64, u64)>>,
}

impl Activity {
    /// A lookup server called.
    pub fn lookup_seen(&self, lookup_id: i64, now: i64) {
        self.seen
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(lookup_id, now);
    }

    /// When this lookup last called (since this server started).
    pub fn last_seen(&self, lookup_id: i64) -> Option<i64> {
        self.seen
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(&lookup_id)
            .copied()
    }

    /// When any lookup last called.
    pub fn any_lookup_seen(&self) -> Option<i64> {
        self.seen
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .values()
            .copied()
            .max()
    }

    /// `n` answers were stored at `now`.
    pub fn answers_stored(&self, n: u64, now: i64) {
        if n == 0 {
            return;
        }
        let minute = now.div_euclid(60);
        let mut a = self.answers.lock().unwrap_or_else(|p| p.into_inner());
        match a.back_mut() {
            Some((m, count)) if *m == minute => *count += n,
            _ => a.push_back((minute, n)),
        }
        while a.len() > MINUTES {
            a.pop_front();
        }
    }

    /// Answers per minute for the last [`MINUTES`] minutes up to `now`'s, oldest first
    /// (minute start in Unix seconds, answers), minutes without answers included.
    pub fn throughput(&self, now: i64) -> Vec<(i64, u64)> {
        let current = now.div_euclid(60);
        let a = self.answers.lock().unwrap_or_else(|p| p.into_inner());
        (0..MINUTES as i64)
            .rev()
            .map(|back| {
                let m = current - back;
                let n = a.iter().find(|(x, _)| *x == m).map_or(0, |(_, n)| *n);
                (m * 60, n)
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn answers_are_counted_per_minute_and_old_minutes_drop() {
        let a = Activity::default();
        a.answers_stored(3, 600);
        a.answers_stored(2, 659);
        a.answers_stored(1, 660);
        let t = a.throughput(660);
        assert_eq!(t.len(), MINUTES);
        assert_eq!(t[MINUTES - 1], (660, 1));
        assert_eq!(t[MINUTES - 2], (600, 5));
        a.answers_stored(1, 660 + 60 * 30);
        assert_eq!(
            a.throughput(660 + 60 * 30).iter().map(|x| x.1).sum::<u64>(),
            1
        );
        a.lookup_seen(7, 100);
        a.lookup_seen(8, 90);
        assert_eq!(a.last_seen(7), Some(100));
        assert_eq!(a.any_lookup_seen(), Some(100));
    }
}
