//! Serde for the gRPC API's `bytes` fields that hold application JSON (`data`, `info`,
//! ...): written and read as the JSON they hold, so a gRPC message and the HTTP API's JSON
//! body are the same document. Bytes that are not JSON fail to serialize, which the bridge
//! answers as a bad request.

use serde::de::Deserializer;
use serde::ser::{Error as _, Serializer};
use serde::Deserialize;
use serde_json::value::RawValue;

pub fn serialize<S: Serializer>(bytes: &[u8], s: S) -> Result<S::Ok, S::Error> {
    let text = std::str::from_utf8(bytes).map_err(|_| S::Error::custom("data is not UTF-8"))?;
    let raw: &RawValue = serde_json::from_str(text)
        .map_err(|e| S::Error::custom(format!("data is not JSON: {e}")))?;
    serde::Serialize::serialize(raw, s)
}

pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<u8>, D::Error> {
    let raw = Box::<RawValue>::deserialize(d)?;
    Ok(raw.get().as_bytes().to_vec())
}
