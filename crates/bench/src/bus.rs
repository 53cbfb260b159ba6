//! The bus traffic of a cluster run (issue #8: "one copy per node"): Redis's own byte and command
//! counters (`INFO stats`, `INFO commandstats`), read before and after publishing. No MONITOR or
//! PUBSUB polling, which would cost the bus more than what is measured. The bytes cover every
//! command the nodes send meanwhile (presence refreshes too), so the calls per command are
//! reported beside them: `publish` once per publication, and what else shares the bus.

use std::collections::HashMap;

use anyhow::{bail, Context, Result};
use serde::Serialize;
use std::net::SocketAddr;
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// The biggest `INFO stats` reply read (a few KiB in practice).
const MAX_REPLY: usize = 64 * 1024;

/// Redis's cumulative counters at one instant.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub(crate) struct Counters {
    pub net_in: u64,
    pub net_out: u64,
    pub commands: u64,
    /// Calls per command name (`cmdstat_NAME:calls=N`).
    pub calls: HashMap<String, u64>,
}

/// Bus traffic between two readings, per acknowledged publication.
#[derive(Clone, Debug, Default, Serialize)]
pub(crate) struct BusTraffic {
    /// Bytes Redis sent to its clients (the nodes): one copy of a publication per node.
    pub out_bytes_per_publication: f64,
    /// Bytes Redis received (the PUBLISH, presence and other commands).
    pub in_bytes_per_publication: f64,
    pub commands_per_publication: f64,
    /// The busiest commands meanwhile, calls per publication (most first, at most 6).
    pub calls_per_publication: Vec<(String, f64)>,
    /// Nodes the members were spread over: the expected copies per publication.
    pub nodes: usize,
}

impl BusTraffic {
    pub(crate) fn between(a: &Counters, b: &Counters, publications: u64, nodes: usize) -> Self {
        let n = publications.max(1) as f64;
        let mut calls: Vec<(String, f64)> = b
            .calls
            .iter()
            .map(|(k, v)| {
                let before = a.calls.get(k).copied().unwrap_or(0);
                (k.clone(), v.saturating_sub(before) as f64 / n)
            })
            .filter(|(_, v)| *v > 0.0)
            .collect();
        calls.sort_by(|x, y| y.1.total_cmp(&x.1));
        calls.truncate(6);
        BusTraffic {
            calls_per_publication: calls,
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
    let mut c = parse(&info(&mut s, "stats").await?)?;
    c.calls = parse_calls(&info(&mut s, "commandstats").await?);
    Ok(c)
}

/// One `INFO section` exchange on `s`.
async fn info(s: &mut TcpStream, section: &str) -> Result<String> {
    s.write_all(format!("INFO {section}\r\n").as_bytes())
        .await?;
    let mut buf = Vec::new();
    let mut chunk = [0u8; 4096];
    loop {
        let n = s.read(&mut chunk).await?;
        if n == 0 {
            bail!("redis closed before answering INFO");
        }
        buf.extend_from_slice(&chunk[..n]);
        if let Some(body) = bulk(&buf)? {
            return Ok(body.to_string());
        }
        if buf.len() > MAX_REPLY {
            bail!("redis INFO reply above {MAX_REPLY} bytes");
        }
    }
}

/// `cmdstat_NAME:calls=N,...` lines into NAME -> N.
fn parse_calls(body: &str) -> HashMap<String, u64> {
    body.lines()
        .filter_map(|l| {
            let (name, rest) = l.strip_prefix("cmdstat_")?.split_once(':')?;
            let calls = rest.split(',').find_map(|kv| kv.strip_prefix("calls="))?;
            Some((name.to_string(), calls.trim().parse().ok()?))
        })
        .collect()
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
        calls: HashMap::new(),
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
        assert_eq!((c.net_in, c.net_out, c.commands), (100, 2500, 7));
        assert!(bulk(b"-ERR no\r\n").is_err());
        let mut after = c.clone();
        after.calls = parse_calls(
            "# Commandstats\r\ncmdstat_publish:calls=12,usec=5,usec_per_call=0.4,rejected_calls=0\r\ncmdstat_hset:calls=3,usec=1\r\n",
        );
        let mut before = Counters::default();
        before.calls.insert("publish".into(), 2);
        let t = BusTraffic::between(&before, &after, 10, 3);
        assert_eq!(
            (t.out_bytes_per_publication, t.commands_per_publication),
            (250.0, 0.7)
        );
        assert_eq!(
            t.calls_per_publication,
            vec![("publish".to_string(), 1.0), ("hset".to_string(), 0.3)]
        );
    }
}
