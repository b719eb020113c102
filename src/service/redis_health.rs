//! Connecting to Redis at start, and keeping `/readyz` and `tokenwatch_redis_up` current
//! afterwards: a health check PINGs Redis every [`REDIS_HEALTH_INTERVAL`] beside the loop, so
//! an outage shows even when nothing is being revoked, and without holding the loop up.

use std::sync::Arc;
use std::time::Duration;

use super::retry::Shutdown;
use crate::metrics::Metrics;
use crate::sinks::redis::{RedisConfig, RedisHandle, RedisOpError, RevocationWriter};

/// How often the health check PINGs Redis.
pub const REDIS_HEALTH_INTERVAL: Duration = Duration::from_secs(2);

/// Connects to Redis, retrying with backoff while it does not answer, until shutdown is
/// asked (then `None`). A setting that cannot work (a bad URL or CA file, a refused password)
/// fails at once: the error is not [`RedisOpError::is_transient`].
pub(super) async fn connect(
    cfg: &RedisConfig,
    metrics: &Metrics,
    stop: &mut Shutdown,
) -> Result<Option<RevocationWriter>, RedisOpError> {
    let mut backoff = Duration::from_millis(100);
    loop {
        match RevocationWriter::connect(cfg.clone()).await {
            Ok(w) => {
                metrics.redis_up.set(1);
                return Ok(Some(w));
            }
            Err(e) if !e.is_transient() => return Err(e),
            Err(e) => {
                metrics.redis_errors.inc();
                metrics.redis_up.set(0);
                tracing::warn!(error = %e, retry_in_ms = backoff.as_millis() as u64, "redis unreachable");
            }
        }
        tokio::select! {
            _ = tokio::time::sleep(backoff) => {}
            _ = stop.rx.changed() => {}
        }
        if stop.asked() {
            return Ok(None);
        }
        backoff = (backoff * 2).min(Duration::from_secs(5));
    }
}

/// PINGs Redis every [`REDIS_HEALTH_INTERVAL`] on its own handle, so that `/readyz` and
/// `tokenwatch_redis_up` follow Redis even while nothing is written, and without ever
/// holding up the consume loop. Logs only the changes.
pub(super) async fn watch(mut probe: RedisHandle, metrics: Arc<Metrics>, timeout: Duration) {
    let mut tick = tokio::time::interval(REDIS_HEALTH_INTERVAL);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut was_up = true;
    loop {
        tick.tick().await;
        let r = tokio::time::timeout(timeout, probe.ping()).await;
        let up = matches!(r, Ok(Ok(())));
        metrics.redis_up.set(i64::from(up));
        match r {
            Ok(Ok(())) if !was_up => tracing::info!("redis answers again"),
            Ok(Err(e)) if was_up => tracing::warn!(error = %e, "redis health check failed; not ready"),
            Err(_) if was_up => tracing::warn!(
                timeout_ms = timeout.as_millis() as u64,
                "redis health check: no answer to PING in time; not ready"
            ),
            _ => {}
        }
        was_up = up;
    }
}
