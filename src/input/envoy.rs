//! `envoy`: the `json_format` recommended in README for Envoy's file access log.
//!
//! Envoy has no fixed JSON log, so this preset reads exactly the recommended keys: the
//! Authorization header as `authorization`, or the jwt_authn filter's verified payload
//! (`payload_in_metadata`) as `jwt_payload`.

use super::{Fields, RawLine};

pub fn fields(r: RawLine<'_>) -> Fields<'_> {
    Fields {
        ts: r.start_time,
        client_ip: r.client_ip.0,
        method: r.method.0,
        path: r.path.0,
        status: r.response_code,
        user_agent: r.user_agent.0,
        authorization: r.authorization.0,
        jwt_claims: r.jwt_payload.filter(|p| p.is_object()),
        ..Fields::default()
    }
}
