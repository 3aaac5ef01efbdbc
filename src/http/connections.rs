//! The server's connections, below the router: accepted under a per-process cap,
//! given a bounded time to send a request's head and to sit idle between requests,
//! cut off when their client stops reading, and given the error body when hyper
//! refuses a request by itself.
//!
//! - **Head and idle timeouts.** A connection is in one of three phases: waiting for
//!   a request's first byte after a response (`Idle`, at most
//!   `server.keep_alive_timeout_secs`), reading a request's head (`Head`, at most
//!   `server.header_read_timeout_secs` from the connection's start or the head's first
//!   byte), or serving requests (`Busy`: no read timer, so a long poll or a stream is
//!   never cut by these). A connection over its phase's time is closed.
//! - **The cap.** At most `server.max_connections` connections are served at once (a
//!   file descriptor each). At the cap, a new connection closes the one idle (or still
//!   sending its head) the longest, so idle or slow clients can never lock out a live
//!   one; when every connection is serving a request it waits, in the kernel's backlog.
//! - **Stalled writers.** A write that makes no progress for
//!   `api.stream_idle_timeout_secs` fails: a client that stops reading a response is
//!   disconnected, and a handler can close its connection at once ([`Connection`]).
//! - **hyper's own refusals.** hyper answers a request it cannot read (a malformed
//!   head or header byte, 400; a URI over 64 KiB, 414; over 100 headers or a head
//!   over its buffer, 431) by itself, with an empty body. Such a response is written
//!   while no request is being served, so it is recognised on its way out and
//!   replaced by the same status with the error body ([`super::error::ApiError`]).

use std::collections::BTreeMap;
use std::convert::Infallible;
use std::future::Future;
use std::io;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use axum::body::{Body, Bytes};
use axum::http::{Request, StatusCode};
use axum::Router;
use futures::task::AtomicWaker;
use http_body::{Frame, SizeHint};
use hyper::body::Incoming;
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio::time::Sleep;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tower::ServiceExt;

use super::error_bodies;
use crate::config::Settings;

/// What a connection may take.
#[derive(Debug, Clone, Copy)]
pub struct ConnectionLimits {
    pub max_connections: usize,
    pub header_read_timeout: Duration,
    pub keep_alive_timeout: Duration,
    /// A pending write with no progress for this long fails.
    pub stall_timeout: Duration,
}

impl ConnectionLimits {
    /// The configured limits, the cap kept within the process's open-file limit.
    pub fn from_settings(settings: &Settings) -> ConnectionLimits {
        let reserve = RESERVED_FILES
            + usize::try_from(settings.database.max_connections).unwrap_or(usize::MAX)
            + settings.stripe.max_in_flight;
        ConnectionLimits {
            max_connections: within_open_file_limit(settings.server.max_connections, reserve),
            header_read_timeout: Duration::from_secs(settings.server.header_read_timeout_secs),
            keep_alive_timeout: Duration::from_secs(settings.server.keep_alive_timeout_secs),
            stall_timeout: settings.stream_idle_timeout(),
        }
    }
}

/// File descriptors kept for everything but client connections, beyond the database
/// pool and Stripe's requests in flight: the listeners, logs, idle Stripe connections.
const RESERVED_FILES: usize = 256;

/// `wanted` connections, if the open-file limit leaves room for them and `reserve`
/// other files: the soft limit is raised toward what is needed (as far as the hard
/// limit allows, as Go's runtime does), and the cap lowered, with a warning, if that
/// is not enough, so accepting never fails with "Too many open files".
#[cfg(unix)]
fn within_open_file_limit(wanted: usize, reserve: usize) -> usize {
    let needed = wanted.saturating_add(reserve);
    let mut limit = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit only writes the struct it is given.
    if unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) } != 0 {
        return wanted;
    }
    let fits = |files: libc::rlim_t| {
        files == libc::RLIM_INFINITY || usize::try_from(files).is_ok_and(|files| files >= needed)
    };
    if fits(limit.rlim_cur) {
        return wanted;
    }
    let needed_files = libc::rlim_t::try_from(needed).unwrap_or(libc::RLIM_INFINITY);
    let raised = if limit.rlim_max == libc::RLIM_INFINITY {
        needed_files
    } else {
        limit.rlim_max.min(needed_files)
    };
    if raised > limit.rlim_cur {
        let new = libc::rlimit {
            rlim_cur: raised,
            rlim_max: limit.rlim_max,
        };
        // SAFETY: setrlimit only reads the struct it is given.
        if unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &new) } == 0 {
            tracing::info!(
                from = limit.rlim_cur,
                to = raised,
                "raised the open-file limit for server.max_connections"
            );
            limit.rlim_cur = raised;
        }
    }
    if fits(limit.rlim_cur) {
        return wanted;
    }
    let files = usize::try_from(limit.rlim_cur).unwrap_or(usize::MAX);
    let capped = files.saturating_sub(reserve).max(1);
    tracing::warn!(
        configured = wanted,
        capped,
        open_file_limit = files,
        "server.max_connections is more than the open-file limit (ulimit -n) leaves room for; \
         serving at most {capped} connections (raise the limit or lower the setting)"
    );
    capped
}

#[cfg(not(unix))]
fn within_open_file_limit(wanted: usize, _reserve: usize) -> usize {
    wanted
}

/// Serves `app` on `listener` until `shutdown` resolves; then stops accepting, lets
/// each connection finish the request it is serving, and returns when all are closed.
pub async fn serve(
    listener: TcpListener,
    app: Router,
    limits: ConnectionLimits,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> io::Result<()> {
    let registry = Arc::new(Registry::default());
    let permits = Arc::new(Semaphore::new(limits.max_connections.max(1)));
    let connections = TaskTracker::new();
    let closing = CancellationToken::new();
    tokio::pin!(shutdown);
    loop {
        let stream = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok((stream, _)) => {
                    // A response goes out as soon as it is written: Nagle's algorithm
                    // would hold a stream's next piece until the client acknowledged
                    // the last one.
                    let _ = stream.set_nodelay(true);
                    stream
                }
                Err(error) => {
                    if !is_connection_error(&error) {
                        // Out of file descriptors (the cap should prevent it) or the
                        // like: wait a little rather than spin.
                        tracing::error!(error = %error, "accept error");
                        tokio::time::sleep(Duration::from_millis(100)).await;
                    }
                    continue;
                }
            },
            () = &mut shutdown => break,
        };
        let permit = match permits.clone().try_acquire_owned() {
            Ok(permit) => permit,
            Err(_) => {
                registry.make_room();
                tokio::select! {
                    permit = permits.clone().acquire_owned() => permit.expect("the semaphore is never closed"),
                    () = &mut shutdown => break,
                }
            }
        };
        let shared = registry.open();
        connections.spawn(serve_connection(
            stream,
            app.clone(),
            shared,
            limits,
            closing.clone(),
            ConnectionSlot {
                registry: registry.clone(),
                _permit: permit,
            },
        ));
    }
    drop(listener);
    // Connections serving nothing close now (one still sending its head would
    // otherwise hold the shutdown up to its timeout); the others finish their request.
    registry.close_idle();
    closing.cancel();
    connections.close();
    connections.wait().await;
    Ok(())
}

/// Errors of one connection that leave the listener fine.
fn is_connection_error(error: &io::Error) -> bool {
    matches!(
        error.kind(),
        io::ErrorKind::ConnectionRefused
            | io::ErrorKind::ConnectionAborted
            | io::ErrorKind::ConnectionReset
    )
}

/// Holds a connection's place under the cap; dropped when the connection ends.
struct ConnectionSlot {
    registry: Arc<Registry>,
    _permit: OwnedSemaphorePermit,
}

async fn serve_connection(
    stream: TcpStream,
    app: Router,
    shared: Arc<Shared>,
    limits: ConnectionLimits,
    closing: CancellationToken,
    slot: ConnectionSlot,
) {
    let id = shared.id;
    let io = Guarded::new(stream, shared.clone(), limits);
    let service = hyper::service::service_fn(move |request: Request<Incoming>| {
        let in_flight = InFlight::begin(&shared);
        let mut request = request.map(Body::new);
        request.extensions_mut().insert(Connection(shared.clone()));
        let app = app.clone();
        async move {
            let response = app
                .oneshot(request)
                .await
                .unwrap_or_else(|never| match never {});
            Ok::<_, Infallible>(response.map(|body| Tracked {
                body,
                _in_flight: in_flight,
            }))
        }
    });
    let mut builder = hyper::server::conn::http1::Builder::new();
    // Only a backstop: the phases above close a connection first.
    builder
        .timer(TokioTimer::new())
        .header_read_timeout(limits.header_read_timeout + limits.keep_alive_timeout);
    let connection = builder.serve_connection(TokioIo::new(io), service);
    tokio::pin!(connection);
    let outcome = tokio::select! {
        outcome = connection.as_mut() => outcome,
        () = closing.cancelled() => {
            connection.as_mut().graceful_shutdown();
            connection.await
        }
    };
    if let Err(error) = outcome {
        tracing::debug!(error = %error, "connection ended with an error");
    }
    slot.registry.close(id);
}

/// The open connections, oldest first, so the cap can close the one idle longest.
#[derive(Default)]
struct Registry {
    next_id: AtomicU64,
    open: Mutex<BTreeMap<u64, Arc<Shared>>>,
    /// When the log last said the cap was reached (said at most once a minute).
    warned_at: Mutex<Option<Instant>>,
}

impl Registry {
    fn open(&self) -> Arc<Shared> {
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        let shared = Arc::new(Shared::new(id));
        self.open
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(id, shared.clone());
        shared
    }

    fn close(&self, id: u64) {
        self.open
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(&id);
    }

    /// Closes every connection that is serving nothing (the server is stopping).
    fn close_idle(&self) {
        let open = self.open.lock().unwrap_or_else(|p| p.into_inner());
        for shared in open.values().filter(|shared| shared.evictable()) {
            shared.evict.store(true, Ordering::Release);
            shared.waker.wake();
        }
    }

    /// At the cap: closes the oldest connection that is serving nothing (idle, or
    /// still sending a request's head). None such: the new connection waits.
    fn make_room(&self) {
        let evicted = {
            let open = self.open.lock().unwrap_or_else(|p| p.into_inner());
            open.values().find(|shared| shared.evictable()).cloned()
        };
        if let Some(shared) = &evicted {
            shared.evict.store(true, Ordering::Release);
            shared.waker.wake();
        }
        let mut warned_at = self.warned_at.lock().unwrap_or_else(|p| p.into_inner());
        if warned_at.is_none_or(|at| at.elapsed() >= Duration::from_secs(60)) {
            *warned_at = Some(Instant::now());
            tracing::warn!(
                evicted = evicted.is_some(),
                "server.max_connections reached: closing the connection idle the longest \
                 (or, when every connection is serving a request, holding new ones back)"
            );
        }
    }
}

/// What a connection's IO, its requests and the registry share.
struct Shared {
    id: u64,
    /// Requests whose response has not been dropped by hyper yet.
    in_flight: AtomicUsize,
    /// Requests begun on the connection so far.
    started: AtomicU64,
    /// A write is pending (the client is not taking the response).
    writing: AtomicBool,
    /// The cap chose it: close when it is serving nothing.
    evict: AtomicBool,
    /// Close at once (a handler gave up on its response).
    abort: AtomicBool,
    /// Wakes the connection's task, so a flag set from outside is seen.
    waker: AtomicWaker,
}

impl Shared {
    fn new(id: u64) -> Shared {
        Shared {
            id,
            in_flight: AtomicUsize::new(0),
            started: AtomicU64::new(0),
            writing: AtomicBool::new(false),
            evict: AtomicBool::new(false),
            abort: AtomicBool::new(false),
            waker: AtomicWaker::new(),
        }
    }

    fn busy(&self) -> bool {
        self.in_flight.load(Ordering::Acquire) > 0 || self.writing.load(Ordering::Acquire)
    }

    fn evictable(&self) -> bool {
        !self.busy() && !self.evict.load(Ordering::Acquire)
    }
}

/// The connection a request came on, in its extensions: a handler that gives up on
/// its response (a stream whose client stopped reading) closes it at once, rather
/// than leaving hyper to wait on the stalled write.
#[derive(Clone)]
pub struct Connection(Arc<Shared>);

impl Connection {
    pub fn close(&self) {
        self.0.abort.store(true, Ordering::Release);
        self.0.waker.wake();
    }
}

/// A request being served, from hyper's call until its response body is dropped.
struct InFlight(Arc<Shared>);

impl InFlight {
    fn begin(shared: &Arc<Shared>) -> InFlight {
        shared.in_flight.fetch_add(1, Ordering::AcqRel);
        shared.started.fetch_add(1, Ordering::AcqRel);
        InFlight(shared.clone())
    }
}

impl Drop for InFlight {
    fn drop(&mut self) {
        self.0.in_flight.fetch_sub(1, Ordering::AcqRel);
    }
}

/// A response body that keeps its request counted as in flight until hyper drops it.
struct Tracked {
    body: Body,
    _in_flight: InFlight,
}

impl http_body::Body for Tracked {
    type Data = Bytes;
    type Error = axum::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, axum::Error>>> {
        Pin::new(&mut self.get_mut().body).poll_frame(cx)
    }

    fn is_end_stream(&self) -> bool {
        self.body.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.body.size_hint()
    }
}

/// A socket tally closes on purpose (a stalled writer, a timeout, the cap, a given-up
/// response) is reset, not left to drain: what was buffered for a client that stopped
/// reading is dropped with the connection instead of lingering in the kernel.
trait Cut {
    fn reset_on_close(&self);
}

impl Cut for TcpStream {
    fn reset_on_close(&self) {
        // SO_LINGER 0: close sends RST and frees the buffers at once.
        let _ = self.set_zero_linger();
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Phase {
    /// Between a response and the next request's first byte.
    Idle,
    /// Reading a request's head (a new connection starts here).
    Head,
    /// Serving a request.
    Busy,
}

/// A connection's IO with the phases' timers, the stalled-write timer, and the
/// rewriting of hyper's own refusals.
struct Guarded<S> {
    inner: S,
    shared: Arc<Shared>,
    limits: ConnectionLimits,
    phase: Phase,
    /// `shared.started` when the phase was last decided.
    seen_started: u64,
    /// The current phase's deadline (armed on its first wait).
    read_deadline: Option<Pin<Box<Sleep>>>,
    /// Running while a write is pending; reset by any progress.
    stalled: Option<Pin<Box<Sleep>>>,
    /// hyper's own refusal, being replaced by the error body.
    refusal: Option<Refusal>,
}

impl<S: Cut> Guarded<S> {
    fn new(inner: S, shared: Arc<Shared>, limits: ConnectionLimits) -> Guarded<S> {
        Guarded {
            inner,
            shared,
            limits,
            phase: Phase::Head,
            seen_started: 0,
            read_deadline: None,
            stalled: None,
            refusal: None,
        }
    }

    /// Closes the connection on purpose: the error hyper gets, with the socket reset.
    fn cut(&self, kind: io::ErrorKind, why: &'static str) -> io::Error {
        self.inner.reset_on_close();
        io::Error::new(kind, why)
    }

    fn closing(&self) -> Option<io::Error> {
        self.shared.abort.load(Ordering::Acquire).then(|| {
            self.cut(
                io::ErrorKind::ConnectionAborted,
                "the response was given up",
            )
        })
    }

    /// Decides the phase from the requests begun and in flight since last time.
    fn update_phase(&mut self) {
        let started = self.shared.started.load(Ordering::Acquire);
        if self.shared.busy() {
            self.phase = Phase::Busy;
            self.read_deadline = None;
            self.seen_started = started;
        } else if self.phase == Phase::Busy || started != self.seen_started {
            // A response went out: idle until the next request's first byte.
            self.phase = Phase::Idle;
            self.read_deadline = None;
            self.seen_started = started;
        }
    }

    fn phase_limit(&self) -> Duration {
        match self.phase {
            Phase::Idle => self.limits.keep_alive_timeout,
            Phase::Head | Phase::Busy => self.limits.header_read_timeout,
        }
    }

    /// Reports a pending write and fails it once it has made no progress for the
    /// stall timeout; any progress resets the timer.
    fn check_stall<T>(
        &mut self,
        cx: &mut Context<'_>,
        poll: Poll<io::Result<T>>,
    ) -> Poll<io::Result<T>> {
        match poll {
            Poll::Ready(result) => {
                self.stalled = None;
                self.shared.writing.store(false, Ordering::Release);
                Poll::Ready(result)
            }
            Poll::Pending => {
                self.shared.writing.store(true, Ordering::Release);
                let limit = self.limits.stall_timeout;
                let timer = self
                    .stalled
                    .get_or_insert_with(|| Box::pin(tokio::time::sleep(limit)));
                match timer.as_mut().poll(cx) {
                    Poll::Ready(()) => {
                        tracing::info!(
                            timeout_secs = limit.as_secs(),
                            "client stopped reading; closing its connection"
                        );
                        Poll::Ready(Err(self.cut(
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

impl<S: AsyncWrite + Cut + Unpin> Guarded<S> {
    /// Writes what is left of the replacement for hyper's refusal; `Ready` once it is
    /// all out.
    fn drain_refusal(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        loop {
            let Some(refusal) = &mut self.refusal else {
                return Poll::Ready(Ok(()));
            };
            if refusal.written >= refusal.bytes.len() {
                return Poll::Ready(Ok(()));
            }
            let poll = Pin::new(&mut self.inner).poll_write(cx, &refusal.bytes[refusal.written..]);
            match self.check_stall(cx, poll) {
                Poll::Ready(Ok(0)) => return Poll::Ready(Err(io::ErrorKind::WriteZero.into())),
                Poll::Ready(Ok(n)) => {
                    if let Some(refusal) = &mut self.refusal {
                        refusal.written += n;
                    }
                }
                Poll::Ready(Err(error)) => return Poll::Ready(Err(error)),
                Poll::Pending => return Poll::Pending,
            }
        }
    }

    /// Takes `len` bytes of hyper's refusal, writing the replacement instead.
    fn swallow(&mut self, cx: &mut Context<'_>, len: usize) -> Poll<io::Result<usize>> {
        match self.drain_refusal(cx) {
            Poll::Ready(Ok(())) => Poll::Ready(Ok(len)),
            Poll::Ready(Err(error)) => Poll::Ready(Err(error)),
            Poll::Pending => Poll::Pending,
        }
    }

    /// Whether `head` is hyper's own refusal, written while nothing is served.
    fn starts_refusal(&mut self, head: &[u8]) -> bool {
        if self.refusal.is_some() || self.shared.in_flight.load(Ordering::Acquire) > 0 {
            return false;
        }
        match Refusal::of(head) {
            Some(refusal) => {
                tracing::debug!(
                    status = refusal.status,
                    "refused a request that could not be read"
                );
                self.refusal = Some(refusal);
                true
            }
            None => false,
        }
    }
}

impl<S: AsyncRead + Cut + Unpin> AsyncRead for Guarded<S> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = &mut *self;
        this.shared.waker.register(cx.waker());
        if let Some(error) = this.closing() {
            return Poll::Ready(Err(error));
        }
        this.update_phase();
        if this.phase != Phase::Busy && this.shared.evict.load(Ordering::Acquire) {
            return Poll::Ready(Err(this.cut(
                io::ErrorKind::ConnectionAborted,
                "closed to make room under server.max_connections",
            )));
        }
        let before = buf.filled().len();
        match Pin::new(&mut this.inner).poll_read(cx, buf) {
            Poll::Ready(Ok(())) => {
                if this.phase == Phase::Idle && buf.filled().len() > before {
                    // The next request began: its head has the head's time.
                    this.phase = Phase::Head;
                    this.read_deadline = Some(Box::pin(tokio::time::sleep(
                        this.limits.header_read_timeout,
                    )));
                }
                Poll::Ready(Ok(()))
            }
            Poll::Ready(Err(error)) => Poll::Ready(Err(error)),
            Poll::Pending if this.phase == Phase::Busy => Poll::Pending,
            Poll::Pending => {
                let limit = this.phase_limit();
                let deadline = this
                    .read_deadline
                    .get_or_insert_with(|| Box::pin(tokio::time::sleep(limit)));
                match deadline.as_mut().poll(cx) {
                    Poll::Ready(()) => {
                        tracing::debug!(phase = ?this.phase, timeout_secs = limit.as_secs(),
                            "closing a connection that sent no request in time");
                        Poll::Ready(Err(
                            this.cut(io::ErrorKind::TimedOut, "no request head in time")
                        ))
                    }
                    Poll::Pending => Poll::Pending,
                }
            }
        }
    }
}

impl<S: AsyncWrite + Cut + Unpin> AsyncWrite for Guarded<S> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let this = &mut *self;
        this.shared.waker.register(cx.waker());
        if let Some(error) = this.closing() {
            return Poll::Ready(Err(error));
        }
        if this.refusal.is_some() || this.starts_refusal(buf) {
            return this.swallow(cx, buf.len());
        }
        let poll = Pin::new(&mut this.inner).poll_write(cx, buf);
        this.check_stall(cx, poll)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let this = &mut *self;
        this.shared.waker.register(cx.waker());
        if let Some(error) = this.closing() {
            return Poll::Ready(Err(error));
        }
        let total = bufs.iter().map(|b| b.len()).sum();
        let first = bufs
            .iter()
            .find(|b| !b.is_empty())
            .map_or(&[][..], |b| &b[..]);
        if this.refusal.is_some() || this.starts_refusal(first) {
            return this.swallow(cx, total);
        }
        let poll = Pin::new(&mut this.inner).poll_write_vectored(cx, bufs);
        this.check_stall(cx, poll)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = &mut *self;
        this.shared.waker.register(cx.waker());
        if let Some(error) = this.closing() {
            return Poll::Ready(Err(error));
        }
        match this.drain_refusal(cx) {
            Poll::Ready(Ok(())) => {}
            other => return other,
        }
        let poll = Pin::new(&mut this.inner).poll_flush(cx);
        this.check_stall(cx, poll)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = &mut *self;
        match this.drain_refusal(cx) {
            Poll::Ready(Ok(())) => {}
            other => return other,
        }
        let poll = Pin::new(&mut this.inner).poll_shutdown(cx);
        this.check_stall(cx, poll)
    }
}

/// The response that replaces one hyper made by itself.
struct Refusal {
    status: u16,
    bytes: Vec<u8>,
    written: usize,
}

impl Refusal {
    /// hyper's refusals are a status line and headers with `content-length: 0`, a 4xx
    /// status, and nothing after the head. No answer of tally's looks like that: every
    /// error it sends has a body.
    fn of(head: &[u8]) -> Option<Refusal> {
        let text = std::str::from_utf8(head).ok()?;
        let rest = text.strip_prefix("HTTP/1.1 ")?;
        let status: u16 = rest.get(..3)?.parse().ok()?;
        let status = StatusCode::from_u16(status).ok()?;
        if !status.is_client_error() || !text.ends_with("\r\n\r\n") {
            return None;
        }
        let lines: Vec<&str> = text.trim_end_matches("\r\n").split("\r\n").collect();
        let empty = lines
            .iter()
            .any(|line| line.eq_ignore_ascii_case("content-length: 0"));
        if !empty {
            return None;
        }
        let error = error_bodies::framework_error(status);
        let body = error.body_bytes();
        let mut bytes = Vec::with_capacity(256 + body.len());
        bytes.extend_from_slice(lines[0].as_bytes());
        bytes.extend_from_slice(b"\r\n");
        for line in &lines[1..] {
            let name = line.split(':').next().unwrap_or("").trim();
            if name.eq_ignore_ascii_case("content-length")
                || name.eq_ignore_ascii_case("content-type")
                || name.eq_ignore_ascii_case("connection")
            {
                continue;
            }
            bytes.extend_from_slice(line.as_bytes());
            bytes.extend_from_slice(b"\r\n");
        }
        let headers = format!(
            "content-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\nx-request-id: {}\r\n\r\n",
            body.len(),
            uuid::Uuid::new_v4()
        );
        bytes.extend_from_slice(headers.as_bytes());
        bytes.extend_from_slice(&body);
        Some(Refusal {
            status: status.as_u16(),
            bytes,
            written: 0,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt, DuplexStream};

    impl Cut for DuplexStream {
        fn reset_on_close(&self) {}
    }

    fn limits() -> ConnectionLimits {
        ConnectionLimits {
            max_connections: 4,
            header_read_timeout: Duration::from_millis(200),
            keep_alive_timeout: Duration::from_millis(200),
            stall_timeout: Duration::from_millis(50),
        }
    }

    #[tokio::test]
    async fn a_write_pending_for_longer_than_the_limit_fails() {
        // A duplex pipe nobody reads: writes go pending once its buffer is full.
        let (client, _unread) = tokio::io::duplex(64);
        let shared = Arc::new(Shared::new(0));
        let _serving = InFlight::begin(&shared);
        let mut guarded = Guarded::new(client, shared, limits());
        let error = guarded
            .write_all(&[0; 4096])
            .await
            .expect_err("the stalled write times out");
        assert_eq!(error.kind(), io::ErrorKind::TimedOut);
    }

    #[tokio::test]
    async fn hypers_empty_refusals_get_the_error_body_and_nothing_else_is_touched() {
        let (server, mut client) = tokio::io::duplex(4096);
        let mut guarded = Guarded::new(server, Arc::new(Shared::new(0)), limits());
        let head = b"HTTP/1.1 431 Request Header Fields Too Large\r\ncontent-length: 0\r\ndate: Sat, 05 Dec 2026 10:00:00 GMT\r\n\r\n";
        guarded.write_all(head).await.expect("written");
        guarded.shutdown().await.expect("shut down");
        drop(guarded);
        let mut answer = String::new();
        client.read_to_string(&mut answer).await.expect("read");
        assert!(
            answer.starts_with("HTTP/1.1 431 Request Header Fields Too Large\r\n"),
            "{answer}"
        );
        assert!(
            answer.contains("content-type: application/json\r\n"),
            "{answer}"
        );
        assert!(
            answer.contains("date: Sat, 05 Dec 2026 10:00:00 GMT\r\n"),
            "{answer}"
        );
        let body = &answer[answer.find("\r\n\r\n").expect("a head") + 4..];
        let body: serde_json::Value = serde_json::from_str(body).expect("json");
        assert_eq!(body["code"], "headers-too-large");

        // A response with a body, or any write while a request is served, passes.
        for (serving, bytes) in [
            (false, &b"HTTP/1.1 400 Bad Request\r\ncontent-type: application/json\r\ncontent-length: 2\r\n\r\n{}"[..]),
            (true, &b"HTTP/1.1 400 Bad Request\r\ncontent-length: 0\r\n\r\n"[..]),
        ] {
            let (server, mut client) = tokio::io::duplex(4096);
            let shared = Arc::new(Shared::new(0));
            let _serving = serving.then(|| InFlight::begin(&shared));
            let mut guarded = Guarded::new(server, shared.clone(), limits());
            guarded.write_all(bytes).await.expect("written");
            guarded.shutdown().await.expect("shut down");
            drop(guarded);
            let mut answer = Vec::new();
            client.read_to_end(&mut answer).await.expect("read");
            assert_eq!(answer, bytes);
        }
    }

    #[tokio::test]
    async fn a_connection_that_sends_no_head_in_time_is_closed_but_a_busy_one_is_not() {
        let (server, _client) = tokio::io::duplex(64);
        let mut guarded = Guarded::new(server, Arc::new(Shared::new(0)), limits());
        let mut buf = [0u8; 16];
        let error = guarded.read(&mut buf).await.expect_err("timed out");
        assert_eq!(error.kind(), io::ErrorKind::TimedOut);

        let (server, _client) = tokio::io::duplex(64);
        let shared = Arc::new(Shared::new(0));
        let _serving = InFlight::begin(&shared);
        let mut guarded = Guarded::new(server, shared, limits());
        let waited = tokio::time::timeout(Duration::from_millis(600), guarded.read(&mut buf)).await;
        assert!(
            waited.is_err(),
            "a connection serving a request has no read timer"
        );
    }
}
