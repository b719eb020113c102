//! The union of every preset format's fields, read in one borrowed serde pass.
//!
//! Reading all formats through one struct keeps `auto` as cheap as a fixed format: the line is
//! parsed once, and detection only looks at which timestamp fields were present. Unknown fields
//! are skipped by serde without being copied.
//!
//! Every field is lenient about its JSON type: a value of a type the field cannot use (a string
//! where an object is expected, an object where a string is expected, a number where an
//! address is expected ...) reads as absent, so one odd field never costs the whole line.

use std::borrow::Cow;
use std::fmt;

use serde::de::{self, Deserializer, IgnoredAny, Visitor};
use serde::Deserialize;

use super::{Format, GeoPoint, Skip};

/// A JSON scalar that may be a number or a string (timestamps and statuses come as both).
/// Its `Debug` redacts JWTs (a custom mapping may point anywhere).
#[derive(Clone, PartialEq)]
pub enum Scalar<'a> {
    Num(f64),
    Str(Cow<'a, str>),
    /// Anything else (bool, null, object, array): present but unusable.
    Other,
}

impl fmt::Debug for Scalar<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Scalar::Num(n) => f.debug_tuple("Num").field(n).finish(),
            Scalar::Str(s) => f.debug_tuple("Str").field(&crate::token::redact_jwts(s)).finish(),
            Scalar::Other => f.write_str("Other"),
        }
    }
}

impl<'de: 'a, 'a> Deserialize<'de> for Scalar<'a> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        d.deserialize_any(ScalarVisitor {
            first_of_array: false,
            _l: std::marker::PhantomData,
        })
    }
}

/// Reads any JSON value as a [`Scalar`]; with `first_of_array`, an array yields its first
/// scalar element (repeated headers), otherwise [`Scalar::Other`].
struct ScalarVisitor<'a> {
    first_of_array: bool,
    _l: std::marker::PhantomData<&'a ()>,
}

impl<'de: 'a, 'a> Visitor<'de> for ScalarVisitor<'a> {
    type Value = Scalar<'a>;
    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("a number or a string")
    }
    fn visit_i64<E: de::Error>(self, v: i64) -> Result<Self::Value, E> {
        Ok(Scalar::Num(v as f64))
    }
    fn visit_u64<E: de::Error>(self, v: u64) -> Result<Self::Value, E> {
        Ok(Scalar::Num(v as f64))
    }
    fn visit_f64<E: de::Error>(self, v: f64) -> Result<Self::Value, E> {
        Ok(Scalar::Num(v))
    }
    fn visit_borrowed_str<E: de::Error>(self, v: &'de str) -> Result<Self::Value, E> {
        Ok(Scalar::Str(Cow::Borrowed(v)))
    }
    fn visit_str<E: de::Error>(self, v: &str) -> Result<Self::Value, E> {
        Ok(Scalar::Str(Cow::Owned(v.to_owned())))
    }
    fn visit_string<E: de::Error>(self, v: String) -> Result<Self::Value, E> {
        Ok(Scalar::Str(Cow::Owned(v)))
    }
    fn visit_bool<E: de::Error>(self, _: bool) -> Result<Self::Value, E> {
        Ok(Scalar::Other)
    }
    fn visit_unit<E: de::Error>(self) -> Result<Self::Value, E> {
        Ok(Scalar::Other)
    }
    fn visit_seq<A: de::SeqAccess<'de>>(self, mut a: A) -> Result<Self::Value, A::Error> {
        let first = if self.first_of_array {
            a.next_element::<Scalar<'a>>()?.unwrap_or(Scalar::Other)
        } else {
            Scalar::Other
        };
        while a.next_element::<IgnoredAny>()?.is_some() {}
        Ok(first)
    }
    fn visit_map<A: de::MapAccess<'de>>(self, mut a: A) -> Result<Self::Value, A::Error> {
        while a.next_entry::<IgnoredAny, IgnoredAny>()?.is_some() {}
        Ok(Scalar::Other)
    }
}

/// A string field that tolerates other JSON types (as absent) instead of failing the line,
/// and takes the first element of an array (repeated headers, as Kong logs them). It may hold
/// an Authorization header, so its `Debug` shows only the length.
#[derive(Clone, PartialEq, Default)]
pub struct LenientStr<'a>(pub Option<Cow<'a, str>>);

impl fmt::Debug for LenientStr<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.0 {
            None => f.write_str("LenientStr(None)"),
            Some(s) => write!(f, "LenientStr(<{} bytes>)", s.len()),
        }
    }
}

impl<'de: 'a, 'a> Deserialize<'de> for LenientStr<'a> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        match d.deserialize_any(ScalarVisitor {
            first_of_array: true,
            _l: std::marker::PhantomData,
        })? {
            Scalar::Str(s) => Ok(LenientStr(Some(s))),
            Scalar::Num(n) => Ok(LenientStr(Some(Cow::Owned(n.to_string())))),
            Scalar::Other => Ok(LenientStr(None)),
        }
    }
}

/// Like [`LenientStr`], but only a string counts: a number or an array is no address, so
/// `client_ip: 5` reads as absent rather than as the (bad) address `"5"`.
#[derive(Clone, PartialEq, Default)]
pub struct StrOnly<'a>(pub Option<Cow<'a, str>>);

impl fmt::Debug for StrOnly<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.0 {
            None => f.write_str("StrOnly(None)"),
            Some(s) => write!(f, "StrOnly(<{} bytes>)", s.len()),
        }
    }
}

impl<'de: 'a, 'a> Deserialize<'de> for StrOnly<'a> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        match d.deserialize_any(ScalarVisitor {
            first_of_array: false,
            _l: std::marker::PhantomData,
        })? {
            Scalar::Str(s) => Ok(StrOnly(Some(s))),
            Scalar::Num(_) | Scalar::Other => Ok(StrOnly(None)),
        }
    }
}

/// An object field that reads any other JSON type as absent. An object that does not fit `T`
/// (a duplicate key inside it, for one) is still an error, as it would be at the top level.
#[derive(Clone, PartialEq)]
pub struct Lenient<T>(pub Option<T>);

impl<T> Default for Lenient<T> {
    fn default() -> Self {
        Lenient(None)
    }
}

impl<'de, T: Deserialize<'de>> Deserialize<'de> for Lenient<T> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        d.deserialize_any(ObjectVisitor(std::marker::PhantomData))
    }
}

struct ObjectVisitor<T>(std::marker::PhantomData<T>);

impl<'de, T: Deserialize<'de>> Visitor<'de> for ObjectVisitor<T> {
    type Value = Lenient<T>;
    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("an object")
    }
    fn visit_map<A: de::MapAccess<'de>>(self, a: A) -> Result<Self::Value, A::Error> {
        T::deserialize(de::value::MapAccessDeserializer::new(a)).map(|t| Lenient(Some(t)))
    }
    fn visit_seq<A: de::SeqAccess<'de>>(self, mut a: A) -> Result<Self::Value, A::Error> {
        while a.next_element::<IgnoredAny>()?.is_some() {}
        Ok(Lenient(None))
    }
    fn visit_i64<E: de::Error>(self, _: i64) -> Result<Self::Value, E> {
        Ok(Lenient(None))
    }
    fn visit_u64<E: de::Error>(self, _: u64) -> Result<Self::Value, E> {
        Ok(Lenient(None))
    }
    fn visit_f64<E: de::Error>(self, _: f64) -> Result<Self::Value, E> {
        Ok(Lenient(None))
    }
    fn visit_str<E: de::Error>(self, _: &str) -> Result<Self::Value, E> {
        Ok(Lenient(None))
    }
    fn visit_bool<E: de::Error>(self, _: bool) -> Result<Self::Value, E> {
        Ok(Lenient(None))
    }
    fn visit_unit<E: de::Error>(self) -> Result<Self::Value, E> {
        Ok(Lenient(None))
    }
}

/// The `geo` object as a line carries it: numbers or numeric strings; anything else makes the
/// location absent ([`GeoFields::raw`]).
#[derive(Debug, Clone, Default, Deserialize, PartialEq)]
pub struct GeoFields<'a> {
    #[serde(borrow, default)]
    pub lat: Option<Scalar<'a>>,
    #[serde(borrow, default)]
    pub lon: Option<Scalar<'a>>,
    #[serde(borrow, default)]
    pub accuracy_km: Option<Scalar<'a>>,
}

impl GeoFields<'_> {
    /// `None` unless latitude and longitude are both numbers; a non-numeric accuracy is 0.
    pub fn raw(&self) -> Option<RawGeo> {
        let num = |s: &Option<Scalar<'_>>| match s {
            Some(Scalar::Num(n)) => Some(*n),
            Some(Scalar::Str(s)) => s.trim().parse::<f64>().ok(),
            _ => None,
        };
        Some(RawGeo {
            lat: num(&self.lat)?,
            lon: num(&self.lon)?,
            accuracy_km: num(&self.accuracy_km).unwrap_or(0.0),
        })
    }
}

/// The `geo` object of the canonical format.
#[derive(Debug, Clone, Copy, Deserialize, PartialEq)]
pub struct RawGeo {
    pub lat: f64,
    pub lon: f64,
    #[serde(default)]
    pub accuracy_km: f64,
}

impl RawGeo {
    pub fn check(self) -> Option<GeoPoint> {
        let ok = self.lat.is_finite()
            && self.lon.is_finite()
            && self.accuracy_km.is_finite()
            && (-90.0..=90.0).contains(&self.lat)
            && (-180.0..=180.0).contains(&self.lon)
            && self.accuracy_km >= 0.0;
        ok.then_some(GeoPoint {
            lat: self.lat,
            lon: self.lon,
            accuracy_km: self.accuracy_km,
        })
    }
}

// The structs below hold raw header values and URLs: no `Debug` (see `RawLine`'s).

/// The `request` object of Kong's and APISIX's loggers.
#[derive(Clone, Default, Deserialize, PartialEq)]
pub struct KongRequest<'a> {
    #[serde(borrow, default)]
    pub method: LenientStr<'a>,
    #[serde(borrow, default)]
    pub uri: LenientStr<'a>,
    /// The absolute URL, read when `uri` is absent.
    #[serde(borrow, default)]
    pub url: LenientStr<'a>,
    #[serde(borrow, default)]
    pub headers: Lenient<KongHeaders<'a>>,
}

/// `request` is an object in Kong's and APISIX's logs, but nginx's `$request` is the request
/// line as a string (`GET /path HTTP/1.1`): each preset takes the shape it knows.
#[derive(Clone, PartialEq)]
pub enum RawRequest<'a> {
    Object(KongRequest<'a>),
    Line(Cow<'a, str>),
}

/// The `request` field: object, request line, or (any other type) absent.
#[derive(Clone, PartialEq, Default)]
pub struct RequestField<'a>(pub Option<RawRequest<'a>>);

impl<'a> RequestField<'a> {
    pub fn take_object(&mut self) -> KongRequest<'a> {
        match self.0.take() {
            Some(RawRequest::Object(o)) => o,
            other => {
                self.0 = other;
                KongRequest::default()
            }
        }
    }

    pub fn take_line(&mut self) -> Option<Cow<'a, str>> {
        match self.0.take() {
            Some(RawRequest::Line(l)) => Some(l),
            other => {
                self.0 = other;
                None
            }
        }
    }

    pub fn is_object(&self) -> bool {
        matches!(self.0, Some(RawRequest::Object(_)))
    }
}

impl<'de: 'a, 'a> Deserialize<'de> for RequestField<'a> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V<'a>(std::marker::PhantomData<&'a ()>);
        impl<'de: 'a, 'a> Visitor<'de> for V<'a> {
            type Value = RequestField<'a>;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("a request object or request line")
            }
            fn visit_map<A: de::MapAccess<'de>>(self, a: A) -> Result<Self::Value, A::Error> {
                let o = KongRequest::deserialize(de::value::MapAccessDeserializer::new(a))?;
                Ok(RequestField(Some(RawRequest::Object(o))))
            }
            fn visit_borrowed_str<E: de::Error>(self, v: &'de str) -> Result<Self::Value, E> {
                Ok(RequestField(Some(RawRequest::Line(Cow::Borrowed(v)))))
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<Self::Value, E> {
                Ok(RequestField(Some(RawRequest::Line(Cow::Owned(v.to_owned())))))
            }
            fn visit_seq<A: de::SeqAccess<'de>>(self, mut a: A) -> Result<Self::Value, A::Error> {
                while a.next_element::<IgnoredAny>()?.is_some() {}
                Ok(RequestField(None))
            }
            fn visit_i64<E: de::Error>(self, _: i64) -> Result<Self::Value, E> {
                Ok(RequestField(None))
            }
            fn visit_u64<E: de::Error>(self, _: u64) -> Result<Self::Value, E> {
                Ok(RequestField(None))
            }
            fn visit_f64<E: de::Error>(self, _: f64) -> Result<Self::Value, E> {
                Ok(RequestField(None))
            }
            fn visit_bool<E: de::Error>(self, _: bool) -> Result<Self::Value, E> {
                Ok(RequestField(None))
            }
            fn visit_unit<E: de::Error>(self) -> Result<Self::Value, E> {
                Ok(RequestField(None))
            }
        }
        d.deserialize_any(V(std::marker::PhantomData))
    }
}

#[derive(Clone, Default, Deserialize, PartialEq)]
pub struct KongHeaders<'a> {
    #[serde(borrow, default)]
    pub authorization: LenientStr<'a>,
    #[serde(borrow, default, rename = "user-agent")]
    pub user_agent: LenientStr<'a>,
}

#[derive(Clone, Default, Deserialize, PartialEq)]
pub struct KongResponse<'a> {
    #[serde(borrow, default)]
    pub status: Option<Scalar<'a>>,
}

/// What AWS API Gateway logs of its authorizer, when the format nests it as `authorizer`.
#[derive(Clone, Default, Deserialize, PartialEq)]
pub struct AwsAuthorizer {
    #[serde(default)]
    pub claims: Option<serde_json::Value>,
}

/// Where the fast path ([`super::scan`]) stores the value of one key: the field of that JSON
/// name, by its type. The kinds mirror the fields' serde types, so a field stored here is
/// exactly what serde would have read.
pub(super) enum Slot<'s, 'a> {
    Scalar(&'s mut Option<Scalar<'a>>),
    /// An address: only a string counts ([`StrOnly`]).
    Addr(&'s mut StrOnly<'a>),
    Text(&'s mut LenientStr<'a>),
    Request(&'s mut RequestField<'a>),
    /// A nested or typed field, or a rare one (an attestation): the serde pass reads it.
    Serde,
    /// No field has that name: neither pass reads it.
    Unknown,
}

// One constructor per kind of the table below: a kind that does not fit its field's type is
// a compile error.
impl<'s, 'a> Slot<'s, 'a> {
    fn scalar(f: &'s mut Option<Scalar<'a>>) -> Self {
        Slot::Scalar(f)
    }
    fn addr(f: &'s mut StrOnly<'a>) -> Self {
        Slot::Addr(f)
    }
    fn text(f: &'s mut LenientStr<'a>) -> Self {
        Slot::Text(f)
    }
    fn request(f: &'s mut RequestField<'a>) -> Self {
        Slot::Request(f)
    }
    fn serde<T>(_: &'s mut T) -> Self {
        Slot::Serde
    }
}

/// The one table of [`RawLine`]'s fields: each field's JSON name and kind make both its serde
/// name and its slot on the fast path ([`RawLine::slot`]), so a field added here is read by
/// both passes alike, and a field cannot be added to one only.
macro_rules! raw_line {
    (
        $(#[$sm:meta])*
        pub struct $name:ident<$a:lifetime> {
            $( $(#[$m:meta])* $field:ident: $ty:ty = $json:literal => $kind:ident, )*
        }
    ) => {
        $(#[$sm])*
        #[derive(Clone, Default, Deserialize, PartialEq)]
        #[allow(non_snake_case)]
        pub struct $name<$a> {
            $(
                $(#[$m])*
                #[serde(default, rename = $json)]
                pub $field: $ty,
            )*
        }

        impl<$a> $name<$a> {
            /// The field that the JSON key `key` fills.
            pub(super) fn slot(&mut self, key: &str) -> Slot<'_, $a> {
                match key {
                    $( $json => Slot::$kind(&mut self.$field), )*
                    _ => Slot::Unknown,
                }
            }
        }
    };
}

raw_line! {
    /// Every field any preset format reads. Field names are the gateways' own.
    ///
    /// It holds the line's raw text (Authorization headers, URLs with their query), so its
    /// `Debug` prints only which formats the line could be.
    pub struct RawLine<'a> {
        // canonical (and shared with envoy / kong / apisix / nginx where the names coincide)
        #[serde(borrow)]
        ts: Option<Scalar<'a>> = "ts" => scalar,
        #[serde(borrow)]
        client_ip: StrOnly<'a> = "client_ip" => addr,
        #[serde(borrow)]
        method: LenientStr<'a> = "method" => text,
        #[serde(borrow)]
        path: LenientStr<'a> = "path" => text,
        #[serde(borrow)]
        status: Option<Scalar<'a>> = "status" => scalar,
        #[serde(borrow)]
        user_agent: LenientStr<'a> = "user_agent" => text,
        #[serde(borrow)]
        authorization: LenientStr<'a> = "authorization" => text,
        #[serde(borrow)]
        token: LenientStr<'a> = "token" => text,
        #[serde(borrow)]
        geo: Lenient<GeoFields<'a>> = "geo" => serde,
        jwt_header: Option<serde_json::Value> = "jwt_header" => serde,
        jwt_claims: Option<serde_json::Value> = "jwt_claims" => serde,
        /// The gateway says it verified the line's token (canonical; see [`bool_text`]).
        #[serde(deserialize_with = "lenient_bool")]
        authenticated: Option<bool> = "authenticated" => serde,
        /// `http` or `https` (canonical; nginx's `$scheme`; Envoy's `%REQ(:SCHEME)%`).
        #[serde(borrow)]
        scheme: LenientStr<'a> = "scheme" => text,

        // traefik
        #[serde(borrow)]
        StartUTC: Option<Scalar<'a>> = "StartUTC" => scalar,
        #[serde(borrow)]
        StartLocal: Option<Scalar<'a>> = "StartLocal" => scalar,
        #[serde(borrow)]
        ClientHost: StrOnly<'a> = "ClientHost" => addr,
        #[serde(borrow)]
        ClientAddr: StrOnly<'a> = "ClientAddr" => addr,
        #[serde(borrow)]
        RequestMethod: LenientStr<'a> = "RequestMethod" => text,
        #[serde(borrow)]
        RequestPath: LenientStr<'a> = "RequestPath" => text,
        #[serde(borrow)]
        DownstreamStatus: Option<Scalar<'a>> = "DownstreamStatus" => scalar,
        #[serde(borrow)]
        request_Authorization: LenientStr<'a> = "request_Authorization" => text,
        #[serde(borrow)]
        request_User_Agent: LenientStr<'a> = "request_User-Agent" => text,
        #[serde(borrow)]
        RequestScheme: LenientStr<'a> = "RequestScheme" => text,

        // kong and apisix (`request` is also nginx's request line)
        #[serde(borrow)]
        started_at: Option<Scalar<'a>> = "started_at" => scalar,
        #[serde(borrow)]
        request: RequestField<'a> = "request" => request,
        #[serde(borrow)]
        response: Lenient<KongResponse<'a>> = "response" => serde,
        /// The credential that authenticated the request; absent for an anonymous consumer.
        authenticated_entity: Option<IgnoredAny> = "authenticated_entity" => serde,

        // envoy (Istio, Envoy Gateway); `start_time` is also apisix's
        #[serde(borrow)]
        start_time: Option<Scalar<'a>> = "start_time" => scalar,
        #[serde(borrow)]
        response_code: Option<Scalar<'a>> = "response_code" => scalar,
        jwt_payload: Option<serde_json::Value> = "jwt_payload" => serde,
        #[serde(borrow)]
        downstream_remote_address: StrOnly<'a> = "downstream_remote_address" => addr,
        #[serde(borrow)]
        x_envoy_origin_path: LenientStr<'a> = "x-envoy-origin-path" => text,
        #[serde(borrow)]
        user_agent_dashed: LenientStr<'a> = "user-agent" => text,
        /// The scheme the client used, as a proxy in front of Envoy forwards it.
        #[serde(borrow)]
        x_forwarded_proto: LenientStr<'a> = "x-forwarded-proto" => text,

        // nginx (and ingress-nginx)
        #[serde(borrow)]
        msec: Option<Scalar<'a>> = "msec" => scalar,
        #[serde(borrow)]
        time_iso8601: Option<Scalar<'a>> = "time_iso8601" => scalar,
        #[serde(borrow)]
        time_local: Option<Scalar<'a>> = "time_local" => scalar,
        #[serde(borrow)]
        time: Option<Scalar<'a>> = "time" => scalar,
        #[serde(borrow)]
        remote_addr: StrOnly<'a> = "remote_addr" => addr,
        #[serde(borrow)]
        x_forwarded_for: StrOnly<'a> = "x_forwarded_for" => addr,
        #[serde(borrow)]
        request_method: LenientStr<'a> = "request_method" => text,
        #[serde(borrow)]
        request_uri: LenientStr<'a> = "request_uri" => text,
        #[serde(borrow)]
        request_query: LenientStr<'a> = "request_query" => text,
        #[serde(borrow)]
        http_user_agent: LenientStr<'a> = "http_user_agent" => text,
        #[serde(borrow)]
        http_authorization: LenientStr<'a> = "http_authorization" => text,

        // aws (API Gateway access logs, the field names of AWS's examples)
        #[serde(borrow)]
        requestTime: Option<Scalar<'a>> = "requestTime" => scalar,
        #[serde(borrow)]
        requestTimeEpoch: Option<Scalar<'a>> = "requestTimeEpoch" => scalar,
        #[serde(borrow)]
        ip: StrOnly<'a> = "ip" => addr,
        #[serde(borrow)]
        httpMethod: LenientStr<'a> = "httpMethod" => text,
        #[serde(borrow)]
        routeKey: LenientStr<'a> = "routeKey" => text,
        #[serde(borrow)]
        resourcePath: LenientStr<'a> = "resourcePath" => text,
        #[serde(borrow)]
        userAgent: LenientStr<'a> = "userAgent" => text,
        claims: Option<serde_json::Value> = "claims" => serde,
        authorizer: Lenient<AwsAuthorizer> = "authorizer" => serde,
    }
}

impl fmt::Debug for RawLine<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RawLine")
            .field("formats", &self.candidates())
            .finish_non_exhaustive()
    }
}

impl RawLine<'_> {
    /// The presets whose timestamp field the line has, in the order `auto` prefers them on a
    /// tie. `start_time` is Envoy's and APISIX's: APISIX only with its `request` object. A
    /// bare `time` (ingress-nginx's example) counts only when no other preset's time is there,
    /// since Traefik and others log a `time` of their own.
    pub fn candidates(&self) -> Candidates {
        let mut c = Candidates::default();
        c.push_if(self.ts.is_some(), Format::Canonical);
        c.push_if(self.StartUTC.is_some() || self.StartLocal.is_some(), Format::Traefik);
        c.push_if(self.started_at.is_some(), Format::Kong);
        c.push_if(self.start_time.is_some() && self.request.is_object(), Format::Apisix);
        c.push_if(self.start_time.is_some(), Format::Envoy);
        c.push_if(
            self.requestTime.is_some() || self.requestTimeEpoch.is_some(),
            Format::Aws,
        );
        let nginx = self.msec.is_some() || self.time_iso8601.is_some() || self.time_local.is_some();
        c.push_if(nginx || (c.is_empty() && self.time.is_some()), Format::Nginx);
        c
    }
}

/// Up to one of each preset, without allocating.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct Candidates {
    items: [Option<Format>; 7],
    len: usize,
}

impl Candidates {
    fn push_if(&mut self, on: bool, f: Format) {
        if on && self.len < self.items.len() {
            self.items[self.len] = Some(f);
            self.len += 1;
        }
    }

    pub fn len(&self) -> usize {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    pub fn iter(&self) -> impl Iterator<Item = Format> + '_ {
        self.items[..self.len].iter().flatten().copied()
    }
}

/// The first of a preset's timestamp fields that holds a number or a string: a field of
/// another type is as good as absent when the preset has another one.
pub fn first_time<'a, const N: usize>(fields: [&mut Option<Scalar<'a>>; N]) -> Option<Scalar<'a>> {
    let mut other = None;
    for f in fields {
        match f.take() {
            Some(Scalar::Other) => other = other.or(Some(Scalar::Other)),
            Some(s) => return Some(s),
            None => {}
        }
    }
    other
}

/// Epoch milliseconds from RFC 3339 (any offset, up to 9 fractional digits), the Common Log
/// Format's `10/Oct/2026:13:55:36 +0000` (nginx `$time_local`, AWS `$context.requestTime`), or
/// a number: epoch seconds (fractional allowed), milliseconds, microseconds or nanoseconds, told
/// apart by magnitude (above 10^11, 10^14, 10^17). Numeric strings count as numbers.
pub fn timestamp_ms(v: &Scalar<'_>) -> Result<i64, Skip> {
    match v {
        Scalar::Num(n) => epoch_ms(*n),
        Scalar::Str(s) => {
            let s = s.trim();
            if let Some(ms) = rfc3339_utc_ms(s.as_bytes()) {
                return Ok(ms);
            }
            if let Ok(n) = s.parse::<f64>() {
                return epoch_ms(n);
            }
            if let Some(ms) = clf_ms(s.as_bytes()) {
                return Ok(ms);
            }
            chrono::DateTime::parse_from_rfc3339(s)
                .map(|d| d.timestamp_millis())
                .map_err(|_| Skip::BadTimestamp)
        }
        Scalar::Other => Err(Skip::BadTimestamp),
    }
}

/// Fixed-width decimal digits, `None` if any byte is not a digit.
fn digits(b: &[u8]) -> Option<i64> {
    b.iter()
        .try_fold(0i64, |n, &d| d.is_ascii_digit().then(|| n * 10 + i64::from(d - b'0')))
}

/// Epoch milliseconds of a civil UTC time (years 1970..=9999), `None` for an invalid date or
/// time (leap seconds included).
fn civil_ms(y: i64, mo: i64, d: i64, h: i64, mi: i64, s: i64, ms: i64) -> Option<i64> {
    let leap = y % 4 == 0 && (y % 100 != 0 || y % 400 == 0);
    let month_days = [31, if leap { 29 } else { 28 }, 31, 30, 31, 30, 31, 31, 30, 31, 30, 31];
    if !(1970..=9999).contains(&y) || !(1..=12).contains(&mo) || d < 1 || d > month_days[(mo - 1) as usize] {
        return None;
    }
    if h > 23 || mi > 59 || s > 59 {
        return None;
    }
    // days from civil (Howard Hinnant's algorithm)
    let yy = if mo <= 2 { y - 1 } else { y };
    let era = yy.div_euclid(400);
    let yoe = yy - era * 400;
    let mp = (mo + 9) % 12;
    let doy = (153 * mp + 2) / 5 + d - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    let days = era * 146_097 + doe - 719_468;
    Some(((days * 24 + h) * 60 + mi) * 60_000 + s * 1000 + ms)
}

/// The shape gateways write, `YYYY-MM-DDTHH:MM:SS[.f{1,9}]Z` (years 1970..=9999), without
/// chrono. `None` for anything else, including invalid dates and leap seconds: chrono then
/// decides, so the result is always chrono's.
fn rfc3339_utc_ms(b: &[u8]) -> Option<i64> {
    if b.len() < 20 || b[4] != b'-' || b[7] != b'-' || b[10] != b'T' || b[13] != b':' || b[16] != b':' {
        return None;
    }
    let (y, mo, d) = (digits(&b[0..4])?, digits(&b[5..7])?, digits(&b[8..10])?);
    let (h, mi, s) = (digits(&b[11..13])?, digits(&b[14..16])?, digits(&b[17..19])?);
    let mut i = 19;
    let mut ms = 0;
    if b[i] == b'.' {
        i += 1;
        let start = i;
        while i < b.len() && b[i].is_ascii_digit() {
            if i - start < 3 {
                ms = ms * 10 + i64::from(b[i] - b'0');
            }
            i += 1;
        }
        let digits = i - start;
        if digits == 0 || digits > 9 {
            return None;
        }
        for _ in digits..3 {
            ms *= 10;
        }
    }
    if i + 1 != b.len() || b[i] != b'Z' {
        return None;
    }
    civil_ms(y, mo, d, h, mi, s, ms)
}

/// The Common Log Format's time, `dd/Mon/yyyy:HH:MM:SS ±hhmm` (English month abbreviations,
/// as nginx and API Gateway write them).
fn clf_ms(b: &[u8]) -> Option<i64> {
    if b.len() != 26 || b[2] != b'/' || b[6] != b'/' || b[11] != b':' || b[14] != b':' || b[17] != b':' || b[20] != b' '
    {
        return None;
    }
    const MONTHS: [&[u8; 3]; 12] = [
        b"Jan", b"Feb", b"Mar", b"Apr", b"May", b"Jun", b"Jul", b"Aug", b"Sep", b"Oct", b"Nov", b"Dec",
    ];
    let mo = MONTHS.iter().position(|m| m[..] == b[3..6])? as i64 + 1;
    let (d, y) = (digits(&b[0..2])?, digits(&b[7..11])?);
    let (h, mi, s) = (digits(&b[12..14])?, digits(&b[15..17])?, digits(&b[18..20])?);
    let sign = match b[21] {
        b'+' => 1,
        b'-' => -1,
        _ => return None,
    };
    let (oh, om) = (digits(&b[22..24])?, digits(&b[24..26])?);
    if oh > 23 || om > 59 {
        return None;
    }
    let local = civil_ms(y, mo, d, h, mi, s, 0)?;
    Some(local - sign * (oh * 60 + om) * 60_000)
}

fn epoch_ms(n: f64) -> Result<i64, Skip> {
    // Years 1970..~5000 in seconds, milliseconds, microseconds or nanoseconds; anything else
    // is not a timestamp.
    if !n.is_finite() || !(0.0..=1e20).contains(&n) {
        return Err(Skip::BadTimestamp);
    }
    Ok(if n > 1e17 {
        (n / 1e6).round() as i64
    } else if n > 1e14 {
        (n / 1e3).round() as i64
    } else if n > 1e11 {
        n.round() as i64
    } else {
        (n * 1000.0).round() as i64
    })
}

/// A gateway's yes/no as text: `true`/`false`, `yes`/`no`, `1`/`0` (any letter case).
pub fn bool_text(s: &str) -> Option<bool> {
    let s = s.trim();
    if ["true", "yes", "1"].iter().any(|t| s.eq_ignore_ascii_case(t)) {
        Some(true)
    } else if ["false", "no", "0"].iter().any(|t| s.eq_ignore_ascii_case(t)) {
        Some(false)
    } else {
        None
    }
}

/// A boolean, or its text ([`bool_text`]); anything else is absent rather than a bad line.
fn lenient_bool<'de, D: Deserializer<'de>>(d: D) -> Result<Option<bool>, D::Error> {
    Ok(match serde_json::Value::deserialize(d)? {
        serde_json::Value::Bool(b) => Some(b),
        serde_json::Value::String(s) => bool_text(&s),
        _ => None,
    })
}

/// An HTTP status from a number or a numeric string (100..=599). No status at all (`None`):
/// a value of another type, a string that is no number, an empty or `-` placeholder, and 0,
/// which Envoy logs when no response was sent. A number that is no status is a bad line.
pub fn status(v: &Scalar<'_>) -> Result<Option<u16>, Skip> {
    let n = match v {
        Scalar::Num(n) => *n,
        Scalar::Str(s) => match s.trim().parse::<f64>() {
            Ok(n) => n,
            Err(_) => return Ok(None),
        },
        Scalar::Other => return Ok(None),
    };
    if n == 0.0 {
        return Ok(None);
    }
    if n.fract() == 0.0 && (100.0..=599.0).contains(&n) {
        Ok(Some(n as u16))
    } else {
        Err(Skip::BadStatus)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ts(v: serde_json::Value) -> Result<i64, Skip> {
        let s = v.to_string();
        let sc: Scalar = serde_json::from_str(&s).unwrap();
        timestamp_ms(&sc)
    }

    #[test]
    fn timestamps_in_every_accepted_shape() {
        assert_eq!(ts(serde_json::json!("2026-11-29T00:00:00Z")), Ok(1_795_910_400_000));
        assert_eq!(
            ts(serde_json::json!("2026-11-29T01:00:00.250+01:00")),
            Ok(1_795_910_400_250)
        );
        assert_eq!(ts(serde_json::json!(1_795_910_400)), Ok(1_795_910_400_000));
        assert_eq!(ts(serde_json::json!(1_795_910_400.5)), Ok(1_795_910_400_500));
        assert_eq!(ts(serde_json::json!(1_795_910_400_123u64)), Ok(1_795_910_400_123));
        assert_eq!(ts(serde_json::json!("1795910400.5")), Ok(1_795_910_400_500));
        // 10^11 exactly is seconds (year 5138); just above is milliseconds
        assert_eq!(ts(serde_json::json!(100_000_000_000u64)), Ok(100_000_000_000_000));
        assert_eq!(ts(serde_json::json!(100_000_000_001u64)), Ok(100_000_000_001));
        // microseconds and nanoseconds (Envoy's %START_TIME(%s%f)%, Go's UnixNano)
        assert_eq!(ts(serde_json::json!(1_795_910_400_123_456u64)), Ok(1_795_910_400_123));
        assert_eq!(
            ts(serde_json::json!(1_795_910_400_123_456_789u64)),
            Ok(1_795_910_400_123)
        );
        assert_eq!(ts(serde_json::json!("1795910400123456789")), Ok(1_795_910_400_123));
        assert_eq!(ts(serde_json::json!(1e21)), Err(Skip::BadTimestamp));
        // RFC 3339 with any offset and up to nine fractional digits (Traefik's StartLocal)
        assert_eq!(
            ts(serde_json::json!("2026-11-29T01:00:00.250123456+01:00")),
            Ok(1_795_910_400_250)
        );
        assert_eq!(
            ts(serde_json::json!("2026-11-28T19:00:00-05:00")),
            Ok(1_795_910_400_000)
        );
        // the Common Log Format (nginx $time_local, API Gateway $context.requestTime)
        assert_eq!(
            ts(serde_json::json!("29/Nov/2026:00:00:00 +0000")),
            Ok(1_795_910_400_000)
        );
        assert_eq!(
            ts(serde_json::json!("29/Nov/2026:05:30:00 +0530")),
            Ok(1_795_910_400_000)
        );
        assert_eq!(
            ts(serde_json::json!("28/Nov/2026:14:00:01 -1000")),
            Ok(1_795_910_401_000)
        );
        for bad in [
            "31/Nov/2026:00:00:00 +0000",
            "29/Nov/2026:24:00:00 +0000",
            "29/Xyz/2026:00:00:00 +0000",
            "29/Nov/2026:00:00:00 0000",
            "29/Nov/2026:00:00:00 +00000",
        ] {
            assert_eq!(ts(serde_json::json!(bad)), Err(Skip::BadTimestamp), "{bad}");
        }
        assert_eq!(ts(serde_json::json!("nope")), Err(Skip::BadTimestamp));
        assert_eq!(ts(serde_json::json!(-5)), Err(Skip::BadTimestamp));
        assert_eq!(ts(serde_json::json!(true)), Err(Skip::BadTimestamp));
    }

    #[test]
    fn the_fast_timestamp_path_agrees_with_chrono() {
        let chrono_ms = |s: &str| {
            chrono::DateTime::parse_from_rfc3339(s)
                .ok()
                .map(|d| d.timestamp_millis())
        };
        for s in [
            "2026-11-29T00:00:00Z",
            "2026-11-29T04:30:00.123Z",
            "2026-11-29T00:00:00.000861421Z",
            "2026-11-29T23:59:59.9Z",
            "2024-02-29T12:00:00.05Z",
            "2000-02-29T00:00:00Z",
            "1970-01-01T00:00:00Z",
            "9999-12-31T23:59:59.999Z",
            "2026-03-01T00:00:00Z",
            "2026-12-31T10:11:12.987654Z",
        ] {
            assert_eq!(rfc3339_utc_ms(s.as_bytes()), chrono_ms(s), "{s}");
            assert!(rfc3339_utc_ms(s.as_bytes()).is_some(), "{s}");
        }
        // declined: chrono decides
        for s in [
            "2025-02-29T00:00:00Z",
            "1900-02-29T00:00:00Z",
            "2026-11-29T24:00:00Z",
            "2026-11-29T23:59:60Z",
            "2026-11-29T00:00:00.Z",
            "2026-11-29T00:00:00.1234567891Z",
            "2026-11-29T00:00:00+01:00",
            "2026-11-29t00:00:00z",
            "2026-13-01T00:00:00Z",
            "1969-12-31T23:59:59Z",
            "2026-11-29T00:00:00ZZ",
        ] {
            assert_eq!(rfc3339_utc_ms(s.as_bytes()), None, "{s}");
        }
        // a little exhaustive: every day of two years at odd times
        let mut t = chrono::DateTime::parse_from_rfc3339("2027-12-30T01:02:03.456Z").unwrap();
        for _ in 0..800 {
            let s = t.format("%Y-%m-%dT%H:%M:%S%.3fZ").to_string();
            assert_eq!(rfc3339_utc_ms(s.as_bytes()), chrono_ms(&s), "{s}");
            t += chrono::Duration::seconds(86_400 + 3_671);
        }
    }

    #[test]
    fn statuses() {
        let s = |v: serde_json::Value| status(&serde_json::from_str(&v.to_string()).unwrap());
        assert_eq!(s(serde_json::json!(200)), Ok(Some(200)));
        assert_eq!(s(serde_json::json!("401")), Ok(Some(401)));
        assert_eq!(s(serde_json::json!(99)), Err(Skip::BadStatus));
        assert_eq!(s(serde_json::json!(200.5)), Err(Skip::BadStatus));
        assert_eq!(s(serde_json::json!("600")), Err(Skip::BadStatus));
        // no status: another type, no number, a placeholder, Envoy's 0 (no response sent)
        for none in [
            serde_json::json!("abc"),
            serde_json::json!("-"),
            serde_json::json!(""),
            serde_json::json!(0),
            serde_json::json!("0"),
            serde_json::json!(true),
            serde_json::json!({"code": 200}),
        ] {
            assert_eq!(s(none.clone()), Ok(None), "{none}");
        }
    }

    #[test]
    fn lenient_strings_take_first_of_arrays() {
        let l: KongHeaders = serde_json::from_str(r#"{"authorization":["Bearer a.b.c","x"],"user-agent":5}"#).unwrap();
        assert_eq!(l.authorization.0.as_deref(), Some("Bearer a.b.c"));
        assert_eq!(l.user_agent.0.as_deref(), Some("5"));
    }
}
