//! SVG figures of serving runs: throughput and SLO attainment over time, one line per series
//! (for example one per strategy), with the scaling steps marked.
//!
//! The figure ([`WIDTH`] × [`HEIGHT`] pixels) has the caller's title and two panels that share
//! the time axis (seconds):
//!
//! - top: throughput in tokens/s, one line per series;
//! - bottom: SLO attainment in %, one line per series, and the legend naming the series (at the
//!   lower right, where attainment rarely is). Points whose `slo_attainment` is `None`
//!   are skipped (the line joins the points on either side). When no series has any SLO data the
//!   panel is still drawn, with the same time axis and markers, and a "no SLO set" note in place
//!   of the lines, so figures of runs with and without an SLO have the same layout.
//!
//! Each [`Marker`] (a scaling step) is a dashed vertical line across both panels, labelled at the
//! top of the upper panel. Series keep their colour by index (a fixed palette), so the same
//! strategy at the same index has the same colour in every figure.
//!
//! Values that are not finite (NaN, ±∞) are skipped, point by point; a marker at a non-finite
//! time is not drawn. The time axis runs from 0 (or the earliest time, if negative) to the latest
//! time of the series and markers; each y axis from 0 to a little above its largest value, and at
//! least to 1 tokens/s and to 100 %.
//!
//! Text is written as SVG `<text>` elements, laid out with plotters' built-in size estimate:
//! plotters is built without its `ttf` feature, so no font file or system font library is needed.

use std::ops::Range;
use std::path::{Path, PathBuf};

use emoe_core::metrics::Point;
use plotters::coord::Shift;
use plotters::coord::types::RangedCoordf64;
use plotters::element::DashedPathElement;
use plotters::prelude::*;
use plotters::style::text_anchor::{HPos, Pos, VPos};

/// The figure's width in pixels.
pub const WIDTH: u32 = 900;
/// The figure's height in pixels.
pub const HEIGHT: u32 = 600;

/// One line of a plot: a label (e.g. a strategy name) and its time series.
#[derive(Clone, Copy, Debug)]
pub struct Series<'a> {
    pub label: &'a str,
    pub points: &'a [Point],
}

/// A vertical marker: a scaling step at `t_s` with a label like "dp2tp2ep4 → dp3tp2ep6".
#[derive(Clone, Copy, Debug)]
pub struct Marker<'a> {
    pub t_s: f64,
    pub label: &'a str,
}

/// Why a plot was not made.
#[derive(Debug, thiserror::Error)]
pub enum PlotError {
    /// No series has a point with a finite time and a finite value.
    #[error("nothing to plot: every series is empty")]
    Empty,
    #[error("cannot write plot {path}: {source}")]
    Write {
        path: PathBuf,
        source: std::io::Error,
    },
    /// Plotters refused to draw (not expected with finite values).
    #[error("cannot draw plot: {0}")]
    Draw(String),
}

/// The series colours, by index (Tableau 10), repeating after the tenth.
const PALETTE: [RGBColor; 10] = [
    RGBColor(0x1F, 0x77, 0xB4),
    RGBColor(0xFF, 0x7F, 0x0E),
    RGBColor(0x2C, 0xA0, 0x2C),
    RGBColor(0xD6, 0x27, 0x28),
    RGBColor(0x94, 0x67, 0xBD),
    RGBColor(0x8C, 0x56, 0x4B),
    RGBColor(0xE3, 0x77, 0xC2),
    RGBColor(0x7F, 0x7F, 0x7F),
    RGBColor(0xBC, 0xBD, 0x22),
    RGBColor(0x17, 0xBE, 0xCF),
];

/// The colour of the series at `index`.
fn color_of(index: usize) -> RGBColor {
    PALETTE[index % PALETTE.len()]
}

const MARKER_COLOR: RGBColor = RGBColor(0x55, 0x55, 0x55);
const LIGHT_GRID: RGBColor = RGBColor(0xEE, 0xEE, 0xEE);
const FONT: &str = "sans-serif";

/// Draw the figure (see the module documentation) into an SVG file at `path`.
pub fn write_svg(
    path: &Path,
    title: &str,
    series: &[Series],
    markers: &[Marker],
) -> Result<(), PlotError> {
    let svg = render_svg(title, series, markers)?;
    std::fs::write(path, svg).map_err(|source| PlotError::Write {
        path: path.to_owned(),
        source,
    })
}

/// Draw the figure (see the module documentation) into a string of SVG.
pub fn render_svg(title: &str, series: &[Series], markers: &[Marker]) -> Result<String, PlotError> {
    let figure = Figure::new(series, markers)?;
    let mut svg = String::new();
    {
        let root = SVGBackend::with_string(&mut svg, (WIDTH, HEIGHT)).into_drawing_area();
        figure
            .draw(&root, title)
            .map_err(|e| PlotError::Draw(e.to_string()))?;
    }
    Ok(svg)
}

/// The finite data of a figure, in plot coordinates.
struct Figure<'a> {
    labels: Vec<&'a str>,
    /// Per series, `(t_s, tokens/s)`.
    throughput: Vec<Vec<(f64, f64)>>,
    /// Per series, `(t_s, SLO attainment in %)`.
    slo: Vec<Vec<(f64, f64)>>,
    markers: Vec<Marker<'a>>,
    x: Range<f64>,
    throughput_top: f64,
    slo_top: f64,
}

/// `(t, v)` when both are finite.
fn finite(t: f64, v: f64) -> Option<(f64, f64)> {
    (t.is_finite() && v.is_finite()).then_some((t, v))
}

/// A little above the largest of `values` and `floor`, and finite.
fn top(values: impl Iterator<Item = f64>, floor: f64) -> f64 {
    let max = values.fold(floor, f64::max);
    (max + max / 10.0).min(f64::MAX)
}

impl<'a> Figure<'a> {
    fn new(series: &[Series<'a>], markers: &[Marker<'a>]) -> Result<Self, PlotError> {
        let throughput: Vec<Vec<(f64, f64)>> = series
            .iter()
            .map(|s| {
                s.points
                    .iter()
                    .filter_map(|p| finite(p.t_s, p.tokens_per_s))
                    .collect()
            })
            .collect();
        let slo: Vec<Vec<(f64, f64)>> = series
            .iter()
            .map(|s| {
                s.points
                    .iter()
                    .filter_map(|p| finite(p.t_s, p.slo_attainment? * 100.0))
                    .collect()
            })
            .collect();
        if throughput.iter().chain(&slo).all(Vec::is_empty) {
            return Err(PlotError::Empty);
        }
        let markers: Vec<Marker> = markers
            .iter()
            .filter(|m| m.t_s.is_finite())
            .copied()
            .collect();
        let (lo, hi) = throughput
            .iter()
            .chain(&slo)
            .flatten()
            .map(|&(t, _)| t)
            .chain(markers.iter().map(|m| m.t_s))
            .fold((0.0f64, 0.0f64), |(lo, hi), t| (lo.min(t), hi.max(t)));
        // A span too wide for f64 (−MAX..MAX) or empty still gives a finite, non-empty axis.
        let hi = if hi > lo {
            hi
        } else {
            (lo + 1.0).max(lo.next_up())
        };
        let lo = if (hi - lo).is_finite() {
            lo
        } else {
            hi - f64::MAX
        };
        Ok(Self {
            labels: series.iter().map(|s| s.label).collect(),
            throughput_top: top(throughput.iter().flatten().map(|&(_, v)| v), 1.0),
            slo_top: top(slo.iter().flatten().map(|&(_, v)| v), 100.0),
            throughput,
            slo,
            markers,
            x: lo..hi,
        })
    }

    fn has_slo(&self) -> bool {
        self.slo.iter().any(|s| !s.is_empty())
    }

    fn draw<DB: DrawingBackend>(
        &self,
        root: &DrawingArea<DB, Shift>,
        title: &str,
    ) -> Result<(), DrawingAreaErrorKind<DB::ErrorType>> {
        root.fill(&WHITE)?;
        let body = root.titled(title, (FONT, 22))?;
        let panels = body.split_evenly((2, 1));

        let x_ticks = tick_label(self.x.end - self.x.start);
        let throughput_ticks = tick_label(self.throughput_top);
        let slo_ticks = tick_label(self.slo_top);
        let mid = (self.x.start + self.x.end) / 2.0;

        // Top: throughput and the marker labels.
        let mut chart = ChartBuilder::on(&panels[0])
            .margin(8)
            .margin_right(20)
            .x_label_area_size(28)
            .y_label_area_size(70)
            .build_cartesian_2d(self.x.clone(), 0.0..self.throughput_top)?;
        chart
            .configure_mesh()
            .y_desc("throughput (tokens/s)")
            .axis_desc_style((FONT, 14))
            .x_label_formatter(&x_ticks)
            .y_label_formatter(&throughput_ticks)
            .light_line_style(LIGHT_GRID)
            .draw()?;
        self.draw_markers(&mut chart, self.throughput_top)?;
        for (i, points) in self.throughput.iter().enumerate() {
            chart.draw_series(lines(points, color_of(i)))?;
        }
        let top = self.throughput_top;
        chart.draw_series(self.markers.iter().enumerate().map(|(i, m)| {
            // Labels stay inside the panel: to the right of a marker in the left half, to the
            // left of one in the right half, on three staggered rows.
            let (h, dx) = if m.t_s > mid {
                (HPos::Right, -4)
            } else {
                (HPos::Left, 4)
            };
            let style = TextStyle::from((FONT, 12).into_font())
                .color(&MARKER_COLOR)
                .pos(Pos::new(h, VPos::Top));
            let dy = 4 + 14 * (i % 3) as i32;
            EmptyElement::at((m.t_s, top)) + Text::new(m.label.to_owned(), (dx, dy), style)
        }))?;

        // Bottom: SLO attainment and the legend, at the lower right where attainment rarely is
        // (and clear of the marker labels above).
        let mut chart = ChartBuilder::on(&panels[1])
            .margin(8)
            .margin_right(20)
            .x_label_area_size(40)
            .y_label_area_size(70)
            .build_cartesian_2d(self.x.clone(), 0.0..self.slo_top)?;
        chart
            .configure_mesh()
            .x_desc("time (s)")
            .y_desc("SLO attainment (%)")
            .axis_desc_style((FONT, 14))
            .x_label_formatter(&x_ticks)
            .y_label_formatter(&slo_ticks)
            .light_line_style(LIGHT_GRID)
            .draw()?;
        self.draw_markers(&mut chart, self.slo_top)?;
        for (i, (label, points)) in self.labels.iter().zip(&self.slo).enumerate() {
            let color = color_of(i);
            chart
                .draw_series(lines(points, color))?
                .label(*label)
                .legend(move |(x, y)| {
                    Rectangle::new([(x, y - 4), (x + 16, y + 4)], color.filled())
                });
        }
        if !self.has_slo() {
            let style = TextStyle::from((FONT, 16).into_font())
                .color(&MARKER_COLOR)
                .pos(Pos::new(HPos::Center, VPos::Center));
            chart.draw_series(std::iter::once(Text::new(
                "no SLO set",
                (mid, self.slo_top / 2.0),
                style,
            )))?;
        }
        if !self.labels.is_empty() {
            chart
                .configure_series_labels()
                .position(SeriesLabelPosition::LowerRight)
                .label_font((FONT, 13))
                .background_style(WHITE.mix(0.85))
                .border_style(RGBColor(0xBB, 0xBB, 0xBB))
                .draw()?;
        }
        root.present()
    }

    /// The markers' dashed lines across a panel whose y axis ends at `top`.
    fn draw_markers<DB: DrawingBackend>(
        &self,
        chart: &mut ChartContext<DB, Cartesian2d<RangedCoordf64, RangedCoordf64>>,
        top: f64,
    ) -> Result<(), DrawingAreaErrorKind<DB::ErrorType>> {
        chart.draw_series(self.markers.iter().map(|m| {
            DashedPathElement::new(
                [(m.t_s, 0.0), (m.t_s, top)],
                6,
                4,
                MARKER_COLOR.stroke_width(1),
            )
        }))?;
        Ok(())
    }
}

/// Tick labels for an axis spanning `span`: whole numbers from a span of 10 up, else at most two
/// decimals, trailing zeros dropped.
fn tick_label(span: f64) -> impl Fn(&f64) -> String {
    move |v| {
        if span >= 10.0 {
            format!("{v:.0}")
        } else {
            let s = format!("{v:.2}");
            s.trim_end_matches('0').trim_end_matches('.').to_owned()
        }
    }
}

/// One line through `points`; a lone point is drawn as a dot so that it shows.
fn lines<DB: DrawingBackend>(points: &[(f64, f64)], color: RGBColor) -> LineSeries<DB, (f64, f64)> {
    let dot = if points.len() == 1 { 3 } else { 0 };
    LineSeries::new(points.iter().copied(), color.stroke_width(2)).point_size(dot)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn point(t_s: f64, tokens_per_s: f64, slo: Option<f64>) -> Point {
        Point {
            t_s,
            tokens_per_s,
            requests_per_s: 0.0,
            slo_attainment: slo,
        }
    }

    /// The `<polyline>` elements drawn in `color`.
    fn polylines(svg: &str, color: RGBColor) -> usize {
        let stroke = format!("stroke=\"#{:02X}{:02X}{:02X}\"", color.0, color.1, color.2);
        svg.lines()
            .filter(|l| l.starts_with("<polyline") && l.contains(&stroke))
            .count()
    }

    fn two_runs() -> (Vec<Point>, Vec<Point>) {
        let a = (0..20)
            .map(|i| {
                let t = f64::from(i);
                point(t, 100.0 + t * 5.0, Some(if i == 10 { 0.5 } else { 1.0 }))
            })
            .collect();
        let b = (0..20)
            .map(|i| {
                let t = f64::from(i);
                // A downtime of a stop-the-world step: no tokens, no finished requests.
                let down = (9..12).contains(&i);
                let tok = if down { 0.0 } else { 90.0 + t * 4.0 };
                point(t, tok, (!down).then_some(0.9))
            })
            .collect();
        (a, b)
    }

    #[test]
    fn svg_has_title_labels_captions_and_one_line_per_series_per_panel() {
        let (a, b) = two_runs();
        let series = [
            Series {
                label: "elastic",
                points: &a,
            },
            Series {
                label: "stop & restart",
                points: &b,
            },
        ];
        let markers = [Marker {
            t_s: 9.0,
            label: "dp2tp2ep4 → dp3tp2ep6",
        }];
        let svg = render_svg("Scale-up under load <8 GPUs>", &series, &markers).unwrap();
        assert!(svg.starts_with("<svg"), "{}", &svg[..100]);
        assert!(svg.trim_end().ends_with("</svg>"));
        assert!(svg.contains(&format!("width=\"{WIDTH}\" height=\"{HEIGHT}\"")));
        // Text is escaped for XML.
        assert!(svg.contains("Scale-up under load &lt;8 GPUs&gt;"));
        assert!(svg.contains("elastic"));
        assert!(svg.contains("stop &amp; restart"));
        assert!(svg.contains("dp2tp2ep4 → dp3tp2ep6"));
        for caption in ["throughput (tokens/s)", "SLO attainment (%)", "time (s)"] {
            assert!(svg.contains(caption), "{caption}");
        }
        assert!(!svg.contains("no SLO set"));
        // One line per series in each panel; the legend uses rectangles, not lines.
        assert_eq!(polylines(&svg, color_of(0)), 2);
        assert_eq!(polylines(&svg, color_of(1)), 2);
        // The marker is dashed across both panels: many short segments in its colour.
        assert!(polylines(&svg, MARKER_COLOR) > 4);
    }

    #[test]
    fn colours_follow_the_series_index() {
        let (a, b) = two_runs();
        let one = render_svg(
            "",
            &[Series {
                label: "elastic",
                points: &a,
            }],
            &[],
        )
        .unwrap();
        assert_eq!(polylines(&one, color_of(0)), 2);
        assert_eq!(polylines(&one, color_of(1)), 0);
        let three = [&a, &b, &a].map(|p| Series {
            label: "s",
            points: p,
        });
        let svg = render_svg("", &three, &[]).unwrap();
        for i in 0..3 {
            assert_eq!(polylines(&svg, color_of(i)), 2, "series {i}");
        }
        assert_eq!(color_of(10), color_of(0));
    }

    #[test]
    fn without_slo_data_the_lower_panel_says_so() {
        let pts: Vec<Point> = (0..5).map(|i| point(f64::from(i), 0.0, None)).collect();
        let svg = render_svg(
            "no slo",
            &[Series {
                label: "all zero",
                points: &pts,
            }],
            &[Marker {
                t_s: 2.0,
                label: "step",
            }],
        )
        .unwrap();
        assert!(svg.contains("no SLO set"));
        assert!(svg.contains("SLO attainment (%)"));
        // The throughput line only; an all-zero series still draws.
        assert_eq!(polylines(&svg, color_of(0)), 1);
        assert!(svg.contains("all zero"));
    }

    #[test]
    fn nothing_to_plot() {
        let empty: [Point; 0] = [];
        for series in [
            vec![],
            vec![Series {
                label: "a",
                points: &empty,
            }],
            vec![
                Series {
                    label: "a",
                    points: &empty,
                },
                Series {
                    label: "b",
                    points: &empty,
                },
            ],
        ] {
            let e = render_svg(
                "t",
                &series,
                &[Marker {
                    t_s: 1.0,
                    label: "m",
                }],
            )
            .unwrap_err();
            assert!(matches!(e, PlotError::Empty));
            assert_eq!(e.to_string(), "nothing to plot: every series is empty");
        }
        // Points with nothing finite to draw count as none.
        let nan = [point(f64::NAN, 1.0, Some(1.0)), point(1.0, f64::NAN, None)];
        let e = render_svg(
            "t",
            &[Series {
                label: "a",
                points: &nan,
            }],
            &[],
        )
        .unwrap_err();
        assert!(matches!(e, PlotError::Empty), "{e}");
    }

    #[test]
    fn non_finite_values_are_skipped_without_panic() {
        let pts = [
            point(0.0, 10.0, Some(1.0)),
            point(1.0, f64::NAN, Some(f64::NAN)),
            point(f64::NAN, 5.0, Some(0.5)),
            point(2.0, f64::INFINITY, Some(f64::NEG_INFINITY)),
            point(f64::INFINITY, 1.0, None),
            point(3.0, 20.0, Some(0.75)),
        ];
        let markers = [
            Marker {
                t_s: f64::NAN,
                label: "never drawn",
            },
            Marker {
                t_s: 2.5,
                label: "drawn",
            },
        ];
        let svg = render_svg(
            "nan",
            &[Series {
                label: "a",
                points: &pts,
            }],
            &markers,
        )
        .unwrap();
        assert!(!svg.contains("never drawn"));
        assert!(svg.contains("drawn"));
        assert!(!svg.contains("NaN") && !svg.contains("inf"), "{svg}");
        assert_eq!(polylines(&svg, color_of(0)), 2);

        // Extreme finite values and a single point do not panic either.
        for pts in [
            vec![
                point(-f64::MAX, f64::MAX, Some(f64::MAX)),
                point(f64::MAX, 0.0, Some(0.0)),
            ],
            vec![point(0.0, 0.0, Some(0.0))],
            vec![point(5.0, 1e-300, None), point(5.0, 2e-300, None)],
        ] {
            render_svg(
                "extreme",
                &[Series {
                    label: "x",
                    points: &pts,
                }],
                &[Marker {
                    t_s: f64::MAX,
                    label: "far",
                }],
            )
            .unwrap();
        }
    }

    #[test]
    fn axes_span_series_and_markers() {
        let pts = [point(1.0, 50.0, None), point(2.0, 60.0, None)];
        let f = Figure::new(
            &[Series {
                label: "a",
                points: &pts,
            }],
            &[Marker {
                t_s: 8.0,
                label: "late step",
            }],
        )
        .unwrap();
        assert_eq!(f.x, 0.0..8.0);
        assert!(f.throughput_top > 60.0 && f.throughput_top < 70.0);
        assert_eq!(f.slo_top, 110.0);
        let zero = [point(3.0, 0.0, Some(0.0))];
        let f = Figure::new(
            &[Series {
                label: "a",
                points: &zero,
            }],
            &[],
        )
        .unwrap();
        assert_eq!(f.x, 0.0..3.0);
        assert!(f.throughput_top >= 1.0);
        let neg = [point(-2.0, 1.0, None)];
        let f = Figure::new(
            &[Series {
                label: "a",
                points: &neg,
            }],
            &[],
        )
        .unwrap();
        assert_eq!(f.x, -2.0..0.0);
    }

    #[test]
    fn write_svg_creates_the_file_or_names_the_path() {
        let (a, _) = two_runs();
        let series = [Series {
            label: "elastic",
            points: &a,
        }];
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("run.svg");
        write_svg(&path, "run", &series, &[]).unwrap();
        let svg = std::fs::read_to_string(&path).unwrap();
        assert!(svg.starts_with("<svg") && svg.contains("elastic"));

        let missing = dir.path().join("no/such/dir/run.svg");
        let e = write_svg(&missing, "run", &series, &[]).unwrap_err();
        assert!(matches!(e, PlotError::Write { .. }), "{e}");
        let msg = e.to_string();
        assert!(
            msg.starts_with(&format!("cannot write plot {}: ", missing.display())),
            "{msg}"
        );
        assert!(msg.contains("No such file or directory"), "{msg}");
        assert!(!missing.exists());
    }
}
