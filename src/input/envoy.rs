//! `envoy`: the `json_format` recommended in README for Envoy's file access log.
//!
//! Envoy has no fixed JSON log, so this preset reads exactly the recommended keys: the
//! Authorization header as `authorization`, or the jwt_authn filter's verified payload
//! (`payload_in_metadata`) as `jwt_payload`. Envoy writes that payload only for a token it
//! verified, so it attests the token (when it matches the logged header's).

use super::{Fields, RawLine};

pub fn fields<'a>(r: &mut RawLine<'a>) -> Fields<'a> {
    Fields {
        ts: r.start_time.take(),
        client_ip: r.client_ip.0.take(),
        method: r.method.0.take(),
        path: r.path.0.take(),
        status: r.response_code.take(),
        user_agent: r.user_agent.0.take(),
        authorization: r.authorization.0.take(),
        jwt_claims: r.jwt_payload.take().filter(|p| p.is_object()),
        claims_attested: true,
        ..Fields::default()
    }
}
