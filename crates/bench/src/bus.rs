//! The bus traffic of a cluster run (issue #8: "one copy per node"): Redis's own byte and command
//! counters (`INFO stats`), read before and after publishing. No MONITOR or PUBSUB polling, which
//! would cost the bus more than what is measured.

use anyhow::{bail, Context, Result};
use serde::Serialize;
use std::net::SocketAddr;
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// The biggest `INFO stats` reply read (a few KiB in practice).
const MAX_REPLY: usize = 64 * 1024;

/// Redis's cumulative counters at one instant.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub(crate) struct Counters {
    pub net_in: u64,
    pub net_out: u64,
    pub commands: u64,
}

/// Bus traffic between two readings, per acknowledged publication.
#[derive(Clone, Debug, Default, Serialize)]
pub(crate) struct BusTraffic {
    /// Bytes Redis sent to its clients (the nodes): one copy of a publication per node.
    pub out_bytes_per_publication: f64,
    /// Bytes Redis received (the PUBLISH, presence and other commands).
    pub in_bytes_per_publication: f64,
    pub commands_per_publication: f64,
    /// Nodes the members were spread over: the expected copies per publication.
    pub nodes: usize,
}

impl BusTraffic {
    pub(crate) fn between(a: Counters, b: Counters, publications: u64, nodes: usize) -> Self {
        let n = publications.max(1) as f64;
        BusTraffic {
            out_bytes_per_publication: b.net_out.saturating_sub(a.net_out) as f64 / n,
            in_bytes_per_publication: b.net_in.saturating_sub(a.net_in) as f64 / n,
            commands_per_publication: b.commands.saturating_sub(a.commands) as f64 / n,
            nodes,
        }
    }
}

/// Reads the counters with one `INFO stats` on a fresh connection (bounded: 5 s, 64 KiB).
pub(crate) async fn read(addr: SocketAddr) -> Result<Counters> {
    tokio::time::timeout(Duration::from_secs(5), read_inner(addr))
        .await
        .context("redis INFO timed out")?
}

async fn read_inner(addr: SocketAddr) -> Result<Counters> {
    let mut s = TcpStream::connect(addr)
        .await
        .with_context(|| format!("connect redis {addr}"))?;
    s.write_all(b"INFO stats\r\n").await?;
    let mut buf = Vec::new();
    let mut chunk = [0u8; 4096];
    loop {
        let n = s.read(&mut chunk).await?;
        if n == 0 {
            bail!("redis closed before answering INFO");
        }
        buf.extend_from_slice(&chunk[..n]);
        if let Some(body) = bulk(&buf)? {
            return parse(body);
        }
        if buf.len() > MAX_REPLY {
            bail!("redis INFO reply above {MAX_REPLY} bytes");
        }
    }
}

/// The body of a complete RESP bulk string, None while incomplete.
fn bulk(buf: &[u8]) -> Result<Option<&str>> {
    let Some(eol) = buf.windows(2).position(|w| w == b"\r\n") else {
        return Ok(None);
    };
    let head = std::str::from_utf8(&buf[..eol])?;
    let Some(len) = head.strip_prefix('$') else {
        bail!("redis answered INFO with `{head}`");
    };
    let len: usize = len.parse().context("bad bulk length")?;
    let start = eol + 2;
    if buf.len() < start + len {
        return Ok(None);
    }
    Ok(Some(std::str::from_utf8(&buf[start..start + len])?))
}

fn parse(body: &str) -> Result<Counters> {
    let field = |name: &str| -> Result<u64> {
        body.lines()
            .find_map(|l| l.strip_prefix(name)?.strip_prefix(':'))
            .with_context(|| format!("INFO stats without {name}"))?
            .trim()
            .parse()
            .with_context(|| format!("bad {name}"))
    };
    Ok(Counters {
        net_in: field("total_net_input_bytes")?,
        net_out: field("total_net_output_bytes")?,
        commands: field("total_commands_processed")?,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_the_counters_from_a_bulk_reply() {
        let body = "# Stats\r\ntotal_commands_processed:7\r\ntotal_net_input_bytes:100\r\ntotal_net_output_bytes:2500\r\n";
        let reply = format!("${}\r\n{body}\r\n", body.len());
        assert_eq!(bulk(&reply.as_bytes()[..10]).unwrap(), None, "incomplete");
        let c = parse(bulk(reply.as_bytes()).unwrap().unwrap()).unwrap();
        assert_eq!(
            c,
            Counters {
                net_in: 100,
                net_out: 2500,
                commands: 7
            }
        );
        assert!(bulk(b"-ERR no\r\n").is_err());
        let t = BusTraffic::between(Counters::default(), c, 10, 3);
        assert_eq!(
            (t.out_bytes_per_publication, t.commands_per_publication),
            (250.0, 0.7)
        );
    }
}
