//! Catch-up from the log: FETCHes for agreements older than the protocol core's
//! in-memory window ([`Action::ServeFromLog`]), answered on a thread of their own from
//! the log, which keeps every agreement since the older of the two newest checkpoints.
//!
//! Why: the window holds about 256 MiB of batches, a few seconds at full load with
//! 4 KiB values, while a state transfer of a 1 GiB state takes ten. A replica that
//! installed a transferred state found itself behind every window again, transferred
//! again, and never came back (measured on the lent machine: 4 replicas, 1 GiB). The log
//! holds those agreements anyway; reading them costs the ordering stages nothing.
//!
//! [`Action::ServeFromLog`]: crate::protocol::Action::ServeFromLog

use std::collections::VecDeque;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use crossbeam_channel::{Receiver, Sender, TrySendError, bounded};

use super::net::{Network, Peer};
use super::transfer::LogPieces;
use crate::protocol::{
    Batch, Hash, Message, ReplicaId, ReplicaKeys, catch_up_from_log, seal_frame,
};

/// Asks waiting for the reader thread; more are dropped (the peer FETCHes again).
pub const CATCH_UP_ASKS_MAX: usize = 16;

/// Log bytes one answer reads at most. A batch is at most 4 MiB
/// ([`crate::protocol::Config::batch_bytes_max`]'s default), so one agreement always fits;
/// a range over the bound is served from its start, halved until it fits.
pub const CATCH_UP_READ_BYTES_MAX: u64 = 64 << 20;

/// A peer's ask for the same range within this long after it was read is dropped.
pub const CATCH_UP_REPEAT: Duration = Duration::from_secs(1);

/// Ranges remembered for [`CATCH_UP_REPEAT`] (a few per peer).
const RECENT_MAX: usize = 64;

/// One FETCH below the window: [`crate::protocol::Action::ServeFromLog`]'s fields.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Ask {
    /// The peer that asked.
    pub to: ReplicaId,
    /// First agreement asked for.
    pub first: u64,
    /// Last one.
    pub last: u64,
    /// The first agreement the in-memory window holds.
    pub first_held: u64,
}

/// The order stage's end of the reader thread.
#[derive(Debug, Clone)]
pub struct CatchUpLog {
    asks: Sender<Ask>,
}

impl CatchUpLog {
    /// Starts the reader thread over `log`; it ends when `stop` is set.
    pub fn spawn(
        id: ReplicaId,
        log: Arc<dyn LogPieces>,
        keys: Arc<ReplicaKeys>,
        network: Arc<Network>,
        stop: Arc<AtomicBool>,
    ) -> std::io::Result<(Self, std::thread::JoinHandle<()>)> {
        let (asks, rx) = bounded(CATCH_UP_ASKS_MAX);
        let thread = std::thread::Builder::new()
            .name(format!("catch-up-{id}"))
            .spawn(move || serve(id, log.as_ref(), &keys, &network, &rx, &stop))?;
        Ok((Self { asks }, thread))
    }

    /// Hands `ask` to the reader; false when its queue is full (dropped).
    pub fn ask(&self, ask: Ask) -> bool {
        match self.asks.try_send(ask) {
            Ok(()) => true,
            Err(TrySendError::Full(_) | TrySendError::Disconnected(_)) => false,
        }
    }
}

fn serve(
    id: ReplicaId,
    log: &dyn LogPieces,
    keys: &ReplicaKeys,
    network: &Network,
    asks: &Receiver<Ask>,
    stop: &AtomicBool,
) {
    // Ranges read lately: (peer, first agreement, when).
    let mut recent: VecDeque<(ReplicaId, u64, Instant)> = VecDeque::with_capacity(RECENT_MAX);
    while !stop.load(Ordering::Relaxed) {
        let Ok(ask) = asks.recv_timeout(Duration::from_millis(100)) else { continue };
        let Some(key) = keys.link(ask.to) else { continue };
        // A peer waiting for its answers asks again every two ticks; a read from the
        // log can take longer than that (seen: 0.4-2.8 s on the 2-core machine, the
        // same range asked five times). The same range to the same peer is read once
        // per CATCH_UP_REPEAT.
        let now = Instant::now();
        recent.retain(|(_, _, at)| now.duration_since(*at) < CATCH_UP_REPEAT);
        if recent.iter().any(|&(to, first, _)| to == ask.to && first == ask.first) {
            continue;
        }
        if recent.len() == RECENT_MAX {
            recent.pop_front();
        }
        recent.push_back((ask.to, ask.first, now));
        let answers = answer(log, ask);
        log::debug!(
            "replica {id}: catch-up of {}..={} for {} from the log: {} messages in {:?}",
            ask.first,
            ask.last,
            ask.to,
            answers.len(),
            now.elapsed()
        );
        for message in answers {
            network.send(Peer::Replica(ask.to), Arc::from(seal_frame(key, id, &message)));
        }
    }
}

/// The messages that answer `ask` from `log`: DECIDED from `ask.first` on, as far as a
/// read of at most [`CATCH_UP_READ_BYTES_MAX`] reaches, or GONE when the log no longer
/// holds `ask.first` (or cannot be read).
pub fn answer(log: &dyn LogPieces, ask: Ask) -> Vec<Message> {
    assert!(ask.first >= 1 && ask.first <= ask.last && ask.last < ask.first_held);
    let held_from = log.held().map(|(first, _)| first);
    let batches = held_from.filter(|&from| from <= ask.first).and_then(|from| {
        // From the agreement before `first` when the log holds it: DECIDED names it.
        let after = if from < ask.first { ask.first - 2 } else { ask.first - 1 };
        let mut up_to = ask.last;
        loop {
            match log.read(after, up_to, CATCH_UP_READ_BYTES_MAX) {
                Ok(Ok(batches)) => return Some(batches),
                Ok(Err(_)) | Err(_) if up_to > ask.first => {
                    up_to = ask.first + (up_to - ask.first) / 2
                }
                Ok(Err(_)) => return None,
                Err(error) => {
                    log::warn!("catch-up from the log ({after}, {up_to}]: {error}");
                    return None;
                }
            }
        }
    });
    let batches: Option<Vec<(u64, Arc<Batch>, Hash)>> = batches
        .map(|batches| batches.into_iter().map(|b| (b.agreement_id, b.batch, b.hash)).collect());
    catch_up_from_log(ask.first, ask.last, ask.first_held, batches.as_deref())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::durability::DecidedBatch;
    use crate::runtime::transfer::NoPieces;
    use dura_transfer::Unavailable;

    /// A log holding agreements `from..=to`, one small batch each.
    struct Held {
        from: u64,
        to: u64,
    }

    fn batch(agreement_id: u64) -> Arc<Batch> {
        Arc::new(Batch { timestamp_ms: agreement_id, requests: Vec::new() })
    }

    impl LogPieces for Held {
        fn held(&self) -> Option<(u64, u64)> {
            Some((self.from, self.to))
        }

        fn read(
            &self,
            after: u64,
            up_to: u64,
            _bytes_max: u64,
        ) -> std::io::Result<Result<Vec<DecidedBatch>, Unavailable>> {
            if after + 1 < self.from {
                return Ok(Err(Unavailable::Truncated));
            }
            if up_to > self.to {
                return Ok(Err(Unavailable::NotYet));
            }
            Ok(Ok((after + 1..=up_to).map(|k| DecidedBatch::new(k, batch(k))).collect()))
        }
    }

    fn decided(messages: &[Message]) -> Vec<(u64, Option<Hash>)> {
        messages
            .iter()
            .map(|m| match m {
                Message::Decided { agreement_id, batch, previous } => {
                    assert_eq!(batch.timestamp_ms, *agreement_id);
                    (*agreement_id, *previous)
                }
                other => panic!("not a DECIDED: {other:?}"),
            })
            .collect()
    }

    #[test]
    fn a_fetch_below_the_window_is_answered_from_the_log_naming_each_predecessor() {
        let log = Held { from: 10, to: 100 };
        let ask = Ask { to: 1, first: 20, last: 25, first_held: 90 };
        let answers = answer(&log, ask);
        let hash = |k: u64| Some(batch(k).hash());
        assert_eq!(decided(&answers), (20..=25).map(|k| (k, hash(k - 1))).collect::<Vec<_>>());
        // At the log's first agreement there is no predecessor to name.
        let answers = answer(&log, Ask { first: 10, last: 11, ..ask });
        assert_eq!(decided(&answers), vec![(10, None), (11, hash(10))]);
    }

    #[test]
    fn what_the_log_no_longer_holds_is_gone() {
        let ask = Ask { to: 1, first: 5, last: 8, first_held: 90 };
        for log in [&Held { from: 10, to: 100 } as &dyn LogPieces, &NoPieces] {
            assert_eq!(answer(log, ask), vec![Message::Gone { first_held: 90 }]);
        }
    }

    #[test]
    fn a_read_that_fails_past_its_start_is_served_from_the_start() {
        // The log's durable point is 22: the range is halved until the read succeeds.
        let log = Held { from: 10, to: 22 };
        let answers = answer(&log, Ask { to: 1, first: 20, last: 40, first_held: 90 });
        let got: Vec<u64> = decided(&answers).into_iter().map(|(k, _)| k).collect();
        assert_eq!(got, vec![20, 21, 22]);
    }
}
