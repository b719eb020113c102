//! `kong`: the JSON that Kong's log plugins (file-log, http-log, tcp-log, kafka-log) write.
//!
//! Kong redacts `authorization` by default, so the decoded claims may instead arrive as
//! top-level `jwt_claims` (and `jwt_header`) added with `custom_fields_by_lua` (see README).

use super::{Fields, RawLine};

pub fn fields(r: RawLine<'_>) -> Fields<'_> {
    let req = r.request.unwrap_or_default();
    let headers = req.headers.unwrap_or_default();
    Fields {
        ts: r.started_at,
        client_ip: r.client_ip.0,
        method: req.method.0,
        path: req.uri.0,
        status: r.response.and_then(|s| s.status),
        user_agent: headers.user_agent.0,
        authorization: headers.authorization.0,
        jwt_header: r.jwt_header,
        jwt_claims: r.jwt_claims,
        ..Fields::default()
    }
}
