//! `traefik`: Traefik's JSON access log (`accessLog.format: json`).
//!
//! Headers appear only when kept (`accessLog.fields.headers.names.Authorization: keep`) as
//! `request_Authorization`; a redacted header reads `REDACTED` and carries no token.

use super::{Fields, RawLine};

pub fn fields<'a>(r: &mut RawLine<'a>) -> Fields<'a> {
    Fields {
        ts: r.StartUTC.take(),
        client_ip: r.ClientHost.0.take(),
        method: r.RequestMethod.0.take(),
        path: r.RequestPath.0.take(),
        status: r.DownstreamStatus.take(),
        user_agent: r.request_User_Agent.0.take(),
        authorization: r.request_Authorization.0.take(),
        ..Fields::default()
    }
}
