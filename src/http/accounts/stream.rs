//! A streamed listing (`all=true`, or a page above `STREAM_ABOVE`): the first chunk by
//! offset, the rest by keyset, written as one JSON array while the client reads it.

use std::time::Duration;

use axum::body::{Body, Bytes};
use axum::http::{header, HeaderValue};
use axum::response::{IntoResponse, Response};
use futures::StreamExt;
use serde::Serialize;
use tokio::sync::{mpsc, oneshot};
use tokio_stream::wrappers::ReceiverStream;
use tokio_util::task::TaskTracker;

use super::params::ListQuery;
use super::record::StripeAccountRecord;
use super::{unknown_owner, X_TOTAL_COUNT};
use crate::domain::OwnerId;
use crate::http::auth::TenantScope;
use crate::http::connections::Connection;
use crate::http::error::ApiError;
use crate::http::streams::StreamSlot;
use crate::http::AppState;
use crate::store;
use crate::store::accounts::{AccountRow, ListingKey, CHUNK_ROWS};

/// Records per piece written to a streamed body.
const ROWS_PER_PIECE: usize = 64;
/// A piece is sent at this size too, whatever its records: large objects do not pile
/// up in one.
const PIECE_BYTES: usize = 64 * 1024;
/// What a chunk's rows should come to, in bytes: a stream holds two chunks (one
/// written while the next is read), so about twice this per stream while its objects
/// keep their size, 128 MiB with `api.max_streams` (32) all open. Objects of 370 bytes
/// still come [`CHUNK_ROWS`] at a time. A chunk is sized from the one before it, so a
/// jump from small objects to large ones reads one chunk of up to [`CHUNK_ROWS`] large
/// ones before the size follows.
const CHUNK_BYTES: usize = 2 << 20;
/// The first chunk's rows, read before any object's size is known: two megabytes with
/// 32 KiB objects.
const FIRST_CHUNK_ROWS: usize = 64;
/// The fewest rows a chunk asks for, whatever the objects' size.
const MIN_CHUNK_ROWS: usize = 16;
/// Pieces buffered between a stream's reader and its client.
const PIECES_BUFFERED: usize = 4;

/// A streamed listing: `all=true`, or a page above [`STREAM_ABOVE`]. The first chunk
/// is an ordinary offset page (with the total for `X-Total-Count`); the rest follow
/// by keyset, one short query per chunk, so the stream holds a pooled connection only
/// while a chunk is read. The body is the same JSON array, in the same order, as the
/// offset pages would give.
pub(super) async fn stream_listing(
    state: &AppState,
    scope: &TenantScope,
    query: ListQuery,
    connection: Option<Connection>,
) -> Result<Response, ApiError> {
    let slot = state.streams.open(scope.token_id)?;
    let (offset, wanted) = if query.all {
        (0, usize::MAX)
    } else {
        let limit = usize::try_from(query.limit).unwrap_or(usize::MAX);
        (query.offset, limit)
    };
    let owner = query.owner;
    let first_chunk = wanted.min(FIRST_CHUNK_ROWS);
    let first = {
        let _turn = slot.read_turn().await;
        store::accounts::page_with_total(
            &state.pool,
            scope.tenant.id,
            owner.as_ref(),
            offset,
            i64::try_from(first_chunk).expect("a chunk fits i64"),
        )
        .await?
    };
    if owner.is_some() && first.total == 0 {
        return Err(unknown_owner());
    }
    let listing = StreamedListing {
        pool: state.pool.clone(),
        tenant_id: scope.tenant.id,
        slug: scope.tenant.slug.clone(),
        owner,
        wanted,
        tasks: state.tasks.tracker.clone(),
    };
    let body = listing.spawn(slot, first.rows, first_chunk, connection);
    let mut response = (
        [(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/json"),
        )],
        body,
    )
        .into_response();
    response
        .headers_mut()
        .insert(X_TOTAL_COUNT.clone(), HeaderValue::from(first.total));
    Ok(response)
}

/// What a streamed listing reads, and how much of it.
struct StreamedListing {
    pool: sqlx::PgPool,
    tenant_id: i64,
    slug: String,
    owner: Option<OwnerId>,
    /// Records to send at most (`usize::MAX`: every one).
    wanted: usize,
    /// The process's tracker: the stream and its chunk reads run on it.
    tasks: TaskTracker,
}

/// Why a stream ended before its closing bracket.
#[derive(Debug)]
enum StreamStop {
    /// The client went away.
    Gone,
    /// The client took nothing for the idle timeout.
    Idle,
    Failed(anyhow::Error),
}

impl StreamedListing {
    /// Starts the reader task and returns the body it feeds. The body ends with an
    /// error (the connection is cut, so the client sees an incomplete response, never
    /// a short array) unless the reader got to the closing bracket. A client that
    /// took nothing for the idle timeout loses its slot and its connection together:
    /// the connection is closed at once, not left to hyper's stalled write. The task runs
    /// on the process's tracker, so a shutdown waits for the streams being sent.
    fn spawn(
        self,
        slot: StreamSlot,
        first: Vec<AccountRow>,
        first_asked: usize,
        connection: Option<Connection>,
    ) -> Body {
        let (pieces, receiver) = mpsc::channel::<Bytes>(PIECES_BUFFERED);
        let (finished, completed) = oneshot::channel::<()>();
        let tasks = self.tasks.clone();
        tasks.spawn(async move {
            let mut out = ArrayWriter::new(pieces, slot.idle_timeout());
            let outcome = self.run(&slot, &mut out, first, first_asked).await;
            match outcome {
                Ok(()) => {
                    let _ = finished.send(());
                }
                Err(StreamStop::Gone) => tracing::debug!("the client left a streamed listing"),
                Err(StreamStop::Idle) => {
                    tracing::info!(
                        timeout_secs = slot.idle_timeout().as_secs(),
                        "the client stopped reading a streamed listing; ended it and closed its connection"
                    );
                    if let Some(connection) = &connection {
                        connection.close();
                    }
                }
                Err(StreamStop::Failed(error)) => {
                    tracing::error!(error = ?error, "streaming stripe-accounts failed");
                }
            }
            // The slot is freed here, with the task.
        });
        let ending = futures::stream::once(async move {
            match completed.await {
                Ok(()) => None,
                Err(_) => Some(Err(std::io::Error::other("the listing stream ended early"))),
            }
        })
        .filter_map(std::future::ready);
        Body::from_stream(
            ReceiverStream::new(receiver)
                .map(Ok::<_, std::io::Error>)
                .chain(ending),
        )
    }

    /// Writes `rows` while the chunk after them is read by a task of its own, so
    /// Postgres makes the next chunk, and this process decodes it, while this one is
    /// serialised and sent: at most two chunks are in memory.
    async fn run(
        &self,
        slot: &StreamSlot,
        out: &mut ArrayWriter,
        mut rows: Vec<AccountRow>,
        mut asked: usize,
    ) -> Result<(), StreamStop> {
        let mut left = self.wanted;
        loop {
            let more_stored = rows.len() >= asked;
            let sending = rows.len().min(left);
            left -= sending;
            let after = rows
                .last()
                .filter(|_| left > 0 && more_stored)
                .map(ListingKey::from);
            let next_rows = chunk_rows(&rows);
            let next = async {
                let Some(after) = after else {
                    return Ok(None);
                };
                let _turn = slot.read_turn().await;
                let (pool, tenant_id, owner) =
                    (self.pool.clone(), self.tenant_id, self.owner.clone());
                let read = self.tasks.spawn(async move {
                    store::accounts::chunk_after(
                        &pool,
                        tenant_id,
                        owner.as_ref(),
                        &after,
                        next_rows,
                    )
                    .await
                });
                match read.await {
                    Ok(Ok(rows)) => Ok(Some(rows)),
                    Ok(Err(error)) => Err(StreamStop::Failed(error.into())),
                    Err(error) => Err(StreamStop::Failed(error.into())),
                }
            };
            let write = async {
                for row in &rows[..sending] {
                    let record = StripeAccountRecord::new(row, &self.slug)
                        .map_err(|error| StreamStop::Failed(error.into()))?;
                    out.push(&record).await?;
                }
                Ok::<(), StreamStop>(())
            };
            let (next, written) = tokio::join!(next, write);
            if let (Err(_), Err(StreamStop::Failed(error))) = (&written, &next) {
                tracing::error!(error = ?error, "reading the next chunk of a listing failed");
            }
            written?;
            match next? {
                Some(chunk) => rows = chunk,
                None => break,
            }
            asked = next_rows;
        }
        out.finish().await
    }
}

/// How many rows the chunk after `rows` asks for: as many as fit [`CHUNK_BYTES`] at
/// the size `rows` had, rounded down to a power of two (few statement shapes, each
/// with its cached plan), from [`MIN_CHUNK_ROWS`] to [`CHUNK_ROWS`].
fn chunk_rows(rows: &[AccountRow]) -> usize {
    if rows.is_empty() {
        return CHUNK_ROWS;
    }
    let bytes: usize = rows.iter().map(row_bytes).sum();
    let per_row = (bytes / rows.len()).max(1);
    let fit = (CHUNK_BYTES / per_row).max(1);
    (1usize << fit.ilog2()).clamp(MIN_CHUNK_ROWS, CHUNK_ROWS)
}

/// What a row holds in memory, roughly: its text and the struct around it.
fn row_bytes(row: &AccountRow) -> usize {
    std::mem::size_of::<AccountRow>()
        + row.stripe_object.len()
        + row.stripeid.len()
        + row.accountid.as_ref().map_or(0, String::len)
        + row.platform_id.as_ref().map_or(0, String::len)
}

/// Writes records as one JSON array, a piece of [`ROWS_PER_PIECE`] records (or
/// [`PIECE_BYTES`]) at a time.
struct ArrayWriter {
    pieces: mpsc::Sender<Bytes>,
    idle_timeout: Duration,
    buffer: Vec<u8>,
    buffered: usize,
    written: usize,
}

impl ArrayWriter {
    fn new(pieces: mpsc::Sender<Bytes>, idle_timeout: Duration) -> ArrayWriter {
        ArrayWriter {
            pieces,
            idle_timeout,
            buffer: b"[".to_vec(),
            buffered: 0,
            written: 0,
        }
    }

    async fn push(&mut self, record: &impl Serialize) -> Result<(), StreamStop> {
        if self.written > 0 {
            self.buffer.push(b',');
        }
        serde_json::to_writer(&mut self.buffer, record)
            .map_err(|error| StreamStop::Failed(error.into()))?;
        self.written += 1;
        self.buffered += 1;
        if self.buffered >= ROWS_PER_PIECE || self.buffer.len() >= PIECE_BYTES {
            self.send().await?;
        }
        Ok(())
    }

    async fn finish(&mut self) -> Result<(), StreamStop> {
        self.buffer.push(b']');
        self.send().await
    }

    async fn send(&mut self) -> Result<(), StreamStop> {
        let piece = Bytes::from(std::mem::take(&mut self.buffer));
        self.buffered = 0;
        match tokio::time::timeout(self.idle_timeout, self.pieces.send(piece)).await {
            Ok(Ok(())) => Ok(()),
            Ok(Err(_)) => Err(StreamStop::Gone),
            Err(_) => Err(StreamStop::Idle),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rows_of(object_bytes: usize, n: usize) -> Vec<AccountRow> {
        let row = AccountRow {
            stripeid: "acct_1Chunk0000000001".to_owned(),
            accountid: Some("owner_1".to_owned()),
            platform_id: None,
            stripe_object: "x".repeat(object_bytes),
            created_at: chrono::Utc::now(),
            updated_at: chrono::Utc::now(),
            removed_at: None,
        };
        vec![row; n]
    }

    #[test]
    fn chunks_hold_about_two_megabytes_whatever_the_objects_size() {
        // Small objects (the bench's 370 bytes): the row cap rules.
        assert_eq!(chunk_rows(&rows_of(370, 256)), CHUNK_ROWS);
        for object_bytes in [2_000, 5_000, 20_000, 100_000] {
            let rows = chunk_rows(&rows_of(object_bytes, 256));
            assert!(rows.is_power_of_two(), "{rows}");
            let chunk = rows_of(object_bytes, rows);
            let held: usize = chunk.iter().map(row_bytes).sum();
            assert!(
                held <= CHUNK_BYTES,
                "{object_bytes}: {rows} rows, {held} bytes"
            );
            // At most a power of two below the fit: never less than half the target.
            assert!(
                2 * held > CHUNK_BYTES,
                "{object_bytes}: {rows} rows, {held} bytes"
            );
        }
        // Huge objects still move: a few rows per chunk.
        assert_eq!(chunk_rows(&rows_of(1 << 20, 4)), MIN_CHUNK_ROWS);
    }
}
