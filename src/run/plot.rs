//! `perplexity.svg`: d2l's Animator curve (perplexity against epoch).
use crate::platform::fsutil;
use crate::run::metrics::EpochMetrics;
use anyhow::{anyhow, Result};
use plotters::prelude::*;
use std::path::Path;

/// Draws train (and validation, where measured) perplexity per epoch.
pub(crate) fn perplexity_svg(metrics: &[EpochMetrics], title: &str, path: &Path) -> Result<()> {
    let mut svg = String::new();
    {
        let root = SVGBackend::with_string(&mut svg, (640, 420)).into_drawing_area();
        root.fill(&WHITE).map_err(plot_err)?;
        let last = metrics.last().map(|m| m.epoch).unwrap_or(1).max(2);
        // Only finite values decide the axis (an infinite one would never finish drawing).
        let ppls = metrics.iter().flat_map(|m| std::iter::once(m.train_ppl).chain(m.val_ppl)).filter(|p| p.is_finite());
        let y_max = ppls.fold(1.0f64, f64::max).min(1e6) * 1.05;
        let mut chart = ChartBuilder::on(&root)
            .caption(fit_title(title), ("sans-serif", 16))
            .margin(12)
            .x_label_area_size(40)
            .y_label_area_size(56)
            // Whole epochs on an integer axis: ticks are never fractions of an epoch.
            .build_cartesian_2d(1i64..last as i64, 0.9f64..y_max.max(1.5))
            .map_err(plot_err)?;
        chart
            .configure_mesh()
            .x_desc("epoch")
            .y_desc("perplexity")
            .x_labels(last.min(10))
            .axis_desc_style(("sans-serif", 15))
            .draw()
            .map_err(plot_err)?;
        let train: Vec<(i64, f64)> = metrics.iter().filter(|m| m.train_ppl.is_finite()).map(|m| (m.epoch as i64, m.train_ppl)).collect();
        chart
            .draw_series(LineSeries::new(train, BLUE.stroke_width(2)))
            .map_err(plot_err)?
            .label("train")
            .legend(|(x, y)| PathElement::new(vec![(x, y), (x + 20, y)], BLUE.stroke_width(2)));
        let val: Vec<(i64, f64)> =
            metrics.iter().filter_map(|m| m.val_ppl.filter(|v| v.is_finite()).map(|v| (m.epoch as i64, v))).collect();
        if !val.is_empty() {
            let orange = RGBColor(230, 120, 20);
            chart
                .draw_series(LineSeries::new(val.clone(), orange.stroke_width(2)))
                .map_err(plot_err)?
                .label("validation")
                .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 20, y)], orange.stroke_width(2)));
            chart.draw_series(val.iter().map(|&p| Circle::new(p, 3, orange.filled()))).map_err(plot_err)?;
        }
        chart
            .configure_series_labels()
            .border_style(BLACK)
            .background_style(WHITE.mix(0.8))
            .position(SeriesLabelPosition::UpperRight)
            .draw()
            .map_err(plot_err)?;
        root.present().map_err(plot_err)?;
    }
    fsutil::write_atomic(path, svg.as_bytes())
}

/// Longest title that fits the 640-pixel width at 16 px (about 8 px a character).
const MAX_TITLE_CHARS: usize = 72;

/// The title, cut with an ellipsis where it would not fit.
fn fit_title(title: &str) -> String {
    if title.chars().count() <= MAX_TITLE_CHARS {
        return title.to_string();
    }
    title.chars().take(MAX_TITLE_CHARS - 1).collect::<String>() + "…"
}

fn plot_err<E: std::fmt::Debug>(e: E) -> anyhow::Error {
    anyhow!("cannot draw the perplexity plot: {e:?}")
}
