//! The protocol without a socket: a session over an in-memory `Services` (tokens checked by
//! the real `Auth`), commands decoded from their JSON, replies read from the outbox, time
//! passed in.

mod connect;
mod fake;
mod rooms;
