//! What ordering keys cost: the delivery rate of `--events` AFTER events spread over
//! 1,000 ordering keys, next to the rate of as many unkeyed events on the same server in
//! the same run (the baseline). Keyed events of one key are delivered one at a time, so
//! each key's next event waits for the previous one's log row and promotion.
//!
//! The unkeyed rate is measured before and after the keyed one and the baseline is
//! their mean: each run leaves its rows, dead index entries and autovacuum work to the
//! next, so a later run on the same server is slower whatever it delivers (10–25% for
//! the same unkeyed load measured third), and a baseline taken only first would charge
//! that drift to the ordering keys.

use super::deliver::drain_rate;
use super::{clients_with_after_handler, Ctx};
use crate::report::Metric;

const NAME: &str = "ordered";
/// Ordering keys the keyed events are spread over.
const KEYS: u64 = 1_000;

/// Unkeyed, keyed, unkeyed again, on one server.
pub async fn run(ctx: &Ctx<'_>) -> anyhow::Result<Vec<Metric>> {
    let clients = clients_with_after_handler(ctx).await?;
    let (before, before_note) = drain_rate(ctx, &clients, 0).await?;
    let (keyed, keyed_note) = drain_rate(ctx, &clients, KEYS).await?;
    let (after, after_note) = drain_rate(ctx, &clients, 0).await?;
    Ok(vec![
        Metric::new(NAME, "unkeyed, before: delivered", before, "events/s").note(before_note),
        Metric::new(NAME, "unkeyed, after: delivered", after, "events/s").note(after_note),
        Metric::new(NAME, "1,000 ordering keys: delivered", keyed, "events/s")
            .baseline(
                Some((before + after) / 2.0),
                "the mean of the unkeyed delivery rates before and after it, events/s",
            )
            .note(keyed_note),
    ])
}
