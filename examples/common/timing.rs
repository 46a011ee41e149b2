//! Wall time per phase, printed as a table at the end of a run.

use std::time::{Duration, Instant};

/// Records how long each named phase took.
#[derive(Default)]
pub struct Phases {
    phases: Vec<(String, Duration)>,
}

impl Phases {
    /// Runs `body` as phase `name` and records its wall time.
    pub fn time<T>(&mut self, name: &str, body: impl FnOnce() -> T) -> T {
        let start = Instant::now();
        let out = body();
        self.phases.push((name.to_string(), start.elapsed()));
        out
    }

    /// The table of phases and the total.
    pub fn report(&self) -> String {
        let mut out = String::from("Wall time per phase:\n");
        for (name, duration) in &self.phases {
            out += &format!("  {name:<34}{:>9.2} s\n", duration.as_secs_f64());
        }
        let total: Duration = self.phases.iter().map(|(_, d)| *d).sum();
        out += &format!("  {:<34}{:>9.2} s", "total", total.as_secs_f64());
        out
    }
}

/// When each training step started, shared by every clone of the model that holds it: the
/// Learner clones the model, and a step's wall time is the gap to the next step's start
/// (forward, backward, optimizer, data loading and metrics alike).
#[derive(Clone, Default)]
pub struct StepClock {
    starts: std::sync::Arc<std::sync::Mutex<Vec<Instant>>>,
}

impl std::fmt::Debug for StepClock {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let steps = self.starts.lock().map_or(0, |starts| starts.len());
        write!(f, "StepClock {{ steps: {steps} }}")
    }
}

impl StepClock {
    /// Records that a step starts now.
    pub fn tick(&self) {
        self.starts.lock().expect("clock").push(Instant::now());
    }

    /// Forgets every recorded step.
    pub fn reset(&self) {
        self.starts.lock().expect("clock").clear();
    }

    /// The median gap between consecutive step starts, in seconds; `None` with fewer than two
    /// steps. A gap that spans an epoch's validation pass is one of many and moves the median
    /// by at most one place.
    pub fn median_step(&self) -> Option<f64> {
        let starts = self.starts.lock().expect("clock");
        let mut gaps: Vec<f64> = starts
            .windows(2)
            .map(|pair| (pair[1] - pair[0]).as_secs_f64())
            .collect();
        if gaps.is_empty() {
            return None;
        }
        gaps.sort_by(f64::total_cmp);
        Some(gaps[gaps.len() / 2])
    }
}
