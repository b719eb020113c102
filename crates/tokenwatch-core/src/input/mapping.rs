//! A user-defined mapping (config file `[input.mapping]`) for gateways without a preset.
//!
//! Each event field names where it lives in the line: a dotted path (`request.headers.auth`)
//! or an RFC 6901 JSON Pointer (`/request/headers/x.y`, for keys that contain dots). Paths are
//! compiled to pointers once, when the config is loaded. The line is parsed into a generic
//! JSON value, which costs more than a preset; presets remain the fast path.
//!
//! Gateways that log verified claims one by one (API Gateway's
//! `$context.authorizer.claims.sub`) map each claim in `[input.mapping.claims]`
//! (`sub = "claims.sub"`, or a flat key, `sub = "/claims.sub"`); the claims so found make the
//! token, on their own or over a `jwt_claims` object. A query string logged apart from the
//! path is mapped as `query`.

use std::borrow::Cow;
use std::collections::BTreeMap;

use serde::Deserialize;
use serde_json::Value;

use super::raw::RawGeo;
use super::{Fields, Scalar, Skip};

/// The `[input.mapping]` table: event field → JSON path in the log line.
#[derive(Debug, Clone, Default, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct MappingConfig {
    pub ts: String,
    pub client_ip: Option<String>,
    pub method: Option<String>,
    pub path: Option<String>,
    /// The query string, when the gateway logs it apart from the path.
    pub query: Option<String>,
    pub status: Option<String>,
    pub user_agent: Option<String>,
    pub authorization: Option<String>,
    pub token: Option<String>,
    pub jwt_header: Option<String>,
    pub jwt_claims: Option<String>,
    /// `[input.mapping.claims]`: claim name → path of its value.
    pub claims: Option<BTreeMap<String, String>>,
    pub geo_lat: Option<String>,
    pub geo_lon: Option<String>,
    pub geo_accuracy_km: Option<String>,
    /// Where the gateway says it verified the token (an `auth_request` / ForwardAuth result):
    /// a boolean, or `true`/`false`, `yes`/`no`, `1`/`0`.
    pub authenticated: Option<String>,
    /// The scheme the request came over (`token-over-http`): `http` or `https` in any case,
    /// or an absolute URL (`http://host/path`) whose scheme is taken. Absent or anything
    /// else: the scheme is unknown, as in formats that do not log it.
    pub scheme: Option<String>,
}

/// A compiled mapping: every path as a JSON Pointer.
#[derive(Debug, Clone, PartialEq)]
pub struct Mapping {
    ts: String,
    client_ip: Option<String>,
    method: Option<String>,
    path: Option<String>,
    query: Option<String>,
    status: Option<String>,
    user_agent: Option<String>,
    authorization: Option<String>,
    token: Option<String>,
    jwt_header: Option<String>,
    jwt_claims: Option<String>,
    /// Claim name → pointer, in name order.
    claims: Vec<(String, String)>,
    geo: Option<(String, String, Option<String>)>,
    authenticated: Option<String>,
    scheme: Option<String>,
}

/// A mapping that cannot be compiled; the message names the `[input.mapping]` key at fault.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum MappingError {
    #[error("input.mapping.{key}: {source}")]
    Path {
        /// `ts`, `client_ip`, ... or `claims.NAME`.
        key: String,
        source: PathError,
    },
    #[error("input.mapping: geo_lat and geo_lon must be given together")]
    GeoHalf,
}

/// A JSON path that is no path.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PathError {
    #[error("empty path")]
    Empty,
    #[error("path `{0}` has an empty segment")]
    EmptySegment(String),
}

/// `a.b.c` or `$.a.b` → `/a/b/c`; a path starting with `/` is already a pointer.
fn to_pointer(path: &str) -> Result<String, PathError> {
    let p = path.trim();
    if p.is_empty() {
        return Err(PathError::Empty);
    }
    if p.starts_with('/') {
        return Ok(p.to_string());
    }
    let p = p.strip_prefix("$.").unwrap_or(p);
    let mut out = String::new();
    for seg in p.split('.') {
        if seg.is_empty() {
            return Err(PathError::EmptySegment(path.to_string()));
        }
        out.push('/');
        out.push_str(&seg.replace('~', "~0").replace('/', "~1"));
    }
    Ok(out)
}

/// The pointer of the path given under `key`, the error naming the key.
fn pointer(key: &str, path: &str) -> Result<String, MappingError> {
    to_pointer(path).map_err(|source| MappingError::Path {
        key: key.to_string(),
        source,
    })
}

impl Mapping {
    /// Compiles the paths; the error names the mapping key at fault.
    pub fn compile(c: &MappingConfig) -> Result<Self, MappingError> {
        let p = |key: &str, v: &Option<String>| v.as_deref().map(|s| pointer(key, s)).transpose();
        let geo = match (&c.geo_lat, &c.geo_lon) {
            (Some(_), Some(_)) => Some((
                p("geo_lat", &c.geo_lat)?.unwrap_or_default(),
                p("geo_lon", &c.geo_lon)?.unwrap_or_default(),
                p("geo_accuracy_km", &c.geo_accuracy_km)?,
            )),
            (None, None) => None,
            _ => return Err(MappingError::GeoHalf),
        };
        let claims = c
            .claims
            .iter()
            .flatten()
            .map(|(name, path)| Ok((name.clone(), pointer(&format!("claims.{name}"), path)?)))
            .collect::<Result<Vec<_>, _>>()?;
        Ok(Mapping {
            ts: pointer("ts", &c.ts)?,
            client_ip: p("client_ip", &c.client_ip)?,
            method: p("method", &c.method)?,
            path: p("path", &c.path)?,
            query: p("query", &c.query)?,
            status: p("status", &c.status)?,
            user_agent: p("user_agent", &c.user_agent)?,
            authorization: p("authorization", &c.authorization)?,
            token: p("token", &c.token)?,
            jwt_header: p("jwt_header", &c.jwt_header)?,
            jwt_claims: p("jwt_claims", &c.jwt_claims)?,
            claims,
            geo,
            authenticated: p("authenticated", &c.authenticated)?,
            scheme: p("scheme", &c.scheme)?,
        })
    }

    /// Whether lines can carry the gateway's attestation (an `authenticated` path).
    pub fn attests(&self) -> bool {
        self.authenticated.is_some()
    }

    pub fn fields(&self, line: &[u8]) -> Result<Fields<'static>, Skip> {
        let v: Value = serde_json::from_slice(line).map_err(|_| Skip::InvalidJson)?;
        if !v.is_object() {
            return Err(Skip::NotAnObject);
        }
        let get = |p: &Option<String>| p.as_deref().and_then(|p| v.pointer(p));
        let s = |p: &Option<String>| get(p).and_then(string);
        let scalar = |x: Option<&Value>| {
            x.map(|x| match x {
                Value::Number(n) => Scalar::Num(n.as_f64().unwrap_or(f64::NAN)),
                Value::String(s) => Scalar::Str(Cow::Owned(s.clone())),
                _ => Scalar::Other,
            })
        };
        // A location of another type than a number is absent, like any field of a type it
        // cannot be; a number out of range is a bad location (`finish` checks the range).
        let geo = match &self.geo {
            None => None,
            Some((lat, lon, acc)) => match (v.pointer(lat).and_then(num), v.pointer(lon).and_then(num)) {
                (Some(lat), Some(lon)) => Some(RawGeo {
                    lat,
                    lon,
                    accuracy_km: acc.as_deref().and_then(|a| v.pointer(a)).and_then(num).unwrap_or(0.0),
                }),
                _ => None,
            },
        };
        Ok(Fields {
            ts: scalar(v.pointer(&self.ts)),
            client_ip: get(&self.client_ip).and_then(address),
            method: s(&self.method),
            path: s(&self.path),
            query: s(&self.query),
            status: scalar(get(&self.status)),
            user_agent: s(&self.user_agent),
            authorization: s(&self.authorization),
            token: s(&self.token),
            jwt_header: get(&self.jwt_header).filter(|h| h.is_object()).cloned(),
            jwt_claims: self.claims_of(&v),
            geo,
            authenticated: get(&self.authenticated).and_then(|v| match v {
                Value::Bool(b) => Some(*b),
                Value::String(s) => super::raw::bool_text(s),
                Value::Number(n) => n.as_i64().and_then(|n| super::raw::bool_text(&n.to_string())),
                _ => None,
            }),
            claims_attested: false,
            scheme: s(&self.scheme).and_then(|v| match v.contains("://") {
                true => super::kong::url_scheme(&v).map(Cow::Borrowed),
                false => Some(v),
            }),
        })
    }

    /// The `jwt_claims` object, with the claims mapped one by one set over it; `None` when
    /// neither gives any claim.
    fn claims_of(&self, v: &Value) -> Option<Value> {
        let whole = self
            .jwt_claims
            .as_deref()
            .and_then(|p| v.pointer(p))
            .filter(|c| c.is_object());
        if self.claims.is_empty() {
            return whole.cloned();
        }
        let mut map = match whole {
            Some(Value::Object(m)) => m.clone(),
            _ => serde_json::Map::new(),
        };
        for (name, pointer) in &self.claims {
            if let Some(c) = v.pointer(pointer).filter(|c| !c.is_null()) {
                map.insert(name.clone(), c.clone());
            }
        }
        (!map.is_empty()).then_some(Value::Object(map))
    }
}

/// Text from a string, a number or the first element of an array; other types are absent.
fn string(v: &Value) -> Option<Cow<'static, str>> {
    match v {
        Value::String(s) => Some(Cow::Owned(s.clone())),
        Value::Number(n) => Some(Cow::Owned(n.to_string())),
        Value::Array(a) => a.first().and_then(string),
        _ => None,
    }
}

/// An address is text: a number or an array is no address, and is absent rather than a bad
/// line.
fn address(v: &Value) -> Option<Cow<'static, str>> {
    v.as_str().map(|s| Cow::Owned(s.to_owned()))
}

fn num(v: &Value) -> Option<f64> {
    match v {
        Value::Number(n) => n.as_f64(),
        Value::String(s) => s.trim().parse().ok(),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::input::{Format, Parser};
    use crate::token::TokenCache;

    #[test]
    fn paths_become_pointers() {
        assert_eq!(to_pointer("a.b").unwrap(), "/a/b");
        assert_eq!(to_pointer("$.a.b/c").unwrap(), "/a/b~1c");
        assert_eq!(to_pointer("/a/x.y").unwrap(), "/a/x.y");
        assert!(to_pointer("a..b").is_err());
        assert!(to_pointer(" ").is_err());
    }

    #[test]
    fn a_custom_gateway_is_read_through_the_mapping() {
        let cfg: MappingConfig = toml::from_str(
            r#"
            ts = "time"
            client_ip = "peer.ip"
            path = "http.url"
            status = "http.code"
            authorization = "/http/headers/x.auth"
            geo_lat = "loc.lat"
            geo_lon = "loc.lon"
            "#,
        )
        .unwrap();
        let m = Mapping::compile(&cfg).unwrap();
        let p = Parser::new(Format::Custom, Some(m)).unwrap();
        let mut cache = TokenCache::new(vec![]);
        let tok = crate::input::tests::jwt(serde_json::json!({"jti":"j1","sub":"s"}));
        let line = serde_json::json!({
            "time": "2026-11-29T00:00:00Z", "peer": {"ip": "81.2.69.142"},
            "http": {"url": "/a?b=1", "code": "403", "headers": {"x.auth": format!("Bearer {tok}")}},
            "loc": {"lat": 51.5, "lon": "-0.1"}
        })
        .to_string();
        let e = p.parse(line.as_bytes(), &mut cache).unwrap().event;
        assert_eq!(e.ts_ms, 1_795_910_400_000);
        assert_eq!(e.status, Some(403));
        assert_eq!(&*e.path, "/a", "the query is cut");
        assert_eq!(&*e.token.unwrap().token_id, "j1");
        assert_eq!(e.geo.unwrap().lon, -0.1);
        assert_eq!(
            p.parse(b"{\"peer\":1}", &mut cache).unwrap_err(),
            Skip::MissingTimestamp
        );
        assert!(Mapping::compile(&MappingConfig {
            ts: "t".into(),
            geo_lat: Some("a".into()),
            ..Default::default()
        })
        .is_err());
    }

    /// API Gateway's flat claims (`"sub": "$context.authorizer.claims.sub"`, or a key with
    /// dots in it) made into a token through `[input.mapping.claims]`, and a query logged
    /// apart from the path.
    #[test]
    fn claims_mapped_one_by_one_and_a_separate_query() {
        let cfg: MappingConfig = toml::from_str(
            r#"
            ts = "requestTimeEpoch"
            client_ip = "ip"
            path = "path"
            query = "queryString"
            jwt_claims = "claims"
            [claims]
            sub = "sub"
            iss = "/authorizer.claims.iss"
            exp = "exp"
            "#,
        )
        .unwrap();
        let p = Parser::new(Format::Custom, Some(Mapping::compile(&cfg).unwrap())).unwrap();
        let mut cache = TokenCache::new(vec![]);
        let line = serde_json::json!({
            "requestTimeEpoch": "1795910400000", "ip": "198.51.100.1", "path": "/pets",
            "queryString": "page=2", "sub": "alice", "authorizer.claims.iss": "https://idp",
            "exp": "1795914000", "claims": {"iat": 1_795_910_000, "sub": "overridden"}
        })
        .to_string();
        let e = p.parse(line.as_bytes(), &mut cache).unwrap().event;
        let t = e.token.expect("a token from the mapped claims");
        assert_eq!(t.sub.as_deref(), Some("alice"), "a mapped claim wins over jwt_claims");
        assert_eq!(t.iss.as_deref(), Some("https://idp"));
        assert_eq!((t.exp, t.iat), (Some(1_795_914_000), Some(1_795_910_000)));
        assert_eq!(&*e.path, "/pets");
        // no claim present: no token
        let line = serde_json::json!({"requestTimeEpoch": 1_795_910_400_000u64}).to_string();
        assert!(p.parse(line.as_bytes(), &mut cache).unwrap().event.token.is_none());
        // a bad claim path names its key
        let bad: MappingConfig = toml::from_str("ts = \"t\"\n[claims]\nsub = \"a..b\"\n").unwrap();
        let e = Mapping::compile(&bad).unwrap_err();
        assert!(e.to_string().starts_with("input.mapping.claims.sub: "), "{e}");
    }

    /// `scheme` maps a field that holds `http`/`https` or a whole URL; without it, or with
    /// anything else there, the scheme is unknown (not https).
    #[test]
    fn the_scheme_is_mapped_from_a_field_or_a_url() {
        use crate::input::Scheme;
        let scheme_of = |mapping: &str, line: serde_json::Value| {
            let cfg: MappingConfig = toml::from_str(&format!("ts = \"t\"\n{mapping}")).unwrap();
            let p = Parser::new(Format::Custom, Some(Mapping::compile(&cfg).unwrap())).unwrap();
            let mut line = line;
            line["t"] = serde_json::json!("2026-11-29T00:00:00Z");
            p.parse(line.to_string().as_bytes(), &mut TokenCache::new(vec![]))
                .unwrap()
                .event
                .scheme
        };
        let proto = "scheme = \"req.proto\"";
        assert_eq!(
            scheme_of(proto, serde_json::json!({"req": {"proto": "HTTP"}})),
            Some(Scheme::Http)
        );
        assert_eq!(
            scheme_of(proto, serde_json::json!({"req": {"proto": "https"}})),
            Some(Scheme::Https)
        );
        assert_eq!(scheme_of(proto, serde_json::json!({"req": {"proto": "ftp"}})), None);
        let url = "scheme = \"url\"";
        assert_eq!(
            scheme_of(url, serde_json::json!({"url": "http://api.example.com/x?a=1"})),
            Some(Scheme::Http)
        );
        assert_eq!(
            scheme_of(url, serde_json::json!({"url": "HTTPS://api.example.com/"})),
            Some(Scheme::Https)
        );
        assert_eq!(scheme_of(url, serde_json::json!({"url": "gopher://x/"})), None);
        assert_eq!(
            scheme_of("", serde_json::json!({"url": "http://x/"})),
            None,
            "not mapped"
        );
        let e = Mapping::compile(&toml::from_str("ts = \"t\"\nscheme = \"a..b\"").unwrap()).unwrap_err();
        assert!(e.to_string().starts_with("input.mapping.scheme: "), "{e}");
    }
}
