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
/// across many requests, and a database lookup costs more than parsing the whole line (a
/// full-size database's records hold names in many languages, all decoded to be skipped).
pub struct GeoDb {
    /// Shared by the parse workers of one pipeline; each keeps its own cache.
    reader: Arc<maxminddb::Reader<Vec<u8>>>,
    cache: HashMap<CacheKey, Cached, ahash::RandomState>,
    cache_cap: usize,
}

/// What the cache is keyed by. IPv6 clients change their interface id (temporary addresses,
/// one per connection on phones), so one client is many addresses of one /64; a database
/// network is never longer than /64 in practice, and when the database says the /64 lies in
/// one of its networks, the /64 is looked up once.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
enum CacheKey {
    V4(u32),
    /// The first 64 bits of an IPv6 address.
    Net64(u64),
    /// An IPv6 address whose /64 the database splits.
    V6(u128),
}

#[derive(Debug, Clone, Copy)]
enum Cached {
    Found(Option<GeoPoint>),
    /// The database splits this /64: its addresses are cached one by one.
    Split,
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

    /// The location of `ip`, from the cache or the database: always what [`Self::locate`]
    /// says.
    pub(crate) fn locate_cached(&mut self, ip: IpAddr) -> Option<GeoPoint> {
        let v6 = match ip.to_canonical() {
            IpAddr::V4(v4) => return self.cached(CacheKey::V4(v4.to_bits()), |db| db.locate(ip)),
            IpAddr::V6(v6) => v6.to_bits(),
        };
        let net = CacheKey::Net64((v6 >> 64) as u64);
        match self.cache.get(&net) {
            Some(Cached::Found(hit)) => *hit,
            Some(Cached::Split) => self.cached(CacheKey::V6(v6), |db| db.locate(ip)),
            None => {
                let (found, prefix_len) = self.locate_network(ip);
                if prefix_len <= 64 {
                    self.insert(net, Cached::Found(found));
                } else {
                    self.insert(net, Cached::Split);
                    self.insert(CacheKey::V6(v6), Cached::Found(found));
                }
                found
            }
        }
    }

    fn cached(&mut self, key: CacheKey, locate: impl FnOnce(&Self) -> Option<GeoPoint>) -> Option<GeoPoint> {
        if let Some(Cached::Found(hit)) = self.cache.get(&key) {
            return *hit;
        }
        let found = locate(self);
        self.insert(key, Cached::Found(found));
        found
    }

    fn insert(&mut self, key: CacheKey, value: Cached) {
        if self.cache.len() >= self.cache_cap {
            self.cache.clear();
        }
        self.cache.insert(key, value);
    }

    /// The location of `ip`, when the database has coordinates for it (an IPv4-mapped IPv6
    /// address is looked up as its IPv4 address).
    pub fn locate(&self, ip: IpAddr) -> Option<GeoPoint> {
        self.locate_network(ip).0
    }

    /// The location of `ip` and the prefix length of the database's network that holds it
    /// (every address of that network has the same answer). A database error is an answer
    /// for this address alone.
    fn locate_network(&self, ip: IpAddr) -> (Option<GeoPoint>, usize) {
        let Ok((city, prefix_len)) = self.reader.lookup_prefix::<City>(ip.to_canonical()) else {
            return (None, 128);
        };
        let point = city.and_then(|c| c.location).and_then(|loc| {
            Some(GeoPoint {
                lat: loc.latitude?,
                lon: loc.longitude?,
                accuracy_km: loc.accuracy_radius.map(f64::from).unwrap_or(0.0),
            })
        });
        (point, prefix_len)
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

    /// The cache answers as the database does for every network of the test database (first,
    /// last and a middle address, twice), for other addresses of a cached /64, and for a /64
    /// the database splits (the IPv4 space at ::/96 of an IPv6 tree).
    #[test]
    fn the_cache_answers_as_the_database() {
        let db = test_db();
        let mut cached = db.fork();
        let mut addrs: Vec<IpAddr> = Vec::new();
        let within = db.reader.within::<City>("::/0".parse().unwrap()).unwrap();
        for item in within {
            let net = item.unwrap().ip_net;
            let (first, last) = (net.network(), net.broadcast());
            addrs.extend([first, last]);
            if let (IpAddr::V6(a), IpAddr::V6(b)) = (first, last) {
                let mid = a.to_bits() / 2 + b.to_bits() / 2;
                // another interface id in the first /64
                addrs.extend([IpAddr::V6(mid.into()), IpAddr::V6((a.to_bits() | 0x1234_5678).into())]);
            }
        }
        addrs.extend(["::5102:458e", "::5102:458f", "::1:2:3:4"].map(|a| a.parse::<IpAddr>().unwrap()));
        assert!(addrs.len() > 100, "{} addresses", addrs.len());
        for round in 0..2 {
            for &ip in &addrs {
                assert_eq!(cached.locate_cached(ip), db.locate(ip), "{ip}, round {round}");
            }
        }
        let located = addrs
            .iter()
            .filter(|ip| ip.is_ipv6() && db.locate(**ip).is_some())
            .count();
        assert!(located > 10, "{located} located IPv6 addresses");
        let split = cached.cache.values().filter(|c| matches!(c, Cached::Split)).count();
        let nets = cached.cache.keys().filter(|k| matches!(k, CacheKey::Net64(_))).count();
        assert!(split > 0 && nets > split, "{split} split /64s of {nets}");
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
