//! [`FaultProxy`]: a TCP proxy between one client and a real server, with network faults
//! switched at run time.
//!
//! A store's safety under network faults cannot be shown with an in-process fake: the client
//! library's reconnects, timeouts and buffered writes are part of what is tested. So the chaos
//! harness puts one proxy in front of the real server *per candidate*, and partitions, slows or
//! resets one candidate at a time. A mode applies at once to every connection the proxy holds,
//! and to every connection it accepts afterwards:
//!
//! | [`ProxyMode`] | existing connections | new connections |
//! |---|---|---|
//! | `Pass` | bytes flow both ways | connected to the server |
//! | `Delay(d)` | every chunk is delivered `d` after it arrived, in order, both ways | connected, then delayed |
//! | `Blackhole` | held open; no byte is delivered either way until the mode changes (nothing is lost) | accepted, held the same way |
//! | `Reset` | closed with a TCP RST to both ends (`SO_LINGER` 0) | accepted and reset at once |
//!
//! A connection the proxy cannot forward (the server is down) is reset, as a refused
//! connection would be.
//!
//! A proxy started with [`FaultProxy::start_routed`] asks a [`Router`] for the mode of each
//! connection it accepts, from the client's address, so that connections from different
//! clients can be treated differently (the peer links of an etcd cluster, where one member is
//! cut off from the others: [`crate::etcd_cluster`]).
//!
//! ```no_run
//! use std::time::Duration;
//!
//! use baton_testkit::proxy::{FaultProxy, ProxyMode};
//! use baton_testkit::servers::RedisServer;
//!
//! # #[tokio::main] async fn main() -> std::io::Result<()> {
//! let redis = RedisServer::start();
//! let proxy = FaultProxy::start(([127, 0, 0, 1], redis.port()).into())?;
//! let url = format!("redis://{}", proxy.addr()); // hand this to one candidate
//! proxy.set_mode(ProxyMode::Blackhole); // partition it from the server
//! tokio::time::sleep(Duration::from_secs(2)).await;
//! proxy.set_mode(ProxyMode::Pass); // heal
//! # let _ = url; Ok(()) }
//! ```

use std::collections::VecDeque;
use std::fmt;
use std::io;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;
use tokio::task::JoinHandle;
use tokio::time::{Instant, sleep_until};

/// How the proxy treats traffic. See the [module docs](self) for the table.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum ProxyMode {
    /// Forward bytes as they come.
    #[default]
    Pass,
    /// Deliver every chunk this long after it arrived, in each direction (a round trip takes
    /// twice as long).
    Delay(Duration),
    /// Hold connections open and deliver nothing, either way, until the mode changes. Bytes
    /// are withheld, not dropped: they flow again when the mode does.
    Blackhole,
    /// Close every connection with a TCP reset, and reset new ones as they come.
    Reset,
}

impl fmt::Display for ProxyMode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ProxyMode::Pass => f.write_str("pass"),
            ProxyMode::Delay(d) => write!(f, "delay {d:?}"),
            ProxyMode::Blackhole => f.write_str("blackhole"),
            ProxyMode::Reset => f.write_str("reset"),
        }
    }
}

/// The most chunks a connection queues in one direction before it stops reading (the sender
/// then waits on TCP flow control, as it would behind a slow link).
const MAX_QUEUED_CHUNKS: usize = 1024;

#[derive(Debug, Default)]
struct Counters {
    accepted: AtomicU64,
    open: AtomicU64,
    resets: AtomicU64,
    /// Bytes delivered from clients to the server.
    sent: AtomicU64,
}

/// Picks the mode channel a newly accepted connection follows, from the client's address;
/// `None`: the proxy's own mode ([`FaultProxy::set_mode`]).
pub type Router = Arc<dyn Fn(SocketAddr) -> Option<watch::Receiver<ProxyMode>> + Send + Sync>;

/// A TCP proxy on `127.0.0.1` (a free port) in front of one upstream address. Its tasks run on
/// the tokio runtime it was started in; dropping the proxy closes its listener and every
/// connection.
pub struct FaultProxy {
    addr: SocketAddr,
    upstream: SocketAddr,
    mode: watch::Sender<ProxyMode>,
    counters: Arc<Counters>,
    accept: JoinHandle<()>,
}

impl fmt::Debug for FaultProxy {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("FaultProxy")
            .field("addr", &self.addr)
            .field("upstream", &self.upstream)
            .field("mode", &*self.mode.borrow())
            .finish_non_exhaustive()
    }
}

impl FaultProxy {
    /// Listen on a free port of `127.0.0.1` and forward to `upstream`, in [`ProxyMode::Pass`].
    ///
    /// Must be called within a tokio runtime (from async code, or under
    /// [`Handle::enter`](tokio::runtime::Handle::enter)): the proxy's tasks are spawned on it.
    pub fn start(upstream: SocketAddr) -> io::Result<FaultProxy> {
        Self::launch(([127, 0, 0, 1], 0).into(), upstream, None)
    }

    /// Listen on `listen` (port 0: a free one) and forward to `upstream`, as
    /// [`start`](Self::start) does. For a server that must be reached at an address of its
    /// choosing, such as the address a Redis Cluster node announces for its replicas
    /// (`127.0.0.2:PORT`, while its clients use `127.0.0.1:PORT`).
    pub fn start_on(listen: SocketAddr, upstream: SocketAddr) -> io::Result<FaultProxy> {
        Self::launch(listen, upstream, None)
    }

    /// [`start`](Self::start), but every accepted connection follows the mode channel `router`
    /// picks for it (from the client's address), or the proxy's own mode when it picks none.
    pub fn start_routed(upstream: SocketAddr, router: Router) -> io::Result<FaultProxy> {
        Self::launch(([127, 0, 0, 1], 0).into(), upstream, Some(router))
    }

    fn launch(
        listen: SocketAddr,
        upstream: SocketAddr,
        router: Option<Router>,
    ) -> io::Result<FaultProxy> {
        let listener = std::net::TcpListener::bind(listen)?;
        listener.set_nonblocking(true)?;
        let addr = listener.local_addr()?;
        let listener = TcpListener::from_std(listener)?;
        let (mode, rx) = watch::channel(ProxyMode::Pass);
        let counters = Arc::new(Counters::default());
        let accept = tokio::spawn(accept_loop(
            listener,
            upstream,
            rx,
            router,
            counters.clone(),
        ));
        Ok(FaultProxy {
            addr,
            upstream,
            mode,
            counters,
            accept,
        })
    }

    /// Where clients connect: `127.0.0.1:PORT` (or the address given to
    /// [`start_on`](Self::start_on)).
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// The server behind the proxy.
    pub fn upstream(&self) -> SocketAddr {
        self.upstream
    }

    /// Switch every connection, open and future, to `mode`. Returns the previous mode.
    pub fn set_mode(&self, mode: ProxyMode) -> ProxyMode {
        self.mode.send_replace(mode)
    }

    /// The current mode.
    pub fn mode(&self) -> ProxyMode {
        *self.mode.borrow()
    }

    /// Connections accepted so far.
    pub fn accepted(&self) -> u64 {
        self.counters.accepted.load(Ordering::Relaxed)
    }

    /// Connections open now (accepted and not yet closed).
    pub fn open_connections(&self) -> u64 {
        self.counters.open.load(Ordering::Relaxed)
    }

    /// Connections closed with a reset so far (by [`ProxyMode::Reset`], or because the server
    /// could not be reached).
    pub fn resets(&self) -> u64 {
        self.counters.resets.load(Ordering::Relaxed)
    }

    /// Bytes delivered from clients to the server so far: which of several proxies a client
    /// is using shows in how this grows.
    pub fn bytes_sent(&self) -> u64 {
        self.counters.sent.load(Ordering::Relaxed)
    }
}

impl Drop for FaultProxy {
    fn drop(&mut self) {
        // Connection tasks end when the mode channel closes.
        self.accept.abort();
    }
}

async fn accept_loop(
    listener: TcpListener,
    upstream: SocketAddr,
    mode: watch::Receiver<ProxyMode>,
    router: Option<Router>,
    counters: Arc<Counters>,
) {
    loop {
        let Ok((client, from)) = listener.accept().await else {
            // Out of file descriptors, say: try again shortly rather than spin.
            tokio::time::sleep(Duration::from_millis(10)).await;
            continue;
        };
        counters.accepted.fetch_add(1, Ordering::Relaxed);
        counters.open.fetch_add(1, Ordering::Relaxed);
        let counters = counters.clone();
        let mode = router
            .as_ref()
            .and_then(|route| route(from))
            .unwrap_or_else(|| mode.clone());
        tokio::spawn(async move {
            serve(client, upstream, mode, &counters).await;
            counters.open.fetch_sub(1, Ordering::Relaxed);
        });
    }
}

/// Close a socket with a TCP reset: `SO_LINGER` 0, then close (drop) it.
fn reset(socket: TcpStream) {
    let _ = rustix::net::sockopt::set_socket_linger(&socket, Some(Duration::ZERO));
    drop(socket);
}

fn is_reset(mode: &watch::Receiver<ProxyMode>) -> bool {
    *mode.borrow() == ProxyMode::Reset
}

/// Resolves when the connection must be reset (`true`) or dropped because the proxy is gone
/// (`false`).
async fn reset_or_gone(mode: &mut watch::Receiver<ProxyMode>) -> bool {
    loop {
        if is_reset(mode) {
            return true;
        }
        if mode.changed().await.is_err() {
            return false;
        }
    }
}

/// One client connection, from accept to close.
async fn serve(
    mut client: TcpStream,
    upstream: SocketAddr,
    mut mode: watch::Receiver<ProxyMode>,
    counters: &Counters,
) {
    if is_reset(&mode) {
        counters.resets.fetch_add(1, Ordering::Relaxed);
        reset(client);
        return;
    }
    let mut server = match TcpStream::connect(upstream).await {
        Ok(server) => server,
        Err(_) => {
            counters.resets.fetch_add(1, Ordering::Relaxed);
            reset(client);
            return;
        }
    };
    let _ = client.set_nodelay(true);
    let _ = server.set_nodelay(true);
    let must_reset = {
        // Borrowed halves: unlike owned ones, dropping them sends no FIN, so a reset is a
        // reset and not a graceful close followed by one.
        let (client_read, client_write) = client.split();
        let (server_read, server_write) = server.split();
        let both = futures_util::future::join(
            pump(
                client_read,
                server_write,
                mode.clone(),
                Some(&counters.sent),
            ),
            pump(server_read, client_write, mode.clone(), None),
        );
        tokio::select! {
            _ = both => false,
            reset = reset_or_gone(&mut mode) => reset,
        }
    };
    if must_reset {
        counters.resets.fetch_add(1, Ordering::Relaxed);
        reset(client);
        reset(server);
    }
}

/// Copy one direction: read chunks as they come (unless blackholed), deliver each once its
/// delay has passed (unless blackholed), and pass a half-close on once everything before it was
/// delivered.
async fn pump<R, W>(
    mut from: R,
    mut to: W,
    mut mode: watch::Receiver<ProxyMode>,
    delivered: Option<&AtomicU64>,
) where
    R: AsyncRead + Unpin,
    W: AsyncWrite + Unpin,
{
    let mut queue: VecDeque<(Instant, Vec<u8>)> = VecDeque::new();
    let mut eof = false;
    let mut buf = vec![0u8; 16 * 1024];
    loop {
        let current = *mode.borrow_and_update();
        let (held, delay) = match current {
            ProxyMode::Pass => (false, Duration::ZERO),
            ProxyMode::Delay(d) => (false, d),
            // Reset is carried out by `serve`; meanwhile deliver nothing.
            ProxyMode::Blackhole | ProxyMode::Reset => (true, Duration::ZERO),
        };
        if eof && queue.is_empty() {
            let _ = to.shutdown().await;
            return;
        }
        let due = queue.front().map(|(at, _)| *at + delay);
        let can_read = !held && !eof && queue.len() < MAX_QUEUED_CHUNKS;
        tokio::select! {
            biased;
            changed = mode.changed() => {
                if changed.is_err() {
                    return;
                }
            }
            () = sleep_until(due.unwrap_or_else(Instant::now)), if !held && due.is_some() => {
                if let Some((_, chunk)) = queue.pop_front() {
                    if to.write_all(&chunk).await.is_err() {
                        return;
                    }
                    if let Some(delivered) = delivered {
                        delivered.fetch_add(chunk.len() as u64, Ordering::Relaxed);
                    }
                }
            }
            read = from.read(&mut buf), if can_read => match read {
                Ok(0) => eof = true,
                Ok(n) => queue.push_back((Instant::now(), buf[..n].to_vec())),
                Err(_) => return,
            },
        }
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio::net::TcpStream;
    use tokio::time::{Instant, timeout};

    use super::*;
    use crate::servers::RedisServer;

    async fn connect(proxy: &FaultProxy) -> TcpStream {
        TcpStream::connect(proxy.addr())
            .await
            .expect("connect to the proxy")
    }

    /// Send a RESP inline command; read one reply line within `limit`. `Ok(None)` when nothing
    /// came in time.
    async fn ask(
        conn: &mut TcpStream,
        command: &str,
        limit: Duration,
    ) -> io::Result<Option<String>> {
        conn.write_all(format!("{command}\r\n").as_bytes()).await?;
        read_line(conn, limit).await
    }

    async fn read_line(conn: &mut TcpStream, limit: Duration) -> io::Result<Option<String>> {
        let mut line = Vec::new();
        let deadline = Instant::now() + limit;
        while !line.ends_with(b"\r\n") {
            let mut byte = [0u8; 1];
            match timeout(
                deadline.saturating_duration_since(Instant::now()),
                conn.read(&mut byte),
            )
            .await
            {
                Err(_) => return Ok(None),
                Ok(Ok(0)) => return Err(io::ErrorKind::UnexpectedEof.into()),
                Ok(Ok(_)) => line.push(byte[0]),
                Ok(Err(e)) => return Err(e),
            }
        }
        Ok(Some(String::from_utf8_lossy(&line).trim_end().to_owned()))
    }

    /// Connect and PING once; any failure, of the connect (a reset can beat it) or after.
    async fn ping_once(proxy: &FaultProxy) -> io::Result<Option<String>> {
        let mut conn = TcpStream::connect(proxy.addr()).await?;
        ask(&mut conn, "PING", PROMPT).await
    }

    fn proxy_for(redis: &RedisServer) -> FaultProxy {
        FaultProxy::start(([127, 0, 0, 1], redis.port()).into()).expect("start the proxy")
    }

    const PROMPT: Duration = Duration::from_secs(2);

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn pass_forwards_both_ways() {
        let redis = RedisServer::start();
        let proxy = proxy_for(&redis);
        let mut conn = connect(&proxy).await;
        assert_eq!(
            ask(&mut conn, "PING", PROMPT).await.unwrap().as_deref(),
            Some("+PONG")
        );
        assert_eq!(
            ask(&mut conn, "SET k v", PROMPT).await.unwrap().as_deref(),
            Some("+OK")
        );
        assert_eq!(
            redis.cli(&["GET", "k"]),
            "v",
            "the write reached the server"
        );
        assert_eq!(proxy.accepted(), 1);
        assert_eq!(proxy.open_connections(), 1);
        drop(conn);
        let deadline = Instant::now() + PROMPT;
        while proxy.open_connections() > 0 {
            assert!(
                Instant::now() < deadline,
                "a closed client must close its connection"
            );
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn delay_slows_each_direction() {
        let redis = RedisServer::start();
        let proxy = proxy_for(&redis);
        let mut conn = connect(&proxy).await;
        assert_eq!(
            ask(&mut conn, "PING", PROMPT).await.unwrap().as_deref(),
            Some("+PONG")
        );
        proxy.set_mode(ProxyMode::Delay(Duration::from_millis(150)));
        let start = Instant::now();
        assert_eq!(
            ask(&mut conn, "PING", PROMPT).await.unwrap().as_deref(),
            Some("+PONG")
        );
        let rtt = start.elapsed();
        assert!(
            rtt >= Duration::from_millis(300),
            "round trip {rtt:?} with 150 ms each way"
        );
        assert!(
            rtt < Duration::from_secs(1),
            "round trip {rtt:?} with 150 ms each way"
        );
        // New connections are delayed too.
        let mut fresh = connect(&proxy).await;
        let start = Instant::now();
        assert_eq!(
            ask(&mut fresh, "PING", PROMPT).await.unwrap().as_deref(),
            Some("+PONG")
        );
        assert!(start.elapsed() >= Duration::from_millis(300));
        proxy.set_mode(ProxyMode::Pass);
        let start = Instant::now();
        assert_eq!(
            ask(&mut conn, "PING", PROMPT).await.unwrap().as_deref(),
            Some("+PONG")
        );
        assert!(start.elapsed() < Duration::from_millis(150));
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn blackhole_withholds_bytes_and_keeps_connections_open() {
        let redis = RedisServer::start();
        let proxy = proxy_for(&redis);
        let mut conn = connect(&proxy).await;
        assert_eq!(
            ask(&mut conn, "PING", PROMPT).await.unwrap().as_deref(),
            Some("+PONG")
        );

        proxy.set_mode(ProxyMode::Blackhole);
        // Nothing reaches the server...
        assert_eq!(
            ask(&mut conn, "SET held 1", Duration::from_millis(300))
                .await
                .unwrap(),
            None
        );
        assert_eq!(
            redis.cli(&["EXISTS", "held"]),
            "0",
            "a blackholed write must not arrive"
        );
        // ... and new connections are held the same way.
        let mut fresh = connect(&proxy).await;
        assert_eq!(
            ask(&mut fresh, "PING", Duration::from_millis(300))
                .await
                .unwrap(),
            None
        );

        // Healing delivers what was withheld, on the same connections.
        proxy.set_mode(ProxyMode::Pass);
        assert_eq!(
            read_line(&mut conn, PROMPT).await.unwrap().as_deref(),
            Some("+OK")
        );
        assert_eq!(redis.cli(&["EXISTS", "held"]), "1");
        assert_eq!(
            read_line(&mut fresh, PROMPT).await.unwrap().as_deref(),
            Some("+PONG")
        );
        assert_eq!(proxy.resets(), 0);
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn blackhole_also_withholds_replies_already_on_their_way() {
        let redis = RedisServer::start();
        let proxy = proxy_for(&redis);
        let mut conn = connect(&proxy).await;
        // The server answers after 200 ms (an empty list times out); the partition starts
        // while it waits.
        conn.write_all(b"BLPOP nothing 0.2\r\n").await.unwrap();
        tokio::time::sleep(Duration::from_millis(50)).await;
        proxy.set_mode(ProxyMode::Blackhole);
        assert_eq!(
            read_line(&mut conn, Duration::from_millis(500))
                .await
                .unwrap(),
            None
        );
        proxy.set_mode(ProxyMode::Pass);
        assert_eq!(
            read_line(&mut conn, PROMPT).await.unwrap().as_deref(),
            Some("*-1")
        );
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn reset_closes_open_and_new_connections_with_rst() {
        let redis = RedisServer::start();
        let proxy = proxy_for(&redis);
        let mut conn = connect(&proxy).await;
        assert_eq!(
            ask(&mut conn, "PING", PROMPT).await.unwrap().as_deref(),
            Some("+PONG")
        );
        let before = redis.cli(&["INFO", "clients"]);
        assert!(before.contains("connected_clients:2"), "{before}");

        proxy.set_mode(ProxyMode::Reset);
        let err = read_line(&mut conn, PROMPT)
            .await
            .expect_err("an open connection must be reset");
        assert_eq!(err.kind(), io::ErrorKind::ConnectionReset, "{err}");
        // The server's side is gone too.
        let deadline = Instant::now() + PROMPT;
        while !redis
            .cli(&["INFO", "clients"])
            .contains("connected_clients:1")
        {
            assert!(
                Instant::now() < deadline,
                "the server must see its connection reset"
            );
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        // New connections are reset at once.
        let outcome = ping_once(&proxy).await;
        assert!(
            matches!(&outcome, Err(e) if matches!(e.kind(), io::ErrorKind::ConnectionReset | io::ErrorKind::BrokenPipe)),
            "a new connection must be reset, got {outcome:?}"
        );
        assert!(proxy.resets() >= 2);

        proxy.set_mode(ProxyMode::Pass);
        let mut healed = connect(&proxy).await;
        assert_eq!(
            ask(&mut healed, "PING", PROMPT).await.unwrap().as_deref(),
            Some("+PONG")
        );
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_server_that_is_down_resets_clients_and_a_restarted_one_serves_them() {
        let mut redis = RedisServer::start();
        let proxy = proxy_for(&redis);
        redis.kill();
        let outcome = ping_once(&proxy).await;
        assert!(
            outcome.is_err(),
            "no server: the connection must fail, got {outcome:?}"
        );
        redis.restart();
        let mut conn = connect(&proxy).await;
        assert_eq!(
            ask(&mut conn, "PING", PROMPT).await.unwrap().as_deref(),
            Some("+PONG")
        );
    }
}
