//! Geo: client address → location (MaxMind GeoIP2/GeoLite2 City), distances and networks.
//!
//! A `geo` field in the log wins over the database: a gateway that already geolocates knows
//! better than a database lookup. Addresses the database does not know have no location, and
//! rules that need one (impossible travel) simply do not see them.

use std::collections::HashMap;
use std::net::IpAddr;
use std::path::Path;
use std::sync::Arc;

use serde::Deserialize;

use crate::input::GeoPoint;

/// Mean Earth radius in km (IUGG), as used by the haversine formula.
const EARTH_RADIUS_KM: f64 = 6371.0088;

#[derive(Debug, thiserror::Error)]
#[error("cannot open GeoIP database {path}: {reason} (expected a MaxMind City .mmdb file)")]
pub struct GeoError {
    path: String,
    reason: String,
}

/// An opened City database, with a bounded cache of recent lookups: client addresses repeat
/// across many requests, and a database lookup costs more than parsing the whole line.
pub struct GeoDb {
    /// Shared by the parse workers of one pipeline; each keeps its own cache.
    reader: Arc<maxminddb::Reader<Vec<u8>>>,
    cache: HashMap<IpAddr, Option<GeoPoint>, ahash::RandomState>,
    cache_cap: usize,
}

/// Addresses kept in the lookup cache; when full it is cleared and refills from live traffic.
const GEO_CACHE: usize = 262_144;

#[derive(Deserialize)]
struct City {
    location: Option<Location>,
}

#[derive(Deserialize)]
struct Location {
    latitude: Option<f64>,
    longitude: Option<f64>,
    accuracy_radius: Option<u16>,
}

impl GeoDb {
    pub fn open(path: &Path) -> Result<Self, GeoError> {
        let err = |reason: String| GeoError {
            path: path.display().to_string(),
            reason,
        };
        let bytes = std::fs::read(path).map_err(|e| err(e.to_string()))?;
        Self::from_bytes(bytes).map_err(|e| err(e.reason))
    }

    pub fn from_bytes(bytes: Vec<u8>) -> Result<Self, GeoError> {
        let reader = maxminddb::Reader::from_source(bytes).map_err(|e| GeoError {
            path: "<memory>".into(),
            reason: e.to_string(),
        })?;
        if !reader.metadata.database_type.contains("City") {
            return Err(GeoError {
                path: "<memory>".into(),
                reason: format!(
                    "database type is {}, not a City database",
                    reader.metadata.database_type
                ),
            });
        }
        Ok(GeoDb {
            reader: Arc::new(reader),
            cache: HashMap::default(),
            cache_cap: GEO_CACHE,
        })
    }

    /// The same database with an empty cache of its own (for another worker thread).
    pub fn fork(&self) -> GeoDb {
        GeoDb {
            reader: self.reader.clone(),
            cache: HashMap::default(),
            cache_cap: self.cache_cap,
        }
    }

    /// The location of `ip`, from the cache or the database.
    pub(crate) fn locate_cached(&mut self, ip: IpAddr) -> Option<GeoPoint> {
        if let Some(hit) = self.cache.get(&ip) {
            return *hit;
        }
        let found = self.locate(ip);
        if self.cache.len() >= self.cache_cap {
            self.cache.clear();
        }
        self.cache.insert(ip, found);
        found
    }

    /// The location of `ip`, when the database has coordinates for it (an IPv4-mapped IPv6
    /// address is looked up as its IPv4 address).
    pub fn locate(&self, ip: IpAddr) -> Option<GeoPoint> {
        let city: City = self.reader.lookup(ip.to_canonical()).ok().flatten()?;
        let loc = city.location?;
        Some(GeoPoint {
            lat: loc.latitude?,
            lon: loc.longitude?,
            accuracy_km: loc.accuracy_radius.map(f64::from).unwrap_or(0.0),
        })
    }
}

/// Great-circle distance in km (haversine).
pub fn distance_km(a: &GeoPoint, b: &GeoPoint) -> f64 {
    let (la1, la2) = (a.lat.to_radians(), b.lat.to_radians());
    let dlat = la2 - la1;
    let dlon = (b.lon - a.lon).to_radians();
    let h = (dlat / 2.0).sin().powi(2) + la1.cos() * la2.cos() * (dlon / 2.0).sin().powi(2);
    2.0 * EARTH_RADIUS_KM * h.sqrt().min(1.0).asin()
}

/// The client's network: IPv4 /24 or IPv6 /64, as the replay rule counts them. An
/// IPv4-mapped IPv6 address is in its IPv4 /24 (parsing already maps it; this is for events
/// built elsewhere).
pub fn network(ip: IpAddr) -> ipnet::IpNet {
    match ip.to_canonical() {
        IpAddr::V4(v4) => ipnet::IpNet::V4(ipnet::Ipv4Net::new(v4, 24).expect("24 <= 32").trunc()),
        IpAddr::V6(v6) => ipnet::IpNet::V6(ipnet::Ipv6Net::new(v6, 64).expect("64 <= 128").trunc()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn test_db() -> GeoDb {
        let p = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../assets/GeoLite2-City-Test.mmdb");
        GeoDb::open(&p).unwrap()
    }

    #[test]
    fn locates_test_addresses() {
        let db = test_db();
        let london = db.locate("81.2.69.142".parse().unwrap()).unwrap();
        assert_eq!((london.lat, london.lon, london.accuracy_km), (51.5142, -0.0931, 10.0));
        let milton = db.locate("216.160.83.57".parse().unwrap()).unwrap();
        let mut db = db;
        assert_eq!(db.locate_cached("216.160.83.57".parse().unwrap()), Some(milton));
        assert_eq!(db.locate_cached("216.160.83.57".parse().unwrap()), Some(milton));
        assert_eq!(db.locate_cached("10.0.0.1".parse().unwrap()), None);
        assert_eq!(milton.accuracy_km, 22.0);
        assert!(db.locate("10.0.0.1".parse().unwrap()).is_none());
    }

    #[test]
    fn bad_database_is_a_clear_error() {
        let e = GeoDb::open(Path::new("/nonexistent.mmdb")).err().unwrap().to_string();
        assert!(e.contains("/nonexistent.mmdb"), "{e}");
        assert!(GeoDb::from_bytes(b"not a database".to_vec()).is_err());
    }

    #[test]
    fn haversine_matches_known_distances() {
        let london = GeoPoint {
            lat: 51.5142,
            lon: -0.0931,
            accuracy_km: 0.0,
        };
        let changchun = GeoPoint {
            lat: 43.88,
            lon: 125.3228,
            accuracy_km: 0.0,
        };
        let d = distance_km(&london, &changchun);
        assert!((d - 8188.0).abs() < 30.0, "{d}");
        assert_eq!(distance_km(&london, &london), 0.0);
    }

    #[test]
    fn networks_are_slash24_and_slash64() {
        assert_eq!(network("81.2.69.142".parse().unwrap()).to_string(), "81.2.69.0/24");
        assert_eq!(
            network("2001:db8:1:2:3::1".parse().unwrap()).to_string(),
            "2001:db8:1:2::/64"
        );
        assert_eq!(
            network("::ffff:81.2.69.142".parse().unwrap()).to_string(),
            "81.2.69.0/24"
        );
    }

    #[test]
    fn ipv4_mapped_addresses_are_located_as_ipv4() {
        let db = test_db();
        let mapped: IpAddr = "::ffff:81.2.69.142".parse().unwrap();
        assert_eq!(db.locate(mapped), db.locate("81.2.69.142".parse().unwrap()));
        assert!(db.locate(mapped).is_some());
    }
}
