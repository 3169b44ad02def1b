//! How long a client connection stays open, for both listeners.
//!
//! The API server calls a Service webhook over HTTP/1.1 and keeps idle connections in a pool
//! for 90 s (Go's `IdleConnTimeout`), reusing them for the next review. A server that closes an
//! idle connection first races that reuse: a review written into a connection being closed
//! fails ("connection reset by peer"), the API server does not retry a POST, and with
//! `failurePolicy: Fail` the request it judged fails, a person's as much as an agent's.
//! hyper's header timeout runs while a kept-alive connection waits for its next request, so it
//! closed every idle connection after 5 s; it is off, and these two deadlines replace it:
//! - **idle**: no byte either way for [`IDLE_TIMEOUT`], longer than the API server keeps an
//!   idle connection, so the client closes it first;
//! - **request** (HTTP/1.1): from a request's first byte to the first byte of its answer at most
//!   [`REQUEST_DEADLINE`], so a client that sends a request slowly or never finishes it
//!   (slowloris) cannot hold a connection. HTTP/2 frames that need no answer (window updates,
//!   settings acknowledgements) would look like an unanswered request, so there only the idle
//!   deadline applies.
//!
//! On shutdown the remaining race is taken away by [`close_when_draining`]: while a replica
//! drains, each answer tells the client to close the connection itself.

use std::future::Future;
use std::io;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use axum::extract::{Request, State};
use axum::http::{HeaderValue, Version, header};
use axum::middleware::Next;
use axum::response::Response;
use axum_server::accept::Accept;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::time::{Instant, Sleep};

use crate::index::Readiness;

/// A connection with no byte either way for this long is closed. Longer than the 90 s the API
/// server (Go's HTTP client) keeps an idle connection, so it is the client that closes.
pub const IDLE_TIMEOUT: Duration = Duration::from_secs(120);
/// An HTTP/1.1 request must be answered within this time of its first byte: the headers and
/// body arrive, and the handler (bounded by `webhook::REQUEST_TIMEOUT`, 10 s) answers.
pub const REQUEST_DEADLINE: Duration = Duration::from_secs(15);

/// The deadlines of one listener.
#[derive(Debug, Clone, Copy)]
pub struct Deadlines {
    pub idle: Duration,
    pub request: Duration,
}

impl Default for Deadlines {
    fn default() -> Self {
        Self {
            idle: IDLE_TIMEOUT,
            request: REQUEST_DEADLINE,
        }
    }
}

/// Whether a stream speaks HTTP/2 (negotiated with ALPN), where only the idle deadline applies.
pub trait Negotiated {
    fn is_http2(&self) -> bool;
}

impl Negotiated for tokio::net::TcpStream {
    /// Plain HTTP (the metrics port): Prometheus and the kubelet's probes speak HTTP/1.1.
    fn is_http2(&self) -> bool {
        false
    }
}

impl<S> Negotiated for tokio_rustls::server::TlsStream<S> {
    fn is_http2(&self) -> bool {
        self.get_ref().1.alpn_protocol() == Some(b"h2")
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Phase {
    /// Answered (or new): waiting for the next request.
    Idle,
    /// A request's first byte has arrived and no answer has been written yet.
    Request,
}

/// A stream that fails its reads with `TimedOut` once a [`Deadlines`] deadline passes; hyper
/// then closes the connection.
pub struct Timed<S> {
    inner: S,
    deadlines: Deadlines,
    /// HTTP/1.1: requests are timed from their first byte.
    time_requests: bool,
    phase: Phase,
    deadline: Pin<Box<Sleep>>,
}

impl<S> Timed<S> {
    pub fn new(inner: S, deadlines: Deadlines, time_requests: bool) -> Self {
        Self {
            inner,
            deadlines,
            time_requests,
            phase: Phase::Idle,
            deadline: Box::pin(tokio::time::sleep(deadlines.idle)),
        }
    }

    fn on_read(&mut self) {
        if !self.time_requests {
            self.deadline
                .as_mut()
                .reset(Instant::now() + self.deadlines.idle);
        } else if self.phase == Phase::Idle {
            self.phase = Phase::Request;
            self.deadline
                .as_mut()
                .reset(Instant::now() + self.deadlines.request);
        }
    }

    fn on_write(&mut self) {
        self.phase = Phase::Idle;
        self.deadline
            .as_mut()
            .reset(Instant::now() + self.deadlines.idle);
    }

    fn expired(&self) -> io::Error {
        let why = match self.phase {
            Phase::Idle => format!("idle for {:?}", self.deadlines.idle),
            Phase::Request => format!("request not complete within {:?}", self.deadlines.request),
        };
        io::Error::new(io::ErrorKind::TimedOut, why)
    }
}

impl<S: AsyncRead + Unpin> AsyncRead for Timed<S> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = &mut *self;
        let before = buf.filled().len();
        match Pin::new(&mut this.inner).poll_read(cx, buf) {
            Poll::Ready(Ok(())) => {
                if buf.filled().len() > before {
                    this.on_read();
                }
                Poll::Ready(Ok(()))
            }
            Poll::Ready(Err(err)) => Poll::Ready(Err(err)),
            Poll::Pending => match this.deadline.as_mut().poll(cx) {
                Poll::Ready(()) => Poll::Ready(Err(this.expired())),
                Poll::Pending => Poll::Pending,
            },
        }
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for Timed<S> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let this = &mut *self;
        let written = Pin::new(&mut this.inner).poll_write(cx, buf);
        if matches!(written, Poll::Ready(Ok(n)) if n > 0) {
            this.on_write();
        }
        written
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let this = &mut *self;
        let written = Pin::new(&mut this.inner).poll_write_vectored(cx, bufs);
        if matches!(written, Poll::Ready(Ok(n)) if n > 0) {
            this.on_write();
        }
        written
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

/// Wraps what `inner` accepts (a TLS stream, or the TCP stream itself) in [`Timed`].
#[derive(Debug, Clone)]
pub struct DeadlineAcceptor<A> {
    inner: A,
    deadlines: Deadlines,
}

impl<A> DeadlineAcceptor<A> {
    pub fn new(inner: A, deadlines: Deadlines) -> Self {
        Self { inner, deadlines }
    }
}

impl<A, I, S> Accept<I, S> for DeadlineAcceptor<A>
where
    A: Accept<I, S>,
    A::Stream: Negotiated,
    A::Future: Send + 'static,
{
    type Stream = Timed<A::Stream>;
    type Service = A::Service;
    type Future = Pin<Box<dyn Future<Output = io::Result<(Self::Stream, Self::Service)>> + Send>>;

    fn accept(&self, stream: I, service: S) -> Self::Future {
        let accepted = self.inner.accept(stream, service);
        let deadlines = self.deadlines;
        Box::pin(async move {
            let (stream, service) = accepted.await?;
            let time_requests = !stream.is_http2();
            Ok((Timed::new(stream, deadlines, time_requests), service))
        })
    }
}

/// Middleware: while the replica drains after SIGTERM, every HTTP/1.1 answer carries
/// `Connection: close`, so the client closes each connection it uses here once it has read the
/// answer, and sends its next request to a replica still in the endpoints. Closing them from
/// this side instead would race the client's next request on them. (HTTP/2 has GOAWAY, which
/// the graceful shutdown sends.)
pub async fn close_when_draining(
    State(readiness): State<Readiness>,
    request: Request,
    next: Next,
) -> Response {
    let http1 = request.version() < Version::HTTP_2;
    let mut response = next.run(request).await;
    if http1 && readiness.is_stopping() {
        response
            .headers_mut()
            .insert(header::CONNECTION, HeaderValue::from_static("close"));
    }
    response
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt, DuplexStream, duplex};

    const LIMITS: Deadlines = Deadlines {
        idle: Duration::from_secs(120),
        request: Duration::from_secs(15),
    };

    fn pair(time_requests: bool) -> (Timed<DuplexStream>, DuplexStream) {
        let (server, client) = duplex(1024);
        (Timed::new(server, LIMITS, time_requests), client)
    }

    /// Reads on `server` until it fails or `within` passes; the error kind, if any.
    async fn read_fails_within(
        server: &mut Timed<DuplexStream>,
        within: Duration,
    ) -> Option<io::ErrorKind> {
        let mut buf = [0u8; 64];
        match tokio::time::timeout(within, server.read(&mut buf)).await {
            Ok(Err(err)) => Some(err.kind()),
            Ok(Ok(n)) => panic!("read {n} bytes, expected none"),
            Err(_) => None,
        }
    }

    #[tokio::test(start_paused = true)]
    async fn an_idle_connection_outlives_the_api_servers_idle_pool() {
        let (mut server, mut client) = pair(true);
        // A request answered, then nothing: still open at 119 s (the API server closes its idle
        // connections at 90 s), closed at 120 s.
        client.write_all(b"GET / HTTP/1.1\r\n\r\n").await.unwrap();
        let mut buf = [0u8; 64];
        let n = server.read(&mut buf).await.unwrap();
        assert!(n > 0);
        server.write_all(b"HTTP/1.1 200 OK\r\n\r\n").await.unwrap();
        assert_eq!(
            read_fails_within(&mut server, Duration::from_secs(119)).await,
            None
        );
        assert_eq!(
            read_fails_within(&mut server, Duration::from_secs(2)).await,
            Some(io::ErrorKind::TimedOut)
        );
    }

    #[tokio::test(start_paused = true)]
    async fn a_request_that_never_completes_is_cut_off_after_the_request_deadline() {
        let (mut server, mut client) = pair(true);
        client
            .write_all(b"POST /validate HTTP/1.1\r\n")
            .await
            .unwrap();
        let mut buf = [0u8; 64];
        assert!(server.read(&mut buf).await.unwrap() > 0);
        // More bytes, slowly: they do not move the deadline.
        for _ in 0..10 {
            tokio::time::sleep(Duration::from_secs(1)).await;
            client.write_all(b"X-Slow: 1\r\n").await.unwrap();
            assert!(server.read(&mut buf).await.unwrap() > 0);
        }
        assert_eq!(
            read_fails_within(&mut server, Duration::from_secs(6)).await,
            Some(io::ErrorKind::TimedOut)
        );
    }

    #[tokio::test(start_paused = true)]
    async fn an_answer_starts_the_idle_deadline_again() {
        let (mut server, mut client) = pair(true);
        let mut buf = [0u8; 64];
        for _ in 0..5 {
            client.write_all(b"GET / HTTP/1.1\r\n\r\n").await.unwrap();
            assert!(server.read(&mut buf).await.unwrap() > 0);
            // Answered after 10 s each time: 50 s of requests, never over a deadline.
            tokio::time::sleep(Duration::from_secs(10)).await;
            server.write_all(b"HTTP/1.1 200 OK\r\n\r\n").await.unwrap();
            assert_eq!(
                read_fails_within(&mut server, Duration::from_secs(60)).await,
                None
            );
        }
    }

    #[tokio::test(start_paused = true)]
    async fn http2_frames_that_need_no_answer_do_not_start_a_request_deadline() {
        let (mut server, mut client) = pair(false);
        let mut buf = [0u8; 64];
        // A window update after an answer: read, never answered, and the connection stays.
        client.write_all(b"\0\0\x04\x08\0\0\0\0\0").await.unwrap();
        assert!(server.read(&mut buf).await.unwrap() > 0);
        assert_eq!(
            read_fails_within(&mut server, Duration::from_secs(100)).await,
            None
        );
        assert_eq!(
            read_fails_within(&mut server, Duration::from_secs(30)).await,
            Some(io::ErrorKind::TimedOut)
        );
    }
}
