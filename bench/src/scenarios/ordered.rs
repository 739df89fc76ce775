//! What ordering keys cost: the delivery rate of `--events` AFTER events spread over
//! 1,000 ordering keys, next to the rate of as many unkeyed events on the same server in
//! the same run (the baseline). Keyed events of one key are delivered one at a time, so
//! each key's next event waits for the previous one's log row and promotion.

use super::deliver::drain_rate;
use super::{clients_with_after_handler, Ctx};
use crate::report::Metric;

const NAME: &str = "ordered";
/// Ordering keys the keyed events are spread over.
const KEYS: u64 = 1_000;

/// Unkeyed first, then keyed, on one server.
pub async fn run(ctx: &Ctx<'_>) -> anyhow::Result<Vec<Metric>> {
    let clients = clients_with_after_handler(ctx).await?;
    let (unkeyed, unkeyed_note) = drain_rate(ctx, &clients, 0).await?;
    let (keyed, keyed_note) = drain_rate(ctx, &clients, KEYS).await?;
    Ok(vec![
        Metric::new(NAME, "unkeyed: delivered", unkeyed, "events/s").note(unkeyed_note),
        Metric::new(NAME, "1,000 ordering keys: delivered", keyed, "events/s")
            .baseline(
                Some(unkeyed),
                "the unkeyed delivery rate of this run, events/s",
            )
            .note(keyed_note),
    ])
}
