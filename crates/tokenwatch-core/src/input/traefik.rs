//! `traefik`: Traefik's JSON access log (`accessLog.format: json`).
//!
//! Traefik's own docs suggest dropping `StartUTC` (keeping `StartLocal`, with its offset) and
//! `ClientHost` (keeping `ClientAddr`, `ip:port`): either of each pair is read. Headers appear
//! only when kept (`accessLog.fields.headers.names.Authorization: keep`) as
//! `request_Authorization`; a redacted header reads `REDACTED` and carries no token.

use super::raw::first_time;
use super::{Fields, RawLine};

pub fn fields<'a>(r: &mut RawLine<'a>) -> Fields<'a> {
    Fields {
        ts: first_time([&mut r.StartUTC, &mut r.StartLocal]),
        client_ip: r.ClientHost.0.take().or(r.ClientAddr.0.take()),
        method: r.RequestMethod.0.take(),
        path: r.RequestPath.0.take(),
        status: r.DownstreamStatus.take(),
        user_agent: r.request_User_Agent.0.take(),
        authorization: r.request_Authorization.0.take(),
        scheme: r.RequestScheme.0.take(),
        ..Fields::default()
    }
}
