//! Protocol messages and their compact binary codec.
//!
//! The codec is [`dura_core::codec`]'s, and the values messages carry
//! ([`ClientRequest`], [`Batch`], and [`Reply`] for clients) are `dura_core`'s,
//! re-exported here. Each [`Message`] starts with a one-byte tag. Decoding is
//! bounds-checked everywhere and never panics: any malformed input (truncated,
//! oversized, unknown tag, trailing bytes) is a [`ProtocolError::Malformed`]. Vector
//! lengths are checked against their `*_MAX` bound and against the bytes left before
//! anything is allocated.

use std::sync::Arc;

use dura_core::codec::{Reader, put_u32, put_u64};
use dura_core::request::REQUEST_BYTES_MIN;
use sha2::{Digest, Sha256};

pub use dura_core::request::{
    BATCH_REQUESTS_DECODE_MAX, Batch, ClientRequest, OPERATION_BYTES_MAX, Reply,
};

use super::{Hash, ProtocolError, REPLICAS_MAX, ReplicaId};

/// Most (hash, regency) write records in one [`CollectData`].
pub const COLLECT_WRITES_MAX: usize = 16;
/// Most batches one [`CollectData`] carries.
pub const COLLECT_VALUES_MAX: usize = 3;
/// Most client requests in one FORWARD.
pub const FORWARD_REQUESTS_MAX: usize = 4096;

/// Crash mode: a replica's word, in a status answer, that the asker's incarnation was
/// counted as restarted and not voting when the replica resumed after a crash of every
/// replica. The asker's lost votes then predate every vote cast since: it joins the
/// resumed cluster as the replicas that resumed did, under the same bounds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Vouch {
    /// Never vote at or below this agreement: what the resumption found logged.
    pub floor: u64,
    /// Never vote in a regency below this: the resumption's first.
    pub regency_min: u64,
}

/// What a replica reports in STOPDATA about its last decided agreement and the open
/// one (the agreement after it).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct CollectData {
    /// Last agreement id this replica decided (0: none).
    pub last_decided: u64,
    /// Hash of that decided batch (None when `last_decided` is 0).
    pub decided_hash: Option<Hash>,
    /// The sender's vote floor: agreements up to it may hold votes an earlier
    /// incarnation cast and forgot (votes are not persisted). In crash mode its report
    /// about an open agreement at or below it does not count (`Replica::report`).
    pub vote_floor: u64,
    /// For the open agreement `last_decided + 1`: the latest (regency, hash) this
    /// replica sent ACCEPT for.
    pub accepted: Option<(u64, Hash)>,
    /// For the open agreement: each hash it sent WRITE for, with the latest regency.
    pub writes: Vec<(Hash, u64)>,
    /// Batches for the hashes above (the accepted one, the latest written one, and the
    /// last decided one), so that the new leader can propose them again.
    pub values: Vec<Arc<Batch>>,
}

impl CollectData {
    fn encode(&self, w: &mut Vec<u8>) {
        put_u64(w, self.last_decided);
        match &self.decided_hash {
            Some(hash) => {
                w.push(1);
                w.extend_from_slice(hash);
            }
            None => w.push(0),
        }
        put_u64(w, self.vote_floor);
        match &self.accepted {
            Some((regency, hash)) => {
                w.push(1);
                put_u64(w, *regency);
                w.extend_from_slice(hash);
            }
            None => w.push(0),
        }
        put_u32(w, self.writes.len() as u32);
        for (hash, regency) in &self.writes {
            w.extend_from_slice(hash);
            put_u64(w, *regency);
        }
        put_u32(w, self.values.len() as u32);
        for value in &self.values {
            value.encode(w);
        }
    }

    fn decode_from(r: &mut Reader<'_>) -> Result<Self, ProtocolError> {
        let last_decided = r.u64()?;
        let decided_hash = if r.flag()? { Some(r.array32()?) } else { None };
        let vote_floor = r.u64()?;
        let accepted = if r.flag()? { Some((r.u64()?, r.array32()?)) } else { None };
        let count = r.len(COLLECT_WRITES_MAX, 40)?;
        let mut writes = Vec::with_capacity(count);
        for _ in 0..count {
            let hash = r.array32()?;
            writes.push((hash, r.u64()?));
        }
        let count = r.len(COLLECT_VALUES_MAX, 4)?;
        let mut values = Vec::with_capacity(count);
        for _ in 0..count {
            values.push(Arc::new(Batch::decode_from(r)?));
        }
        Ok(Self { last_decided, decided_hash, vote_floor, accepted, writes, values })
    }

    /// SHA-256 of the encoding: what SYNC names to say which STOPDATA it used.
    pub fn digest(&self) -> Hash {
        let mut bytes = Vec::new();
        self.encode(&mut bytes);
        Sha256::digest(&bytes).into()
    }
}

/// A replica-to-replica protocol message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Message {
    /// Leader's proposal of `batch` for agreement `agreement_id` in `regency`.
    Propose {
        /// Regency of the leader.
        regency: u64,
        /// Agreement id.
        agreement_id: u64,
        /// The proposed value.
        batch: Arc<Batch>,
    },
    /// "I saw a valid proposal with this hash" (BFT mode only).
    Write {
        /// Regency.
        regency: u64,
        /// Agreement id.
        agreement_id: u64,
        /// Batch hash.
        hash: Hash,
    },
    /// "A quorum wrote this hash" (BFT) / "I accept the proposal" (crash mode).
    Accept {
        /// Regency.
        regency: u64,
        /// Agreement id.
        agreement_id: u64,
        /// Batch hash.
        hash: Hash,
    },
    /// Requests pending too long, forwarded to the leader.
    Forward {
        /// The sender's last decided agreement (lets a lagging leader notice).
        last_decided: u64,
        /// The requests.
        requests: Vec<ClientRequest>,
    },
    /// "I want regency `regency`" (leader change).
    Stop {
        /// The regency asked for.
        regency: u64,
    },
    /// A replica's state for the new regency, sent to every replica.
    StopData {
        /// The regency being installed.
        regency: u64,
        /// What the replica decided, wrote and accepted.
        collect: Arc<CollectData>,
    },
    /// The new leader's synchronisation: the value for `agreement_id` in `regency`, and
    /// which STOPDATAs (sender, digest) justify it.
    Sync {
        /// The new regency.
        regency: u64,
        /// The agreement it re-runs.
        agreement_id: u64,
        /// STOPDATAs used: (sender, [`CollectData::digest`]).
        members: Vec<(ReplicaId, Hash)>,
        /// The value.
        batch: Arc<Batch>,
    },
    /// Catch-up: "send me the decided batches `from..=to` you still hold".
    Fetch {
        /// First agreement id wanted.
        from: u64,
        /// Last agreement id wanted.
        to: u64,
    },
    /// A decided batch (answer to FETCH, or help for a replica seen lagging).
    Decided {
        /// Agreement id.
        agreement_id: u64,
        /// The decided batch.
        batch: Arc<Batch>,
        /// The hash of the batch the sender decided at `agreement_id - 1`, if its window
        /// still holds it: a replica that catches up checks that what it fetches follows
        /// what it decided itself.
        previous: Option<Hash>,
    },
    /// Answer to a [`Message::Fetch`] for agreements this replica no longer holds in
    /// its catch-up window: the first one it can still send (its checkpoint covers the
    /// rest). Enough of these tell the asker it is behind beyond every window and must
    /// transfer state ([`crate::protocol::Action::TransferNeeded`]).
    Gone {
        /// The first agreement id this replica can still send.
        first_held: u64,
    },
    /// A restarted replica asks how far the others are.
    StatusQuery {
        /// Echoed in the answer.
        nonce: u64,
        /// The asker's last decided (logged) agreement: the answer says which batch the
        /// sender decided there, so that the asker can tell whether what it logged is
        /// what the others decided (BFT, recovery after more than f crashes).
        last_decided: u64,
    },
    /// Answer to [`Message::StatusQuery`].
    Status {
        /// The query's nonce.
        nonce: u64,
        /// Last decided agreement id.
        last_decided: u64,
        /// Highest agreement id this replica sent a WRITE or ACCEPT for.
        highest_voted: u64,
        /// Current regency.
        regency: u64,
        /// True while the sender is itself recovering after a restart (its
        /// `highest_voted` is then only what it logged).
        recovering: bool,
        /// With `recovering`: the sender's own recovery nonce, which names its
        /// incarnation (0 otherwise).
        incarnation: u64,
        /// Crash mode: the asker's incarnation (the query's nonce) was recovering, with no
        /// vote cast, when the sender resumed after a crash of every replica (see
        /// [`Vouch`]).
        vouch: Option<Vouch>,
        /// The hash of the batch the sender decided at the query's `last_decided`, when
        /// it decided that agreement and still holds it in its catch-up window (None in
        /// heartbeats, and for agreement 0).
        asked_hash: Option<Hash>,
        /// The agreement `asked_hash` is for: the query's `last_decided` (0 in
        /// heartbeats). An asker that decided more since it asked must not compare an
        /// answer about an earlier agreement with its newest one.
        asked: u64,
        /// BFT: the sender restarted on its peers' state because its disk was lost, and
        /// the cluster has not resumed with it yet: what it says of its log is not its
        /// own, and it counts itself as one of the f faults (the asker may then take f
        /// matching logs, not f+1, among the others: `Replica::mark_disk_lost`).
        disk_lost: bool,
    },
}

const TAG_PROPOSE: u8 = 1;
const TAG_WRITE: u8 = 2;
const TAG_ACCEPT: u8 = 3;
const TAG_FORWARD: u8 = 4;
const TAG_STOP: u8 = 5;
const TAG_STOPDATA: u8 = 6;
const TAG_SYNC: u8 = 7;
const TAG_FETCH: u8 = 8;
const TAG_DECIDED: u8 = 9;
const TAG_STATUS_QUERY: u8 = 10;
const TAG_STATUS: u8 = 11;
const TAG_GONE: u8 = 12;

impl Message {
    /// Appends the encoding of this message to `w`.
    pub fn encode(&self, w: &mut Vec<u8>) {
        match self {
            Message::Propose { regency, agreement_id, batch } => {
                w.push(TAG_PROPOSE);
                put_u64(w, *regency);
                put_u64(w, *agreement_id);
                batch.encode(w);
            }
            Message::Write { regency, agreement_id, hash } => {
                w.push(TAG_WRITE);
                put_u64(w, *regency);
                put_u64(w, *agreement_id);
                w.extend_from_slice(hash);
            }
            Message::Accept { regency, agreement_id, hash } => {
                w.push(TAG_ACCEPT);
                put_u64(w, *regency);
                put_u64(w, *agreement_id);
                w.extend_from_slice(hash);
            }
            Message::Forward { last_decided, requests } => {
                w.push(TAG_FORWARD);
                put_u64(w, *last_decided);
                put_u32(w, requests.len() as u32);
                for request in requests {
                    request.encode(w);
                }
            }
            Message::Stop { regency } => {
                w.push(TAG_STOP);
                put_u64(w, *regency);
            }
            Message::StopData { regency, collect } => {
                w.push(TAG_STOPDATA);
                put_u64(w, *regency);
                collect.encode(w);
            }
            Message::Sync { regency, agreement_id, members, batch } => {
                w.push(TAG_SYNC);
                put_u64(w, *regency);
                put_u64(w, *agreement_id);
                put_u32(w, members.len() as u32);
                for (member, digest) in members {
                    put_u32(w, *member);
                    w.extend_from_slice(digest);
                }
                batch.encode(w);
            }
            Message::Fetch { from, to } => {
                w.push(TAG_FETCH);
                put_u64(w, *from);
                put_u64(w, *to);
            }
            Message::Decided { agreement_id, batch, previous } => {
                w.push(TAG_DECIDED);
                put_u64(w, *agreement_id);
                batch.encode(w);
                match previous {
                    None => w.push(0),
                    Some(hash) => {
                        w.push(1);
                        w.extend_from_slice(hash);
                    }
                }
            }
            Message::Gone { first_held } => {
                w.push(TAG_GONE);
                put_u64(w, *first_held);
            }
            Message::StatusQuery { nonce, last_decided } => {
                w.push(TAG_STATUS_QUERY);
                put_u64(w, *nonce);
                put_u64(w, *last_decided);
            }
            Message::Status {
                nonce,
                last_decided,
                highest_voted,
                regency,
                recovering,
                incarnation,
                vouch,
                asked_hash,
                asked,
                disk_lost,
            } => {
                w.push(TAG_STATUS);
                put_u64(w, *nonce);
                put_u64(w, *last_decided);
                put_u64(w, *highest_voted);
                put_u64(w, *regency);
                w.push(u8::from(*recovering));
                put_u64(w, *incarnation);
                match vouch {
                    None => w.push(0),
                    Some(Vouch { floor, regency_min }) => {
                        w.push(1);
                        put_u64(w, *floor);
                        put_u64(w, *regency_min);
                    }
                }
                match asked_hash {
                    None => w.push(0),
                    Some(hash) => {
                        w.push(1);
                        w.extend_from_slice(hash);
                    }
                }
                put_u64(w, *asked);
                w.push(u8::from(*disk_lost));
            }
        }
    }

    /// The encoding of this message.
    pub fn to_bytes(&self) -> Vec<u8> {
        let mut w = Vec::new();
        self.encode(&mut w);
        w
    }

    /// Decodes one message occupying all of `bytes`.
    pub fn decode(bytes: &[u8]) -> Result<Self, ProtocolError> {
        let mut r = Reader::new(bytes, "message");
        let message = match r.u8()? {
            TAG_PROPOSE => Message::Propose {
                regency: r.u64()?,
                agreement_id: r.u64()?,
                batch: Arc::new(Batch::decode_from(&mut r)?),
            },
            TAG_WRITE => {
                Message::Write { regency: r.u64()?, agreement_id: r.u64()?, hash: r.array32()? }
            }
            TAG_ACCEPT => {
                Message::Accept { regency: r.u64()?, agreement_id: r.u64()?, hash: r.array32()? }
            }
            TAG_FORWARD => {
                let last_decided = r.u64()?;
                let count = r.len(FORWARD_REQUESTS_MAX, REQUEST_BYTES_MIN)?;
                let mut requests = Vec::with_capacity(count);
                for _ in 0..count {
                    requests.push(ClientRequest::decode_from(&mut r)?);
                }
                Message::Forward { last_decided, requests }
            }
            TAG_STOP => Message::Stop { regency: r.u64()? },
            TAG_STOPDATA => Message::StopData {
                regency: r.u64()?,
                collect: Arc::new(CollectData::decode_from(&mut r)?),
            },
            TAG_SYNC => {
                let regency = r.u64()?;
                let agreement_id = r.u64()?;
                let count = r.len(REPLICAS_MAX, 36)?;
                let mut members = Vec::with_capacity(count);
                for _ in 0..count {
                    let member = r.u32()?;
                    members.push((member, r.array32()?));
                }
                let batch = Arc::new(Batch::decode_from(&mut r)?);
                Message::Sync { regency, agreement_id, members, batch }
            }
            TAG_FETCH => Message::Fetch { from: r.u64()?, to: r.u64()? },
            TAG_DECIDED => Message::Decided {
                agreement_id: r.u64()?,
                batch: Arc::new(Batch::decode_from(&mut r)?),
                previous: if r.flag()? { Some(r.array32()?) } else { None },
            },
            TAG_GONE => Message::Gone { first_held: r.u64()? },
            TAG_STATUS_QUERY => Message::StatusQuery { nonce: r.u64()?, last_decided: r.u64()? },
            TAG_STATUS => Message::Status {
                nonce: r.u64()?,
                last_decided: r.u64()?,
                highest_voted: r.u64()?,
                regency: r.u64()?,
                recovering: r.flag()?,
                incarnation: r.u64()?,
                vouch: match r.flag()? {
                    false => None,
                    true => Some(Vouch { floor: r.u64()?, regency_min: r.u64()? }),
                },
                asked_hash: if r.flag()? { Some(r.array32()?) } else { None },
                asked: r.u64()?,
                disk_lost: r.flag()?,
            },
            _ => return Err(r.error().into()),
        };
        r.finish()?;
        Ok(message)
    }
}

#[cfg(test)]
mod tests {
    use dura_core::rng::SplitMix64;

    use super::*;
    use crate::protocol::KeyRing;

    fn sample_batch() -> Arc<Batch> {
        let keys = KeyRing::new([3; 32], 4).client_keys(5);
        Arc::new(Batch {
            timestamp_ms: 0,
            requests: vec![
                ClientRequest::signed(&keys, 1, b"put a 1".to_vec()),
                ClientRequest::signed(&keys, 2, Vec::new()),
            ],
        })
    }

    fn samples() -> Vec<Message> {
        let batch = sample_batch();
        vec![
            Message::Propose { regency: 1, agreement_id: 2, batch: batch.clone() },
            Message::Write { regency: 3, agreement_id: 4, hash: [5; 32] },
            Message::Accept { regency: 6, agreement_id: 7, hash: [8; 32] },
            Message::Forward { last_decided: 9, requests: batch.requests.clone() },
            Message::Stop { regency: 10 },
            Message::StopData {
                regency: 11,
                collect: Arc::new(CollectData {
                    last_decided: 12,
                    decided_hash: Some([1; 32]),
                    vote_floor: 13,
                    accepted: Some((2, [3; 32])),
                    writes: vec![([3; 32], 2), ([4; 32], 1)],
                    values: vec![batch.clone()],
                }),
            },
            Message::StopData { regency: 0, collect: Arc::new(CollectData::default()) },
            Message::Sync {
                regency: 13,
                agreement_id: 14,
                members: vec![(0, [1; 32]), (3, [2; 32])],
                batch: batch.clone(),
            },
            Message::Fetch { from: 15, to: 16 },
            Message::Decided { agreement_id: 17, batch: batch.clone(), previous: Some([5; 32]) },
            Message::Decided { agreement_id: 18, batch, previous: None },
            Message::Gone { first_held: 23 },
            Message::StatusQuery { nonce: 18, last_decided: 26 },
            Message::Status {
                nonce: 19,
                last_decided: 20,
                highest_voted: 21,
                regency: 22,
                recovering: true,
                incarnation: 23,
                vouch: Some(Vouch { floor: 24, regency_min: 25 }),
                asked_hash: Some([3; 32]),
                asked: 26,
                disk_lost: true,
            },
            Message::Status {
                nonce: 19,
                last_decided: 20,
                highest_voted: 21,
                regency: 22,
                recovering: false,
                incarnation: 0,
                vouch: None,
                asked_hash: None,
                asked: 0,
                disk_lost: false,
            },
        ]
    }

    #[test]
    fn every_message_round_trips() {
        for message in samples() {
            let bytes = message.to_bytes();
            assert_eq!(Message::decode(&bytes).expect("decodes"), message);
        }
    }

    #[test]
    fn truncated_or_extended_messages_are_errors() {
        for message in samples() {
            let bytes = message.to_bytes();
            for cut in 0..bytes.len() {
                assert!(Message::decode(&bytes[..cut]).is_err(), "{message:?} cut at {cut}");
            }
            let mut longer = bytes.clone();
            longer.push(0);
            assert!(Message::decode(&longer).is_err());
        }
    }

    #[test]
    fn random_bytes_never_panic_the_decoders() {
        // Seeded, so the test is deterministic.
        let mut rng = SplitMix64::new(0x1234_5678);
        let mut next = move || rng.next_u64();
        let seeds: Vec<Vec<u8>> = samples().iter().map(Message::to_bytes).collect();
        for round in 0..20_000 {
            let mut bytes = if round % 2 == 0 {
                let len = (next() % 200) as usize;
                (0..len).map(|_| next() as u8).collect::<Vec<u8>>()
            } else {
                // Mutate a valid encoding: flips and length-field damage.
                let mut bytes = seeds[(next() as usize) % seeds.len()].clone();
                for _ in 0..1 + next() % 4 {
                    if bytes.is_empty() {
                        break;
                    }
                    let at = (next() as usize) % bytes.len();
                    bytes[at] = next() as u8;
                }
                bytes
            };
            let _ = Message::decode(&bytes);
            let _ = Batch::from_bytes(&bytes);
            let _ = Reply::from_bytes(&bytes);
            let _ = ClientRequest::from_bytes(&bytes);
            bytes.truncate(bytes.len() / 2);
            let _ = Message::decode(&bytes);
        }
    }
}
