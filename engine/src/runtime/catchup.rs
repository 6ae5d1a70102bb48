//! Catch-up from the log: FETCHes for agreements older than the protocol core's
//! in-memory window ([`Action::ServeFromLog`]), answered on a thread of their own from
//! the log, which keeps every agreement since the older of the two newest checkpoints.
//!
//! Why: the window holds about 256 MiB of batches, a few seconds at full load with
//! 4 KiB values, while a state transfer of a 1 GiB state takes ten. A replica that
//! installed a transferred state found itself behind every window again, transferred
//! again, and never came back (measured on the lent machine: 4 replicas, 1 GiB). The log
//! holds those agreements anyway; reading them costs the ordering stages nothing. A
//! read takes up to [`CATCH_UP_READ_AHEAD`] agreements ([`CATCH_UP_READ_BYTES_MAX`] at
//! most) and keeps them for the ranges that follow, until nobody asks for a second.
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
pub const CATCH_UP_READ_BYTES_MAX: u64 = 256 << 20;

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
    let mut recent = RecentAsks::default();
    let mut ahead = ReadAhead::default();
    let mut last_ask = Instant::now();
    while !stop.load(Ordering::Relaxed) {
        let Ok(ask) = asks.recv_timeout(Duration::from_millis(100)) else {
            // Nobody catching up: the batches read ahead go.
            if last_ask.elapsed() >= CATCH_UP_REPEAT {
                ahead = ReadAhead::default();
            }
            continue;
        };
        last_ask = Instant::now();
        let Some(key) = keys.link(ask.to) else { continue };
        // A peer waiting for its answers asks again every two ticks; a read from the
        // log can take longer than that (seen: 0.4-2.8 s on the 2-core machine, the
        // same range asked five times). The same range to the same peer is read once
        // per CATCH_UP_REPEAT.
        let now = Instant::now();
        if !recent.fresh(ask.to, ask.first, now) {
            continue;
        }
        let answers = answer(log, ask, &mut ahead);
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

/// The ranges read lately, by peer and first agreement: an ask for one of them within
/// [`CATCH_UP_REPEAT`] is a repeat, not served again. At most [`RECENT_MAX`] remembered
/// (the oldest goes first).
#[derive(Debug, Default)]
struct RecentAsks {
    /// (peer, first agreement, when it was read), oldest first.
    entries: VecDeque<(ReplicaId, u64, Instant)>,
}

impl RecentAsks {
    /// Whether an ask of `to` for the range from `first`, at `now`, is to be served;
    /// if so it is remembered.
    fn fresh(&mut self, to: ReplicaId, first: u64, now: Instant) -> bool {
        self.entries.retain(|(_, _, at)| now.saturating_duration_since(*at) < CATCH_UP_REPEAT);
        if self.entries.iter().any(|&(peer, from, _)| peer == to && from == first) {
            return false;
        }
        if self.entries.len() == RECENT_MAX {
            self.entries.pop_front();
        }
        self.entries.push_back((to, first, now));
        assert!(self.entries.len() <= RECENT_MAX);
        true
    }
}

/// Batches read from the log ahead of what a peer asked (decided batches never change,
/// so they stay valid however the log moves on), for the FETCHes that follow: a read
/// verifies whole 64 MiB segments, and on the lent machine one read per range of 64
/// agreements kept catch-up at about 64 agreements a second, below the cluster's 390.
#[derive(Debug, Default)]
pub struct ReadAhead {
    /// Consecutive decided batches.
    batches: Vec<(u64, Arc<Batch>, Hash)>,
}

impl ReadAhead {
    /// The batches from `from` to `last`, if all held.
    fn slice(&self, from: u64, last: u64) -> Option<&[(u64, Arc<Batch>, Hash)]> {
        let first = self.batches.first()?.0;
        let end = self.batches.last()?.0;
        (first <= from && last <= end)
            .then(|| &self.batches[(from - first) as usize..=(last - first) as usize])
    }
}

/// Agreements read at once past what a FETCH asks (four ranges of 64).
pub const CATCH_UP_READ_AHEAD: u64 = 256;

/// The messages that answer `ask` from `log`: DECIDED from `ask.first` on, as far as a
/// read of at most [`CATCH_UP_READ_BYTES_MAX`] reaches, or GONE when the log no longer
/// holds `ask.first` (or cannot be read). Served from `ahead` when it holds the range,
/// else from a read of up to [`CATCH_UP_READ_AHEAD`] agreements that replaces it.
pub fn answer(log: &dyn LogPieces, ask: Ask, ahead: &mut ReadAhead) -> Vec<Message> {
    assert!(ask.first >= 1 && ask.first <= ask.last && ask.last < ask.first_held);
    let named_from = ask.first.saturating_sub(1).max(1);
    if let Some(batches) =
        ahead.slice(named_from, ask.last).or_else(|| ahead.slice(ask.first, ask.last))
    {
        return catch_up_from_log(ask.first, ask.last, ask.first_held, Some(batches));
    }
    let held_from = log.held().map(|(first, _)| first);
    let read = held_from.filter(|&from| from <= ask.first).and_then(|from| {
        // From the agreement before `first` when the log holds it: DECIDED names it.
        let after = if from < ask.first { ask.first - 2 } else { ask.first - 1 };
        let mut up_to = (ask.first + CATCH_UP_READ_AHEAD - 1).max(ask.last).min(ask.first_held - 1);
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
    let Some(read) = read else {
        return catch_up_from_log(ask.first, ask.last, ask.first_held, None);
    };
    ahead.batches = read.into_iter().map(|b| (b.agreement_id, b.batch, b.hash)).collect();
    catch_up_from_log(ask.first, ask.last, ask.first_held, Some(&ahead.batches))
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
        reads: std::sync::atomic::AtomicU64,
    }

    fn held(from: u64, to: u64) -> Held {
        Held { from, to, reads: std::sync::atomic::AtomicU64::new(0) }
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
            self.reads.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
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
    fn the_same_range_for_the_same_peer_is_read_once_per_repeat_interval() {
        let mut recent = RecentAsks::default();
        let start = Instant::now();
        assert!(recent.fresh(1, 100, start));
        // Asked again meanwhile (a peer resends every two ticks): dropped.
        assert!(!recent.fresh(1, 100, start + CATCH_UP_REPEAT / 2));
        // Another peer, or another range, is served.
        assert!(recent.fresh(2, 100, start + CATCH_UP_REPEAT / 2));
        assert!(recent.fresh(1, 164, start + CATCH_UP_REPEAT / 2));
        // Once the interval is over, the same range is read again.
        assert!(recent.fresh(1, 100, start + CATCH_UP_REPEAT));
        // Bounded: the oldest range is forgotten first, and served again.
        let mut full = RecentAsks::default();
        for first in 0..=RECENT_MAX as u64 {
            assert!(full.fresh(3, first, start));
        }
        assert_eq!(full.entries.len(), RECENT_MAX);
        assert!(full.fresh(3, 0, start), "the oldest was forgotten");
        assert!(!full.fresh(3, RECENT_MAX as u64, start), "the newest is remembered");
    }

    #[test]
    fn a_fetch_below_the_window_is_answered_from_the_log_naming_each_predecessor() {
        let log = held(10, 100);
        let ask = Ask { to: 1, first: 20, last: 25, first_held: 90 };
        let answers = answer(&log, ask, &mut ReadAhead::default());
        let hash = |k: u64| Some(batch(k).hash());
        assert_eq!(decided(&answers), (20..=25).map(|k| (k, hash(k - 1))).collect::<Vec<_>>());
        // At the log's first agreement there is no predecessor to name.
        let answers = answer(&log, Ask { first: 10, last: 11, ..ask }, &mut ReadAhead::default());
        assert_eq!(decided(&answers), vec![(10, None), (11, hash(10))]);
    }

    #[test]
    fn what_the_log_no_longer_holds_is_gone() {
        let ask = Ask { to: 1, first: 5, last: 8, first_held: 90 };
        for log in [&held(10, 100) as &dyn LogPieces, &NoPieces] {
            assert_eq!(
                answer(log, ask, &mut ReadAhead::default()),
                vec![Message::Gone { first_held: 90 }]
            );
        }
    }

    #[test]
    fn a_read_that_fails_past_its_start_is_served_from_the_start() {
        // The log's durable point is 22: the range is halved until the read succeeds.
        let log = held(10, 22);
        let answers = answer(
            &log,
            Ask { to: 1, first: 20, last: 40, first_held: 90 },
            &mut ReadAhead::default(),
        );
        let got: Vec<u64> = decided(&answers).into_iter().map(|(k, _)| k).collect();
        assert_eq!(got, vec![20, 21, 22]);
    }

    #[test]
    fn the_ranges_that_follow_are_served_from_what_was_read_ahead() {
        let log = held(1, 1_000);
        let mut ahead = ReadAhead::default();
        let hash = |k: u64| Some(batch(k).hash());
        for first in (100..100 + CATCH_UP_READ_AHEAD).step_by(64) {
            let ask = Ask { to: 2, first, last: first + 63, first_held: 900 };
            let answers = answer(&log, ask, &mut ahead);
            let want: Vec<(u64, Option<Hash>)> =
                (first..=first + 63).map(|k| (k, hash(k - 1))).collect();
            assert_eq!(decided(&answers), want);
        }
        assert_eq!(log.reads.load(std::sync::atomic::Ordering::Relaxed), 1, "one read");
        // Past what was read: the log is read again.
        let ask = Ask { to: 2, first: 100 + CATCH_UP_READ_AHEAD, last: 400, first_held: 900 };
        assert_eq!(decided(&answer(&log, ask, &mut ahead)).len(), 400 - 356 + 1);
        assert_eq!(log.reads.load(std::sync::atomic::Ordering::Relaxed), 2);
    }
}
