//! Client requests, the batches ordering agrees on, and replicas' replies, with their
//! binary codec (built from [`crate::codec`]; the format is described there).
//!
//! These are the values every layer handles: ordering proposes and decides [`Batch`]es,
//! the log stores them, the executor runs their requests through the
//! [`crate::Service`], state transfer ships them, clients send [`ClientRequest`]s and
//! collect [`Reply`]s.

use sha2::{Digest, Sha256};

use crate::CoreError;
use crate::auth::{ClientKeys, Key, MAC_BYTES, mac, verify_mac};
use crate::codec::{Reader, put_bytes, put_u32, put_u64};
use crate::ids::{Hash, REPLICAS_MAX, ReplicaId};
use crate::service::OrderedRequest;

/// Largest operation (or reply result) a decoder accepts.
pub const OPERATION_BYTES_MAX: usize = 16 << 20;
/// Most requests a decoded batch may hold.
pub const BATCH_REQUESTS_DECODE_MAX: usize = 1 << 20;
/// Fewest bytes an encoded [`ClientRequest`] takes: client id, sequence, and the two
/// length prefixes of an empty operation and an empty authenticator.
pub const REQUEST_BYTES_MIN: usize = 8 + 8 + 4 + 4;

// Lengths are encoded as u32: every bounded one must fit.
const _: () = assert!(OPERATION_BYTES_MAX <= u32::MAX as usize);
const _: () = assert!(BATCH_REQUESTS_DECODE_MAX <= u32::MAX as usize);
const _: () = assert!(REPLICAS_MAX <= u32::MAX as usize);

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
        assert!(keys.replicas.len() <= REPLICAS_MAX, "an authenticator entry per replica");
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
        REQUEST_BYTES_MIN + self.operation.len() + self.authenticator.len() * MAC_BYTES
    }

    /// Appends the encoding of this request to `w`.
    pub fn encode(&self, w: &mut Vec<u8>) {
        put_u64(w, self.client_id);
        put_u64(w, self.sequence);
        put_bytes(w, &self.operation);
        put_u32(w, self.authenticator.len() as u32);
        for tag in &self.authenticator {
            w.extend_from_slice(tag);
        }
    }

    /// Decodes one request at `r`'s position (one encoded by [`ClientRequest::encode`]).
    pub fn decode_from(r: &mut Reader<'_>) -> Result<Self, CoreError> {
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
    pub fn from_bytes(bytes: &[u8]) -> Result<Self, CoreError> {
        let mut r = Reader::new(bytes, "client request");
        let request = Self::decode_from(&mut r)?;
        r.finish()?;
        Ok(request)
    }
}

/// Bytes a [`Batch`]'s encoding takes besides its requests: the timestamp and the
/// request count.
pub const BATCH_HEADER_BYTES: usize = 8 + 4;

/// An ordered batch of client requests: the value agreed on by one agreement.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Batch {
    /// The agreed time of the batch, in milliseconds since the Unix epoch: the leader's
    /// clock when it proposed the batch, accepted by the others only within a bound of
    /// their own clocks. Services read time from here (as
    /// [`OrderedRequest::now_ms`]), never from a replica's clock. It may go back from one
    /// batch to the next (a new leader's clock); a service that needs monotonic time
    /// takes the maximum.
    pub timestamp_ms: u64,
    /// The requests, in execution order.
    pub requests: Vec<ClientRequest>,
}

impl Batch {
    /// The requests as the executor takes them, in execution order.
    pub fn ordered_requests(&self) -> Vec<OrderedRequest<'_>> {
        self.requests
            .iter()
            .map(|r| OrderedRequest {
                client_id: r.client_id,
                sequence: r.sequence,
                operation: &r.operation,
                now_ms: self.timestamp_ms,
            })
            .collect()
    }

    /// The value's identity in WRITE and ACCEPT: SHA-256 over the timestamp, the request
    /// count and, per request, its [`ClientRequest::digest`] (which covers client, sequence and
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
        sha.update(self.timestamp_ms.to_le_bytes());
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
        BATCH_HEADER_BYTES + self.requests.iter().map(ClientRequest::encoded_len).sum::<usize>()
    }

    /// Appends the encoding of this batch to `w` ([`Batch::encode_into`] reserves
    /// the space first).
    pub fn encode(&self, w: &mut Vec<u8>) {
        put_u64(w, self.timestamp_ms);
        put_u32(w, self.requests.len() as u32);
        for request in &self.requests {
            request.encode(w);
        }
    }

    /// Decodes one batch at `r`'s position (one encoded by [`Batch::encode`]).
    pub fn decode_from(r: &mut Reader<'_>) -> Result<Self, CoreError> {
        let timestamp_ms = r.u64()?;
        let count = r.len(BATCH_REQUESTS_DECODE_MAX, REQUEST_BYTES_MIN)?;
        let mut requests = Vec::with_capacity(count);
        for _ in 0..count {
            requests.push(ClientRequest::decode_from(r)?);
        }
        Ok(Self { timestamp_ms, requests })
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
    pub fn from_bytes(bytes: &[u8]) -> Result<Self, CoreError> {
        let mut r = Reader::new(bytes, "batch");
        let batch = Self::decode_from(&mut r)?;
        r.finish()?;
        Ok(batch)
    }
}

/// Bits of a sequence number below its session time: a client numbers its requests
/// `max(previous + 1, now_ms << SEQUENCE_TIME_SHIFT)`, so a sequence number carries, in
/// its high bits, when (on the client's clock) the request was made. The executor reads
/// it to refuse, deterministically, a request of a client whose reply cache entry was
/// evicted ([`Reply::status`], [`ReplyStatus::Expired`]): without it, a replayed request
/// of a forgotten client would run twice.
pub const SEQUENCE_TIME_SHIFT: u32 = 22;
/// Milliseconds a sequence number's session time may be ahead of its batch's agreed
/// time ([`Batch::timestamp_ms`]) and still run: the client clocks' tolerated skew.
pub const SEQUENCE_AHEAD_MAX_MS: u64 = 60_000;

// Session times until 2109 (2^42 ms after 1970) fit above the shift.
const _: () = assert!(SEQUENCE_TIME_SHIFT + 42 <= 64);

/// The session time (ms, on the client's clock) a sequence number carries.
pub fn sequence_time_ms(sequence: u64) -> u64 {
    sequence >> SEQUENCE_TIME_SHIFT
}

/// The lowest sequence number that carries session time `time_ms`.
pub fn first_sequence_at(time_ms: u64) -> u64 {
    assert!(time_ms < 1 << (64 - SEQUENCE_TIME_SHIFT), "a session time past 2109");
    time_ms << SEQUENCE_TIME_SHIFT
}

/// What a [`Reply`] says of its request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ReplyStatus {
    /// The request ran (or its cached result is answered): `result` is the service's.
    Executed,
    /// The request is refused, for good: its client's reply cache entry was evicted
    /// (the cluster's `clients_max`), or its sequence number's session time is too far
    /// ahead of the agreed time. Whether it ran before its client was evicted, the
    /// cluster cannot tell: to the client, an outcome unknown. `result` holds, as a little-endian `u64`, the
    /// lowest session time (ms) a new request of an unknown client is accepted with.
    Expired,
}

impl ReplyStatus {
    fn code(self) -> u8 {
        match self {
            ReplyStatus::Executed => 0,
            ReplyStatus::Expired => 1,
        }
    }

    fn from_code(code: u8) -> Option<Self> {
        match code {
            0 => Some(ReplyStatus::Executed),
            1 => Some(ReplyStatus::Expired),
            _ => None,
        }
    }
}

/// Which decision produced a reply: the agreement and the hash of its batch
/// ([`Batch::hash`]). Two replies count together only if they name the same decision:
/// after a crash of every replica (BFT), a replica may give up a decision that the
/// others then decide anew, and a reply from the given-up history must not make up
/// f+1 with one from the new history (a reply promises that f+1 disks hold its
/// decision). All zeros: none (a refusal, [`ReplyStatus::Expired`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, PartialOrd, Ord, Hash)]
pub struct DecisionId {
    /// The agreement.
    pub agreement_id: u64,
    /// Its batch's hash.
    pub hash: Hash,
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
    /// Whether the request ran.
    pub status: ReplyStatus,
    /// The decision whose execution gave `result` (all zeros for a refusal).
    pub decided: DecisionId,
    /// The service's reply (see [`ReplyStatus`] for an expired request's).
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
        status: ReplyStatus,
        decided: &DecisionId,
        result: &[u8],
    ) -> Vec<u8> {
        let mut w = Vec::with_capacity(73 + result.len());
        w.extend_from_slice(b"dura-reply");
        put_u32(&mut w, replica);
        put_u64(&mut w, client_id);
        put_u64(&mut w, sequence);
        put_u64(&mut w, regency);
        w.push(status.code());
        put_u64(&mut w, decided.agreement_id);
        w.extend_from_slice(&decided.hash);
        put_bytes(&mut w, result);
        w
    }

    /// A reply to an executed request, MACed with `key` (the key `replica` shares with
    /// `client_id`).
    pub fn signed(
        key: &Key,
        replica: ReplicaId,
        client_id: u64,
        sequence: u64,
        regency: u64,
        result: Vec<u8>,
    ) -> Self {
        let decided = DecisionId::default();
        let status = ReplyStatus::Executed;
        Self::signed_with(key, replica, client_id, sequence, regency, status, decided, result)
    }

    /// [`Reply::signed`] with an explicit status and decision.
    #[allow(clippy::too_many_arguments)]
    pub fn signed_with(
        key: &Key,
        replica: ReplicaId,
        client_id: u64,
        sequence: u64,
        regency: u64,
        status: ReplyStatus,
        decided: DecisionId,
        result: Vec<u8>,
    ) -> Self {
        let input =
            Self::mac_input(replica, client_id, sequence, regency, status, &decided, &result);
        let tag = mac(key, &[&input]);
        Self { replica, client_id, sequence, regency, status, decided, result, mac: tag }
    }

    /// True if the MAC is valid under `key`.
    pub fn verify(&self, key: &Key) -> bool {
        let input = Self::mac_input(
            self.replica,
            self.client_id,
            self.sequence,
            self.regency,
            self.status,
            &self.decided,
            &self.result,
        );
        verify_mac(key, &[&input], &self.mac)
    }

    /// For an [`ReplyStatus::Expired`] reply: the lowest session time (ms) the cluster
    /// accepts a new request of an unknown client with. None for another reply, or a
    /// result that is not 8 bytes.
    pub fn expired_accept_from_ms(&self) -> Option<u64> {
        if self.status != ReplyStatus::Expired {
            return None;
        }
        Some(u64::from_le_bytes(self.result.as_slice().try_into().ok()?))
    }

    /// Encodes the reply.
    pub fn to_bytes(&self) -> Vec<u8> {
        let mut w = Vec::with_capacity(105 + self.result.len());
        put_u32(&mut w, self.replica);
        put_u64(&mut w, self.client_id);
        put_u64(&mut w, self.sequence);
        put_u64(&mut w, self.regency);
        w.push(self.status.code());
        put_u64(&mut w, self.decided.agreement_id);
        w.extend_from_slice(&self.decided.hash);
        put_bytes(&mut w, &self.result);
        w.extend_from_slice(&self.mac);
        w
    }

    /// Decodes a reply encoded by [`Reply::to_bytes`] (does not verify the MAC).
    pub fn from_bytes(bytes: &[u8]) -> Result<Self, CoreError> {
        let mut r = Reader::new(bytes, "reply");
        let replica = r.u32()?;
        let client_id = r.u64()?;
        let sequence = r.u64()?;
        let regency = r.u64()?;
        let malformed = r.error();
        let status = ReplyStatus::from_code(r.u8()?).ok_or(malformed)?;
        let decided = DecisionId { agreement_id: r.u64()?, hash: r.array32()? };
        let reply = Self {
            replica,
            client_id,
            sequence,
            regency,
            status,
            decided,
            result: r.bytes(OPERATION_BYTES_MAX)?.to_vec(),
            mac: r.array32()?,
        };
        r.finish()?;
        Ok(reply)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::auth::KeyRing;
    use crate::rng::SplitMix64;

    fn sample_batch() -> Batch {
        let keys = KeyRing::new([3; 32], 4).client_keys(5);
        Batch {
            timestamp_ms: 1_795_000_000_123,
            requests: vec![
                ClientRequest::signed(&keys, 1, b"put a 1".to_vec()),
                ClientRequest::signed(&keys, 2, Vec::new()),
            ],
        }
    }

    fn sample_reply() -> Reply {
        let decided = DecisionId { agreement_id: 42, hash: [9; 32] };
        Reply::signed_with(&[4; 32], 2, 7, 9, 1, ReplyStatus::Executed, decided, b"ok".to_vec())
    }

    #[test]
    fn an_expired_reply_round_trips_and_its_status_is_covered_by_the_mac() {
        let expired = Reply::signed_with(
            &[4; 32],
            2,
            7,
            9,
            1,
            ReplyStatus::Expired,
            DecisionId::default(),
            70_001u64.to_le_bytes().to_vec(),
        );
        assert_eq!(Reply::from_bytes(&expired.to_bytes()), Ok(expired.clone()));
        assert_eq!(expired.expired_accept_from_ms(), Some(70_001));
        assert_eq!(sample_reply().expired_accept_from_ms(), None);
        assert!(expired.verify(&[4; 32]));
        let mut forged = expired.clone();
        forged.status = ReplyStatus::Executed;
        assert!(!forged.verify(&[4; 32]), "a forwarder cannot turn a refusal into a result");
        let mut forged = sample_reply();
        forged.decided.agreement_id += 1;
        assert!(!forged.verify(&[4; 32]), "nor name another decision");
        let mut bytes = expired.to_bytes();
        bytes[4 + 8 + 8 + 8] = 2;
        assert!(Reply::from_bytes(&bytes).is_err(), "an unknown status is malformed");
    }

    #[test]
    fn a_sequence_number_carries_its_session_time() {
        let now_ms = 1_795_000_000_123;
        let first = first_sequence_at(now_ms);
        assert_eq!(sequence_time_ms(first), now_ms);
        assert_eq!(sequence_time_ms(first + (1 << SEQUENCE_TIME_SHIFT) - 1), now_ms);
        assert_eq!(sequence_time_ms(1), 0);
    }

    #[test]
    fn requests_batches_and_replies_round_trip_at_their_encoded_length() {
        let batch = sample_batch();
        assert_eq!(Batch::from_bytes(&batch.to_bytes()), Ok(batch.clone()));
        assert_eq!(batch.to_bytes().len(), batch.encoded_len());
        let mut appended = vec![0xEE];
        batch.encode_into(&mut appended);
        assert_eq!(&appended[1..], &batch.to_bytes()[..]);
        for request in &batch.requests {
            assert_eq!(ClientRequest::from_bytes(&request.to_bytes()), Ok(request.clone()));
            assert_eq!(request.to_bytes().len(), request.encoded_len());
        }
        let empty = ClientRequest {
            client_id: 0,
            sequence: 0,
            operation: Vec::new(),
            authenticator: Vec::new(),
        };
        assert_eq!(empty.to_bytes().len(), REQUEST_BYTES_MIN);
        assert_eq!(Reply::from_bytes(&sample_reply().to_bytes()), Ok(sample_reply()));
    }

    #[test]
    fn truncated_or_extended_encodings_are_malformed() {
        let batch = sample_batch().to_bytes();
        let reply = sample_reply().to_bytes();
        for cut in 0..batch.len() {
            assert!(Batch::from_bytes(&batch[..cut]).is_err(), "batch cut at {cut}");
        }
        for cut in 0..reply.len() {
            assert!(Reply::from_bytes(&reply[..cut]).is_err(), "reply cut at {cut}");
        }
        let mut longer = batch.clone();
        longer.push(0);
        assert_eq!(
            Batch::from_bytes(&longer),
            Err(CoreError::Malformed { what: "batch", offset: batch.len() })
        );
    }

    #[test]
    fn random_bytes_never_panic_the_decoders() {
        let mut rng = SplitMix64::new(0x1234_5678);
        let seeds = [sample_batch().to_bytes(), sample_reply().to_bytes()];
        for round in 0..20_000 {
            let mut bytes = if round % 2 == 0 {
                let len = (rng.next_u64() % 200) as usize;
                (0..len).map(|_| rng.next_u64() as u8).collect::<Vec<u8>>()
            } else {
                // Mutate a valid encoding: flips and length-field damage.
                let mut bytes = seeds[(rng.next_u64() as usize) % seeds.len()].clone();
                for _ in 0..1 + rng.next_u64() % 4 {
                    let at = (rng.next_u64() as usize) % bytes.len();
                    bytes[at] = rng.next_u64() as u8;
                }
                bytes
            };
            let _ = Batch::from_bytes(&bytes);
            let _ = Reply::from_bytes(&bytes);
            let _ = ClientRequest::from_bytes(&bytes);
            bytes.truncate(bytes.len() / 2);
            let _ = Batch::from_bytes(&bytes);
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
        assert!(!request.verify(4, &ring.replica_keys(0).client_key(3)), "no entry for 4");
        let mut forged = request.clone();
        forged.operation = b"other".to_vec();
        assert!(!forged.verify(0, &ring.replica_keys(0).client_key(3)));
        let wrong_client = ring.replica_keys(0).client_key(4);
        assert!(!request.verify(0, &wrong_client));
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
            let mut other = batch.clone();
            change(&mut other.requests[0]);
            assert_ne!(other.hash(), hash, "a changed request changes the hash");
        }
        let mut reversed = batch.clone();
        reversed.requests.reverse();
        assert_ne!(reversed.hash(), hash, "order matters");
    }

    #[test]
    fn ordered_requests_are_the_batch_in_execution_order() {
        let batch = sample_batch();
        let ordered = batch.ordered_requests();
        assert_eq!(ordered.len(), batch.requests.len());
        for (o, r) in ordered.iter().zip(&batch.requests) {
            assert_eq!(
                (o.client_id, o.sequence, o.operation),
                (r.client_id, r.sequence, &r.operation[..])
            );
        }
    }

    #[test]
    fn reply_mac_covers_every_field() {
        let key = [4; 32];
        let reply = sample_reply();
        assert!(reply.verify(&key));
        let decoded = Reply::from_bytes(&reply.to_bytes()).expect("decodes");
        assert!(decoded.verify(&key));
        let changes: [fn(&mut Reply); 5] = [
            |r| r.replica += 1,
            |r| r.client_id += 1,
            |r| r.sequence += 1,
            |r| r.regency += 1,
            |r| r.result.push(0),
        ];
        for change in changes {
            let mut changed = reply.clone();
            change(&mut changed);
            assert!(!changed.verify(&key));
        }
        assert!(!reply.verify(&[5; 32]));
    }
}
