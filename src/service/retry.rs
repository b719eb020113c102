//! Side effects that must not be skipped (alert lines, Redis revocations), retried with
//! backoff until they are done, and the shutdown request as those retries see it.
//!
//! While a batch's side effects are retried nothing new is read and nothing past the batch is
//! committed: a slow or absent output stops consumption instead of growing memory. A retry
//! gives up only once shutdown was asked and the shutdown timeout has passed; the batch is
//! then not committed, and the next run reads it again.

use std::time::{Duration, Instant};

use tokio::sync::watch;

use super::{now_ms, ServiceError, Undelivered};
use crate::metrics::Metrics;
use crate::sinks::alerts::AlertSink;
use crate::sinks::redis::{Kind, Revocation, WriteError};
use crate::sinks::RevocationStore;
use tokenwatch_core::decision::Decision;

/// The shutdown request as the loop's retries see it: once it is asked, the work in flight
/// has the shutdown timeout, counted from the moment the loop first sees the request.
pub(super) struct Shutdown {
    pub(super) rx: watch::Receiver<bool>,
    since: Option<Instant>,
    timeout: Duration,
}

impl Shutdown {
    pub(super) fn new(rx: watch::Receiver<bool>, timeout: Duration) -> Self {
        Shutdown {
            rx,
            since: None,
            timeout,
        }
    }

    pub(super) fn asked(&self) -> bool {
        *self.rx.borrow()
    }

    /// Completes once shutdown was asked and the shutdown timeout has passed.
    pub(super) async fn expired(&mut self) {
        while !*self.rx.borrow() {
            if self.rx.changed().await.is_err() {
                std::future::pending::<()>().await;
            }
        }
        let since = *self.since.get_or_insert_with(Instant::now);
        tokio::time::sleep_until((since + self.timeout).into()).await;
    }
}

/// The wait between attempts at a side effect that must not be skipped (a Redis write, an
/// alert delivery): 50 ms, doubling up to 2 s, cut short when the shutdown timeout passes.
struct Backoff(Duration);

impl Backoff {
    fn new() -> Self {
        Backoff(Duration::from_millis(50))
    }

    fn ms(&self) -> u64 {
        self.0.as_millis() as u64
    }

    /// Waits before the next attempt; false when the shutdown timeout passed instead.
    async fn wait(&mut self, stop: &mut Shutdown) -> bool {
        tokio::select! {
            _ = tokio::time::sleep(self.0) => {}
            _ = stop.expired() => return false,
        }
        self.0 = (self.0 * 2).min(Duration::from_secs(2));
        true
    }
}

/// Delivers a batch's alert lines, retrying with backoff while the file or the alerts topic
/// fails. Gives up only when shutdown was asked and the shutdown timeout has passed.
pub(super) async fn deliver_alerts(
    alerts: &mut AlertSink,
    decisions: &[Decision],
    metrics: &Metrics,
    stop: &mut Shutdown,
) -> Result<(), ServiceError> {
    let gave_up = || ServiceError::GaveUp(Undelivered::AlertLines);
    let mut backoff = Backoff::new();
    loop {
        let r = tokio::select! {
            r = alerts.write(decisions) => r,
            _ = stop.expired() => return Err(gave_up()),
        };
        let dead = alerts.take_dead_lettered();
        if dead > 0 {
            metrics.dead_letters.with_label_values(&["alerts_topic"]).inc_by(dead);
            tracing::error!(
                records = dead,
                "alert records refused by the alerts topic for good; written to the dead-letter output"
            );
        }
        match r {
            Ok(()) => return Ok(()),
            Err(e) => {
                metrics.alert_errors.inc();
                tracing::warn!(error = %e, transient = e.is_transient(), retry_in_ms = backoff.ms(), "alert lines not delivered; consumption paused");
            }
        }
        if !backoff.wait(stop).await {
            return Err(gave_up());
        }
    }
}

/// Writes one revocation, retrying with backoff while Redis is unavailable or refuses writes.
/// A revocation Redis rejects for good (WRONGTYPE, a script error) goes to the dead-letter
/// output and counts as done, so it cannot stall the stream. Gives up only when shutdown was
/// asked and the shutdown timeout has passed: then nothing of this batch is committed, and the
/// next run writes it.
pub(super) async fn write_with_retry(
    writer: &mut RevocationStore,
    r: &Revocation,
    metrics: &Metrics,
    stop: &mut Shutdown,
) -> Result<bool, ServiceError> {
    let gave_up = || ServiceError::GaveUp(Undelivered::Revocations);
    let mut backoff = Backoff::new();
    loop {
        let result = tokio::select! {
            w = writer.write(r, now_ms() / 1000) => w,
            _ = stop.expired() => return Err(gave_up()),
        };
        publish_refusal(&result, metrics);
        match result {
            Ok(new) => {
                metrics.redis_up.set(1);
                if new {
                    let kind = match r.kind {
                        Kind::Token => "token",
                        Kind::Subject => "subject",
                    };
                    metrics.revocations.with_label_values(&[kind]).inc();
                }
                return Ok(new);
            }
            Err(WriteError::Poison {
                msg,
                dead_lettered: true,
                ..
            }) => {
                metrics.redis_errors.inc();
                metrics.dead_letters.with_label_values(&["redis"]).inc();
                tracing::error!(error = %msg, rule = %r.rule, "revocation rejected by redis for good; written to the dead-letter output");
                return Ok(false);
            }
            Err(e) => {
                metrics.redis_errors.inc();
                // Not ready while a write cannot be done: Redis down, or a poison revocation
                // with nowhere to go; a refusal shows in `tokenwatch_redis_refused`.
                if !matches!(e, WriteError::Refused { .. }) {
                    metrics.redis_up.set(0);
                }
                tracing::warn!(error = %e, kind = e.kind(), rule = %r.rule, retry_in_ms = backoff.ms(), "revocation not written; consumption paused");
            }
        }
        if !backoff.wait(stop).await {
            return Err(gave_up());
        }
    }
}

/// Shows whether Redis refuses writes (and its error code, for `/readyz`).
fn publish_refusal(result: &Result<bool, WriteError>, metrics: &Metrics) {
    let refusal = match result {
        Err(WriteError::Refused { code, .. }) => Some(code.clone()),
        _ => None,
    };
    metrics.redis_refused.set(i64::from(refusal.is_some()));
    if let Ok(mut r) = metrics.redis_refusal.lock() {
        *r = refusal;
    }
}
