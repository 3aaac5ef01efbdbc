//! Guards for long responses: caps on concurrent streamed listings (per token and in
//! total), a bound on the database reads they run at once, and a connection wrapper
//! that disconnects a client that stops reading. Together they keep one token's slow
//! readers from holding the pool, the memory or the server hostage.

use std::collections::HashMap;
use std::future::Future;
use std::io;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{Semaphore, SemaphorePermit};
use tokio::time::Sleep;

use super::error::ApiError;
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
            return Err(ApiError::too_many(
                "too-many-streams",
                format!(
                    "this token already has {of_token} streamed listings open (at most {}); \
                     finish one, or page with offset and limit",
                    self.max_per_token
                ),
            ));
        }
        if open.total >= self.max_total {
            return Err(ApiError::too_many(
                "too-many-streams",
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

/// Accepts TCP connections whose writes fail once they have made no progress for
/// `stall_timeout`: a client that stops reading a response is disconnected instead of
/// holding its connection (and what is buffered for it) forever.
pub struct StallGuardListener {
    listener: TcpListener,
    stall_timeout: Duration,
}

impl StallGuardListener {
    pub fn new(listener: TcpListener, stall_timeout: Duration) -> StallGuardListener {
        StallGuardListener {
            listener,
            stall_timeout,
        }
    }
}

impl axum::serve::Listener for StallGuardListener {
    type Io = StallGuard<TcpStream>;
    type Addr = std::net::SocketAddr;

    async fn accept(&mut self) -> (Self::Io, Self::Addr) {
        let (stream, address) = axum::serve::Listener::accept(&mut self.listener).await;
        (StallGuard::new(stream, self.stall_timeout), address)
    }

    fn local_addr(&self) -> io::Result<Self::Addr> {
        self.listener.local_addr()
    }
}

/// An IO whose pending writes time out. Reads are untouched: an idle keep-alive
/// connection waiting for its next request is not a stalled one.
pub struct StallGuard<S> {
    inner: S,
    limit: Duration,
    /// Running while a write is pending; reset by any progress.
    stalled: Option<Pin<Box<Sleep>>>,
}

impl<S> StallGuard<S> {
    pub fn new(inner: S, limit: Duration) -> StallGuard<S> {
        StallGuard {
            inner,
            limit,
            stalled: None,
        }
    }

    fn check<T>(&mut self, cx: &mut Context<'_>, poll: Poll<io::Result<T>>) -> Poll<io::Result<T>> {
        match poll {
            Poll::Ready(result) => {
                self.stalled = None;
                Poll::Ready(result)
            }
            Poll::Pending => {
                let limit = self.limit;
                let timer = self
                    .stalled
                    .get_or_insert_with(|| Box::pin(tokio::time::sleep(limit)));
                match timer.as_mut().poll(cx) {
                    Poll::Ready(()) => {
                        tracing::info!(
                            timeout_secs = limit.as_secs(),
                            "client stopped reading; closing its connection"
                        );
                        Poll::Ready(Err(io::Error::new(
                            io::ErrorKind::TimedOut,
                            "the client read nothing for too long",
                        )))
                    }
                    Poll::Pending => Poll::Pending,
                }
            }
        }
    }
}

impl<S: AsyncRead + Unpin> AsyncRead for StallGuard<S> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_read(cx, buf)
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for StallGuard<S> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let poll = Pin::new(&mut self.inner).poll_write(cx, buf);
        self.check(cx, poll)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let poll = Pin::new(&mut self.inner).poll_write_vectored(cx, bufs);
        self.check(cx, poll)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let poll = Pin::new(&mut self.inner).poll_flush(cx);
        self.check(cx, poll)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let poll = Pin::new(&mut self.inner).poll_shutdown(cx);
        self.check(cx, poll)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::AsyncWriteExt;

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
            (refused.status().as_u16(), refused.code()),
            (429, "too-many-streams")
        );
        let _b1 = streams.open(2).expect("another token");
        let refused = streams.open(3).err().expect("over the total");
        assert_eq!(refused.code(), "too-many-streams");
        drop(a1);
        assert!(streams.open(3).is_ok(), "a dropped slot is free again");
    }

    #[tokio::test]
    async fn a_write_pending_for_longer_than_the_limit_fails() {
        // A duplex pipe nobody reads: writes go pending once its buffer is full.
        let (client, _unread) = tokio::io::duplex(64);
        let mut guarded = StallGuard::new(client, Duration::from_millis(50));
        let error = guarded
            .write_all(&[0; 4096])
            .await
            .expect_err("the stalled write times out");
        assert_eq!(error.kind(), io::ErrorKind::TimedOut);
    }
}
