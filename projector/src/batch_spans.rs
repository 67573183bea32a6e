//! The `project` spans of an applied batch (see `infra::traces`): one per
//! command whose events the batch held, from the batch's start to its
//! commit, each a child of that command's `command` span.

use std::time::{Instant, SystemTime};

use eventstore::RecordedEvent;
use uuid::Uuid;

/// Records the spans of `events`, applied by `projection` in a batch begun
/// at `started` and committed now (a no-op while traces are not exported).
pub fn record(projection: &str, events: &[RecordedEvent], started: Instant) {
    if !infra::traces::exporting() {
        return;
    }
    let ended = SystemTime::now();
    let started = ended - started.elapsed();
    // A command's events are one append: next to each other in the log.
    let mut commands: Vec<(Uuid, Option<Uuid>, usize)> = Vec::new();
    for event in events {
        let Some(command_id) = event.metadata.command_id else {
            continue;
        };
        match commands.last_mut() {
            Some((id, _, count)) if *id == command_id => *count += 1,
            _ => commands.push((command_id, event.metadata.correlation_id, 1)),
        }
    }
    for (command_id, correlation_id, events) in commands {
        infra::traces::project(infra::traces::ProjectSpan {
            projection,
            command_id,
            correlation_id,
            events,
            started,
            ended,
        });
    }
}
