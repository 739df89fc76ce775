//! The retry policy of AFTER deliveries, pure so it can be tested without a clock.

use std::time::Duration;

/// Longest delay a handler may ask for with `Retry-After`.
pub const MAX_RETRY_AFTER: Duration = Duration::from_secs(3600);

/// When to try again, if at all.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum NextStep {
    /// Try again after this delay.
    RetryIn(Duration),
    /// Out of attempts: the delivery is dead.
    Dead,
}

/// Decides what follows failed attempt number `attempt` (from 1).
///
/// The delay is `schedule[attempt - 1]` (the last entry repeats) plus a jitter of up to
/// 20% (`jitter` in [0, 1) picks where), or the handler's `Retry-After` when it gave
/// one, capped at an hour.
pub fn next_step(
    schedule: &[Duration],
    max_attempts: u32,
    attempt: u32,
    retry_after: Option<Duration>,
    jitter: f64,
) -> NextStep {
    if attempt >= max_attempts || schedule.is_empty() {
        return NextStep::Dead;
    }
    if let Some(asked) = retry_after {
        return NextStep::RetryIn(asked.min(MAX_RETRY_AFTER));
    }
    let index = (attempt.max(1) as usize - 1).min(schedule.len() - 1);
    let base = schedule[index];
    NextStep::RetryIn(base + base.mul_f64(0.2 * jitter.clamp(0.0, 1.0)))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn schedule() -> Vec<Duration> {
        [5, 30, 120]
            .iter()
            .map(|s| Duration::from_secs(*s))
            .collect()
    }

    #[test]
    fn delays_follow_the_schedule_and_the_last_repeats() {
        let s = schedule();
        assert_eq!(
            next_step(&s, 10, 1, None, 0.0),
            NextStep::RetryIn(Duration::from_secs(5))
        );
        assert_eq!(
            next_step(&s, 10, 2, None, 0.0),
            NextStep::RetryIn(Duration::from_secs(30))
        );
        assert_eq!(
            next_step(&s, 10, 7, None, 0.0),
            NextStep::RetryIn(Duration::from_secs(120))
        );
    }

    #[test]
    fn jitter_adds_at_most_a_fifth() {
        let s = schedule();
        assert_eq!(
            next_step(&s, 10, 1, None, 0.999_999),
            NextStep::RetryIn(Duration::from_secs(5).mul_f64(1.0 + 0.2 * 0.999_999))
        );
        assert_eq!(
            next_step(&s, 10, 1, None, 7.0),
            NextStep::RetryIn(Duration::from_secs(6))
        );
    }

    #[test]
    fn the_last_attempt_makes_the_delivery_dead() {
        assert_eq!(next_step(&schedule(), 3, 3, None, 0.5), NextStep::Dead);
        assert_eq!(next_step(&schedule(), 1, 1, None, 0.5), NextStep::Dead);
    }

    #[test]
    fn retry_after_is_honoured_but_bounded() {
        let s = schedule();
        assert_eq!(
            next_step(&s, 10, 1, Some(Duration::from_secs(42)), 0.5),
            NextStep::RetryIn(Duration::from_secs(42))
        );
        assert_eq!(
            next_step(&s, 10, 1, Some(Duration::from_secs(999_999)), 0.5),
            NextStep::RetryIn(MAX_RETRY_AFTER)
        );
    }
}
