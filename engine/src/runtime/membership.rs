//! Membership at start: whether a replica that finds no state of its own may start
//! empty, must take the state from its peers, or must refuse to start.
//!
//! A replica that has been a member of a cluster keeps a **marker** in its data dir
//! ([`MEMBER_MARKER`]): the cluster's identity ([`cluster_identity`]) and the replica's
//! id, written durably (temp file, fsync, rename, fsync of the directory) when the
//! replica first starts a new cluster, joins an existing one, or finishes a state
//! transfer into one. At start, a replica with neither checkpoint nor log asks its
//! peers for a [`PeerReport`] (over the state transfer port, see
//! [`super::datapath::member_call`]) and [`decide`]s:
//!
//! 1. a peer holds decided agreements: take the state from the peers (state transfer),
//!    whatever [`Bootstrap`] says: a state that exists is never replaced by an empty
//!    one;
//! 2. a peer is a member with its state intact (serving, or starting from its own
//!    empty log): the cluster exists and has decided nothing, so join it empty;
//! 3. this replica is a member whose state is intact but empty (its log exists and
//!    holds nothing): start from it;
//! 4. otherwise nothing that answered holds a state. If this replica's marker survived
//!    its state, or a peer reports the same, the cluster existed and its state is
//!    **lost**: start only with [`Bootstrap::ForceNew`]. If no replica that answered
//!    has ever been a member, start only with [`Bootstrap::New`] or `ForceNew`. Else
//!    refuse with [`RuntimeError::NoState`], which says what answered and what was
//!    lost.
//!
//! Like etcd's `--initial-cluster-state new|existing` and `--force-new-cluster`:
//! `dura-kv serve` starts as [`Bootstrap::Existing`] unless told `--new-cluster` (the
//! first start of a cluster) or `--force-new-cluster` (begin again, empty, after a
//! total loss). In-process starts ([`super::ReplicaOptions`]) default to
//! [`Bootstrap::New`]: tests start fresh clusters replica by replica.

use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU8, Ordering};

use dura_core::codec::{Reader, put_u64};
use dura_core::{AgreementId, Hash, ReplicaId};
use sha2::{Digest as _, Sha256};

use super::RuntimeError;
use super::config::ClusterConfig;
use super::metrics::ReplicaMetrics;

/// The marker's file name in a replica's data dir.
pub const MEMBER_MARKER: &str = "member";

/// The first line of a marker this version writes.
const MARKER_HEADER: &str = "dura member marker v1";

/// What an older version wrote (no identity): still means the replica was a member.
const LEGACY_MARKER: &str = "a dura replica has run in this directory";

/// Largest marker file read.
const MARKER_BYTES_MAX: u64 = 4096;

/// Whether a replica without any state may begin a new, empty cluster.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Bootstrap {
    /// Join an existing cluster only: start from this replica's own state or from a
    /// peer's, never empty when no replica holds one. `dura-kv serve`'s default.
    Existing,
    /// The first start of a cluster: begin empty when no replica that answered holds a
    /// state or has ever been a member (`dura-kv serve --new-cluster`). The default
    /// of in-process starts.
    #[default]
    New,
    /// Begin an empty cluster even though replicas were members and lost their state
    /// (`dura-kv serve --force-new-cluster`): what the cluster decided is gone.
    ForceNew,
}

/// What a replica knows of its own membership, as it reports it to a peer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Standing {
    /// No marker: never a member here (a new disk, or a data dir lost whole).
    Fresh = 0,
    /// A member with its state (which may be empty: nothing decided yet).
    Member = 1,
    /// A member whose log and checkpoints are gone while its marker survived.
    Lost = 2,
}

impl Standing {
    fn from_u8(value: u8) -> Option<Standing> {
        match value {
            0 => Some(Standing::Fresh),
            1 => Some(Standing::Member),
            2 => Some(Standing::Lost),
            _ => None,
        }
    }
}

/// The cluster's identity as a marker records it: SHA-256 over a label, the fault
/// model, the replica count and the replica key. Hosts and ports may change (a replica
/// moved to another machine keeps its membership); a new key or another size is
/// another cluster. The key is hashed with a label of its own, so the identity reveals
/// nothing usable of it.
pub fn cluster_identity(config: &ClusterConfig) -> Result<Hash, RuntimeError> {
    let mut hasher = Sha256::new();
    hasher.update(b"dura cluster identity v1\0");
    hasher.update(config.mode.to_string().as_bytes());
    hasher.update(config.n().to_le_bytes());
    hasher.update(config.replica_key_bytes()?);
    Ok(hasher.finalize().into())
}

/// A marker read from a data dir.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Marker {
    /// Written by this version: checked against the config.
    Current,
    /// Written by an older version (no identity): rewritten at this start.
    Legacy,
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn marker_text(identity: &Hash, replica: ReplicaId) -> String {
    format!("{MARKER_HEADER}\ncluster {}\nreplica {replica}\n", hex(identity))
}

/// Reads the marker in `data_dir`: `None` when there is none. A marker of another
/// cluster (other keys or size) or another replica id, or one that does not parse, is
/// a config error naming the data dir: this is not this replica's directory.
pub fn read_marker(
    data_dir: &Path,
    identity: &Hash,
    replica: ReplicaId,
) -> Result<Option<Marker>, RuntimeError> {
    let path = data_dir.join(MEMBER_MARKER);
    let io = |operation: &'static str| {
        let path = path.clone();
        move |error| RuntimeError::Io { operation, path, error }
    };
    let file = match std::fs::File::open(&path) {
        Ok(file) => file,
        Err(error) if error.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(error) => return Err(io("open the member marker")(error)),
    };
    let mut text = String::new();
    std::io::Read::read_to_string(&mut std::io::Read::take(file, MARKER_BYTES_MAX), &mut text)
        .map_err(io("read the member marker"))?;
    let wrong = |reason: String| RuntimeError::Config {
        field: format!("replica[{replica}].data_dir"),
        reason: format!("{}: {reason}", path.display()),
    };
    if text.trim_end() == LEGACY_MARKER {
        return Ok(Some(Marker::Legacy));
    }
    if text == marker_text(identity, replica) {
        return Ok(Some(Marker::Current));
    }
    let mut lines = text.lines();
    if lines.next() != Some(MARKER_HEADER) {
        return Err(wrong("not a member marker this version reads".into()));
    }
    let cluster = lines.next().and_then(|line| line.strip_prefix("cluster "));
    let id = lines.next().and_then(|line| line.strip_prefix("replica "));
    match (cluster, id) {
        (Some(cluster), _) if cluster != hex(identity) => Err(wrong(
            "this data dir belongs to another cluster (its marker names other keys or \
             another replica count than the config's)"
                .into(),
        )),
        (Some(_), Some(id)) => {
            Err(wrong(format!("this data dir belongs to replica {id}, not {replica}")))
        }
        _ => Err(wrong("a member marker that does not parse".into())),
    }
}

/// Writes the marker into `data_dir` durably: a temp file, synced, renamed over the
/// marker, then the directory synced. A crash leaves the old marker or the new one.
pub fn write_marker(
    data_dir: &Path,
    identity: &Hash,
    replica: ReplicaId,
) -> Result<(), RuntimeError> {
    let io = |operation: &'static str, path: &Path| {
        let path: PathBuf = path.to_path_buf();
        move |error| RuntimeError::Io { operation, path, error }
    };
    std::fs::create_dir_all(data_dir).map_err(io("create data dir", data_dir))?;
    let temp = data_dir.join(format!("{MEMBER_MARKER}.tmp"));
    let marker = data_dir.join(MEMBER_MARKER);
    let mut file = std::fs::File::create(&temp).map_err(io("create member marker", &temp))?;
    file.write_all(marker_text(identity, replica).as_bytes())
        .and_then(|()| file.sync_all())
        .map_err(io("write member marker", &temp))?;
    drop(file);
    std::fs::rename(&temp, &marker).map_err(io("rename member marker", &marker))?;
    std::fs::File::open(data_dir)
        .and_then(|dir| dir.sync_all())
        .map_err(io("sync data dir", data_dir))?;
    Ok(())
}

/// The file a member whose state is gone keeps in its data dir until it has a state
/// again: written (durably) before its start creates a new, empty log, so a start that
/// refuses or crashes leaves no empty log that a later start would take for the
/// member's own (intact, empty) state.
pub const LOST_FLAG: &str = "state-lost";

/// Records durably that the member in `data_dir` lost its state.
pub fn flag_lost(data_dir: &Path) -> Result<(), RuntimeError> {
    write_flag(
        data_dir,
        LOST_FLAG,
        b"this member's log and checkpoints were lost; it has no state yet\n",
    )
}

/// Whether `data_dir` holds the state-lost flag.
pub fn is_flagged_lost(data_dir: &Path) -> bool {
    data_dir.join(LOST_FLAG).exists()
}

/// Removes the state-lost flag (the member has a state again), durably.
pub fn clear_lost(data_dir: &Path) -> Result<(), RuntimeError> {
    remove_flag(data_dir, LOST_FLAG)
}

/// The file a member keeps in its data dir while the state it runs on came from its
/// peers because its own log was lost, until the cluster resumed with it
/// (`Replica::mark_state_lost`, `Replica::holds_lost_state`): a restart meanwhile marks
/// its core again.
pub const FROM_PEERS_FLAG: &str = "state-from-peers";

/// Why a member runs on its peers' state, as its state-from-peers flag records it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FromPeers {
    /// Its disk was lost (a wiped data dir, a log damaged before its tail): one of the
    /// f faults, and it says so (`Replica::mark_disk_lost`).
    DiskLost,
    /// It gave a suffix of its log up (`Action::DiscardUnconfirmed`): no fault, and it
    /// keeps silent instead (`Replica::mark_state_lost`).
    GaveUp,
}

const DISK_LOST_TEXT: &[u8] = b"this member's disk was lost; its state came from its peers\n";
const GAVE_UP_TEXT: &[u8] =
    b"this member gave up a suffix of its log; its state came from its peers\n";

/// Records durably that the member in `data_dir` runs on its peers' state, and why.
pub fn flag_from_peers(data_dir: &Path, why: FromPeers) -> Result<(), RuntimeError> {
    let text = match why {
        FromPeers::DiskLost => DISK_LOST_TEXT,
        FromPeers::GaveUp => GAVE_UP_TEXT,
    };
    write_flag(data_dir, FROM_PEERS_FLAG, text)
}

/// The state-from-peers flag in `data_dir`, if there is one. A flag that does not say
/// its disk was lost (an older one, or an unreadable one) reads as a suffix given up:
/// the member then keeps silent, as before the distinction, rather than lower the bar
/// of its peers' recovery.
pub fn from_peers_flag(data_dir: &Path) -> Option<FromPeers> {
    let path = data_dir.join(FROM_PEERS_FLAG);
    if !path.exists() {
        return None;
    }
    match std::fs::read(&path) {
        Ok(text) if text == DISK_LOST_TEXT => Some(FromPeers::DiskLost),
        _ => Some(FromPeers::GaveUp),
    }
}

/// Removes the state-from-peers flag, durably.
pub fn clear_from_peers(data_dir: &Path) -> Result<(), RuntimeError> {
    remove_flag(data_dir, FROM_PEERS_FLAG)
}

/// Writes the flag file `name` with `text`, synced, and syncs the directory.
fn write_flag(data_dir: &Path, name: &str, text: &[u8]) -> Result<(), RuntimeError> {
    let path = data_dir.join(name);
    let io = |operation: &'static str, path: &Path| {
        let path: PathBuf = path.to_path_buf();
        move |error| RuntimeError::Io { operation, path, error }
    };
    let mut file = std::fs::File::create(&path).map_err(io("create a flag file", &path))?;
    file.write_all(text).and_then(|()| file.sync_all()).map_err(io("write a flag file", &path))?;
    std::fs::File::open(data_dir)
        .and_then(|dir| dir.sync_all())
        .map_err(io("sync data dir", data_dir))
}

/// Removes the flag file `name` if present, and syncs the directory.
fn remove_flag(data_dir: &Path, name: &str) -> Result<(), RuntimeError> {
    let path = data_dir.join(name);
    match std::fs::remove_file(&path) {
        Ok(()) => {}
        Err(error) if error.kind() == std::io::ErrorKind::NotFound => return Ok(()),
        Err(error) => {
            return Err(RuntimeError::Io { operation: "remove a flag file", path, error });
        }
    }
    std::fs::File::open(data_dir).and_then(|dir| dir.sync_all()).map_err(|error| RuntimeError::Io {
        operation: "sync data dir",
        path: data_dir.to_path_buf(),
        error,
    })
}

/// What a replica answers a peer's membership query (its transfer port's member
/// exchange): its standing, whether it serves, the last agreement it holds and, while
/// it serves and is not recovering, its regency (the leader is `regency mod n`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PeerReport {
    /// Its membership.
    pub standing: Standing,
    /// Whether its stages run (it finished its start).
    pub serving: bool,
    /// The last agreement it holds (log or checkpoint).
    pub last_agreement: AgreementId,
    /// Its regency, while it serves and is not recovering.
    pub regency: Option<u64>,
}

/// Version byte of an encoded [`PeerReport`].
const REPORT_VERSION: u8 = 1;

impl PeerReport {
    /// `version, standing, serving, last_agreement:u64, flag, (regency:u64 if 1)`.
    pub fn encode(&self) -> Vec<u8> {
        let mut w = Vec::with_capacity(20);
        w.push(REPORT_VERSION);
        w.push(self.standing as u8);
        w.push(u8::from(self.serving));
        put_u64(&mut w, self.last_agreement);
        match self.regency {
            Some(regency) => {
                w.push(1);
                put_u64(&mut w, regency);
            }
            None => w.push(0),
        }
        w
    }

    /// Decodes [`PeerReport::encode`]'s bytes, exactly.
    pub fn decode(bytes: &[u8]) -> Result<PeerReport, String> {
        let mut r = Reader::new(bytes, "peer report");
        let err = |e: dura_core::CoreError| e.to_string();
        if r.u8().map_err(err)? != REPORT_VERSION {
            return Err("peer report: unknown version".into());
        }
        let standing = Standing::from_u8(r.u8().map_err(err)?)
            .ok_or_else(|| "peer report: unknown standing".to_owned())?;
        let serving = r.flag().map_err(err)?;
        let last_agreement = r.u64().map_err(err)?;
        let regency = if r.flag().map_err(err)? { Some(r.u64().map_err(err)?) } else { None };
        r.finish().map_err(err)?;
        Ok(PeerReport { standing, serving, last_agreement, regency })
    }
}

/// A replica's membership as it runs, shared with its state transfer server, which
/// answers peers' membership queries from it.
#[derive(Debug)]
pub struct MemberState {
    standing: AtomicU8,
    serving: AtomicBool,
    metrics: Arc<ReplicaMetrics>,
}

impl MemberState {
    /// A replica starting with `standing`; its regency comes from `metrics` (the
    /// order stage's view) once it serves.
    pub fn new(standing: Standing, metrics: Arc<ReplicaMetrics>) -> MemberState {
        MemberState {
            standing: AtomicU8::new(standing as u8),
            serving: AtomicBool::new(false),
            metrics,
        }
    }

    /// Its standing changed (it became a member).
    pub fn set_standing(&self, standing: Standing) {
        self.standing.store(standing as u8, Ordering::Release);
    }

    /// Its stages run.
    pub fn set_serving(&self) {
        self.serving.store(true, Ordering::Release);
    }

    /// What it answers now, holding agreements up to `last_agreement`.
    pub fn report(&self, last_agreement: AgreementId) -> PeerReport {
        let standing = Standing::from_u8(self.standing.load(Ordering::Acquire))
            .expect("only a Standing is stored");
        let serving = self.serving.load(Ordering::Acquire);
        let (regency, recovering) = self.metrics.regency_view();
        PeerReport {
            standing,
            serving,
            last_agreement,
            regency: (serving && !recovering).then_some(regency),
        }
    }
}

/// How a replica with no state of its own stands before it asks its peers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct OwnState {
    /// Its marker is present.
    pub marker: bool,
    /// Its marker is present but its log and checkpoints are gone (or its log was
    /// damaged and set aside).
    pub lost: bool,
}

impl OwnState {
    /// The standing it reports to peers while it starts.
    pub fn standing(&self) -> Standing {
        match (self.marker, self.lost) {
            (false, _) => Standing::Fresh,
            (true, false) => Standing::Member,
            (true, true) => Standing::Lost,
        }
    }
}

/// What [`decide`] concluded.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StartDecision {
    /// A peer holds decided agreements: take the state from the peers.
    Transfer {
        /// The peer holding the most.
        from: ReplicaId,
        /// Its last agreement.
        last_agreement: AgreementId,
    },
    /// Start with an empty state, for this reason.
    Empty(EmptyStart),
    /// Refuse to start.
    Refuse(Box<StateLoss>),
}

/// Why a replica starts with an empty state.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EmptyStart {
    /// A peer is a member with its state, and none holds an agreement: the cluster
    /// exists and has decided nothing.
    JoinEmptyCluster,
    /// This replica is a member and its own (empty) log is intact.
    OwnEmptyState,
    /// A new cluster ([`Bootstrap::New`]): nobody that answered has been a member.
    NewCluster,
    /// [`Bootstrap::ForceNew`]: an empty cluster; `lost` when members lost their state.
    ForcedNew {
        /// Whether the cluster existed and its state is lost.
        lost: bool,
    },
}

/// Why a replica without a state refused to start: who answered, what they hold, and
/// what that says was lost. Its `Display` is the operator's message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StateLoss {
    /// The replica that refused.
    pub replica: ReplicaId,
    /// Its data dir.
    pub data_dir: PathBuf,
    /// Its marker survived while its state is gone.
    pub own_lost: bool,
    /// The peers that answered, with their standing (none holds an agreement).
    pub answered: Vec<(ReplicaId, Standing)>,
    /// The peers that did not answer (down, not yet listening, or without a
    /// transfer port).
    pub silent: Vec<ReplicaId>,
    /// Whether it was told [`Bootstrap::New`] (refused because the cluster existed).
    pub told_new: bool,
}

impl StateLoss {
    /// Whether the cluster existed and its state is lost as far as the answers show:
    /// this replica's marker or a peer's survived a state that is gone.
    pub fn cluster_existed(&self) -> bool {
        self.own_lost || self.answered.iter().any(|(_, s)| *s == Standing::Lost)
    }

    /// The peers that were members and lost their state.
    pub fn lost_peers(&self) -> Vec<ReplicaId> {
        self.answered.iter().filter(|(_, s)| *s == Standing::Lost).map(|(r, _)| *r).collect()
    }
}

impl std::fmt::Display for StateLoss {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "replica {} has no state (no checkpoint, no log in {}) and no replica that answered \
             holds one: replicas {:?} answered, {:?} did not",
            self.replica,
            self.data_dir.display(),
            self.answered.iter().map(|(r, _)| *r).collect::<Vec<_>>(),
            self.silent
        )?;
        if self.cluster_existed() {
            let mut lost = self.lost_peers();
            if self.own_lost {
                lost.insert(0, self.replica);
            }
            write!(
                f,
                ". STATE LOST: replicas {lost:?} were members of this cluster (their member \
                 markers survived) and their logs and checkpoints are gone, so the cluster \
                 existed and everything it decided that these replicas held is lost. If a \
                 replica that did not answer may still hold its data, start it and this one \
                 will take the state from it. To begin again with an EMPTY cluster and accept \
                 the loss, start every replica with --force-new-cluster \
                 (ReplicaOptions::bootstrap = Bootstrap::ForceNew)"
            )
        } else if self.told_new {
            write!(f, "; it was told to begin a new cluster but no replica agreed it may")
        } else {
            write!(
                f,
                ". No replica that answered has been a member of this cluster: if this is the \
                 first start of a new cluster, start it with --new-cluster \
                 (ReplicaOptions::bootstrap = Bootstrap::New); if the cluster had a state, \
                 every data dir that answered was lost whole (markers included) and its state \
                 is gone unless a replica that did not answer still holds it: start that one \
                 first, or begin an empty cluster with --force-new-cluster"
            )
        }
    }
}

/// One peer's answer, as [`decide`] reads it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Answer {
    /// The peer.
    pub replica: ReplicaId,
    /// What it reported.
    pub report: PeerReport,
}

/// The rule of the module docs, for a replica without a state of its own (`own`) in a
/// cluster of `n`, given its peers' `answers` and what it was told.
pub fn decide(
    me: ReplicaId,
    data_dir: &Path,
    n: u32,
    own: OwnState,
    answers: &[Answer],
    bootstrap: Bootstrap,
) -> StartDecision {
    assert!(!own.lost || own.marker, "only a member can have lost its state");
    assert!(answers.iter().all(|a| a.replica != me && a.replica < n), "answers from peers");
    if let Some(best) = answers.iter().max_by_key(|a| a.report.last_agreement)
        && best.report.last_agreement > 0
    {
        return StartDecision::Transfer {
            from: best.replica,
            last_agreement: best.report.last_agreement,
        };
    }
    if answers.iter().any(|a| a.report.standing == Standing::Member || a.report.serving) {
        return StartDecision::Empty(EmptyStart::JoinEmptyCluster);
    }
    if own.marker && !own.lost {
        return StartDecision::Empty(EmptyStart::OwnEmptyState);
    }
    let lost = own.lost || answers.iter().any(|a| a.report.standing == Standing::Lost);
    match bootstrap {
        Bootstrap::ForceNew => StartDecision::Empty(EmptyStart::ForcedNew { lost }),
        Bootstrap::New if !lost => StartDecision::Empty(EmptyStart::NewCluster),
        Bootstrap::New | Bootstrap::Existing => {
            let answered: Vec<(ReplicaId, Standing)> =
                answers.iter().map(|a| (a.replica, a.report.standing)).collect();
            let silent =
                (0..n).filter(|&r| r != me && !answered.iter().any(|(a, _)| *a == r)).collect();
            StartDecision::Refuse(Box::new(StateLoss {
                replica: me,
                data_dir: data_dir.to_path_buf(),
                own_lost: own.lost,
                answered,
                silent,
                told_new: bootstrap == Bootstrap::New,
            }))
        }
    }
}

/// The leader that at least `quorum` serving peers agree on: the highest regency that
/// `quorum` of them report exactly, mod `n`. One lying peer (with `quorum` = f+1 in
/// BFT) cannot name a leader alone.
pub fn agreed_leader(reports: &[PeerReport], n: u32, quorum: usize) -> Option<ReplicaId> {
    assert!(quorum >= 1 && n >= 1);
    let mut regencies: Vec<u64> = reports.iter().filter_map(|r| r.regency).collect();
    regencies.sort_unstable();
    regencies
        .chunk_by(|a, b| a == b)
        .filter(|same| same.len() >= quorum)
        .map(|same| same[0])
        .max()
        .map(|regency| (regency % u64::from(n)) as ReplicaId)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn report(standing: Standing, serving: bool, last: u64) -> PeerReport {
        PeerReport { standing, serving, last_agreement: last, regency: None }
    }

    fn answers(reports: &[(ReplicaId, PeerReport)]) -> Vec<Answer> {
        reports.iter().map(|&(replica, report)| Answer { replica, report }).collect()
    }

    const FRESH: OwnState = OwnState { marker: false, lost: false };
    const LOST: OwnState = OwnState { marker: true, lost: true };
    const INTACT: OwnState = OwnState { marker: true, lost: false };

    #[test]
    fn a_report_round_trips_and_a_broken_one_is_rejected() {
        for report in [
            PeerReport {
                standing: Standing::Lost,
                serving: false,
                last_agreement: 0,
                regency: None,
            },
            PeerReport {
                standing: Standing::Member,
                serving: true,
                last_agreement: u64::MAX,
                regency: Some(7),
            },
        ] {
            let bytes = report.encode();
            assert_eq!(PeerReport::decode(&bytes), Ok(report));
            for cut in 0..bytes.len() {
                assert!(PeerReport::decode(&bytes[..cut]).is_err(), "cut at {cut}");
            }
            let mut longer = bytes.clone();
            longer.push(0);
            assert!(PeerReport::decode(&longer).is_err());
        }
        assert!(PeerReport::decode(&[1, 3, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0]).is_err());
    }

    #[test]
    fn a_peer_holding_a_state_is_transferred_from_whatever_the_replica_was_told() {
        let peers = answers(&[
            (1, report(Standing::Member, true, 40)),
            (2, report(Standing::Lost, false, 0)),
        ]);
        for bootstrap in [Bootstrap::Existing, Bootstrap::New, Bootstrap::ForceNew] {
            for own in [FRESH, LOST, INTACT] {
                assert_eq!(
                    decide(0, Path::new("/d"), 4, own, &peers, bootstrap),
                    StartDecision::Transfer { from: 1, last_agreement: 40 }
                );
            }
        }
    }

    #[test]
    fn a_cluster_that_existed_and_lost_its_state_starts_only_when_forced() {
        // Every replica lost its log and checkpoints; their markers survived.
        let peers = answers(&[
            (1, report(Standing::Lost, false, 0)),
            (2, report(Standing::Lost, false, 0)),
            (3, report(Standing::Lost, false, 0)),
        ]);
        for bootstrap in [Bootstrap::Existing, Bootstrap::New] {
            let StartDecision::Refuse(loss) =
                decide(0, Path::new("/d"), 4, LOST, &peers, bootstrap)
            else {
                panic!("{bootstrap:?} must refuse");
            };
            assert!(loss.cluster_existed() && loss.own_lost);
            assert_eq!(loss.lost_peers(), vec![1, 2, 3]);
            let message = loss.to_string();
            assert!(message.contains("STATE LOST") && message.contains("--force-new-cluster"));
        }
        assert_eq!(
            decide(0, Path::new("/d"), 4, LOST, &peers, Bootstrap::ForceNew),
            StartDecision::Empty(EmptyStart::ForcedNew { lost: true })
        );
        // A fresh replica among members that lost their state: the cluster existed.
        let StartDecision::Refuse(loss) =
            decide(0, Path::new("/d"), 4, FRESH, &peers, Bootstrap::New)
        else {
            panic!("refuses");
        };
        assert!(loss.cluster_existed() && !loss.own_lost);
    }

    #[test]
    fn a_new_cluster_begins_only_when_told_and_nobody_was_a_member() {
        let fresh = answers(&[(2, report(Standing::Fresh, false, 0))]);
        assert_eq!(
            decide(0, Path::new("/d"), 4, FRESH, &fresh, Bootstrap::New),
            StartDecision::Empty(EmptyStart::NewCluster)
        );
        let StartDecision::Refuse(loss) =
            decide(0, Path::new("/d"), 4, FRESH, &fresh, Bootstrap::Existing)
        else {
            panic!("refuses");
        };
        assert!(!loss.cluster_existed());
        assert_eq!(loss.silent, vec![1, 3]);
        assert!(loss.to_string().contains("--new-cluster"));
        // Nobody answers at all: the same.
        assert_eq!(
            decide(0, Path::new("/d"), 4, FRESH, &[], Bootstrap::New),
            StartDecision::Empty(EmptyStart::NewCluster)
        );
        assert!(matches!(
            decide(0, Path::new("/d"), 4, FRESH, &[], Bootstrap::Existing),
            StartDecision::Refuse(_)
        ));
    }

    #[test]
    fn an_existing_empty_cluster_is_joined_and_an_intact_empty_member_restarts() {
        let serving = answers(&[(1, report(Standing::Member, true, 0))]);
        for own in [FRESH, LOST, INTACT] {
            assert_eq!(
                decide(0, Path::new("/d"), 3, own, &serving, Bootstrap::Existing),
                StartDecision::Empty(EmptyStart::JoinEmptyCluster)
            );
        }
        assert_eq!(
            decide(0, Path::new("/d"), 3, INTACT, &[], Bootstrap::Existing),
            StartDecision::Empty(EmptyStart::OwnEmptyState)
        );
    }

    #[test]
    fn a_lone_answer_does_not_name_the_leader() {
        let at = |regency| PeerReport {
            standing: Standing::Member,
            serving: true,
            last_agreement: 5,
            regency: Some(regency),
        };
        // BFT n = 4, f + 1 = 2: a lone liar claiming regency 9 is outvoted.
        assert_eq!(agreed_leader(&[at(4), at(4), at(9)], 4, 2), Some(0));
        assert_eq!(agreed_leader(&[at(4), at(5), at(9)], 4, 2), None);
        assert_eq!(agreed_leader(&[at(5), at(5), at(6), at(6)], 4, 2), Some(2));
        let mut silent = at(1);
        silent.regency = None;
        assert_eq!(agreed_leader(&[silent, silent, at(1)], 4, 2), None);
        // Crash mode: one answer is enough.
        assert_eq!(agreed_leader(&[at(1), at(2)], 3, 1), Some(2));
    }

    #[test]
    fn a_marker_is_written_durably_read_back_and_checked_against_the_cluster() {
        let tmp = tempfile::tempdir().expect("tempdir");
        let identity = [7u8; 32];
        assert_eq!(read_marker(tmp.path(), &identity, 2).expect("read"), None);
        write_marker(tmp.path(), &identity, 2).expect("write");
        assert_eq!(read_marker(tmp.path(), &identity, 2).expect("read"), Some(Marker::Current));
        assert!(!tmp.path().join("member.tmp").exists());
        let other = read_marker(tmp.path(), &[8u8; 32], 2).expect_err("another cluster");
        assert!(other.to_string().contains("another cluster"), "{other}");
        let other = read_marker(tmp.path(), &identity, 3).expect_err("another replica");
        assert!(other.to_string().contains("replica 2, not 3"), "{other}");
        std::fs::write(tmp.path().join(MEMBER_MARKER), format!("{LEGACY_MARKER}\n"))
            .expect("legacy");
        assert_eq!(read_marker(tmp.path(), &identity, 3).expect("read"), Some(Marker::Legacy));
        std::fs::write(tmp.path().join(MEMBER_MARKER), "garbage").expect("garbage");
        assert!(read_marker(tmp.path(), &identity, 3).is_err());
    }
}
