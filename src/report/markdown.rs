//! The report as Markdown, for a ticket, a wiki page or a diff in review: the same sections
//! as the HTML page, charts drawn with Unicode block characters. Text from the logs is escaped
//! so that it can neither break a table nor become markup when the Markdown is rendered.

use std::fmt::Write as _;

use super::{fmt_age, fmt_when, Chart, Report, Section};

/// `s` with Markdown's and HTML's active characters escaped, on one line.
pub fn esc(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '&' => out.push_str("&amp;"),
            '\\' | '|' | '`' | '*' | '_' | '[' | ']' | '#' | '~' => {
                out.push('\\');
                out.push(c);
            }
            '\n' | '\r' => out.push(' '),
            c => out.push(c),
        }
    }
    out
}

/// The whole document.
pub fn render(r: &Report) -> String {
    let mut out = format!("# {}\n\n", esc(&r.title()));
    for s in r.sections() {
        section(&mut out, &s);
    }
    out
}

fn section(out: &mut String, s: &Section) {
    let _ = write!(out, "## {}\n\n", esc(s.title));
    for l in &s.lead {
        let _ = write!(out, "{}\n\n", esc(l));
    }
    match &s.chart {
        Some(Chart::Bars(items)) => bars(out, items),
        Some(Chart::Timeline {
            start_ms,
            width_ms,
            rows,
        }) => {
            let _ = writeln!(
                out,
                "From {}, one character per {}; each row scaled to its own peak.\n",
                fmt_when(*start_ms),
                fmt_age(*width_ms)
            );
            let sparks: Vec<Vec<String>> = rows
                .iter()
                .map(|(rule, series)| {
                    let peak = series.iter().copied().max().unwrap_or(0);
                    vec![rule.clone(), format!("`{}`", spark(series)), peak.to_string()]
                })
                .collect();
            table_rows(out, &["rule", "decisions over time", "peak"], &sparks, 1);
        }
        None => {}
    }
    if let Some(t) = &s.table {
        table_rows(out, &t.head, &t.rows, usize::MAX);
    }
}

/// Bars of `█` scaled to 30 characters for the largest item.
fn bars(out: &mut String, items: &[(String, u64)]) {
    let max = items.iter().map(|(_, n)| *n).max().unwrap_or(0).max(1);
    let width = items.iter().map(|(l, _)| l.chars().count()).max().unwrap_or(0).min(30);
    out.push_str("```text\n");
    for (label, n) in items {
        let label: String = label
            .chars()
            .filter(|c| !c.is_control() && *c != '`')
            .take(30)
            .collect();
        let len = (*n * 30).div_ceil(max) as usize;
        let _ = writeln!(out, "{label:<width$} {} {n}", "█".repeat(len));
    }
    out.push_str("```\n\n");
}

/// One block character per bucket, from `▁` (one decision) to `█` (the peak); `·` for none.
fn spark(series: &[u64]) -> String {
    const LEVELS: [char; 8] = ['▁', '▂', '▃', '▄', '▅', '▆', '▇', '█'];
    let peak = series.iter().copied().max().unwrap_or(0).max(1);
    series
        .iter()
        .map(|n| match n {
            0 => '·',
            n => LEVELS[((n * 8).div_ceil(peak) as usize).clamp(1, 8) - 1],
        })
        .collect()
}

/// A table; column `raw` is written as is (already Markdown), every other cell escaped.
fn table_rows(out: &mut String, head: &[&str], rows: &[Vec<String>], raw: usize) {
    let _ = writeln!(out, "| {} |", head.join(" | "));
    let _ = writeln!(out, "|{}", "---|".repeat(head.len()));
    for row in rows {
        let cells: Vec<String> = row
            .iter()
            .enumerate()
            .map(|(i, c)| if i == raw { c.clone() } else { esc(c) })
            .collect();
        let _ = writeln!(out, "| {} |", cells.join(" | "));
    }
    out.push('\n');
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn markup_and_table_breakers_are_escaped() {
        assert_eq!(esc("<script>|x*_`\n"), "&lt;script&gt;\\|x\\*\\_\\` ");
        assert_eq!(spark(&[0, 1, 8, 4]), "·▁█▄");
    }
}
