//! Protocol messages and their compact binary codec.
//!
//! Encoding: little-endian fixed-width integers; byte strings and vectors are prefixed
//! with a u32 length; `Option` with a 0/1 byte; each [`Message`] starts with a one-byte
//! tag. Decoding is bounds-checked everywhere and never panics: any malformed input
//! (truncated, oversized, unknown tag, trailing bytes) is a
//! [`ProtocolError::Malformed`]. Vector lengths are checked against their `*_MAX`
//! bound and against the bytes left before anything is allocated.

use std::sync::Arc;

use sha2::{Digest, Sha256};

use super::auth::{ClientKeys, Key, MAC_BYTES, mac, verify_mac};
use super::{Hash, ProtocolError, REPLICAS_MAX, ReplicaId};

/// Largest operation (or reply result) a decoder accepts.
pub const OPERATION_BYTES_MAX: usize = 16 << 20;
/// Most requests a decoded batch may hold.
pub const BATCH_REQUESTS_DECODE_MAX: usize = 1 << 20;
/// Most (hash, regency) write records in one [`CollectData`].
pub const COLLECT_WRITES_MAX: usize = 16;
/// Most batches one [`CollectData`] carries.
pub const COLLECT_VALUES_MAX: usize = 3;
/// Most client requests in one FORWARD.
pub const FORWARD_REQUESTS_MAX: usize = 4096;

/// A client request: who, which, what, and an authenticator (one MAC per replica).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClientRequest {
    /// The client.
    pub client_id: u64,
    /// Its sequence number, strictly increasing per client.
    pub sequence: u64,
    /// The operation, opaque to the protocol.
    pub operation: Vec<u8>,
    /// `authenticator[x]` = HMAC(k_cx, digest) for replica x.
    pub authenticator: Vec<[u8; MAC_BYTES]>,
}

impl ClientRequest {
    /// SHA-256 over the request's identity and operation: what the authenticator MACs.
    pub fn digest(&self) -> Hash {
        let mut sha = Sha256::new();
        sha.update(b"dura-request");
        sha.update(self.client_id.to_le_bytes());
        sha.update(self.sequence.to_le_bytes());
        sha.update(&self.operation);
        sha.finalize().into()
    }

    /// A request authenticated for every replica in `keys`.
    pub fn signed(keys: &ClientKeys, sequence: u64, operation: Vec<u8>) -> Self {
        let mut request =
            Self { client_id: keys.client_id, sequence, operation, authenticator: Vec::new() };
        let digest = request.digest();
        request.authenticator = keys.replicas.iter().map(|key| mac(key, &[&digest])).collect();
        request
    }

    /// True if the entry for `replica` is a valid MAC under `key` (the key `replica`
    /// shares with this client).
    pub fn verify(&self, replica: ReplicaId, key: &Key) -> bool {
        self.verify_digest(replica, key, &self.digest())
    }

    /// [`ClientRequest::verify`] with the request's [`digest`](Self::digest) already
    /// computed (one pass over the operation serves the check and the batch hash).
    pub fn verify_digest(&self, replica: ReplicaId, key: &Key, digest: &Hash) -> bool {
        match self.authenticator.get(replica as usize) {
            Some(tag) => verify_mac(key, &[digest], tag),
            None => false,
        }
    }

    /// Encoded size, used for batch byte bounds.
    pub fn encoded_len(&self) -> usize {
        8 + 8 + 4 + self.operation.len() + 4 + self.authenticator.len() * MAC_BYTES
    }

    fn encode(&self, w: &mut Vec<u8>) {
        put_u64(w, self.client_id);
        put_u64(w, self.sequence);
        put_bytes(w, &self.operation);
        put_u32(w, self.authenticator.len() as u32);
        for tag in &self.authenticator {
            w.extend_from_slice(tag);
        }
    }

    fn decode_from(r: &mut Reader<'_>) -> Result<Self, ProtocolError> {
        let client_id = r.u64()?;
        let sequence = r.u64()?;
        let operation = r.bytes(OPERATION_BYTES_MAX)?.to_vec();
        let count = r.len(REPLICAS_MAX, MAC_BYTES)?;
        let mut authenticator = Vec::with_capacity(count);
        for _ in 0..count {
            authenticator.push(r.array32()?);
        }
        Ok(Self { client_id, sequence, operation, authenticator })
    }

    /// Encodes the request alone (client -> replica wire format).
    pub fn to_bytes(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(self.encoded_len());
        self.encode(&mut out);
        out
    }

    /// Decodes a request encoded by [`ClientRequest::to_bytes`].
    pub fn from_bytes(bytes: &[u8]) -> Result<Self, ProtocolError> {
        let mut r = Reader::new(bytes, "client request");
        let request = Self::decode_from(&mut r)?;
        r.finish()?;
        Ok(request)
    }
}

/// An ordered batch of client requests: the value agreed on by one agreement.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Batch {
    /// The requests, in execution order.
    pub requests: Vec<ClientRequest>,
}

impl Batch {
    /// The requests as the executor takes them, in execution order.
    pub fn ordered_requests(&self) -> Vec<crate::service::OrderedRequest<'_>> {
        self.requests
            .iter()
            .map(|r| crate::service::OrderedRequest {
                client_id: r.client_id,
                sequence: r.sequence,
                operation: &r.operation,
            })
            .collect()
    }

    /// The value's identity in WRITE and ACCEPT: SHA-256 over the request count and,
    /// per request, its [`ClientRequest::digest`] (which covers client, sequence and
    /// operation) and its authenticator.
    pub fn hash(&self) -> Hash {
        self.hash_with(ClientRequest::digest)
    }

    /// [`Batch::hash`] with each request's digest from `digest_of` (a replica that
    /// already computed a request's digest to verify it need not read it again).
    /// `digest_of` must return [`ClientRequest::digest`].
    pub fn hash_with(&self, mut digest_of: impl FnMut(&ClientRequest) -> Hash) -> Hash {
        let mut sha = Sha256::new();
        sha.update(b"dura-batch");
        sha.update((self.requests.len() as u32).to_le_bytes());
        for request in &self.requests {
            sha.update(digest_of(request));
            sha.update((request.authenticator.len() as u32).to_le_bytes());
            for tag in &request.authenticator {
                sha.update(tag);
            }
        }
        sha.finalize().into()
    }

    /// Encoded size.
    pub fn encoded_len(&self) -> usize {
        4 + self.requests.iter().map(ClientRequest::encoded_len).sum::<usize>()
    }

    fn encode(&self, w: &mut Vec<u8>) {
        put_u32(w, self.requests.len() as u32);
        for request in &self.requests {
            request.encode(w);
        }
    }

    fn decode_from(r: &mut Reader<'_>) -> Result<Self, ProtocolError> {
        let count = r.len(BATCH_REQUESTS_DECODE_MAX, 24)?;
        let mut requests = Vec::with_capacity(count);
        for _ in 0..count {
            requests.push(ClientRequest::decode_from(r)?);
        }
        Ok(Self { requests })
    }

    /// Appends [`Batch::to_bytes`]'s encoding to `out` (no intermediate buffer).
    pub fn encode_into(&self, out: &mut Vec<u8>) {
        out.reserve(self.encoded_len());
        self.encode(out);
    }

    /// Encodes the batch alone (e.g. for a log record).
    pub fn to_bytes(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(self.encoded_len());
        self.encode(&mut out);
        out
    }

    /// Decodes a batch encoded by [`Batch::to_bytes`].
    pub fn from_bytes(bytes: &[u8]) -> Result<Self, ProtocolError> {
        let mut r = Reader::new(bytes, "batch");
        let batch = Self::decode_from(&mut r)?;
        r.finish()?;
        Ok(batch)
    }
}

/// A replica's answer to a client, MACed with the key they share.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Reply {
    /// The replica that executed the request.
    pub replica: ReplicaId,
    /// The client.
    pub client_id: u64,
    /// The request's sequence number.
    pub sequence: u64,
    /// The replica's regency when it replied (a leader hint for the client).
    pub regency: u64,
    /// The service's reply.
    pub result: Vec<u8>,
    /// HMAC(k_cx, all fields above).
    pub mac: [u8; MAC_BYTES],
}

impl Reply {
    fn mac_input(
        replica: ReplicaId,
        client_id: u64,
        sequence: u64,
        regency: u64,
        result: &[u8],
    ) -> Vec<u8> {
        let mut w = Vec::with_capacity(32 + result.len());
        w.extend_from_slice(b"dura-reply");
        put_u32(&mut w, replica);
        put_u64(&mut w, client_id);
        put_u64(&mut w, sequence);
        put_u64(&mut w, regency);
        put_bytes(&mut w, result);
        w
    }

    /// A reply MACed with `key` (the key `replica` shares with `client_id`).
    pub fn signed(
        key: &Key,
        replica: ReplicaId,
        client_id: u64,
        sequence: u64,
        regency: u64,
        result: Vec<u8>,
    ) -> Self {
        let tag = mac(key, &[&Self::mac_input(replica, client_id, sequence, regency, &result)]);
        Self { replica, client_id, sequence, regency, result, mac: tag }
    }

    /// True if the MAC is valid under `key`.
    pub fn verify(&self, key: &Key) -> bool {
        let input = Self::mac_input(
            self.replica,
            self.client_id,
            self.sequence,
            self.regency,
            &self.result,
        );
        verify_mac(key, &[&input], &self.mac)
    }

    /// Encodes the reply.
    pub fn to_bytes(&self) -> Vec<u8> {
        let mut w = Vec::with_capacity(64 + self.result.len());
        put_u32(&mut w, self.replica);
        put_u64(&mut w, self.client_id);
        put_u64(&mut w, self.sequence);
        put_u64(&mut w, self.regency);
        put_bytes(&mut w, &self.result);
        w.extend_from_slice(&self.mac);
        w
    }

    /// Decodes a reply encoded by [`Reply::to_bytes`] (does not verify the MAC).
    pub fn from_bytes(bytes: &[u8]) -> Result<Self, ProtocolError> {
        let mut r = Reader::new(bytes, "reply");
        let reply = Self {
            replica: r.u32()?,
            client_id: r.u64()?,
            sequence: r.u64()?,
            regency: r.u64()?,
            result: r.bytes(OPERATION_BYTES_MAX)?.to_vec(),
            mac: r.array32()?,
        };
        r.finish()?;
        Ok(reply)
    }
}

/// What a replica reports in STOPDATA about its last decided agreement and the open
/// one (the agreement after it).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct CollectData {
    /// Last agreement id this replica decided (0: none).
    pub last_decided: u64,
    /// Hash of that decided batch (None when `last_decided` is 0).
    pub decided_hash: Option<Hash>,
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
        Ok(Self { last_decided, decided_hash, accepted, writes, values })
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
    },
    /// A restarted replica asks how far the others are.
    StatusQuery {
        /// Echoed in the answer.
        nonce: u64,
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
            Message::Decided { agreement_id, batch } => {
                w.push(TAG_DECIDED);
                put_u64(w, *agreement_id);
                batch.encode(w);
            }
            Message::StatusQuery { nonce } => {
                w.push(TAG_STATUS_QUERY);
                put_u64(w, *nonce);
            }
            Message::Status { nonce, last_decided, highest_voted, regency, recovering } => {
                w.push(TAG_STATUS);
                put_u64(w, *nonce);
                put_u64(w, *last_decided);
                put_u64(w, *highest_voted);
                put_u64(w, *regency);
                w.push(u8::from(*recovering));
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
                let count = r.len(FORWARD_REQUESTS_MAX, 24)?;
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
            },
            TAG_STATUS_QUERY => Message::StatusQuery { nonce: r.u64()? },
            TAG_STATUS => Message::Status {
                nonce: r.u64()?,
                last_decided: r.u64()?,
                highest_voted: r.u64()?,
                regency: r.u64()?,
                recovering: r.flag()?,
            },
            _ => return Err(r.error()),
        };
        r.finish()?;
        Ok(message)
    }
}

fn put_u32(w: &mut Vec<u8>, value: u32) {
    w.extend_from_slice(&value.to_le_bytes());
}

fn put_u64(w: &mut Vec<u8>, value: u64) {
    w.extend_from_slice(&value.to_le_bytes());
}

fn put_bytes(w: &mut Vec<u8>, bytes: &[u8]) {
    assert!(bytes.len() <= u32::MAX as usize, "byte string too long to encode");
    put_u32(w, bytes.len() as u32);
    w.extend_from_slice(bytes);
}

/// Bounds-checked reader over a byte slice.
struct Reader<'a> {
    bytes: &'a [u8],
    offset: usize,
    what: &'static str,
}

impl<'a> Reader<'a> {
    fn new(bytes: &'a [u8], what: &'static str) -> Self {
        Self { bytes, offset: 0, what }
    }

    fn error(&self) -> ProtocolError {
        ProtocolError::Malformed { what: self.what, offset: self.offset }
    }

    fn take(&mut self, count: usize) -> Result<&'a [u8], ProtocolError> {
        let end = self.offset.checked_add(count).ok_or_else(|| self.error())?;
        if end > self.bytes.len() {
            return Err(self.error());
        }
        let slice = &self.bytes[self.offset..end];
        self.offset = end;
        Ok(slice)
    }

    fn u8(&mut self) -> Result<u8, ProtocolError> {
        Ok(self.take(1)?[0])
    }

    fn flag(&mut self) -> Result<bool, ProtocolError> {
        match self.u8()? {
            0 => Ok(false),
            1 => Ok(true),
            _ => Err(self.error()),
        }
    }

    fn u32(&mut self) -> Result<u32, ProtocolError> {
        let bytes = self.take(4)?;
        Ok(u32::from_le_bytes([bytes[0], bytes[1], bytes[2], bytes[3]]))
    }

    fn u64(&mut self) -> Result<u64, ProtocolError> {
        let bytes = self.take(8)?;
        let mut array = [0u8; 8];
        array.copy_from_slice(bytes);
        Ok(u64::from_le_bytes(array))
    }

    fn array32(&mut self) -> Result<[u8; 32], ProtocolError> {
        let bytes = self.take(32)?;
        let mut array = [0u8; 32];
        array.copy_from_slice(bytes);
        Ok(array)
    }

    /// A vector length: at most `max`, and at most what the remaining bytes can hold
    /// with elements of at least `element_bytes_min` each.
    fn len(&mut self, max: usize, element_bytes_min: usize) -> Result<usize, ProtocolError> {
        let count = self.u32()? as usize;
        let remaining = self.bytes.len() - self.offset;
        if count > max || count.saturating_mul(element_bytes_min) > remaining {
            return Err(self.error());
        }
        Ok(count)
    }

    fn bytes(&mut self, max: usize) -> Result<&'a [u8], ProtocolError> {
        let count = self.u32()? as usize;
        if count > max {
            return Err(self.error());
        }
        self.take(count)
    }

    fn finish(&self) -> Result<(), ProtocolError> {
        if self.offset == self.bytes.len() { Ok(()) } else { Err(self.error()) }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::protocol::KeyRing;

    fn sample_batch() -> Arc<Batch> {
        let keys = KeyRing::new([3; 32], 4).client_keys(5);
        Arc::new(Batch {
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
            Message::Decided { agreement_id: 17, batch },
            Message::StatusQuery { nonce: 18 },
            Message::Status {
                nonce: 19,
                last_decided: 20,
                highest_voted: 21,
                regency: 22,
                recovering: true,
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
        // splitmix64, so the test is deterministic.
        let mut state = 0x1234_5678_u64;
        let mut next = move || {
            state = state.wrapping_add(0x9E37_79B9_7F4A_7C15);
            let mut z = state;
            z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
            z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
            z ^ (z >> 31)
        };
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

    #[test]
    fn request_authenticator_checks_each_replica_entry() {
        let ring = KeyRing::new([9; 32], 4);
        let request = ClientRequest::signed(&ring.client_keys(3), 1, b"op".to_vec());
        for replica in 0..4 {
            let key = ring.replica_keys(replica).client_key(3);
            assert!(request.verify(replica, &key));
        }
        let mut forged = request.clone();
        forged.operation = b"other".to_vec();
        assert!(!forged.verify(0, &ring.replica_keys(0).client_key(3)));
        let wrong_client = ring.replica_keys(0).client_key(4);
        assert!(!request.verify(0, &wrong_client));
        let round_trip = ClientRequest::from_bytes(&request.to_bytes()).expect("decodes");
        assert_eq!(round_trip, request);
    }

    #[test]
    fn batch_hash_covers_every_field_of_every_request_and_their_order() {
        let batch = sample_batch();
        let hash = batch.hash();
        assert_eq!(batch.hash_with(ClientRequest::digest), hash);
        assert_ne!(Batch::default().hash(), hash);
        let changed: [fn(&mut ClientRequest); 5] = [
            |r| r.client_id += 1,
            |r| r.sequence += 1,
            |r| r.operation.push(0),
            |r| r.authenticator[0][0] ^= 1,
            |r| r.authenticator.pop().map_or((), drop),
        ];
        for change in changed {
            let mut other = (*batch).clone();
            change(&mut other.requests[0]);
            assert_ne!(other.hash(), hash, "a changed request changes the hash");
        }
        if batch.requests.len() >= 2 {
            let mut reversed = (*batch).clone();
            reversed.requests.reverse();
            assert_ne!(reversed.hash(), hash, "order matters");
        }
    }

    #[test]
    fn reply_mac_covers_every_field() {
        let key = [4; 32];
        let reply = Reply::signed(&key, 2, 7, 9, 1, b"ok".to_vec());
        assert!(reply.verify(&key));
        let decoded = Reply::from_bytes(&reply.to_bytes()).expect("decodes");
        assert!(decoded.verify(&key));
        let mut changed = reply.clone();
        changed.sequence = 10;
        assert!(!changed.verify(&key));
    }
}
