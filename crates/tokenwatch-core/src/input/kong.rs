//! `kong`: the JSON that Kong's log plugins (file-log, http-log, tcp-log, kafka-log) write.
//!
//! Kong always writes `authorization: "REDACTED"`, so the decoded claims arrive instead as
//! top-level `jwt_claims` (and `jwt_header`) added with `custom_fields_by_lua` (see README);
//! the redacted header is counted (`authorization_redacted`) so that a missing token is
//! explained. Those are the claims of the token Kong's jwt plugin verified, so they attest it;
//! so does an `authenticated_entity` (a credential authenticated the request; an anonymous
//! consumer has none). APISIX's loggers write the same `request` / `response` objects
//! ([`super::apisix`]).

use std::borrow::Cow;

use super::raw::Scalar;
use super::{Fields, RawLine};

pub fn fields<'a>(r: &mut RawLine<'a>) -> Fields<'a> {
    let ts = r.started_at.take();
    request_fields(r, ts)
}

/// The fields of Kong's and APISIX's shared shape, with the preset's own timestamp.
pub(crate) fn request_fields<'a>(r: &mut RawLine<'a>, ts: Option<Scalar<'a>>) -> Fields<'a> {
    let req = r.request.take_object();
    let headers = req.headers.0.unwrap_or_default();
    let scheme = req.url.0.as_deref().and_then(url_scheme).map(Cow::Borrowed);
    Fields {
        ts,
        client_ip: r.client_ip.0.take(),
        method: req.method.0,
        path: req.uri.0.or(req.url.0),
        status: r.response.0.take().and_then(|s| s.status),
        user_agent: headers.user_agent.0,
        authorization: headers.authorization.0,
        jwt_header: r.jwt_header.take(),
        jwt_claims: r.jwt_claims.take(),
        authenticated: r.authenticated_entity.take().map(|_| true),
        claims_attested: true,
        scheme,
        ..Fields::default()
    }
}

/// The scheme of an absolute URL (`request.url`, `https://host/path`): only `http` or
/// `https`, so nothing of the URL itself is kept.
pub(super) fn url_scheme(url: &str) -> Option<&'static str> {
    let (scheme, _) = url.split_once("://")?;
    ["http", "https"].into_iter().find(|s| scheme.eq_ignore_ascii_case(s))
}

/// `GET /path?q HTTP/1.1` → (`GET`, `/path?q`): nginx's `$request`, API Gateway's `routeKey`.
pub(crate) fn split_request_line(line: Cow<'_, str>) -> (Option<Cow<'_, str>>, Option<Cow<'_, str>>) {
    fn parts(l: &str) -> Option<(usize, usize, usize)> {
        let l_trim = l.trim_start();
        let start = l.len() - l_trim.len();
        let m_end = start + l_trim.find(' ')?;
        let rest = &l[m_end..];
        let u_start = m_end + (rest.len() - rest.trim_start().len());
        let u_len = l[u_start..].find(' ').unwrap_or(l.len() - u_start);
        (u_len > 0).then_some((m_end, u_start, u_start + u_len))
    }
    let Some((m_end, u_start, u_end)) = parts(&line) else {
        return (None, None);
    };
    let m_start = line.len() - line.trim_start().len();
    match line {
        Cow::Borrowed(l) => (
            Some(Cow::Borrowed(&l[m_start..m_end])),
            Some(Cow::Borrowed(&l[u_start..u_end])),
        ),
        Cow::Owned(l) => (
            Some(Cow::Owned(l[m_start..m_end].to_owned())),
            Some(Cow::Owned(l[u_start..u_end].to_owned())),
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn request_lines_split_into_method_and_uri() {
        let s = |l: &'static str| {
            let (m, u) = split_request_line(Cow::Borrowed(l));
            (m.map(Cow::into_owned), u.map(Cow::into_owned))
        };
        let some = |m: &str, u: &str| (Some(m.to_string()), Some(u.to_string()));
        assert_eq!(s("GET /a?b=1 HTTP/1.1"), some("GET", "/a?b=1"));
        assert_eq!(s("POST /orders"), some("POST", "/orders"));
        assert_eq!(s("GET  /x  HTTP/2.0"), some("GET", "/x"));
        assert_eq!(s("$default"), (None, None));
        assert_eq!(s(""), (None, None));
        assert_eq!(s("GET "), (None, None));
        let (m, u) = split_request_line(Cow::Owned("PUT /y HTTP/1.1".to_string()));
        assert_eq!((m.as_deref(), u.as_deref()), (Some("PUT"), Some("/y")));
    }
}
