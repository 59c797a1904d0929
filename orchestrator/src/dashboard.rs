//! `dashboard.html`: one self-contained page (inline CSS and hand-written SVG, no script, no
//! network): the baseline verdict and the failed configurations first, nested vs
//! single-level latency per payload, which layer pays per reflected exit (stacked bars), the
//! repetitions' spread (box plots), L1 traps per reflected exit with VMCS shadowing on and
//! off, latency distributions, exit rate over time, Bochs' instructions per exit, and the
//! history of the runs found under `results/`.

use std::fmt::Write;

use crate::results::{Config, ConfigResult, Summary};

const W: f64 = 760.0;
const H: f64 = 300.0;
const LEFT: f64 = 80.0;
const RIGHT: f64 = 20.0;
const TOP: f64 = 40.0;
const BOTTOM: f64 = 60.0;

const SINGLE: &str = "#4c78a8";
const ON: &str = "#f58518";
const OFF: &str = "#e45756";
const BOCHS: &str = "#54a24b";
/// The layers: L0 (l0's userspace), L1 (L1's KVM_RUN), L2 (L2's KVM_RUN).
const LAYER_COLORS: [&str; 3] = ["#9d755d", "#4c78a8", "#72b7b2"];
const PALETTE: [&str; 8] = ["#4c78a8", "#f58518", "#e45756", "#72b7b2", "#54a24b", "#eeca3b", "#b279a2", "#9d755d"];

/// Escape text for HTML and SVG.
#[must_use]
pub fn esc(s: &str) -> String {
    s.replace('&', "&amp;").replace('<', "&lt;").replace('>', "&gt;").replace('"', "&quot;")
}

fn fmt_tick(v: f64) -> String {
    let a = v.abs();
    if a >= 1e9 {
        format!("{}G", trim(v / 1e9))
    } else if a >= 1e6 {
        format!("{}M", trim(v / 1e6))
    } else if a >= 1e3 {
        format!("{}k", trim(v / 1e3))
    } else {
        trim(v)
    }
}

fn trim(v: f64) -> String {
    let s = format!("{v:.2}");
    s.trim_end_matches('0').trim_end_matches('.').to_owned()
}

/// A y axis: maps values to pixels, linear or log10.
struct Axis {
    lo: f64,
    hi: f64,
    log: bool,
}

impl Axis {
    fn new(values: impl Iterator<Item = f64>, log: bool) -> Self {
        let v: Vec<f64> = values.filter(|x| x.is_finite() && (!log || *x > 0.0)).collect();
        if v.is_empty() {
            return Self { lo: if log { 1.0 } else { 0.0 }, hi: 10.0, log };
        }
        let max = v.iter().copied().fold(f64::MIN, f64::max);
        let min = v.iter().copied().fold(f64::MAX, f64::min);
        if log {
            let lo = 10f64.powf(min.log10().floor());
            let mut hi = 10f64.powf(max.log10().ceil());
            if hi <= lo {
                hi = lo * 10.0;
            }
            Self { lo, hi, log }
        } else {
            let hi = if max <= 0.0 { 1.0 } else { nice(max * 1.1) };
            Self { lo: 0.0, hi, log }
        }
    }

    fn y(&self, v: f64) -> f64 {
        let f = if self.log {
            (v.max(self.lo).log10() - self.lo.log10()) / (self.hi.log10() - self.lo.log10())
        } else {
            (v - self.lo) / (self.hi - self.lo)
        };
        TOP + (H - TOP - BOTTOM) * (1.0 - f.clamp(0.0, 1.0))
    }

    fn ticks(&self) -> Vec<f64> {
        if self.log {
            let mut t = Vec::new();
            let mut x = self.lo;
            while x <= self.hi * 1.0001 {
                t.push(x);
                x *= 10.0;
            }
            t
        } else {
            (0..=4).map(|i| self.lo + (self.hi - self.lo) * f64::from(i) / 4.0).collect()
        }
    }
}

fn nice(x: f64) -> f64 {
    let p = 10f64.powf(x.log10().floor());
    for m in [1.0, 2.0, 2.5, 5.0, 10.0] {
        if m * p >= x {
            return m * p;
        }
    }
    10.0 * p
}

fn frame(s: &mut String, title: &str, axis: &Axis, y_label: &str) {
    let _ = write!(
        s,
        r##"<svg xmlns="http://www.w3.org/2000/svg" viewBox="0 0 {W} {H}" width="{W}" height="{H}" role="img" aria-label="{t}"><rect width="{W}" height="{H}" fill="#fff"/><text x="{x}" y="22" class="title">{t}</text>"##,
        t = esc(title),
        x = LEFT
    );
    for t in axis.ticks() {
        let y = axis.y(t);
        let _ = write!(
            s,
            r##"<line x1="{LEFT}" x2="{x2}" y1="{y:.1}" y2="{y:.1}" stroke="#ddd"/><text x="{tx}" y="{ty:.1}" class="tick" text-anchor="end">{v}</text>"##,
            x2 = W - RIGHT,
            tx = LEFT - 6.0,
            ty = y + 4.0,
            v = fmt_tick(t)
        );
    }
    let _ = write!(
        s,
        r##"<text transform="translate(16,{y}) rotate(-90)" class="axis" text-anchor="middle">{l}</text><line x1="{LEFT}" x2="{LEFT}" y1="{TOP}" y2="{b}" stroke="#444"/><line x1="{LEFT}" x2="{r}" y1="{b}" y2="{b}" stroke="#444"/>"##,
        y = (TOP + H - BOTTOM) / 2.0,
        l = esc(y_label),
        b = H - BOTTOM,
        r = W - RIGHT
    );
}

/// Legend items in rows below the plot; returns the extra height the rows beyond the first need.
fn legend(s: &mut String, items: &[(String, &str)], below: f64) -> f64 {
    let mut x = LEFT + 10.0;
    let mut y = H - 18.0 + below;
    for (name, color) in items {
        let w = 24.0 + 6.5 * name.len() as f64;
        if x + w > W - RIGHT && x > LEFT + 10.0 {
            x = LEFT + 10.0;
            y += 16.0;
        }
        let _ = write!(
            s,
            r#"<rect x="{x}" y="{y}" width="10" height="10" fill="{color}"/><text x="{tx}" y="{ty}" class="tick">{n}</text>"#,
            tx = x + 14.0,
            ty = y + 9.0,
            n = esc(name)
        );
        x += w;
    }
    y - (H - 18.0)
}

/// Close an SVG whose legend needed `extra` height: grow its canvas to fit.
fn close(mut s: String, extra: f64) -> String {
    if extra > 0.0 {
        let h = H + extra;
        s = s.replacen(
            &format!(r#"viewBox="0 0 {W} {H}" width="{W}" height="{H}""#),
            &format!(r#"viewBox="0 0 {W} {h}" width="{W}" height="{h}""#),
            1,
        );
        s = s.replacen(
            &format!(r##"<rect width="{W}" height="{H}" fill="#fff"/>"##),
            &format!(r##"<rect width="{W}" height="{h}" fill="#fff"/>"##),
            1,
        );
    }
    s.push_str("</svg>");
    s
}

/// One bar series: name, colour, one value per category with an optional whisker (lo, hi).
struct Series<'a> {
    name: String,
    color: &'a str,
    values: Vec<Option<f64>>,
    whiskers: Vec<Option<(f64, f64)>>,
}

fn bar_chart(title: &str, y_label: &str, categories: &[String], series: &[Series<'_>], log: bool) -> String {
    let mut axis = Axis::new(
        series.iter().flat_map(|s| {
            s.values.iter().flatten().copied().chain(s.whiskers.iter().flatten().flat_map(|(a, b)| [*a, *b]))
        }),
        log,
    );
    if y_label.starts_with('%') {
        axis.hi = 100.0;
    }
    let mut s = String::new();
    frame(&mut s, title, &axis, y_label);
    let plot_w = W - LEFT - RIGHT;
    let group = plot_w / categories.len().max(1) as f64;
    let bw = (group * 0.8) / series.len().max(1) as f64;
    let base = H - BOTTOM;
    let rotate = categories.len() > 8 && categories.iter().any(|c| c.len() * 7 > group as usize);
    for (ci, cat) in categories.iter().enumerate() {
        let gx = LEFT + group * ci as f64 + group * 0.1;
        for (si, ser) in series.iter().enumerate() {
            let Some(v) = ser.values.get(ci).copied().flatten() else { continue };
            let x = gx + bw * si as f64;
            let y = axis.y(v);
            let _ = write!(
                s,
                r#"<rect x="{x:.1}" y="{y:.1}" width="{w:.1}" height="{h:.1}" fill="{c}"><title>{cat} {n}: {v}</title></rect>"#,
                w = (bw - 2.0).max(1.0),
                h = (base - y).max(0.0),
                c = ser.color,
                cat = esc(cat),
                n = esc(&ser.name),
                v = fmt_tick(v)
            );
            if let Some((lo, hi)) = ser.whiskers.get(ci).copied().flatten() {
                let cx = x + (bw - 2.0) / 2.0;
                let _ = write!(
                    s,
                    r##"<line x1="{cx:.1}" x2="{cx:.1}" y1="{a:.1}" y2="{b:.1}" stroke="#222"/>"##,
                    a = axis.y(lo),
                    b = axis.y(hi)
                );
            }
        }
        if rotate {
            let (x, y) = (gx + group * 0.4, base + 12.0);
            let _ = write!(
                s,
                r#"<text x="{x:.1}" y="{y}" class="tick" text-anchor="end" transform="rotate(-35 {x:.1} {y})">{c}</text>"#,
                c = esc(cat)
            );
        } else {
            let _ = write!(
                s,
                r#"<text x="{x:.1}" y="{y}" class="tick" text-anchor="middle">{c}</text>"#,
                x = gx + group * 0.4,
                y = base + 16.0,
                c = esc(cat)
            );
        }
    }
    // Rotated labels need room: the legend goes below them.
    let below = if rotate { categories.iter().map(|c| c.len()).max().unwrap_or(0) as f64 * 3.6 } else { 0.0 };
    let extra = below + legend(&mut s, &series.iter().map(|x| (x.name.clone(), x.color)).collect::<Vec<_>>(), below);
    close(s, extra)
}

/// Stacked bars: one bar per category, one segment per layer (`layers`: name and colour;
/// `values[c][l]`: category c's value of layer l, `None`: no bar).
fn stacked_chart(
    title: &str,
    y_label: &str,
    categories: &[String],
    layers: &[(&str, &str)],
    values: &[Option<Vec<f64>>],
) -> String {
    let axis = Axis::new(values.iter().flatten().map(|v| v.iter().sum::<f64>()).chain([0.0]), false);
    let mut s = String::new();
    frame(&mut s, title, &axis, y_label);
    let group = (W - LEFT - RIGHT) / categories.len().max(1) as f64;
    let base = H - BOTTOM;
    for (ci, cat) in categories.iter().enumerate() {
        let x = LEFT + group * ci as f64 + group * 0.15;
        let mut acc = 0.0;
        for (li, v) in values.get(ci).cloned().flatten().unwrap_or_default().iter().enumerate() {
            let (y0, y1) = (axis.y(acc), axis.y(acc + v));
            let (name, color) = layers[li % layers.len()];
            let total: f64 = values[ci].as_ref().map_or(0.0, |v| v.iter().sum());
            let _ = write!(
                s,
                r#"<rect x="{x:.1}" y="{y1:.1}" width="{w:.1}" height="{h:.1}" fill="{color}"><title>{c} {n}: {v} ({p:.0}%)</title></rect>"#,
                w = (group * 0.7).max(1.0),
                h = (y0 - y1).max(0.0),
                c = esc(cat),
                n = esc(name),
                v = fmt_tick(*v),
                p = if total > 0.0 { v / total * 100.0 } else { 0.0 }
            );
            acc += v;
        }
        let (lx, ly) = (x + group * 0.35, base + 12.0);
        let _ = write!(
            s,
            r#"<text x="{lx:.1}" y="{ly}" class="tick" text-anchor="end" transform="rotate(-35 {lx:.1} {ly})">{c}</text>"#,
            c = esc(cat)
        );
    }
    let below = categories.iter().map(|c| c.len()).max().unwrap_or(0) as f64 * 3.6;
    let items: Vec<(String, &str)> = layers.iter().map(|(n, c)| ((*n).to_owned(), *c)).collect();
    let extra = below + legend(&mut s, &items, below);
    close(s, extra)
}

/// Box plots, one per category: the box from the first to the third quartile, the median
/// as a line, whiskers to the smallest and largest sample, every sample as a dot.
fn box_chart(title: &str, y_label: &str, boxes: &[(String, &str, Vec<f64>)]) -> String {
    // The axis spans the samples (in steps of 10), not from 0: the spread is the point.
    let all: Vec<f64> = boxes.iter().flat_map(|b| b.2.iter().copied()).filter(|x| x.is_finite()).collect();
    let lo = all.iter().copied().fold(f64::MAX, f64::min);
    let hi = all.iter().copied().fold(f64::MIN, f64::max);
    let axis = if all.is_empty() {
        Axis::new(std::iter::empty(), false)
    } else {
        let lo = ((lo - 5.0) / 10.0).floor() * 10.0;
        Axis { lo: lo.max(0.0), hi: (((hi + 5.0) / 10.0).ceil() * 10.0).max(lo + 20.0), log: false }
    };
    let mut s = String::new();
    frame(&mut s, title, &axis, y_label);
    let group = (W - LEFT - RIGHT) / boxes.len().max(1) as f64;
    let base = H - BOTTOM;
    for (i, (name, color, samples)) in boxes.iter().enumerate() {
        let mut v = samples.clone();
        v.sort_by(f64::total_cmp);
        if v.is_empty() {
            continue;
        }
        let q = |p: f64| crate::results::quantile(&v, p);
        let (x, w) = (LEFT + group * i as f64 + group * 0.2, group * 0.6);
        let cx = x + w / 2.0;
        let _ = write!(
            s,
            r##"<line x1="{cx:.1}" x2="{cx:.1}" y1="{a:.1}" y2="{b:.1}" stroke="#444"/><rect x="{x:.1}" y="{y3:.1}" width="{w:.1}" height="{h:.1}" fill="{color}" fill-opacity="0.5" stroke="{color}"><title>{n}: median {m}, quartiles {q1} to {q3}, {k} samples</title></rect><line x1="{x:.1}" x2="{x2:.1}" y1="{ym:.1}" y2="{ym:.1}" stroke="#222" stroke-width="2"/>"##,
            a = axis.y(v[0]),
            b = axis.y(v[v.len() - 1]),
            y3 = axis.y(q(0.75)),
            h = (axis.y(q(0.25)) - axis.y(q(0.75))).max(1.0),
            x2 = x + w,
            ym = axis.y(q(0.5)),
            n = esc(name),
            m = fmt_tick(q(0.5)),
            q1 = fmt_tick(q(0.25)),
            q3 = fmt_tick(q(0.75)),
            k = v.len()
        );
        for y in &v {
            let _ = write!(s, r##"<circle cx="{cx:.1}" cy="{:.1}" r="1.8" fill="#222"/>"##, axis.y(*y));
        }
        let (lx, ly) = (cx, base + 12.0);
        let _ = write!(
            s,
            r#"<text x="{lx:.1}" y="{ly}" class="tick" text-anchor="end" transform="rotate(-35 {lx:.1} {ly})">{n}</text>"#,
            n = esc(name)
        );
    }
    let below = boxes.iter().map(|b| b.0.len()).max().unwrap_or(0) as f64 * 3.6;
    close(s, below)
}

/// A line series: name, colour, points.
type Line<'a> = (String, &'a str, Vec<(f64, f64)>);

/// A line/point chart: each series is (name, colour, points); `x_labels` names integer x.
fn line_chart(
    title: &str,
    x_label: &str,
    y_label: &str,
    series: &[Line<'_>],
    log: bool,
    x_labels: Option<&[String]>,
) -> String {
    let axis = Axis::new(series.iter().flat_map(|s| s.2.iter().map(|p| p.1)), log);
    let xs: Vec<f64> = series.iter().flat_map(|s| s.2.iter().map(|p| p.0)).collect();
    let (xmin, xmax) =
        (xs.iter().copied().fold(f64::MAX, f64::min).min(0.0), xs.iter().copied().fold(f64::MIN, f64::max).max(1.0));
    let px = |x: f64| LEFT + 10.0 + (W - LEFT - RIGHT - 20.0) * (x - xmin) / (xmax - xmin).max(1e-9);
    let mut s = String::new();
    frame(&mut s, title, &axis, y_label);
    match x_labels {
        Some(labels) => {
            let step = (labels.len() / 8).max(1);
            for (i, l) in labels.iter().enumerate().step_by(step) {
                let _ = write!(
                    s,
                    r#"<text x="{x:.1}" y="{y}" class="tick" text-anchor="middle">{l}</text>"#,
                    x = px(i as f64),
                    y = H - BOTTOM + 16.0,
                    l = esc(l)
                );
            }
        }
        None => {
            for i in 0..=4 {
                let v = xmin + (xmax - xmin) * f64::from(i) / 4.0;
                let _ = write!(
                    s,
                    r#"<text x="{x:.1}" y="{y}" class="tick" text-anchor="middle">{v}</text>"#,
                    x = px(v),
                    y = H - BOTTOM + 16.0,
                    v = fmt_tick(v)
                );
            }
        }
    }
    let _ = write!(
        s,
        r#"<text x="{x}" y="{y}" class="axis" text-anchor="middle">{l}</text>"#,
        x = (LEFT + W - RIGHT) / 2.0,
        y = H - BOTTOM + 32.0,
        l = esc(x_label)
    );
    for (name, color, pts) in series {
        if pts.len() > 1 {
            let d: Vec<String> = pts.iter().map(|(x, y)| format!("{:.1},{:.1}", px(*x), axis.y(*y))).collect();
            let _ =
                write!(s, r#"<polyline points="{}" fill="none" stroke="{color}" stroke-width="1.5"/>"#, d.join(" "));
        }
        for (x, y) in pts {
            let _ = write!(
                s,
                r#"<circle cx="{:.1}" cy="{:.1}" r="3" fill="{color}"><title>{}: {}</title></circle>"#,
                px(*x),
                axis.y(*y),
                esc(name),
                fmt_tick(*y)
            );
        }
    }
    let extra = legend(&mut s, &series.iter().map(|x| (x.0.clone(), x.1)).collect::<Vec<_>>(), 0.0);
    close(s, extra)
}

fn median(r: Option<&ConfigResult>) -> Option<f64> {
    r?.latency.as_ref().map(|l| l.repetitions.p50)
}

fn whisker(r: Option<&ConfigResult>) -> Option<(f64, f64)> {
    r?.latency.as_ref().map(|l| (l.repetitions.min, l.repetitions.max))
}

fn figure(html: &mut String, caption: &str, svg: &str) {
    let _ = write!(html, "<figure>{svg}<figcaption>{}</figcaption></figure>", esc(caption));
}

/// The page. `history` is every run found under results/ (oldest first); this run is added
/// when it is not among them.
#[must_use]
pub fn html(s: &Summary, history: &[Summary], cmp: Option<&crate::compare::Comparison>) -> String {
    let mut h = String::new();
    let _ = write!(
        h,
        r#"<!DOCTYPE html><html lang="en"><head><meta charset="utf-8"><title>nestbench {id}</title><style>
body{{font:14px/1.4 system-ui,sans-serif;margin:16px 24px;color:#222}}
svg{{max-width:100%;height:auto}} .verdict{{font-size:15px;padding:8px 12px;border:1px solid #bbb;background:#f4f4f4}}
.bad{{background:#fde2e1;border-color:#e45756}} .good{{background:#e3f4e1;border-color:#54a24b}} td.failed{{color:#b00;font-weight:bold}}
h1{{font-size:20px}} h2{{font-size:16px;margin-top:28px;border-bottom:1px solid #ddd}}
figure{{display:inline-block;margin:8px;vertical-align:top}} figcaption{{font-size:12px;color:#555;max-width:760px}}
svg .title{{font:bold 14px system-ui,sans-serif}} svg .tick{{font:11px system-ui,sans-serif;fill:#333}} svg .axis{{font:12px system-ui,sans-serif;fill:#333}}
table{{border-collapse:collapse;font-size:13px}} td,th{{border:1px solid #ccc;padding:3px 8px;text-align:right}} th{{background:#f4f4f4}} td:first-child,th:first-child{{text-align:left}}
.partial{{background:#fde2e1;border:1px solid #e45756;padding:8px 12px}} .failures{{background:#fde2e1;border:1px solid #e45756;padding:4px 12px}}
</style></head><body><h1>nestbench {id}</h1>"#,
        id = esc(&s.run_id)
    );
    // The verdict first, then what failed.
    let verdict = crate::report::verdict_line(cmp);
    let class = match cmp.map(crate::compare::Comparison::exit_code) {
        Some(1) => "verdict bad",
        Some(0) => "verdict good",
        _ => "verdict",
    };
    let _ = write!(h, r#"<p class="{class}">{}</p>"#, esc(&verdict).replacen("**", "<b>", 1).replacen("**", "</b>", 1));
    if s.partial {
        let _ = write!(h, r#"<p class="partial"><b>PARTIAL RUN</b>: {}</p>"#, esc(&s.partial_reasons.join("; ")));
    }
    if !s.failures.is_empty() {
        h.push_str(
            r#"<div class="failures"><p><b>Failed configurations</b> (the run finished; these did not):</p><ul>"#,
        );
        for f in &s.failures {
            let _ = write!(h, "<li>{}</li>", esc(f));
        }
        h.push_str("</ul></div>");
    }
    let _ = write!(
        h,
        "<p>{} &middot; {} &middot; kernel {} &middot; TSC {} &middot; profile {} &middot; {}</p>",
        esc(s.host["cpu_model"].as_str().unwrap_or("?")),
        esc(&s.host_class),
        esc(s.host["kernel"].as_str().unwrap_or("?")),
        s.tsc.as_ref().map_or_else(|| "unknown".into(), |t| format!("{} kHz", t.khz)),
        esc(&s.profile.name),
        esc(&s.started_at)
    );

    // Headline table.
    let payloads: Vec<String> = s
        .payloads()
        .into_iter()
        .filter(|p| {
            s.result(&format!("soft/{p}/shadowing-on")).is_some() || s.result(&format!("single_level/{p}")).is_some()
        })
        .map(str::to_owned)
        .collect();
    if !payloads.is_empty() {
        h.push_str("<h2>Nested vs single-level (soft engine)</h2><table><tr><th>payload</th><th>single-level (cycles)</th><th>nested, shadowing on</th><th>ratio</th><th>nested, shadowing off</th><th>ratio</th><th>KVM exits / reflected exit (on / off)</th><th>L1 traps / reflected exit (on / off)</th><th>note</th></tr>");
        for p in &payloads {
            let on = s.result(&format!("soft/{p}/shadowing-on"));
            let off = s.result(&format!("soft/{p}/shadowing-off"));
            let single = s.result(&format!("single_level/{p}"));
            let ratio = |r: Option<&ConfigResult>| {
                r.and_then(|r| r.nested_over_single).map_or("-".into(), |x| format!("{x:.1}x"))
            };
            // A configuration that ran and failed says so (not a silent "-").
            let cell = |r: Option<&ConfigResult>| match r {
                Some(r) if r.latency.is_none() => {
                    format!(r#"<td class="failed" title="{}">FAILED</td>"#, esc(&r.errors.join("; ")))
                }
                _ => format!("<td>{}</td>", crate::report::num(median(r))),
            };
            let kvm = |r| {
                crate::report::per_exit(r)
                    .map_or("-".into(), |x| format!("{:.2}", x.kvm_exits_l1_vm + x.kvm_exits_l2_vm))
            };
            let no_twin =
                l2_payloads::find(p).is_some_and(|m| matches!(m.single_level, l2_payloads::Twin::None { .. }));
            let _ = write!(
                h,
                "<tr><td>{}</td>{}{}<td>{}</td>{}<td>{}</td><td>{} / {}</td><td>{} / {}</td><td>{}</td></tr>",
                esc(p),
                if single.is_none() && no_twin { "<td>no twin</td>".to_owned() } else { cell(single) },
                cell(on),
                ratio(on),
                cell(off),
                ratio(off),
                kvm(on),
                kvm(off),
                crate::report::traps(on),
                crate::report::traps(off),
                crate::report::row_note(on.or(off))
            );
        }
        h.push_str("</table>");

        h.push_str("<h2>Latency</h2>");
        let ser = |name: &str, color, id: &dyn Fn(&str) -> String| Series {
            name: name.into(),
            color,
            values: payloads.iter().map(|p| median(s.result(&id(p)))).collect(),
            whiskers: payloads.iter().map(|p| whisker(s.result(&id(p)))).collect(),
        };
        let svg = bar_chart(
            "Nested vs single-level latency per payload",
            "cycles per iteration (log)",
            &payloads,
            &[
                ser("single-level", SINGLE, &|p| format!("single_level/{p}")),
                ser("nested, shadowing on", ON, &|p| format!("soft/{p}/shadowing-on")),
                ser("nested, shadowing off", OFF, &|p| format!("soft/{p}/shadowing-off")),
            ],
            true,
        );
        figure(
            &mut h,
            "Median over repetitions of each repetition's mean cycles per iteration; whiskers: min and max repetition.",
            &svg,
        );

        // Which layer pays: per reflected exit in steady state, stacked.
        let nested: Vec<&ConfigResult> = s.results.iter().filter(|r| r.config == Config::Nested).collect();
        let layered: Vec<(String, Vec<f64>)> = nested
            .iter()
            .filter_map(|r| {
                let l = crate::report::per_exit(Some(r))?.layers?;
                let on = if r.vmcs_shadowing == Some(false) { "off" } else { "on" };
                Some((format!("{} {on}", r.payload), vec![l.l0_ns, l.l1_ns, l.l2_ns]))
            })
            .collect();
        if !layered.is_empty() {
            h.push_str("<h2>Which layer pays</h2>");
            let cats: Vec<String> = layered.iter().map(|(c, _)| c.clone()).collect();
            let values: Vec<Option<Vec<f64>>> = layered.iter().map(|(_, v)| Some(v.clone())).collect();
            let svg = stacked_chart(
                "Time per reflected L2 exit, by layer (steady state), VMCS shadowing on and off",
                "ns per reflected exit",
                &cats,
                &[
                    ("L0: l0 userspace", LAYER_COLORS[0]),
                    ("L1: L1's KVM_RUN", LAYER_COLORS[1]),
                    ("L2: L2's KVM_RUN", LAYER_COLORS[2]),
                ],
                &values,
            );
            figure(
                &mut h,
                "Per reflected exit: (repetitions' median - the half-size runs' median) / reflected exits between them, so boot \
                 and set-up cancel. L0: l0 between the exit and the next entry, outside KVM_RUN; L1: L1's handler and KVM's \
                 handling of L1's exits; L2: L2's code and KVM's entries and exits of L2's VM. Hover a segment for its share.",
                &svg,
            );
        }

        // The repetitions' spread: each repetition's mean relative to its configuration's median.
        let boxes: Vec<(String, &str, Vec<f64>)> = s
            .results
            .iter()
            .filter(|r| r.config != Config::Bochs)
            .filter_map(|r| {
                let m = r.latency.as_ref()?.repetitions.p50;
                let color = match (r.config, r.vmcs_shadowing) {
                    (Config::SingleLevel, _) => SINGLE,
                    (_, Some(false)) => OFF,
                    _ => ON,
                };
                let name = match (r.config, r.vmcs_shadowing) {
                    (Config::SingleLevel, _) => format!("{} single", r.payload),
                    (_, Some(false)) => format!("{} off", r.payload),
                    _ => format!("{} on", r.payload),
                };
                (m > 0.0).then(|| (name, color, r.repetitions.iter().map(|x| x.mean / m * 100.0).collect()))
            })
            .collect();
        if !boxes.is_empty() {
            h.push_str("<h2>Repetitions</h2>");
            for (k, chunk) in boxes.chunks(24).enumerate() {
                let svg = box_chart(
                    &format!(
                        "Each repetition's mean, % of its configuration's median ({}/{})",
                        k + 1,
                        boxes.len().div_ceil(24)
                    ),
                    "% of the median",
                    chunk,
                );
                figure(
                    &mut h,
                    "Box: first to third quartile of the repetitions, line: median, whiskers: smallest and largest, dots: every \
                     repetition. Blue single-level, orange shadowing on, red shadowing off. compare gates a configuration on \
                     latency only when its kept repetitions spread under 2x.",
                    &svg,
                );
            }
        }

        let traps = |on: bool| Series {
            name: format!("VMCS shadowing {}", if on { "on" } else { "off" }),
            color: if on { ON } else { OFF },
            values: payloads
                .iter()
                .map(|p| {
                    crate::report::per_exit(s.result(&format!("soft/{p}/shadowing-{}", if on { "on" } else { "off" })))
                        .map(|x| x.l1_traps)
                })
                .collect(),
            whiskers: vec![None; payloads.len()],
        };
        let svg = bar_chart(
            "L1 traps per reflected exit",
            "traps to L0 per reflected L2 exit",
            &payloads,
            &[traps(true), traps(false)],
            false,
        );
        figure(
            &mut h,
            "Every L1 trap to L0 (VMREAD/VMWRITE that is not shadowed, VMRESUME, ...) while handling one reflected L2 exit, in steady state: the exit multiplication.",
            &svg,
        );

        h.push_str("<h2>Latency distributions</h2>");
        for p in &payloads {
            let configs: Vec<(String, &str, &ConfigResult)> = [
                ("single-level", SINGLE, format!("single_level/{p}")),
                ("shadowing on", ON, format!("soft/{p}/shadowing-on")),
                ("shadowing off", OFF, format!("soft/{p}/shadowing-off")),
            ]
            .into_iter()
            .filter_map(|(n, c, id)| Some((n.to_owned(), c, s.result(&id)?)))
            .collect();
            let buckets: Vec<u64> = {
                let mut b: Vec<u64> = configs
                    .iter()
                    .filter_map(|(_, _, r)| r.latency.as_ref())
                    .flat_map(|l| l.histogram_log2.iter().map(|x| x[0]))
                    .collect();
                b.sort_unstable();
                b.dedup();
                b
            };
            if buckets.is_empty() {
                continue;
            }
            let (lo, hi) = (buckets[0], buckets[buckets.len() - 1]);
            let cats: Vec<String> = (lo..=hi).map(|b| format!("2^{b}")).collect();
            let series: Vec<Series<'_>> = configs
                .iter()
                .map(|(n, c, r)| {
                    let l = r.latency.as_ref();
                    let total: u64 = l.map_or(0, |l| l.histogram_log2.iter().map(|x| x[1]).sum());
                    Series {
                        name: n.clone(),
                        color: c,
                        values: (lo..=hi)
                            .map(|b| {
                                let c = l?.histogram_log2.iter().find(|x| x[0] == b)?[1];
                                Some(100.0 * c as f64 / total.max(1) as f64)
                            })
                            .collect(),
                        whiskers: vec![None; cats.len()],
                    }
                })
                .collect();
            let svg = bar_chart(&format!("{p}: per-iteration latency"), "% of iterations", &cats, &series, false);
            figure(
                &mut h,
                &format!("{p}: share of iterations per log2 cycle bucket [2^b, 2^(b+1)), all repetitions."),
                &svg,
            );
        }

        // Exit rate over time: each repetition of a nested configuration with exits.
        let mut series = Vec::new();
        for (i, r) in s.results.iter().filter(|r| r.config == Config::Nested).enumerate() {
            let pts: Vec<(f64, f64)> = r
                .repetitions
                .iter()
                .filter_map(|rep| {
                    let wall = rep.wall_ns.filter(|w| *w > 0)?;
                    (rep.exits > 0).then(|| (rep.started_s, rep.exits as f64 / (wall as f64 / 1e9)))
                })
                .collect();
            if !pts.is_empty() {
                series.push((r.id.trim_start_matches("soft/").to_owned(), PALETTE[i % PALETTE.len()], pts));
            }
        }
        if !series.is_empty() {
            h.push_str("<h2>Exit rate over time</h2>");
            let svg = line_chart(
                "L2 exits handled by L1 per second, per repetition",
                "seconds since the bench started",
                "exits per second (log)",
                &series,
                true,
                None,
            );
            figure(
                &mut h,
                "One point per repetition: L2 exits L1 handled / the child's wall time. Per-exit timestamps arrive with the exit-trace ring.",
                &svg,
            );
        }
    }

    let bochs: Vec<&ConfigResult> = s.results.iter().filter(|r| r.config == Config::Bochs).collect();
    if !bochs.is_empty() {
        h.push_str("<h2>Bochs: L1 instructions per exit</h2>");
        let cats: Vec<String> = bochs.iter().map(|r| r.payload.clone()).collect();
        let svg = bar_chart(
            "Instructions per iteration on Bochs (L1 as root hypervisor)",
            "instructions per iteration (log)",
            &cats,
            &[Series {
                name: "Bochs corei7_skylake_x".into(),
                color: BOCHS,
                values: bochs.iter().map(|r| median(Some(r))).collect(),
                whiskers: vec![None; cats.len()],
            }],
            true,
        );
        figure(
            &mut h,
            "Bochs' TSC counts instructions: exit, L1's handler and entry, per iteration. Not a nested cost.",
            &svg,
        );
    }

    // History.
    let mut runs: Vec<&Summary> = history.iter().collect();
    if !runs.iter().any(|r| r.run_id == s.run_id) {
        runs.push(s);
    }
    h.push_str("<h2>History</h2>");
    if runs.len() < 2 {
        h.push_str("<p>Only this run was found under results/runs/; history appears from the second run on.</p>");
    }
    let labels: Vec<String> = runs.iter().map(|r| r.started_at.get(..10).unwrap_or(&r.started_at).to_owned()).collect();
    for (title, fmt) in [("nested, shadowing on", "on"), ("single-level", "single")] {
        let mut series = Vec::new();
        for (i, p) in payloads.iter().enumerate() {
            let id = if fmt == "on" { format!("soft/{p}/shadowing-on") } else { format!("single_level/{p}") };
            let pts: Vec<(f64, f64)> =
                runs.iter().enumerate().filter_map(|(k, r)| Some((k as f64, median(r.result(&id))?))).collect();
            if !pts.is_empty() {
                series.push((p.clone(), PALETTE[i % PALETTE.len()], pts));
            }
        }
        if !series.is_empty() {
            let svg = line_chart(
                &format!("History: {title}, median cycles per iteration"),
                "run",
                "cycles per iteration (log)",
                &series,
                true,
                Some(&labels),
            );
            figure(&mut h, &format!("{} runs found under results/ (oldest first), this one last.", runs.len()), &svg);
        }
    }

    if !s.skipped.is_empty() {
        h.push_str("<h2>Skipped</h2><ul>");
        for k in &s.skipped {
            let _ = write!(
                h,
                "<li>{} {}: {}</li>",
                esc(k.engine.name()),
                esc(k.payload.as_deref().unwrap_or("(engine)")),
                esc(&k.reason)
            );
        }
        h.push_str("</ul>");
    }
    h.push_str("<p style=\"color:#777\">summary.json holds every number; report.md the tables.</p></body></html>\n");
    h
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_dashboard_of_the_fixture_is_self_contained_and_has_its_plots() {
        let s = crate::compare::tests::fixture();
        let page = html(&s, &[s.clone(), s.clone()], None);
        assert!(page.starts_with("<!DOCTYPE html>") && page.trim_end().ends_with("</html>"));
        for needle in [
            "Nested vs single-level latency per payload",
            "L1 traps per reflected exit",
            "per-iteration latency",
            "Exit rate over time",
            "History: nested, shadowing on",
        ] {
            assert!(page.contains(needle), "{needle} missing");
        }
        // No network: nothing is loaded from anywhere (the SVG namespace is a name, not a fetch).
        assert!(!page.contains("<script") && !page.contains("src=") && !page.contains("href="));
        assert_eq!(page.matches("<svg").count(), page.matches("</svg>").count());
        assert!(!page.contains("NaN") && !page.contains(">inf<"), "no broken numbers");
        let mut p = s.clone();
        p.partial = true;
        p.partial_reasons = vec!["x <killed>".into()];
        let page = html(&p, &[], None);
        assert!(page.contains("PARTIAL RUN") && page.contains("x &lt;killed&gt;"));
    }

    #[test]
    fn the_verdict_failures_layers_and_repetitions_are_on_the_page() {
        use crate::results::{Layers, PerLevel, Repetition};
        let mut s = crate::compare::tests::fixture();
        let page = html(&s, &[], None);
        assert!(
            page.contains("<b>Verdict: none.</b>")
                && page.contains("Each repetition's mean, % of its configuration's median")
        );
        assert!(!page.contains("Which layer pays"), "no steady state, no layer chart");
        let c = crate::compare::compare(&s, &s, &[]);
        assert!(html(&s, &[], Some(&c)).contains(r#"<p class="verdict good"><b>Verdict: ok</b>"#));
        // A configuration that failed: listed first and marked in the table.
        let r = s.results.iter_mut().find(|r| r.id == "soft/outl/shadowing-off").unwrap();
        r.latency = None;
        r.errors = vec!["the payload reported status 1".into()];
        s.failures = vec!["soft/outl/shadowing-off: the payload reported status 1".into()];
        let r = s.results.iter_mut().find(|r| r.id == "soft/outl/shadowing-on").unwrap();
        let rep = |n: u64| Repetition {
            iterations: n,
            layers: Some(Layers { l0_ns: 100.0 * n as f64, l1_ns: 300.0 * n as f64, l2_ns: 0.0 }),
            ..r.repetitions[0].clone()
        };
        let counts = |n: u64| PerLevel { reflected_to_l1: Some(n), ..PerLevel::default() };
        r.steady_state = crate::results::steady_state(&[rep(64)], &counts(64), &[(rep(32), counts(32))]);
        let page = html(&s, &[], None);
        assert!(
            page.contains("Failed configurations")
                && page.contains(r#"<td class="failed" title="the payload reported status 1">FAILED</td>"#)
        );
        assert!(
            page.contains("Which layer pays") && page.contains("<title>outl on L1: L1's KVM_RUN: 300 (75%)</title>")
        );
        assert!(page.find("Failed configurations") < page.find("Nested vs single-level"));
    }

    #[test]
    fn axes() {
        let a = Axis::new([300.0, 1_200_000.0].into_iter(), true);
        assert_eq!((a.lo, a.hi), (100.0, 10_000_000.0));
        assert_eq!(a.ticks().len(), 6);
        assert!((a.y(100.0) - (H - BOTTOM)).abs() < 1e-9);
        let l = Axis::new([0.0, 6.0].into_iter(), false);
        assert_eq!(l.hi, 10.0);
        assert_eq!(fmt_tick(1_500_000.0), "1.5M");
    }
}
