//! SVG plots from a run's results: the latency CDF of each target's fanout runs, and deliveries/s
//! against room size. SVG because it needs no fonts or image codecs (text is left to the viewer).

use crate::report::RunResult;
use anyhow::{anyhow, Result};
use plotters::prelude::*;
use std::path::{Path, PathBuf};

const COLORS: [RGBColor; 6] = [
    RGBColor(31, 119, 180),
    RGBColor(214, 39, 40),
    RGBColor(44, 160, 44),
    RGBColor(255, 127, 14),
    RGBColor(148, 103, 189),
    RGBColor(140, 86, 75),
];

fn color(i: usize) -> RGBColor {
    COLORS[i % COLORS.len()]
}

/// "Nines" scale: 0.9 -> 1, 0.99 -> 2, 0.999 -> 3, so the tail gets as much room as the median.
fn nines(q: f64) -> f64 {
    -(1.0 - q).max(1e-5).log10()
}

/// Writes every plot the runs allow into `dir`; returns the files written.
pub(crate) fn write_all(runs: &[RunResult], dir: &Path) -> Result<Vec<PathBuf>> {
    std::fs::create_dir_all(dir)?;
    let mut out = Vec::new();
    // One CDF per scenario and room size, so each plot compares the targets on the same load.
    let mut keys: Vec<(&str, u32)> = runs
        .iter()
        .filter(|r| !r.latency_cdf.is_empty())
        .map(|r| (r.scenario.as_str(), r.params.room_size))
        .collect();
    keys.sort();
    keys.dedup();
    for (scenario, size) in keys {
        let sel: Vec<&RunResult> = runs
            .iter()
            .filter(|r| {
                r.scenario == scenario && r.params.room_size == size && !r.latency_cdf.is_empty()
            })
            .collect();
        let p = dir.join(format!("latency-cdf-{scenario}-{size}.svg"));
        latency_cdf(&sel, scenario, &p)?;
        out.push(p);
    }
    let fan: Vec<&RunResult> = runs.iter().filter(|r| r.scenario == "fanout").collect();
    if !fan.is_empty() {
        let p = dir.join("deliveries-vs-room-size.svg");
        deliveries_vs_size(&fan, &p)?;
        out.push(p);
    }
    Ok(out)
}

fn e<E: std::fmt::Debug>(err: E) -> anyhow::Error {
    anyhow!("plot: {err:?}")
}

/// Legend bottom right: a latency CDF rises to the top left, so that corner is the empty one.
fn latency_cdf(runs: &[&RunResult], scenario: &str, path: &Path) -> Result<()> {
    let root = SVGBackend::new(path, (960, 600)).into_drawing_area();
    root.fill(&WHITE).map_err(e)?;
    let max_ms = runs
        .iter()
        .flat_map(|r| r.latency_cdf.iter().map(|(_, v)| *v as f64 / 1000.0))
        .fold(1.0_f64, f64::max);
    let mut chart = ChartBuilder::on(&root)
        .caption(
            format!("{scenario}: publish-to-receipt latency (CDF)"),
            ("sans-serif", 22),
        )
        .margin(16)
        .x_label_area_size(44)
        .y_label_area_size(70)
        .build_cartesian_2d(0.0..5.0, (0.01..max_ms * 1.5).log_scale())
        .map_err(e)?;
    chart
        .configure_mesh()
        .x_desc("percentile")
        .y_desc("latency (ms, log)")
        .x_labels(6)
        .x_label_formatter(&|x| match *x as i64 {
            0 => "0%".into(),
            1 => "90%".into(),
            2 => "99%".into(),
            3 => "99.9%".into(),
            4 => "99.99%".into(),
            _ => "99.999%".into(),
        })
        .draw()
        .map_err(e)?;
    for (i, r) in runs.iter().enumerate() {
        let c = color(i);
        let pts = r
            .latency_cdf
            .iter()
            .map(|(q, v)| (nines(*q), (*v as f64 / 1000.0).max(0.01)));
        let label = format!(
            "{} ({} x {} @ {}/s)",
            r.target,
            r.params.rooms,
            r.params.room_size,
            r.params
                .rate_per_room
                .map_or_else(|| "max".into(), |v| format!("{v:.0}"))
        );
        chart
            .draw_series(LineSeries::new(pts, c.stroke_width(2)))
            .map_err(e)?
            .label(label)
            .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 20, y)], c.stroke_width(2)));
    }
    chart
        .configure_series_labels()
        .position(SeriesLabelPosition::LowerRight)
        .background_style(WHITE.mix(0.85))
        .border_style(BLACK)
        .draw()
        .map_err(e)?;
    root.present().map_err(e)?;
    Ok(())
}

fn deliveries_vs_size(runs: &[&RunResult], path: &Path) -> Result<()> {
    let root = SVGBackend::new(path, (960, 600)).into_drawing_area();
    root.fill(&WHITE).map_err(e)?;
    let max_size = runs
        .iter()
        .map(|r| r.params.room_size)
        .max()
        .unwrap_or(1)
        .max(2) as f64;
    let min_size = runs
        .iter()
        .map(|r| r.params.room_size)
        .min()
        .unwrap_or(1)
        .max(1) as f64;
    let max_d = runs.iter().map(|r| r.deliveries_per_s).fold(1.0, f64::max);
    let mut chart = ChartBuilder::on(&root)
        .caption(
            "fanout: deliveries per second against room size",
            ("sans-serif", 22),
        )
        .margin(16)
        .x_label_area_size(44)
        .y_label_area_size(80)
        .build_cartesian_2d(
            (min_size / 1.5..max_size * 1.5).log_scale(),
            0.0..max_d * 1.15,
        )
        .map_err(e)?;
    chart
        .configure_mesh()
        .x_desc("members per room (log)")
        .y_desc("deliveries/s")
        .y_label_formatter(&|v| format!("{:.0}k", v / 1000.0))
        .draw()
        .map_err(e)?;
    let mut targets: Vec<&str> = runs.iter().map(|r| r.target.as_str()).collect();
    targets.dedup();
    targets.sort();
    targets.dedup();
    for (i, t) in targets.iter().enumerate() {
        let c = color(i);
        let mut pts: Vec<(f64, f64)> = runs
            .iter()
            .filter(|r| r.target == *t)
            .map(|r| (r.params.room_size as f64, r.deliveries_per_s))
            .collect();
        pts.sort_by(|a, b| a.0.total_cmp(&b.0));
        chart
            .draw_series(LineSeries::new(pts.clone(), c.stroke_width(2)))
            .map_err(e)?
            .label(t.to_string())
            .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 20, y)], c.stroke_width(2)));
        chart
            .draw_series(pts.into_iter().map(|p| Circle::new(p, 4, c.filled())))
            .map_err(e)?;
    }
    chart
        .configure_series_labels()
        .position(SeriesLabelPosition::UpperLeft)
        .background_style(WHITE.mix(0.85))
        .border_style(BLACK)
        .draw()
        .map_err(e)?;
    root.present().map_err(e)?;
    Ok(())
}
