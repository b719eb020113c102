//! `aws`: Amazon API Gateway access logs (REST and HTTP APIs) in JSON, with the field names of
//! AWS's own examples.
//!
//! `requestTimeEpoch` (ms) or `requestTime` (`$context.requestTime`, Common Log Format),
//! `ip` (`$context.identity.sourceIp`), `httpMethod`, `path` (or `resourcePath`, or the path
//! of `routeKey`, `GET /orders`), `status`, `userAgent`. API Gateway cannot log the
//! Authorization header; it logs what its JWT or Cognito authorizer verified,
//! `$context.authorizer.claims.<name>`, one variable per claim: the preset reads them nested as
//! `claims` {…} or `authorizer` {`claims` {…}}. Flat keys need a `custom` mapping's
//! `[input.mapping.claims]`.

use super::raw::first_time;
use super::{kong, Fields, RawLine};

pub fn fields<'a>(r: &mut RawLine<'a>) -> Fields<'a> {
    let (route_method, route_path) = match r.routeKey.0.take() {
        Some(k) => kong::split_request_line(k),
        None => (None, None),
    };
    let claims = r
        .claims
        .take()
        .or_else(|| r.authorizer.0.take().and_then(|a| a.claims))
        .filter(serde_json::Value::is_object);
    Fields {
        ts: first_time([&mut r.requestTimeEpoch, &mut r.requestTime]),
        client_ip: r.ip.0.take(),
        method: r.httpMethod.0.take().or(route_method),
        path: r.path.0.take().or(r.resourcePath.0.take()).or(route_path),
        status: r.status.take(),
        user_agent: r.userAgent.0.take(),
        jwt_claims: claims,
        ..Fields::default()
    }
}
