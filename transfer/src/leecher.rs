//! The leecher: the recovering replica's side of state transfer, a state machine with
//! no I/O.
//!
//! The engine creates a [`Leecher`] with the last agreement its local checkpoint and
//! log reached (step 1), calls [`Leecher::start`], then feeds [`Event`]s and carries
//! out the [`Action`]s each call appends, in order. Time enters only as the tick
//! numbers of [`Event::Tick`].
//!
//! # A round
//! 1. **Query** (steps 2-3): [`Message::Query`] to every other replica, resent every
//!    [`Timeouts::resend_ticks`] to those that have not answered, until n-f-1 have
//!    answered (n-f with the leecher) and either all have or
//!    [`Timeouts::status_grace_ticks`] passed since the (n-f-1)-th. The target is the
//!    largest agreement id a weak quorum reported ([`freshness::agreed_target`]); if the
//!    leecher already holds it, it is done.
//! 2. **Order** (step 4): [`freshness::freshness_order`] over the answers; piece j
//!    (the paper's L_{j+1}) runs from position j's base to position j-1's.
//! 3. **Attempts**, each fetching a base checkpoint and pieces from some replicas and
//!    hashes from others, staging, replaying and validating; the first that validates
//!    is installed. Which attempts, by [`Variant`] and [`Mode`]:
//!    - CST, BFT, f = 1 with [`LeecherConfig::f1_optimisation`]: first the
//!      optimisation, then the general protocol.
//!    - CST, BFT: the general protocol, provider at position f, then f+1, ...
//!    - CST, crash mode: the freshest replica's checkpoint, the log from it (or with
//!      f = 1 from the second freshest), no validation; on failure the next freshest.
//!    - PBFT-like: one seeder sends the newest checkpoint a weak quorum claims with one
//!      hash and the log after it, all others send the log's hash.
//!
//!    The leader (when [`LeecherConfig::leader`] names one) is never chosen to send
//!    bulk data while another replica can: it may still send hashes.
//! 4. A round whose attempts are exhausted (every replica that could serve failed,
//!    or some truncated what was asked) ends with [`Action::Restart`], and a new round
//!    queries again, so the target moves to a newer agreement; after
//!    [`LeecherConfig::rounds_max`] rounds the leecher gives up ([`Action::Failed`]).
//!
//! # Validation (what is checked against what)
//! - Checkpoint bytes: the engine hashes what it received with the checkpoint content
//!   hash (`dura_snapshot::ContentHasher`) and reports it ([`FetchOutcome::Received`]);
//!   [`Action::Stage`], the only action that decodes them, comes only once that hash
//!   equals the hash named before the transfer: the one a weak quorum claimed
//!   (PBFT-like), else the one the sender itself claimed in its [`Status`]. A mismatch
//!   proves the sender faulty.
//! - Log pieces: the engine hashes the batches as they arrive ([`crate::PieceHasher`]);
//!   a truncated or reordered piece does not hash ([`FetchOutcome::Malformed`]).
//! - General CST (Figure 6, steps 5-13): the provider at (0-based) position p sends C_p
//!   and pieces 0..=p (the paper's L_1..L_{p+1}); each position i < p is a validator
//!   with V_i = (hashes of pieces 0..=i, HC_i), asked by [`Message::HashRequest`] or, for
//!   a provider that failed earlier in the round, computed from its data (step 9). The
//!   leecher stages C_p, replays piece p, p-1, ..., asking for the staged state's
//!   checkpoint hash at each validator's base; validator i *matches* when its piece
//!   hashes equal the provider's pieces' and its HC_i equals the staged state's hash at
//!   its base. At least f matches (f+1 replicas vouching, one correct) validate.
//! - f = 1 optimisation: the 2nd's HL_1, HL_2 equal the hashes of L_1 (sent by the
//!   1st) and L_2 (sent by the 3rd, else the 1st, else the 2nd), and the 1st's HC_1
//!   equals the staged state's hash after C_2 + L_2.
//! - PBFT-like: the log's hash equals f others' hashes (f+1 vouching).
//! - Crash mode: nothing beyond the checkpoint bytes' hash (an integrity check).
//!
//! Nothing reaches the live service before [`Action::Install`], which comes only after
//! validation, followed by [`Action::Done`]. When a round validates, every hash a
//! replica claimed that contradicts what was validated names it ([`Fault::Contradicted`]).
//!
//! # Bounds
//! Everything is bounded by n ([`dura_core::REPLICAS_MAX`]): answers kept per round,
//! hash requests out (one per replica), fetches per attempt (at most n+1), attempts per
//! round (each spends a replica), rounds ([`LeecherConfig::rounds_max`]); one local
//! action (stage or replay) is outstanding at a time.

use std::collections::{BTreeMap, BTreeSet};

use dura_core::{AGREEMENT_ID_NONE, AgreementId, Hash, Mode, REPLICAS_MAX, ReplicaId};

use crate::TransferError;
use crate::freshness::{self, Position};
use crate::message::{Asked, Message, PIECES_MAX, Piece, RoundId, Status, Unavailable, Want};

/// Names one fetch, stage or replay, so its result can be matched (and a result of an
/// attempt that ended can be told apart and ignored). Unique per [`Leecher`].
pub type Ticket = u64;

/// The state-transfer protocol.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Variant {
    /// Collaborative state transfer (in crash mode its simplification).
    Cst,
    /// The baseline: one replica sends checkpoint and log, the others hashes. Needs a
    /// checkpoint that a weak quorum holds with one hash (coordinated checkpoints).
    PbftLike,
}

/// Timeouts, in ticks.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Timeouts {
    /// A query or hash request not answered this long is sent again.
    pub resend_ticks: u64,
    /// A hash request not answered this long: the replica is [`Fault::Mute`].
    pub answer_ticks: u64,
    /// A fetch with no data ([`Event::Progress`]) this long: the seeder is
    /// [`Fault::Mute`].
    pub fetch_idle_ticks: u64,
    /// After n-f-1 answers to a query, how long to wait for the rest (more answers,
    /// more replicas to choose from).
    pub status_grace_ticks: u64,
    /// After a round failed for want of seeders, the wait before the next query
    /// (a round that failed on truncation queries at once).
    pub restart_backoff_ticks: u64,
}

impl Default for Timeouts {
    fn default() -> Self {
        Self {
            resend_ticks: 4,
            answer_ticks: 40,
            fetch_idle_ticks: 40,
            status_grace_ticks: 4,
            restart_backoff_ticks: 10,
        }
    }
}

/// How a [`Leecher`] runs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LeecherConfig {
    /// Replicas in the cluster.
    pub n: usize,
    /// Faults tolerated.
    pub f: usize,
    /// The fault model.
    pub mode: Mode,
    /// This replica.
    pub me: ReplicaId,
    /// The current leader, never a bulk seeder while another replica can serve.
    pub leader: Option<ReplicaId>,
    /// The protocol.
    pub variant: Variant,
    /// With f = 1 and CST: start with the paper's f = 1 optimisation (BFT), or split
    /// checkpoint and log between two replicas (crash mode).
    pub f1_optimisation: bool,
    /// Distinguishes this leecher's rounds from an earlier process's
    /// ([`RoundId::session`]).
    pub session: u64,
    /// Timeouts.
    pub timeouts: Timeouts,
    /// Rounds before giving up.
    pub rounds_max: u32,
}

impl LeecherConfig {
    /// Defaults for `n` replicas in `mode`: the most faults `n` tolerates, CST with the
    /// f = 1 optimisation, no leader known, default timeouts, 16 rounds.
    pub fn new(mode: Mode, n: usize, me: ReplicaId, session: u64) -> Self {
        Self {
            n,
            f: mode.f_max(n),
            mode,
            me,
            leader: None,
            variant: Variant::Cst,
            f1_optimisation: true,
            session,
            timeouts: Timeouts::default(),
            rounds_max: 16,
        }
    }

    /// Whether the configuration can work.
    pub fn validate(&self) -> Result<(), TransferError> {
        let fail = |why| Err(TransferError::Config(why));
        if self.n < 2 || self.n > REPLICAS_MAX {
            return fail("n is 2..=REPLICAS_MAX (a transfer needs another replica)");
        }
        if self.n < self.mode.replicas_min(self.f) {
            return fail("n too small for f in this mode");
        }
        if self.me as usize >= self.n {
            return fail("me is a replica of the cluster");
        }
        if self.leader.is_some_and(|leader| leader as usize >= self.n) {
            return fail("the leader is a replica of the cluster");
        }
        let t = &self.timeouts;
        if t.resend_ticks == 0 || t.answer_ticks == 0 || t.fetch_idle_ticks == 0 {
            return fail("resend, answer and fetch timeouts are at least one tick");
        }
        if self.rounds_max == 0 {
            return fail("at least one round");
        }
        Ok(())
    }
}

/// What the engine reports.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Event {
    /// Time passed; `now` never decreases.
    Tick {
        /// The current tick.
        now: u64,
    },
    /// A control message from another replica (authenticated by the engine's link).
    Message {
        /// The sender.
        from: ReplicaId,
        /// The message.
        msg: Message,
    },
    /// Bytes arrived for a fetch (resets its idle timeout).
    Progress {
        /// The fetch.
        ticket: Ticket,
    },
    /// A fetch ended.
    Fetched {
        /// The fetch.
        ticket: Ticket,
        /// How.
        outcome: FetchOutcome,
    },
    /// An [`Action::Stage`] ended.
    Staged {
        /// The stage.
        ticket: Ticket,
        /// How.
        outcome: StageOutcome,
    },
    /// An [`Action::Replay`] ended.
    Replayed {
        /// The replay.
        ticket: Ticket,
        /// How.
        outcome: ReplayOutcome,
    },
    /// The leader changed (or became unknown).
    Leader {
        /// The new leader.
        leader: Option<ReplicaId>,
    },
}

/// How a fetch ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FetchOutcome {
    /// All of it arrived and is held under the fetch's ticket; `hash` is its content
    /// hash (checkpoint: `dura_snapshot::ContentHasher` over what arrived; log piece:
    /// [`crate::piece_hash`] over the batches).
    Received {
        /// The hash of what arrived.
        hash: Hash,
    },
    /// The seeder refused ([`Message::Unavailable`] on the data path).
    Unavailable(Unavailable),
    /// The connection broke before the end.
    Disconnected,
    /// What arrived does not decode or is not what was asked (a checkpoint at another
    /// agreement, a piece that is truncated or out of order, more bytes than a
    /// checkpoint can hold).
    Malformed,
}

/// How an [`Action::Stage`] ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StageOutcome {
    /// The staging state holds the checkpoint.
    Staged,
    /// The bytes (which matched their hash) do not decode into a state.
    Rejected,
}

/// How an [`Action::Replay`] ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ReplayOutcome {
    /// The staging state executed the piece; `state_hash` is its checkpoint content
    /// hash at the piece's end, present exactly when the action asked for it.
    Replayed {
        /// The staged state's checkpoint hash, if asked.
        state_hash: Option<Hash>,
    },
    /// The piece's batches do not decode or execute.
    Rejected,
}

/// Where a staging state starts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StageBase {
    /// The empty state before agreement 1.
    Genesis,
    /// The checkpoint fetched under `payload`, whose bytes hashed to `content_hash`.
    Fetched {
        /// The fetch that holds it.
        payload: Ticket,
        /// Its content hash, already checked; the engine may assert it.
        content_hash: Hash,
    },
}

/// Why a replica is named as failed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Fault {
    /// It did not answer or send in time.
    Mute,
    /// Its data connection broke.
    Disconnected,
    /// It refused.
    Unavailable(Unavailable),
    /// The checkpoint bytes it sent do not hash to the hash it claimed (or that a weak
    /// quorum claimed). Proof.
    CheckpointMismatch {
        /// The checkpoint.
        agreement_id: AgreementId,
    },
    /// It sent data that does not decode or is not what was asked. Proof.
    Malformed,
    /// Data it sent matched its hash but does not decode or execute. Proof.
    Rejected,
    /// It claimed two different hashes for one thing (in its status and its answer, or
    /// in its answer and the data it sent). Proof.
    Equivocated,
    /// A hash it claimed contradicts the validated state. Proof.
    Contradicted,
}

impl Fault {
    /// Whether the fault proves the replica faulty (correct replicas never commit it);
    /// a proven replica is excluded for the rest of the transfer. The others exclude it
    /// for the rest of the round only.
    pub fn is_proof(self) -> bool {
        matches!(
            self,
            Fault::CheckpointMismatch { .. }
                | Fault::Malformed
                | Fault::Rejected
                | Fault::Equivocated
                | Fault::Contradicted
        )
    }
}

/// Why a round ended without a state.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RestartReason {
    /// A seeder no longer holds what was asked: the next round targets a newer id.
    Truncated,
    /// Every replica that could send the state failed.
    NoSeederLeft,
    /// Fewer replicas can serve the target than the protocol needs.
    TooFewCandidates {
        /// Replicas that can serve.
        have: usize,
        /// Replicas needed.
        need: usize,
    },
    /// PBFT-like: no checkpoint is claimed with one hash by a weak quorum.
    NoAgreedCheckpoint,
}

/// Why the leecher gave up.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FailReason {
    /// [`LeecherConfig::rounds_max`] rounds ended without a state.
    RoundsExhausted {
        /// The rounds run.
        rounds: u32,
        /// Why the last one ended.
        last: RestartReason,
    },
}

/// What the engine must do, in order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Action {
    /// Send a control message.
    Send {
        /// The receiver.
        to: ReplicaId,
        /// The message.
        msg: Message,
    },
    /// Send `Message::Fetch { round, ticket, want }` to `from` on the data path, hash what
    /// comes back as it arrives, hold it under `ticket`, report [`Event::Progress`] as
    /// bytes arrive and [`Event::Fetched`] at the end.
    Fetch {
        /// Names the fetch and what it brings.
        ticket: Ticket,
        /// The seeder.
        from: ReplicaId,
        /// The round.
        round: RoundId,
        /// What.
        want: Want,
    },
    /// Stop the fetch if it runs and drop what it brought.
    Cancel {
        /// The fetch.
        ticket: Ticket,
    },
    /// The round's target: agreements after it that arrive meanwhile are buffered and
    /// replayed after [`Action::Done`].
    Target {
        /// The round.
        round: RoundId,
        /// The agreement the state will be at.
        agreement_id: AgreementId,
    },
    /// Build a fresh staging state (never the live service) at `agreement_id` from
    /// `base`, replacing any staged state; report [`Event::Staged`]. For a fetched base
    /// this is where the checkpoint's bytes are decoded, after their hash was checked.
    Stage {
        /// Names the stage.
        ticket: Ticket,
        /// The agreement the base is at.
        agreement_id: AgreementId,
        /// Where from.
        base: StageBase,
    },
    /// Execute the batches fetched under `payload` (the piece `piece`, which starts
    /// where the staged state is) on the staging state; if `hash_after`, compute the
    /// staged state's checkpoint content hash at `piece.up_to` (as the replica that
    /// checkpointed there would have); report [`Event::Replayed`]. An empty piece has no
    /// payload (nothing is fetched for it) and executes nothing.
    Replay {
        /// Names the replay.
        ticket: Ticket,
        /// The fetch that holds the piece; `None` exactly for an empty piece.
        payload: Option<Ticket>,
        /// The piece.
        piece: Piece,
        /// Whether to hash the state after it.
        hash_after: bool,
    },
    /// The staged state, validated and at `agreement_id`, becomes the live state.
    Install {
        /// Its agreement.
        agreement_id: AgreementId,
    },
    /// A replica failed to serve or is proven faulty (log it, count it).
    SeederFailed {
        /// The replica.
        replica: ReplicaId,
        /// How.
        fault: Fault,
    },
    /// The round ended without a state; `round` starts (after a backoff when the
    /// reason is not truncation). Whatever was fetched or staged can go.
    Restart {
        /// The new round.
        round: RoundId,
        /// Why the last one ended.
        reason: RestartReason,
    },
    /// State transfer is over: the live state is at `agreement_id` (installed by the
    /// action before when `transferred`, else the leecher was not behind). The
    /// engine drops whatever was fetched and staged, and catches up from there.
    Done {
        /// The agreement the live state is at.
        agreement_id: AgreementId,
        /// Whether a state was installed.
        transferred: bool,
    },
    /// State transfer gave up; nothing was installed.
    Failed {
        /// Why.
        reason: FailReason,
        /// Replicas proven faulty.
        faulty: Vec<ReplicaId>,
    },
}

/// How a leecher ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// [`Action::Done`].
    Done {
        /// The agreement the live state is at.
        agreement_id: AgreementId,
        /// Whether a state was installed.
        transferred: bool,
    },
    /// [`Action::Failed`].
    Failed(FailReason),
}

/// The recovering replica's state-transfer state machine (see the module docs).
#[derive(Debug)]
pub struct Leecher {
    config: LeecherConfig,
    own_last: AgreementId,
    now: u64,
    round: u32,
    next_ticket: Ticket,
    /// Replicas proven faulty: never asked again.
    proven: BTreeSet<ReplicaId>,
    /// A query waited a whole answer timeout for a quorum without the leader: later
    /// rounds count the leader's answer at once (their statuses would go stale waiting).
    leader_counted: bool,
    /// Replicas that failed in the last round without proof: chosen last to send data.
    demoted: BTreeSet<ReplicaId>,
    /// Rounds that ended without a state.
    failed_rounds: u32,
    phase: Phase,
}

#[derive(Debug)]
enum Phase {
    NotStarted,
    Querying(Query),
    Backoff { until: u64 },
    Transfer(Box<Transfer>),
    Finished(Outcome),
}

#[derive(Debug)]
struct Query {
    round: RoundId,
    statuses: BTreeMap<ReplicaId, Status>,
    last_sent: u64,
    quorum_at: Option<u64>,
}

/// One round after its target is known.
#[derive(Debug)]
struct Transfer {
    round: RoundId,
    target: AgreementId,
    statuses: BTreeMap<ReplicaId, Status>,
    order: Vec<Position>,
    /// Replicas that failed this round (not tried again as seeders or asked again).
    suspected: BTreeSet<ReplicaId>,
    /// Replicas tried as the state's sender this round (general CST, PBFT-like).
    tried: BTreeSet<ReplicaId>,
    /// The one hash request per replica, with its answer.
    asks: BTreeMap<ReplicaId, Ask>,
    /// V_r computed from the data of a provider whose attempt failed (step 9).
    data_claims: BTreeMap<ReplicaId, Claim>,
    truncated_seen: bool,
    f1_tried: bool,
    attempt: Attempt,
}

#[derive(Debug, Clone, PartialEq, Eq)]
struct Claim {
    checkpoint: AgreementId,
    checkpoint_hash: Option<Hash>,
    pieces: Vec<(Piece, Hash)>,
}

impl Claim {
    fn covers(&self, checkpoint: AgreementId, pieces: &[Piece]) -> bool {
        self.checkpoint == checkpoint
            && self.pieces.len() == pieces.len()
            && self.pieces.iter().zip(pieces).all(|((have, _), want)| have == want)
    }

    fn piece_hash(&self, piece: Piece) -> Option<Hash> {
        self.pieces.iter().find(|(have, _)| *have == piece).map(|(_, hash)| *hash)
    }
}

#[derive(Debug)]
struct Ask {
    checkpoint: AgreementId,
    pieces: Vec<Piece>,
    first_sent: u64,
    last_sent: u64,
    state: AskState,
}

#[derive(Debug)]
enum AskState {
    Pending,
    Answered(Claim),
    Failed,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    /// Figure 6 with the state from position `provider`.
    General { provider: usize },
    /// The f = 1 optimisation with the 1st and 2nd at these positions.
    F1 { first: usize, second: usize },
    /// Crash mode: no validation.
    Crash,
    /// The baseline: the base's hash, agreed by a weak quorum (zero for the genesis).
    Pbft { agreed: Hash },
}

#[derive(Debug)]
struct Attempt {
    kind: Kind,
    base: AgreementId,
    /// Who sends the base and the hash its bytes must have (none for the genesis).
    base_fetch: Option<(Ticket, Hash)>,
    /// Piece j is the paper's L_{j+1}: newest first.
    pieces: Vec<(Piece, Ticket)>,
    fetches: BTreeMap<Ticket, FetchJob>,
    /// PBFT-like: the replicas asked for the log's hash.
    hashers: Vec<ReplicaId>,
    stage: Work,
    /// Pieces replayed, counted from the oldest.
    replayed: usize,
    replay_pending: Option<Ticket>,
    /// The staged state's checkpoint hash at these agreements.
    computed: BTreeMap<AgreementId, Hash>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Work {
    NotStarted,
    Pending(Ticket),
    Done,
}

#[derive(Debug)]
struct FetchJob {
    from: ReplicaId,
    want: Want,
    last_progress: u64,
    result: Option<Hash>,
    /// An empty piece: nothing is fetched, its hash is computed here.
    local: bool,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Verdict {
    Wait,
    Valid,
    Invalid,
}

/// A validator's standing in the general protocol.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Standing {
    Absent,
    Pending,
    Match,
    Mismatch,
}

enum Step {
    Continue,
    RoundFailed(RestartReason),
    Finished,
}

impl Leecher {
    /// A leecher whose local checkpoint and log reach `own_last` (step 1).
    pub fn new(config: LeecherConfig, own_last: AgreementId) -> Result<Self, TransferError> {
        config.validate()?;
        Ok(Self {
            config,
            own_last,
            now: 0,
            round: 0,
            next_ticket: 1,
            proven: BTreeSet::new(),
            leader_counted: false,
            demoted: BTreeSet::new(),
            failed_rounds: 0,
            phase: Phase::NotStarted,
        })
    }

    /// Starts the first round at tick `now`.
    pub fn start(&mut self, now: u64, out: &mut Vec<Action>) {
        assert!(matches!(self.phase, Phase::NotStarted), "a leecher starts once");
        self.now = now;
        self.begin_round(out);
        self.check_invariants();
    }

    /// The configuration.
    pub fn config(&self) -> &LeecherConfig {
        &self.config
    }

    /// How it ended, once it has.
    pub fn outcome(&self) -> Option<Outcome> {
        match &self.phase {
            Phase::Finished(outcome) => Some(*outcome),
            _ => None,
        }
    }

    /// The current round (1 for the first).
    pub fn round(&self) -> u32 {
        self.round
    }

    /// The current round's target, once known.
    pub fn target(&self) -> Option<AgreementId> {
        match &self.phase {
            Phase::Transfer(t) => Some(t.target),
            _ => None,
        }
    }

    /// Replicas proven faulty so far.
    pub fn proven_faulty(&self) -> impl Iterator<Item = ReplicaId> + '_ {
        self.proven.iter().copied()
    }

    /// Feeds one event; the actions to carry out are appended to `out`.
    pub fn handle(&mut self, event: Event, out: &mut Vec<Action>) {
        assert!(!matches!(self.phase, Phase::NotStarted), "start the leecher first");
        match &event {
            Event::Tick { now } => {
                assert!(*now >= self.now, "time goes forward ({} then {now})", self.now);
                self.now = *now;
            }
            Event::Leader { leader } => {
                // An out-of-range leader is ignored rather than trusted.
                self.config.leader = leader.filter(|&l| (l as usize) < self.config.n);
                return;
            }
            _ => {}
        }
        match std::mem::replace(&mut self.phase, Phase::NotStarted) {
            Phase::NotStarted => unreachable!("checked above"),
            phase @ Phase::Finished(_) => self.phase = phase,
            Phase::Backoff { until } => {
                self.phase = Phase::Backoff { until };
                if self.now >= until {
                    self.begin_round(out);
                }
            }
            Phase::Querying(mut query) => {
                if self.query_event(&mut query, event, out) {
                    self.plan(query, out);
                } else {
                    self.phase = Phase::Querying(query);
                }
            }
            Phase::Transfer(mut transfer) => {
                let step = self.transfer_event(&mut transfer, event, out);
                self.after_step(transfer, step, out);
            }
        }
        self.check_invariants();
    }

    // ----- rounds -----

    fn begin_round(&mut self, out: &mut Vec<Action>) {
        self.round += 1;
        assert!(self.round <= self.config.rounds_max, "a round beyond the bound");
        let round = self.round_id();
        for to in self.others() {
            out.push(Action::Send { to, msg: Message::Query { round } });
        }
        self.phase = Phase::Querying(Query {
            round,
            statuses: BTreeMap::new(),
            last_sent: self.now,
            quorum_at: None,
        });
    }

    fn round_id(&self) -> RoundId {
        RoundId { session: self.config.session, round: self.round }
    }

    /// The replicas to ask: all others not proven faulty.
    fn others(&self) -> Vec<ReplicaId> {
        (0..self.config.n as ReplicaId)
            .filter(|&r| r != self.config.me && !self.proven.contains(&r))
            .collect()
    }

    /// Ends the round. The next starts at once after a first truncation (the target
    /// moves on); otherwise after a backoff that doubles with each failed round (up to
    /// eight times [`Timeouts::restart_backoff_ticks`]), so a seeder that refuses falsely
    /// cannot spend the rounds before late replicas catch up.
    fn fail_round(&mut self, reason: RestartReason, out: &mut Vec<Action>) {
        self.failed_rounds += 1;
        if self.round >= self.config.rounds_max {
            let reason = FailReason::RoundsExhausted { rounds: self.round, last: reason };
            out.push(Action::Failed { reason, faulty: self.proven.iter().copied().collect() });
            self.phase = Phase::Finished(Outcome::Failed(reason));
            return;
        }
        out.push(Action::Restart {
            round: RoundId { session: self.config.session, round: self.round + 1 },
            reason,
        });
        let backoff = if reason == RestartReason::Truncated && self.failed_rounds == 1 {
            0
        } else {
            self.config.timeouts.restart_backoff_ticks << (self.failed_rounds - 1).min(3)
        };
        if backoff == 0 {
            self.begin_round(out);
        } else {
            self.phase = Phase::Backoff { until: self.now + backoff };
        }
    }

    fn finish(&mut self, agreement_id: AgreementId, transferred: bool, out: &mut Vec<Action>) {
        out.push(Action::Done { agreement_id, transferred });
        self.phase = Phase::Finished(Outcome::Done { agreement_id, transferred });
    }

    // ----- query (steps 2-3) -----

    /// Returns true when the query is complete.
    fn query_event(&mut self, query: &mut Query, event: Event, out: &mut Vec<Action>) -> bool {
        match event {
            Event::Message { from, msg: Message::Status { round, status } }
                if round == query.round
                    && self.is_peer(from)
                    && crate::message::check_status(&status).is_ok() =>
            {
                query.statuses.entry(from).or_insert(status);
            }
            Event::Tick { .. }
                if self.now - query.last_sent >= self.config.timeouts.resend_ticks =>
            {
                query.last_sent = self.now;
                for to in self.others() {
                    if !query.statuses.contains_key(&to) {
                        out.push(Action::Send { to, msg: Message::Query { round: query.round } });
                    }
                }
            }
            // Anything else belongs to no query.
            _ => {}
        }
        let needed = self.config.n - self.config.f - 1;
        let reachable = self.others().len();
        if query.statuses.len() >= needed && query.quorum_at.is_none() {
            query.quorum_at = Some(self.now);
        }
        let Some(at) = query.quorum_at else { return false };
        let timeouts = self.config.timeouts;
        let non_leaders = query.statuses.keys().filter(|&&r| !self.is_leader(r)).count();
        if query.statuses.len() >= reachable {
            return true;
        }
        if self.now >= at + timeouts.answer_ticks {
            self.leader_counted |= non_leaders < needed;
            return true;
        }
        if self.now < at + timeouts.status_grace_ticks {
            return false;
        }
        // Before a whole answer timeout, the quorum must hold without the leader's answer
        // (else the leader may be the only one to send the state), and "not behind" is
        // concluded only on all answers (a replica that reports a low id must not end a
        // transfer that the slower answers would show is needed).
        let counted = if self.leader_counted { query.statuses.len() } else { non_leaders };
        counted >= needed && self.target_of(&query.statuses) > self.own_last
    }

    /// Step 3 over these answers and the leecher's own id. The leader's answer is left
    /// out when n-f-1 others answered: the target is then one that f+1 replicas other
    /// than the leader hold (still at least one correct), so they can serve it without
    /// the leader, which is usually a little ahead. But not when that target is no newer
    /// than the leecher's own state: a non-leader that lags too (another replica behind
    /// every window, itself transferring) then sets it, and installing it would leave
    /// the leecher as far behind as before, round after round; the leader counts then.
    fn target_of(&self, statuses: &BTreeMap<ReplicaId, Status>) -> AgreementId {
        let needed = self.config.n - self.config.f - 1;
        let target = |leave_out_leader: bool| {
            let mut reported: Vec<AgreementId> = statuses
                .iter()
                .filter(|&(&r, _)| !(leave_out_leader && self.is_leader(r)))
                .map(|(_, status)| status.last_agreement)
                .collect();
            reported.push(self.own_last);
            freshness::agreed_target(self.config.mode, self.config.f, &reported)
        };
        if statuses.keys().filter(|&&r| !self.is_leader(r)).count() >= needed {
            let without_leader = target(true);
            if without_leader > self.own_last {
                return without_leader;
            }
        }
        target(false)
    }

    fn is_peer(&self, from: ReplicaId) -> bool {
        (from as usize) < self.config.n && from != self.config.me && !self.proven.contains(&from)
    }

    /// Steps 3-4, then the first attempt.
    fn plan(&mut self, query: Query, out: &mut Vec<Action>) {
        let target = self.target_of(&query.statuses);
        if self.own_last >= target {
            self.finish(self.own_last, false, out);
            return;
        }
        out.push(Action::Target { round: query.round, agreement_id: target });
        let order = freshness::freshness_order(&query.statuses, target);
        let mut transfer = Box::new(Transfer {
            round: query.round,
            target,
            statuses: query.statuses,
            order,
            suspected: BTreeSet::new(),
            tried: BTreeSet::new(),
            asks: BTreeMap::new(),
            data_claims: BTreeMap::new(),
            truncated_seen: false,
            f1_tried: false,
            attempt: Attempt::empty(),
        });
        let step = match self.next_attempt(&mut transfer, out) {
            Ok(()) => self.drive(&mut transfer, out),
            Err(reason) => Step::RoundFailed(reason),
        };
        self.after_step(transfer, step, out);
    }

    fn after_step(&mut self, transfer: Box<Transfer>, step: Step, out: &mut Vec<Action>) {
        match step {
            Step::Continue => self.phase = Phase::Transfer(transfer),
            Step::Finished => {
                assert!(matches!(self.phase, Phase::Finished(_)), "finished means finished");
            }
            Step::RoundFailed(reason) => {
                let mut transfer = transfer;
                Self::cancel_attempt(&mut transfer.attempt, out);
                self.demoted = &transfer.suspected - &self.proven;
                let reason = if transfer.truncated_seen && reason == RestartReason::NoSeederLeft {
                    RestartReason::Truncated
                } else {
                    reason
                };
                self.fail_round(reason, out);
            }
        }
    }

    // ----- the transfer -----

    fn transfer_event(&mut self, t: &mut Transfer, event: Event, out: &mut Vec<Action>) -> Step {
        match event {
            Event::Tick { .. } => self.on_tick(t, out),
            Event::Message { from, msg } => {
                if self.is_peer(from) && msg.round() == t.round {
                    match msg {
                        Message::Hashes { checkpoint, checkpoint_hash, pieces, .. } => {
                            let claim = Claim { checkpoint, checkpoint_hash, pieces };
                            self.on_hashes(t, from, claim, out);
                        }
                        Message::Unavailable { asked, reason, .. } => {
                            self.on_unavailable(t, from, asked, reason, out)
                        }
                        // Late statuses, and requests that are the seeder side's business.
                        _ => {}
                    }
                }
            }
            Event::Progress { ticket } => {
                if let Some(job) = t.attempt.fetches.get_mut(&ticket) {
                    job.last_progress = self.now;
                }
            }
            Event::Fetched { ticket, outcome } => self.on_fetched(t, ticket, outcome, out),
            Event::Staged { ticket, outcome } => {
                if t.attempt.stage == Work::Pending(ticket) {
                    match outcome {
                        StageOutcome::Staged => t.attempt.stage = Work::Done,
                        StageOutcome::Rejected => {
                            let (payload, _) =
                                t.attempt.base_fetch.expect("a genesis stage is never rejected");
                            let from = t.attempt.fetches[&payload].from;
                            self.fail_seeder(t, from, Fault::Rejected, out);
                        }
                    }
                }
            }
            Event::Replayed { ticket, outcome } => {
                if t.attempt.replay_pending == Some(ticket) {
                    t.attempt.replay_pending = None;
                    let index = t.attempt.pieces.len() - 1 - t.attempt.replayed;
                    let (piece, payload) = t.attempt.pieces[index];
                    match outcome {
                        ReplayOutcome::Replayed { state_hash } => {
                            t.attempt.replayed += 1;
                            if let Some(hash) = state_hash {
                                t.attempt.computed.insert(piece.up_to, hash);
                            }
                        }
                        ReplayOutcome::Rejected => {
                            let from = t.attempt.fetches[&payload].from;
                            self.fail_seeder(t, from, Fault::Rejected, out);
                        }
                    }
                }
            }
            Event::Leader { .. } => unreachable!("handled before"),
        }
        self.drive(t, out)
    }

    fn on_tick(&mut self, t: &mut Transfer, out: &mut Vec<Action>) {
        let timeouts = self.config.timeouts;
        let mut mute = Vec::new();
        for (&replica, ask) in &mut t.asks {
            if !matches!(ask.state, AskState::Pending) {
                continue;
            }
            if self.now - ask.first_sent >= timeouts.answer_ticks {
                mute.push(replica);
            } else if self.now - ask.last_sent >= timeouts.resend_ticks {
                ask.last_sent = self.now;
                out.push(Action::Send {
                    to: replica,
                    msg: Message::HashRequest {
                        round: t.round,
                        checkpoint: ask.checkpoint,
                        pieces: ask.pieces.clone(),
                    },
                });
            }
        }
        for job in t.attempt.fetches.values() {
            if job.result.is_none() && self.now - job.last_progress >= timeouts.fetch_idle_ticks {
                mute.push(job.from);
            }
        }
        for replica in mute {
            self.fail_seeder(t, replica, Fault::Mute, out);
        }
    }

    fn on_hashes(
        &mut self,
        t: &mut Transfer,
        from: ReplicaId,
        claim: Claim,
        out: &mut Vec<Action>,
    ) {
        let Some(ask) = t.asks.get_mut(&from) else { return };
        // An answer to a request this replica was asked before, or a duplicate: ignored.
        if !matches!(ask.state, AskState::Pending) || !claim.covers(ask.checkpoint, &ask.pieces) {
            return;
        }
        ask.state = AskState::Answered(claim.clone());
        // The same replica's status named a hash for this checkpoint.
        let status_hash = t.statuses.get(&from).and_then(|s| s.checkpoint_hash(claim.checkpoint));
        if claim.checkpoint != AGREEMENT_ID_NONE && status_hash != claim.checkpoint_hash {
            self.fail_seeder(t, from, Fault::Equivocated, out);
            return;
        }
        if Self::contradicts_own_data(&t.attempt, from, &claim) {
            self.fail_seeder(t, from, Fault::Equivocated, out);
        }
    }

    /// Whether `claim` names, for a piece `from` sent in this attempt, another hash than
    /// the one its data had.
    fn contradicts_own_data(attempt: &Attempt, from: ReplicaId, claim: &Claim) -> bool {
        attempt.pieces.iter().any(|(piece, ticket)| {
            let job = &attempt.fetches[ticket];
            job.from == from
                && match (job.result, claim.piece_hash(*piece)) {
                    (Some(data), Some(claimed)) => data != claimed,
                    _ => false,
                }
        })
    }

    fn on_unavailable(
        &mut self,
        t: &mut Transfer,
        from: ReplicaId,
        asked: Asked,
        reason: Unavailable,
        out: &mut Vec<Action>,
    ) {
        let relevant = match asked {
            Asked::Hashes { checkpoint } => t.asks.get(&from).is_some_and(|ask| {
                matches!(ask.state, AskState::Pending) && ask.checkpoint == checkpoint
            }),
            Asked::Fetch { ticket, want } => t
                .attempt
                .fetches
                .get(&ticket)
                .is_some_and(|job| job.from == from && job.want == want && job.result.is_none()),
        };
        if relevant {
            if reason == Unavailable::Truncated {
                t.truncated_seen = true;
            }
            self.fail_seeder(t, from, Fault::Unavailable(reason), out);
        }
    }

    fn on_fetched(
        &mut self,
        t: &mut Transfer,
        ticket: Ticket,
        outcome: FetchOutcome,
        out: &mut Vec<Action>,
    ) {
        let Some(job) = t.attempt.fetches.get_mut(&ticket) else { return };
        if job.result.is_some() {
            return;
        }
        let from = job.from;
        match outcome {
            FetchOutcome::Received { hash } => {
                job.result = Some(hash);
                let want = job.want;
                match want {
                    Want::Checkpoint { agreement_id } => {
                        let (_, expect) =
                            t.attempt.base_fetch.expect("a checkpoint fetch is the base");
                        if hash != expect {
                            self.fail_seeder(
                                t,
                                from,
                                Fault::CheckpointMismatch { agreement_id },
                                out,
                            );
                        }
                    }
                    Want::Log(_) => {
                        let answered = match t.asks.get(&from) {
                            Some(Ask { state: AskState::Answered(claim), .. }) => {
                                Some(claim.clone())
                            }
                            _ => None,
                        };
                        if answered.is_some_and(|claim| {
                            Self::contradicts_own_data(&t.attempt, from, &claim)
                        }) {
                            self.fail_seeder(t, from, Fault::Equivocated, out);
                        }
                    }
                }
            }
            FetchOutcome::Unavailable(reason) => {
                if reason == Unavailable::Truncated {
                    t.truncated_seen = true;
                }
                self.fail_seeder(t, from, Fault::Unavailable(reason), out);
            }
            FetchOutcome::Disconnected => self.fail_seeder(t, from, Fault::Disconnected, out),
            FetchOutcome::Malformed => self.fail_seeder(t, from, Fault::Malformed, out),
        }
    }

    /// Names `replica` as failed: out of this round, and out of the transfer if proven.
    fn fail_seeder(
        &mut self,
        t: &mut Transfer,
        replica: ReplicaId,
        fault: Fault,
        out: &mut Vec<Action>,
    ) {
        if self.proven.contains(&replica) {
            return;
        }
        let newly = t.suspected.insert(replica);
        if fault.is_proof() {
            self.proven.insert(replica);
        }
        if newly || fault.is_proof() {
            out.push(Action::SeederFailed { replica, fault });
        }
        if let Some(ask) = t.asks.get_mut(&replica)
            && matches!(ask.state, AskState::Pending)
        {
            ask.state = AskState::Failed;
        }
    }

    /// Moves the transfer on as far as it can go now.
    fn drive(&mut self, t: &mut Transfer, out: &mut Vec<Action>) -> Step {
        // Each pass either returns or starts another attempt, and each attempt spends
        // a replica (or the f = 1 optimisation, once), so this ends.
        loop {
            let sources_failed = t
                .attempt
                .fetches
                .values()
                .any(|job| t.suspected.contains(&job.from) || self.proven.contains(&job.from));
            let verdict = if sources_failed { Verdict::Invalid } else { self.verdict(t) };
            match verdict {
                Verdict::Wait => {
                    self.issue_work(t, out);
                    return Step::Continue;
                }
                Verdict::Valid => {
                    self.blame_contradictions(t, out);
                    out.push(Action::Install { agreement_id: t.target });
                    self.finish(t.target, true, out);
                    return Step::Finished;
                }
                Verdict::Invalid => {
                    self.end_attempt(t, out);
                    if let Err(reason) = self.next_attempt(t, out) {
                        return Step::RoundFailed(reason);
                    }
                }
            }
        }
    }

    fn cancel_attempt(attempt: &mut Attempt, out: &mut Vec<Action>) {
        for (&ticket, job) in &attempt.fetches {
            if !job.local {
                out.push(Action::Cancel { ticket });
            }
        }
        *attempt = Attempt::empty();
    }

    /// Ends the current attempt: keeps a general provider's data as its V_r (step 9),
    /// drops the rest.
    fn end_attempt(&mut self, t: &mut Transfer, out: &mut Vec<Action>) {
        if let Kind::General { provider } = t.attempt.kind {
            let replica = t.order[provider].replica;
            let base_hash = match t.attempt.base_fetch {
                None => Some(None),
                Some((ticket, _)) => t.attempt.fetches[&ticket].result.map(Some),
            };
            let pieces: Option<Vec<(Piece, Hash)>> = t
                .attempt
                .pieces
                .iter()
                .map(|(piece, ticket)| t.attempt.fetches[ticket].result.map(|hash| (*piece, hash)))
                .collect();
            if let (Some(checkpoint_hash), Some(pieces), false) =
                (base_hash, pieces, self.proven.contains(&replica))
            {
                t.data_claims
                    .insert(replica, Claim { checkpoint: t.attempt.base, checkpoint_hash, pieces });
            }
        }
        if let Kind::F1 { .. } = t.attempt.kind {
            t.f1_tried = true;
        }
        Self::cancel_attempt(&mut t.attempt, out);
    }

    fn verdict(&self, t: &Transfer) -> Verdict {
        let a = &t.attempt;
        let replayed_all = a.stage == Work::Done && a.replayed == a.pieces.len();
        match a.kind {
            Kind::General { provider } => {
                let (mut matched, mut open) = (0, 0);
                for i in 0..provider {
                    match self.standing(t, i, true) {
                        Standing::Match => matched += 1,
                        Standing::Pending => open += 1,
                        Standing::Absent | Standing::Mismatch => {}
                    }
                }
                if matched + open < self.config.f {
                    Verdict::Invalid
                } else if replayed_all && matched >= self.config.f {
                    Verdict::Valid
                } else {
                    Verdict::Wait
                }
            }
            Kind::F1 { first, second } => {
                let pieces: Vec<Piece> = a.pieces.iter().map(|(piece, _)| *piece).collect();
                let first_claim = self
                    .answer(t, t.order[first].replica)
                    .filter(|c| c.covers(t.order[first].base.agreement_id, &pieces[..1]));
                let second_claim = self
                    .answer(t, t.order[second].replica)
                    .filter(|c| c.covers(t.order[second].base.agreement_id, &pieces));
                // A 1st or 2nd that will not answer ends the attempt (seed 17004: with no
                // checkpoint and an empty L_2 the 2nd sends hashes only, so no fetch of
                // its fails when it goes mute).
                let gone = |claim: Option<&Claim>, position: usize| {
                    claim.is_none() && self.is_absent(t, t.order[position].replica)
                };
                if gone(first_claim, first) || gone(second_claim, second) {
                    return Verdict::Invalid;
                }
                let (Some(first_claim), Some(second_claim)) = (first_claim, second_claim) else {
                    return Verdict::Wait;
                };
                let mut known = true;
                // HL_1 and HL_2 from the 2nd against the pieces the others sent.
                for ((_, ticket), (_, claimed)) in a.pieces.iter().zip(&second_claim.pieces) {
                    match a.fetches[ticket].result {
                        Some(data) if data != *claimed => return Verdict::Invalid,
                        Some(_) => {}
                        None => known = false,
                    }
                }
                // HC_1 from the 1st against the staged state after C_2 + L_2.
                let point = t.order[first].base.agreement_id;
                if point != AGREEMENT_ID_NONE {
                    match a.computed.get(&point) {
                        Some(hash) if Some(*hash) != first_claim.checkpoint_hash => {
                            return Verdict::Invalid;
                        }
                        Some(_) => {}
                        None => known = false,
                    }
                }
                if known && replayed_all { Verdict::Valid } else { Verdict::Wait }
            }
            Kind::Crash => {
                if replayed_all {
                    Verdict::Valid
                } else {
                    Verdict::Wait
                }
            }
            Kind::Pbft { .. } => {
                let need = match self.config.mode {
                    Mode::Bft => self.config.f,
                    Mode::Crash => 0,
                };
                let (piece, ticket) = a.pieces[0];
                let data = a.fetches[&ticket].result;
                let (mut matched, mut open) = (0, 0);
                for &hasher in &a.hashers {
                    match (self.answer(t, hasher), data) {
                        (Some(claim), Some(data)) => {
                            if claim.piece_hash(piece) == Some(data) {
                                matched += 1;
                            }
                        }
                        (Some(_), None) => open += 1,
                        (None, _) => {
                            if !self.is_absent(t, hasher) {
                                open += 1;
                            }
                        }
                    }
                }
                if matched + open < need {
                    Verdict::Invalid
                } else if replayed_all && matched >= need {
                    Verdict::Valid
                } else {
                    Verdict::Wait
                }
            }
        }
    }

    /// The answer `replica` gave to its current hash request, if any.
    fn answer<'t>(&self, t: &'t Transfer, replica: ReplicaId) -> Option<&'t Claim> {
        match t.asks.get(&replica) {
            Some(Ask { state: AskState::Answered(claim), .. })
                if !self.proven.contains(&replica) =>
            {
                Some(claim)
            }
            _ => None,
        }
    }

    /// A replica that will give no (more) answer this round.
    fn is_absent(&self, t: &Transfer, replica: ReplicaId) -> bool {
        self.proven.contains(&replica)
            || t.suspected.contains(&replica)
            || !t.asks.get(&replica).is_some_and(|ask| !matches!(ask.state, AskState::Failed))
    }

    /// V_i for position `i`: what its replica answered for (b_i, pieces 0..=i), or what
    /// its data was when it failed as a provider.
    fn vector<'t>(&self, t: &'t Transfer, i: usize) -> Option<&'t Claim> {
        let replica = t.order[i].replica;
        if self.proven.contains(&replica) {
            return None;
        }
        let checkpoint = t.order[i].base.agreement_id;
        let pieces: Vec<Piece> = t.attempt.pieces[..=i].iter().map(|(piece, _)| *piece).collect();
        if let Some(claim) = t.data_claims.get(&replica)
            && claim.covers(checkpoint, &pieces)
        {
            return Some(claim);
        }
        self.answer(t, replica).filter(|claim| claim.covers(checkpoint, &pieces))
    }

    /// Validator `i`'s standing against the current provider's data (step 12c);
    /// without `with_state`, its pieces only.
    fn standing(&self, t: &Transfer, i: usize, with_state: bool) -> Standing {
        let a = &t.attempt;
        let Some(vector) = self.vector(t, i) else {
            let replica = t.order[i].replica;
            let waiting = !self.proven.contains(&replica)
                && !t.suspected.contains(&replica)
                && t.asks.get(&replica).is_some_and(|ask| matches!(ask.state, AskState::Pending));
            return if waiting { Standing::Pending } else { Standing::Absent };
        };
        let mut known = true;
        for (j, (_, claimed)) in vector.pieces.iter().enumerate() {
            match a.fetches[&a.pieces[j].1].result {
                Some(data) if data != *claimed => return Standing::Mismatch,
                Some(_) => {}
                None => known = false,
            }
        }
        if with_state && vector.checkpoint != AGREEMENT_ID_NONE {
            match a.computed.get(&vector.checkpoint) {
                Some(hash) if Some(*hash) != vector.checkpoint_hash => return Standing::Mismatch,
                Some(_) => {}
                None => known = false,
            }
        }
        if known { Standing::Match } else { Standing::Pending }
    }

    /// Whether the staged state's hash at `point` can still decide a validation.
    fn hash_wanted(&self, t: &Transfer, point: AgreementId) -> bool {
        if point == AGREEMENT_ID_NONE {
            return false;
        }
        match t.attempt.kind {
            Kind::General { provider } => (0..provider).any(|i| {
                t.order[i].base.agreement_id == point
                    && matches!(self.standing(t, i, false), Standing::Match | Standing::Pending)
            }),
            Kind::F1 { first, .. } => t.order[first].base.agreement_id == point,
            Kind::Crash | Kind::Pbft { .. } => false,
        }
    }

    /// Issues the stage or the next replay when their inputs are in.
    fn issue_work(&mut self, t: &mut Transfer, out: &mut Vec<Action>) {
        if t.attempt.stage == Work::NotStarted {
            let base = match t.attempt.base_fetch {
                None => Some(StageBase::Genesis),
                Some((payload, expect)) => match t.attempt.fetches[&payload].result {
                    Some(hash) if hash == expect => {
                        Some(StageBase::Fetched { payload, content_hash: hash })
                    }
                    _ => None,
                },
            };
            if let Some(base) = base {
                let ticket = self.ticket();
                t.attempt.stage = Work::Pending(ticket);
                out.push(Action::Stage { ticket, agreement_id: t.attempt.base, base });
            }
            return;
        }
        if t.attempt.stage != Work::Done
            || t.attempt.replay_pending.is_some()
            || t.attempt.replayed == t.attempt.pieces.len()
        {
            return;
        }
        let index = t.attempt.pieces.len() - 1 - t.attempt.replayed;
        let (piece, fetched) = t.attempt.pieces[index];
        let job = &t.attempt.fetches[&fetched];
        if job.result.is_none() {
            return;
        }
        let payload = (!job.local).then_some(fetched);
        let hash_after = self.hash_wanted(t, piece.up_to);
        let ticket = self.ticket();
        t.attempt.replay_pending = Some(ticket);
        out.push(Action::Replay { ticket, payload, piece, hash_after });
    }

    fn ticket(&mut self) -> Ticket {
        let ticket = self.next_ticket;
        self.next_ticket += 1;
        ticket
    }

    // ----- choosing attempts -----

    fn next_attempt(
        &mut self,
        t: &mut Transfer,
        out: &mut Vec<Action>,
    ) -> Result<(), RestartReason> {
        match (self.config.variant, self.config.mode) {
            (Variant::PbftLike, _) => self.start_pbft(t, out),
            (Variant::Cst, Mode::Crash) => self.start_crash(t, out),
            (Variant::Cst, Mode::Bft) => {
                if self.config.f == 1 && self.config.f1_optimisation && !t.f1_tried {
                    if self.start_f1(t, out) {
                        return Ok(());
                    }
                    t.f1_tried = true;
                }
                self.start_general(t, out)
            }
        }
    }

    /// Whether position `i`'s replica may still send data this round.
    fn can_send(&self, t: &Transfer, i: usize) -> bool {
        let replica = t.order[i].replica;
        !self.proven.contains(&replica) && !t.suspected.contains(&replica)
    }

    fn is_leader(&self, replica: ReplicaId) -> bool {
        self.config.leader == Some(replica)
    }

    /// How reluctantly `replica` is chosen to send data: the leader last, before it
    /// those that failed in the last round.
    fn reluctance(&self, replica: ReplicaId) -> (bool, bool) {
        (self.is_leader(replica), self.demoted.contains(&replica))
    }

    /// The positions that may send data, least reluctant first (each group in order).
    fn senders(&self, t: &Transfer) -> Vec<usize> {
        let mut usable: Vec<usize> = (0..t.order.len()).filter(|&i| self.can_send(t, i)).collect();
        usable.sort_by_key(|&i| self.reluctance(t.order[i].replica));
        usable
    }

    /// Asks `replica` for V = (HC at `checkpoint`, hashes of `pieces`) unless it was
    /// asked exactly that this round already.
    fn ask(
        &mut self,
        t: &mut Transfer,
        replica: ReplicaId,
        checkpoint: AgreementId,
        pieces: Vec<Piece>,
        out: &mut Vec<Action>,
    ) {
        if t.asks
            .get(&replica)
            .is_some_and(|ask| ask.checkpoint == checkpoint && ask.pieces == pieces)
        {
            return;
        }
        out.push(Action::Send {
            to: replica,
            msg: Message::HashRequest { round: t.round, checkpoint, pieces: pieces.clone() },
        });
        t.asks.insert(
            replica,
            Ask {
                checkpoint,
                pieces,
                first_sent: self.now,
                last_sent: self.now,
                state: AskState::Pending,
            },
        );
    }

    /// Fetches `want` from `from`. An empty piece is not fetched (it has no batches, its
    /// hash is the canonical empty-piece hash): two replicas with the same base give
    /// two equal empty pieces, which a seeder would take for one request and its resend.
    fn fetch(
        &mut self,
        t: &mut Transfer,
        from: ReplicaId,
        want: Want,
        out: &mut Vec<Action>,
    ) -> Ticket {
        let ticket = self.ticket();
        let empty = match want {
            Want::Log(piece) if piece.is_empty() => {
                Some(crate::piece::piece_hash(piece, []).expect("an empty piece is whole"))
            }
            _ => None,
        };
        if empty.is_none() {
            out.push(Action::Fetch { ticket, from, round: t.round, want });
        }
        t.attempt.fetches.insert(
            ticket,
            FetchJob { from, want, last_progress: self.now, result: empty, local: empty.is_some() },
        );
        assert!(t.attempt.fetches.len() <= PIECES_MAX + 1, "fetches per attempt are bounded");
        ticket
    }

    /// Fetches the base checkpoint (unless the genesis) from `from`.
    fn fetch_base(
        &mut self,
        t: &mut Transfer,
        position: usize,
        from: ReplicaId,
        out: &mut Vec<Action>,
    ) {
        let base = t.order[position].base;
        t.attempt.base = base.agreement_id;
        t.attempt.base_fetch = base.content_hash.map(|expect| {
            let want = Want::Checkpoint { agreement_id: base.agreement_id };
            (self.fetch(t, from, want, out), expect)
        });
    }

    /// The f = 1 optimisation; false if fewer than two replicas can take part.
    fn start_f1(&mut self, t: &mut Transfer, out: &mut Vec<Action>) -> bool {
        // The two freshest that may send, in freshness order; never the leader (without
        // two others the general protocol, where the leader may send hashes, serves).
        let senders: Vec<usize> =
            self.senders(t).into_iter().filter(|&i| !self.is_leader(t.order[i].replica)).collect();
        if senders.len() < 2 {
            return false;
        }
        let (first, second) = (senders[0].min(senders[1]), senders[0].max(senders[1]));
        let b_first = t.order[first].base.agreement_id;
        let b_second = t.order[second].base.agreement_id;
        let piece_1 = Piece::new(b_first, t.target);
        let piece_2 = Piece::new(b_second, b_first);
        let (first_replica, second_replica) = (t.order[first].replica, t.order[second].replica);
        // L_2 from a third replica when one that is not the leader can (its base is no
        // newer than the 2nd's, so its log covers L_2), else from the 1st if its log
        // reaches back that far, else from the 2nd.
        let third = senders[2..].iter().find(|&&i| i > second).map(|&i| t.order[i].replica);
        let first_covers = t.statuses[&first_replica].log_covers(piece_2);
        let l2_from = third.unwrap_or(if first_covers { first_replica } else { second_replica });

        t.attempt = Attempt::empty();
        t.attempt.kind = Kind::F1 { first, second };
        self.ask(t, first_replica, b_first, vec![piece_1], out);
        self.ask(t, second_replica, b_second, vec![piece_1, piece_2], out);
        self.fetch_base(t, second, second_replica, out);
        let l1 = self.fetch(t, first_replica, Want::Log(piece_1), out);
        let l2 = self.fetch(t, l2_from, Want::Log(piece_2), out);
        t.attempt.pieces = vec![(piece_1, l1), (piece_2, l2)];
        true
    }

    /// Figure 6 from step 8 with the next provider.
    fn start_general(
        &mut self,
        t: &mut Transfer,
        out: &mut Vec<Action>,
    ) -> Result<(), RestartReason> {
        let f = self.config.f;
        if t.order.len() < f + 1 {
            return Err(RestartReason::TooFewCandidates { have: t.order.len(), need: f + 1 });
        }
        // A validator can still vouch if not proven faulty and either it has not failed
        // this round or its data as a failed provider is its V_i.
        let present: Vec<bool> = t
            .order
            .iter()
            .map(|position| {
                let replica = position.replica;
                !self.proven.contains(&replica)
                    && (t.data_claims.contains_key(&replica) || !t.suspected.contains(&replica))
            })
            .collect();
        let candidates: Vec<usize> = (f..t.order.len())
            .filter(|&p| self.can_send(t, p) && !t.tried.contains(&t.order[p].replica))
            .filter(|&p| present[..p].iter().filter(|&&here| here).count() >= f)
            .collect();
        let provider = candidates
            .iter()
            .copied()
            .min_by_key(|&p| self.reluctance(t.order[p].replica))
            .ok_or(RestartReason::NoSeederLeft)?;
        let replica = t.order[provider].replica;
        t.tried.insert(replica);
        t.attempt = Attempt::empty();
        t.attempt.kind = Kind::General { provider };
        let all_pieces = freshness::pieces(&t.order[..=provider], t.target);
        // Step 6: V_i from the validators (positions before the provider).
        for i in 0..provider {
            let validator = t.order[i].replica;
            let pieces = all_pieces[..=i].to_vec();
            let checkpoint = t.order[i].base.agreement_id;
            let has_data_claim = t
                .data_claims
                .get(&validator)
                .is_some_and(|claim| claim.covers(checkpoint, &pieces));
            if present[i] && !has_data_claim && !t.suspected.contains(&validator) {
                self.ask(t, validator, checkpoint, pieces, out);
            }
        }
        // Step 8: S_r = (L_1..L_r, C_r) from the provider.
        self.fetch_base(t, provider, replica, out);
        for piece in all_pieces {
            let ticket = self.fetch(t, replica, Want::Log(piece), out);
            t.attempt.pieces.push((piece, ticket));
        }
        Ok(())
    }

    /// Crash mode: the freshest replica's checkpoint; the log from it, or with f = 1
    /// from the next freshest.
    fn start_crash(
        &mut self,
        t: &mut Transfer,
        out: &mut Vec<Action>,
    ) -> Result<(), RestartReason> {
        let senders = self.senders(t);
        let Some(&first) = senders.first() else {
            return Err(if t.order.is_empty() {
                RestartReason::TooFewCandidates { have: 0, need: 1 }
            } else {
                RestartReason::NoSeederLeft
            });
        };
        let piece = Piece::new(t.order[first].base.agreement_id, t.target);
        let split = self.config.f == 1 && self.config.f1_optimisation;
        let log_from = senders
            .iter()
            .copied()
            .filter(|&i| split && i != first && !self.is_leader(t.order[i].replica))
            .find(|&i| t.statuses[&t.order[i].replica].log_covers(piece))
            .unwrap_or(first);
        t.attempt = Attempt::empty();
        t.attempt.kind = Kind::Crash;
        self.fetch_base(t, first, t.order[first].replica, out);
        let ticket = self.fetch(t, t.order[log_from].replica, Want::Log(piece), out);
        t.attempt.pieces = vec![(piece, ticket)];
        Ok(())
    }

    /// The PBFT-like baseline: the next seeder of the agreed checkpoint.
    fn start_pbft(&mut self, t: &mut Transfer, out: &mut Vec<Action>) -> Result<(), RestartReason> {
        let w = self.config.mode.weak_quorum(self.config.f);
        let (base, agreed) = match freshness::agreed_checkpoint(&t.statuses, t.target, w) {
            Some((agreement_id, hash, _)) => (agreement_id, Some(hash)),
            // Without one, the genesis (every replica knows it), if logs reach it.
            None => (AGREEMENT_ID_NONE, None),
        };
        let piece = Piece::new(base, t.target);
        let holds = |status: &Status| {
            status.log_covers(piece)
                && (base == AGREEMENT_ID_NONE || status.checkpoint_hash(base) == agreed)
        };
        if !t.statuses.values().any(holds) {
            return Err(RestartReason::NoAgreedCheckpoint);
        }
        let usable: Vec<ReplicaId> = t
            .statuses
            .iter()
            .filter(|&(r, status)| {
                holds(status) && !self.proven.contains(r) && !t.suspected.contains(r)
            })
            .map(|(r, _)| *r)
            .collect();
        // Seeders in id order after this replica (so leechers spread), non-leaders first.
        let n = self.config.n as ReplicaId;
        let mut seeders: Vec<ReplicaId> =
            (1..n).map(|k| (self.config.me + k) % n).filter(|r| usable.contains(r)).collect();
        seeders.sort_by_key(|&r| self.reluctance(r));
        let Some(seeder) = seeders.into_iter().find(|r| !t.tried.contains(r)) else {
            return Err(RestartReason::NoSeederLeft);
        };
        let (hashers, need) = match self.config.mode {
            Mode::Crash => (Vec::new(), 0),
            Mode::Bft => {
                (usable.iter().copied().filter(|&r| r != seeder).collect::<Vec<_>>(), self.config.f)
            }
        };
        if hashers.len() < need {
            return Err(RestartReason::TooFewCandidates {
                have: hashers.len() + 1,
                need: need + 1,
            });
        }
        t.tried.insert(seeder);
        t.attempt = Attempt::empty();
        t.attempt.kind = Kind::Pbft { agreed: agreed.unwrap_or_default() };
        for &hasher in &hashers {
            self.ask(t, hasher, base, vec![piece], out);
        }
        t.attempt.hashers = hashers;
        t.attempt.base = base;
        t.attempt.base_fetch = agreed.map(|expect| {
            (self.fetch(t, seeder, Want::Checkpoint { agreement_id: base }, out), expect)
        });
        let ticket = self.fetch(t, seeder, Want::Log(piece), out);
        t.attempt.pieces = vec![(piece, ticket)];
        Ok(())
    }

    // ----- after validation -----

    /// Names every replica whose claims contradict what was validated. Only what at
    /// least one correct replica surely vouched for counts: any of the replicas that
    /// validated the state may be the correct one, so only what all of them vouched for.
    fn blame_contradictions(&mut self, t: &mut Transfer, out: &mut Vec<Action>) {
        let a = &t.attempt;
        let data = |j: usize| a.fetches[&a.pieces[j].1].result.expect("validated data is in");
        let mut pieces: BTreeMap<Piece, Hash> = BTreeMap::new();
        let mut states: BTreeMap<AgreementId, Hash> = BTreeMap::new();
        match a.kind {
            Kind::General { provider } => {
                // Some matched validator (or the provider) is correct; the one at the
                // smallest position vouches for the least: pieces 0..=i and the states
                // at bases 0..=i. Whichever is correct vouches for at least that.
                if let Some(i) =
                    (0..provider).find(|&i| self.standing(t, i, true) == Standing::Match)
                {
                    for j in 0..=i {
                        pieces.insert(a.pieces[j].0, data(j));
                        let point = t.order[j].base.agreement_id;
                        if let Some(hash) = a.computed.get(&point) {
                            states.insert(point, *hash);
                        }
                    }
                }
            }
            Kind::F1 { first, .. } => {
                for j in 0..a.pieces.len() {
                    pieces.insert(a.pieces[j].0, data(j));
                }
                let point = t.order[first].base.agreement_id;
                if let Some(hash) = a.computed.get(&point) {
                    states.insert(point, *hash);
                }
            }
            Kind::Pbft { agreed, .. } => {
                pieces.insert(a.pieces[0].0, data(0));
                if a.base != AGREEMENT_ID_NONE {
                    states.insert(a.base, agreed);
                }
            }
            // Nobody lies in crash mode.
            Kind::Crash => return,
        }
        let contradicts = |claim: &Claim| {
            claim.pieces.iter().any(|(piece, hash)| pieces.get(piece).is_some_and(|h| h != hash))
                || (claim.checkpoint != AGREEMENT_ID_NONE
                    && states
                        .get(&claim.checkpoint)
                        .is_some_and(|h| Some(*h) != claim.checkpoint_hash))
        };
        let mut liars: BTreeSet<ReplicaId> = BTreeSet::new();
        for (&replica, ask) in &t.asks {
            if let AskState::Answered(claim) = &ask.state
                && contradicts(claim)
            {
                liars.insert(replica);
            }
        }
        for (&replica, claim) in &t.data_claims {
            if contradicts(claim) {
                liars.insert(replica);
            }
        }
        for (&replica, status) in &t.statuses {
            if status
                .checkpoints
                .iter()
                .any(|c| states.get(&c.agreement_id).is_some_and(|h| *h != c.content_hash))
            {
                liars.insert(replica);
            }
        }
        for replica in liars {
            self.fail_seeder(t, replica, Fault::Contradicted, out);
        }
    }

    fn check_invariants(&self) {
        assert!(self.round <= self.config.rounds_max);
        assert!(!self.proven.contains(&self.config.me), "the leecher never blames itself");
        assert!(self.proven.iter().all(|&r| (r as usize) < self.config.n));
        match &self.phase {
            Phase::Querying(query) => {
                assert!(query.statuses.len() < self.config.n);
                assert!(!query.statuses.contains_key(&self.config.me));
            }
            Phase::Transfer(t) => {
                let a = &t.attempt;
                assert!(t.target > self.own_last, "a transfer only when behind");
                assert!(t.asks.len() < self.config.n && t.statuses.len() < self.config.n);
                assert!(a.fetches.len() <= PIECES_MAX + 1);
                assert!(a.replayed <= a.pieces.len());
                assert!(a.stage == Work::Done || (a.replayed == 0 && a.replay_pending.is_none()));
                if let Work::Pending(_) | Work::Done = a.stage
                    && let Some((payload, expect)) = a.base_fetch
                {
                    assert_eq!(
                        a.fetches[&payload].result,
                        Some(expect),
                        "staged only once verified"
                    );
                }
                // The pieces chain from the base to the target, newest first.
                if let Some((newest, _)) = a.pieces.first() {
                    assert_eq!(newest.up_to, t.target);
                    assert_eq!(a.pieces.last().map(|(p, _)| p.after), Some(a.base));
                    assert!(a.pieces.windows(2).all(|w| w[0].0.after == w[1].0.up_to));
                }
                debug_assert!(a.computed.keys().all(|&k| k <= t.target && k >= a.base));
            }
            Phase::NotStarted | Phase::Backoff { .. } | Phase::Finished(_) => {}
        }
    }
}

impl Attempt {
    fn empty() -> Self {
        Self {
            kind: Kind::Crash,
            base: AGREEMENT_ID_NONE,
            base_fetch: None,
            pieces: Vec::new(),
            fetches: BTreeMap::new(),
            hashers: Vec::new(),
            stage: Work::NotStarted,
            replayed: 0,
            replay_pending: None,
            computed: BTreeMap::new(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::message::CheckpointClaim;
    use crate::piece::piece_hash;

    const SESSION: u64 = 9;
    const ROUND_1: RoundId = RoundId { session: SESSION, round: 1 };

    fn status(last: AgreementId, checkpoints: &[(AgreementId, u8)]) -> Status {
        let log_first = checkpoints.first().map_or(1, |(c, _)| c + 1);
        Status {
            last_agreement: last,
            log_first,
            checkpoints: checkpoints
                .iter()
                .map(|&(agreement_id, h)| CheckpointClaim { agreement_id, content_hash: [h; 32] })
                .collect(),
        }
    }

    fn step(leecher: &mut Leecher, event: Event) -> Vec<Action> {
        let mut out = Vec::new();
        leecher.handle(event, &mut out);
        out
    }

    fn hashes(piece: Piece, seed: u8) -> Hash {
        let batches: Vec<(AgreementId, Hash)> =
            (piece.after + 1..=piece.up_to).map(|k| (k, [seed ^ k as u8; 32])).collect();
        piece_hash(piece, batches.iter().map(|(k, h)| (*k, h))).expect("whole")
    }

    /// The f = 1 optimisation, action by action: what the engine sees.
    #[test]
    fn an_f1_transfer_emits_exactly_these_actions() {
        let config = LeecherConfig::new(Mode::Bft, 4, 0, SESSION);
        let mut leecher = Leecher::new(config, 5).expect("valid");
        let mut out = Vec::new();
        leecher.start(0, &mut out);
        let query = Message::Query { round: ROUND_1 };
        assert_eq!(
            out,
            (1..4).map(|to| Action::Send { to, msg: query.clone() }).collect::<Vec<_>>()
        );
        // Replica 1 checkpointed at 90, replica 2 at 80, replica 3 at 70; all at 100.
        let statuses = [
            (1, status(100, &[(60, 6), (90, 9)])),
            (2, status(100, &[(50, 5), (80, 8)])),
            (3, status(100, &[(40, 4), (70, 7)])),
        ];
        let mut out = Vec::new();
        for (from, status) in statuses {
            out.extend(step(
                &mut leecher,
                Event::Message { from, msg: Message::Status { round: ROUND_1, status } },
            ));
        }
        let (l1, l2) = (Piece::new(90, 100), Piece::new(80, 90));
        assert_eq!(
            out,
            vec![
                Action::Target { round: ROUND_1, agreement_id: 100 },
                // The 1st: HL_1 and HC_1; the 2nd: HL_1, HL_2 and HC_2.
                Action::Send {
                    to: 1,
                    msg: Message::HashRequest { round: ROUND_1, checkpoint: 90, pieces: vec![l1] }
                },
                Action::Send {
                    to: 2,
                    msg: Message::HashRequest {
                        round: ROUND_1,
                        checkpoint: 80,
                        pieces: vec![l1, l2]
                    }
                },
                // C_2 from the 2nd, L_1 from the 1st, L_2 from the 3rd.
                Action::Fetch {
                    ticket: 1,
                    from: 2,
                    round: ROUND_1,
                    want: Want::Checkpoint { agreement_id: 80 }
                },
                Action::Fetch { ticket: 2, from: 1, round: ROUND_1, want: Want::Log(l1) },
                Action::Fetch { ticket: 3, from: 3, round: ROUND_1, want: Want::Log(l2) },
            ]
        );
        let (hl1, hl2) = (hashes(l1, 1), hashes(l2, 1));
        let answers = [
            (
                1,
                Message::Hashes {
                    round: ROUND_1,
                    checkpoint: 90,
                    checkpoint_hash: Some([9; 32]),
                    pieces: vec![(l1, hl1)],
                },
            ),
            (
                2,
                Message::Hashes {
                    round: ROUND_1,
                    checkpoint: 80,
                    checkpoint_hash: Some([8; 32]),
                    pieces: vec![(l1, hl1), (l2, hl2)],
                },
            ),
        ];
        for (from, msg) in answers {
            assert!(step(&mut leecher, Event::Message { from, msg }).is_empty());
        }
        // Pieces first: nothing to do until the checkpoint is in.
        assert!(
            step(
                &mut leecher,
                Event::Fetched { ticket: 2, outcome: FetchOutcome::Received { hash: hl1 } }
            )
            .is_empty()
        );
        assert!(
            step(
                &mut leecher,
                Event::Fetched { ticket: 3, outcome: FetchOutcome::Received { hash: hl2 } }
            )
            .is_empty()
        );
        // The checkpoint's bytes hash to the 2nd's claim: staged.
        assert_eq!(
            step(
                &mut leecher,
                Event::Fetched { ticket: 1, outcome: FetchOutcome::Received { hash: [8; 32] } }
            ),
            vec![Action::Stage {
                ticket: 4,
                agreement_id: 80,
                base: StageBase::Fetched { payload: 1, content_hash: [8; 32] }
            }]
        );
        // L_2 then the state's hash at 90, compared with the 1st's HC_1.
        assert_eq!(
            step(&mut leecher, Event::Staged { ticket: 4, outcome: StageOutcome::Staged }),
            vec![Action::Replay { ticket: 5, payload: Some(3), piece: l2, hash_after: true }]
        );
        assert_eq!(
            step(
                &mut leecher,
                Event::Replayed {
                    ticket: 5,
                    outcome: ReplayOutcome::Replayed { state_hash: Some([9; 32]) }
                }
            ),
            vec![Action::Replay { ticket: 6, payload: Some(2), piece: l1, hash_after: false }]
        );
        assert_eq!(
            step(
                &mut leecher,
                Event::Replayed {
                    ticket: 6,
                    outcome: ReplayOutcome::Replayed { state_hash: None }
                }
            ),
            vec![
                Action::Install { agreement_id: 100 },
                Action::Done { agreement_id: 100, transferred: true }
            ]
        );
        assert_eq!(leecher.outcome(), Some(Outcome::Done { agreement_id: 100, transferred: true }));
        // Anything later is ignored.
        assert!(step(&mut leecher, Event::Tick { now: 1_000 }).is_empty());
    }

    #[test]
    fn a_wrong_intermediate_hash_installs_nothing_and_falls_back_to_the_general_protocol() {
        let config = LeecherConfig::new(Mode::Bft, 4, 0, SESSION);
        let mut leecher = Leecher::new(config, 5).expect("valid");
        leecher.start(0, &mut Vec::new());
        for (from, status) in [
            (1, status(100, &[(60, 6), (90, 9)])),
            (2, status(100, &[(50, 5), (80, 8)])),
            (3, status(100, &[(40, 4), (70, 7)])),
        ] {
            step(
                &mut leecher,
                Event::Message { from, msg: Message::Status { round: ROUND_1, status } },
            );
        }
        let (l1, l2) = (Piece::new(90, 100), Piece::new(80, 90));
        let (hl1, hl2) = (hashes(l1, 1), hashes(l2, 1));
        step(
            &mut leecher,
            Event::Message {
                from: 1,
                msg: Message::Hashes {
                    round: ROUND_1,
                    checkpoint: 90,
                    checkpoint_hash: Some([9; 32]),
                    pieces: vec![(l1, hl1)],
                },
            },
        );
        step(
            &mut leecher,
            Event::Message {
                from: 2,
                msg: Message::Hashes {
                    round: ROUND_1,
                    checkpoint: 80,
                    checkpoint_hash: Some([8; 32]),
                    pieces: vec![(l1, hl1), (l2, hl2)],
                },
            },
        );
        step(
            &mut leecher,
            Event::Fetched { ticket: 2, outcome: FetchOutcome::Received { hash: hl1 } },
        );
        step(
            &mut leecher,
            Event::Fetched { ticket: 3, outcome: FetchOutcome::Received { hash: hl2 } },
        );
        step(
            &mut leecher,
            Event::Fetched { ticket: 1, outcome: FetchOutcome::Received { hash: [8; 32] } },
        );
        step(&mut leecher, Event::Staged { ticket: 4, outcome: StageOutcome::Staged });
        // C_2 + L_2 does not hash to the 1st's HC_1: the optimisation's round fails and
        // the general protocol takes the state from the 2nd (position f), validated by
        // the 1st (whose answer is reused): C_2, L_1, L_2 fetched again from the 2nd.
        let out = step(
            &mut leecher,
            Event::Replayed {
                ticket: 5,
                outcome: ReplayOutcome::Replayed { state_hash: Some([0xEE; 32]) },
            },
        );
        assert!(!out.iter().any(|a| matches!(a, Action::Install { .. } | Action::Done { .. })));
        let fetches: Vec<(ReplicaId, Want)> = out
            .iter()
            .filter_map(|a| match a {
                Action::Fetch { from, want, .. } => Some((*from, *want)),
                _ => None,
            })
            .collect();
        assert_eq!(
            fetches,
            vec![
                (2, Want::Checkpoint { agreement_id: 80 }),
                (2, Want::Log(l1)),
                (2, Want::Log(l2))
            ]
        );
        assert!(
            out.contains(&Action::Cancel { ticket: 1 })
                && out.contains(&Action::Cancel { ticket: 3 })
        );
        assert!(
            !out.iter().any(|a| matches!(a, Action::Send { msg: Message::HashRequest { .. }, .. }))
        );
    }

    /// Simulator seed 18348 (bft, n = 4): replicas 0 and 1 both fell behind every window
    /// at 19, the leader (2) and replica 3 are at 31. Leaving the leader out made the
    /// other laggard's 19 the target: each leecher installed what it had, found itself
    /// behind again and transferred again, forever. The leader counts when leaving it
    /// out gives nothing newer; the leecher with nothing of its own still leaves it out.
    #[test]
    fn a_lagging_non_leader_does_not_hold_the_target_at_the_leechers_own_state() {
        let statuses = [
            (1, status(19, &[(10, 1)])),
            (2, status(31, &[(20, 2), (28, 3)])),
            (3, status(31, &[(18, 4), (25, 5)])),
        ];
        let run = |own_last: AgreementId| {
            let mut config = LeecherConfig::new(Mode::Bft, 4, 0, SESSION);
            config.leader = Some(2);
            let mut leecher = Leecher::new(config, own_last).expect("valid");
            let mut out = Vec::new();
            leecher.start(0, &mut out);
            for (from, status) in statuses.clone() {
                let msg = Message::Status { round: ROUND_1, status };
                out.extend(step(&mut leecher, Event::Message { from, msg }));
            }
            for now in 1..=2 * Timeouts::default().answer_ticks {
                out.extend(step(&mut leecher, Event::Tick { now }));
            }
            let targets: Vec<AgreementId> = out
                .iter()
                .filter_map(|a| match a {
                    Action::Target { agreement_id, .. } => Some(*agreement_id),
                    _ => None,
                })
                .collect();
            let done = out.iter().any(|a| matches!(a, Action::Done { .. }));
            (targets, done)
        };
        assert_eq!(run(19), (vec![31], false), "behind at 19: the target passes it");
        assert_eq!(run(0), (vec![19], false), "nothing of its own: 19 without the leader");
    }

    /// Simulator seed 17004 (bft, n = 4, a crash of all): no replica had checkpointed,
    /// so the f = 1 optimisation's 2nd replica sends nothing but hashes (C_2 is the
    /// genesis, L_2 empty). It crashed for good: its hash request timed out, and the
    /// attempt waited for its answer forever. A 1st or 2nd that will not answer ends
    /// the attempt, and the general protocol serves from the replicas that are left.
    #[test]
    fn an_f1_attempt_whose_hash_only_replica_is_mute_moves_on() {
        let mut config = LeecherConfig::new(Mode::Bft, 4, 2, SESSION);
        config.leader = Some(0);
        let mut leecher = Leecher::new(config, 0).expect("valid");
        let round = |out: &[Action]| {
            out.iter().find_map(|a| match a {
                Action::Target { round, .. } => Some(*round),
                _ => None,
            })
        };
        let mut out = Vec::new();
        leecher.start(0, &mut out);
        for from in [0, 1, 3] {
            let msg = Message::Status { round: ROUND_1, status: status(1, &[]) };
            out.extend(step(&mut leecher, Event::Message { from, msg }));
        }
        assert_eq!(round(&out), Some(ROUND_1));
        let piece = Piece::new(0, 1);
        // Both non-leaders asked for HL_1; L_1 from one of them, nothing else fetched.
        let fetches: Vec<(Ticket, ReplicaId)> = out
            .iter()
            .filter_map(|a| match a {
                Action::Fetch { ticket, from, want: Want::Log(p), .. } if *p == piece => {
                    Some((*ticket, *from))
                }
                _ => None,
            })
            .collect();
        assert_eq!(fetches.len(), 1, "{out:?}");
        let (ticket, sender) = fetches[0];
        let mute = if sender == 1 { 3 } else { 1 };
        let hl1 = hashes(piece, 1);
        let mut later = step(
            &mut leecher,
            Event::Message {
                from: sender,
                msg: Message::Hashes {
                    round: ROUND_1,
                    checkpoint: AGREEMENT_ID_NONE,
                    checkpoint_hash: None,
                    pieces: vec![(piece, hl1)],
                },
            },
        );
        later.extend(step(
            &mut leecher,
            Event::Fetched { ticket, outcome: FetchOutcome::Received { hash: hl1 } },
        ));
        let staged = out
            .iter()
            .chain(&later)
            .find_map(|a| match a {
                Action::Stage { ticket, .. } => Some(*ticket),
                _ => None,
            })
            .expect("the genesis is staged at once");
        later.extend(step(
            &mut leecher,
            Event::Staged { ticket: staged, outcome: StageOutcome::Staged },
        ));
        let timeouts = Timeouts::default();
        for now in 1..=timeouts.answer_ticks + 1 {
            later.extend(step(&mut leecher, Event::Tick { now }));
        }
        assert!(
            later.contains(&Action::SeederFailed { replica: mute, fault: Fault::Mute }),
            "{later:?}"
        );
        // The attempt ended: the state is fetched again, from a replica still answering,
        // and never from the mute one.
        let refetched: Vec<ReplicaId> = later
            .iter()
            .filter_map(|a| match a {
                Action::Fetch { from, .. } => Some(*from),
                _ => None,
            })
            .collect();
        assert!(!refetched.is_empty(), "the attempt waited for a mute replica: {later:?}");
        assert!(!refetched.contains(&mute), "{later:?}");
    }

    #[test]
    fn configurations_that_cannot_work_are_refused() {
        let good = LeecherConfig::new(Mode::Bft, 4, 0, 1);
        assert!(Leecher::new(good.clone(), 0).is_ok());
        for bad in [
            LeecherConfig { n: 1, ..good.clone() },
            LeecherConfig { f: 2, ..good.clone() },
            LeecherConfig { me: 4, ..good.clone() },
            LeecherConfig { leader: Some(7), ..good.clone() },
            LeecherConfig { rounds_max: 0, ..good.clone() },
            LeecherConfig {
                timeouts: Timeouts { answer_ticks: 0, ..Timeouts::default() },
                ..good.clone()
            },
        ] {
            assert!(matches!(Leecher::new(bad, 0), Err(TransferError::Config(_))));
        }
    }
}
