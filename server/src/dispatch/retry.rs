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
/// 20% (`jitter` in [0, 1) picks where; values outside are clamped, NaN counts as 0),
/// saturating at `Duration::MAX`, or the handler's `Retry-After` when it gave one,
/// capped at an hour.
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
    // `clamp` keeps NaN, and `mul_f64` panics on it.
    let jitter = if jitter.is_nan() {
        0.0
    } else {
        jitter.clamp(0.0, 1.0)
    };
    NextStep::RetryIn(base.saturating_add(base.mul_f64(0.2 * jitter)))
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

    /// `f64::clamp` keeps NaN, and `Duration::mul_f64(NaN)` panics: a NaN jitter
    /// must add nothing instead. Found by the property below (it shrank to NaN).
    #[test]
    fn a_nan_jitter_adds_nothing() {
        assert_eq!(
            next_step(&schedule(), 10, 1, None, f64::NAN),
            NextStep::RetryIn(Duration::from_secs(5))
        );
    }

    /// Adding the jitter to a step near `Duration::MAX` overflowed (a panic): the
    /// delay saturates instead. Found while writing the property below.
    #[test]
    fn the_longest_step_saturates_instead_of_overflowing() {
        assert_eq!(
            next_step(&[Duration::MAX], 10, 1, None, 0.5),
            NextStep::RetryIn(Duration::MAX)
        );
    }

    /// Properties of the policy over generated schedules, attempts, `Retry-After`
    /// values and jitters (any `f64`, NaN and infinities included).
    mod properties {
        use super::*;
        use proptest::prelude::*;

        /// Steps as the configuration makes them (whole milliseconds), short ones, and
        /// any `Duration` at all, up to `Duration::MAX`.
        fn step() -> impl Strategy<Value = Duration> {
            prop_oneof![
                (0u64..=86_400_000).prop_map(Duration::from_millis),
                any::<u64>().prop_map(Duration::from_millis),
                (any::<u64>(), 0u32..1_000_000_000).prop_map(|(s, n)| Duration::new(s, n)),
                Just(Duration::MAX),
            ]
        }

        fn jitter() -> impl Strategy<Value = f64> {
            prop_oneof![0.0..1.0, any::<f64>(), Just(f64::NAN), Just(1.0)]
        }

        /// The step the documentation names: `schedule[attempt - 1]`, the last entry
        /// for every attempt past the end (attempt 0 counts as the first).
        fn documented_step(schedule: &[Duration], attempt: u32) -> Duration {
            let position = attempt.max(1) as usize;
            *schedule
                .get(position - 1)
                .unwrap_or(&schedule[schedule.len() - 1])
        }

        proptest! {
            #![proptest_config(ProptestConfig::with_cases(2000))]

            /// Dead exactly when the attempts are used up (or there is no schedule),
            /// whatever `Retry-After` says.
            #[test]
            fn dead_exactly_when_attempts_are_exhausted(
                schedule in prop::collection::vec(step(), 0..6),
                max_attempts in 0u32..12,
                attempt in 0u32..16,
                retry_after in prop::option::of(any::<u64>().prop_map(Duration::from_millis)),
                jitter in jitter(),
            ) {
                let step = next_step(&schedule, max_attempts, attempt, retry_after, jitter);
                let exhausted = attempt >= max_attempts || schedule.is_empty();
                prop_assert_eq!(step == NextStep::Dead, exhausted);
            }

            /// Without `Retry-After` the delay is the scheduled step plus at most a
            /// fifth of it (never less than the step), saturating at `Duration::MAX`;
            /// no jitter adds nothing, and more jitter never waits less.
            #[test]
            fn delays_are_the_step_plus_at_most_a_fifth(
                schedule in prop::collection::vec(step(), 1..6),
                attempt in 0u32..16,
                jitter in jitter(),
                other in jitter(),
            ) {
                let base = documented_step(&schedule, attempt);
                let NextStep::RetryIn(delay) = next_step(&schedule, u32::MAX, attempt, None, jitter)
                else {
                    panic!("dead with attempts left");
                };
                prop_assert!(delay >= base, "{delay:?} < {base:?}");
                let extra = (delay - base).as_nanos() as f64;
                let fifth = base.as_nanos() as f64 * 0.2;
                // Float rounding of the jitter multiplication: a relative 1e-9 and 1 ns.
                prop_assert!(extra <= fifth * (1.0 + 1e-9) + 1.0, "{delay:?} for {base:?}");
                prop_assert_eq!(
                    next_step(&schedule, u32::MAX, attempt, None, 0.0),
                    NextStep::RetryIn(base)
                );
                let (low, high) = if jitter <= other { (jitter, other) } else { (other, jitter) };
                if !low.is_nan() && !high.is_nan() {
                    let at = |j| next_step(&schedule, u32::MAX, attempt, None, j);
                    match (at(low), at(high)) {
                        (NextStep::RetryIn(a), NextStep::RetryIn(b)) => prop_assert!(a <= b),
                        other => panic!("dead with attempts left: {other:?}"),
                    }
                }
            }

            /// A `Retry-After` replaces the schedule and the jitter, capped at
            /// [`MAX_RETRY_AFTER`], as long as attempts remain.
            #[test]
            fn retry_after_replaces_the_schedule_up_to_an_hour(
                schedule in prop::collection::vec(step(), 1..6),
                attempt in 0u32..16,
                asked in prop_oneof![
                    (0u64..=7_200).prop_map(Duration::from_secs),
                    any::<u64>().prop_map(Duration::from_millis),
                    Just(Duration::MAX),
                ],
                jitter in jitter(),
            ) {
                prop_assert_eq!(
                    next_step(&schedule, u32::MAX, attempt, Some(asked), jitter),
                    NextStep::RetryIn(asked.min(MAX_RETRY_AFTER))
                );
            }
        }
    }
}
