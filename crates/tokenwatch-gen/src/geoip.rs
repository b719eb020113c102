//! [`Networks`] from a MaxMind GeoIP2/GeoLite2 City database (`gen --geoip FILE`).
//!
//! The database is walked once, network by network, in its own order. Every network the
//! engine would locate (a record with a latitude and a longitude) is kept with its location
//! and accuracy radius; networks at the same coordinates form a place, and places are
//! grouped greedily, the busiest first, into regions whose locations are pairwise less than
//! 450 km apart (500 km is where impossible travel starts; the margin is only for safety).
//! Everything is ordered by the walk or by explicit keys, never by a hash, so the
//! same database gives the same networks, and a seed the same traffic.
//!
//! The fixed points of the scenarios are then chosen from the regions so that each keeps
//! its meaning: a victim and a far network more than 1,000 km apart beyond both accuracy
//! radii (impossible in twenty minutes), a slow journey of at least 500 km made at
//! ~550 km/h, a fast hop between two places of one region. Attackers and mobile users
//! without a located network need ranges this database does not locate: the built-in ones
//! when it does not know them, else documentation and private ranges, which no database
//! locates. A database that cannot provide all of this is refused with what was found.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use serde::Deserialize;

use super::net::{distance_km, Net, Networks, Region, Source, ATTACKER_V4, ATTACKER_V6, CGNAT};

/// Locations in one region are pairwise closer than this (great-circle, km).
const REGION_KM: f64 = 450.0;
/// The impossible-travel pair is further apart than this beyond both accuracy radii.
const FAR_KM: f64 = 1000.0;
/// The slow journey is at least this long beyond both accuracy radii (the rule's minimum).
const SLOW_MIN_KM: f64 = 500.0;
/// The slow journey is at most this long, so that it takes less than a day at ...
const SLOW_MAX_KM: f64 = 12_000.0;
/// ... this speed, well below the rule's 900 km/h.
const SLOW_KMH: f64 = 550.0;
/// The fast hop within a region is at least this long when the database allows it: over
/// 900 km/h in the few minutes it takes, so only the distance keeps it from firing.
const HOP_MIN_KM: f64 = 50.0;
/// Busiest places clustered into regions (the clustering is quadratic in this).
const MAX_PLACES: usize = 2000;
/// Regions users live in (a user's region is a `u8`).
const MAX_REGIONS: usize = 64;
/// Networks kept per place and address family, and per region as home or mobile networks.
const PLACE_NETS: usize = 8;
const REGION_NETS: usize = 32;

/// Ranges no database locates, for when it locates the built-in attacker ranges: the
/// documentation ranges of RFC 5737 and RFC 3849.
const FALLBACK_V4: &[&str] = &["192.0.2.0/24", "198.51.100.0/24", "203.0.113.0/24"];
const FALLBACK_V6: &[&str] = &["2001:db8::/32"];
/// Mobile users without a location: carrier-grade NAT, else private addresses.
const UNLOCATED_MOBILE: &[&str] = &[CGNAT, "10.0.0.0/8"];

/// Why a GeoIP database cannot be used for generated traffic.
#[derive(Debug, thiserror::Error)]
pub enum NetworksError {
    /// The file cannot be read: a wrong path or missing permissions.
    #[error("cannot open GeoIP database {path}: {error} (expected a MaxMind City .mmdb file)")]
    Read { path: PathBuf, error: std::io::Error },
    /// The file is not a MaxMind database, or a damaged one.
    #[error("cannot open GeoIP database {path}: {error} (expected a MaxMind City .mmdb file)")]
    Decode {
        path: PathBuf,
        error: maxminddb::MaxMindDbError,
    },
    /// A MaxMind database without cities (a Country or ASN database, say).
    #[error(
        "cannot open GeoIP database {path}: database type is {database_type}, not a City database \
         (expected a MaxMind City .mmdb file)"
    )]
    NotCity { path: PathBuf, database_type: String },
    /// A City database that covers too little of the world for the scenarios to keep their
    /// meaning; the counts say how much it does cover.
    #[error(
        "GeoIP database {path} cannot place generated traffic: {shortfall} (found {located} located \
         networks, {usable} usable, at {places} places, forming {regions} regions)"
    )]
    TooFew {
        path: PathBuf,
        shortfall: Shortfall,
        located: u64,
        usable: u64,
        places: usize,
        regions: usize,
    },
}

/// What a City database lacks for the generated traffic ([`NetworksError::TooFew`]).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Shortfall {
    /// No two places far enough apart for impossible travel.
    #[error(
        "the generator needs two regions with networks more than {far:.0} km apart beyond their \
         accuracy radii, for impossible travel",
        far = FAR_KM
    )]
    NoFarPair,
    /// The database locates ranges that attackers or mobile users must use unlocated (so
    /// that a replay never also looks like travel).
    #[error(
        "it locates ranges the generator needs to be unknown: {attacker_v4} unlocated IPv4 attacker \
         ranges (3 needed), {attacker_v6} IPv6 (1 needed), {} unlocated range of {} for mobile users",
        an_or_no(*.mobile),
        UNLOCATED_MOBILE.join(", ")
    )]
    LocatesUnknownRanges {
        attacker_v4: usize,
        attacker_v6: usize,
        /// Whether a range for mobile users is unlocated (carrier-grade NAT, else 10.0.0.0/8).
        mobile: bool,
    },
}

fn an_or_no(found: bool) -> &'static str {
    if found {
        "an"
    } else {
        "no"
    }
}

/// What the engine reads of a record (`tokenwatch_core::geo` decodes the same fields), and the city.
#[derive(Deserialize)]
struct Record {
    city: Option<City>,
    location: Option<Location>,
}

#[derive(Deserialize)]
struct City {
    geoname_id: Option<u32>,
}

#[derive(Deserialize)]
struct Location {
    latitude: Option<f64>,
    longitude: Option<f64>,
    accuracy_radius: Option<u16>,
}

/// Networks at one location.
#[derive(Debug, Clone)]
pub(crate) struct Place {
    pub lat: f64,
    pub lon: f64,
    /// Has a city (a geoname id), not only a country or continent.
    pub city: bool,
    /// Up to [`PLACE_NETS`] networks per family, in walk order, with accuracy radii (km).
    pub v4: Vec<(Net, f64)>,
    pub v6: Vec<(Net, f64)>,
    /// Every usable network here, kept or not.
    pub count: u64,
}

impl Networks {
    /// Reads a City database and places users, victims and attackers in it.
    pub fn from_geoip(path: &Path) -> Result<Networks, NetworksError> {
        let bytes = std::fs::read(path).map_err(|error| NetworksError::Read {
            path: path.to_owned(),
            error,
        })?;
        let decode = |error| NetworksError::Decode {
            path: path.to_owned(),
            error,
        };
        let reader = maxminddb::Reader::from_source(&bytes[..]).map_err(decode)?;
        if !reader.metadata.database_type.contains("City") {
            return Err(NetworksError::NotCity {
                path: path.to_owned(),
                database_type: reader.metadata.database_type.clone(),
            });
        }
        let Walked { located, places } = walk(&reader).map_err(decode)?;
        let (usable, n_places) = (places.iter().map(|p| p.count).sum::<u64>(), places.len());
        let too_few = |shortfall, regions| NetworksError::TooFew {
            path: path.to_owned(),
            shortfall,
            located,
            usable,
            places: n_places,
            regions,
        };
        let plan = plan(places).map_err(|e| too_few(e.shortfall, e.regions))?;
        let unknown = unknown_ranges(&reader).map_err(|s| too_few(s, plan.regions.len()))?;
        Ok(Networks {
            regions: plan.regions,
            cgnat: unknown.mobile,
            attacker_v4: unknown.attacker_v4,
            attacker_v6: unknown.attacker_v6,
            victim: plan.victim,
            far: plan.far,
            hop_from: plan.hop_from,
            hop_to: plan.hop_to,
            slow_from: plan.slow_from,
            slow_to: plan.slow_to,
            slow_travel_ms: plan.slow_travel_ms,
            decoys: plan.decoys,
            source: Source::Database {
                path: path.to_owned(),
                bytes: Arc::new(bytes),
            },
        })
    }
}

/// Ranges this database does not locate, for those who must stay unlocated.
struct Unknown {
    attacker_v4: Vec<Net>,
    attacker_v6: Vec<Net>,
    /// For mobile users without a located network.
    mobile: Net,
}

/// The built-in attacker ranges this database does not locate, topped up from the
/// documentation ranges when too few are left; and the first of [`UNLOCATED_MOBILE`] it
/// does not locate.
fn unknown_ranges(reader: &maxminddb::Reader<&[u8]>) -> Result<Unknown, Shortfall> {
    let unlocated = |net: &Net| is_unlocated(reader, net);
    let unknown = |tables: &[&str], fallback: &[&str], need: usize| -> Vec<Net> {
        let mut nets: Vec<Net> = tables.iter().map(|c| Net::parse(c)).filter(unlocated).collect();
        if nets.len() < need {
            nets.extend(fallback.iter().map(|c| Net::parse(c)).filter(unlocated));
        }
        nets
    };
    let attacker_v4 = unknown(ATTACKER_V4, FALLBACK_V4, 3);
    let attacker_v6 = unknown(ATTACKER_V6, FALLBACK_V6, 1);
    let mobile = UNLOCATED_MOBILE.iter().map(|c| Net::parse(c)).find(unlocated);
    match mobile {
        Some(mobile) if attacker_v4.len() >= 3 && !attacker_v6.is_empty() => Ok(Unknown {
            attacker_v4,
            attacker_v6,
            mobile,
        }),
        _ => Err(Shortfall::LocatesUnknownRanges {
            attacker_v4: attacker_v4.len(),
            attacker_v6: attacker_v6.len(),
            mobile: mobile.is_some(),
        }),
    }
}

struct Walked {
    /// Networks the engine would locate, all of them.
    located: u64,
    places: Vec<Place>,
}

/// Every network of the database with a location, grouped by location.
fn walk(reader: &maxminddb::Reader<&[u8]>) -> Result<Walked, maxminddb::MaxMindDbError> {
    // An IPv6 tree holds the IPv4 space at ::/96 and reports it as IPv4; its aliases of that
    // space (::ffff:0:0/96, 6to4, Teredo) are skipped by the walk.
    let root = if reader.metadata.ip_version == 6 {
        "::/0"
    } else {
        "0.0.0.0/0"
    };
    let within = reader.within::<Record>(root.parse().map_err(maxminddb::MaxMindDbError::from)?)?;
    let mut places: Vec<Place> = Vec::new();
    let mut index: HashMap<(u32, u64, u64), usize> = HashMap::new();
    let mut located = 0u64;
    for item in within {
        // A record that does not decode has no location for the engine either.
        let Ok(item) = item else { continue };
        let Some((lat, lon, acc)) = item
            .info
            .location
            .as_ref()
            .and_then(|l| Some((l.latitude?, l.longitude?, l.accuracy_radius.map_or(0.0, f64::from))))
        else {
            continue;
        };
        located += 1;
        let net = Net::new(item.ip_net.network(), item.ip_net.prefix());
        // Users of an IPv6 network get a /64 of their own inside it.
        if matches!(net, Net::V6 { len, .. } if len > 64) || !lat.is_finite() || !lon.is_finite() {
            continue;
        }
        let city = item.info.city.and_then(|c| c.geoname_id);
        let key = (city.unwrap_or(0), lat.to_bits(), lon.to_bits());
        let i = *index.entry(key).or_insert_with(|| {
            places.push(Place {
                lat,
                lon,
                city: city.is_some(),
                v4: Vec::new(),
                v6: Vec::new(),
                count: 0,
            });
            places.len() - 1
        });
        let p = &mut places[i];
        p.count += 1;
        let list = if matches!(net, Net::V4 { .. }) {
            &mut p.v4
        } else {
            &mut p.v6
        };
        if list.len() < PLACE_NETS {
            list.push((net, acc));
        }
    }
    Ok(Walked { located, places })
}

/// True when the engine locates no address of `net`: neither a network containing it nor
/// one inside it has coordinates.
fn is_unlocated(reader: &maxminddb::Reader<&[u8]>, net: &Net) -> bool {
    let located = |r: &Record| {
        r.location
            .as_ref()
            .is_some_and(|l| l.latitude.is_some() && l.longitude.is_some())
    };
    if reader.metadata.ip_version == 4 && matches!(net, Net::V6 { .. }) {
        // The engine's lookup of an IPv6 address fails in an IPv4 database: no location.
        return true;
    }
    match reader.lookup::<Record>(net.first()) {
        Ok(Some(r)) if located(&r) => return false,
        Ok(_) => {}
        Err(_) => return false,
    }
    let Ok(cidr) = net.to_string().parse() else {
        return false;
    };
    let Ok(mut inside) = reader.within::<Record>(cidr) else {
        return false;
    };
    // An undecodable record counts as located: such a range is simply not used.
    inside.all(|item| item.is_ok_and(|i| !located(&i.info)))
}

/// A located network of a region, with where the engine puts it.
#[derive(Debug, Clone, Copy)]
struct Spot {
    net: Net,
    lat: f64,
    lon: f64,
    acc: f64,
    region: usize,
}

impl Spot {
    fn km(&self, other: &Spot) -> f64 {
        distance_km(self.lat, self.lon, other.lat, other.lon)
    }

    /// The distance the impossible-travel rule sees: beyond both accuracy radii.
    fn beyond_accuracy_km(&self, other: &Spot) -> f64 {
        self.km(other) - self.acc - other.acc
    }

    fn same_place(&self, other: &Spot) -> bool {
        self.lat == other.lat && self.lon == other.lon
    }
}

/// The networks of the kept regions, each tagged with its region's index (busiest first).
struct Spots {
    all: Vec<Spot>,
    regions: usize,
}

impl Spots {
    fn in_region(&self, r: usize) -> impl Iterator<Item = &Spot> {
        self.all.iter().filter(move |s| s.region == r)
    }
}

/// The located part of [`Networks`].
#[derive(Debug)]
pub(crate) struct Plan {
    pub regions: Vec<Region>,
    pub victim: Vec<Net>,
    pub far: Net,
    pub hop_from: Vec<Net>,
    pub hop_to: Net,
    pub slow_from: Net,
    pub slow_to: Net,
    pub slow_travel_ms: i64,
    pub decoys: [Net; 2],
}

/// Why no plan could be made, with the number of regions formed (the operator's clue to
/// what the database covers).
#[derive(Debug)]
pub(crate) struct NoPlan {
    pub shortfall: Shortfall,
    pub regions: usize,
}

/// Regions from places, and the scenarios' fixed points in them.
pub(crate) fn plan(places: Vec<Place>) -> Result<Plan, NoPlan> {
    let places: Vec<Place> = places
        .into_iter()
        .filter(|p| !p.v4.is_empty() || !p.v6.is_empty())
        .collect();
    let (regions, spots) = regions(&places, &cluster(&places));
    let n_regions = regions.len();
    let no_plan = |shortfall| NoPlan {
        shortfall,
        regions: n_regions,
    };
    let (victim, far) = impossible_travel(&spots).ok_or_else(|| no_plan(Shortfall::NoFarPair))?;
    let mut victims: Vec<&Spot> = spots
        .in_region(victim.region)
        .filter(|s| s.same_place(&victim) && s.beyond_accuracy_km(&far) >= FAR_KM)
        .collect();
    victims.sort_by(|a, b| a.acc.total_cmp(&b.acc));
    victims.truncate(2);
    let (slow_to, slow_travel_ms) = slow_journey(&spots, &victim, &far);
    let (hop_a, hop_b) = hop(&spots).unwrap_or((victim, victim));
    let hop_from: Vec<Net> = spots
        .in_region(hop_a.region)
        .filter(|s| s.same_place(&hop_a))
        .take(2)
        .map(|s| s.net)
        .collect();
    Ok(Plan {
        regions,
        victim: victims.iter().map(|s| s.net).collect(),
        far: far.net,
        hop_from,
        hop_to: hop_b.net,
        slow_from: victim.net,
        slow_to: slow_to.net,
        slow_travel_ms,
        decoys: [far.net, decoy(&spots, &victim, &far).net],
    })
}

/// Greedy complete-linkage clustering of the places, as indices into `places`: each
/// unassigned place, busiest first, starts a group and takes the nearest unassigned places
/// that are close to every member. Only the [`MAX_PLACES`] busiest places take part, since
/// the clustering is quadratic.
fn cluster(places: &[Place]) -> Vec<Vec<usize>> {
    // Cities before country centroids, busy places first; the walk order breaks ties.
    let mut order: Vec<usize> = (0..places.len()).collect();
    order.sort_by_key(|&i| (!places[i].city, std::cmp::Reverse(places[i].count), i));
    order.truncate(MAX_PLACES);
    let km = |a: usize, b: usize| distance_km(places[a].lat, places[a].lon, places[b].lat, places[b].lon);
    let mut assigned = vec![false; places.len()];
    let mut groups: Vec<Vec<usize>> = Vec::new();
    for &seed in &order {
        if assigned[seed] {
            continue;
        }
        assigned[seed] = true;
        let mut near: Vec<(f64, usize)> = order
            .iter()
            .filter(|&&j| !assigned[j])
            .map(|&j| (km(seed, j), j))
            .filter(|(d, _)| *d < REGION_KM)
            .collect();
        near.sort_by(|a, b| a.0.total_cmp(&b.0).then(a.1.cmp(&b.1)));
        let mut members = vec![seed];
        for (_, j) in near {
            if members.iter().all(|&m| km(m, j) < REGION_KM) {
                assigned[j] = true;
                members.push(j);
            }
        }
        groups.push(members);
    }
    groups
}

/// The [`MAX_REGIONS`] most populous regions of the groups, in a stable order, and their
/// networks as spots tagged with the region's index.
fn regions(places: &[Place], groups: &[Vec<usize>]) -> (Vec<Region>, Spots) {
    let mut regions: Vec<(Region, Vec<Spot>)> = groups.iter().map(|members| region(places, members)).collect();
    regions.sort_by_key(|(r, _)| std::cmp::Reverse(r.weight));
    regions.truncate(MAX_REGIONS);
    let spots = Spots {
        all: regions
            .iter()
            .enumerate()
            .flat_map(|(i, (_, s))| s.iter().map(move |s| Spot { region: i, ..*s }))
            .collect(),
        regions: regions.len(),
    };
    (regions.into_iter().map(|(r, _)| r).collect(), spots)
}

/// One group of places as a region: up to [`REGION_NETS`] networks per family, weighted by
/// how much of the database it covers, cities counting extra.
fn region(places: &[Place], members: &[usize]) -> (Region, Vec<Spot>) {
    let collect = |v6: bool| -> Vec<Spot> {
        members
            .iter()
            .flat_map(|&m| {
                let p = &places[m];
                let list = if v6 { &p.v6 } else { &p.v4 };
                list.iter().map(move |&(net, acc)| Spot {
                    net,
                    lat: p.lat,
                    lon: p.lon,
                    acc,
                    region: 0,
                })
            })
            .take(REGION_NETS)
            .collect()
    };
    let (v4, v6) = (collect(false), collect(true));
    let city_places = members.iter().filter(|&&m| places[m].city).count() as u32;
    let weight = ((v4.len() + v6.len()) as u32 + 4 * city_places).clamp(1, 60);
    let nets = |s: &[Spot]| s.iter().map(|s| s.net).collect::<Vec<Net>>();
    // IPv4 for fixed lines, IPv6 for phones; a region with one family uses it for both.
    let (home, mobile) = if v4.is_empty() {
        (nets(&v6), nets(&v6))
    } else {
        (nets(&v4), nets(&v6))
    };
    let first = v4.first().or(v6.first()).copied().expect("places have networks");
    let region = Region {
        home,
        mobile,
        weight,
        center: (first.lat, first.lon),
    };
    (region, v4.into_iter().chain(v6).collect())
}

/// Impossible travel: the first region (busiest first) with a network that has a far
/// counterpart. The victim is its most precise network, and the far one the most distant.
fn impossible_travel(spots: &Spots) -> Option<(Spot, Spot)> {
    (0..spots.regions).find_map(|r| {
        let v = first_max(spots.in_region(r), |s| -s.acc)?;
        let far = first_max(spots.all.iter().filter(|f| f.region != r), |f| v.beyond_accuracy_km(f))?;
        (v.beyond_accuracy_km(&far) >= FAR_KM).then_some((v, far))
    })
}

/// A slow journey from the victim's network: the longest one that still takes less than a
/// day, to a third region when there is one; and how long it takes at [`SLOW_KMH`], in
/// whole minutes and at least an hour.
fn slow_journey(spots: &Spots, victim: &Spot, far: &Spot) -> (Spot, i64) {
    let slow_ok = |s: &&Spot| {
        s.region != victim.region && victim.beyond_accuracy_km(s) >= SLOW_MIN_KM && victim.km(s) <= SLOW_MAX_KM
    };
    let all = || spots.all.iter().filter(slow_ok);
    let to = first_max(all().filter(|s| s.region != far.region), |s| victim.km(s))
        .or_else(|| first_max(all(), |s| victim.km(s)))
        .unwrap_or(*far);
    let hours = (victim.km(&to) / SLOW_KMH).max(1.0);
    (to, (hours * 60.0).ceil() as i64 * 60_000)
}

/// A hop: two places of one region, as far apart as the region allows (at least
/// [`HOP_MIN_KM`] when possible), in the first region that has one; else the first two
/// networks of the first region with two.
fn hop(spots: &Spots) -> Option<(Spot, Spot)> {
    let widest = |r: usize| {
        let members: Vec<&Spot> = spots.in_region(r).collect();
        let mut best: Option<(f64, Spot, Spot)> = None;
        for a in &members {
            for b in &members {
                let d = a.km(b);
                if !a.same_place(b) && d >= HOP_MIN_KM && best.is_none_or(|(bd, _, _)| d > bd) {
                    best = Some((d, **a, **b));
                }
            }
        }
        best.map(|(_, a, b)| (a, b))
    };
    (0..spots.regions).find_map(widest).or_else(|| {
        (0..spots.regions).find_map(|r| {
            let m: Vec<&Spot> = spots.in_region(r).collect();
            (m.len() >= 2).then(|| (*m[0], *m[1]))
        })
    })
}

/// Where forged copies come from: the far network, and the network furthest from the
/// victim outside both travel regions. Located, but refused, so never located by the rules.
fn decoy(spots: &Spots, victim: &Spot, far: &Spot) -> Spot {
    first_max(
        spots
            .all
            .iter()
            .filter(|s| s.region != victim.region && s.region != far.region),
        |s| victim.km(s),
    )
    .unwrap_or(*far)
}

/// The first of the spots with the highest score.
fn first_max<'s>(spots: impl Iterator<Item = &'s Spot>, score: impl Fn(&Spot) -> f64) -> Option<Spot> {
    let mut best: Option<(f64, Spot)> = None;
    for s in spots {
        let v = score(s);
        if best.is_none_or(|(b, _)| v > b) {
            best = Some((v, *s));
        }
    }
    best.map(|(_, s)| s)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::rng::Rng;
    use tokenwatch_core::geo::GeoDb;
    use tokenwatch_core::input::GeoPoint;

    fn databases() -> [PathBuf; 2] {
        let root = Path::new(concat!(env!("CARGO_MANIFEST_DIR"), "/../.."));
        [
            root.join("tests/fixtures/geoip/GeoIP2-City-Test.mmdb"),
            root.join("assets/GeoLite2-City-Test.mmdb"),
        ]
    }

    /// Where the engine puts an address of `net`: the same for a few random ones.
    fn where_engine_puts(db: &GeoDb, net: Net, rng: &mut Rng) -> Option<GeoPoint> {
        let first = db.locate(net.first());
        for _ in 0..8 {
            assert_eq!(db.locate(net.random(rng).ip()), first, "{net}");
        }
        first
    }

    fn km(a: &GeoPoint, b: &GeoPoint) -> f64 {
        tokenwatch_core::geo::distance_km(a, b)
    }

    #[test]
    fn every_network_is_located_regions_are_compact_and_fixed_points_keep_their_meaning() {
        let mut rng = Rng::new(4);
        for path in databases() {
            let nets = Networks::from_geoip(&path).unwrap();
            let db = GeoDb::open(&path).unwrap();
            let mut at = |net: Net| {
                where_engine_puts(&db, net, &mut rng)
                    .unwrap_or_else(|| panic!("{}: {net} is not located", path.display()))
            };
            assert!(nets.regions.len() >= 10, "{nets:?}");
            for r in &nets.regions {
                let all: Vec<(Net, GeoPoint)> = r.home.iter().chain(&r.mobile).map(|&n| (n, at(n))).collect();
                assert_eq!((all[0].1.lat, all[0].1.lon), r.center);
                for (a, pa) in &all {
                    for (b, pb) in &all {
                        assert!(km(pa, pb) < REGION_KM, "{a} to {b}");
                    }
                }
            }
            // Impossible in twenty minutes, whatever the accuracy radii.
            let far = at(nets.far);
            for &v in &nets.victim {
                let v = at(v);
                assert!(km(&v, &far) - v.accuracy_km - far.accuracy_km >= FAR_KM);
            }
            // Far, but slower than 600 km/h, and within a day.
            let (from, to) = (at(nets.slow_from), at(nets.slow_to));
            let hours = nets.slow_travel_ms as f64 / 3_600_000.0;
            assert!(km(&from, &to) - from.accuracy_km - to.accuracy_km >= SLOW_MIN_KM);
            assert!(km(&from, &to) / hours <= 600.0 && hours < 23.0, "{hours} h");
            // Fast, but within one region.
            let to = at(nets.hop_to);
            for &f in &nets.hop_from {
                let d = km(&at(f), &to);
                assert!((HOP_MIN_KM..REGION_KM).contains(&d), "{d}");
            }
            for d in nets.decoys {
                at(d);
            }
            // The ranges meant to be unknown are.
            assert!(nets.attacker_v4.len() >= 3 && !nets.attacker_v6.is_empty());
            for n in std::iter::once(nets.cgnat)
                .chain(nets.attacker_v4.iter().copied())
                .chain(nets.attacker_v6.iter().copied())
            {
                assert_eq!(where_engine_puts(&db, n, &mut rng), None, "{n}");
            }
        }
    }

    #[test]
    fn a_database_is_read_the_same_way_every_time() {
        let [path, _] = databases();
        let (a, b) = (
            Networks::from_geoip(&path).unwrap(),
            Networks::from_geoip(&path).unwrap(),
        );
        assert_eq!(a.regions, b.regions);
        assert_eq!(
            (a.victim, a.far, a.hop_to, a.slow_to),
            (b.victim, b.far, b.hop_to, b.slow_to)
        );
    }

    #[test]
    fn unreadable_files_are_refused_by_name() {
        for p in [
            "/nonexistent/cities.mmdb",
            concat!(env!("CARGO_MANIFEST_DIR"), "/Cargo.toml"),
        ] {
            let e = Networks::from_geoip(Path::new(p)).err().unwrap().to_string();
            assert!(e.contains(p) && e.contains("cannot open GeoIP database"), "{e}");
        }
    }

    fn place(lat: f64, lon: f64, acc: f64, n: u8) -> Place {
        Place {
            lat,
            lon,
            city: true,
            v4: vec![(Net::parse(&format!("198.18.{n}.0/24")), acc)],
            v6: Vec::new(),
            count: 1,
        }
    }

    #[test]
    fn too_few_far_apart_places_are_refused_with_what_was_found() {
        let london = place(51.5, -0.1, 10.0, 1);
        let oxford = place(51.75, -1.25, 10.0, 2);
        let e = plan(vec![london.clone(), oxford.clone()]).unwrap_err();
        assert_eq!((e.shortfall, e.regions), (Shortfall::NoFarPair, 1));
        let reason = Shortfall::NoFarPair.to_string();
        assert!(reason.contains("more than 1000 km apart"), "{reason}");
        // Edinburgh is a region of its own, but not far enough for impossible travel.
        let edinburgh = place(55.95, -3.19, 10.0, 3);
        assert_eq!(plan(vec![london.clone(), edinburgh.clone()]).unwrap_err().regions, 2);
        // Rome is far enough only with precise locations.
        let rome_vague = place(41.9, 12.5, 500.0, 4);
        assert!(plan(vec![london.clone(), rome_vague]).is_err());
        let tokyo = place(35.7, 139.7, 100.0, 5);
        let p = plan(vec![london, oxford, edinburgh, tokyo]).unwrap();
        assert_eq!(p.regions.len(), 3);
        assert_eq!(p.far.to_string(), "198.18.5.0/24");
        assert_eq!(p.victim.len(), 1);
        // The slow journey avoids the far region when it can: London to Edinburgh, in an hour.
        assert_eq!(p.slow_to.to_string(), "198.18.3.0/24");
        assert_eq!(p.slow_travel_ms, 3_600_000);
    }
}
