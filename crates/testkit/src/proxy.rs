//! A TCP proxy the test controls, to partition a node from a service without network
//! namespaces: the node is given the proxy's address instead of the service's.
//!
//! - open: every accepted connection is forwarded to the target, both ways.
//! - [`Proxy::cut`]: every forwarded connection is dropped at once, and new ones are
//!   accepted and closed straight away (the node sees a refusal, as across a partition
//!   whose far side resets).
//! - [`Proxy::heal`]: connections are forwarded again.
//!
//! It runs on the caller's tokio runtime; the accept loop and every forwarder end when the
//! handle drops (they watch the state channel it owns).

use std::net::SocketAddr;

use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;
use tokio::task::JoinHandle;

/// A running proxy from `127.0.0.1:port` to one target.
pub struct Proxy {
    /// Where the proxied client connects.
    pub addr: SocketAddr,
    /// `true` while open; every forwarder watches it to drop its connection on a cut.
    state: watch::Sender<bool>,
    accept: JoinHandle<()>,
}

impl Proxy {
    /// Listens on a free loopback port and forwards to `target`.
    pub async fn start(target: SocketAddr) -> Proxy {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("proxy binds");
        let addr = listener.local_addr().unwrap();
        let (state, open) = watch::channel(true);
        let accept = tokio::spawn(accept_loop(listener, target, open));
        Proxy {
            addr,
            state,
            accept,
        }
    }

    pub fn port(&self) -> u16 {
        self.addr.port()
    }

    /// Drops every forwarded connection and refuses new ones until [`Proxy::heal`].
    pub fn cut(&self) {
        self.state.send_replace(false);
    }

    /// Forwards new connections again.
    pub fn heal(&self) {
        self.state.send_replace(true);
    }

    pub fn is_cut(&self) -> bool {
        !*self.state.borrow()
    }
}

impl Drop for Proxy {
    fn drop(&mut self) {
        self.accept.abort();
    }
}

async fn accept_loop(listener: TcpListener, target: SocketAddr, open: watch::Receiver<bool>) {
    loop {
        let Ok((inbound, _)) = listener.accept().await else {
            continue;
        };
        if !*open.borrow() {
            drop(inbound); // refused: closed as soon as accepted
            continue;
        }
        tokio::spawn(forward(inbound, target, open.clone()));
    }
}

/// Forwards one connection until either side closes or the proxy is cut (or dropped).
async fn forward(mut inbound: TcpStream, target: SocketAddr, mut open: watch::Receiver<bool>) {
    let Ok(mut outbound) = TcpStream::connect(target).await else {
        return;
    };
    let _ = inbound.set_nodelay(true);
    let _ = outbound.set_nodelay(true);
    tokio::select! {
        _ = tokio::io::copy_bidirectional(&mut inbound, &mut outbound) => {}
        _ = open.wait_for(|open| !*open) => {}
    }
}
