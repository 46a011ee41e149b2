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
