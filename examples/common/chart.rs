//! An SVG bar chart of wrong counts per digit, one coloured bar per model variant.

use std::path::Path;

use plotters::prelude::*;

/// Writes a grouped bar chart: for each digit 0-9, one bar per `(name, wrong counts)` series.
pub fn wrong_counts_chart(
    path: &Path,
    title: &str,
    series: &[(&str, [usize; 10])],
) -> Result<(), Box<dyn std::error::Error>> {
    let max = series
        .iter()
        .flat_map(|(_, counts)| counts.iter().copied())
        .max()
        .unwrap_or(1)
        .max(1);
    let root = SVGBackend::new(path, (900, 500)).into_drawing_area();
    root.fill(&WHITE)?;
    let mut chart = ChartBuilder::on(&root)
        .caption(title, ("sans-serif", 22))
        .margin(15)
        .x_label_area_size(40)
        .y_label_area_size(50)
        .build_cartesian_2d(-0.5f64..9.5f64, 0f64..(max as f64 * 1.1))?;
    chart
        .configure_mesh()
        .x_labels(10)
        .x_label_formatter(&|x| format!("{}", x.round() as i64))
        .y_label_formatter(&|y| format!("{}", y.round() as i64))
        .x_desc("digit")
        .y_desc("wrong predictions")
        .draw()?;
    let colours = [
        RGBColor(66, 103, 178),
        RGBColor(220, 80, 60),
        RGBColor(90, 170, 90),
        RGBColor(200, 160, 40),
    ];
    let width = 0.8 / series.len().max(1) as f64;
    for (index, (name, counts)) in series.iter().enumerate() {
        let colour = colours[index % colours.len()];
        let offset = -0.4 + index as f64 * width;
        chart
            .draw_series(counts.iter().enumerate().map(|(digit, &count)| {
                let x0 = digit as f64 + offset;
                Rectangle::new(
                    [(x0, 0.0), (x0 + width * 0.95, count as f64)],
                    colour.filled(),
                )
            }))?
            .label(*name)
            .legend(move |(x, y)| Rectangle::new([(x, y - 5), (x + 12, y + 5)], colour.filled()));
    }
    chart
        .configure_series_labels()
        .border_style(BLACK)
        .background_style(WHITE.mix(0.9))
        .draw()?;
    root.present()?;
    Ok(())
}
