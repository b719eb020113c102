//! `kong`: the JSON that Kong's log plugins (file-log, http-log, tcp-log, kafka-log) write.
//!
//! Kong redacts `authorization` by default, so the decoded claims may instead arrive as
//! top-level `jwt_claims` (and `jwt_header`) added with `custom_fields_by_lua` (see README).
//! Those are the claims of the token Kong's jwt plugin verified, so they attest it; so does an
//! `authenticated_entity` (a credential authenticated the request; an anonymous consumer has
//! none).

use super::{Fields, RawLine};

pub fn fields<'a>(r: &mut RawLine<'a>) -> Fields<'a> {
    let req = r.request.take().unwrap_or_default();
    let headers = req.headers.unwrap_or_default();
    Fields {
        ts: r.started_at.take(),
        client_ip: r.client_ip.0.take(),
        method: req.method.0,
        path: req.uri.0,
        status: r.response.take().and_then(|s| s.status),
        user_agent: headers.user_agent.0,
        authorization: headers.authorization.0,
        jwt_header: r.jwt_header.take(),
        jwt_claims: r.jwt_claims.take(),
        authenticated: r.authenticated_entity.take().map(|_| true),
        claims_attested: true,
        ..Fields::default()
    }
}
