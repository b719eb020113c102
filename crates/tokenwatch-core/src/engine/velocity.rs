//! `geo_velocity`: impossible travel between consecutive geolocated events of a key.
//!
//! distance = great-circle distance minus both accuracy radii (floored at 0), time =
//! max(Δt, min_time); a pair fires when it is closer than `max_gap` in time, at least
//! `min_distance_km` apart, and faster than `max_speed_kmh`. A key keeps the samples that a
//! late event could still fall between (those within the allowed lateness of its newest),
//! plus the one before them, and at most [`MAX_SAMPLES`].

use std::net::IpAddr;

use serde_json::{json, Value};

use super::state::{Env, KindStep, View};
use super::{said, Fired};
use crate::decision::fmt_ts;
use crate::geo::distance_km;
use crate::input::GeoPoint;
use crate::rules::{fmt_duration, Ctx, Rule};

/// A `geo_velocity` rule's parameters (with the engine's lateness, which bounds the samples
/// a key keeps).
pub struct Velocity(pub Limits);

impl KindStep for Velocity {
    type Data = VelocityState;
    /// The event as a sample: only geolocated events reach the step.
    type Input<'e> = Sample;
    type Hit<'s> = Jump;
    const SEES_LATE: bool = false;

    fn input<'e>(&self, cx: &'e Ctx<'e>, _: &mut Env<'_>) -> Option<Sample> {
        Some(Sample {
            ts: cx.ev.ts_ms,
            at: cx.ev.geo?,
            ip: cx.ev.client_ip,
        })
    }

    fn step(&self, data: &mut VelocityState, _: i64, s: Sample) -> Option<Jump> {
        data.add(s, &self.0)
    }

    fn fired(&self, rule: &Rule, _: &Ctx<'_>, j: Jump) -> Fired {
        let max_speed_kmh = self.0.max_speed_kmh;
        let minutes = (j.to.ts - j.from.ts) as f64 / 60_000.0;
        Fired {
            reason: format!(
                "{}: {:.0} km in {minutes:.1} min ({:.0} km/h, limit {max_speed_kmh:.0} km/h).",
                said(rule),
                j.distance_km,
                j.speed_kmh,
            ),
            evidence: json!({
                "from": sample_json(&j.from),
                "to": sample_json(&j.to),
                "distance_km": (j.distance_km * 10.0).round() / 10.0,
                "speed_kmh": j.speed_kmh.round(),
                "max_speed_kmh": max_speed_kmh,
            }),
            // A subject revocation starts from the later request of the pair.
            not_before_ms: Some(j.to.ts),
        }
    }

    fn view(&self, data: Option<&VelocityState>, cx: &Ctx<'_>) -> View {
        let samples = data.map(VelocityState::samples).unwrap_or_default();
        View {
            window: samples.iter().map(sample_json).collect(),
            progress: None,
            why_not: if cx.ev.geo.is_some() {
                travel_note(samples, cx.ev.ts_ms, &self.0)
            } else {
                "the event has no location".into()
            },
        }
    }
}

/// A sample as decisions and `explain` show it.
fn sample_json(s: &Sample) -> Value {
    json!({
        "ts": fmt_ts(s.ts),
        "client_ip": s.ip.map(|i| i.to_string()),
        "lat": s.at.lat,
        "lon": s.at.lon,
        "accuracy_km": s.at.accuracy_km,
    })
}

/// For `explain`: the move from the previous location to this event's, against the limits.
fn travel_note(samples: &[Sample], ts: i64, lim: &Limits) -> String {
    let Some(at) = samples.iter().rposition(|s| s.ts == ts) else {
        return "the event has no location".into();
    };
    let Some(prev) = at.checked_sub(1).map(|i| &samples[i]) else {
        return "no earlier location of this key to compare with".into();
    };
    let cur = &samples[at];
    let dt = cur.ts - prev.ts;
    let d = (distance_km(&prev.at, &cur.at) - prev.at.accuracy_km - cur.at.accuracy_km).max(0.0);
    let speed = d / (dt.max(lim.min_time_ms) as f64 / 3_600_000.0);
    let verdict = if dt >= lim.max_gap_ms {
        format!("more than {} apart", fmt_duration(lim.max_gap_ms))
    } else if d < lim.min_distance_km {
        format!("closer than {} km", lim.min_distance_km)
    } else {
        format!("not faster than {} km/h", lim.max_speed_kmh)
    };
    format!(
        "{d:.0} km (after accuracy radii) in {:.1} min since the previous location: {speed:.0} km/h, {verdict}",
        dt as f64 / 60_000.0
    )
}

pub const MAX_SAMPLES: usize = 8;

#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Sample {
    pub ts: i64,
    pub at: GeoPoint,
    pub ip: Option<IpAddr>,
}

#[derive(Default, Debug)]
pub struct VelocityState {
    pub(super) samples: Vec<Sample>,
}

impl super::keymap::Heap for VelocityState {
    fn heap_bytes(&self) -> usize {
        crate::heap::vec_bytes::<Sample>(self.samples.capacity())
    }
}

/// Two samples that imply impossible travel.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Jump {
    pub from: Sample,
    pub to: Sample,
    pub distance_km: f64,
    pub speed_kmh: f64,
}

pub struct Limits {
    pub max_gap_ms: i64,
    pub min_distance_km: f64,
    pub max_speed_kmh: f64,
    pub min_time_ms: i64,
    pub lateness_ms: i64,
}

impl VelocityState {
    /// Adds a sample and checks it against its neighbours in event time.
    pub fn add(&mut self, s: Sample, lim: &Limits) -> Option<Jump> {
        let at = self.samples.partition_point(|x| x.ts <= s.ts);
        if self.samples.capacity() == 0 {
            // One sample is all many subjects ever hold: allocate for one, not four.
            self.samples.reserve_exact(1);
        }
        self.samples.insert(at, s);
        let mut jump = None;
        if at > 0 {
            jump = check(&self.samples[at - 1], &s, lim);
        }
        if jump.is_none() && at + 1 < self.samples.len() {
            jump = check(&s, &self.samples[at + 1], lim);
        }
        // Keep what a late event could still land between, plus its predecessor.
        let newest = self.samples.last().map(|x| x.ts).unwrap_or(s.ts);
        let first_needed = self.samples.partition_point(|x| x.ts < newest - lim.lateness_ms);
        let drop = first_needed
            .saturating_sub(1)
            .max(self.samples.len().saturating_sub(MAX_SAMPLES));
        self.samples.drain(..drop);
        jump
    }

    /// The kept samples, in event-time order (for `explain`).
    pub fn samples(&self) -> &[Sample] {
        &self.samples
    }
}

fn check(a: &Sample, b: &Sample, lim: &Limits) -> Option<Jump> {
    let dt = b.ts - a.ts;
    if dt >= lim.max_gap_ms {
        return None;
    }
    let d = (distance_km(&a.at, &b.at) - a.at.accuracy_km - b.at.accuracy_km).max(0.0);
    if d < lim.min_distance_km {
        return None;
    }
    let hours = dt.max(lim.min_time_ms) as f64 / 3_600_000.0;
    let speed = d / hours;
    (speed > lim.max_speed_kmh).then_some(Jump {
        from: *a,
        to: *b,
        distance_km: d,
        speed_kmh: speed,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    const LIM: Limits = Limits {
        max_gap_ms: 86_400_000,
        min_distance_km: 500.0,
        max_speed_kmh: 900.0,
        min_time_ms: 60_000,
        lateness_ms: 60_000,
    };
    const LONDON: GeoPoint = GeoPoint {
        lat: 51.5142,
        lon: -0.0931,
        accuracy_km: 10.0,
    };
    const CHANGCHUN: GeoPoint = GeoPoint {
        lat: 43.88,
        lon: 125.3228,
        accuracy_km: 100.0,
    };
    const BOXFORD: GeoPoint = GeoPoint {
        lat: 51.75,
        lon: -1.25,
        accuracy_km: 100.0,
    };

    fn s(ts: i64, at: GeoPoint) -> Sample {
        Sample { ts, at, ip: None }
    }

    #[test]
    fn london_to_changchun_in_twenty_minutes_is_impossible() {
        let mut v = VelocityState::default();
        assert!(v.add(s(0, LONDON), &LIM).is_none());
        let j = v.add(s(20 * 60_000, CHANGCHUN), &LIM).unwrap();
        assert!(j.distance_km > 7_900.0 && j.speed_kmh > 20_000.0, "{j:?}");
        assert_eq!(j.to.ts, 20 * 60_000);
    }

    #[test]
    fn near_travel_is_below_the_minimum_distance() {
        let mut v = VelocityState::default();
        v.add(s(0, LONDON), &LIM);
        assert!(v.add(s(1_000, BOXFORD), &LIM).is_none());
    }

    #[test]
    fn accuracy_radii_are_subtracted_and_the_speed_limit_is_exclusive() {
        // Two points 1000 km apart on the equator (approx.), radii 50 km each => 900 km after
        // subtraction; in exactly one hour that is 900 km/h: not more than the limit.
        let a = GeoPoint {
            lat: 0.0,
            lon: 0.0,
            accuracy_km: 50.0,
        };
        let d = crate::geo::distance_km(
            &a,
            &GeoPoint {
                lat: 0.0,
                lon: 1.0,
                accuracy_km: 0.0,
            },
        );
        let lon = 1000.0 / d;
        let b = GeoPoint {
            lat: 0.0,
            lon,
            accuracy_km: 50.0,
        };
        let mut v = VelocityState::default();
        v.add(s(0, a), &LIM);
        assert!(v.add(s(3_600_000, b), &LIM).is_none());
        let mut v = VelocityState::default();
        v.add(s(0, a), &LIM);
        assert!(v.add(s(3_590_000, b), &LIM).is_some());
    }

    #[test]
    fn min_time_caps_the_speed_of_near_simultaneous_events() {
        // 600 km in 1 s would be 2.16M km/h, but time counts as 60 s: still impossible.
        let a = GeoPoint {
            lat: 0.0,
            lon: 0.0,
            accuracy_km: 0.0,
        };
        let b = GeoPoint {
            lat: 0.0,
            lon: 5.4,
            accuracy_km: 0.0,
        };
        let mut v = VelocityState::default();
        v.add(s(0, a), &LIM);
        let j = v.add(s(1_000, b), &LIM).unwrap();
        assert!((j.speed_kmh - j.distance_km * 60.0).abs() < 1e-6);
    }

    #[test]
    fn twenty_four_hours_apart_is_not_consecutive_travel() {
        // No trip on Earth beats 900 km/h over 24 h, so test the gap with a slower limit.
        let lim = Limits {
            max_speed_kmh: 100.0,
            ..LIM
        };
        let mut v = VelocityState::default();
        v.add(s(0, LONDON), &lim);
        assert!(v.add(s(86_400_000, CHANGCHUN), &lim).is_none());
        let mut v = VelocityState::default();
        v.add(s(0, LONDON), &lim);
        assert!(v.add(s(86_399_999, CHANGCHUN), &lim).is_some());
    }

    #[test]
    fn a_late_event_is_compared_with_its_neighbours_in_event_time() {
        let mut v = VelocityState::default();
        v.add(s(0, LONDON), &LIM);
        v.add(s(7_200_000, LONDON), &LIM);
        // happened between the two London requests, arrived after them
        let j = v.add(s(7_170_000, CHANGCHUN), &LIM).unwrap();
        assert_eq!((j.from.ts, j.to.ts), (0, 7_170_000));
        // and with no predecessor, the successor is the pair
        let mut v = VelocityState::default();
        v.add(s(7_200_000, LONDON), &LIM);
        let j = v.add(s(7_170_000, CHANGCHUN), &LIM).unwrap();
        assert_eq!(
            (j.from.ts, j.to.ts),
            (7_170_000, 7_200_000),
            "the later request is the London one"
        );
    }

    #[test]
    fn samples_stay_bounded() {
        let mut v = VelocityState::default();
        for i in 0..100 {
            v.add(s(i * 1_000, LONDON), &LIM);
        }
        assert!(v.samples.len() <= MAX_SAMPLES);
    }
}
