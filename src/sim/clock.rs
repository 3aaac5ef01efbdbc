//! Simulated time: starts at a chosen instant (now, or in the past), runs `speed` times
//! faster than real time, and can be paused so a test compares balances at rest.

use std::sync::{Mutex, PoisonError};
use std::time::Instant;

use serde::Serialize;

/// What `GET /_sim/clock` answers.
#[derive(Serialize, Clone, Copy, Debug, PartialEq)]
pub struct ClockState {
    /// Simulated unix seconds.
    pub now: i64,
    pub paused: bool,
    pub speed: f64,
}

struct Anchor {
    /// Simulated seconds at `real`.
    sim: f64,
    real: Instant,
    speed: f64,
    paused: bool,
}

pub struct SimClock {
    anchor: Mutex<Anchor>,
}

impl SimClock {
    pub fn new(start: i64, speed: f64) -> Self {
        SimClock {
            anchor: Mutex::new(Anchor {
                sim: start as f64,
                real: Instant::now(),
                speed: sanitize(speed),
                paused: false,
            }),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Anchor> {
        self.anchor.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Simulated unix seconds, with the fraction (the ticker spreads activity inside a tick).
    pub fn now_f64(&self) -> f64 {
        let a = self.lock();
        current(&a, Instant::now())
    }

    pub fn now(&self) -> i64 {
        self.now_f64().floor() as i64
    }

    pub fn state(&self) -> ClockState {
        let a = self.lock();
        ClockState {
            now: current(&a, Instant::now()).floor() as i64,
            paused: a.paused,
            speed: a.speed,
        }
    }

    /// Stops or restarts simulated time; returns the simulated time at that moment.
    pub fn set_paused(&self, paused: bool) -> f64 {
        let mut a = self.lock();
        let real = Instant::now();
        a.sim = current(&a, real);
        a.real = real;
        a.paused = paused;
        a.sim
    }

    pub fn set_speed(&self, speed: f64) {
        let mut a = self.lock();
        let real = Instant::now();
        a.sim = current(&a, real);
        a.real = real;
        a.speed = sanitize(speed);
    }
}

fn current(a: &Anchor, real: Instant) -> f64 {
    if a.paused {
        a.sim
    } else {
        a.sim + real.duration_since(a.real).as_secs_f64() * a.speed
    }
}

/// A speed users typed: negative or not-a-number would run time backwards or nowhere.
fn sanitize(speed: f64) -> f64 {
    if speed.is_finite() && speed > 0.0 {
        speed
    } else {
        1.0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paused_clock_stands_still_and_resumes_where_it_stopped() {
        let clock = SimClock::new(1_000, 1_000.0);
        let at = clock.set_paused(true);
        std::thread::sleep(std::time::Duration::from_millis(20));
        assert_eq!(clock.now_f64(), at);
        assert!(clock.state().paused);
        clock.set_paused(false);
        std::thread::sleep(std::time::Duration::from_millis(20));
        assert!(clock.now_f64() > at + 10.0, "1000x: 20 ms is 20 s");
    }

    #[test]
    fn bad_speeds_fall_back_to_real_time() {
        assert_eq!(SimClock::new(0, -3.0).state().speed, 1.0);
        assert_eq!(SimClock::new(0, f64::NAN).state().speed, 1.0);
    }
}
