//! `nginx`: nginx's JSON `log_format`s as they are written in the wild.
//!
//! README's format (`$msec`, `$remote_addr`, `$request_method`, `$request_uri` ...),
//! ingress-nginx's documented example (`time`, `path` = `$uri` with the query apart in
//! `request_query`, `method`, `remote_addr` = `$proxy_protocol_addr`, which is empty without
//! the PROXY protocol: then the last address of `x_forwarded_for` = `$proxy_add_x_forwarded_for`,
//! the one nginx appended itself; the ones before it are whatever the client sent), and the
//! common `json_logs`
//! (`time_local` in the Common Log Format, `request` = `$request`, the request line, split into
//! method and URI). `$msec` (milliseconds) is preferred over the whole-second times.

use std::borrow::Cow;

use super::raw::first_time;
use super::{kong, Fields, RawLine};

pub fn fields<'a>(r: &mut RawLine<'a>) -> Fields<'a> {
    let (line_method, line_uri) = match r.request.take_line() {
        Some(l) => kong::split_request_line(l),
        None => (None, None),
    };
    let client = r.remote_addr.0.take().filter(|a| !matches!(a.trim(), "" | "-"));
    Fields {
        ts: first_time([&mut r.msec, &mut r.time_iso8601, &mut r.time_local, &mut r.time]),
        client_ip: client.or(r.x_forwarded_for.0.take().map(last_hop)),
        method: r.request_method.0.take().or(r.method.0.take()).or(line_method),
        path: r.request_uri.0.take().or(r.path.0.take()).or(line_uri),
        query: r.request_query.0.take(),
        status: r.status.take(),
        user_agent: r.http_user_agent.0.take(),
        authorization: r.http_authorization.0.take(),
        scheme: r.scheme.0.take(),
        ..Fields::default()
    }
}

/// The last address of a forwarding chain (`a, b, c` → `c`), borrowed when the chain was.
fn last_hop(chain: Cow<'_, str>) -> Cow<'_, str> {
    let at = chain.rfind(',').map_or(0, |i| i + 1);
    match chain {
        Cow::Borrowed(c) => Cow::Borrowed(c[at..].trim()),
        Cow::Owned(c) => Cow::Owned(c[at..].trim().to_owned()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_last_hop_is_the_one_nginx_saw() {
        assert_eq!(last_hop(Cow::Borrowed("6.6.6.6, 10.0.0.1")), "10.0.0.1");
        assert_eq!(last_hop(Cow::Borrowed("10.0.0.1")), "10.0.0.1");
        assert_eq!(last_hop(Cow::Owned("a,b ".into())), "b");
    }
}
