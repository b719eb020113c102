//! `nginx`: the `log_format ... escape=json` recommended in README.
//!
//! `$msec` (epoch seconds with milliseconds) is preferred over `$time_iso8601`, which has
//! only whole seconds; either is accepted.

use super::{Fields, RawLine};

pub fn fields<'a>(r: &mut RawLine<'a>) -> Fields<'a> {
    Fields {
        ts: r.msec.take().or(r.time_iso8601.take()),
        client_ip: r.remote_addr.0.take(),
        method: r.request_method.0.take(),
        path: r.request_uri.0.take(),
        status: r.status.take(),
        user_agent: r.http_user_agent.0.take(),
        authorization: r.http_authorization.0.take(),
        ..Fields::default()
    }
}
