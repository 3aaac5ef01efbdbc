//! The totals-over-time chart: inline SVG drawn by the server from plain data, one
//! panel per currency (amounts of different currencies share no scale), each with its
//! own labelled axes in that currency's decimals. It is readable without colour:
//! every series has its own dash pattern and marker shape and is labelled directly
//! with its currency and latest amount; the SVG has a `<title>` and a `<desc>`, and
//! the page shows the same numbers as a table. Coordinates are floats (they are
//! pixels); every amount printed comes from the integer minor units.

use chrono::{DateTime, Utc};
use maud::{html, Markup};

pub use crate::dashboard::Series;
use crate::money::format_minor;

const WIDTH: f64 = 760.0;
const PANEL_HEIGHT: f64 = 160.0;
const PANEL_GAP: f64 = 24.0;
const LEFT: f64 = 110.0;
const RIGHT: f64 = 170.0;
const TOP: f64 = 26.0;
const BOTTOM: f64 = 40.0;

/// Dash patterns and markers, so that no series depends on colour to be told apart.
const DASHES: [&str; 6] = ["none", "10 5", "3 4", "14 4 3 4", "6 6", "1 5"];
const MARKERS: [Marker; 6] = [
    Marker::Circle,
    Marker::Square,
    Marker::Triangle,
    Marker::Diamond,
    Marker::Cross,
    Marker::Bar,
];
/// Colours help sighted readers but carry no meaning of their own.
const COLOURS: [&str; 6] = [
    "#1b4f9c", "#a13d0a", "#1d6b35", "#6a2c91", "#7a5c00", "#444444",
];

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Marker {
    Circle,
    Square,
    Triangle,
    Diamond,
    Cross,
    Bar,
}

/// The dash pattern series number `index` is drawn with.
pub fn dash_for(index: usize) -> &'static str {
    DASHES[index % DASHES.len()]
}

fn marker(kind: Marker, x: f64, y: f64, colour: &str) -> Markup {
    let r = 4.0;
    match kind {
        Marker::Circle => html! { circle cx=(px(x)) cy=(px(y)) r=(px(r)) fill=(colour) {} },
        Marker::Square => html! {
            rect x=(px(x - r)) y=(px(y - r)) width=(px(2.0 * r)) height=(px(2.0 * r)) fill=(colour) {}
        },
        Marker::Triangle => html! {
            polygon points=(format!("{},{} {},{} {},{}", px(x), px(y - r - 1.0), px(x - r - 1.0), px(y + r), px(x + r + 1.0), px(y + r))) fill=(colour) {}
        },
        Marker::Diamond => html! {
            polygon points=(format!("{},{} {},{} {},{} {},{}", px(x), px(y - r - 1.0), px(x + r + 1.0), px(y), px(x), px(y + r + 1.0), px(x - r - 1.0), px(y))) fill="white" stroke=(colour) stroke-width="2" {}
        },
        Marker::Cross => html! {
            path d=(format!("M{} {}L{} {}M{} {}L{} {}", px(x - r), px(y - r), px(x + r), px(y + r), px(x - r), px(y + r), px(x + r), px(y - r))) stroke=(colour) stroke-width="2" {}
        },
        Marker::Bar => html! {
            rect x=(px(x - 1.5)) y=(px(y - r - 1.0)) width="3" height=(px(2.0 * r + 2.0)) fill=(colour) {}
        },
    }
}

/// A coordinate, rounded for a compact document.
fn px(value: f64) -> String {
    let rounded = (value * 10.0).round() / 10.0;
    if rounded.is_finite() {
        format!("{rounded}")
    } else {
        "0".to_owned()
    }
}

/// Round tick values covering `[min, max]` in minor units, about four steps.
pub fn ticks(min: i64, max: i64) -> Vec<i64> {
    let (min, max) = (i128::from(min), i128::from(max));
    let (low, high) = if min == max {
        (min - 1, max + 1)
    } else {
        (min, max)
    };
    let raw = (high - low) / 4;
    let mut magnitude: i128 = 1;
    while magnitude * 10 <= raw.max(1) {
        magnitude *= 10;
    }
    let step = [1, 2, 5, 10]
        .into_iter()
        .map(|m| m * magnitude)
        .find(|step| *step * 4 >= high - low)
        .unwrap_or(10 * magnitude);
    let first = low.div_euclid(step) * step;
    let mut out = Vec::new();
    let mut tick = first;
    while out.len() < 12 {
        if let Ok(value) = i64::try_from(tick) {
            out.push(value);
        }
        if tick >= high {
            break;
        }
        tick += step;
    }
    out
}

fn date_label(at: &DateTime<Utc>, span_secs: i64) -> String {
    if span_secs < 2 * 86_400 {
        at.format("%m-%d %H:%M").to_string()
    } else {
        at.format("%Y-%m-%d").to_string()
    }
}

/// What the chart shows, in words (the SVG's `<desc>`).
fn description(series: &[&Series]) -> String {
    let mut parts = Vec::new();
    for s in series {
        let (Some(first), Some(last)) = (s.points.first(), s.points.last()) else {
            continue;
        };
        let currency = s.currency.to_uppercase();
        parts.push(format!(
            "{currency}: {} on {} to {} on {}",
            format_minor(first.1, &s.currency),
            first.0.format("%Y-%m-%d %H:%M UTC"),
            format_minor(last.1, &s.currency),
            last.0.format("%Y-%m-%d %H:%M UTC"),
        ));
    }
    format!(
        "Available balance over time, one panel per currency. {}.",
        parts.join("; ")
    )
}

/// The chart: one panel per currency with points, or an empty state saying what to do.
pub fn totals_chart(series: &[Series]) -> Markup {
    let mut drawn: Vec<Series> = series
        .iter()
        .filter(|s| !s.points.is_empty())
        .cloned()
        .collect();
    if drawn.is_empty() {
        return html! {
            p.empty { "No balance history yet. Totals appear here once accounts have been synced and their balances read; start a sync or a refresh, or come back after the refresher's next round." }
        };
    }
    for s in &mut drawn {
        s.points.sort_by_key(|(at, _)| *at);
    }
    let refs: Vec<&Series> = drawn.iter().collect();
    let t_min = drawn
        .iter()
        .filter_map(|s| s.points.first().map(|p| p.0))
        .min()
        .expect("a series with points");
    let t_max = drawn
        .iter()
        .filter_map(|s| s.points.last().map(|p| p.0))
        .max()
        .expect("a series with points");
    let span = (t_max - t_min).num_seconds();
    let plot_w = WIDTH - LEFT - RIGHT;
    let x_of = |at: &DateTime<Utc>| -> f64 {
        if span == 0 {
            LEFT + plot_w / 2.0
        } else {
            LEFT + plot_w * ((*at - t_min).num_seconds() as f64 / span as f64)
        }
    };
    let height = drawn.len() as f64 * (PANEL_HEIGHT + PANEL_GAP);
    let x_ticks: Vec<DateTime<Utc>> = if span == 0 {
        vec![t_min]
    } else {
        (0..=4)
            .map(|i| t_min + chrono::Duration::seconds(span * i / 4))
            .collect()
    };
    html! {
        svg.chart role="img" aria-labelledby="chart-title chart-desc"
            viewBox=(format!("0 0 {} {}", WIDTH, px(height)))
            preserveAspectRatio="xMinYMin meet" {
            title #chart-title { "Available balance per currency over time" }
            desc #chart-desc { (description(&refs)) }
            @for (index, s) in drawn.iter().enumerate() {
                (panel(index, s, index as f64 * (PANEL_HEIGHT + PANEL_GAP), &x_of, &x_ticks, span))
            }
        }
    }
}

fn panel(
    index: usize,
    series: &Series,
    top: f64,
    x_of: &dyn Fn(&DateTime<Utc>) -> f64,
    x_ticks: &[DateTime<Utc>],
    span: i64,
) -> Markup {
    let currency = series.currency.to_uppercase();
    let values: Vec<i64> = series.points.iter().map(|p| p.1).collect();
    let (min, max) = (
        values.iter().copied().min().unwrap_or(0),
        values.iter().copied().max().unwrap_or(0),
    );
    let y_ticks = ticks(min, max);
    let (low, high) = (
        y_ticks.first().copied().unwrap_or(min).min(min),
        y_ticks.last().copied().unwrap_or(max).max(max),
    );
    let plot_top = top + TOP;
    let plot_h = PANEL_HEIGHT - TOP - BOTTOM;
    let y_of = |value: i64| -> f64 {
        let range = (i128::from(high) - i128::from(low)) as f64;
        if range == 0.0 {
            plot_top + plot_h / 2.0
        } else {
            plot_top + plot_h * (1.0 - ((i128::from(value) - i128::from(low)) as f64 / range))
        }
    };
    let colour = COLOURS[index % COLOURS.len()];
    let dash = dash_for(index);
    let kind = MARKERS[index % MARKERS.len()];
    let path: String = series
        .points
        .iter()
        .enumerate()
        .map(|(i, (at, value))| {
            format!(
                "{}{} {}",
                if i == 0 { "M" } else { "L" },
                px(x_of(at)),
                px(y_of(*value))
            )
        })
        .collect();
    let right = WIDTH - RIGHT;
    let bottom = plot_top + plot_h;
    let last = series.points.last().copied();
    html! {
        g.series data-currency=(series.currency) aria-label=(format!("{currency} series")) {
            text.panel-title x=(px(LEFT)) y=(px(top + 14.0)) font-weight="bold" {
                (format!("Available ({currency})"))
            }
            line x1=(px(LEFT)) y1=(px(plot_top)) x2=(px(LEFT)) y2=(px(bottom)) stroke="#333" {}
            line x1=(px(LEFT)) y1=(px(bottom)) x2=(px(right)) y2=(px(bottom)) stroke="#333" {}
            @for tick in &y_ticks {
                line x1=(px(LEFT - 4.0)) y1=(px(y_of(*tick))) x2=(px(right)) y2=(px(y_of(*tick))) stroke="#ddd" {}
                text.y-tick x=(px(LEFT - 8.0)) y=(px(y_of(*tick) + 4.0)) text-anchor="end" font-size="12" {
                    (format_minor(*tick, &series.currency))
                }
            }
            @for at in x_ticks {
                line x1=(px(x_of(at))) y1=(px(bottom)) x2=(px(x_of(at))) y2=(px(bottom + 4.0)) stroke="#333" {}
                text.x-tick x=(px(x_of(at))) y=(px(bottom + 17.0)) text-anchor="middle" font-size="12" {
                    (date_label(at, span))
                }
            }
            text.axis-title x=(px(LEFT + (right - LEFT) / 2.0)) y=(px(bottom + 33.0)) text-anchor="middle" font-size="12" {
                "Bucket end (UTC)"
            }
            path.line d=(path) fill="none" stroke=(colour) stroke-width="2.5" stroke-dasharray=(dash) {}
            @for (at, value) in &series.points {
                (marker(kind, x_of(at), y_of(*value), colour))
            }
            @if let Some((at, value)) = last {
                text.direct-label x=(px(x_of(&at) + 10.0)) y=(px(y_of(value) + 4.0)) font-size="13" {
                    (format!("{currency} {}", format_minor(value, &series.currency)))
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::TimeZone;

    fn day(d: u32) -> DateTime<Utc> {
        Utc.with_ymd_and_hms(2026, 11, d, 0, 0, 0)
            .single()
            .expect("a date")
    }

    fn series(currency: &str, values: &[i64]) -> Series {
        Series {
            currency: currency.into(),
            points: values
                .iter()
                .enumerate()
                .map(|(i, v)| (day(1 + i as u32), *v))
                .collect(),
        }
    }

    #[test]
    fn one_group_per_currency_each_with_its_own_dash_and_direct_label() {
        let svg = totals_chart(&[
            series("usd", &[1000, 2500, -300]),
            series("jpy", &[5, 7, 9]),
            series("kwd", &[1234, 1234, 1300]),
        ])
        .into_string();
        assert_eq!(svg.matches("<g class=\"series\"").count(), 3, "{svg}");
        for (i, c) in ["usd", "jpy", "kwd"].iter().enumerate() {
            assert!(svg.contains(&format!("data-currency=\"{c}\"")));
            assert!(svg.contains(&format!("stroke-dasharray=\"{}\"", dash_for(i))));
        }
        let dashes: std::collections::HashSet<_> = (0..3).map(dash_for).collect();
        assert_eq!(dashes.len(), 3, "distinct dash patterns");
        // Direct labels with the latest amount in the currency's own decimals.
        assert!(svg.contains("USD -3.00"), "{svg}");
        assert!(svg.contains("JPY 9<"), "{svg}");
        assert!(svg.contains("KWD 1.300"), "{svg}");
        // Axes are labelled.
        assert!(svg.contains("Available (USD)") && svg.contains("Bucket end (UTC)"));
        assert!(svg.contains("2026-11-01") && svg.contains("2026-11-03"));
        assert!(svg.contains("<title id=\"chart-title\">"));
        assert!(svg.contains("<desc id=\"chart-desc\">"));
        assert!(svg.contains("USD: 10.00 on 2026-11-01 00:00 UTC to -3.00 on 2026-11-03"));
        assert!(!svg.contains("NaN") && !svg.contains("inf"));
    }

    #[test]
    fn no_points_is_an_empty_state_that_says_what_to_do() {
        let markup = totals_chart(&[Series {
            currency: "usd".into(),
            points: vec![],
        }])
        .into_string();
        assert!(!markup.contains("<svg"));
        assert!(markup.contains("start a sync or a refresh"));
        assert_eq!(totals_chart(&[]).into_string(), markup);
    }

    #[test]
    fn a_single_point_and_extreme_amounts_draw_without_nan() {
        let svg = totals_chart(&[series("usd", &[42]), series("eur", &[i64::MIN, i64::MAX])])
            .into_string();
        assert!(!svg.contains("NaN") && !svg.contains("inf"), "{svg}");
        assert!(svg.contains("USD 0.42"));
        assert!(svg.contains("EUR 92233720368547758.07"));
    }

    #[test]
    fn ticks_are_round_and_cover_the_range() {
        assert_eq!(ticks(0, 1000), vec![0, 500, 1000]);
        assert_eq!(ticks(-10_265, -342), vec![-15_000, -10_000, -5_000, 0]);
        let t = ticks(-317, 2_049);
        assert!(t[0] <= -317 && *t.last().expect("ticks") >= 2_049, "{t:?}");
        assert!(t.len() <= 12);
        let flat = ticks(500, 500);
        assert!(flat[0] <= 500 && *flat.last().expect("ticks") >= 500);
        let wide = ticks(i64::MIN, i64::MAX);
        assert!(!wide.is_empty() && wide.len() <= 12);
    }

    #[test]
    fn points_out_of_order_are_drawn_in_time_order() {
        let mut s = series("usd", &[1, 2, 3]);
        s.points.reverse();
        let svg = totals_chart(&[s]).into_string();
        assert!(svg.contains("USD 0.03"), "the latest is labelled: {svg}");
    }
}
