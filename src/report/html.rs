//! The report as one self-contained HTML page: inline CSS, charts as inline SVG, no script and
//! no reference to anything outside the file, so it opens offline and from a mail attachment.
//! Every text goes through [`esc`]: paths and ids come from attacker-controlled requests.

use std::fmt::Write as _;

use tokenwatch_core::posture::stats::TIME_BUCKETS;

use super::{fmt_age, fmt_when, Chart, Report, Section, Table};

const CSS: &str = "
body{font:14px/1.45 system-ui,-apple-system,'Segoe UI',sans-serif;color:#1d2433;background:#f4f6fa;margin:0}
main{max-width:1180px;margin:0 auto;padding:24px}
h1{font-size:24px;margin:0 0 4px}h2{font-size:17px;margin:0 0 8px;color:#23395d}
header p{color:#5a6478;margin:0 0 16px}
.grid{display:grid;grid-template-columns:repeat(auto-fit,minmax(540px,1fr));gap:16px}
section{background:#fff;border:1px solid #dde3ee;border-radius:8px;padding:16px;overflow-x:auto}
section.wide{grid-column:1/-1}
p.lead{margin:0 0 8px;color:#3b4458}
table{border-collapse:collapse;width:100%;font-size:13px}
th{text-align:left;background:#eef2f8;color:#23395d;white-space:nowrap}
th,td{padding:4px 8px;border-bottom:1px solid #e6eaf2;vertical-align:top;word-break:break-word}
td.n,td.t{white-space:nowrap}td.n{text-align:right;font-variant-numeric:tabular-nums;white-space:nowrap}
[class^=sev-]{white-space:nowrap}
.sev-critical{color:#fff;background:#b3261e;border-radius:4px;padding:0 6px}
.sev-high{color:#fff;background:#d9730d;border-radius:4px;padding:0 6px}
.sev-medium{background:#f5d76e;border-radius:4px;padding:0 6px}
.sev-low{background:#d6e4f0;border-radius:4px;padding:0 6px}
svg text{font:12px system-ui,sans-serif;fill:#3b4458}
svg .bar{fill:#3d6bb3}svg .tick{fill:#c3ccdb}svg .hit{fill:#c0392b}
";

/// The columns of counts, aligned right.
const NUMERIC: [&str; 7] = [
    "decisions",
    "risk",
    "tokens",
    "requests",
    "revocations",
    "shadow (not acted on)",
    "share",
];

/// The columns of times and rule ids, kept on one line.
const TIMES: [&str; 5] = ["rule", "first", "last", "first seen", "last seen"];

/// HTML-escapes `s` for text and attribute values.
pub fn esc(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            c => out.push(c),
        }
    }
    out
}

/// The whole page.
pub fn render(r: &Report) -> String {
    let title = esc(&r.title());
    let mut out = format!(
        "<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">\
         <meta name=\"viewport\" content=\"width=device-width, initial-scale=1\">\
         <title>{title}</title><style>{CSS}</style></head><body><main>\n\
         <header><h1>{title}</h1><p>tokenwatch report: what the access logs say about token hygiene and the attacks tokenwatch detected.</p></header>\n<div class=\"grid\">\n"
    );
    for s in r.sections() {
        section(&mut out, &s);
    }
    out.push_str("</div></main></body></html>\n");
    out
}

fn section(out: &mut String, s: &Section) {
    let class = if s.wide { " class=\"wide\"" } else { "" };
    let _ = writeln!(out, "<section{class}><h2>{}</h2>", esc(s.title));
    for l in &s.lead {
        let _ = writeln!(out, "<p class=\"lead\">{}</p>", esc(l));
    }
    match &s.chart {
        Some(Chart::Bars(items)) => bars(out, items),
        Some(Chart::Timeline {
            start_ms,
            width_ms,
            rows,
        }) => timeline(out, *start_ms, *width_ms, rows),
        None => {}
    }
    if let Some(t) = &s.table {
        table(out, t);
    }
    out.push_str("</section>\n");
}

fn table(out: &mut String, t: &Table) {
    out.push_str("<table><thead><tr>");
    for h in &t.head {
        let _ = write!(out, "<th>{}</th>", esc(h));
    }
    out.push_str("</tr></thead><tbody>\n");
    for row in &t.rows {
        out.push_str("<tr>");
        for (h, cell) in t.head.iter().zip(row) {
            if *h == "severity" {
                let _ = write!(out, "<td><span class=\"sev-{0}\">{0}</span></td>", esc(cell));
            } else if NUMERIC.contains(h) {
                let _ = write!(out, "<td class=\"n\">{}</td>", esc(cell));
            } else if TIMES.contains(h) {
                let _ = write!(out, "<td class=\"t\">{}</td>", esc(cell));
            } else {
                let _ = write!(out, "<td>{}</td>", esc(cell));
            }
        }
        out.push_str("</tr>\n");
    }
    out.push_str("</tbody></table>\n");
}

/// Horizontal bars, one per item, scaled to the largest.
fn bars(out: &mut String, items: &[(String, u64)]) {
    let (label_w, bar_w, row_h) = (170u64, 330u64, 22usize);
    let max = items.iter().map(|(_, n)| *n).max().unwrap_or(0).max(1);
    let h = row_h * items.len() + 4;
    let _ = write!(
        out,
        "<svg role=\"img\" viewBox=\"0 0 {w} {h}\" width=\"{w}\" height=\"{h}\">",
        w = label_w + bar_w + 60
    );
    for (i, (label, n)) in items.iter().enumerate() {
        let y = i * row_h;
        let len = *n * bar_w / max;
        let label: String = label.chars().take(26).collect();
        let _ = write!(
            out,
            "<text x=\"{tx}\" y=\"{ty}\" text-anchor=\"end\">{}</text>\
             <rect class=\"bar\" x=\"{label_w}\" y=\"{ry}\" width=\"{len}\" height=\"{rh}\"/>\
             <text x=\"{nx}\" y=\"{ty}\">{n}</text>",
            esc(&label),
            tx = label_w - 6,
            ty = y + 15,
            ry = y + 3,
            rh = row_h - 6,
            nx = label_w + len + 6,
        );
    }
    out.push_str("</svg>\n");
}

/// One row of columns per rule over the common time axis (small multiples: each row scaled to
/// its own peak, which the row's label states).
fn timeline(out: &mut String, start_ms: i64, width_ms: i64, rows: &[(String, [u64; TIME_BUCKETS])]) {
    let (label_w, col_w, row_h) = (220, 17, 34);
    let w = label_w + col_w * TIME_BUCKETS + 70;
    let h = row_h * rows.len() + 24;
    let _ = write!(
        out,
        "<svg role=\"img\" viewBox=\"0 0 {w} {h}\" width=\"{w}\" height=\"{h}\">"
    );
    for (i, (rule, series)) in rows.iter().enumerate() {
        let y0 = i * row_h;
        let peak = series.iter().copied().max().unwrap_or(0).max(1);
        let rule: String = rule.chars().take(30).collect();
        let _ = write!(
            out,
            "<text x=\"{}\" y=\"{}\" text-anchor=\"end\">{}</text>",
            label_w - 8,
            y0 + 22,
            esc(&rule)
        );
        for (b, n) in series.iter().enumerate() {
            let x = label_w + b * col_w;
            let bh = if *n == 0 { 2 } else { 4 + (*n * 22 / peak) as usize };
            let class = if *n == 0 { "tick" } else { "hit" };
            let _ = write!(
                out,
                "<rect class=\"{class}\" x=\"{x}\" y=\"{}\" width=\"{}\" height=\"{bh}\"><title>{n}</title></rect>",
                y0 + 28 - bh,
                col_w - 3
            );
        }
        let _ = write!(
            out,
            "<text x=\"{}\" y=\"{}\">max {peak}</text>",
            label_w + col_w * TIME_BUCKETS + 6,
            y0 + 22
        );
    }
    let end = start_ms + width_ms * TIME_BUCKETS as i64;
    let _ = writeln!(
        out,
        "<text x=\"{label_w}\" y=\"{y}\">{}</text><text x=\"{x}\" y=\"{y}\" text-anchor=\"end\">{} ({} per column)</text></svg>",
        esc(&fmt_when(start_ms)),
        esc(&fmt_when(end)),
        esc(&fmt_age(width_ms)),
        y = h - 6,
        x = label_w + col_w * TIME_BUCKETS,
    );
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn markup_in_text_is_escaped() {
        assert_eq!(
            esc("<script>alert('x')</script>&\""),
            "&lt;script&gt;alert(&#39;x&#39;)&lt;/script&gt;&amp;&quot;"
        );
    }
}
