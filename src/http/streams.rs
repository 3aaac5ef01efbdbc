//! Guards for long responses: caps on concurrent streamed listings (per token and in
//! total) and a bound on the database reads they run at once. With the connection's
//! stalled-write timer (`connections`), they keep one token's slow readers from
//! holding the pool, the memory or the server hostage.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::{Semaphore, SemaphorePermit};

use super::error::{ApiError, Code};
use crate::config::Settings;

/// The streams in flight and what they may use.
pub struct Streams {
    max_total: usize,
    max_per_token: usize,
    /// How long a stream waits for its client to take the next chunk.
    pub idle_timeout: Duration,
    open: Mutex<Open>,
    /// Chunk reads running at once, across every stream: a quarter of the pool, so
    /// streams reading as fast as they can still leave the rest to other requests.
    reads: Semaphore,
}

#[derive(Default)]
struct Open {
    total: usize,
    per_token: HashMap<i64, usize>,
}

impl Streams {
    pub fn from_settings(settings: &Settings) -> Streams {
        let pool = usize::try_from(settings.database.max_connections).unwrap_or(usize::MAX);
        Streams {
            max_total: settings.api.max_streams,
            max_per_token: settings.api.max_streams_per_token,
            idle_timeout: settings.stream_idle_timeout(),
            open: Mutex::new(Open::default()),
            reads: Semaphore::new((pool / 4).max(1)),
        }
    }

    /// A slot for one more stream of `token`, or 429 `too-many-streams`.
    pub fn open(self: &Arc<Self>, token: i64) -> Result<StreamSlot, ApiError> {
        let mut open = self.open.lock().unwrap_or_else(|p| p.into_inner());
        let of_token = open.per_token.get(&token).copied().unwrap_or(0);
        if of_token >= self.max_per_token {
            return Err(ApiError::new(
                Code::TooManyStreams,
                format!(
                    "this token already has {of_token} streamed listings open (at most {}); \
                     finish one, or page with offset and limit",
                    self.max_per_token
                ),
            ));
        }
        if open.total >= self.max_total {
            return Err(ApiError::new(
                Code::TooManyStreams,
                format!(
                    "the server is streaming {} listings, its limit; retry shortly, \
                     or page with offset and limit",
                    open.total
                ),
            ));
        }
        open.total += 1;
        *open.per_token.entry(token).or_default() += 1;
        Ok(StreamSlot {
            streams: self.clone(),
            token,
        })
    }

    fn close(&self, token: i64) {
        let mut open = self.open.lock().unwrap_or_else(|p| p.into_inner());
        open.total = open.total.saturating_sub(1);
        if let Some(count) = open.per_token.get_mut(&token) {
            *count -= 1;
            if *count == 0 {
                open.per_token.remove(&token);
            }
        }
    }
}

/// One open stream; dropping it (the stream ended, failed, or its client left or
/// stopped reading) frees the slot.
pub struct StreamSlot {
    streams: Arc<Streams>,
    token: i64,
}

impl StreamSlot {
    /// Waits for a turn to read one chunk from the database.
    pub async fn read_turn(&self) -> SemaphorePermit<'_> {
        self.streams
            .reads
            .acquire()
            .await
            .expect("the read semaphore is never closed")
    }

    pub fn idle_timeout(&self) -> Duration {
        self.streams.idle_timeout
    }
}

impl Drop for StreamSlot {
    fn drop(&mut self) {
        self.streams.close(self.token);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn streams(total: usize, per_token: usize) -> Arc<Streams> {
        Arc::new(Streams {
            max_total: total,
            max_per_token: per_token,
            idle_timeout: Duration::from_secs(1),
            open: Mutex::new(Open::default()),
            reads: Semaphore::new(1),
        })
    }

    #[test]
    fn slots_are_capped_per_token_and_in_total_and_freed_on_drop() {
        let streams = streams(3, 2);
        let a1 = streams.open(1).expect("first");
        let _a2 = streams.open(1).expect("second");
        let refused = streams.open(1).err().expect("third of one token");
        assert_eq!(
            (refused.status().as_u16(), refused.code().as_str()),
            (429, "too-many-streams")
        );
        let _b1 = streams.open(2).expect("another token");
        let refused = streams.open(3).err().expect("over the total");
        assert_eq!(refused.code(), "too-many-streams");
        drop(a1);
        assert!(streams.open(3).is_ok(), "a dropped slot is free again");
    }
}
