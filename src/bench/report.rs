//! Bench figures and how they are printed.

use std::io::Write;
use std::time::Duration;

use serde::Serialize;

/// One measured figure, optionally beside its baseline (the contract's form).
#[derive(Debug, Clone, Serialize)]
pub struct Figure {
    pub name: String,
    pub value: f64,
    pub unit: &'static str,
    pub baseline_name: Option<String>,
    pub baseline_value: Option<f64>,
    /// value / baseline_value.
    pub ratio: Option<f64>,
}

impl Figure {
    pub fn compared(
        name: impl Into<String>,
        value: f64,
        unit: &'static str,
        baseline_name: impl Into<String>,
        baseline_value: f64,
    ) -> Self {
        Figure {
            name: name.into(),
            value: round(value),
            unit,
            baseline_name: Some(baseline_name.into()),
            baseline_value: Some(round(baseline_value)),
            ratio: (baseline_value > 0.0).then(|| round(value / baseline_value)),
        }
    }

    /// A figure that explains others and has no baseline of its own.
    pub fn alone(name: impl Into<String>, value: f64, unit: &'static str) -> Self {
        Figure {
            name: name.into(),
            value: round(value),
            unit,
            baseline_name: None,
            baseline_value: None,
            ratio: None,
        }
    }
}

fn round(x: f64) -> f64 {
    (x * 1000.0).round() / 1000.0
}

/// Latency samples of one run.
#[derive(Debug, Default)]
pub struct Latencies(Vec<Duration>);

impl Latencies {
    pub fn push(&mut self, d: Duration) {
        self.0.push(d);
    }

    pub fn extend(&mut self, other: Latencies) {
        self.0.extend(other.0);
    }

    pub fn len(&self) -> usize {
        self.0.len()
    }

    /// The `q` quantile in milliseconds (nearest rank).
    pub fn quantile_ms(&mut self, q: f64) -> f64 {
        if self.0.is_empty() {
            return 0.0;
        }
        self.0.sort_unstable();
        let rank = ((q * self.0.len() as f64).ceil() as usize).clamp(1, self.0.len());
        self.0[rank - 1].as_secs_f64() * 1000.0
    }
}

pub fn print_json(figures: &[Figure]) -> anyhow::Result<()> {
    let mut out = std::io::stdout().lock();
    serde_json::to_writer_pretty(&mut out, figures)?;
    writeln!(out)?;
    Ok(())
}

pub fn print_table(figures: &[Figure]) -> anyhow::Result<()> {
    let mut out = std::io::stdout().lock();
    let name_width = figures
        .iter()
        .map(|f| f.name.len())
        .max()
        .unwrap_or(4)
        .max(4);
    let base_width = figures
        .iter()
        .filter_map(|f| f.baseline_name.as_ref().map(String::len))
        .max()
        .unwrap_or(8)
        .max(8);
    writeln!(
        out,
        "{:<name_width$}  {:>12}  {:<9}  {:<base_width$}  {:>12}  {:>6}",
        "figure", "value", "unit", "baseline", "baseline", "ratio"
    )?;
    for f in figures {
        writeln!(
            out,
            "{:<name_width$}  {:>12.3}  {:<9}  {:<base_width$}  {:>12}  {:>6}",
            f.name,
            f.value,
            f.unit,
            f.baseline_name.as_deref().unwrap_or("-"),
            f.baseline_value
                .map_or("-".to_string(), |v| format!("{v:.3}")),
            f.ratio.map_or("-".to_string(), |r| format!("{r:.2}")),
        )?;
    }
    Ok(())
}
