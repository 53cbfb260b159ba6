//! `batch`: several API commands in one call, as Centrifugo's
//! `{"commands": [{"publish": {...}}, {"broadcast": {...}}], "parallel": false}`, answered
//! `{"replies": [{"publish": {...}}, {"error": {...}}]}` (over HTTP at the top level, not
//! under `"result"`, as Centrifugo and `cent` have it), one reply per command in order.
//!
//! Sequential by default (each command starts when the one before has finished, so two
//! publishes to a room keep their order); with `parallel`, up to `PARALLEL` run at once
//! (replies still in command order). A command's failure is its own reply's `error`; the
//! call itself fails only when the body is malformed or holds more than `MAX_COMMANDS`.
//! A batch inside a batch is refused (as an unknown method), so nothing recurses.

use std::collections::BTreeMap;
use std::sync::Arc;

use futures_util::stream::{self, StreamExt};
use serde::Deserialize;
use serde_json::value::RawValue;

use super::{parse, run_one, Answer};
use crate::http::error::ApiError;
use crate::node::Node;

/// Most commands one batch holds (the body limit bounds their size).
pub(super) const MAX_COMMANDS: usize = 1000;
/// Commands of a parallel batch running at once.
const PARALLEL: usize = 32;

#[derive(Deserialize)]
struct BatchBody {
    #[serde(default)]
    commands: Vec<BTreeMap<String, Box<RawValue>>>,
    #[serde(default)]
    parallel: bool,
}

/// One command: its method and the method's body.
fn command(entry: &BTreeMap<String, Box<RawValue>>) -> Result<(&str, &RawValue), ApiError> {
    // Fields set to null are absent (a gRPC `Command` names every method).
    let mut set = entry.iter().filter(|(_, body)| body.get() != "null");
    match (set.next(), set.next()) {
        (Some((method, body)), None) => Ok((method.as_str(), &**body)),
        _ => Err(ApiError::BadBody(
            "a batch command names exactly one method, as {\"publish\": {...}}".into(),
        )),
    }
}

/// One command's reply: `{"<method>": <result>}` or `{"error": {...}}`.
async fn reply(node: &Arc<Node>, entry: &BTreeMap<String, Box<RawValue>>) -> Vec<u8> {
    let answer = match command(entry) {
        Err(e) => Err(("", e)),
        Ok(("batch", _)) => Err(("", ApiError::UnknownMethod("batch (inside a batch)".into()))),
        Ok((method, body)) => run_one(node, method, body.get().as_bytes())
            .await
            .map(|a| (method, a))
            .map_err(|e| (method, e)),
    };
    match answer {
        Ok((method, Answer(result))) => {
            let mut out = Vec::with_capacity(result.len() + method.len() + 5);
            out.push(b'{');
            serde_json::to_writer(&mut out, method).expect("a string serializes");
            out.push(b':');
            out.extend_from_slice(&result);
            out.push(b'}');
            out
        }
        Err((_, e)) => {
            let (code, message) = e.code_and_message();
            serde_json::to_vec(
                &serde_json::json!({ "error": { "code": code, "message": message } }),
            )
            .expect("errors serialize")
        }
    }
}

pub(super) async fn run(node: &Arc<Node>, body: &[u8]) -> Result<Answer, ApiError> {
    let b: BatchBody = parse(body)?;
    if b.commands.len() > MAX_COMMANDS {
        return Err(ApiError::BadBody(format!(
            "{} commands, more than {MAX_COMMANDS} in one batch",
            b.commands.len()
        )));
    }
    let replies: Vec<Vec<u8>> = if b.parallel {
        // Owned commands and node: the futures borrow nothing of this call's frame.
        stream::iter(b.commands)
            .map(|c| {
                let node = node.clone();
                async move { reply(&node, &c).await }
            })
            .buffered(PARALLEL)
            .collect()
            .await
    } else {
        let mut out = Vec::with_capacity(b.commands.len());
        for c in &b.commands {
            out.push(reply(node, c).await);
        }
        out
    };
    let mut out = Vec::with_capacity(replies.iter().map(|r| r.len() + 1).sum::<usize>() + 16);
    out.extend_from_slice(b"{\"replies\":[");
    for (i, r) in replies.iter().enumerate() {
        if i > 0 {
            out.push(b',');
        }
        out.extend_from_slice(r);
    }
    out.extend_from_slice(b"]}");
    Ok(Answer(out))
}
