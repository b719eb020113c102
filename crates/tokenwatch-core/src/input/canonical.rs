//! `canonical`: tokenwatch's own format, for pipelines that reshape logs before Kafka.
//!
//! `ts`, `client_ip`, `method`, `path` (with query), `status`, `user_agent`, and the token as
//! `authorization` (`Bearer <jwt>`) or `token` (bare JWT); optionally `geo` {lat, lon,
//! accuracy_km} and `jwt_header` / `jwt_claims` for gateways that log claims, not tokens; and
//! `authenticated` (boolean) when the pipeline knows the gateway verified the token; `scheme`
//! (`http` / `https`) when it knows how the client connected.

use super::{Fields, RawLine};

pub fn fields<'a>(r: &mut RawLine<'a>) -> Fields<'a> {
    Fields {
        ts: r.ts.take(),
        client_ip: r.client_ip.0.take(),
        method: r.method.0.take(),
        path: r.path.0.take(),
        status: r.status.take(),
        user_agent: r.user_agent.0.take(),
        authorization: r.authorization.0.take(),
        token: r.token.0.take(),
        jwt_header: r.jwt_header.take(),
        jwt_claims: r.jwt_claims.take(),
        geo: r.geo.0.take().and_then(|g| g.raw()),
        authenticated: r.authenticated.take(),
        scheme: r.scheme.0.take(),
        ..Fields::default()
    }
}
