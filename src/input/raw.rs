//! The union of every preset format's fields, read in one borrowed serde pass.
//!
//! Reading all formats through one struct keeps `auto` as cheap as a fixed format: the line is
//! parsed once, and detection only looks at which timestamp field was present. Unknown fields
//! are skipped by serde without being copied.

use std::borrow::Cow;
use std::fmt;

use serde::de::{self, Deserializer, IgnoredAny, Visitor};
use serde::Deserialize;

use super::{Format, GeoPoint, Skip};

/// A JSON scalar that may be a number or a string (timestamps and statuses come as both).
#[derive(Debug, Clone, PartialEq)]
pub enum Scalar<'a> {
    Num(f64),
    Str(Cow<'a, str>),
    /// Anything else (bool, null, object, array): present but unusable.
    Other,
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
/// and takes the first element of an array (repeated headers, as Kong logs them).
#[derive(Debug, Clone, PartialEq, Default)]
pub struct LenientStr<'a>(pub Option<Cow<'a, str>>);

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

#[derive(Debug, Default, Deserialize)]
pub struct KongRequest<'a> {
    #[serde(borrow, default)]
    pub method: LenientStr<'a>,
    #[serde(borrow, default)]
    pub uri: LenientStr<'a>,
    #[serde(borrow, default)]
    pub headers: Option<KongHeaders<'a>>,
}

#[derive(Debug, Default, Deserialize)]
pub struct KongHeaders<'a> {
    #[serde(borrow, default)]
    pub authorization: LenientStr<'a>,
    #[serde(borrow, default, rename = "user-agent")]
    pub user_agent: LenientStr<'a>,
}

#[derive(Debug, Default, Deserialize)]
pub struct KongResponse<'a> {
    #[serde(borrow, default)]
    pub status: Option<Scalar<'a>>,
}

/// Every field any preset format reads. Field names are the gateways' own.
#[derive(Debug, Default, Deserialize)]
#[allow(non_snake_case)]
pub struct RawLine<'a> {
    // canonical (and shared with envoy / kong where the names coincide)
    #[serde(borrow, default)]
    pub ts: Option<Scalar<'a>>,
    #[serde(borrow, default)]
    pub client_ip: LenientStr<'a>,
    #[serde(borrow, default)]
    pub method: LenientStr<'a>,
    #[serde(borrow, default)]
    pub path: LenientStr<'a>,
    #[serde(borrow, default)]
    pub status: Option<Scalar<'a>>,
    #[serde(borrow, default)]
    pub user_agent: LenientStr<'a>,
    #[serde(borrow, default)]
    pub authorization: LenientStr<'a>,
    #[serde(borrow, default)]
    pub token: LenientStr<'a>,
    #[serde(default)]
    pub geo: Option<RawGeo>,
    #[serde(default)]
    pub jwt_header: Option<serde_json::Value>,
    #[serde(default)]
    pub jwt_claims: Option<serde_json::Value>,

    // traefik
    #[serde(borrow, default)]
    pub StartUTC: Option<Scalar<'a>>,
    #[serde(borrow, default)]
    pub ClientHost: LenientStr<'a>,
    #[serde(borrow, default)]
    pub RequestMethod: LenientStr<'a>,
    #[serde(borrow, default)]
    pub RequestPath: LenientStr<'a>,
    #[serde(borrow, default)]
    pub DownstreamStatus: Option<Scalar<'a>>,
    #[serde(borrow, default)]
    pub request_Authorization: LenientStr<'a>,
    #[serde(borrow, default, rename = "request_User-Agent")]
    pub request_User_Agent: LenientStr<'a>,

    // kong
    #[serde(borrow, default)]
    pub started_at: Option<Scalar<'a>>,
    #[serde(borrow, default)]
    pub request: Option<KongRequest<'a>>,
    #[serde(borrow, default)]
    pub response: Option<KongResponse<'a>>,

    // envoy
    #[serde(borrow, default)]
    pub start_time: Option<Scalar<'a>>,
    #[serde(borrow, default)]
    pub response_code: Option<Scalar<'a>>,
    #[serde(default)]
    pub jwt_payload: Option<serde_json::Value>,

    // nginx
    #[serde(borrow, default)]
    pub msec: Option<Scalar<'a>>,
    #[serde(borrow, default)]
    pub time_iso8601: Option<Scalar<'a>>,
    #[serde(borrow, default)]
    pub remote_addr: LenientStr<'a>,
    #[serde(borrow, default)]
    pub request_method: LenientStr<'a>,
    #[serde(borrow, default)]
    pub request_uri: LenientStr<'a>,
    #[serde(borrow, default)]
    pub http_user_agent: LenientStr<'a>,
    #[serde(borrow, default)]
    pub http_authorization: LenientStr<'a>,
}

impl RawLine<'_> {
    /// `auto`: the timestamp field says which gateway wrote the line.
    pub fn detect(&self) -> Option<Format> {
        if self.ts.is_some() {
            Some(Format::Canonical)
        } else if self.StartUTC.is_some() {
            Some(Format::Traefik)
        } else if self.started_at.is_some() {
            Some(Format::Kong)
        } else if self.start_time.is_some() {
            Some(Format::Envoy)
        } else if self.msec.is_some() || self.time_iso8601.is_some() {
            Some(Format::Nginx)
        } else {
            None
        }
    }
}

/// Epoch milliseconds from RFC 3339 (any offset) or a number: epoch seconds (fractional
/// allowed), or epoch milliseconds when above 10^11. Numeric strings count as numbers.
pub fn timestamp_ms(v: &Scalar<'_>) -> Result<i64, Skip> {
    match v {
        Scalar::Num(n) => epoch_ms(*n),
        Scalar::Str(s) => {
            let s = s.trim();
            if let Ok(n) = s.parse::<f64>() {
                return epoch_ms(n);
            }
            chrono::DateTime::parse_from_rfc3339(s)
                .map(|d| d.timestamp_millis())
                .map_err(|_| Skip::BadTimestamp)
        }
        Scalar::Other => Err(Skip::BadTimestamp),
    }
}

fn epoch_ms(n: f64) -> Result<i64, Skip> {
    // Years 1970..~5000 in seconds or milliseconds; anything else is not a timestamp.
    if !n.is_finite() || !(0.0..=1e14).contains(&n) {
        return Err(Skip::BadTimestamp);
    }
    Ok(if n > 1e11 {
        n.round() as i64
    } else {
        (n * 1000.0).round() as i64
    })
}

/// An HTTP status from a number or a numeric string (100..=599).
pub fn status(v: &Scalar<'_>) -> Option<u16> {
    let n = match v {
        Scalar::Num(n) => *n,
        Scalar::Str(s) => s.trim().parse::<f64>().ok()?,
        Scalar::Other => return None,
    };
    (n.fract() == 0.0 && (100.0..=599.0).contains(&n)).then_some(n as u16)
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
        assert_eq!(ts(serde_json::json!("nope")), Err(Skip::BadTimestamp));
        assert_eq!(ts(serde_json::json!(-5)), Err(Skip::BadTimestamp));
        assert_eq!(ts(serde_json::json!(true)), Err(Skip::BadTimestamp));
    }

    #[test]
    fn statuses() {
        let s = |v: serde_json::Value| status(&serde_json::from_str(&v.to_string()).unwrap());
        assert_eq!(s(serde_json::json!(200)), Some(200));
        assert_eq!(s(serde_json::json!("401")), Some(401));
        assert_eq!(s(serde_json::json!(99)), None);
        assert_eq!(s(serde_json::json!(200.5)), None);
        assert_eq!(s(serde_json::json!("abc")), None);
    }

    #[test]
    fn lenient_strings_take_first_of_arrays() {
        let l: KongHeaders = serde_json::from_str(r#"{"authorization":["Bearer a.b.c","x"],"user-agent":5}"#).unwrap();
        assert_eq!(l.authorization.0.as_deref(), Some("Bearer a.b.c"));
        assert_eq!(l.user_agent.0.as_deref(), Some("5"));
    }
}
