//! Revocation budgets: how many revocations a rule may make before it trips to shadow.
//!
//! A rule edit can go wrong in the worst way for an auto-revocation feed: `kind: match`,
//! `action: revoke_subject` and no `where` validates, and revokes everyone. A budget bounds the
//! damage of any such mistake (and of any flood an attacker can steer): past `max` enforced
//! revocations within `window` of event time, the rule *trips*: it keeps deciding, but its
//! decisions are shadow (`"shadow": true`, never written to Redis) until the rules are
//! reloaded or an operator re-arms it (`tokenwatch rearm RULE`). Counting in event time keeps
//! `replay` and `run` deciding alike.

use std::collections::VecDeque;

use crate::rules::Budget;

/// One rule's recent enforced revocations, and whether it tripped.
#[derive(Debug, Default)]
pub struct BudgetState {
    /// Event times (ms) of the enforced revocations within the window; at most `max`.
    recent: VecDeque<i64>,
    /// Event time at which the rule tripped.
    tripped_at: Option<i64>,
}

impl BudgetState {
    /// Counts an enforced revocation at `ts`. False when the budget is spent: the rule trips
    /// (or has tripped) and this revocation must not be enforced.
    pub fn admit(&mut self, b: Budget, ts: i64) -> bool {
        if self.tripped_at.is_some() {
            return false;
        }
        let since = ts.saturating_sub(b.window_ms);
        while self.recent.front().is_some_and(|&t| t <= since) {
            self.recent.pop_front();
        }
        if self.recent.len() >= b.max as usize {
            self.tripped_at = Some(ts);
            self.recent.clear();
            return false;
        }
        self.recent.push_back(ts);
        true
    }

    /// Event time at which the rule tripped, if it did.
    pub fn tripped_at(&self) -> Option<i64> {
        self.tripped_at
    }

    /// Back to enforcing, with an empty window.
    pub fn rearm(&mut self) {
        *self = BudgetState::default();
    }

    /// The window's event times (ms), oldest first: for checkpoints.
    pub(crate) fn recent(&self) -> impl ExactSizeIterator<Item = i64> + '_ {
        self.recent.iter().copied()
    }

    /// A budget as a checkpoint kept it.
    pub(crate) fn from_parts(recent: VecDeque<i64>, tripped_at: Option<i64>) -> Self {
        BudgetState { recent, tripped_at }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn trips_past_the_budget_within_the_window_and_stays_tripped_until_rearmed() {
        let b = Budget {
            max: 3,
            window_ms: 600_000,
        };
        let mut s = BudgetState::default();
        // three in a window are fine; one that leaves the window makes room
        assert!(s.admit(b, 0) && s.admit(b, 1_000) && s.admit(b, 2_000));
        assert!(s.admit(b, 600_000), "the one at 0 left the window");
        assert!(!s.admit(b, 600_001), "a fourth within 10 minutes trips");
        assert_eq!(s.tripped_at(), Some(600_001));
        assert!(!s.admit(b, 10_000_000), "tripped stays tripped, whatever the time");
        s.rearm();
        assert!(s.admit(b, 10_000_001));
    }

    #[test]
    fn budgets_parse_and_refuse_nonsense() {
        assert_eq!(
            "100/10m".parse::<Budget>(),
            Ok(Budget {
                max: 100,
                window_ms: 600_000
            })
        );
        for bad in ["100", "0/10m", "x/10m", "5/0s", "5/10"] {
            assert!(bad.parse::<Budget>().is_err(), "{bad}");
        }
    }
}
