//! `count`: at least N matching events per key within a window of event time.
//!
//! Only the newest N timestamps of a key are kept (sorted), which is all that "N within a
//! window" needs: the condition holds when some N consecutive timestamps span no more than
//! the window (inclusive). Late events (within the allowed lateness) are inserted in
//! event-time order.

use serde_json::json;

use super::keymap::Heap;
use super::state::{Env, KindStep, View};
use super::trace::progress;
use super::{said, Fired};
use crate::decision::fmt_ts;
use crate::rules::{fmt_duration, Ctx, Rule};

/// A `count` rule's parameters.
pub struct Count {
    pub threshold: u32,
    pub window_ms: i64,
}

impl KindStep for Count {
    type Data = CountState;
    type Input<'e> = ();
    /// How many events the firing run holds, and its span (first, last).
    type Hit<'s> = (usize, i64, i64);
    const SEES_LATE: bool = false;

    fn input<'e>(&self, _: &'e Ctx<'e>, _: &mut Env<'_>) -> Option<()> {
        Some(())
    }

    fn step(&self, data: &mut CountState, ts: i64, (): ()) -> Option<(usize, i64, i64)> {
        data.add(ts, self.threshold, self.window_ms)
    }

    fn fired(&self, rule: &Rule, _: &Ctx<'_>, (n, first, last): (usize, i64, i64)) -> Fired {
        let (threshold, window) = (self.threshold, fmt_duration(self.window_ms));
        Fired {
            reason: format!(
                "{}: {n} matching requests for this {} within {window} (threshold {threshold}).",
                said(rule),
                rule.key.name(),
            ),
            evidence: json!({
                "count": n,
                "threshold": threshold,
                "window": window,
                "first": fmt_ts(first),
                "last": fmt_ts(last),
            }),
            not_before_ms: None,
        }
    }

    fn view(&self, data: Option<&CountState>, cx: &Ctx<'_>) -> View {
        let ts = cx.ev.ts_ms;
        let kept = data.map(CountState::timestamps).unwrap_or_default();
        let n = kept.iter().filter(|&&t| t <= ts && ts - t <= self.window_ms).count();
        let p = progress(n, self.threshold, "matching events", self.window_ms);
        View {
            window: kept.iter().map(|t| json!(fmt_ts(*t))).collect(),
            why_not: format!("below the threshold: {p}"),
            progress: Some(p),
        }
    }

    fn progress(&self, data: &CountState) -> bool {
        data.ts.len() >= 2
    }
}

/// The newest timestamps of one key, ascending; at most `threshold + 1` transiently.
#[derive(Default, Debug)]
pub struct CountState {
    pub(super) ts: Vec<i64>,
}

impl Heap for CountState {
    fn heap_bytes(&self) -> usize {
        crate::heap::vec_bytes::<i64>(self.ts.capacity())
    }
}

impl CountState {
    /// Records an event at `ts`; returns how many events the firing run holds and its span
    /// (first, last) when `threshold` events fall within `window_ms`.
    pub fn add(&mut self, ts: i64, threshold: u32, window_ms: i64) -> Option<(usize, i64, i64)> {
        let n = threshold as usize;
        let at = self.ts.partition_point(|&t| t <= ts);
        self.ts.insert(at, ts);
        let mut hit = None;
        if self.ts.len() >= n {
            for run in self.ts.windows(n) {
                let (first, last) = (run[0], run[n - 1]);
                if first <= ts && ts <= last && last - first <= window_ms {
                    hit = Some((n, first, last));
                }
            }
        }
        if self.ts.len() > n {
            self.ts.remove(0);
        }
        hit
    }

    /// The kept timestamps, ascending (for `explain`).
    pub fn timestamps(&self) -> &[i64] {
        &self.ts
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fires_at_the_threshold_within_the_window_inclusive() {
        let mut s = CountState::default();
        for t in [0, 75_000, 150_000, 225_000] {
            assert!(s.add(t, 5, 300_000).is_none());
        }
        assert_eq!(s.add(300_000, 5, 300_000), Some((5, 0, 300_000)));
    }

    #[test]
    fn just_outside_the_window_does_not_fire() {
        let mut s = CountState::default();
        for t in [0, 75_000, 150_000, 225_000] {
            s.add(t, 5, 300_000);
        }
        assert!(s.add(300_001, 5, 300_000).is_none());
        // the next one makes 5 within 300 s again (75 s .. 310 s)
        assert!(s.add(310_000, 5, 300_000).is_some());
    }

    #[test]
    fn a_late_event_is_placed_in_order() {
        let mut s = CountState::default();
        for t in [10_000, 20_000, 40_000] {
            assert!(s.add(t, 4, 60_000).is_none());
        }
        // arrives last, happened second
        assert_eq!(s.add(15_000, 4, 60_000), Some((4, 10_000, 40_000)));
    }

    #[test]
    fn state_stays_bounded() {
        let mut s = CountState::default();
        for t in 0..1000 {
            s.add(t * 1_000_000, 3, 1);
        }
        assert!(s.ts.len() <= 3);
    }
}
