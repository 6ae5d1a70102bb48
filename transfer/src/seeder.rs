//! The seeder: what a replica answers leechers, given what it holds.
//!
//! The engine keeps the [`Seeder`]'s [`Holdings`] current (after each checkpoint and
//! each log truncation) and routes to it every [`Message::Query`],
//! [`Message::HashRequest`] and [`Message::Fetch`] it receives. The seeder answers a
//! query from its holdings, refuses with [`Message::Unavailable`] what it no longer
//! (or does not yet) hold, and otherwise hands the work to the engine: hash these log
//! pieces ([`SeederAction::HashPieces`], answered by [`SeederEvent::PiecesHashed`]) or
//! stream this payload ([`SeederAction::Serve`], ended by [`SeederEvent::ServeEnded`]).
//!
//! Bounds: at most [`SeederConfig::hash_jobs_max`] hash jobs at once, and streams to at
//! most [`SeederConfig::leechers_max`] leechers at once, each with at most
//! [`STREAMS_PER_LEECHER_MAX`] streams (a CST provider at position r sends a
//! checkpoint and r+1 pieces; the engine sends one leecher's streams in order on one
//! connection). Beyond them it answers [`Unavailable::Busy`] (the leecher moves to
//! another replica). A request it is already working on (a resend) starts nothing new.

use std::collections::BTreeMap;

use dura_core::{AGREEMENT_ID_NONE, AgreementId, Hash, REPLICAS_MAX, ReplicaId};

use crate::TransferError;
use crate::message::{
    Asked, CheckpointClaim, Message, PIECES_MAX, Piece, RoundId, STATUS_CHECKPOINTS_MAX, Status,
    Unavailable, Want, check_pieces, check_status,
};

/// Streams one leecher may have from a seeder at once: a checkpoint and a piece per
/// replica.
pub const STREAMS_PER_LEECHER_MAX: usize = PIECES_MAX + 1;

/// Names one hash job or stream of a seeder.
pub type JobId = u64;

/// What a replica holds for state transfer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Holdings {
    /// The last agreement in its log.
    pub last_agreement: AgreementId,
    /// The first agreement its log holds (`last_agreement + 1` if none).
    pub log_first: AgreementId,
    /// Its checkpoints, oldest first (the newest [`STATUS_CHECKPOINTS_MAX`] are
    /// announced).
    pub checkpoints: Vec<CheckpointClaim>,
}

impl Holdings {
    /// Nothing yet: no log, no checkpoint.
    pub fn empty() -> Self {
        Self { last_agreement: AGREEMENT_ID_NONE, log_first: 1, checkpoints: Vec::new() }
    }

    fn status(&self) -> Status {
        let skip = self.checkpoints.len().saturating_sub(STATUS_CHECKPOINTS_MAX);
        Status {
            last_agreement: self.last_agreement,
            log_first: self.log_first,
            checkpoints: self.checkpoints[skip..].to_vec(),
        }
    }

    /// Why `piece` cannot be served from the log, if it cannot.
    fn log_refusal(&self, piece: Piece) -> Option<Unavailable> {
        if piece.up_to > self.last_agreement {
            Some(Unavailable::NotYet)
        } else if piece.after + 1 < self.log_first {
            Some(Unavailable::Truncated)
        } else {
            None
        }
    }

    /// The checkpoint at `agreement_id`, or why not.
    fn checkpoint(&self, agreement_id: AgreementId) -> Result<Hash, Unavailable> {
        match self.checkpoints.iter().find(|c| c.agreement_id == agreement_id) {
            Some(claim) => Ok(claim.content_hash),
            None if agreement_id > self.last_agreement => Err(Unavailable::NotYet),
            None => Err(Unavailable::Truncated),
        }
    }
}

/// How a [`Seeder`] runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SeederConfig {
    /// Replicas in the cluster.
    pub n: usize,
    /// This replica.
    pub me: ReplicaId,
    /// Hash jobs at once.
    pub hash_jobs_max: usize,
    /// Leechers streamed to at once.
    pub leechers_max: usize,
}

impl SeederConfig {
    /// Defaults: four hash jobs, two leechers.
    pub fn new(n: usize, me: ReplicaId) -> Self {
        Self { n, me, hash_jobs_max: 4, leechers_max: 2 }
    }
}

/// What the engine reports to a seeder.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SeederEvent {
    /// A message from a leecher (control or data path).
    Message {
        /// The leecher.
        from: ReplicaId,
        /// The message.
        msg: Message,
    },
    /// What the replica holds changed.
    Holdings(Holdings),
    /// A [`SeederAction::HashPieces`] ended: the pieces' hashes in the order asked, or
    /// the log no longer holds them.
    PiecesHashed {
        /// The job.
        job: JobId,
        /// The hashes, or the refusal.
        result: Result<Vec<Hash>, Unavailable>,
    },
    /// A [`SeederAction::Serve`] ended (sent, refused or broken).
    ServeEnded {
        /// The stream.
        job: JobId,
    },
}

/// What a seeder asks its engine to do.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SeederAction {
    /// Send a control message.
    Send {
        /// The leecher.
        to: ReplicaId,
        /// The message.
        msg: Message,
    },
    /// Hash these pieces from the log ([`crate::piece_hash`]) and report
    /// [`SeederEvent::PiecesHashed`].
    HashPieces {
        /// The job.
        job: JobId,
        /// The pieces.
        pieces: Vec<Piece>,
    },
    /// Stream `want` to `to` on the data path (a checkpoint's content, or a piece's
    /// batches in agreement order); if the files went meanwhile, send
    /// [`Message::Unavailable`] instead. Report [`SeederEvent::ServeEnded`].
    Serve {
        /// The stream.
        job: JobId,
        /// The leecher.
        to: ReplicaId,
        /// Its round.
        round: RoundId,
        /// The leecher's ticket for the fetch (names the stream on the data path).
        ticket: u64,
        /// What.
        want: Want,
    },
}

#[derive(Debug)]
struct HashJob {
    to: ReplicaId,
    round: RoundId,
    checkpoint: AgreementId,
    checkpoint_hash: Option<Hash>,
    pieces: Vec<Piece>,
}

/// A replica's state-transfer server (see the module docs).
#[derive(Debug)]
pub struct Seeder {
    config: SeederConfig,
    holdings: Holdings,
    next_job: JobId,
    hash_jobs: BTreeMap<JobId, HashJob>,
    /// Streams under way: the leecher, its session ([`RoundId::session`]) and ticket.
    serves: BTreeMap<JobId, (ReplicaId, u64, u64)>,
}

impl Seeder {
    /// A seeder that holds `holdings`.
    pub fn new(config: SeederConfig, holdings: Holdings) -> Result<Self, TransferError> {
        if config.n < 2 || config.n > REPLICAS_MAX || config.me as usize >= config.n {
            return Err(TransferError::Config("a seeder is one of 2..=REPLICAS_MAX replicas"));
        }
        if config.hash_jobs_max == 0 || config.leechers_max == 0 {
            return Err(TransferError::Config("a seeder serves at least one job of each kind"));
        }
        check_holdings(&holdings)?;
        Ok(Self {
            config,
            holdings,
            next_job: 1,
            hash_jobs: BTreeMap::new(),
            serves: BTreeMap::new(),
        })
    }

    /// What it holds.
    pub fn holdings(&self) -> &Holdings {
        &self.holdings
    }

    /// Hash jobs and streams under way.
    pub fn busy(&self) -> (usize, usize) {
        (self.hash_jobs.len(), self.serves.len())
    }

    /// Feeds one event; the actions to carry out are appended to `out`.
    pub fn handle(&mut self, event: SeederEvent, out: &mut Vec<SeederAction>) {
        match event {
            SeederEvent::Holdings(holdings) => {
                check_holdings(&holdings).expect("the engine reports consistent holdings");
                self.holdings = holdings;
            }
            SeederEvent::Message { from, msg } => {
                if (from as usize) < self.config.n && from != self.config.me {
                    self.on_message(from, msg, out);
                }
            }
            SeederEvent::PiecesHashed { job, result } => {
                if let Some(job) = self.hash_jobs.remove(&job) {
                    let msg = match result {
                        Ok(hashes) => {
                            assert_eq!(hashes.len(), job.pieces.len(), "one hash per piece");
                            Message::Hashes {
                                round: job.round,
                                checkpoint: job.checkpoint,
                                checkpoint_hash: job.checkpoint_hash,
                                pieces: job.pieces.into_iter().zip(hashes).collect(),
                            }
                        }
                        Err(reason) => Message::Unavailable {
                            round: job.round,
                            asked: Asked::Hashes { checkpoint: job.checkpoint },
                            reason,
                        },
                    };
                    out.push(SeederAction::Send { to: job.to, msg });
                }
            }
            SeederEvent::ServeEnded { job } => {
                self.serves.remove(&job);
            }
        }
        assert!(self.hash_jobs.len() <= self.config.hash_jobs_max);
        assert!(self.serves.len() <= self.config.leechers_max * STREAMS_PER_LEECHER_MAX);
    }

    fn on_message(&mut self, from: ReplicaId, msg: Message, out: &mut Vec<SeederAction>) {
        match msg {
            Message::Query { round } => {
                out.push(SeederAction::Send {
                    to: from,
                    msg: Message::Status { round, status: self.holdings.status() },
                });
            }
            Message::HashRequest { round, checkpoint, pieces } => {
                if check_pieces("hash request", checkpoint, &pieces).is_err() {
                    return;
                }
                let already = self.hash_jobs.values().any(|job| {
                    job.to == from
                        && job.round == round
                        && job.checkpoint == checkpoint
                        && job.pieces == pieces
                });
                if already {
                    return;
                }
                let refuse = |reason| SeederAction::Send {
                    to: from,
                    msg: Message::Unavailable {
                        round,
                        asked: Asked::Hashes { checkpoint },
                        reason,
                    },
                };
                let checkpoint_hash = if checkpoint == AGREEMENT_ID_NONE {
                    // The genesis has no file and no hash; the log must reach back to 1.
                    None
                } else {
                    match self.holdings.checkpoint(checkpoint) {
                        Ok(hash) => Some(hash),
                        Err(reason) => return out.push(refuse(reason)),
                    }
                };
                // Contiguous pieces: the whole span is (checkpoint, newest.up_to].
                let span = Piece::new(checkpoint, pieces[0].up_to);
                if let Some(reason) = self.holdings.log_refusal(span) {
                    return out.push(refuse(reason));
                }
                if self.hash_jobs.len() >= self.config.hash_jobs_max {
                    return out.push(refuse(Unavailable::Busy));
                }
                let job = self.job();
                out.push(SeederAction::HashPieces { job, pieces: pieces.clone() });
                self.hash_jobs
                    .insert(job, HashJob { to: from, round, checkpoint, checkpoint_hash, pieces });
            }
            Message::Fetch { round, ticket, want } => {
                // A duplicate of a request under way (a leecher's tickets are unique; a
                // new process of the same replica counts them from 1 again, in a new
                // session, while a stream to its old one may still be running).
                if self.serves.values().any(|serve| *serve == (from, round.session, ticket)) {
                    return;
                }
                let refusal = match want {
                    Want::Checkpoint { agreement_id } => {
                        self.holdings.checkpoint(agreement_id).err()
                    }
                    Want::Log(piece) => self.holdings.log_refusal(piece),
                };
                let refusal =
                    refusal.or_else(|| self.is_busy_for(from).then_some(Unavailable::Busy));
                if let Some(reason) = refusal {
                    out.push(SeederAction::Send {
                        to: from,
                        msg: Message::Unavailable {
                            round,
                            asked: Asked::Fetch { ticket, want },
                            reason,
                        },
                    });
                    return;
                }
                let job = self.job();
                self.serves.insert(job, (from, round.session, ticket));
                out.push(SeederAction::Serve { job, to: from, round, ticket, want });
            }
            // Answers are the leecher side's business.
            Message::Status { .. } | Message::Hashes { .. } | Message::Unavailable { .. } => {}
        }
    }

    /// Whether another stream to `leecher` would pass a bound.
    fn is_busy_for(&self, leecher: ReplicaId) -> bool {
        let mut leechers: Vec<ReplicaId> = self.serves.values().map(|(to, ..)| *to).collect();
        leechers.sort_unstable();
        leechers.dedup();
        let own = self.serves.values().filter(|(to, ..)| *to == leecher).count();
        own >= STREAMS_PER_LEECHER_MAX || (own == 0 && leechers.len() >= self.config.leechers_max)
    }

    fn job(&mut self) -> JobId {
        let job = self.next_job;
        self.next_job += 1;
        job
    }
}

fn check_holdings(holdings: &Holdings) -> Result<(), TransferError> {
    // The rules of an announced status (over the checkpoints it announces).
    check_status(&holdings.status())
}

#[cfg(test)]
mod tests {
    use super::*;

    const ROUND: RoundId = RoundId { session: 1, round: 1 };

    fn holdings() -> Holdings {
        Holdings {
            last_agreement: 90,
            log_first: 41,
            checkpoints: vec![
                CheckpointClaim { agreement_id: 40, content_hash: [4; 32] },
                CheckpointClaim { agreement_id: 80, content_hash: [8; 32] },
            ],
        }
    }

    fn seeder() -> Seeder {
        Seeder::new(SeederConfig { n: 4, me: 1, hash_jobs_max: 1, leechers_max: 1 }, holdings())
            .expect("valid")
    }

    fn message(seeder: &mut Seeder, from: ReplicaId, msg: Message) -> Vec<SeederAction> {
        let mut out = Vec::new();
        seeder.handle(SeederEvent::Message { from, msg }, &mut out);
        out
    }

    fn refusal(out: &[SeederAction]) -> Option<Unavailable> {
        match out {
            [SeederAction::Send { msg: Message::Unavailable { reason, .. }, .. }] => Some(*reason),
            _ => None,
        }
    }

    #[test]
    fn a_query_is_answered_from_the_holdings() {
        let mut s = seeder();
        let out = message(&mut s, 0, Message::Query { round: ROUND });
        let status =
            Status { last_agreement: 90, log_first: 41, checkpoints: holdings().checkpoints };
        assert_eq!(
            out,
            vec![SeederAction::Send { to: 0, msg: Message::Status { round: ROUND, status } }]
        );
        // Its own messages and strangers' are ignored.
        assert!(message(&mut s, 1, Message::Query { round: ROUND }).is_empty());
        assert!(message(&mut s, 9, Message::Query { round: ROUND }).is_empty());
    }

    #[test]
    fn hashes_are_computed_by_the_engine_and_sent_with_the_checkpoint_hash() {
        let mut s = seeder();
        let pieces = vec![Piece::new(80, 90), Piece::new(40, 80)];
        let request = Message::HashRequest { round: ROUND, checkpoint: 40, pieces: pieces.clone() };
        let out = message(&mut s, 2, request.clone());
        let [SeederAction::HashPieces { job, pieces: asked }] = out.as_slice() else {
            panic!("{out:?}")
        };
        assert_eq!(asked, &pieces);
        // A resend while the job runs starts nothing; another leecher finds it busy.
        assert!(message(&mut s, 2, request.clone()).is_empty());
        assert_eq!(refusal(&message(&mut s, 3, request)), Some(Unavailable::Busy));
        let mut out = Vec::new();
        s.handle(
            SeederEvent::PiecesHashed { job: *job, result: Ok(vec![[1; 32], [2; 32]]) },
            &mut out,
        );
        assert_eq!(
            out,
            vec![SeederAction::Send {
                to: 2,
                msg: Message::Hashes {
                    round: ROUND,
                    checkpoint: 40,
                    checkpoint_hash: Some([4; 32]),
                    pieces: vec![(pieces[0], [1; 32]), (pieces[1], [2; 32])],
                },
            }]
        );
        assert_eq!(s.busy(), (0, 0));
    }

    #[test]
    fn what_is_no_longer_or_not_yet_held_is_refused() {
        let mut s = seeder();
        let hashes = |checkpoint, pieces| Message::HashRequest { round: ROUND, checkpoint, pieces };
        // Checkpoint 20 is gone; 85 is not one of its points (and within its log).
        assert_eq!(
            refusal(&message(&mut s, 0, hashes(20, vec![Piece::new(20, 90)]))),
            Some(Unavailable::Truncated)
        );
        assert_eq!(
            refusal(&message(&mut s, 0, hashes(85, vec![Piece::new(85, 90)]))),
            Some(Unavailable::Truncated)
        );
        // Beyond its log.
        assert_eq!(
            refusal(&message(&mut s, 0, hashes(80, vec![Piece::new(80, 95)]))),
            Some(Unavailable::NotYet)
        );
        // The genesis needs the log from agreement 1.
        assert_eq!(
            refusal(&message(&mut s, 0, hashes(0, vec![Piece::new(0, 90)]))),
            Some(Unavailable::Truncated)
        );
        let fetch = |ticket, want| Message::Fetch { round: ROUND, ticket, want };
        assert_eq!(
            refusal(&message(&mut s, 0, fetch(1, Want::Log(Piece::new(30, 50))))),
            Some(Unavailable::Truncated)
        );
        assert_eq!(
            refusal(&message(&mut s, 0, fetch(2, Want::Checkpoint { agreement_id: 95 }))),
            Some(Unavailable::NotYet)
        );
        // After a truncation what was served is refused.
        let want = Want::Log(Piece::new(40, 60));
        let out = message(&mut s, 0, fetch(3, want));
        assert!(matches!(out.as_slice(), [SeederAction::Serve { to: 0, .. }]), "{out:?}");
        assert!(message(&mut s, 0, fetch(3, want)).is_empty(), "a duplicate of a running stream");
        // The same ticket from the leecher's next process (a new session) is a new stream.
        let next_process = RoundId { session: ROUND.session + 1, round: 1 };
        let again = message(&mut s, 0, Message::Fetch { round: next_process, ticket: 3, want });
        assert!(matches!(again.as_slice(), [SeederAction::Serve { to: 0, .. }]), "{again:?}");
        let SeederAction::Serve { job, .. } = again[0] else { unreachable!() };
        s.handle(SeederEvent::ServeEnded { job }, &mut Vec::new());
        // The same leecher's other streams queue; another leecher is one too many.
        let other = message(&mut s, 0, fetch(4, Want::Checkpoint { agreement_id: 80 }));
        assert!(matches!(other.as_slice(), [SeederAction::Serve { to: 0, .. }]), "{other:?}");
        assert_eq!(refusal(&message(&mut s, 2, fetch(1, want))), Some(Unavailable::Busy));
        let mut ignored = Vec::new();
        for serve in out.iter().chain(&other) {
            let SeederAction::Serve { job, .. } = serve else { unreachable!() };
            s.handle(SeederEvent::ServeEnded { job: *job }, &mut ignored);
        }
        let mut newer = holdings();
        newer.log_first = 81;
        newer.checkpoints.remove(0);
        s.handle(SeederEvent::Holdings(newer), &mut ignored);
        assert_eq!(refusal(&message(&mut s, 2, fetch(2, want))), Some(Unavailable::Truncated));
        assert!(ignored.is_empty());
    }
}
