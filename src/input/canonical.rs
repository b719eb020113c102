//! `canonical`: tokenwatch's own format, for pipelines that reshape logs before Kafka.
//!
//! `ts`, `client_ip`, `method`, `path` (with query), `status`, `user_agent`, and the token as
//! `authorization` (`Bearer <jwt>`) or `token` (bare JWT); optionally `geo` {lat, lon,
//! accuracy_km} and `jwt_header` / `jwt_claims` for gateways that log claims, not tokens.

use super::{Fields, RawLine};

pub fn fields(r: RawLine<'_>) -> Fields<'_> {
    Fields {
        ts: r.ts,
        client_ip: r.client_ip.0,
        method: r.method.0,
        path: r.path.0,
        status: r.status,
        user_agent: r.user_agent.0,
        authorization: r.authorization.0,
        token: r.token.0,
        jwt_header: r.jwt_header,
        jwt_claims: r.jwt_claims,
        geo: r.geo,
    }
}
