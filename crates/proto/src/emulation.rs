//! The bidirectional emulation request: how a client on a one-way stream transport
//! (HTTP-streaming, SSE) sends its commands after the first. The SDK POSTs them to the
//! emulation endpoint with the session id and node id its connect reply gave it:
//!
//! - JSON: `{"session":"...","node":"...","data":"<commands, newline-delimited>"}`; the
//!   SDKs send `data` as a JSON string holding the encoded commands. A bare JSON command
//!   object in place of the string is taken too, as its text.
//! - protobuf: the `EmulationRequest` message (`node = 1`, `session = 2`, `data = 3`),
//!   `data` holding varint length-delimited commands as on the stream.
//!
//! Decoding here only unwraps the envelope and counts the commands (so that one request
//! carries a bounded number of them); the commands themselves are decoded by the session's
//! connection, in its own format, like any other frame it receives.

use prost::Message as _;
use serde::Deserialize;
use serde_json::value::RawValue;

use crate::protobuf::wire;

/// The commands of one emulation request, in the format they came in.
#[derive(Debug, PartialEq, Eq)]
pub enum Commands {
    /// JSON commands (newline-delimited or simply concatenated objects).
    Text(String),
    /// Varint length-delimited protobuf commands.
    Binary(Vec<u8>),
}

/// One decoded emulation request.
#[derive(Debug, PartialEq, Eq)]
pub struct EmulationRequest {
    /// The node that holds the session's stream (from the connect reply).
    pub node: String,
    /// The session id of the stream (from the connect reply).
    pub session: String,
    pub commands: Commands,
}

/// Why an emulation request was refused (answered 400).
#[derive(Debug, thiserror::Error)]
pub enum EmulationError {
    #[error("malformed JSON emulation request: {0}")]
    Json(#[from] serde_json::Error),
    #[error("malformed protobuf emulation request: {0}")]
    Protobuf(#[from] prost::DecodeError),
    #[error("malformed commands in the emulation request")]
    Commands,
    #[error("more than {0} commands in one emulation request")]
    TooManyCommands(usize),
    #[error("no session in the emulation request")]
    NoSession,
}

/// Decodes a JSON emulation request carrying at most `max_commands` commands.
pub fn decode_json(body: &[u8], max_commands: usize) -> Result<EmulationRequest, EmulationError> {
    #[derive(Deserialize)]
    struct Body<'a> {
        #[serde(default)]
        session: String,
        #[serde(default)]
        node: String,
        #[serde(borrow)]
        data: &'a RawValue,
    }
    let b: Body<'_> = serde_json::from_slice(body)?;
    let raw = b.data.get();
    let text = if raw.starts_with('"') {
        serde_json::from_str::<String>(raw)?
    } else {
        raw.to_owned()
    };
    let n = count_json(&text, max_commands)?;
    if n > max_commands {
        return Err(EmulationError::TooManyCommands(max_commands));
    }
    finish(b.node, b.session, Commands::Text(text))
}

/// Decodes a protobuf emulation request carrying at most `max_commands` commands.
pub fn decode_protobuf(
    body: &[u8],
    max_commands: usize,
) -> Result<EmulationRequest, EmulationError> {
    let r = wire::EmulationRequest::decode(body)?;
    if count_delimited(&r.data, max_commands)? > max_commands {
        return Err(EmulationError::TooManyCommands(max_commands));
    }
    finish(r.node, r.session, Commands::Binary(r.data))
}

fn finish(
    node: String,
    session: String,
    commands: Commands,
) -> Result<EmulationRequest, EmulationError> {
    if session.is_empty() {
        return Err(EmulationError::NoSession);
    }
    Ok(EmulationRequest {
        node,
        session,
        commands,
    })
}

/// JSON values in `text`, counting stops past `max`.
fn count_json(text: &str, max: usize) -> Result<usize, EmulationError> {
    let mut n = 0;
    for v in serde_json::Deserializer::from_str(text).into_iter::<serde::de::IgnoredAny>() {
        v.map_err(|_| EmulationError::Commands)?;
        n += 1;
        if n > max {
            break;
        }
    }
    Ok(n)
}

/// Length-delimited messages in `data`, counting stops past `max`.
fn count_delimited(data: &[u8], max: usize) -> Result<usize, EmulationError> {
    let mut rest = data;
    let mut n = 0;
    while !rest.is_empty() && n <= max {
        let len =
            prost::encoding::decode_varint(&mut rest).map_err(|_| EmulationError::Commands)?;
        if len > rest.len() as u64 {
            return Err(EmulationError::Commands);
        }
        rest = &rest[len as usize..];
        n += 1;
    }
    Ok(n)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn json_data_as_a_string_or_inline() {
        let r = decode_json(
            br#"{"session":"s","node":"n","data":"{\"id\":1,\"ping\":{}}\n{}"}"#,
            10,
        )
        .unwrap();
        assert_eq!(r.node, "n");
        assert_eq!(r.session, "s");
        assert_eq!(
            r.commands,
            Commands::Text("{\"id\":1,\"ping\":{}}\n{}".into())
        );
        let r = decode_json(br#"{"session":"s","data":{"id":2,"ping":{}}}"#, 10).unwrap();
        assert_eq!(r.commands, Commands::Text(r#"{"id":2,"ping":{}}"#.into()));
    }

    #[test]
    fn json_refusals() {
        assert!(matches!(
            decode_json(br#"{"session":"s","data":"{}{}{}"}"#, 2),
            Err(EmulationError::TooManyCommands(2))
        ));
        assert!(matches!(
            decode_json(br#"{"data":"{}"}"#, 2),
            Err(EmulationError::NoSession)
        ));
        assert!(matches!(
            decode_json(br#"{"session":"s","data":"{"}"#, 2),
            Err(EmulationError::Commands)
        ));
        assert!(decode_json(b"not json", 2).is_err());
        assert!(decode_json(br#"{"session":"s"}"#, 2).is_err());
    }

    #[test]
    fn protobuf_envelope() {
        let data = vec![2, 8, 1, 0, 1, 0];
        let body = wire::EmulationRequest {
            node: "n".into(),
            session: "s".into(),
            data: data.clone(),
        }
        .encode_to_vec();
        let r = decode_protobuf(&body, 3).unwrap();
        assert_eq!(r.commands, Commands::Binary(data));
        assert!(matches!(
            decode_protobuf(&body, 2),
            Err(EmulationError::TooManyCommands(2))
        ));
        let bad = wire::EmulationRequest {
            node: "n".into(),
            session: "s".into(),
            data: vec![9, 1],
        }
        .encode_to_vec();
        assert!(matches!(
            decode_protobuf(&bad, 3),
            Err(EmulationError::Commands)
        ));
    }
}
