//! The kinds a rule may have, in one table: each kind's name, its parameters and how to read
//! them. The loader knows kinds only through [`KINDS`]: adding a kind is one entry here, a
//! [`Kind`] variant, and its step in `engine/` (one file).

use marked_yaml::types::MarkedMappingNode;

use super::load::{line_of_map, line_of_scalar, Cx};
use super::Kind;

/// One kind as rule files write it.
pub(super) struct KindSpec {
    /// `kind: NAME`.
    pub name: &'static str,
    /// The keys of the kind's parameters, beside the keys every rule has.
    pub params: &'static [&'static str],
    /// Reads the parameters, reporting each problem at its line; `None` (or a placeholder,
    /// when problems were reported) if they do not make a kind.
    pub build: fn(&mut Cx<'_>, &MarkedMappingNode) -> Option<Kind>,
    /// Whether a compiled kind is this one.
    pub is: fn(&Kind) -> bool,
}

/// Every kind, in the order messages list them.
pub(super) const KINDS: &[KindSpec] = &[
    KindSpec {
        name: "match",
        params: &[],
        build: |_, _| Some(Kind::Match),
        is: |k| matches!(k, Kind::Match),
    },
    KindSpec {
        name: "count",
        params: &["threshold", "window"],
        build: count,
        is: |k| matches!(k, Kind::Count { .. }),
    },
    KindSpec {
        name: "distinct_count",
        params: &["distinct", "threshold", "window"],
        build: distinct_count,
        is: |k| matches!(k, Kind::DistinctCount { .. }),
    },
    KindSpec {
        name: "geo_velocity",
        params: &["max_gap", "min_distance_km", "max_speed_kmh", "min_time"],
        build: geo_velocity,
        is: |k| matches!(k, Kind::GeoVelocity { .. }),
    },
    KindSpec {
        name: "revoked_use",
        params: &[],
        build: |_, _| Some(Kind::RevokedUse),
        is: |k| matches!(k, Kind::RevokedUse),
    },
];

/// The table entry of a compiled kind.
pub(super) fn spec_of(kind: &Kind) -> &'static KindSpec {
    KINDS
        .iter()
        .find(|s| (s.is)(kind))
        .expect("every Kind variant has an entry in KINDS (tested)")
}

fn count(cx: &mut Cx<'_>, m: &MarkedMappingNode) -> Option<Kind> {
    let threshold = cx.threshold(m);
    let window = cx.duration(m, "window", true, false);
    Some(Kind::Count {
        threshold: threshold.unwrap_or(1),
        window_ms: window.unwrap_or(0),
    })
}

fn distinct_count(cx: &mut Cx<'_>, m: &MarkedMappingNode) -> Option<Kind> {
    let field = cx.scalar(m, "distinct", true).and_then(|s| cx.field(s));
    let threshold = cx.threshold(m);
    let window = cx.duration(m, "window", true, false);
    field.map(|field| Kind::DistinctCount {
        field,
        threshold: threshold.unwrap_or(1),
        window_ms: window.unwrap_or(0),
    })
}

fn geo_velocity(cx: &mut Cx<'_>, m: &MarkedMappingNode) -> Option<Kind> {
    let max_gap = cx.duration(m, "max_gap", true, false);
    let min_distance = cx.number(m, "min_distance_km", 0.0);
    let max_speed = cx.number(m, "max_speed_kmh", 0.0);
    let min_time = cx.duration(m, "min_time", false, true).unwrap_or(60_000);
    match (max_gap, min_distance, max_speed) {
        (Some(g), Some(d), Some(s)) if s > 0.0 => Some(Kind::GeoVelocity {
            max_gap_ms: g,
            min_distance_km: d,
            max_speed_kmh: s,
            min_time_ms: min_time.max(1),
        }),
        (_, _, Some(s)) if s <= 0.0 => {
            let l = cx
                .scalar(m, "max_speed_kmh", false)
                .map_or_else(|| line_of_map(m), line_of_scalar);
            cx.err(l, "`max_speed_kmh` must be greater than 0".into());
            None
        }
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    use super::*;

    #[test]
    fn every_kind_loads_and_is_named_by_its_entry() {
        let params = |name: &str| match name {
            "count" => "threshold: 2\nwindow: 1m\n",
            "distinct_count" => "distinct: network\nthreshold: 2\nwindow: 1m\n",
            "geo_velocity" => "max_gap: 1h\nmin_distance_km: 100\nmax_speed_kmh: 900\n",
            _ => "",
        };
        for spec in KINDS {
            let yaml = format!(
                "id: r\nseverity: low\naction: alert\nkey: token_id\nkind: {}\n{}",
                spec.name,
                params(spec.name)
            );
            let rules = super::super::load_str(Path::new("r.yaml"), &yaml).unwrap();
            assert_eq!(rules[0].kind.name(), spec.name);
            assert!((spec.is)(&rules[0].kind));
        }
    }
}
