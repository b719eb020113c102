//! Where synthetic clients connect from: address ranges, where they are, and which ranges
//! no database locates.
//!
//! [`Networks`] is that data, threaded through the generator, its scenarios and the tests'
//! re-statement of the rules. It is built either from the tables below or, with
//! `--geoip FILE`, from a MaxMind City database (see [`super::geoip`]); the generator behaves
//! the same way over either.
//!
//! The tables copy MaxMind's `GeoLite2-City-Test` database, which knows only a few hundred
//! ranges. Every geolocated address the default generator emits comes from [`LOCATED`], copied
//! from that database's source JSON (a test checks the table against the `.mmdb`); every other
//! address (carrier-grade NAT, hosting ranges used by attackers) is one the database does not
//! know, so it has no location and can never take part in an impossible-travel pair.
//!
//! Users live in a [`Region`]: a group of ranges whose locations are all less than 500 km
//! apart, so that moving between home and mobile networks inside a region can never look
//! like impossible travel whatever the time between requests.

use std::fmt;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::path::PathBuf;
use std::sync::{Arc, OnceLock};

use super::rng::Rng;
use tokenwatch_core::geo::GeoDb;

/// A range of the test database with its location, as the database reports it.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Located {
    pub cidr: &'static str,
    pub lat: f64,
    pub lon: f64,
    /// Only the tests' re-statement of the rules reads it; kept so the table is the database.
    #[cfg_attr(not(test), allow(dead_code))]
    pub accuracy_km: f64,
}

const fn loc(cidr: &'static str, lat: f64, lon: f64, accuracy_km: f64) -> Located {
    Located {
        cidr,
        lat,
        lon,
        accuracy_km,
    }
}

const LONDON: (f64, f64) = (51.5142, -0.0931);
const GB: (f64, f64) = (54.75844, -2.69531);
const LINKOPING: (f64, f64) = (58.4167, 15.6167);
const SE: (f64, f64) = (62.0, 15.0);
const JP: (f64, f64) = (35.68536, 139.75309);
const KR: (f64, f64) = (37.0, 127.5);
const TW: (f64, f64) = (24.0, 121.0);
const DE: (f64, f64) = (51.5, 10.5);
const FR: (f64, f64) = (46.0, 2.0);

/// The ranges of GeoLite2-City-Test that the generator uses, with their locations.
pub(crate) const LOCATED: &[Located] = &[
    loc("81.2.69.142/31", LONDON.0, LONDON.1, 10.0),
    loc("81.2.69.144/28", LONDON.0, LONDON.1, 3.0),
    loc("81.2.69.160/27", LONDON.0, LONDON.1, 100.0),
    loc("81.2.69.192/28", LONDON.0, LONDON.1, 100.0),
    loc("2.125.160.216/29", 51.75, -1.25, 100.0),
    loc("2a02:d3c0::/29", GB.0, GB.1, 100.0),
    loc("2a02:e100::/29", GB.0, GB.1, 100.0),
    loc("2a02:f380::/29", GB.0, GB.1, 100.0),
    loc("89.160.20.112/28", LINKOPING.0, LINKOPING.1, 76.0),
    loc("89.160.20.128/25", LINKOPING.0, LINKOPING.1, 76.0),
    loc("2a02:d040::/29", SE.0, SE.1, 100.0),
    loc("2a02:e400::/29", SE.0, SE.1, 100.0),
    loc("216.160.83.56/29", 47.2513, -122.3149, 22.0),
    loc("214.78.0.0/19", 32.6783, -117.1291, 10.0),
    loc("2001:480::/43", 32.7203, -117.1552, 50.0),
    loc("2001:218::/32", JP.0, JP.1, 100.0),
    loc("2001:240::/32", JP.0, JP.1, 100.0),
    loc("2001:258::/32", JP.0, JP.1, 100.0),
    loc("2001:220::/32", KR.0, KR.1, 100.0),
    loc("2001:230::/32", KR.0, KR.1, 100.0),
    loc("2001:238::/32", TW.0, TW.1, 100.0),
    loc("2001:288::/32", TW.0, TW.1, 100.0),
    loc("2a02:d180::/29", DE.0, DE.1, 100.0),
    loc("2a02:d480::/29", DE.0, DE.1, 100.0),
    loc("2a02:cfc0::/29", FR.0, FR.1, 100.0),
    loc("2a02:d340::/29", FR.0, FR.1, 100.0),
    loc("175.16.199.0/24", 43.88, 125.3228, 100.0),
    loc("202.196.224.0/20", 13.0, 122.0, 121.0),
];

/// Carrier-grade NAT (RFC 6598): mobile users behind it have no location.
pub(crate) const CGNAT: &str = "100.64.0.0/10";

/// Hosting and anonymiser ranges attackers replay from. None is in the test database.
pub(crate) const ATTACKER_V4: &[&str] = &[
    "185.220.101.0/24",
    "45.155.205.0/24",
    "194.26.29.0/24",
    "91.240.118.0/24",
    "5.188.206.0/24",
    "141.98.11.0/24",
    "193.142.146.0/24",
    "80.94.95.0/24",
    "103.251.167.0/24",
    "23.129.64.0/24",
    "162.247.74.0/24",
    "104.244.72.0/24",
];
pub(crate) const ATTACKER_V6: &[&str] = &["2a0e:b107::/32", "2604:a880::/32"];

/// A region of the built-in tables; [`Networks::builtin`] turns it into a [`Region`].
pub(crate) struct TableRegion {
    pub home: &'static [&'static str],
    pub mobile: &'static [&'static str],
    pub weight: u32,
}

pub(crate) const REGIONS: &[TableRegion] = &[
    // london
    TableRegion {
        home: &[
            "81.2.69.142/31",
            "81.2.69.144/28",
            "81.2.69.160/27",
            "81.2.69.192/28",
            "2.125.160.216/29",
        ],
        mobile: &["2a02:d3c0::/29", "2a02:e100::/29", "2a02:f380::/29"],
        weight: 28,
    },
    // linkoping
    TableRegion {
        home: &["89.160.20.112/28", "89.160.20.128/25"],
        mobile: &["2a02:d040::/29", "2a02:e400::/29"],
        weight: 10,
    },
    // milton
    TableRegion {
        home: &["216.160.83.56/29"],
        mobile: &[],
        weight: 6,
    },
    // san-diego
    TableRegion {
        home: &["214.78.0.0/19"],
        mobile: &["2001:480::/43"],
        weight: 14,
    },
    // japan
    TableRegion {
        home: &["2001:218::/32", "2001:240::/32"],
        mobile: &["2001:258::/32"],
        weight: 10,
    },
    // korea
    TableRegion {
        home: &["2001:220::/32"],
        mobile: &["2001:230::/32"],
        weight: 6,
    },
    // taiwan
    TableRegion {
        home: &["2001:238::/32"],
        mobile: &["2001:288::/32"],
        weight: 4,
    },
    // germany
    TableRegion {
        home: &["2a02:d180::/29"],
        mobile: &["2a02:d480::/29"],
        weight: 9,
    },
    // france
    TableRegion {
        home: &["2a02:cfc0::/29"],
        mobile: &["2a02:d340::/29"],
        weight: 7,
    },
    // changchun
    TableRegion {
        home: &["175.16.199.0/24"],
        mobile: &[],
        weight: 3,
    },
    // philippines
    TableRegion {
        home: &["202.196.224.0/20"],
        mobile: &[],
        weight: 3,
    },
];

pub(crate) const REGION_LONDON: usize = 0;

/// A group of ranges whose locations are pairwise less than 500 km apart (great-circle,
/// before accuracy radii).
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct Region {
    /// Fixed-line networks.
    pub home: Vec<Net>,
    /// Geolocated mobile networks; users may also be on CGNAT, which has no location.
    pub mobile: Vec<Net>,
    /// Share of users living here.
    pub weight: u32,
    /// The location of the first home network, which stands for the region when flight
    /// times are worked out.
    pub center: (f64, f64),
}

/// Where every synthetic client connects from. The scenarios' fixed points are chosen so
/// that each keeps its meaning whatever the source: `victim` to `far` is impossible in 20
/// minutes, `slow_from` to `slow_to` is far but slower than an airliner after
/// `slow_travel_ms`, `hop_from` to `hop_to` is fast but within one region.
pub struct Networks {
    pub(crate) regions: Vec<Region>,
    /// Mobile users without a located network: no database locates it.
    pub(crate) cgnat: Net,
    /// Attackers' ranges, none of them located: a replay can then never also be travel.
    /// At least three IPv4 ranges (three distinct /24s) and one IPv6 range.
    pub(crate) attacker_v4: Vec<Net>,
    pub(crate) attacker_v6: Vec<Net>,
    /// The impossible-travel victim's fixed line: a small accuracy radius.
    pub(crate) victim: Vec<Net>,
    /// Where the thief uses the victim's token twenty minutes later.
    pub(crate) far: Net,
    /// A fast move that stays within one region.
    pub(crate) hop_from: Vec<Net>,
    pub(crate) hop_to: Net,
    /// A long journey made slowly.
    pub(crate) slow_from: Net,
    pub(crate) slow_to: Net,
    pub(crate) slow_travel_ms: i64,
    /// Located networks that forged copies come from (all refused, so never located by
    /// the rules).
    pub(crate) decoys: [Net; 2],
    pub(crate) source: Source,
}

#[derive(Clone)]
pub(crate) enum Source {
    /// The tables in this file, which copy the embedded GeoLite2-City-Test database.
    Builtin,
    /// A City database read from `path`; `bytes` is its content, so the engine and the
    /// tests geolocate with exactly the database the traffic was built from.
    Database { path: PathBuf, bytes: Arc<Vec<u8>> },
}

impl Networks {
    /// The built-in tables (shared: built once per process).
    pub fn builtin() -> Arc<Networks> {
        static BUILTIN: OnceLock<Arc<Networks>> = OnceLock::new();
        BUILTIN.get_or_init(|| Arc::new(Networks::from_tables())).clone()
    }

    fn from_tables() -> Networks {
        let parse = |cidrs: &[&str]| cidrs.iter().map(|c| Net::parse(c)).collect::<Vec<Net>>();
        let center = |cidr: &str| {
            let l = location_of(cidr).expect("region home ranges are in LOCATED");
            (l.lat, l.lon)
        };
        let london = ["81.2.69.142/31", "81.2.69.144/28"];
        Networks {
            regions: REGIONS
                .iter()
                .map(|r| Region {
                    home: parse(r.home),
                    mobile: parse(r.mobile),
                    weight: r.weight,
                    center: center(r.home[0]),
                })
                .collect(),
            cgnat: Net::parse(CGNAT),
            attacker_v4: parse(ATTACKER_V4),
            attacker_v6: parse(ATTACKER_V6),
            // The two small London ranges: accuracy 10 and 3 km.
            victim: parse(&london),
            far: Net::parse("175.16.199.0/24"),
            hop_from: parse(&london),
            hop_to: Net::parse("2.125.160.216/29"),
            slow_from: Net::parse(REGIONS[REGION_LONDON].home[0]),
            slow_to: Net::parse("216.160.83.56/29"),
            // London to Milton, about 7,700 km, in 14 hours or more: ~550 km/h.
            slow_travel_ms: 14 * 3_600_000,
            decoys: [Net::parse("175.16.199.0/24"), Net::parse("202.196.224.0/20")],
            source: Source::Builtin,
        }
    }

    /// The database the engine must geolocate with to see this traffic as it was built:
    /// the embedded test database for the built-in tables, or the `--geoip` file.
    pub fn geo_db(&self) -> GeoDb {
        match &self.source {
            Source::Builtin => tokenwatch_core::defaults::test_geo_db(),
            Source::Database { bytes, .. } => {
                GeoDb::from_bytes(bytes.to_vec()).expect("the database was read as a City database")
            }
        }
    }

    /// Number of regions users live in.
    pub fn regions(&self) -> usize {
        self.regions.len()
    }

    /// Number of located networks users live in (home and mobile, over all regions).
    pub fn located_networks(&self) -> usize {
        let mut all: Vec<Net> = self
            .regions
            .iter()
            .flat_map(|r| r.home.iter().chain(&r.mobile).copied())
            .collect();
        all.sort_unstable_by_key(Net::sort_key);
        all.dedup();
        all.len()
    }

    /// The ranges that are meant to have no location (CGNAT and the attackers' ranges), as
    /// CIDR text: every other address the generator writes is located.
    pub fn unlocated_ranges(&self) -> Vec<String> {
        std::iter::once(&self.cgnat)
            .chain(&self.attacker_v4)
            .chain(&self.attacker_v6)
            .map(std::string::ToString::to_string)
            .collect()
    }
}

/// Two values are equal when they were built from the same source (the tables are a
/// deterministic function of it).
impl PartialEq for Networks {
    fn eq(&self, other: &Self) -> bool {
        match (&self.source, &other.source) {
            (Source::Builtin, Source::Builtin) => true,
            (Source::Database { bytes: a, .. }, Source::Database { bytes: b, .. }) => a == b,
            _ => false,
        }
    }
}

/// A summary: the database's bytes and thousands of networks help nobody in a log.
impl fmt::Debug for Networks {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let source = match &self.source {
            Source::Builtin => "built-in (GeoLite2-City-Test)".to_string(),
            Source::Database { path, .. } => path.display().to_string(),
        };
        f.debug_struct("Networks")
            .field("source", &source)
            .field("regions", &self.regions.len())
            .field("located_networks", &self.located_networks())
            .finish()
    }
}

/// An IPv4 or IPv6 prefix.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Net {
    V4 { base: u32, len: u8 },
    V6 { base: u128, len: u8 },
}

impl Net {
    /// The prefix of `ip` of length `len` (clamped to the address size).
    pub(crate) fn new(ip: IpAddr, len: u8) -> Net {
        match ip {
            IpAddr::V4(a) => {
                let len = len.min(32);
                Net::V4 {
                    base: u32::from(a) & mask32(len),
                    len,
                }
            }
            IpAddr::V6(a) => {
                let len = len.min(128);
                Net::V6 {
                    base: u128::from(a) & mask128(len),
                    len,
                }
            }
        }
    }

    /// IPv4 before IPv6, then by address and length.
    pub(crate) fn sort_key(&self) -> (u8, u128, u8) {
        match *self {
            Net::V4 { base, len } => (4, u128::from(base), len),
            Net::V6 { base, len } => (6, base, len),
        }
    }

    /// The first address of the range.
    pub(crate) fn first(&self) -> IpAddr {
        match *self {
            Net::V4 { base, .. } => IpAddr::V4(Ipv4Addr::from(base)),
            Net::V6 { base, .. } => IpAddr::V6(Ipv6Addr::from(base)),
        }
    }

    pub(crate) fn len(&self) -> u8 {
        match *self {
            Net::V4 { len, .. } | Net::V6 { len, .. } => len,
        }
    }

    /// Parses the tables' CIDR strings; they are constants, so a bad one is a bug.
    pub(crate) fn parse(cidr: &str) -> Net {
        let (addr, len) = cidr.split_once('/').expect("CIDR in generator table");
        let len: u8 = len.parse().expect("prefix length in generator table");
        match addr.parse::<IpAddr>().expect("address in generator table") {
            IpAddr::V4(a) => Net::V4 {
                base: u32::from(a) & mask32(len),
                len,
            },
            IpAddr::V6(a) => Net::V6 {
                base: u128::from(a) & mask128(len),
                len,
            },
        }
    }

    #[cfg(test)]
    pub(crate) fn contains(&self, ip: IpAddr) -> bool {
        match (*self, ip) {
            (Net::V4 { base, len }, IpAddr::V4(a)) => u32::from(a) & mask32(len) == base,
            (Net::V6 { base, len }, IpAddr::V6(a)) => u128::from(a) & mask128(len) == base,
            _ => false,
        }
    }

    /// A random address in the range. For IPv6, the /64 (what the rules count as one
    /// network) is random too; [`Addr`] keeps it when the host part changes.
    pub(crate) fn random(&self, rng: &mut Rng) -> Addr {
        match *self {
            Net::V4 { base, len } => {
                let host = (rng.next_u64() as u32) & !mask32(len);
                // Avoid .0 and .255, which real clients rarely have.
                let mut a = base | host;
                if len <= 24 && matches!(a & 0xff, 0 | 255) {
                    a = (a & !0xff) | (1 + rng.below(250) as u32);
                }
                Addr::V4(Ipv4Addr::from(a))
            }
            Net::V6 { base, len } => {
                let bits = (u128::from(rng.next_u64()) << 64) & !mask128(len) & mask128(64);
                Addr::V6 {
                    prefix64: base | bits,
                    iid: rng.next_u64() | 1,
                }
            }
        }
    }
}

impl fmt::Display for Net {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.first(), self.len())
    }
}

fn mask32(len: u8) -> u32 {
    if len == 0 {
        0
    } else {
        u32::MAX << (32 - u32::from(len))
    }
}

fn mask128(len: u8) -> u128 {
    if len == 0 {
        0
    } else {
        u128::MAX << (128 - u32::from(len))
    }
}

/// A client address. IPv6 clients keep their /64 but change the interface id now and then
/// (privacy addresses), which must not look like a new network.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Addr {
    V4(Ipv4Addr),
    V6 { prefix64: u128, iid: u64 },
}

impl Addr {
    pub(crate) fn ip(&self) -> IpAddr {
        match *self {
            Addr::V4(a) => IpAddr::V4(a),
            Addr::V6 { prefix64, iid } => IpAddr::V6(Ipv6Addr::from(prefix64 | u128::from(iid))),
        }
    }

    /// A new privacy address in the same /64; IPv4 stays as it is.
    pub(crate) fn rotate(&mut self, rng: &mut Rng) {
        if let Addr::V6 { iid, .. } = self {
            *iid = rng.next_u64() | 1;
        }
    }

    pub(crate) fn text(&self) -> Box<str> {
        self.ip().to_string().into_boxed_str()
    }
}

pub(crate) fn location_of(cidr: &str) -> Option<Located> {
    LOCATED.iter().copied().find(|l| l.cidr == cidr)
}

/// Great-circle distance in km (haversine, mean Earth radius).
pub(crate) fn distance_km(lat1: f64, lon1: f64, lat2: f64, lon2: f64) -> f64 {
    let (p1, p2) = (lat1.to_radians(), lat2.to_radians());
    let dp = p2 - p1;
    let dl = (lon2 - lon1).to_radians();
    let h = (dp / 2.0).sin().powi(2) + p1.cos() * p2.cos() * (dl / 2.0).sin().powi(2);
    2.0 * 6371.0088 * h.sqrt().min(1.0).asin()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_region_range_is_located_and_regions_are_compact() {
        for r in REGIONS {
            let all: Vec<Located> = r
                .home
                .iter()
                .chain(r.mobile)
                .map(|c| location_of(c).unwrap_or_else(|| panic!("{c}")))
                .collect();
            for a in &all {
                for b in &all {
                    let d = distance_km(a.lat, a.lon, b.lat, b.lon);
                    assert!(d < 450.0, "{} to {} is {d:.0} km", a.cidr, b.cidr);
                }
            }
        }
    }

    #[test]
    fn random_addresses_stay_in_their_range() {
        let mut rng = Rng::new(3);
        for l in LOCATED
            .iter()
            .map(|l| l.cidr)
            .chain(ATTACKER_V4.iter().copied())
            .chain([CGNAT])
        {
            let net = Net::parse(l);
            for _ in 0..50 {
                let mut a = net.random(&mut rng);
                assert!(net.contains(a.ip()), "{l}");
                a.rotate(&mut rng);
                assert!(net.contains(a.ip()), "{l}");
            }
        }
        let located = |ip: &str| LOCATED.iter().any(|l| Net::parse(l.cidr).contains(ip.parse().unwrap()));
        assert!(located("81.2.69.143"));
        assert!(!located("100.64.1.1"));
        assert!(!located("185.220.101.7"));
    }

    #[test]
    fn distances_are_sane() {
        let d = distance_km(LONDON.0, LONDON.1, 43.88, 125.3228);
        assert!((8_100.0..8_300.0).contains(&d), "{d}");
        assert!(distance_km(1.0, 2.0, 1.0, 2.0).abs() < 1e-9);
    }
}
