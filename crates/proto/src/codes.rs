//! Error codes (in replies) and disconnect codes (in WebSocket close frames) of the
//! client protocol. Numbers and default messages are the protocol's; the SDKs decide
//! what to do (retry, refresh a token, reconnect or stop) from the number alone.

use serde::Serialize;

/// An error carried in a reply: `{"id":N,"error":{"code":C,"message":"..."}}`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ErrorCode {
    pub code: u32,
    pub message: &'static str,
    /// Temporary errors let the SDK retry the command by itself.
    pub temporary: bool,
}

macro_rules! errors {
    ($($name:ident = $code:expr, $msg:expr, $temp:expr;)*) => {
        impl ErrorCode { $(pub const $name: ErrorCode = ErrorCode { code: $code, message: $msg, temporary: $temp };)* }
    };
}

errors! {
    INTERNAL = 100, "internal server error", true;
    UNAUTHORIZED = 101, "unauthorized", false;
    UNKNOWN_CHANNEL = 102, "unknown channel", false;
    PERMISSION_DENIED = 103, "permission denied", false;
    METHOD_NOT_FOUND = 104, "method not found", false;
    ALREADY_SUBSCRIBED = 105, "already subscribed", false;
    LIMIT_EXCEEDED = 106, "limit exceeded", false;
    BAD_REQUEST = 107, "bad request", false;
    NOT_AVAILABLE = 108, "not available", false;
    TOKEN_EXPIRED = 109, "token expired", false;
    EXPIRED = 110, "expired", false;
    TOO_MANY_REQUESTS = 111, "too many requests", true;
    UNRECOVERABLE_POSITION = 112, "unrecoverable position", false;
}

/// Why the server closes a connection. Sent as the WebSocket close code and reason.
/// Codes 3000-3499 tell the SDK to reconnect; 3500-3999 tell it to stop.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Disconnect {
    pub code: u16,
    pub reason: &'static str,
}

macro_rules! disconnects {
    ($($name:ident = $code:expr, $reason:expr;)*) => {
        impl Disconnect { $(pub const $name: Disconnect = Disconnect { code: $code, reason: $reason };)* }
    };
}

disconnects! {
    CONNECTION_CLOSED = 3000, "connection closed";
    SHUTDOWN = 3001, "shutdown";
    SERVER_ERROR = 3004, "internal server error";
    EXPIRED = 3005, "connection expired";
    SUB_EXPIRED = 3006, "subscription expired";
    SLOW = 3008, "slow";
    WRITE_ERROR = 3009, "write error";
    INSUFFICIENT_STATE = 3010, "insufficient state";
    FORCE_RECONNECT = 3011, "force reconnect";
    NO_PONG = 3012, "no pong";
    TOO_MANY_REQUESTS = 3013, "too many requests";
    INVALID_TOKEN = 3500, "invalid token";
    BAD_REQUEST = 3501, "bad request";
    STALE = 3502, "stale";
    FORCE_NO_RECONNECT = 3503, "force disconnect";
    CONNECTION_LIMIT = 3504, "connection limit";
    CHANNEL_LIMIT = 3505, "channel limit";
    PERMISSION_DENIED = 3507, "permission denied";
}

impl Disconnect {
    /// The disconnects a server operator may ask for by code (server API `disconnect`,
    /// carried between nodes by code): their reasons are the protocol's.
    pub const OPERATOR: &'static [Disconnect] = &[
        Disconnect::SHUTDOWN,
        Disconnect::EXPIRED,
        Disconnect::INSUFFICIENT_STATE,
        Disconnect::FORCE_RECONNECT,
        Disconnect::INVALID_TOKEN,
        Disconnect::FORCE_NO_RECONNECT,
        Disconnect::CONNECTION_LIMIT,
        Disconnect::PERMISSION_DENIED,
    ];

    /// The operator disconnect with this code, if it is one.
    pub fn operator(code: u16) -> Option<Disconnect> {
        Self::OPERATOR.iter().find(|d| d.code == code).cloned()
    }

    /// Whether the SDK reconnects after this code.
    pub fn reconnect(&self) -> bool {
        !(3500..4000).contains(&self.code)
    }
}

/// Unsubscribe codes sent in `unsubscribe` pushes: below 2500 the SDK stays unsubscribed,
/// from 2500 it resubscribes.
pub mod unsubscribe {
    pub const SERVER: u32 = 2000;
    pub const INSUFFICIENT: u32 = 2500;
    /// The subscription expired (the sub_refresh proxy said so).
    pub const EXPIRED: u32 = 2501;

    /// The reason sent with an unsubscribe push of `code`.
    pub fn reason(code: u32) -> &'static str {
        match code {
            EXPIRED => "subscription expired",
            INSUFFICIENT => "insufficient state",
            _ => "server unsubscribe",
        }
    }
}
