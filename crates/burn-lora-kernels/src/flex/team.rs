//! Helper threads that stay awake between the matrix products of a decoding step.
//!
//! Flex splits its work over Rayon's pool, whose idle threads go to sleep a few microseconds
//! after their last job. A decoding step runs a product every 30–100 µs of serial work
//! (normalisation, rotary, attention of one position), so every product found the other thread
//! asleep: on this project's 2-vCPU virtual machine, `rayon::join` of two 20 µs halves after
//! 30 µs of serial work took 95 µs instead of 50 (the wake-up, then the second half after the
//! first), and splitting a small product over two threads made it slower than one thread.
//!
//! The [`Team`]'s helpers spin after a job (yielding the CPU to any other runnable thread) for
//! [`SPIN`] before they park, so that the products of a step find them awake. Each job owns its
//! inputs (`'static`): the helpers never borrow the caller's stack, and the crate needs no
//! `unsafe` for them. A job that panics has its panic carried back to the caller.

use std::any::Any;
use std::panic::{catch_unwind, resume_unwind, AssertUnwindSafe};
use std::sync::atomic::{AtomicBool, AtomicU8, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, OnceLock, PoisonError};
use std::thread::Thread;
use std::time::{Duration, Instant};

/// How long a helper spins for its next job before it parks.
const SPIN: Duration = Duration::from_millis(2);
/// How long a parked helper sleeps before it looks again (a missed wake-up costs at most this).
const PARK: Duration = Duration::from_millis(50);
/// Pause instructions between two yields of a spinning thread.
const PAUSES: usize = 16;

/// A job handed to a helper; it stores its own result.
type Task = Box<dyn FnOnce() + Send>;
/// What a job gave, or the payload of its panic.
type Outcome<R> = Arc<Mutex<Option<std::thread::Result<R>>>>;

const IDLE: u8 = 0;
const READY: u8 = 1;
const DONE: u8 = 2;

/// One helper thread and its mailbox.
struct Helper {
    /// [`IDLE`], [`READY`] (a task waits in `task`) or [`DONE`] (the task has run).
    state: AtomicU8,
    task: Mutex<Option<Task>>,
    /// Whether the thread is parked (or about to park), so that a new task unparks it.
    parked: AtomicBool,
    thread: OnceLock<Thread>,
}

/// The process's helpers, grown on demand; locked by the one caller using them.
pub(crate) struct Team {
    helpers: Mutex<Vec<Arc<Helper>>>,
}

/// The process's team.
pub(crate) fn team() -> &'static Team {
    static TEAM: Team = Team::new();
    &TEAM
}

impl Team {
    /// A team without helpers yet: [`run`](Self::run) starts them as it needs them.
    const fn new() -> Self {
        Self {
            helpers: Mutex::new(Vec::new()),
        }
    }

    /// Runs every job, the first on the calling thread and the others on helpers, and returns
    /// their results in order. When another thread is using the team, or a helper cannot be
    /// started, the jobs without a helper run on the calling thread. A job's panic is resumed
    /// here, after every job has finished.
    pub(crate) fn run<R: Send + 'static>(
        &self,
        mut jobs: Vec<Box<dyn FnOnce() -> R + Send>>,
    ) -> Vec<R> {
        if jobs.is_empty() {
            return Vec::new();
        }
        let own = jobs.remove(0);
        if jobs.is_empty() {
            return vec![own()];
        }
        let mut helpers = match self.helpers.try_lock() {
            Ok(helpers) => helpers,
            Err(std::sync::TryLockError::Poisoned(poisoned)) => poisoned.into_inner(),
            Err(std::sync::TryLockError::WouldBlock) => {
                return std::iter::once(own).chain(jobs).map(|job| job()).collect();
            }
        };
        while helpers.len() < jobs.len() {
            match spawn_helper() {
                Some(helper) => helpers.push(helper),
                None => break,
            }
        }
        let mut outcomes: Vec<Outcome<R>> = Vec::with_capacity(jobs.len());
        let mut serial = Vec::new();
        for (index, job) in jobs.into_iter().enumerate() {
            let Some(helper) = helpers.get(index) else {
                serial.push(job);
                continue;
            };
            let outcome: Outcome<R> = Arc::new(Mutex::new(None));
            let slot = Arc::clone(&outcome);
            helper.hand(Box::new(move || {
                let result = catch_unwind(AssertUnwindSafe(job));
                *lock(&slot) = Some(result);
            }));
            outcomes.push(outcome);
        }
        let first = catch_unwind(AssertUnwindSafe(own));
        let rest: Vec<std::thread::Result<R>> = serial
            .into_iter()
            .map(|job| catch_unwind(AssertUnwindSafe(job)))
            .collect();
        for helper in helpers.iter().take(outcomes.len()) {
            helper.wait();
        }
        drop(helpers);
        let handed = outcomes.into_iter().map(|outcome| {
            lock(&outcome).take().unwrap_or_else(|| {
                Err(Box::new("a helper thread lost its job") as Box<dyn Any + Send>)
            })
        });
        std::iter::once(first)
            .chain(handed)
            .chain(rest)
            .collect::<Vec<_>>()
            .into_iter()
            .map(|result| result.unwrap_or_else(|payload| resume_unwind(payload)))
            .collect()
    }
}

impl Helper {
    /// Gives the helper a task (it is idle: the team's lock is held and its last task waited).
    fn hand(&self, task: Task) {
        *lock(&self.task) = Some(task);
        self.state.store(READY, Ordering::SeqCst);
        if self.parked.load(Ordering::SeqCst) {
            if let Some(thread) = self.thread.get() {
                thread.unpark();
            }
        }
    }

    /// Waits, spinning, until the task handed last has run.
    fn wait(&self) {
        while self.state.load(Ordering::Acquire) != DONE {
            pause();
        }
        self.state.store(IDLE, Ordering::Release);
    }

    /// The helper thread's loop: run a task when one is ready, else spin for [`SPIN`] since
    /// the last one, then park.
    fn serve(&self) {
        let mut last = Instant::now();
        loop {
            if self.state.load(Ordering::Acquire) == READY {
                if let Some(task) = lock(&self.task).take() {
                    task();
                }
                self.state.store(DONE, Ordering::Release);
                last = Instant::now();
            } else if last.elapsed() < SPIN {
                pause();
            } else {
                self.parked.store(true, Ordering::SeqCst);
                if self.state.load(Ordering::SeqCst) != READY {
                    std::thread::park_timeout(PARK);
                }
                self.parked.store(false, Ordering::SeqCst);
                last = Instant::now();
            }
        }
    }
}

/// Starts one helper thread, or `None` when the system refuses one.
fn spawn_helper() -> Option<Arc<Helper>> {
    let helper = Arc::new(Helper {
        state: AtomicU8::new(IDLE),
        task: Mutex::new(None),
        parked: AtomicBool::new(false),
        thread: OnceLock::new(),
    });
    let served = Arc::clone(&helper);
    let handle = std::thread::Builder::new()
        .name("burn-lora-kernels-helper".into())
        .spawn(move || served.serve())
        .ok()?;
    // Set once, before any task is handed: `hand` unparks only a helper it can name.
    let _ = helper.thread.set(handle.thread().clone());
    Some(helper)
}

/// A few pause instructions, then the CPU to any other runnable thread.
fn pause() {
    for _ in 0..PAUSES {
        std::hint::spin_loop();
    }
    std::thread::yield_now();
}

/// A lock that a panic elsewhere does not poison: the values behind these locks are whole
/// after any panic (a task is taken or not; a result stored or not).
fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(PoisonError::into_inner)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_job_runs_once_and_results_keep_their_order() {
        for count in [1, 2, 3, 7] {
            let jobs: Vec<Box<dyn FnOnce() -> usize + Send>> = (0..count)
                .map(|i| Box::new(move || i * i) as Box<dyn FnOnce() -> usize + Send>)
                .collect();
            assert_eq!(
                team().run(jobs),
                (0..count).map(|i| i * i).collect::<Vec<_>>()
            );
        }
        assert!(team().run::<u8>(Vec::new()).is_empty());
    }

    #[test]
    fn the_first_job_runs_here_the_others_on_helpers_also_after_they_parked() {
        let team = Team::new();
        let here = std::thread::current().id();
        let threads = || {
            let jobs: Vec<Box<dyn FnOnce() -> std::thread::ThreadId + Send>> = (0..3)
                .map(|_| Box::new(|| std::thread::current().id()) as Box<dyn FnOnce() -> _ + Send>)
                .collect();
            team.run(jobs)
        };
        for _ in 0..2 {
            let ids = threads();
            assert_eq!(ids[0], here);
            assert!(ids[1] != here && ids[2] != here && ids[1] != ids[2]);
            // Long enough for the helpers to park: the next jobs must wake them.
            std::thread::sleep(SPIN * 3);
        }
    }

    #[test]
    fn a_second_caller_runs_its_jobs_itself_while_the_team_is_busy() {
        let team = Team::new();
        let busy = team.helpers.lock().unwrap();
        let here = std::thread::current().id();
        let jobs: Vec<Box<dyn FnOnce() -> std::thread::ThreadId + Send>> = (0..2)
            .map(|_| Box::new(|| std::thread::current().id()) as Box<dyn FnOnce() -> _ + Send>)
            .collect();
        assert_eq!(team.run(jobs), vec![here, here]);
        drop(busy);
    }

    #[test]
    fn a_panicking_job_panics_the_caller_and_the_team_still_works() {
        let jobs: Vec<Box<dyn FnOnce() -> u32 + Send>> =
            vec![Box::new(|| 1), Box::new(|| panic!("job failed"))];
        let team = Team::new();
        let caught = catch_unwind(AssertUnwindSafe(|| team.run(jobs)));
        assert!(caught.is_err());
        let jobs: Vec<Box<dyn FnOnce() -> u32 + Send>> = vec![Box::new(|| 1), Box::new(|| 2)];
        assert_eq!(team.run(jobs), vec![1, 2]);
    }
}
