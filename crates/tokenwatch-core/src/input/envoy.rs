//! `envoy`: Envoy's JSON access logs as Istio, Envoy Gateway and README's `json_format` write
//! them.
//!
//! Envoy has no fixed JSON log, but its widely shipped formats agree on `start_time`,
//! `method` and `response_code`: Istio's default (`accessLogEncoding: JSON`) names the client
//! `downstream_remote_address` (`ip:port`), Envoy Gateway's default also says
//! `x-envoy-origin-path` and `user-agent`, README's format says `client_ip`, `path` and
//! `user_agent`. The token comes from an added `authorization` (`%REQ(AUTHORIZATION)%`) or the
//! jwt_authn filter's verified payload (`payload_in_metadata`) as `jwt_payload`. Envoy writes
//! that payload only for a token it verified, so it attests the token (when it matches the
//! logged header's).

use super::{Fields, RawLine};

pub fn fields<'a>(r: &mut RawLine<'a>) -> Fields<'a> {
    Fields {
        ts: r.start_time.take(),
        client_ip: r.client_ip.0.take().or(r.downstream_remote_address.0.take()),
        method: r.method.0.take(),
        path: r.path.0.take().or(r.x_envoy_origin_path.0.take()),
        status: r.response_code.take(),
        user_agent: r.user_agent.0.take().or(r.user_agent_dashed.0.take()),
        authorization: r.authorization.0.take(),
        jwt_claims: r.jwt_payload.take().filter(serde_json::Value::is_object),
        claims_attested: true,
        scheme: r.scheme.0.take().or(r.x_forwarded_proto.0.take()),
        ..Fields::default()
    }
}
