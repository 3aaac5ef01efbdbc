//! Sends events to webhook endpoints as Stripe does: signed at delivery time, at least
//! once, sometimes late, out of order or twice, and retried with exponential backoff
//! until the endpoint answers 2xx (or the retry window closes). Deliveries run in their
//! own tasks, at most `webhook_concurrency` at a time, and never block request handling.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

use rand::Rng;
use tokio::sync::Semaphore;

use super::knobs::{chance, Knobs};
use super::state::SimState;
use super::webhook::sign_webhook;
use super::webhook_endpoints::Delivery;

pub struct Deliverer {
    /// Built on the first delivery: a static simulator (most tests) never needs one.
    client: OnceLock<reqwest::Client>,
    timeout: Duration,
    permits: Arc<Semaphore>,
    /// How long failed deliveries are retried (Stripe: three days).
    retry_for: Duration,
    /// Deliveries scheduled and not yet over (delivered, given up or cancelled),
    /// retries included: zero means no event is still on its way.
    pending: AtomicU64,
}

impl Deliverer {
    pub fn new(timeout: Duration, concurrency: usize, retry_for: Duration) -> Self {
        Deliverer {
            client: OnceLock::new(),
            timeout,
            permits: Arc::new(Semaphore::new(concurrency.max(1))),
            retry_for,
            pending: AtomicU64::new(0),
        }
    }

    /// Deliveries still on their way (waiting, being sent, or waiting to retry).
    pub fn pending(&self) -> u64 {
        self.pending.load(Ordering::SeqCst)
    }

    fn client(&self) -> &reqwest::Client {
        self.client.get_or_init(|| {
            reqwest::Client::builder()
                .timeout(self.timeout)
                .user_agent("Stripe/1.0 (+https://stripe.com/docs/webhooks)")
                // Stripe does not follow redirects: a 3xx is a failed delivery.
                .redirect(reqwest::redirect::Policy::none())
                .build()
                .unwrap_or_default()
        })
    }
}

/// One event for one endpoint.
#[derive(Clone)]
pub struct Job {
    pub delivery: Delivery,
    pub payload: Arc<str>,
}

/// Schedules `job`: after a little jitter (sometimes much later), and now and then twice.
pub fn dispatch(state: &Arc<SimState>, job: Job) {
    let knobs = state.knobs();
    let delay = first_delay(&knobs);
    if chance(&mut rand::rng(), knobs.webhook_duplicate_rate) {
        state.stats.webhooks(|w| w.duplicates += 1);
        let again = delay + Duration::from_millis(rand::rng().random_range(0..=1_000));
        spawn(state, job.clone(), again);
    }
    spawn(state, job, delay);
}

fn first_delay(knobs: &Knobs) -> Duration {
    let mut rng = rand::rng();
    let jitter = if knobs.webhook_jitter_ms > 0 {
        rng.random_range(0..=knobs.webhook_jitter_ms)
    } else {
        0
    };
    let late = if chance(&mut rng, knobs.webhook_late_rate) {
        rng.random_range(1_000..=5_000)
    } else {
        0
    };
    Duration::from_millis(jitter + late)
}

fn spawn(state: &Arc<SimState>, job: Job, delay: Duration) {
    let state = state.clone();
    state.deliverer.pending.fetch_add(1, Ordering::SeqCst);
    tokio::spawn(async move {
        let cancel = state.cancel.clone();
        tokio::select! {
            () = cancel.cancelled() => {}
            () = deliver(&state, job, delay) => {}
        }
        state.deliverer.pending.fetch_sub(1, Ordering::SeqCst);
    });
}

async fn deliver(state: &SimState, job: Job, delay: Duration) {
    tokio::time::sleep(delay).await;
    let started = Instant::now();
    let mut attempt: u32 = 0;
    loop {
        let knobs = state.knobs();
        // A share of first attempts fails without being sent, as if the endpoint had
        // been down: the retry must still bring the event.
        let delivered = if attempt == 0 && chance(&mut rand::rng(), knobs.webhook_fail_rate) {
            false
        } else {
            if !state.endpoints().exists(&job.delivery.endpoint) {
                // Deleted or disabled since: Stripe stops delivering.
                return;
            }
            send(state, &job).await
        };
        if delivered {
            state.stats.webhooks(|w| w.delivered += 1);
            return;
        }
        state.stats.webhooks(|w| w.failed += 1);
        if started.elapsed() >= state.deliverer.retry_for {
            state.stats.webhooks(|w| w.gave_up += 1);
            tracing::debug!(endpoint = %job.delivery.endpoint, "webhook given up");
            return;
        }
        state.stats.webhooks(|w| w.retries += 1);
        tokio::time::sleep(backoff(knobs.webhook_retry_base_ms, attempt)).await;
        attempt = attempt.saturating_add(1);
    }
}

/// `base × 2^attempt`, at most `base × 64`, scaled by a random factor in [0.75, 1].
pub fn backoff(base_ms: u64, attempt: u32) -> Duration {
    let ms = base_ms.max(1).saturating_mul(1 << attempt.min(6));
    let factor = rand::rng().random_range(0.75..=1.0);
    Duration::from_millis((ms as f64 * factor) as u64)
}

async fn send(state: &SimState, job: &Job) -> bool {
    let Ok(_permit) = state.deliverer.permits.acquire().await else {
        return false;
    };
    state.stats.webhooks(|w| w.attempts += 1);
    // The signature's timestamp is the real time of this attempt, so a receiver's
    // tolerance holds however fast simulated time runs.
    let t = chrono::Utc::now().timestamp();
    let signature = sign_webhook(&job.delivery.secret, t, &job.payload);
    let sent = state
        .deliverer
        .client()
        .post(&job.delivery.url)
        .header("content-type", "application/json; charset=utf-8")
        .header("stripe-signature", signature)
        .body(job.payload.to_string())
        .send()
        .await;
    match sent {
        Ok(response) => response.status().is_success(),
        Err(err) => {
            tracing::debug!(url = %job.delivery.url, error = %err, "webhook delivery failed");
            false
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_doubles_and_is_capped() {
        for attempt in 0..10u32 {
            let d = backoff(1_000, attempt).as_millis() as u64;
            let full = 1_000u64 << attempt.min(6);
            assert!(d >= full * 3 / 4 && d <= full, "{attempt}: {d}");
        }
    }
}
