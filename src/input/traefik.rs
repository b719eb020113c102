//! `traefik`: Traefik's JSON access log (`accessLog.format: json`).
//!
//! Headers appear only when kept (`accessLog.fields.headers.names.Authorization: keep`) as
//! `request_Authorization`; a redacted header reads `REDACTED` and carries no token.

use super::{Fields, RawLine};

pub fn fields(r: RawLine<'_>) -> Fields<'_> {
    Fields {
        ts: r.StartUTC,
        client_ip: r.ClientHost.0,
        method: r.RequestMethod.0,
        path: r.RequestPath.0,
        status: r.DownstreamStatus,
        user_agent: r.request_User_Agent.0,
        authorization: r.request_Authorization.0,
        ..Fields::default()
    }
}
