//! Checks of a configuration as a whole (values that parse but cannot run), made before a
//! node opens anything.

use super::{Config, ConfigError};

impl Config {
    /// Checks settings that depend on each other.
    pub fn validate(&self) -> Result<(), ConfigError> {
        let bad = |message: String| Err(ConfigError::Invalid(message));
        if self.ping_interval_secs == 0 || self.pong_timeout_secs == 0 {
            return bad("ping_interval_secs and pong_timeout_secs must be at least 1".into());
        }
        if self.pong_timeout_secs >= self.ping_interval_secs {
            return bad(format!(
                "pong_timeout_secs ({}) must be shorter than ping_interval_secs ({})",
                self.pong_timeout_secs, self.ping_interval_secs
            ));
        }
        if self.write_timeout_secs == 0 {
            return bad("write_timeout_secs must be at least 1".into());
        }
        let namespaces = std::iter::once(&self.default_namespace).chain(self.namespaces.values());
        if let Some(t) = namespaces
            .clone()
            .flat_map(|ns| &ns.allowed_delta_types)
            .find(|t| *t != "fossil")
        {
            return bad(format!(
                "allowed_delta_types: unknown delta type {t:?} (only \"fossil\")"
            ));
        }
        if namespaces.clone().any(|ns| ns.digest_interval_ms < 10) {
            return bad("digest_interval_ms must be at least 10".into());
        }
        if namespaces
            .into_iter()
            .any(|ns| ns.presence_max_entries == 0)
        {
            return bad("presence_max_entries must be at least 1".into());
        }
        if self.max_message_size < 1024 {
            return bad("max_message_size must be at least 1024 bytes".into());
        }
        if self.reply_max_bytes < self.history_max_bytes
            || self.reply_max_bytes < self.recovery_max_bytes
        {
            return bad(format!(
                "reply_max_bytes ({}) must be at least history_max_bytes ({}) and recovery_max_bytes ({})",
                self.reply_max_bytes, self.history_max_bytes, self.recovery_max_bytes
            ));
        }
        if self.max_data_depth == 0
            || self.api_max_in_flight == 0
            || self.api_body_timeout_secs == 0
        {
            return bad(
                "max_data_depth, api_max_in_flight and api_body_timeout_secs must be at least 1"
                    .into(),
            );
        }
        if self.token_jwks_url.is_some()
            && (self.token_jwks_refresh_secs == 0 || self.token_jwks_timeout_ms == 0)
        {
            return bad(
                "token_jwks_refresh_secs and token_jwks_timeout_ms must be at least 1".into(),
            );
        }
        for url in [
            &self.token_jwks_url,
            &self.proxy_connect_endpoint,
            &self.proxy_publish_endpoint,
            &self.proxy_rpc_endpoint,
            &self.proxy_subscribe_endpoint,
            &self.proxy_refresh_endpoint,
            &self.proxy_sub_refresh_endpoint,
        ]
        .into_iter()
        .flatten()
        {
            if let Err(e) = crate::outbound::parse_url(url) {
                return bad(e.to_string());
            }
        }
        if self.proxy_max_in_flight == 0
            || self.proxy_connect_timeout_ms == 0
            || self.proxy_publish_timeout_ms == 0
            || self.proxy_rpc_timeout_ms == 0
            || self.proxy_subscribe_timeout_ms == 0
            || self.proxy_refresh_timeout_ms == 0
            || self.proxy_sub_refresh_timeout_ms == 0
        {
            return bad("proxy_max_in_flight and the proxy timeouts must be at least 1".into());
        }
        let namespaces = std::iter::once(&self.default_namespace).chain(self.namespaces.values());
        if self.proxy_publish_endpoint.is_none()
            && namespaces.into_iter().any(|ns| ns.proxy_publish)
        {
            return bad("a namespace has proxy_publish but proxy_publish_endpoint is unset".into());
        }
        let mut namespaces =
            std::iter::once(&self.default_namespace).chain(self.namespaces.values());
        if self.proxy_sub_refresh_endpoint.is_none()
            && namespaces.clone().any(|ns| ns.proxy_sub_refresh)
        {
            return bad(
                "a namespace has proxy_sub_refresh but proxy_sub_refresh_endpoint is unset".into(),
            );
        }
        if self.proxy_subscribe_endpoint.is_none() && namespaces.any(|ns| ns.proxy_subscribe) {
            return bad(
                "a namespace has proxy_subscribe but proxy_subscribe_endpoint is unset".into(),
            );
        }
        if self
            .proxy_http_headers
            .iter()
            .any(|h| hyper::header::HeaderName::from_bytes(h.as_bytes()).is_err())
        {
            return bad("proxy_http_headers holds an invalid header name".into());
        }
        let ns = &self.user_personal_channel_namespace;
        if !ns.is_empty() && !self.namespaces.contains_key(ns) {
            return bad(format!(
                "user_personal_channel_namespace {ns:?} is not a configured namespace"
            ));
        }
        if self.presence_ttl_secs < 5 {
            return bad("presence_ttl_secs must be at least 5".into());
        }
        if self.user_registry_ttl_secs < 3 || self.user_status_max_users == 0 {
            return bad(
                "user_registry_ttl_secs must be at least 3 and user_status_max_users at least 1"
                    .into(),
            );
        }
        if let Err(message) = crate::notify::Settings::from_config(self) {
            return bad(message);
        }
        Ok(())
    }
}
