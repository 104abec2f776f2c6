//! The service's listener: at most [`Limits::max_connections`] connections served at once
//! (as many more wait, accepted, for a slot; beyond that a connection is closed at once),
//! and a connection on which no byte moves
//! either way for [`Limits::idle`] is closed. With the body-read bound in `http` (a body
//! must arrive within the same time), a client that sends headers and then a trickle, or
//! nothing, cannot hold a connection for ever.
//!
//! Against a slow-client denial (slowloris: many sockets each trickling a header byte now
//! and then, every byte resetting an idle timer):
//! * a request's head (its request line and headers) must arrive whole within
//!   [`Limits::head`] of its first byte, however the bytes trickle; bytes that never make
//!   a head (not HTTP) meet the same bound;
//! * one client address holds at most [`Limits::per_client`] connections; more are closed
//!   at once;
//! * an eighth of the slots is a reserve for addresses that hold no connection yet, so
//!   while one address (or a few) fills the rest, others are still answered; a connection
//!   waits for its slot on its own, so an address's queue holds up no one else's.

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::pin::Pin;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::task::{Context, Poll};
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{OwnedSemaphorePermit, Semaphore, mpsc};
use tokio::time::{Instant, Sleep};

/// How many connections, from one client and in all, and how long one may sit idle or
/// take to send a request's head.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    pub max_connections: usize,
    pub idle: Duration,
    /// A request's head must arrive whole within this of its first byte.
    pub head: Duration,
    /// At most this many connections from one client address.
    pub per_client: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            max_connections: 1024,
            idle: Duration::from_secs(60),
            head: Duration::from_secs(10),
            per_client: 64,
        }
    }
}

/// Connections held, per client address.
type PerClient = Arc<Mutex<HashMap<IpAddr, usize>>>;

/// The slots and who holds them, shared by the acceptor and the connections waiting.
struct Gate {
    /// The slots anyone may take.
    permits: Arc<Semaphore>,
    /// The slots kept for addresses that hold no connection yet.
    reserve: Arc<Semaphore>,
    per_client: PerClient,
    /// Connections accepted and waiting for a slot.
    waiting: AtomicUsize,
    limits: Limits,
}

impl Gate {
    /// Counts a connection from `address` against its share; `None` when the address holds
    /// its most already. The connections it held before this one come back too.
    fn admit(self: &Arc<Self>, address: IpAddr) -> Option<(ClientShare, usize)> {
        let mut held = self.per_client.lock().unwrap_or_else(PoisonError::into_inner);
        let n = held.entry(address).or_default();
        if *n >= self.limits.per_client {
            return None;
        }
        *n += 1;
        Some((ClientShare { address, per_client: self.per_client.clone() }, *n - 1))
    }

    /// A slot for a connection from an address that held `held` connections before it:
    /// one anyone may take, else one of the reserve for a newcomer, else the next that
    /// frees up (a newcomer also takes the next reserve slot that frees up).
    async fn slot(&self, held: usize) -> OwnedSemaphorePermit {
        if let Ok(permit) = self.permits.clone().try_acquire_owned() {
            return permit;
        }
        if held > 0 {
            return self.permits.clone().acquire_owned().await.expect("the semaphore is never closed");
        }
        if let Ok(permit) = self.reserve.clone().try_acquire_owned() {
            return permit;
        }
        tokio::select! {
            permit = self.permits.clone().acquire_owned() => permit.expect("the semaphore is never closed"),
            permit = self.reserve.clone().acquire_owned() => permit.expect("the semaphore is never closed"),
        }
    }
}

/// Takes connections as they come, and hands each to the server once it has a slot: a
/// connection waits for its slot on its own, so one address's queue does not hold up a
/// newcomer's (which may take the reserve).
pub struct GuardedListener {
    /// Until the first `accept`, which starts the acceptor with it.
    inner: Option<TcpListener>,
    local: std::io::Result<SocketAddr>,
    gate: Arc<Gate>,
    ready: Option<mpsc::Receiver<(Guarded, SocketAddr)>>,
    /// The acceptor, stopped when the server drops its listener (a standby's, when it
    /// takes the lead, hands the socket over: no connection may be taken after that).
    acceptor: Option<tokio::task::AbortHandle>,
}

impl Drop for GuardedListener {
    fn drop(&mut self) {
        if let Some(acceptor) = &self.acceptor {
            acceptor.abort();
        }
    }
}

impl GuardedListener {
    pub fn new(inner: TcpListener, limits: Limits) -> Self {
        let all = limits.max_connections.max(1);
        let reserve = if all >= 8 { all / 8 } else { 0 };
        let gate = Gate {
            permits: Arc::new(Semaphore::new(all - reserve)),
            reserve: Arc::new(Semaphore::new(reserve)),
            per_client: Arc::default(),
            waiting: AtomicUsize::new(0),
            limits,
        };
        Self {
            local: inner.local_addr(),
            inner: Some(inner),
            gate: Arc::new(gate),
            ready: None,
            acceptor: None,
        }
    }
}

/// Accepts connections until the server stops taking them (its listener is dropped: a
/// standby's, when it takes the lead, hands the socket over): over an address's share, or
/// with as many waiting as there are slots, a connection is closed at once; else it waits
/// for its slot on a task of its own and then goes to the server.
async fn acceptor(listener: TcpListener, gate: Arc<Gate>, ready: mpsc::Sender<(Guarded, SocketAddr)>) {
    loop {
        let accepted = tokio::select! {
            () = ready.closed() => return,
            accepted = listener.accept() => accepted,
        };
        let (stream, address) = match accepted {
            Ok(accepted) => accepted,
            // Out of file descriptors and the like: wait a moment rather than spin.
            Err(e) => {
                eprintln!("dibs: accepting a connection: {e}");
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        let Some((share, held)) = gate.admit(address.ip()) else { continue };
        if gate.waiting.load(Ordering::Relaxed) >= gate.limits.max_connections.max(1) {
            continue;
        }
        gate.waiting.fetch_add(1, Ordering::Relaxed);
        let (gate, ready) = (gate.clone(), ready.clone());
        tokio::spawn(async move {
            let permit = gate.slot(held).await;
            gate.waiting.fetch_sub(1, Ordering::Relaxed);
            let _ = stream.set_nodelay(true);
            let idle = gate.limits.idle;
            let guarded = Guarded {
                stream,
                _permit: permit,
                _share: share,
                idle,
                deadline: Box::pin(tokio::time::sleep(idle)),
                head: Head::new(gate.limits.head),
            };
            let _ = ready.send((guarded, address)).await;
        });
    }
}

/// A client address's share of the connections: counted while the connection lives.
struct ClientShare {
    address: IpAddr,
    per_client: PerClient,
}

impl Drop for ClientShare {
    fn drop(&mut self) {
        let mut held = self.per_client.lock().unwrap_or_else(PoisonError::into_inner);
        if let Some(n) = held.get_mut(&self.address) {
            *n -= 1;
            if *n == 0 {
                held.remove(&self.address);
            }
        }
    }
}

impl axum::serve::Listener for GuardedListener {
    type Io = Guarded;
    type Addr = SocketAddr;

    async fn accept(&mut self) -> (Self::Io, Self::Addr) {
        if let Some(listener) = self.inner.take() {
            let (ready, from) = mpsc::channel(64);
            self.acceptor = Some(tokio::spawn(acceptor(listener, self.gate.clone(), ready)).abort_handle());
            self.ready = Some(from);
        }
        match self.ready.as_mut().expect("started above").recv().await {
            Some(connection) => connection,
            // The acceptor never ends; were it gone, no connection would ever come.
            None => std::future::pending().await,
        }
    }

    fn local_addr(&self) -> std::io::Result<Self::Addr> {
        self.local.as_ref().map(|a| *a).map_err(|e| std::io::Error::new(e.kind(), e.to_string()))
    }
}

/// A connection that holds its slot until it closes, and times out when idle or when a
/// request's head takes too long.
pub struct Guarded {
    stream: TcpStream,
    _permit: OwnedSemaphorePermit,
    _share: ClientShare,
    idle: Duration,
    deadline: Pin<Box<Sleep>>,
    head: Head,
}

/// Where a connection is in reading a request's head: the deadline runs from the head's
/// first byte to the blank line that ends it (`\r\n\r\n`). The body that follows is
/// bounded by `http`; the next head starts after the response is written.
struct Head {
    limit: Duration,
    /// Reading a head, which must end by then.
    by: Option<Pin<Box<Sleep>>>,
    /// Whether the head is in (until the response is written).
    done: bool,
    /// The last bytes read, to find `\r\n\r\n` across reads.
    tail: u32,
}

impl Head {
    fn new(limit: Duration) -> Self {
        Self { limit, by: None, done: false, tail: 0 }
    }

    /// Bytes of the request arrived.
    fn read(&mut self, bytes: &[u8]) {
        if self.done || bytes.is_empty() {
            return;
        }
        if self.by.is_none() {
            self.by = Some(Box::pin(tokio::time::sleep(self.limit)));
        }
        for &byte in bytes {
            self.tail = (self.tail << 8) | u32::from(byte);
            if self.tail == u32::from_be_bytes(*b"\r\n\r\n") {
                self.done = true;
                self.by = None;
                return;
            }
        }
    }

    /// A response is being written: the next bytes read start the next head.
    fn answered(&mut self) {
        self.done = false;
        self.tail = 0;
    }

    /// Whether the head's time ran out.
    fn late(&mut self, cx: &mut Context<'_>) -> bool {
        self.by.as_mut().is_some_and(|by| by.as_mut().poll(cx).is_ready())
    }
}

impl Guarded {
    fn moved(&mut self) {
        self.deadline.as_mut().reset(Instant::now() + self.idle);
    }

    /// A write's outcome: bytes moved put the idle deadline back; a write still pending
    /// past it fails the connection.
    fn wrote(
        &mut self,
        cx: &mut Context<'_>,
        written: Poll<std::io::Result<usize>>,
    ) -> Poll<std::io::Result<usize>> {
        match written {
            Poll::Ready(Ok(n)) => {
                if n > 0 {
                    self.moved();
                    self.head.answered();
                }
                Poll::Ready(Ok(n))
            }
            Poll::Ready(Err(e)) => Poll::Ready(Err(e)),
            Poll::Pending => match self.check_idle(cx) {
                Poll::Ready(e) => Poll::Ready(Err(e)),
                Poll::Pending => Poll::Pending,
            },
        }
    }

    /// A pending read or write past the idle deadline, or a head past its own, fails the
    /// connection.
    fn check_idle(&mut self, cx: &mut Context<'_>) -> Poll<std::io::Error> {
        if self.head.late(cx) {
            return Poll::Ready(std::io::Error::new(
                std::io::ErrorKind::TimedOut,
                "a request's head took too long to arrive",
            ));
        }
        match self.deadline.as_mut().poll(cx) {
            Poll::Ready(()) => Poll::Ready(std::io::Error::new(
                std::io::ErrorKind::TimedOut,
                "the connection sat idle too long",
            )),
            Poll::Pending => Poll::Pending,
        }
    }
}

use std::future::Future;

impl AsyncRead for Guarded {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        let before = buf.filled().len();
        match Pin::new(&mut self.stream).poll_read(cx, buf) {
            Poll::Ready(result) => {
                if buf.filled().len() > before {
                    self.moved();
                    let this = &mut *self;
                    this.head.read(&buf.filled()[before..]);
                    // A head that trickles is cut at its deadline even while bytes come.
                    if this.head.late(cx) {
                        return Poll::Ready(Err(std::io::Error::new(
                            std::io::ErrorKind::TimedOut,
                            "a request's head took too long to arrive",
                        )));
                    }
                }
                Poll::Ready(result)
            }
            Poll::Pending => match self.check_idle(cx) {
                Poll::Ready(e) => Poll::Ready(Err(e)),
                Poll::Pending => Poll::Pending,
            },
        }
    }
}

impl AsyncWrite for Guarded {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        data: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        let written = Pin::new(&mut self.stream).poll_write(cx, data);
        self.wrote(cx, written)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.stream).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.stream).poll_shutdown(cx)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[std::io::IoSlice<'_>],
    ) -> Poll<std::io::Result<usize>> {
        let written = Pin::new(&mut self.stream).poll_write_vectored(cx, bufs);
        self.wrote(cx, written)
    }

    fn is_write_vectored(&self) -> bool {
        self.stream.is_write_vectored()
    }
}
